"""Fixtures for the end-to-end tests: the CRD on the bed, an operator process, an app, its database.

Every end-to-end test ends with a leak check: the database password (and any value a test adds to `e2e.secrets`,
such as an S3 store's keys) must not appear in the operator's log, in any Event, status, ConfigMap (run records,
plans' SQL) or Job spec of the namespace, or in any container log the node kept.

The helpers that read the database (`checksum`, `revision`, `columns`, `has_table`) go through SQLAlchemy with the
database's URL, so that a scenario reads the same on every engine. The `engine` fixture says which database a test
gets ("postgresql" unless the test is parametrized): `@on_every_engine` runs a scenario on each of ENGINES, on one
server per engine for the session, relayed into the bed as pods reach it.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from kubernetes import client as k8s

from alembic_operator import constants as c
from apps import Rev, make_project
from bed import images
from bed.controlplane import Bed
from harness import Cluster, OperatorProcess, wait_for

REPO = Path(__file__).resolve().parent.parent
CRD = REPO / "crds" / "databasemigrations.yaml"
SET_CRD = REPO / "crds" / "databasemigrationsets.yaml"  # the operator watches DatabaseMigrationSets too
APPS_ROOT = Path.home() / ".cache" / "alembic-operator" / "test-apps"

R1, R2, R3, R4 = "a1a1a1a1a101", "b2b2b2b2b202", "c3c3c3c3c303", "d4d4d4d4d404"
FAIL, SLOW = "f5f5f5f5f505", "e6e6e6e6e606"

BASE_REVISIONS = [
    Rev(R1, upgrade=['op.create_table("customers", sa.Column("id", sa.Integer, primary_key=True), '
                     'sa.Column("name", sa.String(80), nullable=False))'],
        downgrade=['op.drop_table("customers")']),
    Rev(R2, upgrade=['op.create_table("orders", sa.Column("id", sa.Integer, primary_key=True), '
                     'sa.Column("customer_id", sa.Integer, sa.ForeignKey("customers.id")), '
                     'sa.Column("total", sa.Numeric(10, 2), nullable=False), '
                     'sa.Column("legacy_code", sa.String(20)))'],
        downgrade=['op.drop_table("orders")']),
    Rev(R3, upgrade=['op.add_column("customers", sa.Column("email", sa.String(120)))'],
        downgrade=['op.drop_column("customers", "email")']),
]
DROP_LEGACY = Rev(R4, upgrade=['op.drop_column("orders", "legacy_code")'],
                  downgrade=['op.add_column("orders", sa.Column("legacy_code", sa.String(20)))'])
# Fails halfway: the table is created, then a constraint the existing rows violate.
FAILING = Rev(FAIL, upgrade=['op.create_table("shipments", sa.Column("id", sa.Integer, primary_key=True))',
                             'op.create_check_constraint("total_positive", "orders", "total > 0")'],
              downgrade=['op.drop_constraint("total_positive", "orders")', 'op.drop_table("shipments")'])
# Two DDL statements run, then a third fails (seed()'s free order violates it): where DDL is not transactional
# (MariaDB), the revision is half-applied; where it is (PostgreSQL), its transaction takes all three back.
HALF_APPLIED = Rev(FAIL, upgrade=['op.create_table("shipments", sa.Column("id", sa.Integer, primary_key=True))',
                                  'op.add_column("orders", sa.Column("note", sa.Text))',
                                  'op.create_check_constraint("total_positive", "orders", "total > 0")'],
                   downgrade=['op.drop_constraint("total_positive", "orders", type_="check")',
                              'op.drop_column("orders", "note")', 'op.drop_table("shipments")'])
# Fails at its first statement: nothing of it is left behind on any engine.
FAILING_AT_ONCE = Rev(FAIL, upgrade=['op.create_check_constraint("total_positive", "orders", "total > 0")'],
                      downgrade=['op.drop_constraint("total_positive", "orders", type_="check")'])


def sleep(seconds: float) -> str:
    """A revision's body line that sleeps on the database, in the dialect it runs on (offline too)."""
    return (f'op.execute("SELECT pg_sleep({seconds})" if op.get_context().dialect.name == "postgresql" '
            f'else "SELECT SLEEP({seconds})")')


