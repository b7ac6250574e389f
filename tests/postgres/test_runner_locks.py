"""The runner's lock and statement timeouts against a real PostgreSQL: a migration blocked by a long transaction
gives up after its lock timeout (so the app's queries queue behind it no longer than that), names the blocker
without its query's values, changes nothing, and succeeds once the blocker is gone."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from test_check_apps import ASYNC_ENV, async_url
from test_runner import Runner, run, version

from apps import Rev, make_project
from bed.postgres import Database
from blocking import SECRET, Reader, blocker
from harness import wait_for

pytestmark = pytest.mark.postgres

R1, R2 = "bbbbbbbb0001", "bbbbbbbb0002"
ORDERS = Rev(R1, upgrade=['op.create_table("orders", sa.Column("id", sa.Integer, primary_key=True), '
                          'sa.Column("code", sa.String(20)))',
                          'op.execute("INSERT INTO orders VALUES (1, \'a\'), (2, \'b\')")'],
             downgrade=['op.drop_table("orders")'])
ADD_NOTE = Rev(R2, upgrade=['op.add_column("orders", sa.Column("note", sa.Text))'],
               downgrade=['op.drop_column("orders", "note")'])


def test_a_blocked_migration_gives_up_after_its_lock_timeout_names_the_blocker_and_changes_nothing(
        runner: Runner, app: Path) -> None:
    make_project(app, [ORDERS, ADD_NOTE])
    assert runner("upgrade", "--from", "base", "--to", R1).rc == 0
    reader = Reader(runner.database)
    with blocker(runner.database, "SELECT count(*) FROM orders WHERE code <> '{secret}'") as report:
        reader.start()
        started = time.monotonic()
        r = runner("upgrade", "--from", R1, "--to", R2, "--db-lock-timeout-ms", "1000")
        took = time.monotonic() - started
        reader.finish()
        pid = report.info.backend_pid
    print(f"\nlock timeout 1.0 s: the runner gave up after {took:.1f} s; the reader's longest wait was "
          f"{reader.longest:.2f} s over {reader.queries} queries")
    assert r.rc == 5 and r.result["reason"] == "LockTimeout", r.result
    [named] = r.result["blockers"]
    assert named["pid"] == pid and named["application"] == "nightly-report" and named["relation"] == "orders"
    assert named["state"] == "idle in transaction" and named["user"] == runner.database.user
    assert named["query"] == "SELECT count(*) FROM orders WHERE code <> ?"
    message = r.result["message"]
    assert f"pid {pid}" in message and "'nightly-report'" in message
    assert "1000 ms, spec.migrations.lockTimeout" in message
    assert "nothing was committed" in message
    assert SECRET not in r.stderr + str(r.result)
    assert f"revision {R2} waits for a lock on orders held by pid {pid}" in r.stderr
    assert "lock_timeout 1000 ms" in r.stderr
    assert version(runner.database) == R1
    assert runner.database.query("SELECT count(*) FROM information_schema.columns WHERE column_name = 'note'") == [(0,)]
    assert reader.longest < 1.0 + 1.5, "the app's queries queued behind the ALTER longer than its lock timeout"
    # The blocker is gone: it runs.
    r = runner("upgrade", "--from", R1, "--to", R2, "--db-lock-timeout-ms", "1000")
    assert r.rc == 0, r.stderr
    assert version(runner.database) == R2


def test_the_timeouts_hold_whatever_env_py_does(runner: Runner, app: Path) -> None:
    """An env.py that turns the lock timeout off on its connection is overruled: the spec's timeout holds."""
    make_project(app, [ORDERS, ADD_NOTE])
    env = app / "migrations" / "env.py"
    env.write_text(env.read_text().replace(
        "    with engine.connect() as connection:\n",
        "    with engine.connect() as connection:\n"
        "        connection.exec_driver_sql('SET lock_timeout = 0')\n"
        "        connection.commit()\n"))
    assert runner("upgrade", "--from", "base", "--to", R1).rc == 0
    with blocker(runner.database, "SELECT count(*) FROM orders WHERE code <> '{secret}'"):
        r = runner("upgrade", "--from", R1, "--to", R2, "--db-lock-timeout-ms", "500", timeout=30)
    assert r.result["reason"] == "LockTimeout", r.result
    assert "lock_timeout of the migration's session is 0 ms, not 500: setting it" in r.stderr


