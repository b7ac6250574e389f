"""The migration lock: a session-level advisory lock every migrator of a database takes, and its key.

The SQL is per dialect (`DIALECTS`, registered by SQLAlchemy dialect name): PostgreSQL's session advisory lock and
its READ ONLY transaction; another database is one more `register` call. A dialect without an entry runs without a
lock (and without the read-only belt of the drift check).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .errors import Failure, describe, log, log_exception

DEFAULT_LOCK_KEY = 0x616C656D62696300  # "alembic\0": session advisory lock key shared by all migrators
DEFAULT_LOCK_TIMEOUT = 600


# --- the key ----------------------------------------------------------------------------------------------------


def signed_key(key: int) -> int:
    """A 64-bit key as the signed bigint PostgreSQL takes; ValueError if it does not fit in 64 bits."""
    if not -(2**63) <= key < 2**64:
        raise ValueError("must fit in 64 bits")
    return key - 2**64 if key >= 2**63 else key


def lock_key(value: str) -> int:
    """--lock-key: a 64-bit integer (decimal, 0x..., signed or not)."""
    key = int(value, 0)
    try:
        return signed_key(key)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def database_lock_key(database_key: str) -> int:
    """The lock key of a database: a signed 64-bit integer derived from its identity (the operator passes it)."""
    return signed_key(int.from_bytes(hashlib.sha256(f"alembic-operator:{database_key}".encode()).digest()[:8], "big"))


# --- the SQL of each dialect ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DialectSQL:
    """The statements a dialect needs. Bind parameters: :key (the lock key), :hi and :lo (its unsigned halves)."""

    try_lock: str  # one row, one column: true when the lock was taken
    unlock: str
    holder: str | None = None  # one row (pid, application name) of the session holding the lock
    read_only: tuple[str, ...] = ()  # make the current transaction and the session's next ones read-only


DIALECTS: dict[str, DialectSQL] = {}


def register(dialect: str, sql: DialectSQL) -> None:
    DIALECTS[dialect] = sql


register("postgresql", DialectSQL(
    try_lock="SELECT pg_try_advisory_lock(:key)",
    unlock="SELECT pg_advisory_unlock(:key)",
    holder=("SELECT l.pid, a.application_name FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
            "AND l.classid = CAST(:hi AS bigint)::oid AND l.objid = CAST(:lo AS bigint)::oid LIMIT 1"),
    # Allowed after queries already ran: only switching to read-write is restricted.
    read_only=("SET TRANSACTION READ ONLY", "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"),
))


def read_only(connection: Any, dialect: str) -> None:
    """Belt and braces for a read-only check: this transaction (and any later one of the session) cannot write."""
    sql = DIALECTS.get(dialect)
    for statement in sql.read_only if sql else ():
        connection.exec_driver_sql(statement)


# --- the lock ---------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def migration_lock(engine: Any, key: int, timeout: float) -> Iterator[None]:
    """Hold the database's migration lock (on a connection of its own, in AUTOCOMMIT) while the block runs; waits
    up to `timeout` seconds (LockTimeout)."""
    from sqlalchemy import text

    sql = DIALECTS.get(engine.dialect.name)
    if sql is None:
        log(f"dialect {engine.dialect.name}: no advisory lock")
        yield
        return
    try:
        conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    except Exception as exc:
        log_exception("connecting to the database", exc)
        raise Failure("DatabaseUnreachable", f"cannot connect to the database: {describe(exc)}") from None
    try:
        started = time.monotonic()
        last_report = -1e9
        while True:
            try:
                got = conn.execute(text(sql.try_lock), {"key": key}).scalar()
            except Exception as exc:
                log_exception("taking the advisory lock", exc)
                raise Failure("DatabaseUnreachable", f"cannot take the advisory lock: {describe(exc)}") from None
            if got:
                break
            waited = time.monotonic() - started
            if waited >= timeout:
                raise Failure(
                    "LockTimeout",
                    f"another session has held the migration lock (advisory lock {key}{holder(conn, sql, key)}) "
                    f"for more than {timeout}s; nothing was run. Another migration may be running against "
                    "this database: wait for it, or end that session",
                )
            if time.monotonic() - last_report >= 10:
                log(f"waiting for the migration lock (advisory lock {key}{holder(conn, sql, key)}), "
                    f"{int(waited)}s of {timeout}s")
                last_report = time.monotonic()
            time.sleep(1)
        log(f"took the migration lock (advisory lock {key})")
        yield
    finally:
        with contextlib.suppress(Exception):
            conn.execute(text(sql.unlock), {"key": key})
        with contextlib.suppress(Exception):
            conn.close()


def holder(conn: Any, sql: DialectSQL, key: int) -> str:
    """ " held by backend pid N, application 'x'", or "" when it cannot tell."""
    from sqlalchemy import text

    if sql.holder is None:
        return ""
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    try:
        row = conn.execute(text(sql.holder), {"hi": unsigned >> 32, "lo": unsigned & 0xFFFFFFFF}).first()
    except Exception:
        return ""
    if row is None:
        return ""
    app = f", application {row[1]!r}" if row[1] else ""
    return f" held by backend pid {row[0]}{app}"
