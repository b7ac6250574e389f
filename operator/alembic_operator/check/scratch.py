"""Scratch databases: a temporary PostgreSQL database created on a server and dropped afterwards, or SQLite."""

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

from .drivers import sync_url
from .model import CheckError
from .project import describe

PREFIX = "alembic_check_"


@contextlib.contextmanager
def scratch_database(server: URL | None) -> Iterator[URL]:
    """A fresh empty database: on the PostgreSQL server `server` points at (any database on it, e.g. postgres;
    the role needs CREATEDB), or SQLite in a temporary directory when `server` is None."""
    if server is None:
        with tempfile.TemporaryDirectory(prefix="alembic-check-") as directory:
            yield URL.create("sqlite", database=str(Path(directory) / "scratch.db"))
        return
    if server.get_backend_name() != "postgresql":
        raise CheckError(f"--scratch-url must be a PostgreSQL URL, not {server.get_backend_name()} "
                         "(or use --scratch sqlite)")
    name = PREFIX + secrets.token_hex(6)
    engine = create_engine(sync_url(server), isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        _execute(engine, f'CREATE DATABASE "{name}"', "cannot create the scratch database")
        try:
            yield server.set(database=name)
        finally:
            _drop(engine, name)
    finally:
        engine.dispose()


def _execute(engine: Engine, sql: str, what: str) -> None:
    try:
        with engine.connect() as conn:
            conn.execute(text(sql))
    except Exception as exc:
        where = engine.url.render_as_string(hide_password=True)
        raise CheckError(f"{what} on {where}: {describe(exc)}") from None


def _drop(engine: Engine, name: str) -> None:
    try:
        _execute(engine, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', "cannot drop the scratch database")
    except CheckError:
        try:  # PostgreSQL < 13 has no WITH (FORCE)
            _execute(engine, f'DROP DATABASE IF EXISTS "{name}"', "cannot drop the scratch database")
        except CheckError as exc:
            print(f"warning: {exc} (drop {name} by hand)", file=sys.stderr)