def test_statement_timeout_and_a_revision_that_opts_out(runner: Runner, app: Path) -> None:
    slow = Rev(R2, upgrade=['op.execute("SELECT pg_sleep(1.5)")'])
    make_project(app, [ORDERS, slow])
    assert runner("upgrade", "--from", "base", "--to", R1).rc == 0
    r = runner("upgrade", "--from", R1, "--to", R2, "--db-statement-timeout-ms", "500")
    assert r.rc == 1 and r.result["reason"] == "MigrationFailed", r.result
    assert "500 ms, spec.migrations.statementTimeout" in r.result["message"]
    assert "SET LOCAL statement_timeout = 0" in r.result["message"]
    assert version(runner.database) == R1
    # The documented opt-out: the revision lifts the limit for its own transaction.
    opted = Rev(R2, upgrade=['op.execute("SET LOCAL statement_timeout = 0")', 'op.execute("SELECT pg_sleep(1.5)")'])
    make_project(app, [ORDERS, opted])
    r = runner("upgrade", "--from", R1, "--to", R2, "--db-statement-timeout-ms", "500")
    assert r.rc == 0, r.result
    assert version(runner.database) == R2


def test_without_limits_the_session_keeps_its_defaults(runner: Runner, app: Path) -> None:
    make_project(app, [ORDERS])
    r = runner("upgrade", "--from", "base", "--to", R1)
    assert r.rc == 0 and "lock_timeout 0 ms, statement_timeout 0 ms" in r.stderr


def test_the_advisory_lock_holder_is_named(runner: Runner, app: Path) -> None:
    make_project(app, [ORDERS])
    key = 4343434343
    with psycopg.connect(runner.database.conninfo, autocommit=True, application_name="other-migrator") as other:
        other.execute("SELECT pg_advisory_lock(%s)", (key,))
        r = runner("upgrade", "--from", "base", "--to", R1, "--lock-key", str(key), "--lock-wait-seconds", "1")
        pid = other.info.backend_pid
    assert r.rc == 5 and r.result["reason"] == "LockTimeout"
    assert f"held by pid {pid} (user {runner.database.user}, application 'other-migrator'" in r.result["message"]
    assert r.result["blockers"][0]["pid"] == pid


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg_async"])
def test_an_async_app_is_bounded_and_names_its_blocker_too(database: Database, app: Path, driver: str) -> None:
    """asyncpg takes no libpq options: the runner sets the timeouts on env.py's connection (psycopg's async driver
    gets them in the URL); the blockers are read through the runner's own async engine."""
    make_project(app, [ORDERS, ADD_NOTE])
    (app / "migrations" / "env.py").write_text(ASYNC_ENV)
    url = async_url(database.url, driver)
    secrets = (database.password, database.url, url)
    assert run(app, url, "upgrade", "--from", "base", "--to", R1, secrets=secrets).rc == 0
    with blocker(database, "SELECT count(*) FROM orders WHERE code <> '{secret}'") as report:
        r = run(app, url, "upgrade", "--from", R1, "--to", R2, "--db-lock-timeout-ms", "1000", secrets=secrets)
        pid = report.info.backend_pid
    assert r.rc == 5 and r.result["reason"] == "LockTimeout", r.stderr
    assert r.result["blockers"][0]["pid"] == pid and r.result["blockers"][0]["application"] == "nightly-report"
    assert SECRET not in r.stderr + str(r.result)
    if driver == "asyncpg":
        assert "takes no session options in the URL" in r.stderr
        assert "lock_timeout of the migration's session is 0 ms, not 1000: setting it" in r.stderr
    else:
        assert "setting it" not in r.stderr
    assert "lock_timeout 1000 ms" in r.stderr
    assert version(database) == R1


