"""The runner (the Jobs' program, in the app's image) with an app on an async driver: Alembic's async env.py and a
`postgresql+asyncpg://` URL. The runner's own statements (the connectivity check, the migration lock) go through
the async engine; env.py runs as the app runs it."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_check_apps import REVISIONS, async_project, async_url
from test_runner import run

from bed.postgres import Database

pytestmark = pytest.mark.postgres


def test_an_async_app_migrates_under_the_lock_and_reports(database: Database, tmp_path: Path) -> None:
    app = tmp_path / "app"
    async_project(app, models=False)
    url = async_url(database.url, "asyncpg")
    secrets = (database.password, database.url)
    r = run(app, url, "current", secrets=secrets)
    assert r.rc == 0 and r.result["current"] is None and r.result["heads"] == [REVISIONS[-1].id], r.stderr
    r = run(app, url, "upgrade", "--from", "base", "--to", "head", "--lock-key", "77", secrets=secrets)
    assert r.rc == 0, r.stderr
    assert r.result["applied"] == [rev.id for rev in REVISIONS]
    assert "took the migration lock (advisory lock 77)" in r.stderr
    assert database.query("SELECT version_num FROM alembic_version") == [(REVISIONS[-1].id,)]
    assert database.query("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == [(0,)]  # released
    r = run(app, url, "downgrade", "--from", REVISIONS[-1].id, "--to", "base", "--lock-key", "77", secrets=secrets)
    assert r.rc == 0, r.stderr
    assert database.query("SELECT count(*) FROM alembic_version") == [(0,)]


def test_an_async_app_waits_for_the_lock_another_migration_holds(database: Database, tmp_path: Path) -> None:
    app = tmp_path / "app"
    async_project(app, models=False)
    with database.connect() as holder:
        holder.execute("SELECT pg_advisory_lock(78)")
        r = run(app, async_url(database.url, "asyncpg"), "upgrade", "--from", "base", "--to", "head",
                "--lock-key", "78", "--lock-wait-seconds", "2", secrets=(database.password, database.url))
    assert r.rc != 0 and r.result["reason"] == "LockTimeout", r.stderr
    assert "held by pid " in r.result["message"]
    assert database.query("SELECT to_regclass('public.customers')") == [(None,)]
