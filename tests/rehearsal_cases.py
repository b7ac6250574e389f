"""The rehearsal's server tests, shared by PostgreSQL and MariaDB: production's backup restored into a scratch
database by `alembic-operator job rehearsal-restore`, the plan run there by `runner.pyz rehearse`, exactly as the
rehearsal Job's two containers run them (the URL is the scratch server's, the database named on the command line).

Each failure the issue names (the shop's revision 5, a unique index over duplicates, SET NOT NULL over nulls, a
foreign key over orphans) is caught on the copy; production keeps its revision, schema and rows; no scratch
database is left on the server.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic_operator.runner import build
from apps import Rev, make_project

URL_ENV = "ALEMBIC_OPERATOR_DATABASE_URL"
_BUILT = Path(tempfile.mkdtemp(prefix="runner-pyz-"))
atexit.register(shutil.rmtree, _BUILT, True)
RUNNER = build.build(_BUILT / "runner.pyz")
SCRATCH = "alembic_rehearsal_0123456789_g"  # + a number per test: recognisably a rehearsal's
SHOP = Path(__file__).resolve().parents[1] / "examples" / "shop"

BASE = Rev("bbbbbbbb0001", upgrade=[
    'op.create_table("customers", sa.Column("id", sa.Integer, primary_key=True))',
    'op.create_table("orders", sa.Column("id", sa.Integer, primary_key=True), sa.Column("total", sa.Numeric(8, 2)), '
    'sa.Column("code", sa.String(20)), sa.Column("note", sa.String(20)), sa.Column("customer_id", sa.Integer))',
])
# Rows each failing revision trips over: a duplicate code, a null note, an orphan customer.
ROWS = ["INSERT INTO customers (id) VALUES (1)",
        "INSERT INTO orders (id, total, code, note, customer_id) VALUES (1, 10, 'A', 'x', 1), (2, 0, 'A', NULL, 7)"]
# (a CHECK over a violating row is the shop's revision 5: check_shop)
FAILING = {
    "unique": 'op.create_index("ux_orders_code", "orders", ["code"], unique=True)',
    "not-null": 'op.alter_column("orders", "note", existing_type=sa.String(20), nullable=False)',
    "foreign-key": 'op.create_foreign_key("fk_orders_customer", "orders", "customers", ["customer_id"], ["id"])',
}


@dataclass
class Server:
    """One engine's server as the tests see it: production's URL, the scratch server's URL (no database named, or
    the server's own), and how to read it."""

    production: str
    scratch_server: str
    password: str
    query: Callable[[str], list[tuple[Any, ...]]]  # on production
    databases: Callable[[], set[str]]  # every database on the server
    snapshot: Callable[[], Any]  # production's schema and rows


