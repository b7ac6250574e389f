"""`alembic-operator check` on small broken projects (one per failure it must catch) and on examples/shop.

The CLI runs in-process (`check.cli.main`); scratch databases live on the session's PostgreSQL server (the
application role has CREATEDB), or in SQLite.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest

from alembic_operator.check.cli import main
from apps import Rev, linear, make_project
from bed.postgres import Database, PostgresServer

pytestmark = pytest.mark.postgres

REPO = Path(__file__).resolve().parents[2]
SHOP = REPO / "examples" / "shop"

T1 = Rev("aaaaaaaa0001", upgrade=['op.create_table("t1", sa.Column("id", sa.Integer, primary_key=True))'],
         downgrade=['op.drop_table("t1")'])


# --- helpers ------------------------------------------------------------------------------------------------------


@pytest.fixture
def scratch_url(postgres: PostgresServer) -> str:
    """The server's maintenance database: check creates (and drops) its scratch database there."""
    return f"postgresql+psycopg://app:{postgres.password}@127.0.0.1:{postgres.port}/postgres"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    """Run the check with --format json; returns the exit code and the parsed report."""
    code = main([*argv, "--format", "json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


def rules(report: dict[str, Any], counted_only: bool = True) -> list[str]:
    return [f["rule"] for f in report["findings"] if not (counted_only and f["allowed"])]


def of(report: dict[str, Any], rule: str) -> list[dict[str, Any]]:
    return [f for f in report["findings"] if f["rule"] == rule]


def status(report: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["status"] for c in report["checks"]}


def with_models(ini: Path, source: str) -> None:
    """Give the project models: a uniquely named module (each test imports its own) exporting `metadata`, used
    as env.py's target_metadata."""
    module = f"models_{uuid.uuid4().hex[:10]}"
    (ini.parent / f"{module}.py").write_text("import sqlalchemy as sa\n\nmetadata = sa.MetaData()\n" + source)
    env = ini.parent / "migrations" / "env.py"
    env.write_text(env.read_text().replace("target_metadata = None", f"from {module} import metadata as "
                                           "target_metadata"))


def stamp(db: Database, revision: str) -> None:
    db.query("CREATE TABLE IF NOT EXISTS alembic_version (version_num varchar(32) PRIMARY KEY)")
    db.query("DELETE FROM alembic_version")
    db.query("INSERT INTO alembic_version VALUES (%s)", revision)


def scratch_databases(postgres: PostgresServer) -> list[str]:
    with postgres.admin() as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'alembic_check_%'").fetchall()
    return [r[0] for r in rows]


# --- integrity ----------------------------------------------------------------------------------------------------


def test_multiple_heads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ini = make_project(tmp_path, [T1, Rev("bbbbbbbb0001", message="add t2", down_revision="aaaaaaaa0001"),
                                  Rev("cccccccc0001", message="add t3", down_revision="aaaaaaaa0001")])
    code, report = run(capsys, "-c", str(ini), "--scratch", "none")
    assert code == 1
    (heads,) = of(report, "multiple-heads")
    assert "bbbbbbbb0001, cccccccc0001" in heads["message"]
    assert "alembic merge heads" in heads["message"]
    assert any("add t3" in d for d in heads["details"])
    assert status(report)["integrity"] == "failed"


def test_duplicate_revision(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ini = make_project(tmp_path, linear(2))
    versions = tmp_path / "migrations" / "versions"
    shutil.copy(versions / "aaaaaaaa0002_rev.py", versions / "zzzz_copy_rev.py")
    code, report = run(capsys, "-c", str(ini), "--scratch", "none")
    assert code == 1
    (dup,) = of(report, "duplicate-revision")
    assert dup["revision"] == "aaaaaaaa0002"
    assert "aaaaaaaa0002_rev.py" in dup["message"] and "zzzz_copy_rev.py" in dup["message"]


def test_missing_down_revision_and_unreachable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ini = make_project(tmp_path, [T1, Rev("bbbbbbbb0001", down_revision="deadbeef0000"), Rev("bbbbbbbb0002")])
    code, report = run(capsys, "-c", str(ini), "--scratch", "sqlite")
    assert code == 1
    (missing,) = of(report, "missing-down-revision")
    assert missing["revision"] == "bbbbbbbb0001" and "deadbeef0000" in missing["message"]
    (unreachable,) = of(report, "unreachable-revision")
    assert unreachable["revision"] == "bbbbbbbb0002" and "bbbbbbbb0001" in unreachable["message"]
    # Alembic cannot load such scripts: the checks that need them are skipped, not crashed
    assert status(report)["upgrade"] == "skipped"


def test_cycle_is_unreachable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ini = make_project(tmp_path, [T1, Rev("bbbbbbbb0001", down_revision="bbbbbbbb0002"),
                                  Rev("bbbbbbbb0002", down_revision="bbbbbbbb0001")])
    code, report = run(capsys, "-c", str(ini), "--scratch", "none")
    assert code == 1
    found = of(report, "unreachable-revision")
    assert {f["revision"] for f in found} == {"bbbbbbbb0001", "bbbbbbbb0002"}
    assert all("loops" in f["message"] for f in found)


def test_clean_project_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str], scratch_url: str) -> None:
    ini = make_project(tmp_path, linear(3))
    code, report = run(capsys, "-c", str(ini), "--scratch-url", scratch_url)
    assert code == 0, report
    assert status(report) == {"integrity": "passed", "lint": "passed", "upgrade": "passed", "models": "passed",
                              "roundtrip": "passed", "live": "skipped"}
    assert rules(report) == ["no-target-metadata"]  # a warning: the test app has no models


# --- models without migrations --------------------------------------------------------------------------------

MODELS = """
sa.Table("t1", metadata, sa.Column("id", sa.Integer, primary_key=True),
         sa.Column("name", sa.String(50), nullable=False),   # the migration makes it String(20), nullable
         sa.Column("email", sa.String(100), unique=True),    # no migration adds it
         sa.Index("ix_t1_name", "name"))                     # no migration creates it
sa.Table("t9", metadata, sa.Column("id", sa.Integer, primary_key=True))  # a model without any migration
"""
T1_WITH_NAME = Rev("aaaaaaaa0001", upgrade=[
    'op.create_table("t1", sa.Column("id", sa.Integer, primary_key=True), sa.Column("name", sa.String(20)))',
    'op.create_table("old", sa.Column("id", sa.Integer, primary_key=True))',  # the models dropped it
], downgrade=['op.drop_table("old")', 'op.drop_table("t1")'])


def _check_models(report: dict[str, Any]) -> None:
    objects = [f["objects"][0] for f in of(report, "models-without-migration")]
    found = {(o["object"], o["table"], o.get("column") or o.get("name")): o for o in objects}
    assert set(found) == {
        ("table", "t9", None),
        ("table", "old", None),
        ("column", "t1", "email"),
        ("unique constraint", "t1", None),
        ("type", "t1", "name"),
        ("nullability", "t1", "name"),
        ("index", "t1", "ix_t1_name"),
    }, objects
    assert found["unique constraint", "t1", None]["columns"] == ["email"]
    assert found["type", "t1", "name"]["models"] == "VARCHAR(50)"
    assert found["type", "t1", "name"]["database"] == "VARCHAR(20)"
    assert found["nullability", "t1", "name"]["models"] == "NOT NULL"
    assert found["table", "t9", None]["change"] == "add_table"  # in the models, not in the migrations
    assert found["table", "old", None]["change"] == "remove_table"
    assert status(report)["models"] == "failed"


def test_models_without_migration_postgres(tmp_path: Path, capsys: pytest.CaptureFixture[str], scratch_url: str,
                                           postgres: PostgresServer) -> None:
    ini = make_project(tmp_path, [T1_WITH_NAME])
    with_models(ini, MODELS)
    code, report = run(capsys, "-c", str(ini), "--scratch-url", scratch_url)
    assert code == 1
    _check_models(report)
    email = next(f for f in of(report, "models-without-migration") if "email" in f["message"])
    assert email["message"] == ("column t1.email (VARCHAR(100), NULL): in the models, not in the schema the "
                                "migrations build")
    assert scratch_databases(postgres) == []  # created and dropped


def test_models_without_migration_sqlite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ini = make_project(tmp_path, [T1_WITH_NAME])
    with_models(ini, MODELS)
    code, report = run(capsys, "-c", str(ini), "--scratch", "sqlite", "--skip", "lint")
    assert code == 1
    _check_models(report)


def test_upgrade_failure(tmp_path: Path, capsys: pytest.CaptureFixture[str], scratch_url: str) -> None:
    ini = make_project(tmp_path, [T1, Rev("aaaaaaaa0002", upgrade=['op.drop_table("nope")'],
                                          downgrade=['op.create_table("nope", sa.Column("id", sa.Integer))'])])
    code, report = run(capsys, "-c", str(ini), "--scratch-url", scratch_url)
    assert code == 1
    (failed,) = of(report, "upgrade-failed")
    assert failed["revision"] == "aaaaaaaa0002" and "nope" in failed["message"]
    assert status(report)["models"] == status(report)["roundtrip"] == "skipped"


# --- round trip -------------------------------------------------------------------------------------------------


def test_downgrade_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str], scratch_url: str) -> None:
    revs = linear(3)
    revs[1].downgrade = ()  # `pass`
    ini = make_project(tmp_path, revs)
    code, report = run(capsys, "-c", str(ini), "--scratch-url", scratch_url)
    assert code == 1
    (missing,) = of(report, "downgrade-missing")
    assert missing["revision"] == "aaaaaaaa0002"
    # the round trip still covers what can be undone: the revisions above the irreversible one
    roundtrip = next(c for c in report["checks"] if c["name"] == "roundtrip")
    assert roundtrip["reason"] == "head -> aaaaaaaa0002 -> head (1 revision(s))"


