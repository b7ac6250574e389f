"""Shared fixtures: the local Kubernetes bed, a real PostgreSQL server and a real MariaDB server."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from bed.controlplane import Bed
from bed.mariadb import Database as MariaDBDatabase
from bed.mariadb import MariaDBServer
from bed.postgres import Database, PostgresServer
from bed.s3 import SeaweedFS

# the end-to-end fixtures (crd, e2e); job (the Job commands, in-process); the run's clock and order, and one bed
# shared by pytest-xdist's workers
pytest_plugins = ["e2e", "jobrun", "sharing"]

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

# --- PostgreSQL (written by the lead; keep) ---------------------------------------------------------------------


# Tests by kind: the folder says what a test needs, and a test may not need more than its folder allows.
SERVER_FIXTURES = {"postgres": {"postgres", "database"},
                   "mariadb": {"mariadb", "mariadb_database"},
                   "s3": {"s3", "s3_bucket"},
                   "bed": {"bed", "kube_api", "namespace", "kubectl", "postgres_in_bed", "mariadb_in_bed", "s3_in_bed",
                           "e2e"}}
FOLDER_ALLOWS = {"unit": set(), "postgres": {"postgres", "s3"}, "mariadb": {"mariadb", "s3"},
                 "cluster": {"postgres", "mariadb", "s3", "bed"}, "e2e": {"postgres", "mariadb", "s3", "bed"}}


@pytest.fixture(autouse=True)
def _loggers_stay_enabled() -> Iterator[None]:
    """An Alembic env.py run in the test process (a project's `check`, a runner test) calls logging's fileConfig,
    which disables every logger that exists then: a later test on the same worker would see nothing of the code
    under test (caplog empty, Kopf's peering records unseen). Each test starts with them enabled."""
    yield
    for logger in logging.Logger.manager.loggerDict.values():
        if isinstance(logger, logging.Logger):
            logger.disabled = False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """tests/unit needs no server (`make test-unit`), tests/postgres only PostgreSQL, tests/mariadb only MariaDB; a
    test that asks for more is an error, not a silent slow test in the wrong place."""
    wrong = []
    for item in items:
        folder = item.path.parent.name
        if folder not in FOLDER_ALLOWS:
            continue
        needs = {kind for kind, names in SERVER_FIXTURES.items() if names & set(getattr(item, "fixturenames", ()))}
        needs |= {m.name for m in item.iter_markers() if m.name in SERVER_FIXTURES}
        if needs - FOLDER_ALLOWS[folder]:
            wrong.append(f"{item.nodeid} needs {sorted(needs - FOLDER_ALLOWS[folder])}: move it out of tests/{folder}")
    if wrong:
        raise pytest.UsageError("\n".join(wrong))


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the session (for each pytest-xdist worker: server-wide state stays a worker's
    own), on a free loopback port, in a temporary data directory."""
    # Not under pytest's tmp_path: that is private to root, and the server runs as the postgres user.
    server = PostgresServer(Path(tempfile.mkdtemp(prefix="alembic-operator-pg-")))
    server.start()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def database(postgres: PostgresServer, request: pytest.FixtureRequest) -> Iterator[Database]:
    """A fresh database per test, owned by the application role; `database.url` is its SQLAlchemy URL."""
    name = re.sub(r"[^a-z0-9_]", "_", request.node.name.lower())[:40] + "_" + str(abs(hash(request.node.nodeid)))[:8]
    db = postgres.create_database(name)
    try:
        yield db
    finally:
        postgres.drop_database(name)


# --- MariaDB (bed.mariadb) ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariaDBServer]:
    """One real MariaDB server for the session (for each pytest-xdist worker: its named locks are server-wide), on
    a free loopback port, in a temporary data directory."""
    # Not under pytest's tmp_path: that is private to root, and the server runs as the mysql user.
    server = MariaDBServer(Path(tempfile.mkdtemp(prefix="alembic-operator-mariadb-")))
    try:
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture
def mariadb_database(mariadb: MariaDBServer, request: pytest.FixtureRequest) -> Iterator[MariaDBDatabase]:
    """A fresh database per test that the application user owns; `mariadb_database.url` is its SQLAlchemy URL."""
    name = re.sub(r"[^a-z0-9_]", "_", request.node.name.lower())[:40] + "_" + str(abs(hash(request.node.nodeid)))[:8]
    db = mariadb.create_database(name)
    try:
        yield db
    finally:
        mariadb.drop_database(name)


# --- an S3-compatible server (bed.s3: SeaweedFS) ------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3() -> Iterator[SeaweedFS]:
    """One real S3-compatible server (SeaweedFS) for the session (for each pytest-xdist worker), on free loopback
    ports, requiring signed requests (`s3.keys` may write, `s3.reader` only read; other keys are refused)."""
    server = SeaweedFS(Path(tempfile.mkdtemp(prefix="alembic-operator-s3-")))
    try:
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture
def s3_bucket(s3: SeaweedFS, request: pytest.FixtureRequest) -> str:
    """A fresh bucket per test, named after it (its objects go with the session's server)."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].rstrip("-")
    return s3.create_bucket(f"{slug}-{uuid.uuid4().hex[:8]}")


# --- Kubernetes test bed (bed.controlplane) ----------------------------------------------------------------------

Kubectl = Callable[..., "subprocess.CompletedProcess[str]"]


@pytest.fixture(scope="session")
def bed(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Bed]:
    """A control plane with a real node (kubelet, containerd, kube-proxy, CoreDNS, registry) for the session, in a
    temporary directory, stopped at the end. Under pytest-xdist, one bed for all workers (tests/sharing.py): each
    test still has a namespace and an operator process of its own.

    With BED_DIR=DIR set, the real bed already running there (`PYTHONPATH=tests python -m bed up --dir DIR`) is used
    instead and left running: handy when running tests over and over. No environment variable is set.
    """
    if reuse := os.environ.get("BED_DIR") or os.environ.get("BED_REAL_DIR"):
        existing = Bed(reuse)
        if not existing.is_up() or existing.node != "real":
            pytest.fail(f"BED_DIR={reuse}, but no bed with a real node is up there: "
                        f"run `PYTHONPATH=tests python -m bed up --dir {reuse}`")  # fmt: skip
        yield existing
        return
    import sharing  # registered by pytest_plugins above (imported here, after pytest could rewrite its asserts)

    if sharing.is_worker(request.config):  # pytest-xdist: the run's one bed, started by the controller
        yield sharing.attach_bed(request.config)
        return
    fresh = Bed(tmp_path_factory.mktemp("bed"), node="real", daemon=False)
    fresh.start()
    try:
        yield fresh
    finally:
        fresh.stop(purge=False)  # keeps logs/ and pki/ for post-mortems; removes every process, mount and cgroup


@pytest.fixture(scope="session")
def postgres_in_bed(bed: Bed, postgres: PostgresServer, request: pytest.FixtureRequest) -> tuple[str, int]:
    """(host, port) at which pods and processes inside the bed's network namespace reach `postgres`:
    `database.at(*postgres_in_bed)` is the database as they see it."""
    from sharing import suffix

    return bed.expose_host_port(postgres.port, name=f"postgres-relay{suffix(request.config)}")


@pytest.fixture(scope="session")
def mariadb_in_bed(bed: Bed, mariadb: MariaDBServer, request: pytest.FixtureRequest) -> tuple[str, int]:
    """(host, port) at which pods and processes inside the bed's network namespace reach `mariadb`:
    `mariadb_database.at(*mariadb_in_bed)` is the database as they see it."""
    from sharing import suffix

    return bed.expose_host_port(mariadb.port, name=f"mariadb-relay{suffix(request.config)}")


@pytest.fixture(scope="session")
def s3_in_bed(bed: Bed, s3: SeaweedFS, request: pytest.FixtureRequest) -> tuple[str, int]:
    """(host, port) at which pods inside the bed reach the `s3` server (its endpoint there is http://host:port)."""
    from sharing import suffix

    return bed.expose_host_port(s3.port, name=f"s3-relay{suffix(request.config)}")


@pytest.fixture(scope="session")
def kube_api(bed: Bed) -> Iterator[ApiClient]:
    """A kubernetes ApiClient for the bed's admin kubeconfig (the global kubernetes configuration is untouched)."""
    api = bed.api_client()
    try:
        yield api
    finally:
        api.close()  # type: ignore[no-untyped-call]


@pytest.fixture
def namespace(kube_api: ApiClient, request: pytest.FixtureRequest) -> Iterator[str]:
    """A unique namespace for the test, deleted afterwards (without waiting for it to be gone)."""
    from kubernetes import client as k8s

    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].rstrip("-")
    name = f"t-{slug}-{uuid.uuid4().hex[:6]}"
    core = k8s.CoreV1Api(kube_api)
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        try:
            core.delete_namespace(name, propagation_policy="Background")
        except k8s.ApiException as exc:
            if exc.status != 404:
                raise


@pytest.fixture
def kubectl(bed: Bed) -> Kubectl:
    """`kubectl(*args, input=None, check=False, timeout=120)`: runs the cached kubectl against the bed and returns
    the CompletedProcess (text output)."""
    return bed.kubectl
