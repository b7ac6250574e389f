"""The bed half of test_images.py (a real node): see its docstring."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from alembic_operator import jobs
from alembic_operator.backupstores import volume
from apps import linear, make_project
from bed import images
from bed.postgres import Database
from imagebuild import REPO, _needs, run_in


@pytest.mark.bed
def test_bases_build_once_then_come_from_the_cache() -> None:
    _needs("buildah", "mmdebstrap")
    debian, python = images.debian_base(), images.python_base()
    started = time.monotonic()
    assert (images.debian_base(), images.python_base()) == (debian, python)
    assert time.monotonic() - started < 5, "a cache hit must not rebuild"
    # Another process (another test session) finds them too.
    proc = subprocess.run([sys.executable, "-m", "bed.images", "debian", "python"], capture_output=True, text=True,
                          check=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO / "tests")})
    assert debian in proc.stdout and python in proc.stdout
    out = run_in(python, "sh", "-c", "python3 --version; id -u; test ! -e /var/cache/apt/archives/*.deb && echo clean")
    assert out.startswith("Python 3.11") and out.split()[-1] == "clean", out


@pytest.mark.bed
def test_a_removed_image_is_rebuilt(tmp_path: Path) -> None:
    _needs("buildah")
    (tmp_path / "Dockerfile").write_text(f"FROM {images.debian_base()}\nRUN echo {tmp_path.name} > /stamp\n")
    ref = images.build(tmp_path, None, "scratch-test")
    assert images.build(tmp_path, None, "scratch-test") == ref
    images.buildah("rmi", "--force", ref)
    images._VERIFIED.clear()  # as a new process would see it
    assert images.build(tmp_path, None, "scratch-test") == ref and images.image_exists(ref)
    # prune() removes what has not been used for long (only this record is that old: 1970)
    record = images.cache_dir() / "builds" / f"{ref.rsplit(':', 1)[1]}.json"
    os.utime(record, (0, 0))
    assert images.prune(max_age_days=(time.time() - 86400) / 86400, dangling=False) == [ref]
    assert not images.image_exists(ref) and not record.exists()


COUNT_BUDS = """
import sys
from pathlib import Path
from bed import images
from bed.postgres import Database
buds = []
real = images.buildah
def counting(*args, **kwargs):
    buds.extend(args[:1] if args[:1] == ("bud",) else ())
    return real(*args, **kwargs)