GATE_TABLE = "e2e_gate_open"


def gated(rev: str) -> Rev:
    """A harmless revision that counts how often it ran (table runs) and, online, waits until the test opens the
    gate by creating GATE_TABLE: a migration that lasts exactly as long as a test needs, however loaded the machine.
    It asks the catalog, which every statement reads afresh on both engines (a row would not do: MariaDB's
    repeatable read keeps the revision's first snapshot, and a locking read there would block the test's insert).
    MariaDB may answer the catalog query with error 1684 while the test's CREATE TABLE is under way: that one error
    means "not yet"; any other (a lost connection) is the run's."""
    return Rev(rev, upgrade=['op.execute("CREATE TABLE IF NOT EXISTS runs (rev text)")',
                             f'op.execute("INSERT INTO runs VALUES (\'{rev}\')")',
                             "def gate_open() -> bool:",
                             "    try:",
                             f"        return sa.inspect(op.get_bind()).has_table('{GATE_TABLE}')",
                             "    except sa.exc.OperationalError as err:",
                             "        if err.orig.args[:1] != (1684,):  # MariaDB: the test is creating it now",
                             "            raise",
                             "        return False",
                             "while not op.get_context().as_sql and not gate_open():",
                             "    time.sleep(0.2)"],
               downgrade=[f'op.execute("DELETE FROM runs WHERE rev = \'{rev}\'")'], extra_imports=["import time"])


def slow(rev: str, seconds: float, down: str | None = None) -> Rev:
    """A harmless revision that takes a while and counts how often it ran (table runs)."""
    kw: dict[str, Any] = {} if down is None else {"down_revision": down}
    return Rev(rev, upgrade=['op.execute("CREATE TABLE IF NOT EXISTS runs (rev text)")',
                             f'op.execute("INSERT INTO runs VALUES (\'{rev}\')")',
                             sleep(seconds)],
               downgrade=[f'op.execute("DELETE FROM runs WHERE rev = \'{rev}\'")'], **kw)


class Database(Protocol):
    """A test database on any engine (bed.postgres.Database, bed.mariadb.Database)."""

    @property
    def url(self) -> str: ...  # SQLAlchemy URL with the password: a secret

    @property
    def password(self) -> str: ...

    def query(self, sql: str, *params: object) -> list[tuple[object, ...]]: ...

    def at(self, host: str, port: int) -> Database: ...