def runner(cwd: Path, url: str, *args: str, password: str,
           timeout: float = 180) -> tuple[int, dict[str, Any], str]:
    """The app container's command: the runner zipapp in the app's directory, the URL only in the environment."""
    handle, name = tempfile.mkstemp(prefix="rehearse-result-", suffix=".json")  # never in the app's directory
    os.close(handle)
    result_file = Path(name)
    env = {**{k: v for k, v in os.environ.items() if k != URL_ENV}, URL_ENV: url}
    proc = subprocess.run([sys.executable, str(RUNNER), "--result-file", str(result_file), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    text = result_file.read_text()
    result_file.unlink()
    assert len(text.encode()) < 3500
    for where in (proc.stdout, proc.stderr, text):
        assert password not in where
    return proc.returncode, json.loads(text), proc.stderr


def backed_up(server: Server, job: Any, tmp_path: Path) -> Any:
    backup = job(server.production, "backup", "--store", "volume", "--location", str(tmp_path / "backups"),
                 "--prefix", "shop", "--retain", "2")
    assert backup.rc == 0, backup
    return backup


def rehearse(server: Server, job: Any, tmp_path: Path, app: Path, start: str, target: str,
             number: int, backup: Any = None) -> dict[str, Any]:
    """Back production up (unless given its backup), restore the backup into a scratch database, rehearse start ->
    target there; the rehearsal's result. Production must be where it was, and no scratch database left."""
    before = server.snapshot()
    backup = backup or backed_up(server, job, tmp_path)
    name = f"{SCRATCH}{number}"
    restored = job(server.scratch_server, "rehearsal-restore", "--store", "volume", "--dump",
                   backup.result["file"], "--sha256", backup.result["sha256"], "--database", name)
    assert restored.rc == 0, restored
    assert restored.result["revision"] == start
    assert name in server.databases()
    rc, result, stderr = runner(app, server.scratch_server, "rehearse", "--from", start, "--to", target,
                                "--database", name, "--db-lock-timeout-ms", "5000", password=server.password)
    assert (rc == 0) == bool(result["ok"]), stderr
    assert result["command"] == "rehearse" and result.get("database") == name, result
    assert not {d for d in server.databases() if d.startswith("alembic_rehearsal_")}, "a scratch database was left"
    assert server.snapshot() == before, "production changed"
    return result


def failing_project(app: Path, case: str) -> str:
    make_project(app, [BASE, Rev("bbbbbbbb0002", upgrade=[FAILING[case]])])
    return "bbbbbbbb0002"


def seeded(server: Server, app: Path) -> None:
    rc, _, stderr = runner(app, server.production, "upgrade", "--from", "base", "--to", BASE.id,
                           password=server.password)
    assert rc == 0, stderr
    for statement in ROWS:
        server.query(statement)


def check_failures(server: Server, job: Any, tmp_path: Path) -> None:
    """Each failure that depends on production's rows is caught on the scratch copy, naming the revision and the
    database's own error; production untouched."""
    backup = None
    for number, case in enumerate(FAILING, 1):
        app = tmp_path / f"app-{case}"
        failed = failing_project(app, case)
        if number == 1:
            seeded(server, app)
            backup = backed_up(server, job, tmp_path)  # one backup: production does not change
        result = rehearse(server, job, tmp_path, app, BASE.id, failed, number, backup)
        assert result["ok"] is False and result["reason"] == "MigrationFailed", (case, result)
        assert result["failedRevision"] == failed, (case, result)
        assert f"revision {failed} failed" in result["message"], (case, result)
        assert [r["revision"] for r in result["revisions"]] == [failed], (case, result)


def check_shop(server: Server, job: Any, tmp_path: Path, seed: Callable[[str], None]) -> dict[str, Any]:
    """The shop's revision 5 (CHECK total > 0 over a free sample order) is caught in rehearsal."""
    app = SHOP
    rc, _, stderr = runner(app, server.production, "upgrade", "--from", "base", "--to", "382cd6ceb09e",
                           password=server.password)
    assert rc == 0, stderr
    seed(server.production)
    result = rehearse(server, job, tmp_path, app, "382cd6ceb09e", "88d79e1b94a5", 9)
    assert result["ok"] is False and result["failedRevision"] == "88d79e1b94a5", result
    assert "ck_orders_total_positive" in result["message"], result
    return result


def check_passing(server: Server, job: Any, tmp_path: Path, pause: str) -> dict[str, Any]:
    """A plan that passes: each revision measured (wall time, rows its UPDATE touched); the scratch copy dropped."""
    app = tmp_path / "app-pass"
    make_project(app, [BASE, Rev("bbbbbbbb0002", upgrade=[
        'op.add_column("orders", sa.Column("flag", sa.Integer))',
        'op.execute("UPDATE orders SET flag = 1")',
        f'op.execute("{pause}")',  # holds the table's lock long enough to be sampled
    ]), Rev("bbbbbbbb0003", upgrade=['op.create_index("ix_orders_flag", "orders", ["flag"])'])])
    seeded(server, app)
    result = rehearse(server, job, tmp_path, app, BASE.id, "bbbbbbbb0003", 20)
    assert result["ok"] is True and result["applied"] == ["bbbbbbbb0002", "bbbbbbbb0003"], result
    first, second = result["revisions"]
    assert first["revision"] == "bbbbbbbb0002" and first["rows"] == 2 and first["seconds"] >= 0.3, result
    assert second["revision"] == "bbbbbbbb0003" and second["seconds"] >= 0, result
    assert result["rehearsalSeconds"] >= first["seconds"], result
    return result
