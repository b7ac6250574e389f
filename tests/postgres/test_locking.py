"""Locking and type-change findings on a real PostgreSQL, the way the plan Job makes them (the runner renders each
revision offline in the app's project, `job scan` reads the live column types and scans), and CREATE INDEX
CONCURRENTLY in Alembic's autocommit_block() through the runner: it migrates, and when a later revision fails the
database is where the runner says (the index revision committed, so a downgrade drops the index)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_runner import Runner, version

from alembic_operator import cli, jobtools, sqlscan
from apps import Rev, make_project
from bed.postgres import Database

pytestmark = pytest.mark.postgres


ORDERS = Rev("c0000000000a", upgrade=[
    'op.create_table("orders", sa.Column("id", sa.Integer, primary_key=True), sa.Column("code", sa.String(20)))',
    'op.execute("INSERT INTO orders (code) SELECT \'c\' || g FROM generate_series(1, 500) g")',
], downgrade=['op.drop_table("orders")'])
INDEX = Rev("c0000000000b", upgrade=[
    "with op.get_context().autocommit_block():",
    '    op.create_index("ix_orders_code", "orders", ["code"], postgresql_concurrently=True)',
], downgrade=[
    "with op.get_context().autocommit_block():",
    '    op.drop_index("ix_orders_code", table_name="orders", postgresql_concurrently=True)',
])
FAILS = Rev("c0000000000c", upgrade=['op.add_column("orders", sa.Column("n", sa.Integer))',
                                     'op.execute("SELECT 1 / 0")'],
            downgrade=['op.drop_column("orders", "n")'])


def indexes(database: Database) -> set[str]:
    return {str(r[0]) for r in database.query("SELECT indexname FROM pg_indexes WHERE tablename = 'orders'")}


@pytest.fixture
def plan(runner: Runner, database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
         capfd: pytest.CaptureFixture[str]) -> Any:
    """plan(target, live=True): the plan Job's two containers: `runner plan` renders, `job scan` scans (with the
    database URL in its environment, as the scan container has it, unless live is False). Returns the scan's
    result and its log."""

    def make(target: str, live: bool = True) -> tuple[dict[str, Any], str]:
        out = tmp_path / f"plan-{target}-{live}"
        rendered = runner("plan", "--target", target, "--out", str(out))
        assert rendered.rc == 0, rendered.stderr
        if live:
            monkeypatch.setenv(jobtools.URL_ENV, database.url)
        else:
            monkeypatch.delenv(jobtools.URL_ENV, raising=False)
        result_file = tmp_path / "scan.json"
        capfd.readouterr()
        cli.main(["job", "scan", "--plan-dir", str(out), "--result-file", str(result_file)])
        _out, err = capfd.readouterr()
        text = result_file.read_text()
        assert database.password not in text + err and len(text.encode()) < 3500
        return json.loads(text), err

    return make


# --- CREATE INDEX CONCURRENTLY ---------------------------------------------------------------------------------


@pytest.mark.parametrize("per_migration", [False, True])
def test_create_index_concurrently_migrates_and_rolls_back(runner: Runner, app: Path, database: Database, plan: Any,
                                                           per_migration: bool) -> None:
    make_project(app, [ORDERS, INDEX, FAILS], transaction_per_migration=per_migration)
    assert runner("upgrade", "--from", "base", "--to", ORDERS.id).rc == 0

    result, log = plan(FAILS.id)
    assert result["ok"] and result["revisions"] == [INDEX.id, FAILS.id]
    assert result["destructive"] == [] and result["lockingCount"] == 0, result
    assert "warnings" not in result or result["warnings"] == []
    assert "CREATE INDEX CONCURRENTLY" not in log  # rendered, scanned, and no finding for it

    # The failing revision after it: whatever env.py configures, each revision ran in its own transaction, so
    # the runner's report is the truth: the index revision committed (with its index), the failing one did not.
    r = runner("upgrade", "--from", ORDERS.id, "--to", FAILS.id)
    assert r.rc == 1 and r.result["reason"] == "MigrationFailed"
    assert r.result["applied"] == [INDEX.id] and r.result["failedRevision"] == FAILS.id
    assert "use autocommit_block(): each revision runs in its own transaction" in r.stderr
    assert version(database) == INDEX.id and indexes(database) == {"orders_pkey", "ix_orders_code"}
    # What the operator does next (nothing of it destroyed data): downgrade what the run committed.
    d = runner("downgrade", "--from", INDEX.id, "--to", ORDERS.id)
    assert d.rc == 0, d.stderr
    assert version(database) == ORDERS.id and indexes(database) == {"orders_pkey"}
    # and the fixed image migrates again from there
    assert runner("upgrade", "--from", ORDERS.id, "--to", INDEX.id).rc == 0
    assert indexes(database) == {"orders_pkey", "ix_orders_code"}


# --- type changes against the live database --------------------------------------------------------------------

TABLE = Rev("d0000000000a", upgrade=[
    'op.create_table("orders", sa.Column("id", sa.Integer, primary_key=True), sa.Column("code", sa.String(20)), '
    'sa.Column("note", sa.String(250)), sa.Column("title", sa.String(100)), sa.Column("body", sa.String(80)), '
    'sa.Column("amount", sa.Integer))',
], downgrade=['op.drop_table("orders")'])
TYPES = Rev("d0000000000b", upgrade=[
    'op.alter_column("orders", "note", type_=sa.String(5000))',
    'op.alter_column("orders", "body", type_=sa.Text())',
    'op.alter_column("orders", "title", type_=sa.String(100))',
    'op.alter_column("orders", "amount", type_=sa.BigInteger())',
    'op.alter_column("orders", "code", type_=sa.String(9))',
], downgrade=[
    'op.alter_column("orders", "code", type_=sa.String(20))',
    'op.alter_column("orders", "amount", type_=sa.Integer())',
    'op.alter_column("orders", "title", type_=sa.String(100))',
    'op.alter_column("orders", "body", type_=sa.String(80))',
    'op.alter_column("orders", "note", type_=sa.String(250))',
])


def test_the_plan_classifies_type_changes_against_the_live_columns(runner: Runner, app: Path, plan: Any) -> None:
    make_project(app, [TABLE, TYPES])
    assert runner("upgrade", "--from", "base", "--to", TABLE.id).rc == 0
    result, log = plan(TYPES.id)
    rev = TYPES.id
    assert result["destructive"] == [
        f"ALTER COLUMN orders.code TYPE varchar(9) (from varchar(20): a narrowing or lossy cast) (revision {rev})"]
    assert [f["operation"] for f in result["locking"]] == [
        f"ALTER COLUMN orders.amount TYPE bigint (from integer: every value is kept, but the table is rewritten) "
        f"(revision {rev})"]
    assert result["locking"][0]["safely"] == sqlscan.RULES["alter-column-type-rewrite"].safely
    assert result["notes"] == [
        f"ALTER COLUMN orders.note TYPE varchar(5000) (from varchar(250): a widening PostgreSQL does without a "
        f"rewrite) (revision {rev})",
        f"ALTER COLUMN orders.body TYPE text (from varchar(80): a widening PostgreSQL does without a rewrite) "
        f"(revision {rev})",
        f"ALTER COLUMN orders.title TYPE varchar(100) (from varchar(100): the same type: nothing changes) "
        f"(revision {rev})",
    ]
    assert "read the current types of 6 column(s) of 1 table(s)" in log
    assert result["destructiveRevisions"] == [rev]
    # Without the live database (no URL in the scan container) nothing is known of columns the plan did not
    # create: every type change is destructive, as before.
    blind, _ = plan(TYPES.id, live=False)
    assert len(blind["destructive"]) == 5 and all("the current type is not known" in d for d in blind["destructive"])


def test_columns_created_earlier_in_the_plan_are_followed_through_its_sql(runner: Runner, app: Path,
                                                                           plan: Any) -> None:
    make_project(app, [TABLE, TYPES])
    result, _ = plan(TYPES.id)  # from base: the plan creates orders itself
    assert [d.split(" (revision")[0] for d in result["destructive"]] == [
        "ALTER COLUMN orders.code TYPE varchar(9) (from varchar(20): a narrowing or lossy cast)"]
    assert result["lockingCount"] == 0  # a table the plan created holds no rows yet: no lock to worry about
    assert len(result["notes"]) == 3


# --- every locking rule, from a revision written to trigger it --------------------------------------------------

SETUP = Rev("e0000000000a", upgrade=[
    'op.create_table("customers", sa.Column("id", sa.Integer, primary_key=True))',
    'op.create_table("orders", sa.Column("id", sa.Integer, primary_key=True), sa.Column("code", sa.String(20)), '
    'sa.Column("note", sa.Text), sa.Column("title", sa.Text), sa.Column("amount", sa.Integer), '
    'sa.Column("cid", sa.Integer))',
    'op.create_index("ix_old", "orders", ["title"])',
    'op.execute("CREATE MATERIALIZED VIEW totals AS SELECT count(*) AS n FROM orders")',
], downgrade=['op.execute("DROP MATERIALIZED VIEW totals")', 'op.drop_table("orders")',
              'op.drop_table("customers")'])
# One operation per locking rule (and the note rule VALIDATE CONSTRAINT), on tables that already exist.
LOCKS = Rev("e0000000000b", upgrade=[
    'op.create_index("ix_code", "orders", ["code"])',                                   # create-index-not-concurrently
    'op.drop_index("ix_old", table_name="orders")',                                     # drop-index
    'op.add_column("orders", sa.Column("r", sa.Float, server_default=sa.text("random()")))',  # add-column-volatile-...
    'op.alter_column("orders", "note", nullable=False, existing_type=sa.Text())',       # set-not-null
    'op.alter_column("orders", "amount", type_=sa.BigInteger())',                       # alter-column-type-rewrite
    'op.create_foreign_key("fk_customer", "orders", "customers", ["cid"], ["id"])',     # add-foreign-key
    'op.create_check_constraint("ck_amount", "orders", "amount >= 0")',                 # add-check-constraint
    'op.create_unique_constraint("uq_code", "orders", ["code"])',                       # add-unique-constraint
    'op.execute("REFRESH MATERIALIZED VIEW totals")',                                   # refresh-materialized-view
    'op.execute("CLUSTER orders USING orders_pkey")',                                   # table-rewrite
    'op.execute("LOCK TABLE customers IN ACCESS EXCLUSIVE MODE")',                      # exclusive-lock
    'op.alter_column("orders", "title", new_column_name="heading")',                    # rename-column
    'op.rename_table("customers", "clients")',                                          # rename-table
    'op.execute("ALTER TABLE orders VALIDATE CONSTRAINT ck_amount")',                   # validate-constraint (note)
], downgrade=['pass'])
LOCKING_RULES = sorted(name for name, rule in sqlscan.RULES.items() if rule.severity == "locking")


def test_the_plan_reports_every_locking_rule(runner: Runner, app: Path, plan: Any) -> None:
    make_project(app, [SETUP, LOCKS])
    assert runner("upgrade", "--from", "base", "--to", SETUP.id).rc == 0
    result, log = plan(LOCKS.id)
    found = sorted({line.rsplit("[", 1)[1].rstrip("]") for line in log.splitlines() if line.startswith("locking: ")})
    assert found == LOCKING_RULES
    assert result["lockingCount"] == len(LOCKING_RULES) and result["destructive"] == []
    assert len(result["locking"]) == 5 and all(f["safely"] for f in result["locking"])
    assert "notes" not in result or result["notes"] == []  # VALIDATE on an empty table: not worth a note


# --- the same in `alembic-operator check` -----------------------------------------------------------------------


def check(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    from alembic_operator.check.cli import main

    code = main([*argv, "--format", "json"])
    return code, json.loads(capsys.readouterr().out)


@pytest.fixture
def scratch_url(database: Database) -> str:
    """The test database's server: check creates (and drops) its scratch database there."""
    return database.url


