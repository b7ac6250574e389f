"""Scratch databases: a temporary database created on a PostgreSQL, MySQL or MariaDB server (any backend an engine
owns) and dropped afterwards, or SQLite."""

from __future__ import annotations

import contextlib
import secrets
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, Engine
from sqlalchemy.pool import NullPool

from .. import engines
from .drivers import sync_url
from .model import CheckError
from .project import describe

PREFIX = "alembic_check_"


@contextlib.contextmanager
def scratch_database(server: URL | None) -> Iterator[URL]:
    """A fresh empty database: on the server `server` points at (PostgreSQL: any database on it, e.g. postgres, and
    the role needs CREATEDB; MySQL/MariaDB: any database or none, and the user needs CREATE and DROP on
    alembic_check_%), or SQLite in a temporary directory when `server` is None."""
    if server is None:
        with tempfile.TemporaryDirectory(prefix="alembic-check-") as directory:
            yield URL.create("sqlite", database=str(Path(directory) / "scratch.db"))
        return
    try:
        owner = engines.for_url(server)
    except engines.UnknownEngine as exc:
        raise CheckError(f"--scratch-url must name a server of a supported database ({', '.join(exc.schemes)}), "
                         f"not {server.get_backend_name()} (or use --scratch sqlite)") from None
    name = PREFIX + secrets.token_hex(6)
    try:
        engine = create_engine(sync_url(server), isolation_level="AUTOCOMMIT", poolclass=NullPool)
    except Exception as exc:  # a driver that is not installed, or that SQLAlchemy does not know
        raise CheckError(f"cannot load the driver of --scratch-url ({sync_url(server).drivername}): "
                         f"{describe(exc)}; install it, or name one that is (mysql+pymysql, postgresql+psycopg)"
                         ) from None
    quoted = engine.dialect.identifier_preparer.quote_identifier(name)
    try:
        _execute(engine, f"CREATE DATABASE {quoted}", "cannot create the scratch database")
        try:
            yield server.set(database=name)
        finally:
            _drop(engine, name, quoted, owner.drop_database(quoted))
    finally:
        engine.dispose()


def _execute(engine: Engine, sql: str, what: str) -> None:
    try:
        with engine.connect() as conn:
            conn.execute(text(sql))
    except Exception as exc:
        where = engine.url.render_as_string(hide_password=True)
        raise CheckError(f"{what} on {where}: {describe(exc)}") from None


def _drop(engine: Engine, name: str, quoted: str, statements: list[str]) -> None:
    """Drop the scratch database with the first of its engine's statements that works (a warning if none does)."""
    for number, sql in enumerate(statements, 1):
        try:
            _execute(engine, sql, "cannot drop the scratch database")
            return
        except CheckError as exc:
            if number == len(statements):
                print(f"warning: {exc} (drop {name} by hand)", file=sys.stderr)
