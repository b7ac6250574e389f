"""The pure parts of lock timeouts: blockers described without their values, the URL's session options."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url

from alembic_operator.runner.blockers import describe_blocker, describe_blockers, from_row, poll_interval, redact_query
from alembic_operator.runner.errors import sqlstate
from alembic_operator.runner.lock import DIALECTS, libpq_options


@pytest.mark.parametrize(("query", "shape"), [
    ("SELECT * FROM orders WHERE id = $1", "SELECT * FROM orders WHERE id = $1"),  # extended protocol: kept
    ("SELECT * FROM users WHERE email = 'ada@example.com' AND pin = 1234",
     "SELECT * FROM users WHERE email = ? AND pin = ?"),
    ("UPDATE t SET note = 'it''s -- not a comment' WHERE x = 1.5e3", "UPDATE t SET note = ? WHERE x = ?"),
    ("SELECT E'a\\'b', $$dollar 'quoted'$$, $tag$x$tag$ FROM t1", "SELECT ?, ?, ? FROM t1"),
    ("SELECT 1 -- password=hunter2\nFROM t /* token abc */", "SELECT ? FROM t"),
    ('SELECT "col 1", t2.c3 FROM "Weird""Name"', 'SELECT "col 1", t2.c3 FROM "Weird""Name"'),
    ("INSERT INTO cards VALUES ('4111 1111 1111", "INSERT INTO cards VALUES (?"),  # cut by track_activity_query_size
    ("COPY t FROM PROGRAM 'curl https://user:pw@host/x'", "COPY t FROM PROGRAM ?"),
    ("SELECT\n   a,\n\tb   FROM t", "SELECT a, b FROM t"),
    ("<insufficient privilege>", "<insufficient privilege>"),
])
def test_a_query_keeps_its_shape_and_loses_its_values(query: str, shape: str) -> None:
    assert redact_query(query) == shape


def test_a_long_query_is_cut_after_redaction() -> None:
    query = "SELECT " + ", ".join(f"column_{i}" for i in range(40)) + " FROM t WHERE secret = 'x'"
    redacted = redact_query(query)
    assert redacted is not None and len(redacted) <= 80 and redacted.endswith("...") and "secret" not in redacted
    assert redact_query(None) is None


def test_a_blocker_is_described_with_everything_a_dba_needs() -> None:
    row = (4242, "app", "nightly-report", "10.0.0.7", "idle in transaction", 42.26,
           "SELECT count(*) FROM orders WHERE code <> 'hunter2'", "orders")
    blocker = from_row(row)
    assert blocker == {"pid": 4242, "user": "app", "application": "nightly-report", "client": "10.0.0.7",
                       "state": "idle in transaction", "relation": "orders", "transactionSeconds": 42.3,
                       "query": "SELECT count(*) FROM orders WHERE code <> ?"}
    assert describe_blocker(blocker) == (
        "pid 4242 (user app, application 'nightly-report', client 10.0.0.7, idle in transaction, transaction open "
        "for 42s, query 'SELECT count(*) FROM orders WHERE code <> ?')")


def test_what_the_database_does_not_say_is_left_out() -> None:
    # A local socket (no address), no transaction, another role's session (its query hidden from us).
    blocker = from_row((7, "etl", "", None, "active", None, "<insufficient privilege>", None))
    assert describe_blocker(blocker) == ("pid 7 (user etl, client local, active, query hidden (grant "
                                         "pg_read_all_stats to the migration's role to see it))")
    assert from_row((8,)) == {"pid": 8}


def test_many_blockers_are_counted_not_listed() -> None:
    blockers = [from_row((pid, "app")) for pid in range(1, 6)]
    text = describe_blockers(blockers)
    assert text.count("pid ") == 3 and text.endswith("; and 2 more session(s)")


def test_the_watch_polls_several_times_within_the_lock_timeout() -> None:
    assert poll_interval(3000) == 0.5 and poll_interval(600) == pytest.approx(0.1) and poll_interval(100) == 0.05
    assert poll_interval(None) == 1.0 and poll_interval(0) == 1.0


def test_libpq_drivers_get_the_timeouts_as_connection_options() -> None:
    url = make_url("postgresql+psycopg://app:s3cret@db:5432/shop?sslmode=require")
    limited = libpq_options(url, 3000, None)
    assert limited.query == {"sslmode": "require", "options": "-c lock_timeout=3000"}
    assert limited.password == "s3cret" and limited.database == "shop"
    both = libpq_options(make_url("postgresql://app@db/shop"), 3000, 60000)  # psycopg2, the default driver
    assert both.query["options"] == "-c lock_timeout=3000 -c statement_timeout=60000"
    # What the URL already had is kept, first (libpq applies the options in order: ours win).
    kept = libpq_options(make_url("postgresql+psycopg2://db/shop?options=-c%20search_path%3Dshop"), 0, None)
    assert kept.query["options"] == "-c search_path=shop -c lock_timeout=0"
    assert libpq_options(url, None, None) is url


@pytest.mark.parametrize("driver", ["asyncpg", "pg8000"])
def test_drivers_without_libpq_options_are_left_alone(driver: str) -> None:
    """asyncpg and pg8000 take no `options`: the runner sets the timeouts on the migration's connection instead."""
    assert libpq_options(make_url(f"postgresql+{driver}://app:pw@db/shop"), 3000, None) is None


def test_postgresql_tells_lock_and_statement_timeouts_by_sqlstate() -> None:
    class LockNotAvailable(Exception):
        sqlstate = "55P03"

    class Wrapped(Exception):
        def __init__(self, orig: Exception) -> None:
            self.orig = orig

    try:
        try:
            raise Wrapped(LockNotAvailable())
        except Wrapped as exc:
            raise RuntimeError("env.py re-raised it") from exc
    except RuntimeError as outer:
        assert sqlstate(outer) == "55P03"
    assert sqlstate(ValueError("no")) is None and sqlstate(None) is None
    pg = DIALECTS["postgresql"]
    assert "55P03" in pg.lock_timeout_codes and "57014" in pg.statement_timeout_codes
