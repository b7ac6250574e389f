"""Fixtures of the runner's tests on PostgreSQL: a project directory and the runner bound to the test database."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_runner import Runner

from bed.postgres import Database


@pytest.fixture
def app(tmp_path: Path) -> Path:
    """Where a test writes its Alembic project (``apps.make_project``)."""
    return tmp_path / "app"


@pytest.fixture
def runner(database: Database, app: Path) -> Runner:
    """The runner zipapp, as the Jobs run it, on the test database, checking its output for the password."""
    return Runner(database, app)
