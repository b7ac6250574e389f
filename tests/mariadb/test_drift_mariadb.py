"""The runner's `drift` on a real MariaDB: drift found, no drift, and a write during the comparison refused by the
read-only transaction (MySQL's SET SESSION ... READ ONLY alone would leave env.py's open transaction writable).

Each run goes through the built zipapp as the Jobs run it (a subprocess, the URL only in the environment), and the
password appears nowhere in what it wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from alembic_operator.runner import build
from apps import Rev, make_project
from bed.mariadb import Database

URL_ENV = "ALEMBIC_OPERATOR_DATABASE_URL"

CUSTOMERS = Rev("eeeeeeee0001", upgrade=[
    'op.create_table("customers", sa.Column("id", sa.Integer, primary_key=True),',
    '    sa.Column("name", sa.String(80), nullable=False), sa.Column("email", sa.String(200)))',
], downgrade=['op.drop_table("customers")'])
MODELS = """\
customers = sa.Table(
    "customers", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(80), nullable=False),
    sa.Column("email", sa.String(200)),
)
"""


@pytest.fixture(scope="module")
def runner_pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build.build(tmp_path_factory.mktemp("runner") / "runner.pyz")


def run(runner: Path, app: Path, db: Database, *args: str) -> tuple[int, dict[str, Any], str]:
    fd, name = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    result = Path(name)
    result.unlink()
    env = {**os.environ, URL_ENV: db.url}
    proc = subprocess.run([sys.executable, str(runner), "--result-file", str(result), *args], cwd=app, env=env,
                          capture_output=True, text=True, timeout=120)
    text = result.read_text() if result.exists() else ""
    result.unlink(missing_ok=True)
    assert text, proc.stderr
    for out in (proc.stdout, proc.stderr, text):
        assert db.password not in out
    return proc.returncode, json.loads(text), proc.stderr


@pytest.fixture
def app(tmp_path: Path, runner_pyz: Path, mariadb_database: Database) -> Path:
    path = tmp_path / "app"
    make_project(path, [CUSTOMERS], models=MODELS)
    rc, _result, err = run(runner_pyz, path, mariadb_database, "upgrade", "--from", "base", "--to", CUSTOMERS.id)
    assert rc == 0, err
    return path


def tables(db: Database) -> set[str]:
    return {str(row[0]) for row in db.query("SHOW TABLES")}


def test_no_drift_at_head(runner_pyz: Path, app: Path, mariadb_database: Database) -> None:
    rc, result, err = run(runner_pyz, app, mariadb_database, "drift")
    assert rc == 0, err
    assert result["drifted"] is False and result["modelsComparable"] is True, result
    assert result["current"] == CUSTOMERS.id and result["differences"] == []


def test_changes_made_by_hand_are_drift(runner_pyz: Path, app: Path, mariadb_database: Database) -> None:
    mariadb_database.query("ALTER TABLE customers ADD COLUMN note TEXT")
    mariadb_database.query("ALTER TABLE customers MODIFY name VARCHAR(50) NOT NULL")
    mariadb_database.query("CREATE TABLE legacy (id INT)")
    rc, result, err = run(runner_pyz, app, mariadb_database, "drift")
    assert rc == 0, err
    assert result["drifted"] is True
    assert sorted(result["differences"]) == sorted([
        "remove_column customers.note (TEXT)",
        "modify_type customers.name VARCHAR(50) -> VARCHAR(80)",
        "remove_table legacy",
    ])


def test_writes_during_the_comparison_are_refused(runner_pyz: Path, app: Path, mariadb_database: Database) -> None:
    """An env.py hook that writes during the comparison (DDL and DML) fails, and nothing is written."""
    env = app / "migrations" / "env.py"
    source = env.read_text()
    hook = (
        "def include_object(obj, name, type_, reflected, compare_to):\n"
        "    context.get_context().connection.exec_driver_sql(WRITE)\n"
        "    return True\n\n\n"
        "def run_migrations_online() -> None:\n"
    )
    source = source.replace("def run_migrations_online() -> None:\n", hook)
    configured = "            target_metadata=target_metadata,\n"
    source = source.replace(configured, configured + "            include_object=include_object,\n")
    assert "include_object=include_object" in source
    for write in ("CREATE TABLE sneaky (id INT)", "INSERT INTO customers (name) VALUES ('sneaky')"):
        env.write_text(f"WRITE = {write!r}\n" + source)
        rc, result, err = run(runner_pyz, app, mariadb_database, "drift")
        assert rc == 4, err
        assert result["reason"] == "DatabaseError", result
        assert "READ ONLY transaction" in result["message"], result
    assert "sneaky" not in tables(mariadb_database)
    assert mariadb_database.query("SELECT COUNT(*) FROM customers") == [(0,)]


def test_drift_rolls_back_what_env_py_did_before(runner_pyz: Path, app: Path, mariadb_database: Database) -> None:
    """A row env.py inserts in its transaction before run_migrations() is rolled back, never committed."""
    env = app / "migrations" / "env.py"
    online = "        with context.begin_transaction():\n            context.run_migrations()\n"
    source = env.read_text()
    assert source.count(online) == 1
    env.write_text(source.replace(online, (
        "        with context.begin_transaction():\n"
        "            connection.exec_driver_sql(\"INSERT INTO customers (name) VALUES ('early')\")\n"
        "            context.run_migrations()\n")))
    rc, result, err = run(runner_pyz, app, mariadb_database, "drift")
    assert rc == 0, err
    assert result["drifted"] is False
    assert mariadb_database.query("SELECT COUNT(*) FROM customers") == [(0,)]
