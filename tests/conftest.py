"""Shared fixtures: the local Kubernetes bed and a real PostgreSQL server."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bed.postgres import Database, PostgresServer

# --- PostgreSQL (written by the lead; keep) ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the session, on a free loopback port, in a temporary data directory."""
    # Not under pytest's tmp_path: that is private to root, and the server runs as the postgres user.
    server = PostgresServer(Path(tempfile.mkdtemp(prefix="alembic-operator-pg-")))
    server.start()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def database(postgres: PostgresServer, request: pytest.FixtureRequest) -> Iterator[Database]:
    """A fresh database per test, owned by the application role; `database.url` is its SQLAlchemy URL."""
    name = re.sub(r"[^a-z0-9_]", "_", request.node.name.lower())[:40] + "_" + str(abs(hash(request.node.nodeid)))[:8]
    db = postgres.create_database(name)
    try:
        yield db
    finally:
        postgres.drop_database(name)
