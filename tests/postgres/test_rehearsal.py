"""The rehearsal on PostgreSQL (rehearsal_cases): the data-dependent failures caught on a scratch copy of the backup,
production untouched, each revision measured (wall time, rows, the longest lock), the scratch database dropped."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import rehearsal_cases as cases
from bed.postgres import Database, PostgresServer

pytestmark = pytest.mark.postgres


def server(postgres: PostgresServer, database: Database) -> cases.Server:
    def databases() -> set[str]:
        with postgres.admin() as conn:
            return {str(row[0]) for row in conn.execute("SELECT datname FROM pg_database").fetchall()}

    def snapshot() -> Any:
        rows = database.query("SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns "
                              "WHERE table_schema = 'public' ORDER BY 1, 2")
        constraints = database.query("SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE "
                                     "connamespace = 'public'::regnamespace ORDER BY 1")
        indexes = database.query("SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1")
        data = {str(t): hashlib.sha256(repr(database.query(f'SELECT * FROM "{t}" ORDER BY 1')).encode()).hexdigest()
                for (t,) in database.query("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        return rows, constraints, indexes, data

    # the scratch server: the same server, its own database `postgres` (the app role has CREATEDB)
    scratch = database.url.rsplit("/", 1)[0] + "/postgres"
    return cases.Server(database.url, scratch, database.password, database.query, databases, snapshot)


def test_failures_that_depend_on_production_rows_are_caught(postgres: PostgresServer, database: Database,
                                                             job: Any, tmp_path: Path) -> None:
    cases.check_failures(server(postgres, database), job, tmp_path)


def test_the_shops_revision_5_is_caught(postgres: PostgresServer, database: Database, job: Any,
                                        tmp_path: Path) -> None:
    def seed(url: str) -> None:
        proc = subprocess.run([sys.executable, "seed.py"], cwd=cases.SHOP, env={**os.environ, "DATABASE_URL": url},
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr

    result = cases.check_shop(server(postgres, database), job, tmp_path, seed)
    assert "violated by some row" in result["message"], result


def test_a_passing_rehearsal_is_measured(postgres: PostgresServer, database: Database, job: Any,
                                         tmp_path: Path) -> None:
    result = cases.check_passing(server(postgres, database), job, tmp_path, "SELECT pg_sleep(0.4)")
    assert result["locksSampled"] is True
    # The copy was vacuumed before the plan was timed; the app role may not CHECKPOINT (no pg_checkpoint): the
    # rehearsal goes on without it and says so.
    assert result["settleSeconds"] >= 0 and result["checkpointed"] is False, result
    first = result["revisions"][0]
    # ALTER TABLE's lock, held to the end of the transaction (env.py's one for the whole plan)
    lock = next(x for x in first["locks"] if (x["on"], x["mode"]) == ("public.orders", "AccessExclusiveLock"))
    assert lock["heldSeconds"] >= 0.2, first
