"""`alembic-operator check` on the shapes real applications take: an async env.py with an async driver (Alembic's
async template), and models that read the database URL from the environment when they are imported."""

from __future__ import annotations

import json
import uuid
import warnings
from pathlib import Path
from typing import Any

import pytest

from alembic_operator.check.cli import main
from apps import Rev, make_project
from bed.postgres import Database, PostgresServer

pytestmark = pytest.mark.postgres

MODELS = """\
sa.Table("customers", metadata, sa.Column("id", sa.Integer, primary_key=True), sa.Column("name", sa.String(80)))
sa.Table("orders", metadata, sa.Column("id", sa.Integer, primary_key=True),
         sa.Column("customer_id", sa.Integer, sa.ForeignKey("customers.id")))
"""
REVISIONS = [
    Rev("aaaa00000001", upgrade=['op.create_table("customers", sa.Column("id", sa.Integer, primary_key=True), '
                                 'sa.Column("name", sa.String(80)))'],
        downgrade=['op.drop_table("customers")']),
    Rev("aaaa00000002", upgrade=['op.create_table("orders", sa.Column("id", sa.Integer, primary_key=True), '
                                 'sa.Column("customer_id", sa.Integer, sa.ForeignKey("customers.id")))'],
        downgrade=['op.drop_table("orders")']),
]

# Alembic's `async` template (alembic init -t async), with the test project's models.
ASYNC_ENV = '''\
import asyncio

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import async_engine_from_config

config = context.config
target_metadata = None


def run_migrations_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    connectable = async_engine_from_config(config.get_section(config.config_ini_section, {}),
                                           prefix="sqlalchemy.", poolclass=pool.NullPool)
    async with connectable.connect() as connection:
        await connection.run_sync(do_run_migrations)
    await connectable.dispose()


def run_migrations_online() -> None:
    asyncio.run(run_async_migrations())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
'''


@pytest.fixture
def scratch_server(postgres: PostgresServer) -> str:
    return f"postgresql+psycopg://app:{postgres.password}@127.0.0.1:{postgres.port}/postgres"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code = main([*argv, "--format", "json"])
    captured = capsys.readouterr()
    assert captured.out, captured.err
    return code, json.loads(captured.out)


def statuses(report: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["status"] for c in report["checks"]}


def async_project(path: Path, models: bool = True) -> Path:
    ini = make_project(path, REVISIONS, models=MODELS if models else None)
    env = path / "migrations" / "env.py"
    target = next(line for line in env.read_text().splitlines() if "target_metadata" in line and "import" in line) \
        if models else "target_metadata = None"
    env.write_text(ASYNC_ENV.replace("target_metadata = None", target))
    return ini