def test_check_reports_every_locking_rule(tmp_path: Path, capsys: pytest.CaptureFixture[str], runner: Runner,
                                          database: Database, scratch_url: str) -> None:
    """The live database is at SETUP (its tables exist there): lint covers LOCKS, which the scratch database also
    upgrades to (every statement of it runs on PostgreSQL)."""
    ini = make_project(tmp_path / "app", [SETUP, LOCKS])
    runner.cwd = tmp_path / "app"
    assert runner("upgrade", "--from", "base", "--to", SETUP.id).rc == 0
    argv = ("-c", str(ini), "--scratch-url", scratch_url, "--database-url", database.url, "--skip", "roundtrip")
    code, report = check(capsys, *argv)
    assert {c["name"]: c["status"] for c in report["checks"]}["upgrade"] == "passed", report
    lint = [f for f in report["findings"] if f["check"] == "lint"]
    locking = {f["rule"] for f in lint if f["severity"] == "warning" and f["revision"] == LOCKS.id}
    assert sorted(locking) == LOCKING_RULES
    assert all(any(d.startswith("safely: ") for d in f["details"]) for f in lint)
    assert [f["rule"] for f in lint if f["severity"] == "info"] == []  # VALIDATE on a live table known to be small
    assert code == 0  # warnings and notes
    assert check(capsys, *argv, "--fail-on", "warning")[0] == 1