@contextlib.contextmanager
def connect(db: Database) -> Iterator[sa.Connection]:
    engine = sa.create_engine(db.url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def checksum(db: Database, table: str, columns: str = "*") -> str:
    """A digest of the table's rows (the columns given), in no particular order: the same rows give the same digest
    on every engine (values as the driver returns them: Decimal, int, str, None)."""
    with connect(db) as conn:
        rows = conn.execute(sa.text(f"SELECT {columns} FROM {table}")).all()
    text = "|".join(sorted(repr(tuple(row)) for row in rows))
    return hashlib.md5(text.encode()).hexdigest()


def revision(db: Database) -> str | None:
    try:
        with connect(db) as conn:
            rows = conn.execute(sa.text("SELECT version_num FROM alembic_version")).all()
    except sa.exc.DBAPIError:
        return None
    return str(rows[0][0]) if rows else None


def columns(db: Database, table: str) -> list[str]:
    """The table's column names, in the database's own schema (another test's database on the server never counts)."""
    with connect(db) as conn:
        return [col["name"] for col in sa.inspect(conn).get_columns(table)]


def has_table(db: Database, table: str) -> bool:
    with connect(db) as conn:
        return bool(sa.inspect(conn).has_table(table))


@dataclass(frozen=True)
class EngineKind:
    """What a scenario needs to know about the database it runs on, and where the fixtures get it."""

    name: str  # the test's parameter
    database_fixture: str  # a fresh database per test
    in_bed_fixture: str  # (host, port) at which the bed reaches the session's server
    url_word: str  # what a URL of it contains (never in a Job's plain env)
    dump_head: re.Pattern[bytes]  # how a backup file of it begins
    transactional_ddl: bool  # a failed revision leaves nothing of itself behind


POSTGRESQL = EngineKind("postgresql", "database", "postgres_in_bed", "postgresql", re.compile(rb"PGDMP"), True)
# mariadb-dump's SQL text; since 10.11.8 its first line keeps older clients from running its commands.
MARIADB = EngineKind("mariadb", "mariadb_database", "mariadb_in_bed", "mysql",
                     re.compile(rb"(/\*M!999999\\- enable the sandbox mode \*/ ?\n)?-- MariaDB dump"), False)
ENGINES = {kind.name: kind for kind in (POSTGRESQL, MARIADB)}
on_every_engine = pytest.mark.parametrize("engine", list(ENGINES))


@dataclass
class E2E:
    bed: Bed
    cluster: Cluster
    db: Database
    operator: OperatorProcess
    tmp: Path
    backups: Path
    apps: Path
    pod_db: Database | None = None  # the database as pods (and the operator, in the bed's namespace) reach it
    projects: list[Path] = field(default_factory=list)
    images: dict[Path, str] = field(default_factory=dict)  # project -> its image in the bed's registry
    kind: EngineKind = POSTGRESQL
    secrets: list[str] = field(default_factory=list)  # more values the leak check looks for (a store's keys)

    @property
    def ns(self) -> str:
        return self.cluster.ns

    def project(self, revisions: list[Rev], transaction_per_migration: bool = False, name: str = "app",
                models: str | None = None, models_module: str | None = None) -> Path:
        # A directory that outlives the test run less often than tmp_path is cleaned: the "image" of the Jobs.
        path = make_project(self.apps / f"{name}-{len(self.projects)}", revisions,
                            transaction_per_migration=transaction_per_migration, models=models,
                            models_module=models_module).parent
        self.projects.append(path)
        self.images[path] = app_image(self.bed, path)
        return path

    @property
    def pod_url(self) -> str:
        """The database URL to put in Secrets: as pods and the operator see the database."""
        return (self.pod_db or self.db).url

    def upgrade_directly(self, project: Path, target: str) -> None:
        """Bring the database somewhere by hand (what a team did before the operator)."""
        self.upgrade_directly_on(self.db, project, target)

    @staticmethod
    def upgrade_directly_on(db: Database, project: Path, target: str) -> None:
        cfg = Config(str(project / "alembic.ini"))
        cfg.set_main_option("sqlalchemy.url", db.url.replace("%", "%%"))
        command.upgrade(cfg, target)

    def seed(self) -> None:
        self.db.query("INSERT INTO customers (id, name) VALUES (1, 'ada'), (2, 'grace'), (3, 'linus')")
        self.db.query("INSERT INTO orders (id, customer_id, total, legacy_code) VALUES "
                      "(1, 1, 10.50, 'L-1'), (2, 2, 0, 'L-2'), (3, 3, 99.99, NULL)")

    def spec(self, project: Path, target: str = "head", **extra: Any) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "database": {"urlSecretRef": {"name": "db", "key": "url"}},
            "migrations": {"image": self.images[project], "workingDir": images.APP_DIR},
            "targetRevision": target,
            "backup": {"volume": {"hostPath": {"path": str(self.backups), "type": "DirectoryOrCreate"}},
                       "retain": 3},
        }
        spec.update(extra)
        return spec

    def leak_check(self) -> None:
        password = self.db.password
        places: dict[str, str] = {"operator log": self.operator.log()}
        for obj in self.cluster.custom.list_namespaced_custom_object(c.GROUP, c.VERSION, self.ns,
                                                                     c.PLURAL)["items"]:
            places[f"dbm/{obj['metadata']['name']}"] = str(obj)
        for obj in self.cluster.custom.list_namespaced_custom_object(c.GROUP, c.VERSION, self.ns,
                                                                     c.SET_PLURAL)["items"]:
            places[f"dbms/{obj['metadata']['name']}"] = str(obj)
        # The run records and the plans' SQL (ConfigMaps the operator writes), and any other ConfigMap of the test.
        for cm in self.cluster.core.list_namespaced_config_map(self.ns).items:
            places[f"configmap/{cm.metadata.name}"] = str(cm.data) + str(cm.binary_data) + str(cm.metadata)
        places["events"] = str(self.cluster.events())
        places["jobs"] = str([self.cluster.api.sanitize_for_serialization(j)
                              for j in self.cluster.batch.list_namespaced_job(self.ns).items])
        places["pods"] = str(self.cluster.pods())
        # Every container log the node kept (the kubelet's /var/log/pods/<namespace>_<pod>_<uid>/), and the bed's own
        # component logs; not the whole bed directory, where containerd adds and removes snapshots meanwhile.
        pod_logs = self.bed.dir / "fs" / "var-log" / "pods"
        for log in [*pod_logs.glob(f"{self.ns}_*/*/*.log"), *(self.bed.dir / "logs").glob("*.log")]:
            if log.name != "etcd.log":
                with contextlib.suppress(FileNotFoundError):  # a pod deleted meanwhile
                    places[str(log)] = log.read_text(errors="replace")
        assert any(str(pod_logs) in where for where in places) or not self.cluster.pods(), "no container log found"
        leaks = [where for where, text in places.items() if password in text]
        assert not leaks, f"the database password leaked into: {leaks}"
        for secret in self.secrets:
            leaks = [where for where, text in places.items() if secret in text]
            assert not leaks, f"a secret ({len(secret)} characters) leaked into: {leaks}"


