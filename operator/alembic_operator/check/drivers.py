"""Sync and async drivers: the app's env.py gets the kind of driver it was written for, check's own connections
(scratch databases, schema snapshots) always a synchronous one.

An app on `postgresql+asyncpg://` usually has Alembic's async env.py (`async_engine_from_config` +
`connection.run_sync`), which refuses a synchronous driver; SQLAlchemy's reflection in check itself refuses an async
one ("MissingGreenlet"). So the URL is translated at each boundary, to the same server and database.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import URL

# (backend, async driver) -> the synchronous driver of the same family; and the async driver check prefers.
_SYNC = {("postgresql", "asyncpg"): "psycopg", ("postgresql", "psycopg_async"): "psycopg",
         ("sqlite", "aiosqlite"): "pysqlite", ("mysql", "aiomysql"): "pymysql", ("mysql", "asyncmy"): "pymysql",
         ("mariadb", "aiomysql"): "pymysql", ("mariadb", "asyncmy"): "pymysql"}
_ASYNC = {"postgresql": "psycopg_async", "sqlite": "aiosqlite", "mysql": "aiomysql", "mariadb": "aiomysql"}
_ASYNC_MARKERS = ("async_engine_from_config", "create_async_engine", "AsyncEngine", "run_sync(")


def is_async(url: URL) -> bool:
    return (url.get_backend_name(), url.get_driver_name()) in _SYNC


def sync_url(url: URL) -> URL:
    """The same database through the synchronous driver of the same family (unchanged when already sync)."""
    driver = _SYNC.get((url.get_backend_name(), url.get_driver_name()))
    return url if driver is None else url.set(drivername=f"{url.get_backend_name()}+{driver}")


def async_url(url: URL) -> URL:
    """The same database through an async driver: the URL's own when it has one, else psycopg's async driver for
    PostgreSQL (psycopg ships with the operator), aiosqlite for SQLite, aiomysql for MySQL."""
    if is_async(url):
        return url
    driver = _ASYNC.get(url.get_backend_name())
    if driver is None:
        raise ValueError(f"no async driver known for {url.get_backend_name()}")
    return url.set(drivername=f"{url.get_backend_name()}+{driver}")


def env_py_is_async(env_py: str | Path | None) -> bool:
    """Does env.py connect through SQLAlchemy's asyncio extension (Alembic's `async` template and its variants)?"""
    if env_py is None:
        return False
    try:
        source = Path(env_py).read_text(encoding="utf-8")
    except OSError:
        return False
    return any(marker in source for marker in _ASYNC_MARKERS)