def test_check_without_a_live_database_takes_each_revision_as_deployed_alone(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """From base, SETUP's tables exist (with rows) by the time LOCKS is deployed: every locking rule is reported."""
    ini = make_project(tmp_path, [SETUP, LOCKS])
    _code, report = check(capsys, "-c", str(ini), "--scratch", "none")
    lint = [f for f in report["findings"] if f["check"] == "lint"]
    assert sorted({f["rule"] for f in lint if f["severity"] == "warning"}) == LOCKING_RULES
    assert {f["revision"] for f in lint} == {LOCKS.id}  # SETUP creates its tables: nothing to lock yet


# A table whose column types the SQL does not spell (CREATE TABLE AS): only a database can tell them.
OPAQUE = Rev("f0000000000a", upgrade=[
    "op.execute(\"CREATE TABLE orders AS SELECT 'x'::varchar(20) AS code, 'y'::varchar(250) AS note, "
    "1::integer AS amount, 'z'::varchar(100) AS title\")"], downgrade=['op.drop_table("orders")'])
CHANGES = Rev("f0000000000b", upgrade=[
    'op.alter_column("orders", "note", type_=sa.Text())',
    'op.alter_column("orders", "title", type_=sa.String(100))',
    'op.alter_column("orders", "amount", type_=sa.BigInteger())',
    'op.alter_column("orders", "code", type_=sa.String(9))',
], downgrade=[
    'op.alter_column("orders", "code", type_=sa.String(20))',
    'op.alter_column("orders", "amount", type_=sa.Integer())',
    'op.alter_column("orders", "title", type_=sa.String(100))',
    'op.alter_column("orders", "note", type_=sa.String(250))',
])
CLASSIFIED = [
    ("alter-column-type-widening", "info",
     "ALTER COLUMN orders.note TYPE text (from varchar(250): a widening PostgreSQL does without a rewrite)"),
    ("alter-column-type-widening", "info",
     "ALTER COLUMN orders.title TYPE varchar(100) (from varchar(100): the same type: nothing changes)"),
    ("alter-column-type-rewrite", "warning",
     "ALTER COLUMN orders.amount TYPE bigint (from integer: every value is kept, but the table is rewritten)"),
    ("alter-column-type", "error",
     "ALTER COLUMN orders.code TYPE varchar(9) (from varchar(20): a narrowing or lossy cast)"),
]


def _type_findings(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(f["rule"], f["severity"], f["message"].removesuffix(": " + sqlscan.RULES[f["rule"]].why))
            for f in report["findings"] if f["check"] == "lint" and f["rule"].startswith("alter-column-type")]


def test_check_classifies_type_changes_on_the_scratch_database(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                               scratch_url: str) -> None:
    ini = make_project(tmp_path, [OPAQUE, CHANGES])
    code, report = check(capsys, "-c", str(ini), "--scratch-url", scratch_url)
    # Read on the scratch database just before f0000000000b (deployed on its own, after f0000000000a).
    assert _type_findings(report) == CLASSIFIED
    assert code == 1  # the narrowing
    # Without a scratch database the SQL alone cannot tell: every change is destructive, and says why.
    code, report = check(capsys, "-c", str(ini), "--scratch", "none")
    assert {(rule, severity) for rule, severity, _ in _type_findings(report)} == {("alter-column-type", "error")}
    assert all("the current type is not known" in message for _, _, message in _type_findings(report))


def test_check_classifies_pending_type_changes_against_the_live_database(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], runner: Runner, database: Database) -> None:
    ini = make_project(tmp_path / "app", [OPAQUE, CHANGES])
    runner.cwd = tmp_path / "app"
    assert runner("upgrade", "--from", "base", "--to", OPAQUE.id).rc == 0
    code, report = check(capsys, "-c", str(ini), "--scratch", "none", "--database-url", database.url)
    assert _type_findings(report) == CLASSIFIED and code == 1
    assert database.query("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attname = 'code' "
                          "AND attrelid = 'orders'::regclass") == [("character varying(20)",)]  # read, not changed
