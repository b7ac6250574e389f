"""The runner's lock and statement timeouts on a real MariaDB: an ALTER behind a long transaction's metadata lock
gives up after the lock timeout (so the app's queries queue behind it no longer than that), names the blocker without
its values, and a plan of two revisions stops at a whole revision, reported as a passing LockTimeout."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pymysql
import pytest
from test_runner_mysql import runner

from apps import Rev, make_project
from bed.mariadb import APP_USER, Database, MariaDBServer

pytestmark = pytest.mark.mariadb

SECRET = "hunter2-card-4111"
R1, R2, R3 = "dddddddd0001", "dddddddd0002", "dddddddd0003"
AUTHORS = Rev(R1, upgrade=['op.create_table("authors", sa.Column("id", sa.Integer, primary_key=True), '
                           'sa.Column("name", sa.String(40)))',
                           'op.execute("INSERT INTO authors VALUES (1, \'ada\'), (2, \'bob\')")'])
BOOKS = Rev(R2, upgrade=['op.create_table("books", sa.Column("id", sa.Integer, primary_key=True))'])
BIO = Rev(R3, upgrade=['op.add_column("authors", sa.Column("bio", sa.Text))'])


@pytest.fixture
def seeing(mariadb: MariaDBServer) -> Iterator[None]:
    """The migration's user may see other sessions' transactions (PROCESS), as the docs ask, to name blockers."""
    with mariadb.admin() as conn, conn.cursor() as cur:
        cur.execute(f"GRANT PROCESS ON *.* TO '{APP_USER}'@'%'")
    yield
    with mariadb.admin() as conn, conn.cursor() as cur:
        cur.execute(f"REVOKE PROCESS ON *.* FROM '{APP_USER}'@'%'")


@contextmanager
def blocker(db: Database) -> Iterator[int]:
    """A transaction left open after reading `authors` (a literal in its query): it holds the table's metadata lock
    until the block ends. Yields its connection id."""
    with db.connect() as conn, conn.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute(f"SELECT count(*) FROM authors WHERE name <> '{SECRET}'")
        cur.execute("SELECT CONNECTION_ID()")
        yield int(cur.fetchone()[0])  # type: ignore[index]
        conn.rollback()


class Reader(threading.Thread):
    """The app: SELECTs on `authors` in a loop, each one timed (`longest`), with the time it finished each."""

    def __init__(self, db: Database) -> None:
        super().__init__(daemon=True)
        self.db, self.stop, self.longest, self.finished = db, threading.Event(), 0.0, []

    def run(self) -> None:
        conn = pymysql.connect(host=self.db.host, port=self.db.port, user=self.db.user, password=self.db.password,
                               database=self.db.name, autocommit=True)
        with conn, conn.cursor() as cur:
            while not self.stop.is_set():
                started = time.monotonic()
                cur.execute("SELECT count(*) FROM authors")
                cur.fetchall()
                self.longest = max(self.longest, time.monotonic() - started)
                self.finished.append(time.monotonic())
                self.stop.wait(0.02)


def test_an_alter_behind_a_metadata_lock_gives_up_after_the_lock_timeout_and_names_the_blocker(
        mariadb_database: Database, tmp_path: Path, seeing: None) -> None:
    app = tmp_path / "app"
    make_project(app, [AUTHORS, BIO])
    assert runner(mariadb_database, app, "upgrade", "--from", "base", "--to", R1).rc == 0
    reader = Reader(mariadb_database)
    with blocker(mariadb_database) as pid:
        started = time.monotonic()
        reader.start()
        r = runner(mariadb_database, app, "upgrade", "--from", R1, "--to", R3, "--db-lock-timeout", "1000",
                   "--db-statement-timeout", "60000")
        ended = time.monotonic()
        reader.stop.set()
        reader.join(timeout=30)
    print(f"\nMariaDB, lock timeout 1.0 s: the runner gave up after {ended - started:.1f} s (its own start included); "
          f"the reader's longest wait was {reader.longest:.2f} s over {len(reader.finished)} queries")
    assert r.rc == 5 and r.result["reason"] == "LockTimeout", r
    [named] = r.result["blockers"]
    assert named["pid"] == pid and named["user"] == APP_USER and named["transactionSeconds"] >= 0
    assert f"held by pid {pid} (user {APP_USER}" in r.result["message"] and "1000 ms" in r.result["message"]
    assert SECRET not in r.stderr + str(r.result)
    assert "lock_timeout 1000 ms, statement_timeout 60000 ms" in r.stderr  # from the URL's init_command
    assert "setting it" not in r.stderr
    assert mariadb_database.query("SELECT version_num FROM alembic_version") == [(R1,)]
    # The app read all along: queries finished while the ALTER waited, none waited for the blocker to end.
    assert reader.finished and reader.finished[-1] <= ended
    assert len([t for t in reader.finished if started < t < ended]) > 1
    # ... and none waited behind the queued ALTER longer than its lock timeout (1 s; 2 s of slack for a loaded
    # machine, as the PostgreSQL bed test allows): the metadata lock queue was given up, not held.
    assert reader.longest < 1.0 + 2, f"the app waited {reader.longest:.2f}s behind the migration"
    # The blocker is gone: it runs.
    assert runner(mariadb_database, app, "upgrade", "--from", R1, "--to", R3, "--db-lock-timeout", "1000").rc == 0


def test_two_revisions_the_second_behind_a_held_lock_stop_at_the_first(
        mariadb_database: Database, tmp_path: Path, seeing: None) -> None:
    """The first revision commits, the second times out before any of its statements ran: the database is at the
    first, whole, and the report is a passing LockTimeout (the operator continues from there)."""
    app = tmp_path / "app"
    make_project(app, [AUTHORS, BOOKS, BIO])
    assert runner(mariadb_database, app, "upgrade", "--from", "base", "--to", R1).rc == 0
    with blocker(mariadb_database) as pid:
        r = runner(mariadb_database, app, "upgrade", "--from", R1, "--to", R3, "--db-lock-timeout", "1000")
    assert r.rc == 5 and r.result["reason"] == "LockTimeout", r
    assert r.result["applied"] == [R2] and r.result["revision"] == R2 and r.result["failedRevision"] == R3
    assert "partialRevision" not in r.result and r.result["blockers"][0]["pid"] == pid
    assert f"the database is at {R2}" in r.result["message"]
    assert mariadb_database.query("SELECT version_num FROM alembic_version") == [(R2,)]
    # The operator's retry: the same plan, from where the database is.
    assert runner(mariadb_database, app, "upgrade", "--from", R2, "--to", R3, "--db-lock-timeout", "1000").rc == 0


def test_without_the_process_privilege_the_timeout_still_holds_and_says_why_no_one_is_named(
        mariadb_database: Database, tmp_path: Path) -> None:
    app = tmp_path / "app"
    make_project(app, [AUTHORS, BIO])
    assert runner(mariadb_database, app, "upgrade", "--from", "base", "--to", R1).rc == 0
    with blocker(mariadb_database):
        r = runner(mariadb_database, app, "upgrade", "--from", R1, "--to", R3, "--db-lock-timeout", "1000")
    assert r.rc == 5 and r.result["reason"] == "LockTimeout" and r.result["blockers"] == []
    assert "needs the PROCESS privilege" in r.result["message"]


def test_lock_timeout_zero_waits_without_limit_and_the_statement_timeout_cancels(
        mariadb_database: Database, tmp_path: Path) -> None:
    slow = Rev(R2, upgrade=['op.execute("SELECT SLEEP(3)")'])
    app = tmp_path / "app"
    make_project(app, [AUTHORS, slow])
    assert runner(mariadb_database, app, "upgrade", "--from", "base", "--to", R1).rc == 0
    r = runner(mariadb_database, app, "upgrade", "--from", R1, "--to", R2, "--db-lock-timeout", "0",
               "--db-statement-timeout", "500")
    assert "lock_timeout 31536000000 ms, statement_timeout 500 ms" in r.stderr  # 0: a year, the servers' maximum
    assert r.rc == 1 and r.result["reason"] == "MigrationFailed", r
    assert "500 ms, spec.migrations.statementTimeout" in r.result["message"]
    assert "SET SESSION max_statement_time = 0" in r.result["message"]
    assert mariadb_database.query("SELECT version_num FROM alembic_version") == [(R1,)]
