"""Container images for the bed's real node: built with buildah from Dockerfiles, cached by content, pushed to the
bed's registry.

The chain is Debian (``mmdebstrap --variant=minbase``, imported with ``FROM scratch`` + ``ADD rootfs.tar``) ->
Python (Debian's python3 and venv) -> the operator image (the project's own Dockerfile with the bed's build
arguments), the tests' app base (alembic, sqlalchemy, psycopg, PyMySQL) and the shop demo. Nothing comes from a
registry on the internet: only Debian's mirror (plain HTTP) and PyPI.

Everything buildah and mmdebstrap write stays under ``$BED_CACHE/images`` (``~/.cache/alembic-operator/images``):
storage.conf and containers.conf there point buildah's graphroot, runroot and network lock files at it, ``TMPDIR``
too, and each buildah runs in a private mount namespace whose ``/var/lib`` and ``/var/tmp`` are the cache's (as root,
buildah keeps its blob-info cache in ``/var/lib/containers/cache`` and some temporary files in ``/var/tmp``, with no
option to move them).

:func:`build` keys an image by a hash of the Dockerfile, the build arguments and every file of the context that
.dockerignore lets through, tags it ``localhost/bed/<name>:<key>`` and records key -> image id in ``builds/``:
an unchanged input is a cache hit in any process, as long as the image is still in the store. Builds of the same key
wait for each other on a file lock; different keys build in parallel (containers/storage locks its own store).

The machines this runs on intercept TLS with a CA of their own: builds get the host's bundle as a read-only volume
and ``PIP_CERT`` as a build argument (only the path; nothing is copied into an image).

Use: ``operator_image()``, ``app_base()``, ``shop_image(fixed=False)`` and ``build(context, dockerfile, name,
build_args)`` return local names; ``push(local, "HOST:PORT/REPO:TAG", ["nsenter", "--net=..."])`` returns the
reference pods use (``...@sha256:...``); ``app_image(project_dir, push_to="HOST:PORT/apps/app", netns_cmd=...)``
does both for a generated Alembic project (its files in ``/app``, user 10001). By hand:
``PYTHONPATH=tests python -m bed.images [debian|python|operator|appbase|shop|app:DIR|build:DIR|prune:DAYS]``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import hashlib
import json
import os
import re
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from bed.tools import cache_root

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = Path(__file__).resolve().parent / "dockerfiles"
SUITE = "bookworm"
DEBIAN_MIRRORS = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
# Man pages and docs are dead weight in every image built on the base (copyright files stay); apt keeps neither
# downloaded packages nor its binary caches in the images (as in Debian's official images).
MMDEBSTRAP_OPTS = (
    "--variant=minbase",
    '--aptopt=Dir::Cache::pkgcache ""',
    '--aptopt=Dir::Cache::srcpkgcache ""',
    # after the bootstrap (mmdebstrap itself needs the downloaded packages until they are installed)
    "--customize-hook=echo 'APT::Keep-Downloaded-Packages \"false\";' > \"$1/etc/apt/apt.conf.d/90bed-clean\"",
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
)
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
# Mounted over /mnt, an empty directory of every Debian image: buildah 1.28 leaves the mountpoints it creates for
# --volume in the image (empty, but there); an existing directory leaves nothing.
CA_MOUNT = "/mnt"
BED_PG_MAJOR = "15"  # Debian bookworm's postgresql-client (the bed's server is Debian's 15 too)
APP_DIR = "/app"  # where app_image() puts a project: the workingDir of the spec
BUILD_TIMEOUT = 1800


class ImageError(RuntimeError):
    """A build, a push or the Debian bootstrap failed (the message ends with the tool's output)."""


# --- state under the build cache -------------------------------------------------------------------------------


def cache_dir() -> Path:
    return cache_root() / "images"


def _storage_driver() -> str:
    """overlay when this kernel mounts it here (cheap containers and layers), else vfs; BED_STORAGE_DRIVER wins.

    The store is per driver (containers/storage refuses to switch a store's driver)."""
    if env := os.environ.get("BED_STORAGE_DRIVER"):
        return env
    probe = cache_dir() / "overlay-probe"
    verdict = probe / "result"
    if verdict.exists():
        return verdict.read_text().strip()
    for sub in ("lower", "upper", "work", "merged"):
        (probe / sub).mkdir(parents=True, exist_ok=True)
    opts = f"lowerdir={probe}/lower,upperdir={probe}/upper,workdir={probe}/work"
    ok = subprocess.run(["unshare", "--mount", "--", "mount", "-t", "overlay", "overlay", "-o", opts,
                         str(probe / "merged")], capture_output=True, check=False, timeout=30).returncode == 0
    _write_if_changed(verdict, "overlay" if ok else "vfs")
    return "overlay" if ok else "vfs"


def _buildah_env() -> dict[str, str]:
    """The environment every buildah runs with: config files, store and temporary files in the cache."""
    root = cache_dir()
    driver = _storage_driver()
    conf = root / "conf"
    for sub in ("conf", "net", "tmp", "varlib/containers", "builds"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    storage_conf = conf / f"storage-{driver}.conf"
    _write_if_changed(storage_conf, (
        "[storage]\n"
        f'driver = "{driver}"\n'
        f'graphroot = "{root}/storage-{driver}/root"\n'
        f'runroot = "{root}/storage-{driver}/run"\n'))
    containers_conf = conf / "containers.conf"
    _write_if_changed(containers_conf, (
        "[network]\n"  # the network backend's lock files (chroot isolation uses the host's network)
        'network_backend = "cni"\n'
        f'network_config_dir = "{root}/net"\n'
        'cni_plugin_dirs = ["/usr/lib/cni"]\n'
        "[engine]\n"  # buildah's temporary files for image copies (/var/tmp otherwise, whatever TMPDIR says)
        f'image_copy_tmp_dir = "{root}/tmp"\n'))
    env = dict(os.environ)
    env.update(CONTAINERS_STORAGE_CONF=str(storage_conf), CONTAINERS_CONF=str(containers_conf),
               TMPDIR=str(root / "tmp"), BUILDAH_ISOLATION="chroot")
    return env


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(text)
        tmp.replace(path)


def tool_env() -> dict[str, str]:
    """The environment for a containers tool (buildah, skopeo) run with :func:`in_cache_ns`: its directories exist."""
    return _buildah_env()


def in_cache_ns(argv: Sequence[str]) -> list[str]:
    """`argv` in a private mount namespace whose /var/lib and /var/tmp are the cache's: as root, buildah keeps its
    blob-info cache in /var/lib/containers and some temporary files in /var/tmp whatever the configuration says."""
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
            'mount --bind "$0/varlib" /var/lib && mount --bind "$0/tmp" /var/tmp && exec "$@"', str(cache_dir()),
            *argv]


def buildah_cmd(*args: str) -> list[str]:
    """``buildah ARGS`` as the bed runs it (with :func:`_buildah_env`'s environment)."""
    return in_cache_ns(["buildah", *args])


def buildah(*args: str, netns_cmd: Sequence[str] | None = None, timeout: float = 600) -> str:
    """Run buildah (optionally behind ``netns_cmd``, e.g. ``nsenter --net=...``); return its stdout."""
    cmd = [*(netns_cmd or []), *buildah_cmd(*args)]
    proc = subprocess.run(cmd, env=_buildah_env(), capture_output=True, text=True, check=False, timeout=timeout)
    if proc.returncode != 0:
        raise ImageError(f"buildah {' '.join(args[:3])} failed ({proc.returncode}):\n{proc.stdout[-3000:]}"
                         f"{proc.stderr[-3000:]}")
    return proc.stdout


def image_exists(ref: str) -> bool:
    cmd = buildah_cmd("inspect", "--type", "image", "--format", "{{.FromImageID}}", ref)
    return subprocess.run(cmd, env=_buildah_env(), capture_output=True, check=False, timeout=60).returncode == 0


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive flock on `path` (another process building the same thing waits, then finds it done)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --- the build context, as Docker and buildah see it --------------------------------------------------------------


def _glob_regex(pattern: str) -> str:
    """A .dockerignore pattern (Go filepath.Match plus ``**``) as a regular expression over a relative path."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[" and "]" in pattern[i + 1:]:
            end = pattern.index("]", i + 1)
            body = pattern[i + 1:end]
            out, i = out + "[" + ("^" + body[1:] if body.startswith("^") else body) + "]", end + 1
        elif pattern[i] == "\\" and i + 1 < len(pattern):
            out, i = out + re.escape(pattern[i + 1]), i + 2
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return out


def _ignore_rules(context: Path) -> list[tuple[bool, re.Pattern[str], str]]:
    """(is an exception, regex, cleaned pattern) for each line of the context's .dockerignore."""
    rules = []
    path = context / ".dockerignore"
    for line in path.read_text().splitlines() if path.exists() else []:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        if pattern in (".", ""):
            continue
        rules.append((negate, re.compile(_glob_regex(pattern)), pattern))
    return rules


def _excluded(rel: str, rules: list[tuple[bool, re.Pattern[str], str]]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parent directories decides."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for negate, regex, _pattern in rules:
        if any(regex.fullmatch(p) for p in prefixes):
            excluded = not negate
    return excluded


def _may_reinclude(rel_dir: str, rules: list[tuple[bool, re.Pattern[str], str]]) -> bool:
    """Could an exception pattern bring back something under an excluded directory? (Then it is walked.)"""
    depth = rel_dir.count("/") + 1
    for negate, _regex, pattern in rules:
        if not negate:
            continue
        head = pattern.split("/")[:depth]
        if any("**" in part for part in head):
            return True
        if len(head) == depth and re.fullmatch(_glob_regex("/".join(head)), rel_dir):
            return True
    return False


def context_files(context: Path) -> list[str]:
    """The relative paths (files, symlinks and directories) of `context` a build sees, sorted."""
    rules = _ignore_rules(context)
    found: list[str] = []
    for top, dirs, files in os.walk(context):
        rel_top = os.path.relpath(top, context)
        prefix = "" if rel_top == "." else rel_top + "/"
        keep = []
        for d in sorted(dirs):
            rel = prefix + d
            if not _excluded(rel, rules):
                found.append(rel)
                keep.append(d)
            elif _may_reinclude(rel, rules):
                keep.append(d)
        dirs[:] = keep
        found.extend(prefix + f for f in files if not _excluded(prefix + f, rules))
    return sorted(found)


def context_hash(context: Path, dockerfile_text: str, build_args: dict[str, str]) -> str:
    """sha256 of what decides the image: the Dockerfile, the build arguments and every file a build would send
    (path, type, permission bits, content or link target)."""
    h = hashlib.sha256()
    h.update(b"dockerfile\0" + dockerfile_text.encode() + b"\0")
    for key in sorted(build_args):
        h.update(f"arg\0{key}={build_args[key]}\0".encode())
    for rel in context_files(context):
        path = context / rel
        st = path.lstat()
        h.update(f"{rel}\0{stat.S_IFMT(st.st_mode)}\0{stat.S_IMODE(st.st_mode):o}\0".encode())
        if stat.S_ISLNK(st.st_mode):
            h.update(os.readlink(path).encode() + b"\0")
        elif stat.S_ISREG(st.st_mode):
            h.update(_file_digest(path, st))
    return h.hexdigest()


_DIGESTS: dict[tuple[int, int, int, int, int], bytes] = {}


def _file_digest(path: Path, st: os.stat_result) -> bytes:
    """sha256 of a file, remembered while its inode, size and times stay the same (the Debian tarball is big and
    every image depends on it)."""
    memo = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if memo not in _DIGESTS:
        with path.open("rb") as fh:
            _DIGESTS[memo] = hashlib.file_digest(fh, "sha256").digest()
    return _DIGESTS[memo]


# --- build and push -------------------------------------------------------------------------------------------


def _record(key: str) -> Path:
    return cache_dir() / "builds" / f"{key}.json"


# Keys found in the store by this process: each check costs a buildah run. An image removed while the process runs
# is not noticed by it (the next process rebuilds it).
_VERIFIED: set[str] = set()


def _cached(key: str, ref: str) -> bool:
    """The record says which image `key` built and the store still has it under `ref`."""
    if key in _VERIFIED:
        return True
    record = _record(key)
    if not record.exists():
        return False
    image_id = json.loads(record.read_text()).get("id", "")
    cmd = buildah_cmd("inspect", "--type", "image", "--format", "{{.FromImageID}}", ref)
    proc = subprocess.run(cmd, env=_buildah_env(), capture_output=True, text=True, check=False, timeout=60)
    if proc.returncode != 0 or not image_id or proc.stdout.strip() != image_id:
        return False
    _VERIFIED.add(key)
    os.utime(record)  # last use, for prune()
    return True


def prune(max_age_days: float = 14, dangling: bool = True) -> list[str]:
    """Remove the images no build has asked for in `max_age_days` (by their records' times) and, with `dangling`,
    the untagged ones (``--layers`` steps: the next build redoes them): every edit of the operator's code leaves a
    few hundred MB behind otherwise. Returns the refs removed."""
    removed = []
    cutoff = time.time() - max_age_days * 86400
    for record in sorted((cache_dir() / "builds").glob("*.json")):
        with _locked(record.with_suffix(".lock")):
            if record.stat().st_mtime >= cutoff:
                continue
            ref = json.loads(record.read_text()).get("ref", "")
            proc = subprocess.run(buildah_cmd("rmi", ref), env=_buildah_env(), capture_output=True, text=True,
                                  check=False, timeout=120)
            if proc.returncode == 0 or "image not known" in proc.stderr:
                record.unlink()
                removed.append(ref)
    if dangling:
        subprocess.run(buildah_cmd("rmi", "--prune"), env=_buildah_env(), capture_output=True, check=False,
                       timeout=600)
    return removed


def _tls_args() -> list[str]:
    """The host's CA bundle for pip inside RUN steps, as a read-only volume and a build argument (see NOTES)."""
    if not HOST_CA.is_file():
        return []
    return ["--volume", f"{HOST_CA.parent}:{CA_MOUNT}:ro", "--build-arg", f"PIP_CERT={CA_MOUNT}/{HOST_CA.name}"]


def _repository(name: str) -> str:
    """`name` without a tag or digest, lower case (what a local image name allows)."""
    repo = name.split("@", 1)[0]
    head, _, last = repo.rpartition("/")
    repo = f"{head}/{last.split(':', 1)[0]}" if head else last.split(":", 1)[0]
    if not re.fullmatch(r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*", repo.lower()):
        raise ImageError(f"{name!r} is not a repository name")
    return repo.lower()


def build(context: Path, dockerfile: Path | None, name: str, build_args: dict[str, str] | None = None) -> str:
    """``buildah bud`` (chroot isolation) of `context`, or the cached image for the same inputs.

    `name` is a repository name (``app``, ``shop/web``); a tag in it (``app:1``) is dropped: the local tag is the
    content key. Returns ``localhost/bed/<name>:<key>``: a name that changes with the content, so images built FROM
    it are keyed by their base too.
    """
    context = context.resolve()
    dockerfile = (dockerfile or context / "Dockerfile").resolve()
    args = dict(build_args or {})
    repo = _repository(name)
    key = context_hash(context, f"{repo}\0{dockerfile.read_text()}\0{json.dumps(_tls_args())}", args)[:32]
    ref = f"localhost/bed/{repo}:{key}"
    with _locked(cache_dir() / "builds" / f"{key}.lock"):
        if _cached(key, ref):
            return ref
        cmd = ["bud", "--isolation", "chroot", "--layers", "--pull-never", "--file", str(dockerfile), "--tag", ref,
               *_tls_args()]
        for k, v in sorted(args.items()):
            cmd += ["--build-arg", f"{k}={v}"]
        started = time.monotonic()
        buildah(*cmd, str(context), timeout=BUILD_TIMEOUT)
        image_id = buildah("inspect", "--type", "image", "--format", "{{.FromImageID}}", ref).strip()
        _record(key).write_text(json.dumps({"id": image_id, "ref": ref, "context": str(context),
                                            "dockerfile": str(dockerfile), "args": args,
                                            "seconds": round(time.monotonic() - started, 1)}) + "\n")
        _VERIFIED.add(key)
    return ref


def push(local: str, dest_ref: str, netns_cmd: list[str] | None = None) -> str:
    """Push `local` to `dest_ref` (``HOST:PORT/REPO:TAG``, plain HTTP) and return ``dest_ref@sha256:...``: the
    reference pods should use (the digest pins exactly this image).

    `netns_cmd` prefixes buildah, e.g. ``["nsenter", "--net=/run/netns/bed"]`` for a registry inside a network
    namespace."""
    with tempfile.TemporaryDirectory(dir=cache_dir() / "tmp") as tmp:
        digest_file = Path(tmp) / "digest"
        buildah("push", "--tls-verify=false", "--digestfile", str(digest_file), local, f"docker://{dest_ref}",
                netns_cmd=netns_cmd, timeout=BUILD_TIMEOUT)
        digest = digest_file.read_text().strip()
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        raise ImageError(f"buildah push {local} -> {dest_ref}: unexpected digest {digest!r}")
    return f"{dest_ref}@{digest}"


# --- the images the bed uses ------------------------------------------------------------------------------------


def debian_rootfs() -> Path:
    """The mmdebstrap tarball (made once per suite/mirrors/options), in a directory of its own: a build context."""
    spec = json.dumps([SUITE, MMDEBSTRAP_OPTS, DEBIAN_MIRRORS])
    out_dir = cache_dir() / "debian" / f"{SUITE}-{hashlib.sha256(spec.encode()).hexdigest()[:12]}"
    tarball = out_dir / "rootfs.tar"
    with _locked(cache_dir() / "debian" / ".lock"):
        if tarball.exists():
            return tarball
        out_dir.mkdir(parents=True, exist_ok=True)
        partial = out_dir.with_name(out_dir.name + ".tar.part")
        env = _buildah_env()  # for TMPDIR: mmdebstrap's temporary root lives in the cache too
        proc = subprocess.run(["mmdebstrap", "--quiet", *MMDEBSTRAP_OPTS, "--format=tar", SUITE, str(partial),
                               *DEBIAN_MIRRORS], env=env, capture_output=True, text=True, check=False,
                              timeout=BUILD_TIMEOUT)
        if proc.returncode != 0:
            partial.unlink(missing_ok=True)
            raise ImageError(f"mmdebstrap failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        partial.replace(tarball)
    return tarball


def debian_base() -> str:
    return build(debian_rootfs().parent, DOCKERFILES / "debian" / "Dockerfile", "debian")


def python_base() -> str:
    return build(DOCKERFILES / "python", None, "python", {"BASE": debian_base()})


def operator_build_args() -> dict[str, str]:
    """The project's Dockerfile on the bed's bases: Debian's python3 and postgresql-client (no PGDG, no Docker Hub)."""
    return {"PYTHON_IMAGE": python_base(), "PG_SOURCE": "debian", "PG_MAJOR": BED_PG_MAJOR}


def operator_image() -> str:
    return build(REPO, REPO / "Dockerfile", "alembic-operator", operator_build_args())


def app_base() -> str:
    return build(DOCKERFILES / "appbase", None, "appbase", {"BASE": python_base()})


SHOP_VERSIONS = {"1.0": (False, ()), "1.1": (True, ()), "2.0": (True, ("2.0",)), "2.1": (True, ("2.0", "2.1")),
                 "2.0-naive": (True, ("2.0-naive",))}  # the shop's releases: revision 5 fixed, releases/ laid over


def shop_image(fixed: bool = False, version: str | None = None) -> str:
    """The shop's image (examples/shop/Dockerfile); ``version`` one of SHOP_VERSIONS (``fixed`` says 1.1 or 1.0)."""
    shop = REPO / "examples" / "shop"
    version = version or ("1.1" if fixed else "1.0")
    fixed, releases = SHOP_VERSIONS[version]
    return build(shop, None, "shop", {"PYTHON_IMAGE": python_base(), "SHOP_FIXED": "1" if fixed else "0",
                                      "SHOP_RELEASES": " ".join(releases), "SHOP_VERSION": version})


def app_image(project: Path, push_to: str | None = None, netns_cmd: list[str] | None = None,
              user: str | None = None) -> str:
    """One generated Alembic project as an image: the app base plus one layer with the project's files in /app
    (the spec's workingDir), cached by the project's content like any :func:`build`.

    `user` sets the image's USER instead of the base's 10001:10001 (``"0"``: root, as an image without a USER line;
    ``"app"``: the base's user 10001 by its name), as app images that do not follow the README are built.

    A thin ``buildah bud`` costs about half a second on overlay (measured against ``buildah from`` + ``copy`` +
    ``commit``, which was no faster), so it is a plain build. With `push_to` (``HOST:PORT/REPO``) the image is
    pushed as ``<push_to>:<key>`` and the pushed reference (with digest) is returned; otherwise the local name.

    A project without a .dockerignore gets one that leaves out bytecode: tests that also run Alembic in-process
    write __pycache__ into it, which must not make a new image.
    """
    ignore = project / ".dockerignore"
    if not ignore.exists():
        ignore.write_text("# bed/images.py app_image(): bytecode is no part of the app\n**/__pycache__\n**/*.pyc\n")
    if user is None:
        ref = build(project, DOCKERFILES / "app" / "Dockerfile", "app", {"BASE": app_base()})
    else:
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]*)?", user):
            raise ImageError(f"{user!r} is not a USER (a name or a number, optionally :group)")
        dockerfile = cache_dir() / "dockerfiles" / f"app-user-{user.replace(':', '-')}" / "Dockerfile"
        dockerfile.parent.mkdir(parents=True, exist_ok=True)
        _write_if_changed(dockerfile, (DOCKERFILES / "app-user" / "Dockerfile").read_text().replace("@APP_USER@", user))
        ref = build(project, dockerfile, "app", {"BASE": app_base()})
    if push_to is None:
        return ref
    return push(ref, f"{push_to}:{ref.rsplit(':', 1)[1][:20]}", netns_cmd=netns_cmd)


def image_size(ref: str) -> str:
    """The image's uncompressed size as ``buildah images`` prints it (e.g. ``127 MB``)."""
    tag = ref.rsplit(":", 1)[1]
    for line in buildah("images", "--format", "{{.Tag}} {{.Size}}", ref).splitlines():  # every tag of the repo
        found, _, size = line.strip().partition(" ")
        if found == tag:
            return size.strip()
    raise ImageError(f"{ref}: not in the store")


# --- command line (measurements, and building by hand) -------------------------------------------------------


def _timed(label: str, fn: Callable[[], str]) -> str:
    started = time.monotonic()
    ref = fn()
    print(f"{label:12s} {time.monotonic() - started:7.1f}s  {ref}", flush=True)
    return ref


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bed.images", description="build the bed's images (cached)")
    parser.add_argument("what", nargs="*", default=["all"],
                        help="debian, python, operator, appbase, shop, app:DIR, build:DIR (default: all), "
                             "prune:DAYS (remove images unused for DAYS days)")
    parser.add_argument("--push-to", help="HOST:PORT prefix to push to (with --netns PATH for nsenter --net)")
    parser.add_argument("--netns", help="network namespace file, e.g. /run/netns/bed")
    parser.add_argument("--sizes", action="store_true", help="print each image's size")
    args = parser.parse_args(argv)
    named: dict[str, Callable[[], str]] = {"debian": debian_base, "python": python_base, "operator": operator_image,
                                           "appbase": app_base, "shop": shop_image}
    wanted = list(named) if args.what == ["all"] else args.what
    netns_cmd = ["nsenter", f"--net={args.netns}"] if args.netns else None
    try:
        for item in wanted:
            kind, _, path = item.partition(":")
            if kind == "prune":
                print("\n".join(prune(float(path or 14))))
                continue
            if kind == "app":
                ref = _timed(item, functools.partial(app_image, Path(path)))
            elif kind == "build":
                ref = _timed(item, functools.partial(build, Path(path), None, Path(path).resolve().name.lower()))
            else:
                ref = _timed(item, named[kind])
            if args.sizes:
                print(f"{'':12s} {image_size(ref):>8s}", flush=True)
            if args.push_to:
                repo = ref.removeprefix("localhost/bed/").split(":")[0]
                print(push(ref, f"{args.push_to}/{repo}:{ref.rsplit(':', 1)[1][:20]}", netns_cmd))
    except (ImageError, KeyError, subprocess.TimeoutExpired) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

