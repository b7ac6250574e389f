"""The migration lock: a session-level advisory lock every migrator of a database takes, and its key.

The SQL is per dialect (`DIALECTS`, registered by SQLAlchemy dialect name): PostgreSQL's session advisory lock and
its READ ONLY transaction, the migration session's lock and statement timeouts, and who blocks a session; another
database is one more `register` call. The runner refuses to run a writer (upgrade, downgrade, stamp) for a dialect
without an entry: two of them could then run at once on one database.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from . import reasons
from .blockers import describe_blockers, from_row
from .errors import Failure, describe, log, log_exception
from .results import Blocker

DEFAULT_LOCK_KEY = 0x616C656D62696300  # "alembic\0": session advisory lock key shared by all migrators
LOCK_WAIT_SECONDS = 600  # how long a writer waits for another one's migration lock (not the database's lock_timeout)


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


MYSQL_LOCK_PREFIX = "alembic-operator:"


def mysql_lock_name(key: int) -> str:
    """The name of a database's migration lock on MySQL/MariaDB (GET_LOCK takes a name, at most 64 characters)."""
    return f"{MYSQL_LOCK_PREFIX}{key}"


# --- the SQL of each dialect ------------------------------------------------------------------------------------


# The columns of a session that holds a lock (`holder`, `blockers`): what blockers.from_row reads.
_SESSION = ("a.pid, a.usename, a.application_name, host(a.client_addr), a.state, "
            "EXTRACT(EPOCH FROM clock_timestamp() - a.xact_start), left(a.query, 1024)")


@dataclass(frozen=True)
class DialectSQL:
    """The statements a dialect needs. Bind parameters: :key (the lock key), :hi and :lo (its unsigned halves),
    :pid (a backend's process id)."""

    try_lock: str  # one row, one column: true when the lock was taken
    unlock: str
    holder: str | None = None  # the session holding the lock, as `blockers` rows
    read_only: tuple[str, ...] = ()  # make the current transaction and the session's next ones read-only
    # The migration session's limits. `session`: one row (lock timeout ms, statement timeout ms, backend pid) of the
    # connection it runs on; `set_lock_timeout`/`set_statement_timeout`: format strings taking milliseconds.
    session: str | None = None
    set_lock_timeout: str | None = None
    set_statement_timeout: str | None = None
    # `lock_value`: the lock timeout in milliseconds as the session will hold it (MySQL counts whole seconds).
    lock_value: Callable[[int], int] = int
    # Who blocks backend :pid, one row per session (pid, user, application, client address, state, transaction
    # seconds, query, the relation :pid waits for); several queries: each poll uses the first that names someone (a
    # query the server refuses, for want of a privilege or a plugin, is dropped).
    blockers: str | tuple[str, ...] | None = None
    lock_timeout_codes: tuple[str, ...] = ()  # SQLSTATEs (MySQL: error numbers) of a statement that gave up waiting
    statement_timeout_codes: tuple[str, ...] = ()  # ... of a statement cancelled (by its timeout or a person)
    statement_opt_out: str = 'op.execute("SET LOCAL statement_timeout = 0")'  # how a revision lifts the limit
    # The URL with the session's timeouts as connection options, when its driver takes them (None: it does not, and
    # the runner sets them on the migration's connection instead).
    url_options: Callable[[Any, int | None, int | None], Any] | None = None
    double_quoted_strings: bool = False  # "..." is a string literal (MySQL): redacted from the holder's query
    # The rehearsal (runner/rehearse.py): `held_locks`, the (what, mode, granted) rows of the table locks backend :pid
    # holds or waits for (None: not measured); `settle`, what makes a restored copy like production before the plan
    # is timed; `drop_database`, format strings ({name}) that drop a scratch database, tried in order.
    held_locks: str | None = None
    settle: tuple[str, ...] = ()
    drop_database: tuple[str, ...] = ("DROP DATABASE IF EXISTS {name}",)
    sync_driver: str | None = None  # for the scratch database's drop when the URL names an async driver


DIALECTS: dict[str, DialectSQL] = {}


def register(dialect: str, sql: DialectSQL) -> None:
    DIALECTS[dialect] = sql


def session_sql(dialect: Any) -> DialectSQL | None:
    """The entry for a connection's SQLAlchemy dialect: MariaDB's own when a mysql:// URL reaches a MariaDB server
    (their session limits differ)."""
    return DIALECTS.get("mariadb" if getattr(dialect, "is_mariadb", False) else dialect.name)


# libpq drivers (psycopg 3, psycopg2) pass `options` to the server at connection start: the settings hold from the
# session's first statement, whatever env.py does, and no ROLLBACK undoes them. asyncpg and pg8000 take no such URL
# parameter: the runner sets them on the migration's connection (DialectSQL.session, below).
LIBPQ_DRIVERS = frozenset({"psycopg", "psycopg_async", "psycopg2", "psycopg2cffi"})


