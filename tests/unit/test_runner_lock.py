"""The runner never writes without the migration lock (no server): an engine whose dialect has no lock registered in
runner/lock.py is refused for upgrade, downgrade and stamp before anything runs, and every engine the operator knows
has one."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from alembic_operator import engines, reasons
from alembic_operator.constants import URL_ENV
from alembic_operator.runner import build
from alembic_operator.runner.errors import EXIT_CODES, Failure
from alembic_operator.runner.lock import DIALECTS, migration_lock
from apps import linear, make_project


def test_every_engine_of_the_operator_has_a_runner_lock() -> None:
    """An engine module without its `register(...)` call in runner/lock.py fails here, not in production."""
    missing = {engine.name: backend for engine in engines.REGISTRY for backend in engine.backends
               if backend not in DIALECTS}
    assert not missing, f"register a migration lock for these dialects in runner/lock.py: {missing}"


def test_the_lock_refuses_a_dialect_without_one_before_connecting() -> None:
    def connect() -> None:
        raise AssertionError("connected to a database it may not lock")

    engine = SimpleNamespace(dialect=SimpleNamespace(name="sqlite"), connect=connect)
    with pytest.raises(Failure) as failure, migration_lock(engine, 1, timeout=1):
        raise AssertionError("ran the writer without a lock")
    assert failure.value.reason == reasons.INVALID_DATABASE_URL
    assert "no migration lock for the sqlite dialect" in failure.value.message
    assert "postgresql" in failure.value.message  # what is supported


@pytest.fixture(scope="module")
def runner_pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build.build(tmp_path_factory.mktemp("runner") / "runner.pyz")


@pytest.mark.parametrize("command", [
    ("upgrade", "--from", "base", "--to", "{r1}"),
    ("stamp", "--revision", "{r1}"),
    ("downgrade", "--from", "{r1}", "--to", "base"),
])
def test_the_runner_refuses_a_writer_without_a_lock(tmp_path: Path, runner_pyz: Path,
                                                    command: tuple[str, ...]) -> None:
    """The built runner, on a SQLite database (a dialect without a lock): refused, nothing written."""
    revs = linear(1)
    make_project(tmp_path / "app", revs)
    database = tmp_path / "app.db"
    sqlite3.connect(database).close()
    if command[0] == "downgrade":  # at r1, by hand: what a downgrade would undo
        with sqlite3.connect(database) as conn:
            conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
            conn.execute("INSERT INTO alembic_version VALUES (?)", (revs[0].id,))
    before = database.read_bytes()
    result_file = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, str(runner_pyz), "--result-file", str(result_file),
         *(arg.format(r1=revs[0].id) for arg in command)],
        cwd=tmp_path / "app", env={**os.environ, URL_ENV: f"sqlite:///{database}"},
        capture_output=True, text=True, timeout=120, check=False)
    result = json.loads(result_file.read_text())
    assert result["ok"] is False and result["reason"] == reasons.INVALID_DATABASE_URL, (result, proc.stderr)
    assert "no migration lock for the sqlite dialect" in result["message"]
    assert proc.returncode == EXIT_CODES[reasons.INVALID_DATABASE_URL]
    assert database.read_bytes() == before
