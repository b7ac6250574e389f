"""The runner (the package operator/alembic_operator/runner/, built into one zipapp) against a real PostgreSQL
database.

Every run goes through `run()`, which runs the built zipapp as the Jobs do (a subprocess, working directory = the
app, the URL only in ALEMBIC_OPERATOR_DATABASE_URL) and asserts that the password appears nowhere in what it wrote.
"""

from __future__ import annotations

import ast
import atexit
import builtins
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from alembic_operator.runner import build, results
from alembic_operator.runner.driver import has_downgrade
from alembic_operator.runner.redact import Redactor
from apps import Rev, linear, make_project
from bed.postgres import Database

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "operator" / "alembic_operator" / "runner"
# The runner as install-runner writes it for the Jobs: the package built into one zipapp, once per test process.
_BUILT = Path(tempfile.mkdtemp(prefix="runner-pyz-"))
atexit.register(shutil.rmtree, _BUILT, True)
RUNNER = build.build(_BUILT / "runner.pyz")
SHOP = ROOT / "examples" / "shop"
# RUNNER_PYTHON runs the runner with another interpreter (an old stack: Python 3.9, alembic 1.9, SQLAlchemy 1.4),
# RUNNER_DRIVER swaps the URL's driver for it (psycopg2). The shop example needs the current stack.
PYTHON = sys.executable
RUNNER_PYTHON = os.environ.get("RUNNER_PYTHON", PYTHON)
RUNNER_DRIVER = os.environ.get("RUNNER_DRIVER")
current_stack_only = pytest.mark.skipif(RUNNER_PYTHON != PYTHON, reason="the shop example needs the current stack")
URL_ENV = "ALEMBIC_OPERATOR_DATABASE_URL"

SHOP_REVS = ["9461a5dfea5e", "01a2d588476e", "fc7b070a6d88", "382cd6ceb09e", "88d79e1b94a5"]


@dataclass
class Run:
    rc: int
    result: dict[str, Any]
    stdout: str
    stderr: str


