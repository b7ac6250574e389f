"""`check` asks the database's engine what depends on the product (no server): drivers of one family, read-only
sessions, the scanner of the rendered SQL, how a scratch database is dropped; SQLite stays check's own scratch."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url

from alembic_operator import engines
from alembic_operator.check import lint
from alembic_operator.check.drivers import async_url, is_async, sync_url
from alembic_operator.check.run import read_only


@pytest.mark.parametrize(("url", "sync", "asynchronous"), [
    ("postgresql+asyncpg://u@h/d", "postgresql+psycopg", "postgresql+asyncpg"),
    ("postgresql+psycopg_async://u@h/d", "postgresql+psycopg", "postgresql+psycopg_async"),
    ("postgresql+psycopg2://u@h/d", "postgresql+psycopg2", "postgresql+psycopg_async"),
    ("mysql+aiomysql://u@h/d", "mysql+pymysql", "mysql+aiomysql"),
    ("mariadb+asyncmy://u@h/d", "mariadb+pymysql", "mariadb+asyncmy"),
    ("mariadb+pymysql://u@h/d", "mariadb+pymysql", "mariadb+aiomysql"),
    ("sqlite+aiosqlite:///x.db", "sqlite+pysqlite", "sqlite+aiosqlite"),
    ("sqlite:///x.db", "sqlite", "sqlite+aiosqlite"),
])
def test_drivers_of_one_family_come_from_the_engine(url: str, sync: str, asynchronous: str) -> None:
    parsed = make_url(url)
    assert sync_url(parsed).drivername == sync
    assert async_url(parsed).drivername == asynchronous
    assert is_async(parsed) == (parsed.drivername == asynchronous)


def test_a_database_no_engine_owns_has_no_async_driver() -> None:
    with pytest.raises(ValueError, match="no async driver known for mssql"):
        async_url(make_url("mssql+pymssql://u@h/d"))


def test_live_sessions_are_read_only_as_the_engine_makes_them() -> None:
    pg = read_only(make_url("postgresql+asyncpg://u@h/d?options=-c%20search_path%3Dapp"))
    assert pg.drivername == "postgresql+psycopg_async"
    assert pg.query["options"] == "-c search_path=app -c default_transaction_read_only=on"
    assert read_only(make_url("mysql+pymysql://u@h/d")).query["init_command"] == "SET SESSION TRANSACTION READ ONLY"
    assert read_only(make_url("mariadb+mariadbconnector://u@h/d")).query == {}  # no way for that driver
    assert read_only(make_url("sqlite:///x.db")) == make_url("sqlite:///x.db")


def test_lint_renders_and_scans_with_the_engine_of_the_database() -> None:
    # the dialect and driver of the database, nothing else of it: never its password
    assert lint.offline_url(make_url("mariadb+aiomysql://u:secret-pw@db:3307/shop?ssl=true")) == (
        "mariadb+pymysql://alembic-check@localhost/offline")
    assert lint.offline_url(make_url("sqlite:///x.db")) == lint.OFFLINE_URL  # no engine: PostgreSQL's dialect
    mysql, postgresql = engines.REGISTRY.get("mysql"), engines.REGISTRY.get("postgresql")
    assert lint.engine_of(make_url("mariadb+pymysql://u@h/d")) is mysql
    assert lint.engine_of(make_url("sqlite:///x.db")) is None
    alter = [("r1", "ALTER TABLE orders MODIFY code VARCHAR(10);")]
    rendered = lint.Rendered(mysql, items=list(alter))  # type: ignore[arg-type]
    assert rendered.altered("r1") and not rendered.altered("r2")
    findings = lint.scan(rendered)
    assert [f.rule for f in findings] == ["alter-column-type"], findings
    assert postgresql is not None and postgresql.alters_columns(
        [("r1", "ALTER TABLE orders ALTER COLUMN code TYPE varchar(10);")])


def test_scratch_databases_are_dropped_as_the_engine_says() -> None:
    postgresql, mysql = engines.REGISTRY.get("postgresql"), engines.REGISTRY.get("mysql")
    assert postgresql is not None and mysql is not None
    assert postgresql.drop_database('"x"') == ['DROP DATABASE IF EXISTS "x" WITH (FORCE)',
                                               'DROP DATABASE IF EXISTS "x"']
    assert mysql.drop_database("`x`") == ["DROP DATABASE IF EXISTS `x`"]