def test_two_revisions_the_second_behind_a_held_lock_stop_at_the_first(runner: Runner, app: Path) -> None:
    """One transaction per revision: the first commits, the second times out and rolls back alone. The database is
    at the first, whole, and the report is a passing LockTimeout that says so (the operator continues from there)."""
    r3 = Rev("bbbbbbbb0003", upgrade=['op.create_table("notes", sa.Column("id", sa.Integer, primary_key=True))'])
    make_project(app, [ORDERS, r3, Rev(R2, upgrade=ADD_NOTE.upgrade)], transaction_per_migration=True)
    assert runner("upgrade", "--from", "base", "--to", R1).rc == 0
    with blocker(runner.database, "SELECT count(*) FROM orders WHERE code <> '{secret}'") as report:
        r = runner("upgrade", "--from", R1, "--to", R2, "--db-lock-timeout", "1000")
        pid = report.info.backend_pid
    assert r.rc == 5 and r.result["reason"] == "LockTimeout", r.result
    assert r.result["applied"] == [r3.id] and r.result["revision"] == r3.id and r.result["failedRevision"] == R2
    assert r.result["blockers"][0]["pid"] == pid and f"the database is at {r3.id}" in r.result["message"]
    assert version(runner.database) == r3.id
    assert runner("upgrade", "--from", r3.id, "--to", R2, "--db-lock-timeout", "1000").rc == 0
    assert version(runner.database) == R2


def test_a_connection_lost_mid_plan_is_reported_as_passing_with_what_committed(runner: Runner, app: Path) -> None:
    """The migration's backend is terminated (as a server restart does) while the second revision waits on a gate:
    the first committed, the second rolled back alone; the report is DatabaseUnreachable, at the first revision."""
    gate = Rev(R2, upgrade=['op.execute("SELECT pg_advisory_xact_lock_shared(4711)")',
                            'op.add_column("orders", sa.Column("note", sa.Text))'])
    make_project(app, [ORDERS, gate], transaction_per_migration=True)
    with psycopg.connect(runner.database.conninfo, autocommit=True) as test:
        test.execute("SELECT pg_advisory_lock(4711)")  # the gate: the second revision waits for it
        done: list[Any] = []
        thread = threading.Thread(target=lambda: done.append(runner("upgrade", "--from", "base", "--to", R2,
                                                                    "--db-lock-timeout", "0")))
        thread.start()

        def waiting() -> int | None:
            row = test.execute("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objid = 4711 "
                               "AND NOT granted").fetchone()
            return int(row[0]) if row else None

        pid = wait_for(waiting, 60, "the second revision to wait at its gate")
        test.execute("SELECT pg_terminate_backend(%s)", (pid,))
        thread.join(timeout=60)
    [r] = done
    assert r.rc == 5 and r.result["reason"] == "DatabaseUnreachable", r.result
    assert r.result["applied"] == [R1] and r.result["revision"] == R1 and r.result["failedRevision"] == R2
    assert f"revision {R2} lost its connection to the database" in r.result["message"]
    assert version(runner.database) == R1


def test_a_downgrade_that_timed_out_after_reverting_a_revision_is_a_failure(runner: Runner, app: Path) -> None:
    """The operator retries a downgrade from where it started: one that already reverted a revision cannot be
    retried that way, so its lock timeout is reported as the downgrade's failure (the rollback then restores)."""
    notes = Rev("bbbbbbbb0004", upgrade=['op.create_table("notes", sa.Column("id", sa.Integer, primary_key=True))'],
                downgrade=['op.drop_table("notes")'])
    make_project(app, [ORDERS, ADD_NOTE, notes], transaction_per_migration=True)
    assert runner("upgrade", "--from", "base", "--to", notes.id).rc == 0
    with blocker(runner.database, "SELECT count(*) FROM orders WHERE code <> '{secret}'"):
        r = runner("downgrade", "--from", notes.id, "--to", R1, "--db-lock-timeout", "1000")
    assert r.rc == 1 and r.result["reason"] == "DowngradeFailed", r.result
    assert r.result["reverted"] == [notes.id] and r.result["revision"] == R2 and r.result["blockers"]
    assert version(runner.database) == R2