images.buildah = counting
print(images.build(Path(sys.argv[1]), None, "concurrency-test"), len(buds))
"""


@pytest.mark.bed
def test_two_processes_building_the_same_context_build_it_once(tmp_path: Path) -> None:
    _needs("buildah")
    (tmp_path / "Dockerfile").write_text(f"FROM {images.debian_base()}\nRUN sleep 2 && echo {tmp_path.name} > /s\n")
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests")}
    procs = [subprocess.Popen([sys.executable, "-c", COUNT_BUDS, str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outs = [proc.communicate(timeout=300) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outs
    refs = {out.split()[0] for out, _err in outs}
    assert len(refs) == 1 and sorted(int(out.split()[1]) for out, _err in outs) == [0, 1], outs
    images.buildah("rmi", "--force", refs.pop())


@pytest.mark.bed
def test_app_image_is_a_thin_cached_layer_on_the_app_base(tmp_path: Path) -> None:
    _needs("buildah")
    base = images.app_base()
    make_project(tmp_path / "proj", linear(2))
    started = time.monotonic()
    ref = images.app_image(tmp_path / "proj")
    first = time.monotonic() - started
    started = time.monotonic()
    assert images.app_image(tmp_path / "proj") == ref
    assert time.monotonic() - started < 1.5
    assert first < 10, f"the thin layer took {first:.1f}s"
    out = run_in(ref, "sh", "-c", "id -u; pwd; python -c 'import alembic, sqlalchemy, psycopg; print(\"ok\")'; "
                                  "alembic heads")
    uid, cwd, ok, heads = out.split("\n")[:4]
    assert (uid, cwd, ok) == ("10001", images.APP_DIR, "ok")
    assert heads.startswith(linear(2)[-1].id), out
    (tmp_path / "proj" / "migrations" / "__pycache__").mkdir()
    (tmp_path / "proj" / "migrations" / "__pycache__" / "env.cpython-311.pyc").write_bytes(b"\0")
    assert images.app_image(tmp_path / "proj") == ref, "bytecode written by in-process runs is not content"
    (tmp_path / "proj" / "alembic.ini").write_text((tmp_path / "proj" / "alembic.ini").read_text() + "\n")
    assert images.app_image(tmp_path / "proj") != ref
    assert base in images.app_base()


@pytest.mark.bed
def test_shop_image_runs_as_a_non_root_user() -> None:
    _needs("buildah")
    ref = images.shop_image()
    out = run_in(ref, "sh", "-c", "id -u; alembic heads")
    assert out.split()[:2] == ["65534", "88d79e1b94a5"], out
    fixed = images.shop_image(fixed=True)
    assert fixed != ref
    assert "ck_orders_total_not_negative" in run_in(fixed, "sh", "-c", "cat migrations/versions/88d79e1b94a5_*.py")


# buildah's defaults as root (/tmp, /etc and /run are left out: other processes on the machine write there)
HOST_PLACES = ("/var/lib", "/var/lib/containers", "/var/lib/containers/cache", "/var/tmp", "/etc/containers",
               "/etc/cni", "/run/containers", "/run/lock")


def host_listing() -> dict[str, set[str]]:
    return {d: set(os.listdir(d)) if os.path.isdir(d) else set() for d in HOST_PLACES}


@pytest.mark.bed
def test_buildah_writes_nothing_outside_the_cache(tmp_path: Path) -> None:
    """Where buildah writes as root by default (storage, blob-info cache, network locks, big temporary files):
    a build, a working container and a push leave no new entry there."""
    _needs("buildah")
    base = images.debian_base()
    before = host_listing()
    (tmp_path / "Dockerfile").write_text(f"FROM {base}\nCOPY f /f\nRUN cat /f\n")
    (tmp_path / "f").write_text(tmp_path.name)
    ref = images.build(tmp_path, None, "host-check")
    run_in(ref, "true")
    images.buildah("push", ref, f"oci:{tmp_path}/oci:x")
    images.buildah("rmi", ref)
    after = host_listing()
    assert {d: after[d] - before[d] for d in HOST_PLACES if after[d] - before[d]} == {}


@pytest.mark.bed
@pytest.mark.postgres
def test_the_jobs_commands_run_from_the_images_against_postgres(tmp_path: Path, database: Database) -> None:
    """What the plan and backup Jobs do, container by container, without Kubernetes: the operator image installs
    the runner into a shared directory, the app image renders the plan, the operator image scans it, then dumps
    the database with Debian's pg_dump."""
    _needs("buildah")
    operator, app = images.operator_image(), images.app_image(make_project(tmp_path / "proj", linear(2)).parent)
    work, backups = tmp_path / "work", tmp_path / "backups"
    for d in (work, backups):
        d.mkdir()
        d.chmod(0o777)  # an emptyDir / a volume with fsGroup: the images' users (10001, 65532) write there
    env = {jobs.URL_ENV: database.url}
    mounts = (f"{work}:{jobs.WORK_DIR}",)
    run_in(operator, "alembic-operator", "job", "install-runner", jobs.RUNNER, volumes=mounts)
    run_in(app, "python", jobs.RUNNER, "plan", "--config", "alembic.ini", "--target", "head", "--out", jobs.PLAN_DIR,
           volumes=mounts, env=env)
    plan = json.loads((work / "plan" / "plan.json").read_text())
    assert [r["revision"] for r in plan["revisions"]] == [r.id for r in linear(2)], plan
    run_in(operator, "alembic-operator", "job", "scan", "--plan-dir", jobs.PLAN_DIR, volumes=mounts)
    run_in(operator, "alembic-operator", "job", "backup", "--store", "volume", "--location", f"{volume.MOUNT}/ns/app",
           "--prefix", "app", "--retain", "1", "--location-prefix", "test/ns/app",
           volumes=(f"{backups}:{volume.MOUNT}",), env=env)
    dumps = list((backups / "ns" / "app").glob("app-*"))
    assert dumps and all(d.stat().st_size > 0 for d in dumps), dumps


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    """Debian's docker-registry on 127.0.0.1 inside a network namespace of its own (it dies with the process):
    yields (HOST:PORT, the command prefix that enters the namespace)."""
    _needs("docker-registry", "unshare", "nsenter")
    port = 5000 + os.getpid() % 1000
    config = tmp_path / "registry.yml"
    config.write_text(f"version: 0.1\nlog: {{level: warn}}\n"
                      f"storage: {{filesystem: {{rootdirectory: {tmp_path}/data}}}}\n"
                      f"http: {{addr: '127.0.0.1:{port}'}}\n")
    with (tmp_path / "registry.log").open("w") as log:
        proc = subprocess.Popen(["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
                                 "docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    enter = ["nsenter", f"--net=/proc/{proc.pid}/ns/net"]
    netns = None
    try:
        deadline = time.monotonic() + 20
        while subprocess.run([*enter, "curl", "-fsS", f"http://127.0.0.1:{port}/v2/"], capture_output=True,
                             check=False).returncode != 0:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "registry.log").read_text()
            time.sleep(0.2)
        netns = os.stat(f"/proc/{proc.pid}/ns/net").st_ino  # now (unshare has run)
        assert netns != os.stat("/proc/self/ns/net").st_ino
        # The host's loopback does not have it: the registry lives only in the namespace.
        assert subprocess.run(["curl", "-fsS", "-m", "2", f"http://127.0.0.1:{port}/v2/"], capture_output=True,
                              check=False).returncode != 0
        yield f"127.0.0.1:{port}", enter
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    if netns is not None:  # nothing is left in the namespace: it is gone
        assert not [pid for pid in os.listdir("/proc") if pid.isdigit() and _netns_inode(pid) == netns]


def _netns_inode(pid: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


@pytest.mark.bed
def test_push_to_a_registry_in_a_network_namespace(registry: tuple[str, list[str]], tmp_path: Path) -> None:
    _needs("buildah", "curl")
    host, enter = registry
    make_project(tmp_path / "proj", linear(1))
    started = time.monotonic()
    ref = images.app_image(tmp_path / "proj", push_to=f"{host}/apps/app", netns_cmd=enter)
    pushed = time.monotonic() - started
    name, _, digest = ref.partition("@")
    assert name.startswith(f"{host}/apps/app:") and digest.startswith("sha256:"), ref
    manifest = subprocess.run([*enter, "curl", "-fsS", "-H", "Accept: application/vnd.oci.image.manifest.v1+json",
                               "-H", "Accept: application/vnd.docker.distribution.manifest.v2+json",
                               f"http://{host}/v2/apps/app/manifests/{digest}"],
                              capture_output=True, text=True, check=False, timeout=30)
    assert manifest.returncode == 0 and '"layers"' in manifest.stdout, manifest.stderr
    # A second push of the same image finds every blob there already.
    again = images.push(images.app_image(tmp_path / "proj"), name, netns_cmd=enter)
    assert again == ref
    print(f"pushed the app image in {pushed:.1f}s")