def libpq_options(url: Any, lock_ms: int | None, statement_ms: int | None) -> Any:
    """`url` (a sqlalchemy URL) with `-c lock_timeout=N -c statement_timeout=N` added to its libpq `options`
    (kept: what the URL already had); None when its driver is not libpq's."""
    if url.get_driver_name() not in LIBPQ_DRIVERS:
        return None
    settings = [f"-c {name}={ms}" for name, ms in (("lock_timeout", lock_ms), ("statement_timeout", statement_ms))
                if ms is not None]
    if not settings:
        return url
    existing = url.query.get("options")
    if isinstance(existing, tuple):
        existing = " ".join(existing)
    return url.update_query_dict({"options": " ".join([*([existing] if existing else []), *settings])})


register("postgresql", DialectSQL(
    try_lock="SELECT pg_try_advisory_lock(:key)",
    unlock="SELECT pg_advisory_unlock(:key)",
    holder=(f"SELECT {_SESSION}, NULL FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
            "AND l.classid = CAST(:hi AS bigint)::oid AND l.objid = CAST(:lo AS bigint)::oid LIMIT 1"),
    # Allowed after queries already ran: only switching to read-write is restricted.
    read_only=("SET TRANSACTION READ ONLY", "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"),
    session=("SELECT (SELECT setting FROM pg_settings WHERE name = 'lock_timeout'), "
             "(SELECT setting FROM pg_settings WHERE name = 'statement_timeout'), pg_backend_pid()"),
    set_lock_timeout="SET lock_timeout = {}",
    set_statement_timeout="SET statement_timeout = {}",
    # pg_blocking_pids: the sessions holding (or queued ahead for) a lock :pid waits for.
    blockers=(f"SELECT {_SESSION}, (SELECT w.relation::regclass::text FROM pg_locks w WHERE w.pid = :pid "
              "AND NOT w.granted AND w.relation IS NOT NULL LIMIT 1) FROM pg_stat_activity a "
              "WHERE a.pid = ANY(pg_blocking_pids(:pid)) ORDER BY a.xact_start NULLS LAST, a.pid"),
    lock_timeout_codes=("55P03",),  # lock_not_available: lock_timeout (or NOWAIT)
    statement_timeout_codes=("57014",),  # query_canceled: statement_timeout (or pg_cancel_backend)
    url_options=libpq_options,
    held_locks=("SELECT coalesce(n.nspname || '.' || c.relname, l.locktype), l.mode, l.granted FROM pg_locks l "
                "LEFT JOIN pg_class c ON c.oid = l.relation LEFT JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE l.pid = :pid AND l.locktype = 'relation' AND c.relkind IN ('r', 'p', 'm') "
                "AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND c.relname <> 'alembic_version'"),
    # A freshly restored copy has no hint bits, no visibility map, no statistics, and the server is still writing
    # the restore out: timed on it, a table rewrite ran about a fifth slower than on production (make
    # bench-rehearsal, docs/rehearsal.md). CHECKPOINT needs a superuser or pg_checkpoint's member (else skipped).
    settle=("SET statement_timeout = 0", "VACUUM (ANALYZE)", "CHECKPOINT"),
    # WITH (FORCE) ends the sessions still on it (PostgreSQL 13 and later); the plain DROP for older servers.
    drop_database=('DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', 'DROP DATABASE IF EXISTS "{name}"'),
    sync_driver="postgresql+psycopg",
))


# MySQL and MariaDB: a named lock held by the session (GET_LOCK, with a zero wait: the loop above polls), its holder
# from the processlist (IS_USED_LOCK gives its connection id; another user's session shows only with PROCESS).
_MYSQL_NAME = f"CONCAT('{MYSQL_LOCK_PREFIX}', CAST(:key AS CHAR))"
# The lock timeout bounds both waits: lock_wait_timeout (metadata locks: the ALTER behind a long transaction, the one
# every later query on the table queues behind) and innodb_lock_wait_timeout (row locks), whole seconds each; 0 (no
# limit) is their maximum, a year. The statement timeout: MariaDB's max_statement_time (seconds), MySQL's
# max_execution_time (milliseconds; MySQL applies it to SELECT only).
MYSQL_NO_LIMIT = 31536000  # seconds: lock_wait_timeout's maximum