def run(
    cwd: Path,
    url: str,
    *args: str,
    secrets: tuple[str, ...] = (),
    runner: Path = RUNNER,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> Run:
    handle, name = tempfile.mkstemp(prefix="runner-result-", suffix=".json")
    os.close(handle)
    result_file = Path(name)
    result_file.unlink()
    environment = {k: v for k, v in os.environ.items() if k != URL_ENV}
    environment.update(env or {})
    if RUNNER_DRIVER:
        url = url.replace("postgresql+psycopg://", f"postgresql+{RUNNER_DRIVER}://")
    environment[URL_ENV] = url
    proc = subprocess.run(
        [RUNNER_PYTHON, str(runner), "--result-file", str(result_file), *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    text = result_file.read_text() if result_file.exists() else ""
    result_file.unlink(missing_ok=True)
    assert text, f"no result written (rc {proc.returncode}):\n{proc.stderr}"
    assert len(text.encode()) < 3500
    for secret in secrets:
        assert secret not in proc.stdout, "secret leaked on stdout"
        assert secret not in proc.stderr, "secret leaked on stderr"
        assert secret not in text, "secret leaked in the result"
    return Run(proc.returncode, json.loads(text), proc.stdout, proc.stderr)


def tables(database: Database) -> set[str]:
    rows = database.query("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {str(row[0]) for row in rows}


def version(database: Database) -> str | None:
    if "alembic_version" not in tables(database):
        return None
    rows = database.query("SELECT version_num FROM alembic_version")
    return str(rows[0][0]) if rows else None


class Runner:
    """run() bound to one database and one project directory, always checking for the password."""

    def __init__(self, database: Database, cwd: Path) -> None:
        self.database = database
        self.cwd = cwd

    def __call__(self, *args: str, **kw: Any) -> Run:
        secrets = (self.database.password, self.database.url)
        return run(self.cwd, self.database.url, *args, secrets=secrets, **kw)


# --- current, plan ----------------------------------------------------------------------------------------------


def test_current(runner: Runner, app: Path) -> None:
    revs = linear(2)
    make_project(app, revs)
    r = runner("current")
    assert r.rc == 0, r.stderr
    assert r.result == {
        "ok": True, "command": "current", "current": None, "currentHeads": [], "versionTable": False,
        "tables": 0, "dialect": "postgresql", "known": True, "heads": [revs[1].id],
    }
    assert runner("upgrade", "--from", "base", "--to", revs[0].id).rc == 0
    r = runner("current")
    assert r.result["current"] == revs[0].id
    assert r.result["versionTable"] is True
    assert r.result["tables"] == 1


def test_plan_on_empty_database(runner: Runner, app: Path, tmp_path: Path) -> None:
    revs = linear(3)
    make_project(app, revs, transaction_per_migration=True)
    out = tmp_path / "plan"
    r = runner("plan", "--target", "head", "--out", str(out))
    assert r.rc == 0, r.stderr
    ids = [rev.id for rev in revs]
    assert r.result["ok"] is True
    assert r.result["current"] is None
    assert r.result["target"] == ids[-1]
    assert r.result["revisions"] == ids
    assert r.result["revisionCount"] == 3
    assert r.result["unrenderable"] == []
    assert r.result["transactionPerMigration"] is True
    assert r.result["transactionalDDL"] is True
    assert r.result["planFile"] == str(out / "plan.json")
    files = sorted(p.name for p in out.glob("*.sql"))
    assert files == [f"{i:03d}-{rev}.sql" for i, rev in enumerate(ids, 1)]
    first = (out / files[0]).read_text()
    assert "CREATE TABLE alembic_version" in first
    assert "CREATE TABLE t1" in first
    second = (out / files[1]).read_text()
    assert "CREATE TABLE t2" in second and "CREATE TABLE t1" not in second
    assert f"UPDATE alembic_version SET version_num='{ids[1]}'" in second
    plan = json.loads((out / "plan.json").read_text())
    assert [entry["revision"] for entry in plan["revisions"]] == ids
    assert all(entry["hasDowngrade"] is True and entry["renderable"] for entry in plan["revisions"])
    assert plan["revisions"][0]["message"] == "create t1"
    assert plan["revisions"][1]["downRevisions"] == [ids[0]]
    # Rendering did not touch the database.
    assert tables(runner.database) == set()


def test_plan_nothing_to_do(runner: Runner, app: Path, tmp_path: Path) -> None:
    revs = linear(2)
    make_project(app, revs)
    assert runner("upgrade", "--from", "base", "--to", revs[-1].id).rc == 0
    r = runner("plan", "--target", "head", "--out", str(tmp_path / "plan"))
    assert r.rc == 0, r.stderr
    assert r.result["revisions"] == []
    assert r.result["current"] == r.result["target"] == revs[-1].id
    assert list((tmp_path / "plan").glob("*.sql")) == []


def test_plan_names_contract_revisions_and_the_scan_finds_what_breaks_the_running_version(
        runner: Runner, app: Path, tmp_path: Path) -> None:
    """Expand/contract: the runner reads `phase` from each revision module; the scan (jobtools) splits the plan and
    reports an unmarked drop or rename of what the running version uses."""
    from alembic_operator import jobtools

    make_project(app, [
        Rev("c0000000000a", upgrade=['op.create_table("orders", sa.Column("id", sa.Integer, primary_key=True), '
                                     'sa.Column("code", sa.Text), sa.Column("total", sa.Integer), '
                                     'sa.Column("legacy", sa.Text))']),
        Rev("c0000000000b", upgrade=['op.add_column("orders", sa.Column("ref", sa.Text))',
                                     'op.execute("UPDATE orders SET ref = code")',
                                     'op.alter_column("orders", "total", new_column_name="amount")'], phase="expand"),
        Rev("c0000000000c", upgrade=['op.drop_column("orders", "code")'], phase="contract"),
        Rev("c0000000000d", upgrade=['op.drop_column("orders", "legacy")']),
    ])
    assert runner("upgrade", "--from", "base", "--to", "c0000000000a").rc == 0
    out = tmp_path / "plan"
    r = runner("plan", "--target", "head", "--out", str(out))
    assert r.rc == 0, r.stderr
    plan = json.loads((out / "plan.json").read_text())
    assert plan["contract"] == ["c0000000000c"]
    assert [e["phase"] for e in plan["revisions"]] == ["expand", "contract", "expand"]
    scan = jobtools.cmd_scan(out)
    assert scan["contract"] == ["c0000000000c"]
    # The rename in the expand part breaks the running version; the drops after the contract revision do not.
    assert scan["breakingCount"] == 1
    assert scan["breaking"][0].startswith("RENAME COLUMN orders.total TO amount (revision c0000000000b)")
    assert 'mark revision c0000000000b phase = "contract"' in scan["breaking"][0]
    # A typo never runs a revision in the wrong part.
    (app / "migrations" / "versions" / "c0000000000d_rev.py").write_text(
        (app / "migrations" / "versions" / "c0000000000d_rev.py").read_text() + '\nphase = "contrat"\n')
    r = runner("plan", "--target", "head", "--out", str(out))
    assert r.rc != 0 and r.result["reason"] == "ScriptError" and "'contrat'" in r.result["message"]


def test_plan_multiple_heads(runner: Runner, app: Path, tmp_path: Path) -> None:
    make_project(app, [
        Rev("aaaaaaaaaa01", upgrade=['op.create_table("a", sa.Column("id", sa.Integer, primary_key=True))']),
        Rev("aaaaaaaaaa02", upgrade=['op.create_table("b", sa.Column("id", sa.Integer, primary_key=True))']),
        Rev("aaaaaaaaaa03", down_revision="aaaaaaaaaa01",
            upgrade=['op.create_table("c", sa.Column("id", sa.Integer, primary_key=True))']),
    ])
    r = runner("plan", "--target", "head", "--out", str(tmp_path / "plan"))
    assert r.rc == 3
    assert r.result["reason"] == "MultipleHeads"
    assert r.result["heads"] == ["aaaaaaaaaa02", "aaaaaaaaaa03"]
    assert "aaaaaaaaaa02" in r.result["message"] and "aaaaaaaaaa03" in r.result["message"]
    assert "alembic merge heads" in r.result["message"]
    # One branch explicitly is fine.
    r = runner("plan", "--target", "aaaaaaaaaa03", "--out", str(tmp_path / "plan"))
    assert r.rc == 0, r.stderr
    assert r.result["revisions"] == ["aaaaaaaaaa01", "aaaaaaaaaa03"]


def test_plan_merge_revision(runner: Runner, app: Path, tmp_path: Path) -> None:
    make_project(app, [
        Rev("aaaaaaaaaa01", upgrade=['op.create_table("a", sa.Column("id", sa.Integer, primary_key=True))']),
        Rev("aaaaaaaaaa02", upgrade=['op.create_table("b", sa.Column("id", sa.Integer, primary_key=True))']),
        Rev("aaaaaaaaaa03", down_revision="aaaaaaaaaa01",
            upgrade=['op.create_table("c", sa.Column("id", sa.Integer, primary_key=True))']),
        Rev("aaaaaaaaaa04", down_revision=("aaaaaaaaaa02", "aaaaaaaaaa03")),
    ])
    out = tmp_path / "plan"
    r = runner("plan", "--target", "head", "--out", str(out))
    assert r.rc == 0, r.stderr
    assert r.result["revisions"][0] == "aaaaaaaaaa01" and r.result["revisions"][-1] == "aaaaaaaaaa04"
    assert set(r.result["revisions"]) == {"aaaaaaaaaa01", "aaaaaaaaaa02", "aaaaaaaaaa03", "aaaaaaaaaa04"}
    assert r.result["unrenderable"] == []
    plan = json.loads((out / "plan.json").read_text())
    assert plan["revisions"][-1]["isMerge"] is True
    assert plan["revisions"][-1]["hasDowngrade"] is True  # a merge point: nothing to undo
    r = runner("upgrade", "--from", "base", "--to", "aaaaaaaaaa04")
    assert r.rc == 0, r.stderr
    assert r.result["revision"] == "aaaaaaaaaa04"
    assert set(r.result["applied"]) == set(plan_ids(plan))


def plan_ids(plan: dict[str, Any]) -> list[str]:
    return [entry["revision"] for entry in plan["revisions"]]


def test_plan_unknown_revision(runner: Runner, app: Path, tmp_path: Path) -> None:
    revs = linear(2)
    make_project(app, revs)
    runner.database.query("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
    runner.database.query("INSERT INTO alembic_version VALUES ('0123456789ab')")
    r = runner("plan", "--target", "head", "--out", str(tmp_path / "plan"))
    assert r.rc == 3
    assert r.result["reason"] == "UnknownRevision"
    assert r.result["current"] == "0123456789ab"
    assert "0123456789ab" in r.result["message"]
    assert "alembic stamp" in r.result["message"]
    r = runner("current")
    assert r.result["known"] is False


def test_plan_unknown_target(runner: Runner, app: Path, tmp_path: Path) -> None:
    make_project(app, linear(2))
    r = runner("plan", "--target", "ffffffffffff", "--out", str(tmp_path / "plan"))
    assert r.rc == 3
    assert r.result["reason"] == "UnknownTargetRevision"
    assert "ffffffffffff" in r.result["message"]


def test_plan_downgrade_request(runner: Runner, app: Path, tmp_path: Path) -> None:
    revs = linear(3)
    make_project(app, revs)
    assert runner("upgrade", "--from", "base", "--to", revs[2].id).rc == 0
    r = runner("plan", "--target", revs[0].id, "--out", str(tmp_path / "plan"))
    assert r.rc == 3
    assert r.result["reason"] == "DowngradeNotSupported"
    assert r.result["current"] == revs[2].id and r.result["target"] == revs[0].id
    assert "only upgrades" in r.result["message"]


def test_plan_destructive_revision(runner: Runner, app: Path, tmp_path: Path) -> None:
    make_project(app, [
        Rev("aaaaaaaaaa01",
            upgrade=['op.create_table("orders", sa.Column("id", sa.Integer, primary_key=True),'
                     ' sa.Column("legacy_code", sa.String(32)))'],
            downgrade=['op.drop_table("orders")']),
        Rev("aaaaaaaaaa02", upgrade=['op.drop_column("orders", "legacy_code")'],
            downgrade=['op.add_column("orders", sa.Column("legacy_code", sa.String(32)))']),
    ])
    assert runner("upgrade", "--from", "base", "--to", "aaaaaaaaaa01").rc == 0
    out = tmp_path / "plan"
    r = runner("plan", "--target", "head", "--out", str(out))
    assert r.rc == 0, r.stderr
    assert r.result["current"] == "aaaaaaaaaa01"
    assert r.result["revisions"] == ["aaaaaaaaaa02"]
    sql = (out / "001-aaaaaaaaaa02.sql").read_text()
    assert "ALTER TABLE orders DROP COLUMN legacy_code" in sql
    assert "CREATE TABLE alembic_version" not in sql
    assert "UPDATE alembic_version SET version_num='aaaaaaaaaa02'" in sql


def test_plan_unrenderable_data_migration(runner: Runner, app: Path, tmp_path: Path) -> None:
    make_project(app, [
        Rev("aaaaaaaaaa01", upgrade=['op.create_table("t", sa.Column("id", sa.Integer, primary_key=True),'
                                     ' sa.Column("n", sa.Integer))']),
        Rev("aaaaaaaaaa02", upgrade=[
            "conn = op.get_bind()",
            'for (id_,) in conn.execute(sa.text("SELECT id FROM t")).fetchall():',
            '    conn.execute(sa.text("UPDATE t SET n = :n WHERE id = :id"), {"n": id_ * 2, "id": id_})',
        ], message="backfill t.n"),
        Rev("aaaaaaaaaa03", upgrade=[
            "if context.is_offline_mode():",
            '    raise NotImplementedError("this data migration needs a live connection")',
            'op.execute("UPDATE t SET n = 0 WHERE n IS NULL")',
        ]),
        Rev("aaaaaaaaaa04", upgrade=['op.add_column("t", sa.Column("m", sa.Integer))']),
    ])
    out = tmp_path / "plan"
    r = runner("plan", "--target", "head", "--out", str(out))
    assert r.rc == 0, r.stderr
    assert r.result["revisions"] == ["aaaaaaaaaa01", "aaaaaaaaaa02", "aaaaaaaaaa03", "aaaaaaaaaa04"]
    unrenderable = {entry["revision"]: entry["message"] for entry in r.result["unrenderable"]}
    assert set(unrenderable) == {"aaaaaaaaaa02", "aaaaaaaaaa03"}
    assert "needs a live connection" in unrenderable["aaaaaaaaaa03"]
    assert sorted(p.name for p in out.glob("*.sql")) == ["001-aaaaaaaaaa01.sql", "004-aaaaaaaaaa04.sql"]
    plan = json.loads((out / "plan.json").read_text())
    assert [entry["renderable"] for entry in plan["revisions"]] == [True, False, False, True]
    assert plan["revisions"][1]["file"] is None
    # Online, the data migrations run fine.
    r = runner("upgrade", "--from", "base", "--to", "aaaaaaaaaa04")
    assert r.rc == 0, r.stderr


# --- upgrade ----------------------------------------------------------------------------------------------------


def test_upgrade_and_idempotent_rerun(runner: Runner, app: Path) -> None:
    revs = linear(3)
    make_project(app, revs)
    ids = [rev.id for rev in revs]
    r = runner("upgrade", "--from", "base", "--to", ids[-1])
    assert r.rc == 0, r.stderr
    assert r.result["ok"] is True
    assert r.result["revision"] == ids[-1]
    assert r.result["applied"] == ids
    assert r.result["alreadyAtTarget"] is False
    assert r.result["from"] is None and r.result["to"] == ids[-1]
    assert isinstance(r.result["durationSeconds"], float)
    assert tables(runner.database) == {"alembic_version", "t1", "t2", "t3"}
    assert f"running upgrade base -> {ids[0]} (1/3)" in r.stderr
    assert f"running upgrade {ids[0]} -> {ids[1]} (2/3)" in r.stderr
    # The same Job again (a retried pod): harmless.
    r = runner("upgrade", "--from", "base", "--to", ids[-1])
    assert r.rc == 0, r.stderr
    assert r.result["alreadyAtTarget"] is True
    assert r.result["revision"] == ids[-1]
    assert r.result["applied"] == []


def test_upgrade_revision_moved(runner: Runner, app: Path) -> None:
    revs = linear(3)
    make_project(app, revs)
    r = runner("upgrade", "--from", revs[0].id, "--to", revs[2].id)
    assert r.rc == 3
    assert r.result["reason"] == "RevisionMoved"
    assert r.result["revision"] is None
    assert "nothing was run" in r.result["message"]
    assert tables(runner.database) == set()


FAILING = [
    *linear(2),
    Rev("aaaaaaaa0003", upgrade=[
        'op.create_table("t3", sa.Column("id", sa.Integer, primary_key=True))',
        'op.execute("INSERT INTO t3 (id) VALUES (1)")',
        'op.execute("INSERT INTO t3 (id) VALUES (1)")',
    ], downgrade=['op.drop_table("t3")'], message="fails: duplicate key"),
]


def test_failing_upgrade_in_one_transaction(runner: Runner, app: Path) -> None:
    make_project(app, FAILING, transaction_per_migration=False)
    r = runner("upgrade", "--from", "base", "--to", "aaaaaaaa0003")
    assert r.rc == 1
    assert r.result["ok"] is False
    assert r.result["reason"] == "MigrationFailed"
    assert r.result["revision"] is None  # all rolled back: still at base
    assert r.result["applied"] == []
    assert r.result["failedRevision"] == "aaaaaaaa0003"
    assert "duplicate key value violates unique constraint" in r.result["message"]
    assert "23505" in r.result["message"]
    assert "nothing was committed" in r.result["message"]
    assert "t1" not in tables(runner.database)


def test_failing_upgrade_one_transaction_per_migration(runner: Runner, app: Path) -> None:
    make_project(app, FAILING, transaction_per_migration=True)
    r = runner("upgrade", "--from", "base", "--to", "aaaaaaaa0003")
    assert r.rc == 1
    assert r.result["reason"] == "MigrationFailed"
    assert r.result["revision"] == "aaaaaaaa0002"  # the first two committed
    assert r.result["applied"] == ["aaaaaaaa0001", "aaaaaaaa0002"]
    assert r.result["failedRevision"] == "aaaaaaaa0003"
    assert "the database is at aaaaaaaa0002" in r.result["message"]
    assert version(runner.database) == "aaaaaaaa0002"
    assert tables(runner.database) == {"alembic_version", "t1", "t2"}


def test_upgrade_lock_held_elsewhere(runner: Runner, app: Path) -> None:
    revs = linear(2)
    make_project(app, revs)
    key = 4242424242
    with runner.database.connect() as other:
        other.execute("SELECT pg_advisory_lock(%s)", (key,))
        r = runner("upgrade", "--from", "base", "--to", revs[-1].id, "--lock-key", str(key), "--lock-wait-seconds", "2")
    assert r.rc == 5
    assert r.result["reason"] == "LockTimeout"
    assert "held by pid " in r.result["message"]
    assert "waiting for the migration lock" in r.stderr
    assert tables(runner.database) == set()
    # Released: it runs.
    r = runner("upgrade", "--from", "base", "--to", revs[-1].id, "--lock-key", str(key), "--lock-wait-seconds", "2")
    assert r.rc == 0, r.stderr


SLOW_SECOND = [*linear(1), Rev("aaaaaaaa0002", upgrade=['op.execute("SELECT pg_sleep(60)")'], message="slow")]


def upgrade_then_signal(runner: Runner, app: Path, tmp_path: Path, sig: signal.Signals, pause: float = 0
                        ) -> tuple[int, dict[str, Any], str]:
    """Run `upgrade base -> aaaaaaaa0002` of SLOW_SECOND, send `sig` once the slow revision runs (after `pause`);
    returns the exit code, the result file and the runner's stderr."""
    result_file, log_file = tmp_path / "result.json", tmp_path / "stderr.log"
    env = {**os.environ, URL_ENV: runner.database.url.replace("postgresql+psycopg://",
                                                              f"postgresql+{RUNNER_DRIVER or 'psycopg'}://")}
    with log_file.open("w") as stderr:
        proc = subprocess.Popen(
            [RUNNER_PYTHON, str(RUNNER), "--result-file", str(result_file), "upgrade", "--from", "base",
             "--to", "aaaaaaaa0002"], cwd=app, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            deadline = time.monotonic() + 60
            while "running upgrade aaaaaaaa0001 -> aaaaaaaa0002" not in log_file.read_text():
                assert proc.poll() is None and time.monotonic() < deadline, log_file.read_text()
                time.sleep(0.2)
            time.sleep(pause)
            proc.send_signal(sig)
            rc = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return rc, json.loads(result_file.read_text()), log_file.read_text()


@pytest.mark.skipif(RUNNER_DRIVER == "psycopg2", reason="psycopg2 blocks signals until the statement ends")
def test_upgrade_interrupted_by_sigterm(runner: Runner, app: Path, tmp_path: Path) -> None:
    """activeDeadlineSeconds or a deleted pod: SIGTERM cancels the statement; the result is still written."""
    make_project(app, SLOW_SECOND)
    rc, result, log = upgrade_then_signal(runner, app, tmp_path, signal.SIGTERM, pause=1)
    assert rc == 1
    assert result["reason"] == "MigrationFailed", result
    assert result["failedRevision"] == "aaaaaaaa0002"
    assert result["revision"] is None  # one transaction: aaaaaaaa0001 rolled back too
    assert "interrupted (terminated by signal SIGTERM" in result["message"]
    assert runner.database.password not in log
    sleeping = runner.database.query("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(60)%'")
    assert sleeping == [(0,)]  # the statement was cancelled, not left running
    assert tables(runner.database) == set()


def test_upgrade_killed_outright_still_reports_what_it_may_have_committed(runner: Runner, app: Path,
                                                                          tmp_path: Path) -> None:
    """SIGKILL (OOM, a lost node): no handler runs, yet the result file names the revisions that were started, so
    the operator rolls back only those, and only if the database is at one of them."""
    make_project(app, SLOW_SECOND, transaction_per_migration=True)
    _rc, result, _log = upgrade_then_signal(runner, app, tmp_path, signal.SIGKILL)
    assert result["ok"] is False and result["reason"] == "Interrupted", result
    assert result["attempted"] == ["aaaaaaaa0001", "aaaaaaaa0002"]
    assert "applied" not in result and runner.database.password not in json.dumps(result)
    assert version(runner.database) == "aaaaaaaa0001"  # one of the positions the report allows


def test_upgrade_unknown_target(runner: Runner, app: Path) -> None:
    make_project(app, linear(1))
    r = runner("upgrade", "--from", "base", "--to", "ffffffffffff")
    assert r.rc == 3
    assert r.result["reason"] == "UnknownTargetRevision"


# --- downgrade, stamp ---------------------------------------------------------------------------------------------


def test_downgrade(runner: Runner, app: Path) -> None:
    revs = linear(3)
    make_project(app, revs)
    ids = [rev.id for rev in revs]
    assert runner("upgrade", "--from", "base", "--to", ids[-1]).rc == 0
    r = runner("downgrade", "--from", ids[-1], "--to", ids[0])
    assert r.rc == 0, r.stderr
    assert r.result["revision"] == ids[0]
    assert r.result["reverted"] == [ids[2], ids[1]]
    assert tables(runner.database) == {"alembic_version", "t1"}
    r = runner("downgrade", "--from", ids[-1], "--to", ids[0])
    assert r.rc == 0 and r.result["alreadyAtTarget"] is True
    r = runner("downgrade", "--from", ids[0], "--to", "base")
    assert r.rc == 0, r.stderr
    assert r.result["revision"] is None
    assert tables(runner.database) == {"alembic_version"}


def test_downgrade_refuses_empty_downgrade(runner: Runner, app: Path) -> None:
    make_project(app, [
        Rev("aaaaaaaaaa01", upgrade=['op.create_table("t", sa.Column("id", sa.Integer, primary_key=True))'],
            downgrade=['op.drop_table("t")']),
        Rev("aaaaaaaaaa02", upgrade=['op.add_column("t", sa.Column("x", sa.Integer))'], downgrade=[]),
    ])
    assert runner("upgrade", "--from", "base", "--to", "aaaaaaaaaa02").rc == 0
    r = runner("downgrade", "--from", "aaaaaaaaaa02", "--to", "aaaaaaaaaa01")
    assert r.rc == 3
    assert r.result["reason"] == "IrreversibleRevision"
    assert version(runner.database) == "aaaaaaaaaa02"
    r = runner("downgrade", "--from", "aaaaaaaaaa02", "--to", "aaaaaaaaaa01", "--allow-empty-downgrades")
    assert r.rc == 0, r.stderr


def test_failing_downgrade(runner: Runner, app: Path) -> None:
    make_project(app, [
        *linear(1),
        Rev("aaaaaaaa0002", upgrade=['op.create_table("t2", sa.Column("id", sa.Integer, primary_key=True))'],
            downgrade=['op.drop_table("no_such_table")']),
    ])
    assert runner("upgrade", "--from", "base", "--to", "aaaaaaaa0002").rc == 0
    r = runner("downgrade", "--from", "aaaaaaaa0002", "--to", "base")
    assert r.rc == 1
    assert r.result["reason"] == "DowngradeFailed"
    assert r.result["revision"] == "aaaaaaaa0002"
    assert r.result["failedRevision"] == "aaaaaaaa0002"
    assert 'table "no_such_table" does not exist' in r.result["message"]


def test_stamp_adopts_unversioned_database(runner: Runner, app: Path) -> None:
    revs = linear(2)
    make_project(app, revs)
    runner.database.query("CREATE TABLE t1 (id integer PRIMARY KEY)")
    r = runner("current")
    assert r.result["versionTable"] is False and r.result["tables"] == 1
    r = runner("stamp", "--revision", revs[0].id)
    assert r.rc == 0, r.stderr
    assert r.result == {"ok": True, "command": "stamp", "to": revs[0].id, "revision": revs[0].id}
    assert version(runner.database) == revs[0].id
    r = runner("stamp", "--revision", revs[1].id)
    assert r.rc == 3
    assert r.result["reason"] == "AlreadyVersioned"
    assert r.result["revision"] == revs[0].id


# --- configuration errors and secrets -----------------------------------------------------------------------------


def test_url_problems_never_leak_the_password(database: Database, app: Path) -> None:
    make_project(app, linear(1))
    password = database.password
    secrets = (password,)

    r = run(app, "", "current", secrets=secrets)
    assert (r.rc, r.result["reason"]) == (4, "MissingDatabaseURL")

    bad = f"postgresql+psycopg://app:{password}@127.0.0.1:notaport/{database.name}"
    r = run(app, bad, "current", secrets=(password, bad))
    assert (r.rc, r.result["reason"]) == (4, "InvalidDatabaseURL")

    bad = f"nosuchdialect://app:{password}@127.0.0.1/x"
    r = run(app, bad, "current", secrets=(password, bad))
    assert (r.rc, r.result["reason"]) == (4, "InvalidDatabaseURL")

    wrong_password = f"postgresql+psycopg://app:{password}x@127.0.0.1:{database.port}/{database.name}"
    r = run(app, wrong_password, "plan", "--target", "head", "--out", str(app.parent / "p"),
            secrets=(password, wrong_password))
    assert (r.rc, r.result["reason"]) == (5, "DatabaseUnreachable")
    assert "password authentication failed" in r.result["message"]

    # An env.py that prints its URL and a migration that fails with the URL in its message: redacted.
    (app / "migrations" / "env.py").write_text(
        "import sys\nfrom alembic import context\n"
        "print('url is', context.config.get_main_option('sqlalchemy.url'))\n"
        "print('url is', context.config.get_main_option('sqlalchemy.url'), file=sys.stderr)\n"
        "raise RuntimeError('cannot use ' + context.config.get_main_option('sqlalchemy.url'))\n"
    )
    r = run(app, database.url, "current", secrets=(password, database.url))
    assert (r.rc, r.result["reason"]) == (4, "ScriptError")
    assert "url is" in r.stdout and "***" in r.stdout


def test_export_url_env_for_env_py_that_reads_a_variable(runner: Runner, app: Path) -> None:
    revs = linear(1)
    make_project(app, revs)
    env_py = app / "migrations" / "env.py"
    env_py.write_text("import os\n" + env_py.read_text().replace(
        'config.get_main_option("sqlalchemy.url")', 'os.environ["SHOP_DATABASE_URL"]'))
    r = runner("upgrade", "--from", "base", "--to", revs[0].id)
    assert (r.rc, r.result["reason"]) == (4, "ScriptError")
    assert "SHOP_DATABASE_URL" in r.result["message"]
    r = runner("upgrade", "--from", "base", "--to", revs[0].id, "--export-url-env", "SHOP_DATABASE_URL")
    assert r.rc == 0, r.stderr
    assert r.result["revision"] == revs[0].id


def test_config_not_found(runner: Runner, app: Path) -> None:
    make_project(app, linear(1))
    r = runner("--config", "nope.ini", "current")
    assert (r.rc, r.result["reason"]) == (4, "ConfigNotFound")
    r = runner("current", "--config", str(app / "alembic.ini"))
    assert r.rc == 0


def test_invalid_arguments(runner: Runner, app: Path) -> None:
    make_project(app, linear(1))
    r = runner("upgrade", "--to", "x")
    assert (r.rc, r.result["reason"]) == (2, "InvalidArguments")


def test_project_usable_from_any_directory(runner: Runner, app: Path, tmp_path: Path) -> None:
    make_project(app, linear(2))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = run(elsewhere, runner.database.url, "--config", str(app / "alembic.ini"), "current",
            secrets=(runner.database.password,))
    assert r.rc == 0, r.stderr


# --- the shop example, end to end ---------------------------------------------------------------------------------


@pytest.fixture
def shop_runner(database: Database, tmp_path: Path) -> Path:
    """The runner as the Jobs have it: a lone runner.pyz in a directory of its own."""
    target = tmp_path / "alembic-operator" / "runner.pyz"
    target.parent.mkdir()
    shutil.copy(RUNNER, target)
    return target


def seed(database: Database) -> None:
    env = {**os.environ, "DATABASE_URL": database.url}
    proc = subprocess.run([PYTHON, "seed.py"], cwd=SHOP, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert database.password not in proc.stdout + proc.stderr


@current_stack_only
def test_shop_plan_from_empty(database: Database, shop_runner: Path, tmp_path: Path) -> None:
    out = tmp_path / "plan"
    r = run(SHOP, database.url, "plan", "--target", "head", "--out", str(out), runner=shop_runner,
            secrets=(database.password,))
    assert r.rc == 0, r.stderr
    assert r.result["revisions"] == SHOP_REVS
    assert r.result["transactionPerMigration"] is True
    assert "ALTER TABLE orders DROP COLUMN legacy_code" in (out / "004-382cd6ceb09e.sql").read_text()
    assert "CHECK (total > 0)" in (out / "005-88d79e1b94a5.sql").read_text()
    plan = json.loads((out / "plan.json").read_text())
    assert all(entry["hasDowngrade"] for entry in plan["revisions"])


@current_stack_only
def test_shop_end_to_end(database: Database, shop_runner: Path, tmp_path: Path) -> None:
    def runner(*args: str) -> Run:
        return run(SHOP, database.url, *args, runner=shop_runner, secrets=(database.password, database.url))

    r = runner("upgrade", "--from", "base", "--to", SHOP_REVS[2])
    assert r.rc == 0, r.stderr
    assert r.result["applied"] == SHOP_REVS[:3]
    seed(database)
    assert database.query("SELECT count(*) FROM orders WHERE legacy_code IS NOT NULL") == [(3,)]

    r = runner("plan", "--target", SHOP_REVS[3], "--out", str(tmp_path / "plan4"))
    assert r.result["revisions"] == [SHOP_REVS[3]]
    r = runner("upgrade", "--from", SHOP_REVS[2], "--to", SHOP_REVS[3])
    assert r.rc == 0, r.stderr
    columns = {row[0] for row in database.query(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'orders'")}
    assert "legacy_code" not in columns and "currency" in columns

    r = runner("upgrade", "--from", SHOP_REVS[3], "--to", SHOP_REVS[4])
    assert r.rc == 1
    assert r.result["reason"] == "MigrationFailed"
    assert r.result["revision"] == SHOP_REVS[3]
    assert r.result["failedRevision"] == SHOP_REVS[4]
    assert r.result["applied"] == []
    assert "is violated by some row" in r.result["message"]
    assert version(database) == SHOP_REVS[3]
    assert "shipments" not in tables(database)
    assert database.query("SELECT count(*), sum(total) FROM orders")[0][0] == 5
    assert database.query("SELECT count(*) FROM customers") == [(3,)]


@current_stack_only
def test_shop_models_match_head(database: Database, shop_runner: Path) -> None:
    r = run(SHOP, database.url, "upgrade", "--from", "base", "--to", SHOP_REVS[-1], runner=shop_runner,
            secrets=(database.password,))
    assert r.rc == 0, r.stderr
    code = (
        "import sys\nfrom alembic.migration import MigrationContext\n"
        "from alembic.autogenerate import compare_metadata\n"
        "from sqlalchemy import create_engine; from shop.models import Base\n"
        "with create_engine(sys.argv[1]).connect() as c:\n"
        "    print(compare_metadata(MigrationContext.configure(c), Base.metadata))\n"
    )
    proc = subprocess.run([PYTHON, "-c", code, database.url], cwd=SHOP, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# --- pieces of the runner, in process ------------------------------------------------------------------------------


def _imports(path: Path) -> tuple[set[str], int]:
    """The top-level modules a file imports absolutely, and how many relative imports it has."""
    tree = ast.parse(path.read_text(), feature_version=(3, 9))  # no syntax newer than Python 3.9
    modules, relative = set(), 0
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                relative += 1
            elif node.module:
                modules.add(node.module.split(".")[0])
    return modules, relative


def _runtime_unions(tree: ast.AST) -> list[int]:
    """Lines where `X | None` or `int | str` is evaluated (annotations are not, with postponed evaluation)."""
    found: list[int] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            sides = (node.left, node.right)
            if any(isinstance(side, ast.Constant) and side.value is None for side in sides) or (all(
                    isinstance(side, (ast.Name, ast.Subscript, ast.BinOp)) for side in sides) and any(
                    isinstance(side, ast.Name) and side.id in dir(builtins) for side in sides)):
                found.append(node.lineno)
        for name, value in ast.iter_fields(node):
            if name in ("annotation", "returns"):
                continue  # not evaluated
            for child in value if isinstance(value, list) else [value]:
                if isinstance(child, ast.AST):
                    visit(child)

    visit(tree)
    return found


def test_runner_is_self_contained() -> None:
    """The package imports only the standard library, alembic and sqlalchemy (the rest relatively), parses as
    Python 3.9, and evaluates no annotation at run time (`X | None` is 3.10+)."""
    files = build.modules()
    assert {p.name for p in files} >= {"cli.py", "driver.py", "lock.py", "drift.py", "redact.py", "results.py"}
    found: set[str] = set()
    for path in files:
        modules, _ = _imports(path)
        found |= modules
        source = path.read_text()
        if path.name != "__init__.py":
            assert "from __future__ import annotations" in source, path.name
        assert not re.search(r"^\s*match .*:$", source, re.M), path.name
        assert not _runtime_unions(ast.parse(source)), f"{path.name}: X | Y evaluated at run time (3.10+)"
    assert "tomllib" not in found  # the standard library's, from Python 3.11
    assert found - set(sys.stdlib_module_names) == {"alembic", "sqlalchemy"}


def test_the_zipapp_holds_the_package_and_runs_it() -> None:
    import zipfile

    with zipfile.ZipFile(RUNNER) as archive:
        names = {name for name in archive.namelist() if not name.endswith("/")}
    assert names == {"__main__.py", *(f"{build.PACKAGE}/{p.name}" for p in build.modules())}
    proc = subprocess.run([RUNNER_PYTHON, str(RUNNER), "--help"], capture_output=True, text=True, timeout=60,
                          cwd=_BUILT)
    assert proc.returncode == 0 and "drift" in proc.stdout, proc.stderr


def test_result_fits_a_termination_message() -> None:
    result = {
        "ok": True, "command": "plan", "message": "x" * 5000,
        "revisions": [f"{i:012x}" for i in range(600)],
        "unrenderable": [{"revision": f"{i:012x}", "message": "y" * 400} for i in range(30)],
    }
    text = results.fit(result)
    assert len(text.encode()) <= 3500
    fitted = json.loads(text)
    assert fitted["ok"] is True and fitted["command"] == "plan"
    assert fitted["revisions"] == result["revisions"][: len(fitted["revisions"])]
    assert fitted["revisionsTruncated"] is True
    small = {"ok": True, "command": "current", "current": None}
    assert json.loads(results.fit(small)) == small


def test_redactor() -> None:
    redact = Redactor()
    redact.add("postgresql+psycopg://app:p%40ss%2Fw0rd@db:5432/shop")
    for spelling in ("p@ss/w0rd", "p%40ss%2Fw0rd"):
        redact.add(spelling, min_length=4)
    assert "p@ss" not in redact("failed for p@ss/w0rd and p%40ss%2Fw0rd")
    assert redact("url postgresql+psycopg://app:p%40ss%2Fw0rd@db:5432/shop end") == "url *** end"
    assert redact("other mysql://root:hunter2@h/db") == "other mysql://root:***@h/db"


def test_one_redactor_for_the_runner_the_jobs_and_the_operator() -> None:
    """jobtools and dbstate scrub through runner/redact.py too; only the runner keeps password = ... (it is data in
    the SQL it renders)."""
    from alembic_operator import dbstate, jobtools

    text = "conn postgresql://u:s3cret@h/db failed; password='a b' sslpassword=x"
    assert Redactor()(text) == "conn postgresql://u:***@h/db failed; password=*** sslpassword=***"
    assert Redactor(parameters=False)(text) == "conn postgresql://u:***@h/db failed; password='a b' sslpassword=x"
    assert jobtools.sanitize(text) == dbstate.sanitize(text) == Redactor()(text)
    assert isinstance(jobtools.REDACT, Redactor)


def test_has_downgrade(tmp_path: Path) -> None:
    cases = {
        "def upgrade():\n    op.x()\n\ndef downgrade():\n    op.y()\n": True,
        "def upgrade():\n    op.x()\n\ndef downgrade():\n    pass\n": False,
        "def upgrade():\n    op.x()\n\ndef downgrade():\n    '''no'''\n    raise NotImplementedError\n": False,
        "def upgrade():\n    op.x()\n": False,
        "def upgrade():\n    pass\n\ndef downgrade():\n    pass\n": True,  # a merge point
        "def upgrade(:\n": None,
    }
    for number, (source, expected) in enumerate(cases.items()):
        path = tmp_path / f"r{number}.py"
        path.write_text(source)
        assert has_downgrade(str(path)) is expected, source


def test_install_runner_writes_the_zipapp(tmp_path: Path) -> None:
    """`alembic-operator job install-runner DEST`, as the Jobs' init container runs it: one file another Python
    runs, built from the installed package."""
    from alembic_operator import cli, jobs

    dest = tmp_path / "alembic-operator" / Path(jobs.RUNNER).name
    assert cli.main(["job", "install-runner", str(dest)]) == 0
    assert dest.name == "runner.pyz" and oct(dest.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in dest.parent.iterdir()] == [dest.name]  # nothing left beside it
    proc = subprocess.run([RUNNER_PYTHON, str(dest), "--result-file", "-", "current"], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path,
                          env={k: v for k, v in os.environ.items() if k != URL_ENV})
    assert proc.returncode == 4 and json.loads(proc.stdout.strip().splitlines()[-1])["reason"] == "MissingDatabaseURL"
