"""Sync and async drivers: the app's env.py gets the kind of driver it was written for, check's own connections
(scratch databases, schema snapshots) always a synchronous one.

An app on `postgresql+asyncpg://` usually has Alembic's async env.py (`async_engine_from_config` +
`connection.run_sync`), which refuses a synchronous driver; SQLAlchemy's reflection in check itself refuses an async
one ("MissingGreenlet"). So the URL is translated at each boundary, to the same server and database.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from sqlalchemy.engine import URL

from .. import engines

# SQLite is check's own scratch database (no engine's): its drivers, as an engine declares its family's.
_SQLITE_SYNC: Mapping[str, str] = {"aiosqlite": "pysqlite"}
_SQLITE_ASYNC = "aiosqlite"
_ASYNC_MARKERS = ("async_engine_from_config", "create_async_engine", "AsyncEngine", "run_sync(")


def _family(url: URL) -> tuple[Mapping[str, str], str | None]:
    """(async driver -> its synchronous sibling, the async driver to use) of the URL's database."""
    backend = url.get_backend_name()
    if backend == "sqlite":
        return _SQLITE_SYNC, _SQLITE_ASYNC
    try:
        engine = engines.for_backend(backend)
    except engines.UnknownEngine:
        return {}, None
    return engine.sync_drivers, engine.async_driver


def is_async(url: URL) -> bool:
    return url.get_driver_name() in _family(url)[0]


def sync_url(url: URL) -> URL:
    """The same database through the synchronous driver of the same family (unchanged when already sync)."""
    driver = _family(url)[0].get(url.get_driver_name())
    return url if driver is None else url.set(drivername=f"{url.get_backend_name()}+{driver}")


def async_url(url: URL) -> URL:
    """The same database through an async driver: the URL's own when it has one, else the one its engine names
    (psycopg's for PostgreSQL: psycopg ships with the operator; aiomysql for MySQL), aiosqlite for SQLite."""
    if is_async(url):
        return url
    driver = _family(url)[1]
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
