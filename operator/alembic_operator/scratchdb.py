"""Scratch databases of rehearsals (spec.rehearsal): created by the rehearsal Job, dropped by it and by the operator.

A scratch database lives on the server a Secret names (spec.rehearsal.urlSecretRef, or production's own with
onProductionServer), under a name that is recognisably ours and never a user's: ``alembic_rehearsal_`` + 10 hex
digits of the resource's identity + ``_g<generation>`` (`reconcile.rehearsal.scratch_name`). Whatever
stops a rehearsal (a failure, its Job killed, the operator killed), the operator drops the database named in
status.rehearsal.scratchDatabase once the Job is over, and drops every other database of the resource's prefix it
finds then (left by an operator that died before it wrote that name).

Statements go through SQLAlchemy with the URL's own (synchronous) driver, on the database the URL names (postgres,
or none on MySQL/MariaDB), in autocommit. Blocking: the operator runs these in a thread.
"""

from __future__ import annotations

import re

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.pool import NullPool

from . import engines

PREFIX = "alembic_rehearsal_"
NAME = re.compile(r"alembic_rehearsal_[0-9a-f]{10}_g[0-9]+")  # what a Job may create, and nothing else


def server_url(raw: str) -> URL:
    """The scratch server's URL from its Secret's value: a URL of an engine's database, which may name no database
    (MySQL/MariaDB; unlike production's, where the engine refuses that). ValueError (no secret in it) otherwise."""
    try:
        url = make_url(raw.strip())
        engines.for_url(url)
    except Exception:  # the parser's message may quote the URL
        raise ValueError("the scratch server's Secret does not hold a SQLAlchemy URL of a supported database") from None
    return url


def _sync(url: URL) -> URL:
    """The URL with its family's synchronous driver when its own is async (the statements here are a few)."""
    sync = engines.for_url(url).sync_drivers.get(url.get_driver_name())
    return url.set(drivername=f"{url.get_backend_name()}+{sync}") if sync else url


def _engine(url: URL) -> Engine:
    return create_engine(_sync(url), poolclass=NullPool, isolation_level="AUTOCOMMIT")


def _quoted(engine: Engine, name: str) -> str:
    if not NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not the name of a rehearsal's scratch database")
    return str(engine.dialect.identifier_preparer.quote_identifier(name))


def create(server: URL, name: str) -> URL:
    """A fresh empty scratch database `name` (one left by an earlier attempt is dropped first); its URL."""
    engine = _engine(server)
    try:
        _drop(engine, name)
        with engine.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {_quoted(engine, name)}"))
    finally:
        engine.dispose()
    return server.set(database=name)


def drop(server: URL, name: str) -> None:
    """Drop the scratch database `name` if it exists (its sessions ended first where the server can)."""
    engine = _engine(server)
    try:
        _drop(engine, name)
    finally:
        engine.dispose()


def _drop(engine: Engine, name: str) -> None:
    statements = engines.for_url(engine.url).drop_database(_quoted(engine, name))
    for number, statement in enumerate(statements, 1):
        try:
            with engine.connect() as conn:
                conn.execute(text(statement))
            return
        except Exception:
            if number == len(statements):
                raise


def listed(server: URL, prefix: str) -> list[str]:
    """The scratch databases on the server whose names start with `prefix` (one resource's, or all of ours)."""
    if not prefix.startswith(PREFIX):
        raise ValueError(f"{prefix!r} is not a prefix of rehearsals' scratch databases")
    engine = _engine(server)
    try:
        query = engines.for_url(engine.url).list_databases()
        with engine.connect() as conn:
            names = [str(row[0]) for row in conn.execute(text(query))]
    finally:
        engine.dispose()
    return sorted(name for name in names if name.startswith(prefix) and NAME.fullmatch(name))