@pytest.fixture(scope="session")
def crd(bed: Bed) -> Path:
    proc = bed.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD), "-f", str(SET_CRD))
    assert proc.returncode == 0, proc.stderr
    ext = k8s.ApiextensionsV1Api(k8s.ApiClient(_config(bed)))

    def established() -> bool:
        return all(any(x.type == "Established" and x.status == "True" for x in
                       ext.read_custom_resource_definition(f"{plural}.{c.GROUP}").status.conditions or [])
                   for plural in (c.PLURAL, c.SET_PLURAL))

    wait_for(established, 30, "the CRD to be established")
    return CRD


def app_image(bed: Bed, project: Path) -> str:
    """The project as production has it: the app base image plus a layer with its scripts, in the bed's registry
    (built once per content: the same project twice is one build)."""
    return images.app_image(project, push_to=f"{bed.registry}/apps/{project.name.lower()}", netns_cmd=bed.netns_cmd())


def backups_dir(bed: Bed, namespace: str) -> Path:
    """A hostPath backup directory the node sees at the same path (the bed's directory is visible to it), writable
    by the operator image's non-root user (fsGroup does not apply to hostPath volumes)."""
    path = bed.dir / "backups" / namespace
    path.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o755)
    path.chmod(0o777)
    return path


def _config(bed: Bed) -> k8s.Configuration:
    return bed.client_configuration()


@pytest.fixture
def engine() -> str:
    """The database engine of the `e2e` fixture: PostgreSQL, unless the test is parametrized (`on_every_engine`)."""
    return POSTGRESQL.name


@pytest.fixture
def e2e(bed: Bed, crd: Path, kube_api: k8s.ApiClient, namespace: str, engine: str, request: pytest.FixtureRequest,
        tmp_path: Path) -> Iterator[E2E]:
    kind = ENGINES[engine]
    # Asked for by name: a run of PostgreSQL scenarios starts no MariaDB server, and the other way round.
    database: Database = request.getfixturevalue(kind.database_fixture)
    in_bed: tuple[str, int] = request.getfixturevalue(kind.in_bed_fixture)
    backups = backups_dir(bed, namespace)
    cluster = Cluster(kube_api, namespace)
    pod_db = database.at(*in_bed)
    cluster.secret("db", {"url": pod_db.url})
    operator = OperatorProcess(bed, [namespace], tmp_path / "operator.log").start()
    APPS_ROOT.mkdir(parents=True, exist_ok=True)
    apps = Path(tempfile.mkdtemp(prefix="app-", dir=APPS_ROOT))
    env = E2E(bed=bed, cluster=cluster, db=database, operator=operator, tmp=tmp_path, backups=backups, apps=apps,
              pod_db=pod_db, kind=kind)
    try:
        yield env
        env.leak_check()
    finally:
        operator.stop()
        shutil.rmtree(apps, ignore_errors=True)
        shutil.rmtree(backups, ignore_errors=True)
        # Let the namespace go without our finalizer blocking it.
        for obj in cluster.custom.list_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.PLURAL)["items"]:
            cluster.patch(obj["metadata"]["name"], {"metadata": {"finalizers": None}})


def sha256_file(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