def async_url(url: str, driver: str) -> str:
    return url.replace("postgresql+psycopg://", f"postgresql+{driver}://", 1).replace(
        "postgresql://", f"postgresql+{driver}://", 1)


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg_async"])
def test_an_async_env_py_with_an_async_driver(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              database: Database, scratch_server: str, driver: str) -> None:
    """Upgrade, models, round trip and lint on a scratch database, then the live one behind head: all through
    the app's own async env.py, no MissingGreenlet, no coroutine left unawaited."""
    ini = async_project(tmp_path)
    live = async_url(database.url, driver)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        code, report = run(capsys, "-c", str(ini), "--scratch-url", async_url(scratch_server, driver),
                           "--database-url", live)
    assert code == 0, report
    assert statuses(report) == {"integrity": "passed", "live": "passed", "lint": "passed", "upgrade": "passed",
                                "models": "passed", "roundtrip": "passed"}, report
    assert [f["rule"] for f in report["findings"]] == ["behind-head"], report
    assert not [w for w in seen if "never awaited" in str(w.message)], [str(w.message) for w in seen]
    # And the live database at head, compared with the models through the async driver.
    main(["-c", str(ini), "--scratch", "none", "--database-url", async_url(database.url, "psycopg")])
    capsys.readouterr()
    database.query("CREATE TABLE IF NOT EXISTS customers (id integer PRIMARY KEY, name varchar(80))")
    database.query("CREATE TABLE IF NOT EXISTS orders (id integer PRIMARY KEY, "
                   "customer_id integer REFERENCES customers (id))")
    database.query("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
    database.query("INSERT INTO alembic_version VALUES ('aaaa00000002')")
    database.query("ALTER TABLE customers ADD COLUMN note text")
    code, report = run(capsys, "-c", str(ini), "--scratch", "none", "--database-url", live)
    assert code == 1
    assert [f["message"] for f in report["findings"] if f["rule"] == "live-schema-drift"] == [
        "column customers.note (TEXT, NULL): in the live database, not in the models"]


def test_an_async_env_py_on_a_sqlite_scratch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ini = async_project(tmp_path)
    code, report = run(capsys, "-c", str(ini), "--scratch", "sqlite")
    assert code == 0, report
    assert statuses(report)["roundtrip"] == "passed" and statuses(report)["models"] == "passed", report


# An app whose models module builds its engine from the environment when it is imported (a common Flask/FastAPI
# layout), and whose env.py uses that engine.
IMPORT_TIME_MODELS = """\
import os

engine = sa.create_engine(os.environ["SHOP_DATABASE_URL"], poolclass=sa.pool.NullPool)
"""


def import_time_project(path: Path) -> Path:
    ini = make_project(path, REVISIONS, models=IMPORT_TIME_MODELS + MODELS)
    env = path / "migrations" / "env.py"
    source = env.read_text()
    module = next(line.split()[1] for line in source.splitlines() if line.startswith("from models_"))
    source = source.replace(f"from {module} import metadata as target_metadata",
                            f"from {module} import engine as app_engine, metadata as target_metadata")
    source = source.replace('engine = create_engine(config.get_main_option("sqlalchemy.url"), '
                            'poolclass=pool.NullPool)', "engine = app_engine")
    env.write_text(source)
    return ini


def test_an_app_that_reads_its_url_when_imported(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 database: Database, scratch_server: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The variable is set before anything of the app is imported, once per database: the live database and the
    scratch one are each checked with an engine made for them."""
    monkeypatch.delenv("SHOP_DATABASE_URL", raising=False)
    ini = import_time_project(tmp_path / f"app{uuid.uuid4().hex[:6]}")
    code, report = run(capsys, "-c", str(ini), "--scratch-url", scratch_server, "--database-url", database.url,
                       "--export-url-env", "SHOP_DATABASE_URL")
    assert code == 0, report
    assert statuses(report) == {"integrity": "passed", "live": "passed", "lint": "passed", "upgrade": "passed",
                                "models": "passed", "roundtrip": "passed"}, report
    assert [f["rule"] for f in report["findings"]] == ["behind-head"], report
    assert database.query("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]  # read only


def test_without_the_flag_the_refusal_says_to_pass_it(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     database: Database, scratch_server: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_DATABASE_URL", database.url)  # e.g. the developer's own shell
    ini = import_time_project(tmp_path / f"app{uuid.uuid4().hex[:6]}")
    assert main(["-c", str(ini), "--scratch-url", scratch_server, "--skip", "live"]) == 2
    err = capsys.readouterr().err
    assert "instead of" in err and "--export-url-env" in err
    assert database.query("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]
    # With the flag, but an app that reads another variable: the hint no longer says to pass the flag.
    assert main(["-c", str(ini), "--scratch-url", scratch_server, "--skip", "live",
                 "--export-url-env", "OTHER_URL"]) == 2
    err = capsys.readouterr().err
    assert "although OTHER_URL held that URL" in err and "pass --export-url-env" not in err
    assert database.query("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]


def test_an_upgrade_failure_names_the_real_target(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  scratch_server: str) -> None:
    """The upgrade stops in the middle for the round trip's snapshot; the failure is still one towards head."""
    broken = Rev("aaaa00000003", upgrade=['op.execute("SELECT no_such_function()")'], downgrade=["pass"])
    last = Rev("aaaa00000004", upgrade=['op.create_table("t4", sa.Column("id", sa.Integer, primary_key=True))'],
               downgrade=['op.drop_table("t4")'])
    ini = make_project(tmp_path, [*REVISIONS, broken, last])
    # --steps 1: the upgrade pauses at aaaa00000003 (where the round trip comes back to), and fails on the way there.
    code, report = run(capsys, "-c", str(ini), "--scratch-url", scratch_server, "--steps", "1")
    assert code == 1
    (failed,) = [f for f in report["findings"] if f["rule"] == "upgrade-failed"]
    assert failed["message"].startswith("upgrading an empty database to head failed in revision aaaa00000003"), failed
    assert "no_such_function" in failed["message"]