def test_downgrade_failed(tmp_path: Path, capsys: pytest.CaptureFixture[str], scratch_url: str) -> None:
    revs = linear(3)
    revs[2].downgrade = ['op.drop_table("t_wrong_name")']
    ini = make_project(tmp_path, revs)
    code, report = run(capsys, "-c", str(ini), "--scratch-url", scratch_url)
    assert code == 1
    (failed,) = of(report, "downgrade-failed")
    assert failed["revision"] == "aaaaaaaa0003"
    assert "t_wrong_name" in failed["message"]


def test_roundtrip_mismatch(tmp_path: Path, capsys: pytest.CaptureFixture[str], scratch_url: str) -> None:
    ini = make_project(tmp_path, [T1, Rev(
        "aaaaaaaa0002",
        upgrade=['op.add_column("t1", sa.Column("x", sa.Integer))', 'op.create_index("ix_t1_x", "t1", ["x"])'],
        downgrade=['op.drop_index("ix_t1_x", table_name="t1")'],  # forgets the column
    )])
    code, report = run(capsys, "-c", str(ini), "--scratch-url", scratch_url, "--steps", "1")
    assert code == 1
    down, up = of(report, "roundtrip-mismatch")
    assert "downgrading from head to aaaaaaaa0001" in down["message"]
    assert down["details"] == ["table t1, column x: after the downgrade to aaaaaaaa0001, but not after the first "
                               "upgrade to aaaaaaaa0001 (type=INTEGER, nullable=True)"]
    assert up["revision"] == "aaaaaaaa0002" and "already exists" in up["message"]


