"""How the runner tells a passing failure from a real one (a lost connection: the server restarted, the session was
terminated, is not the migration failing; MySQL/MariaDB's error numbers are read as SQLSTATEs are), and how a MySQL URL
carries the session's lock timeouts."""

from __future__ import annotations

import psycopg
import pymysql
import pytest
from sqlalchemy import exc

from alembic_operator.runner.errors import error_code, lost_connection


def wrapped(orig: BaseException) -> exc.OperationalError:
    return exc.OperationalError("ALTER TABLE authors ADD COLUMN bio TEXT", {}, orig)


@pytest.mark.parametrize("orig", [
    psycopg.errors.AdminShutdown("terminating connection due to administrator command"),  # restart, terminate
    psycopg.errors.ConnectionFailure("connection failure"),  # SQLSTATE class 08
    pymysql.err.OperationalError(2013, "Lost connection to server during query"),
    pymysql.err.OperationalError(2006, "Server has gone away"),
    pymysql.err.OperationalError(1927, "Connection was killed"),
])
def test_a_connection_that_went_away_is_lost(orig: BaseException) -> None:
    assert lost_connection(wrapped(orig))


@pytest.mark.parametrize("orig", [
    psycopg.errors.LockNotAvailable("canceling statement due to lock timeout"),
    psycopg.errors.QueryCanceled("canceling statement due to statement timeout"),
    psycopg.errors.DeadlockDetected("deadlock detected"),
    pymysql.err.OperationalError(1205, "Lock wait timeout exceeded; try restarting transaction"),
    pymysql.err.OperationalError(1969, "Query execution was interrupted (max_statement_time exceeded)"),
])
def test_a_statement_the_server_refused_or_cancelled_is_not_a_lost_connection(orig: BaseException) -> None:
    assert not lost_connection(wrapped(orig))


def test_an_error_raised_while_handling_a_lost_connection_is_still_one() -> None:
    try:
        try:
            raise wrapped(psycopg.errors.AdminShutdown("terminating connection"))
        except exc.OperationalError:
            raise RuntimeError("the rollback failed too") from None
    except RuntimeError as outer:
        assert lost_connection(outer)


@pytest.mark.parametrize(("orig", "code"), [
    (pymysql.err.OperationalError(1205, "Lock wait timeout exceeded", sqlstate="HY000"), "1205"),
    (pymysql.err.OperationalError(3024, "maximum statement execution time exceeded"), "3024"),
    (psycopg.errors.LockNotAvailable("lock timeout"), "55P03"),
    (RuntimeError("not a database error"), None),
])
def test_error_codes_of_both_engines(orig: BaseException, code: str | None) -> None:
    assert error_code(wrapped(orig) if code else orig) == code


def test_mysql_urls_carry_the_lock_timeouts_in_their_init_command() -> None:
    from sqlalchemy.engine import make_url

    from alembic_operator.runner.lock import DIALECTS, mysql_options

    url = make_url("mysql+pymysql://app:pw@db/shop")
    command = mysql_options(url, 2500, 1500).query["init_command"]
    assert command == ("SET SESSION lock_wait_timeout = 3, innodb_lock_wait_timeout = 3 "
                       "/*M!, max_statement_time = 1.5 */")  # whole seconds, rounded up; MariaDB's statement limit
    assert mysql_options(url, 0, None).query["init_command"].endswith("innodb_lock_wait_timeout = 31536000")
    assert mysql_options(url.update_query_dict({"init_command": "SET NAMES utf8mb4"}), 2500, None) is None
    assert mysql_options(url, None, 1500) is None  # set on the connection instead
    assert DIALECTS["mariadb"].lock_value(2500) == 3000 and DIALECTS["postgresql"].lock_value(2500) == 2500
