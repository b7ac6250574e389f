"""A long transaction that blocks a migration, and the app's reader that must never wait long behind it (the
lock-timeout tests: tests/postgres/test_runner_locks.py on a database, tests/e2e/test_e2e_locks.py on the bed)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from bed.postgres import Database

SECRET = "hunter2-card-4111"  # a value in the blocker's query text: it must never leave the database
BLOCKER_APP = "nightly-report"


@contextmanager
def blocker(database: Database, query: str) -> Iterator[psycopg.Connection]:
    """A transaction left open after `query` ({secret} filled in), holding its locks until the block ends (or the
    caller commits), as a reporting job that forgot to commit does."""
    with psycopg.connect(database.conninfo, application_name=BLOCKER_APP) as conn:
        conn.execute(query.format(secret=SECRET).encode())  # a literal value in the query text pg_stat_activity shows
        yield conn


class Reader(threading.Thread):
    """The app: SELECTs on a table in a loop on its own connection, each one timed; `longest` is the longest wait."""

    def __init__(self, database: Database, table: str = "orders") -> None:
        super().__init__(daemon=True)
        self.database = database
        self.query = f"SELECT count(*) FROM {table}".encode()
        self.stop = threading.Event()
        self.longest = 0.0
        self.queries = 0

    def run(self) -> None:
        with psycopg.connect(self.database.conninfo, autocommit=True) as conn:
            while not self.stop.is_set():
                started = time.monotonic()
                conn.execute(self.query).fetchall()
                self.longest = max(self.longest, time.monotonic() - started)
                self.queries += 1
                time.sleep(0.02)

    def finish(self) -> float:
        """Stop (if it ever started) and return the longest wait."""
        self.stop.set()
        if self.is_alive():
            self.join(timeout=30)
        return self.longest
