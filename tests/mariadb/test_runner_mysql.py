"""The runner (the zipapp, as the Jobs run it) on a real MariaDB: upgrade and downgrade, the migration lock, and a
revision that fails after some of its DDL committed (half-applied), restored from a backup to identical rows."""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from alembic_operator.runner import build
from alembic_operator.runner.lock import mysql_lock_name
from apps import Rev, linear, make_project
from bed.mariadb import Database

pytestmark = pytest.mark.mariadb

_BUILT = Path(tempfile.mkdtemp(prefix="runner-pyz-"))
atexit.register(shutil.rmtree, _BUILT, True)
RUNNER = build.build(_BUILT / "runner.pyz")
URL_ENV = "ALEMBIC_OPERATOR_DATABASE_URL"


@dataclass
class Run:
    rc: int
    result: dict[str, Any]
    stderr: str


def runner(db: Database, cwd: Path, *args: str) -> Run:
    """The runner as a Job runs it: a subprocess in the app's directory, the URL only in the environment; the
    password appears nowhere in what it wrote."""
    result_file = cwd / "result.json"
    result_file.unlink(missing_ok=True)
    env = {**{k: v for k, v in os.environ.items() if k != URL_ENV}, URL_ENV: db.url}
    proc = subprocess.run([sys.executable, str(RUNNER), "--result-file", str(result_file), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)
    text = result_file.read_text()
    assert len(text.encode()) < 3500
    for where in (proc.stdout, proc.stderr, text):
        assert db.password not in where
    return Run(proc.returncode, json.loads(text), proc.stderr)


def tables(db: Database) -> set[str]:
    return {str(r[0]) for r in db.query("SHOW TABLES")}


def checksums(db: Database) -> dict[str, str]:
    out = {}
    for name in sorted(tables(db)):
        rows = db.query(f"SELECT * FROM `{name}` ORDER BY 1")
        create = db.query(f"SHOW CREATE TABLE `{name}`")[0][1]
        out[name] = hashlib.sha256(repr((rows, create)).encode()).hexdigest()
    return out


def test_upgrade_and_downgrade(mariadb_database: Database, tmp_path: Path) -> None:
    app = tmp_path / "app"
    revs = linear(3)
    make_project(app, revs)
    r = runner(mariadb_database, app, "current")
    assert r.result["dialect"] == "mysql" and r.result["current"] is None, r
    r = runner(mariadb_database, app, "upgrade", "--from", "base", "--to", revs[-1].id)
    assert r.rc == 0, r.stderr
    assert r.result["applied"] == [rev.id for rev in revs] and r.result["transactionalDDL"] is False
    assert tables(mariadb_database) == {"alembic_version", "t1", "t2", "t3"}
    r = runner(mariadb_database, app, "downgrade", "--from", revs[-1].id, "--to", revs[0].id)
    assert r.rc == 0, r.stderr
    assert r.result["reverted"] == [revs[2].id, revs[1].id] and r.result["revision"] == revs[0].id
    assert tables(mariadb_database) == {"alembic_version", "t1"}


def test_upgrade_waits_for_the_lock_and_names_its_holder(mariadb_database: Database, tmp_path: Path) -> None:
    app = tmp_path / "app"
    make_project(app, linear(1))
    key = 4242
    with mariadb_database.connect() as holder, holder.cursor() as cur:
        cur.execute("SELECT GET_LOCK(%s, 0), CONNECTION_ID()", (mysql_lock_name(key),))
        _, holder_id = cur.fetchone()  # type: ignore[misc]
        r = runner(mariadb_database, app, "upgrade", "--from", "base", "--to", "aaaaaaaa0001",
                   "--lock-key", str(key), "--lock-wait-seconds", "2")
    assert r.result["reason"] == "LockTimeout", r
    assert f"pid {holder_id}" in r.result["message"] and r.result["blockers"][0]["pid"] == holder_id
    assert tables(mariadb_database) == set()


HALF = [
    Rev("aaaaaaaa0001", upgrade=['op.create_table("orders", sa.Column("id", sa.Integer, primary_key=True), '
                                 'sa.Column("amount", sa.Integer))',
                                 'op.execute("INSERT INTO orders VALUES (1, 10), (2, 20), (3, 30)")'],
        downgrade=['op.drop_table("orders")']),
    Rev("aaaaaaaa0002", upgrade=['op.create_table("audit", sa.Column("id", sa.Integer, primary_key=True))'],
        downgrade=['op.drop_table("audit")']),
    # three DDL statements, then one that fails: the first three committed, the version table says aaaaaaaa0002
    Rev("aaaaaaaa0003", upgrade=['op.create_table("notes", sa.Column("id", sa.Integer, primary_key=True))',
                                 'op.add_column("orders", sa.Column("secret_code", sa.String(20), '
                                 'server_default="s3cr3t-literal"))',
                                 """op.execute('ALTER TABLE orders ADD COLUMN note VARCHAR(20) DEFAULT "dq-secret"')""",
                                 'op.add_column("no_such_table", sa.Column("x", sa.Integer))'],
        downgrade=['op.drop_column("orders", "secret_code")', 'op.drop_table("notes")']),
]


def test_a_half_applied_revision_is_reported_and_restored_to_identical_rows(
        mariadb_database: Database, tmp_path: Path, job: Any) -> None:
    db = mariadb_database
    app = tmp_path / "app"
    make_project(app, HALF)
    assert runner(db, app, "upgrade", "--from", "base", "--to", "aaaaaaaa0001").rc == 0
    before = checksums(db)
    backup = job(db.url, "backup", "--store", "volume", "--location", str(tmp_path / "backups"), "--prefix", "shop",
                 "--retain", "2")
    assert backup.rc == 0 and backup.result["revision"] == "aaaaaaaa0001", backup

    r = runner(db, app, "upgrade", "--from", "aaaaaaaa0001", "--to", "aaaaaaaa0003")
    assert r.rc == 1 and r.result["reason"] == "MigrationFailed", r
    assert r.result["revision"] == "aaaaaaaa0002" and r.result["applied"] == ["aaaaaaaa0002"]
    assert r.result["failedRevision"] == "aaaaaaaa0003" and r.result["transactionalDDL"] is False
    partial = r.result["partialRevision"]
    assert partial["revision"] == "aaaaaaaa0003" and partial["statementCount"] == 3, partial
    assert partial["statements"][0].startswith("CREATE TABLE notes")
    assert partial["statements"][1].startswith("ALTER TABLE orders ADD COLUMN secret_code")
    assert partial["statements"][2] == "ALTER TABLE orders ADD COLUMN note VARCHAR(?) DEFAULT ?"
    assert "s3cr3t-literal" not in json.dumps(r.result) and "dq-secret" not in json.dumps(r.result)
    assert "s3cr3t-literal" not in r.stderr and "dq-secret" not in r.stderr  # nor in the Job's log
    assert "revision aaaaaaaa0003 is half-applied: 3 of its statement(s) committed" in r.result["message"]
    assert {"notes", "audit"} <= tables(db)  # what the version table does not say

    restored = job(db.url, "restore", "--store", "volume", "--dump", backup.result["file"], "--sha256",
                   backup.result["sha256"])
    assert restored.rc == 0, restored
    assert sorted(restored.result["dropped"]) == ["TABLE audit", "TABLE notes"]
    assert checksums(db) == before


def test_a_revision_that_fails_before_any_ddl_is_not_half_applied(mariadb_database: Database, tmp_path: Path) -> None:
    app = tmp_path / "app"
    make_project(app, [HALF[0], Rev("aaaaaaaa0002", upgrade=['op.execute("INSERT INTO orders VALUES (9, 90)")',
                                                              'op.execute("INSERT INTO orders VALUES (9, 90)")'])])
    r = runner(mariadb_database, app, "upgrade", "--from", "base", "--to", "aaaaaaaa0002")
    assert r.result["reason"] == "MigrationFailed" and r.result["revision"] == "aaaaaaaa0001", r
    assert "partialRevision" not in r.result  # its INSERT was rolled back with its transaction
    assert mariadb_database.query("SELECT COUNT(*) FROM orders WHERE id = 9") == [(0,)]