def test_steps_limits_the_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str], scratch_url: str) -> None:
    revs = linear(3)
    revs[0].downgrade = ()
    ini = make_project(tmp_path, revs)
    code, report = run(capsys, "-c", str(ini), "--scratch-url", scratch_url, "--steps", "2")
    assert code == 0, report  # revision 1, irreversible, is below the two steps checked
    roundtrip = next(c for c in report["checks"] if c["name"] == "roundtrip")
    assert roundtrip["reason"] == "head -> aaaaaaaa0001 -> head (2 revision(s))"


# --- lint and suppressions ------------------------------------------------------------------------------------


def _destructive_project(path: Path, comment: str = "") -> Path:
    return make_project(path, [*linear(2), Rev(
        "aaaaaaaa0003", upgrade=[comment, 'op.drop_table("t1")'] if comment else ['op.drop_table("t1")'],
        downgrade=['op.create_table("t1", sa.Column("id", sa.Integer, primary_key=True))'])])


def test_lint_destructive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, report = run(capsys, "-c", str(_destructive_project(tmp_path)), "--scratch", "none")
    assert code == 1
    (drop,) = of(report, "drop-table")
    assert drop["severity"] == "error" and drop["revision"] == "aaaaaaaa0003"
    assert drop["message"].startswith("DROP TABLE t1")
    assert status(report)["lint"] == "failed"