def mysql_lock_seconds(ms: int) -> int:
    return min(MYSQL_NO_LIMIT, -(-ms // 1000)) if ms > 0 else MYSQL_NO_LIMIT


def mysql_options(url: Any, lock_ms: int | None, statement_ms: int | None) -> Any:
    """`url` with an `init_command` that sets the session's lock timeouts (and MariaDB's statement timeout, in a
    comment only MariaDB runs) as it connects, for every driver that takes one; None when the URL has its own
    init_command or no lock timeout is asked for (the runner then sets them on the migration's connection)."""
    if "init_command" in url.query or lock_ms is None:
        return None
    seconds = mysql_lock_seconds(lock_ms)
    command = f"SET SESSION lock_wait_timeout = {seconds}, innodb_lock_wait_timeout = {seconds}"
    if statement_ms is not None:
        command += f" /*M!, max_statement_time = {statement_ms / 1000} */"
    return url.update_query_dict({"init_command": command})


_MYSQL_SESSION = ("SELECT IF(@@session.lock_wait_timeout = @@session.innodb_lock_wait_timeout, "
                  "@@session.lock_wait_timeout * 1000, -1), {statement}, CONNECTION_ID()")
# Who holds what the migration's session waits for, most precise first. A session's transaction age comes from
# INNODB_TRX; every query but the processlist needs the PROCESS privilege (or performance_schema's).
_MYSQL_HOLDER = "p.ID, p.USER, NULL, p.HOST, p.COMMAND, TIMESTAMPDIFF(SECOND, t.trx_started, NOW()), p.INFO"
MYSQL_BLOCKERS = (
    # The metadata locks (MySQL 8 by default; MariaDB with performance_schema and its mdl instrument on).
    f"SELECT DISTINCT {_MYSQL_HOLDER}, CONCAT(w.OBJECT_SCHEMA, '.', w.OBJECT_NAME) "
    "FROM performance_schema.metadata_locks w "
    "JOIN performance_schema.threads wt ON wt.THREAD_ID = w.OWNER_THREAD_ID "
    "JOIN performance_schema.metadata_locks g ON g.OBJECT_TYPE = w.OBJECT_TYPE "
    "AND g.OBJECT_SCHEMA <=> w.OBJECT_SCHEMA AND g.OBJECT_NAME <=> w.OBJECT_NAME AND g.LOCK_STATUS = 'GRANTED' "
    "AND g.OWNER_THREAD_ID <> w.OWNER_THREAD_ID "
    "JOIN performance_schema.threads gt ON gt.THREAD_ID = g.OWNER_THREAD_ID "
    "JOIN information_schema.PROCESSLIST p ON p.ID = gt.PROCESSLIST_ID "
    "LEFT JOIN information_schema.INNODB_TRX t ON t.trx_mysql_thread_id = p.ID "
    "WHERE wt.PROCESSLIST_ID = :pid AND w.LOCK_STATUS = 'PENDING' ORDER BY t.trx_started, p.ID",
    # The row locks (MariaDB, MySQL 5.7).
    f"SELECT DISTINCT {_MYSQL_HOLDER}, l.lock_table FROM information_schema.INNODB_LOCK_WAITS w "
    "JOIN information_schema.INNODB_TRX r ON r.trx_id = w.requesting_trx_id "
    "JOIN information_schema.INNODB_TRX t ON t.trx_id = w.blocking_trx_id "
    "JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id "
    "LEFT JOIN information_schema.INNODB_LOCKS l ON l.lock_id = w.requested_lock_id "
    "WHERE r.trx_mysql_thread_id = :pid ORDER BY t.trx_started, p.ID",
    # Without metadata-lock instrumentation (MariaDB's default): while the session waits for a metadata lock, the
    # sessions with a transaction open hold it (a transaction keeps the metadata locks of every table it touched).
    f"SELECT {_MYSQL_HOLDER}, NULL FROM information_schema.INNODB_TRX t "
    "JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id "
    "WHERE p.ID <> :pid AND EXISTS (SELECT 1 FROM information_schema.PROCESSLIST m WHERE m.ID = :pid "
    "AND m.STATE LIKE 'Waiting for %metadata lock') ORDER BY t.trx_started, p.ID",
)
for _dialect, _statement, _set_statement, _opt_out in (
        ("mysql", "@@session.max_execution_time", "SET SESSION max_execution_time = {}",
         'op.execute("SET SESSION max_execution_time = 0")'),
        ("mariadb", "CAST(ROUND(@@session.max_statement_time * 1000) AS SIGNED)",
         "SET SESSION max_statement_time = {} / 1000", 'op.execute("SET SESSION max_statement_time = 0")')):
    register(_dialect, DialectSQL(
        try_lock=f"SELECT GET_LOCK({_MYSQL_NAME}, 0) = 1",
        unlock=f"SELECT RELEASE_LOCK({_MYSQL_NAME})",
        holder=("SELECT ID, USER, NULL, HOST, COMMAND, TIME, INFO, NULL FROM information_schema.PROCESSLIST "
                f"WHERE ID = IS_USED_LOCK({_MYSQL_NAME})"),
        # SET SESSION ... READ ONLY only reaches the session's next transactions, and SET TRANSACTION fails inside
        # one (1568): end env.py's transaction (rolled back: it only read), then start a read-only one. DDL and DML
        # then fail with 1792, in this transaction and the session's next ones (tests/mariadb/test_drift_mariadb.py).
        read_only=("ROLLBACK", "SET SESSION TRANSACTION READ ONLY", "START TRANSACTION READ ONLY"),
        session=_MYSQL_SESSION.format(statement=_statement),
        set_lock_timeout="SET SESSION lock_wait_timeout = {0} DIV 1000, innodb_lock_wait_timeout = {0} DIV 1000",
        set_statement_timeout=_set_statement,
        lock_value=lambda ms: mysql_lock_seconds(ms) * 1000,
        blockers=MYSQL_BLOCKERS,
        lock_timeout_codes=("1205",),  # ER_LOCK_WAIT_TIMEOUT: a metadata or a row lock
        statement_timeout_codes=("1969", "3024", "1317"),  # MariaDB's, MySQL's statement timeout; KILL QUERY
        statement_opt_out=_opt_out,
        url_options=mysql_options,
        double_quoted_strings=True,
        held_locks=("SELECT CONCAT(m.OBJECT_SCHEMA, '.', m.OBJECT_NAME), m.LOCK_TYPE, m.LOCK_STATUS = 'GRANTED' "
                    "FROM performance_schema.metadata_locks m JOIN performance_schema.threads t "
                    "ON t.THREAD_ID = m.OWNER_THREAD_ID WHERE t.PROCESSLIST_ID = :pid AND m.OBJECT_TYPE = 'TABLE' "
                    "AND m.OBJECT_SCHEMA NOT IN ('mysql', 'performance_schema', 'information_schema') "
                    "AND m.OBJECT_NAME <> 'alembic_version'"),
        drop_database=("DROP DATABASE IF EXISTS `{name}`",),
        sync_driver=f"{_dialect}+pymysql",
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
    if sql is None:  # an engine that forgot its `register` call: no writer runs unlocked
        raise Failure(reasons.INVALID_DATABASE_URL,
                      f"the runner has no migration lock for the {engine.dialect.name} dialect, and it never writes to "
                      f"a database without one; supported: {', '.join(sorted(DIALECTS))}")
    try:
        conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    except Exception as exc:
        log_exception("connecting to the database", exc)
        raise Failure(reasons.DATABASE_UNREACHABLE, f"cannot connect to the database: {describe(exc)}") from None
    try:
        started = time.monotonic()
        last_report = -1e9
        while True:
            try:
                got = conn.execute(text(sql.try_lock), {"key": key}).scalar()
            except Exception as exc:
                log_exception("taking the advisory lock", exc)
                raise Failure(reasons.DATABASE_UNREACHABLE, f"cannot take the advisory lock: {describe(exc)}") from None
            if got:
                break
            waited = time.monotonic() - started
            if waited >= timeout:
                held = holder(conn, sql, key)
                raise Failure(
                    reasons.LOCK_TIMEOUT,
                    f"another session has held the migration lock (advisory lock {key}"
                    f"{', held by ' + describe_blockers(held) if held else ''}) for more than {timeout}s; nothing "
                    "was run. Another migration may be running against this database: wait for it, or end that "
                    "session", blockers=[dict(b) for b in held],
                )
            if time.monotonic() - last_report >= 10:
                held = holder(conn, sql, key)
                log(f"waiting for the migration lock (advisory lock {key}"
                    f"{', held by ' + describe_blockers(held) if held else ''}), {int(waited)}s of {timeout}s")
                last_report = time.monotonic()
            time.sleep(1)
        log(f"took the migration lock (advisory lock {key})")
        yield
    finally:
        with contextlib.suppress(Exception):
            conn.execute(text(sql.unlock), {"key": key})
        with contextlib.suppress(Exception):
            conn.close()


def holder(conn: Any, sql: DialectSQL, key: int) -> list[Blocker]:
    """The session holding the advisory lock (pid, user, application, client, state, transaction age, its query
    redacted), or [] when it cannot tell."""
    from sqlalchemy import text

    if sql.holder is None:
        return []
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    try:
        rows = conn.execute(text(sql.holder), {"key": key, "hi": unsigned >> 32,
                                               "lo": unsigned & 0xFFFFFFFF}).fetchall()
    except Exception:
        return []
    return [from_row(row, sql.double_quoted_strings) for row in rows]
