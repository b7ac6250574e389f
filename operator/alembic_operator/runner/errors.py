"""The runner's failures, its log and its one redactor instance, and how database and script errors are told."""

from __future__ import annotations

import sys
import traceback
from typing import Any

from . import reasons
from .reasons import Reason
from .redact import Redactor

PREFIX = "[alembic-operator]"

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_REFUSED, EXIT_CONFIG, EXIT_RETRY = 0, 1, 2, 3, 4, 5
EXIT_CODES: dict[str, int] = {  # by reason (a Result's reason is read back as a string)
    reasons.INVALID_ARGUMENTS: EXIT_USAGE,
    reasons.MULTIPLE_HEADS: EXIT_REFUSED,
    reasons.UNKNOWN_REVISION: EXIT_REFUSED,
    reasons.UNKNOWN_TARGET_REVISION: EXIT_REFUSED,
    reasons.TARGET_NOT_REACHABLE: EXIT_REFUSED,
    reasons.DOWNGRADE_NOT_SUPPORTED: EXIT_REFUSED,
    reasons.REVISION_MOVED: EXIT_REFUSED,
    reasons.ALREADY_VERSIONED: EXIT_REFUSED,
    reasons.IRREVERSIBLE_REVISION: EXIT_REFUSED,
    reasons.MISSING_DATABASE_URL: EXIT_CONFIG,
    reasons.INVALID_DATABASE_URL: EXIT_CONFIG,
    reasons.CONFIG_NOT_FOUND: EXIT_CONFIG,
    reasons.SCRIPT_ERROR: EXIT_CONFIG,
    reasons.DATABASE_ERROR: EXIT_CONFIG,
    reasons.NO_TARGET_METADATA: EXIT_CONFIG,
    reasons.DATABASE_UNREACHABLE: EXIT_RETRY,
    reasons.LOCK_TIMEOUT: EXIT_RETRY,
}

REDACT = Redactor(parameters=False)  # this process's secrets (the URL, its password), scrubbed from all it writes


def log(message: str) -> None:
    sys.stderr.write(f"{PREFIX} {REDACT(message)}\n")
    sys.stderr.flush()


class Failure(Exception):
    """A reported failure: becomes {"ok": false, "reason": ..., "message": ..., **details}."""

    def __init__(self, reason: Reason, message: str, **details: Any) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.details = details


def first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def describe(exc: BaseException) -> str:
    """A one-line, sanitized description: a DB error's primary message (+ SQLSTATE), else the exception's line."""
    orig = getattr(exc, "orig", None)  # sqlalchemy.exc.DBAPIError wraps the driver's exception
    if isinstance(orig, BaseException):
        diag = getattr(orig, "diag", None)  # psycopg 3 and psycopg2
        primary = getattr(diag, "message_primary", None) if diag is not None else None
        sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
        text = str(primary) if primary else first_line(str(orig)) or type(orig).__name__
        if sqlstate:
            text += f" (SQLSTATE {sqlstate})"
        return REDACT(text)
    line = first_line(str(exc))
    return REDACT(f"{type(exc).__name__}: {line}" if line else type(exc).__name__)


def sqlstate(exc: BaseException | None) -> str | None:
    """The SQLSTATE of a database error (psycopg 3, psycopg2, asyncpg through SQLAlchemy), also when it was raised
    from within another exception; None for anything else."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        for candidate in (getattr(exc, "orig", None), exc):
            code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
            if isinstance(code, str) and code:
                return code
        exc = exc.__cause__ or exc.__context__
    return None


def error_code(exc: BaseException | None) -> str | None:
    """A MySQL/MariaDB server's error number ("1205": their SQLSTATE is a generic HY000 for most), else the
    SQLSTATE of a database error; None for anything else. Also when it was raised from within another exception."""
    seen: set[int] = set()
    first = exc
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        errno = _mysql_errno(getattr(exc, "orig", None)) or _mysql_errno(exc)
        if errno is not None:
            return str(errno)
        exc = exc.__cause__ or exc.__context__
    return sqlstate(first)


# A connection that went away (the server restarted, the session was terminated, the network dropped) rather than a
# statement the database refused: SQLSTATE class 08 and PostgreSQL's shutdown codes; MySQL's "server has gone away",
# "lost connection", "connection was killed", "disconnected for inactivity".
_LOST_SQLSTATES = ("57P01", "57P02", "57P03")
_LOST_MYSQL = frozenset({"2006", "2013", "2055", "1927", "4031"})


def lost_connection(exc: BaseException | None) -> bool:
    """The error is the migration's connection going away, not the migration failing (see `_LOST_SQLSTATES`)."""
    from sqlalchemy import exc as sa_exc

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
            return True
        code = error_code(exc)
        if code is not None and (code.startswith("08") or code in _LOST_SQLSTATES or code in _LOST_MYSQL):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def log_exception(what: str, exc: BaseException) -> None:
    details = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    log(f"{what}:\n{details.rstrip()}")


# MySQL's drivers raise OperationalError for statements the server refuses too (1792: a write in a READ ONLY
# transaction): only the client's connection errors (2000-2999) and the server's refusals of the connection itself
# (too many connections, access denied, unknown database, host blocked, connection killed) mean unreachable.
_MYSQL_CONNECTION_ERRNOS = frozenset({1040, 1044, 1045, 1049, 1129, 1130, 1203, 1226, 1927, 4031})
_MYSQL_DRIVERS = ("pymysql", "MySQLdb", "mysql", "aiomysql", "asyncmy", "mariadb")


def _mysql_errno(orig: BaseException | None) -> int | None:
    if orig is None or type(orig).__module__.split(".")[0] not in _MYSQL_DRIVERS:
        return None
    code = orig.args[0] if orig.args else None
    return code if isinstance(code, int) else None


def is_connection_error(exc: BaseException) -> bool:
    from sqlalchemy import exc as sa_exc

    if isinstance(exc, sa_exc.DBAPIError) and not exc.connection_invalidated:
        errno = _mysql_errno(exc.orig)
        if errno is not None:
            return 2000 <= errno < 3000 or errno in _MYSQL_CONNECTION_ERRNOS
    return isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError)) or bool(
        isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated
    )


def classify(exc: BaseException, what: str) -> Failure:
    """An error while reading the database through env.py, before anything was changed."""
    from sqlalchemy import exc as sa_exc

    log_exception(what, exc)
    if is_connection_error(exc):
        return Failure(reasons.DATABASE_UNREACHABLE, f"{what}: cannot reach the database: {describe(exc)}")
    if isinstance(exc, sa_exc.DBAPIError):
        return Failure(reasons.DATABASE_ERROR, f"{what}: the database refused a query: {describe(exc)}")
    return Failure(reasons.SCRIPT_ERROR, f"{what}: the app's env.py or migration scripts failed: {describe(exc)}")