def test_allow_comment(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ini = _destructive_project(tmp_path, comment="# alembic-operator: allow drop-table")
    code, report = run(capsys, "-c", str(ini), "--scratch", "none")
    assert code == 0, report
    (drop,) = of(report, "drop-table")
    assert drop["allowed"] and drop["allowedBy"] == "comment in aaaaaaaa0003_rev.py"


def test_allow_option_and_unknown_rules(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ini = _destructive_project(tmp_path, comment="# alembic-operator: allow drop-tabel")  # a typo
    code, report = run(capsys, "-c", str(ini), "--scratch", "none", "--allow", "drop-table")
    assert code == 0
    assert of(report, "drop-table")[0]["allowedBy"] == "--allow"
    (typo,) = of(report, "unknown-allow-rule")
    assert "drop-tabel" in typo["message"] and typo["severity"] == "warning"
    assert main(["-c", str(ini), "--scratch", "none", "--fail-on", "warning"]) == 1
    assert main(["-c", str(ini), "--allow", "no-such-rule"]) == 2


def test_lint_only_pending(tmp_path: Path, capsys: pytest.CaptureFixture[str], database: Database) -> None:
    ini = make_project(tmp_path, [*linear(1), Rev("aaaaaaaa0002", upgrade=['op.drop_table("t1")'],
                                                  downgrade=['op.create_table("t1", sa.Column("id", sa.Integer))']),
                                  Rev("aaaaaaaa0003", upgrade=['op.create_index("ix", "t0", ["id"])'])])
    stamp(database, "aaaaaaaa0002")  # the drop already ran there
    code, report = run(capsys, "-c", str(ini), "--scratch", "none", "--database-url", database.url)
    assert sorted(rules(report)) == ["behind-head", "create-index-not-concurrently"]
    assert code == 0  # a warning and a note


# --- the live database ----------------------------------------------------------------------------------------


def test_live_behind_and_drift(tmp_path: Path, capsys: pytest.CaptureFixture[str], database: Database,
                               scratch_url: str) -> None:
    ini = make_project(tmp_path, linear(3))
    assert main(["-c", str(ini), "--scratch", "none", "--database-url", database.url]) == 0
    capsys.readouterr()
    database.query("CREATE TABLE t1 (id integer PRIMARY KEY, extra text)")  # t1 as revision 1 makes it, + extra
    stamp(database, "aaaaaaaa0001")
    code, report = run(capsys, "-c", str(ini), "--scratch-url", scratch_url, "--database-url", database.url)
    assert code == 1
    (behind,) = of(report, "behind-head")
    assert behind["severity"] == "info" and "aaaaaaaa0002, aaaaaaaa0003" in behind["message"]
    (drift,) = of(report, "live-schema-drift")
    assert drift["message"] == ("column t1.extra (TEXT, NULL): in the live database, not in the migrations at "
                                "aaaaaaaa0001")


def test_live_at_head_compares_models(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      database: Database) -> None:
    ini = make_project(tmp_path, [T1])
    with_models(ini, 'sa.Table("t1", metadata, sa.Column("id", sa.Integer, primary_key=True))\n')
    database.query("CREATE TABLE t1 (id integer PRIMARY KEY)")
    stamp(database, "aaaaaaaa0001")
    code, report = run(capsys, "-c", str(ini), "--scratch", "none", "--database-url", database.url)
    assert code == 0, report
    database.query("ALTER TABLE t1 ADD COLUMN note text NOT NULL DEFAULT ''")
    database.query("CREATE TABLE scratchpad (id integer)")
    code, report = run(capsys, "-c", str(ini), "--scratch", "none", "--database-url", database.url)
    assert code == 1
    assert sorted(f["message"] for f in of(report, "live-schema-drift")) == [
        "column t1.note (TEXT, NOT NULL): in the live database, not in the models",
        "table scratchpad: in the live database, not in the models",
    ]


def test_unknown_revision(tmp_path: Path, capsys: pytest.CaptureFixture[str], database: Database,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    ini = make_project(tmp_path, linear(2))
    stamp(database, "ffffffffffff")
    monkeypatch.setenv("DATABASE_URL", database.url)  # the URL from the environment
    code, report = run(capsys, "-c", str(ini), "--scratch", "none")
    assert code == 1
    (unknown,) = of(report, "unknown-revision")
    assert unknown["revision"] == "ffffffffffff" and "alembic stamp" in unknown["message"]
    assert status(report)["lint"] == "passed"  # lints every revision, not knowing which are pending


def test_live_check_is_read_only(tmp_path: Path, capsys: pytest.CaptureFixture[str], database: Database) -> None:
    ini = make_project(tmp_path, linear(1))
    env = ini.parent / "migrations" / "env.py"  # an env.py that writes whenever it connects
    env.write_text(env.read_text().replace("        context.configure(\n            connection=connection,",
                                           "        from sqlalchemy import text\n"
                                           "        connection.execute(text('CREATE TABLE sneaky (id int)'))\n"
                                           "        context.configure(\n            connection=connection,"))
    code, report = run(capsys, "-c", str(ini), "--scratch", "none", "--database-url", database.url)
    assert code == 2 and "read-only transaction" in report["error"]
    assert database.query("SELECT to_regclass('sneaky')") == [(None,)]


# --- safety, secrets, exit codes, formats ------------------------------------------------------------------------


def test_password_never_printed(tmp_path: Path, capsys: pytest.CaptureFixture[str], database: Database,
                                scratch_url: str) -> None:
    ini = make_project(tmp_path, [T1, Rev("aaaaaaaa0002", upgrade=['op.drop_table("nope")'])])
    env = ini.parent / "migrations" / "env.py"  # a careless env.py that prints its URL
    env.write_text(env.read_text().replace("def run_migrations_online() -> None:\n", "def run_migrations_online() "
                   "-> None:\n    print('connecting to', config.get_main_option('sqlalchemy.url'))\n"))
    stamp(database, "0123456789ab")
    junit = tmp_path / "junit.xml"
    args = ["-c", str(ini), "--scratch-url", scratch_url, "--database-url", database.url, "--junit", str(junit), "-v"]
    outputs = []
    for fmt in ("human", "json"):
        assert main([*args, "--format", fmt]) == 1
        captured = capsys.readouterr()
        outputs += [captured.out, captured.err, junit.read_text()]
    assert "connecting to postgresql+psycopg://app:***@" in "".join(outputs)
    bad_password = database.url.replace(database.password, "wrong-secret-pw")
    assert main([*args, "--database-url", bad_password]) == 2  # authentication fails: a config error
    captured = capsys.readouterr()
    outputs += [captured.out, captured.err, junit.read_text()]
    assert main(["-c", str(ini), "--database-url", "postgresql://app:wrong-secret-pw@host:notaport/db"]) == 2
    captured = capsys.readouterr()
    outputs += [captured.out, captured.err]
    for text in outputs:
        assert database.password not in text
        assert "wrong-secret-pw" not in text


def test_env_py_ignoring_the_url_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], database: Database,
                                            scratch_url: str) -> None:
    ini = make_project(tmp_path, linear(1))
    env = ini.parent / "migrations" / "env.py"  # always connects to the live database, whatever it is given
    env.write_text(env.read_text().replace('create_engine(config.get_main_option("sqlalchemy.url")',
                                           f'create_engine({database.url!r}'))
    assert main(["-c", str(ini), "--scratch-url", scratch_url, "--skip", "live"]) == 2
    assert "instead of" in capsys.readouterr().err
    assert database.query("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]


def test_usage_and_config_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-c", str(tmp_path / "missing.ini")]) == 2
    assert main(["--steps", "0"]) == 2
    assert main(["--skip", "everything"]) == 2
    assert main(["--no-such-option"]) == 2
    ini = make_project(tmp_path, linear(1))
    assert main(["-c", str(ini), "--database-url", "postgresql+psycopg://app:x@127.0.0.1:1/db"]) == 2  # unreachable
    code, report = run(capsys, "-c", str(ini), "--scratch-url", "oracle://u:s3cret-pw@localhost/x")
    assert code == 2 and report["ok"] is False and "a supported database" in report["error"]
    code, report = run(capsys, "-c", str(ini), "--scratch-url", "mysql+nodriver://u:s3cret-pw@localhost/x")
    assert code == 2 and "cannot load the driver of --scratch-url (mysql+nodriver)" in report["error"], report


def test_human_and_junit_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ini = make_project(tmp_path, [T1, Rev("bbbbbbbb0001", down_revision="aaaaaaaa0001"),
                                  Rev("cccccccc0001", down_revision="aaaaaaaa0001")])
    junit = tmp_path / "out" / "junit.xml"
    assert main(["-c", str(ini), "--junit", str(junit)]) == 1
    out = capsys.readouterr().out
    assert "FAIL  integrity" in out and "error    multiple-heads" in out and "(exit code 1)" in out
    assert "SKIP  upgrade (0.0s)" not in out and "SKIP  upgrade: no scratch database" in out
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "1"
    cases = {case.get("name"): case for case in suite.iter("testcase")}
    failure = cases["integrity"].find("failure")
    assert failure is not None and failure.get("type") == "multiple-heads"
    assert cases["upgrade"].find("skipped") is not None


# --- examples/shop --------------------------------------------------------------------------------------------


def test_shop_example(capsys: pytest.CaptureFixture[str], scratch_url: str, database: Database,
                      monkeypatch: pytest.MonkeyPatch, postgres: PostgresServer) -> None:
    monkeypatch.chdir(SHOP)
    code, report = run(capsys, "--scratch-url", scratch_url, "--database-url", database.url)
    assert status(report) == {"integrity": "passed", "lint": "failed", "upgrade": "passed", "models": "passed",
                              "roundtrip": "passed", "live": "passed"}
    # revision 4 drops orders.legacy_code on purpose: the one error, until it is allowed
    assert sorted(rules(report)) == ["behind-head", "drop-column"]
    assert of(report, "drop-column")[0]["revision"] == "382cd6ceb09e"
    assert code == 1
    code, report = run(capsys, "--scratch-url", scratch_url, "--database-url", database.url,
                       "--allow", "drop-column")
    assert code == 0
    assert scratch_databases(postgres) == []


def test_previous_release_reports_what_would_break_it_with_the_marker_that_fixes_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Expand/contract: against the previous release (a git tag of the scripts, or its models' import path), each
    new revision not marked phase = "contract" that drops or renames what it uses is an error naming the fix."""
    import subprocess
    import sys

    orders = Rev("0rders000001", upgrade=['op.create_table("orders", sa.Column("id", sa.Integer, primary_key=True), '
                                          'sa.Column("code", sa.Text), sa.Column("note", sa.Text))'])
    ini = make_project(tmp_path / "app", [orders])

    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path / "app",
                       check=True, capture_output=True)

    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "v1")
    git("tag", "v1")
    make_project(tmp_path / "app", [
        orders,
        Rev("expand000002", upgrade=['op.add_column("orders", sa.Column("ref", sa.Text))',
                                     'op.alter_column("orders", "note", new_column_name="remark")']),
        Rev("contract0003", upgrade=['op.drop_column("orders", "code")'], phase="contract"),
    ])
    code, report = run(capsys, "-c", str(ini), "--scratch", "none", "--previous", "v1")
    found = of(report, "breaks-previous-release")
    assert code == 1 and [f["revision"] for f in found] == ["expand000002"], report["findings"]
    assert "RENAME COLUMN orders.note TO remark" in found[0]["message"]
    assert 'Mark revision expand000002 phase = "contract"' in found[0]["message"]
    assert "breaks the previous release (v1)" in found[0]["message"]
    # Its models say what it uses: a release that never read orders.note is not broken by its rename.
    (tmp_path / "models_v1.py").write_text("import sqlalchemy as sa\nmetadata = sa.MetaData()\n"
                                           "sa.Table('orders', metadata, sa.Column('id', sa.Integer), "
                                           "sa.Column('code', sa.Text))\n")
    sys.path.insert(0, str(tmp_path))
    try:
        code, report = run(capsys, "-c", str(ini), "--scratch", "none", "--previous", "models_v1:metadata")
    finally:
        sys.path.remove(str(tmp_path))
    assert of(report, "breaks-previous-release") == [], report["findings"]
    # Unmarked, the drop of a column those models map breaks it.
    (tmp_path / "app" / "migrations" / "versions" / "contract0003_rev.py").write_text(
        (tmp_path / "app" / "migrations" / "versions" / "contract0003_rev.py").read_text().replace(
            "phase = 'contract'", "phase = 'expand'"))
    sys.path.insert(0, str(tmp_path))
    try:
        code, report = run(capsys, "-c", str(ini), "--scratch", "none", "--previous", "models_v1")
    finally:
        sys.path.remove(str(tmp_path))
    assert [f["revision"] for f in of(report, "breaks-previous-release")] == ["contract0003"], report["findings"]
