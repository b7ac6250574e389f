"""`alembic-operator check` on a real MariaDB: the scratch database is created on the server and dropped, the models
are compared with the schema the migrations build, the round trip runs, lint renders the revisions for MySQL and
scans them with the MySQL scanner (type changes against the scratch or the live database), and the live check
cannot write. The CLI runs in-process (`check.cli.main`), as in tests/postgres/test_check.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from alembic_operator.check.cli import main
from apps import Rev, make_project
from bed.mariadb import APP_USER, Database, MariaDBServer

CREATE = Rev("bbbbbbbb0001", upgrade=[
    'op.create_table("items", sa.Column("id", sa.Integer, primary_key=True),',
    '    sa.Column("name", sa.String(20), nullable=False), sa.Column("body", sa.Text))',
], downgrade=['op.drop_table("items")'])
WIDEN = Rev("bbbbbbbb0002", upgrade=[  # clean: a widening within the length byte is a note
    'op.alter_column("items", "name", type_=sa.String(40), existing_type=sa.String(20), nullable=False)',
], downgrade=['op.alter_column("items", "name", type_=sa.String(20), existing_type=sa.String(40), nullable=False)'])
FORGOT_MODEL = Rev("bbbbbbbb0003", upgrade=[  # the models never got this column
    'op.add_column("items", sa.Column("price", sa.Numeric(10, 2)))',
], downgrade=['op.drop_column("items", "price")'])
BAD_DOWNGRADE = Rev("bbbbbbbb0004", upgrade=[  # its downgrade forgets the column
    'op.add_column("items", sa.Column("sku", sa.String(12)))',
    'op.create_index("ix_items_sku", "items", ["sku"])',
], downgrade=['op.drop_index("ix_items_sku", table_name="items")'])
NARROW = Rev("bbbbbbbb0005", upgrade=[  # lint: destructive against the column as the scratch database has it
    'op.alter_column("items", "name", type_=sa.String(10), nullable=False)',
], downgrade=['op.alter_column("items", "name", type_=sa.String(40), nullable=False)'])

MODELS = """
sa.Table("items", metadata, sa.Column("id", sa.Integer, primary_key=True),
         sa.Column("name", sa.String(40), nullable=False), sa.Column("body", sa.Text),
         sa.Column("sku", sa.String(12)), sa.Index("ix_items_sku", "sku"))
"""


@pytest.fixture
def scratch_url(mariadb: MariaDBServer) -> str:
    """The server, no database: the application user may create and drop alembic_check_* databases."""
    with mariadb.admin() as conn, conn.cursor() as cur:
        cur.execute(f"GRANT ALL PRIVILEGES ON `alembic\\_check\\_%`.* TO '{APP_USER}'@'%'")
    return f"mysql+pymysql://{APP_USER}:{mariadb.password}@127.0.0.1:{mariadb.port}/"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code = main([*argv, "--format", "json"])
    out = capsys.readouterr()
    return code, json.loads(out.out)


def of(report: dict[str, Any], rule: str) -> list[dict[str, Any]]:
    return [f for f in report["findings"] if f["rule"] == rule]


def status(report: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["status"] for c in report["checks"]}


def project(path: Path, revs: list[Rev], models: str | None = MODELS) -> Path:
    return make_project(path, revs, models=models)


def scratch_databases(mariadb: MariaDBServer) -> list[str]:
    with mariadb.admin() as conn, conn.cursor() as cur:
        cur.execute("SHOW DATABASES LIKE 'alembic\\_check\\_%'")
        return [str(r[0]) for r in cur.fetchall()]


def test_clean_app_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str], scratch_url: str,
                          mariadb: MariaDBServer) -> None:
    models = MODELS.replace(',\n         sa.Column("sku", sa.String(12)), sa.Index("ix_items_sku", "sku"))', ")")
    ini = project(tmp_path, [CREATE, WIDEN], models)
    code, report = run(capsys, "-c", str(ini), "--scratch-url", scratch_url)
    assert code == 0, report
    assert status(report) == {"integrity": "passed", "lint": "passed", "upgrade": "passed", "models": "passed",
                              "roundtrip": "passed", "live": "skipped"}
    upgrade = next(c for c in report["checks"] if c["name"] == "upgrade")
    assert upgrade["reason"] == "base -> head on an empty mysql database"
    (widening,) = of(report, "alter-column-type-widening")  # classified against the scratch database's column
    assert widening["severity"] == "info" and "from VARCHAR(20)" in widening["message"], widening
    assert scratch_databases(mariadb) == []  # created and dropped


def test_a_forgotten_model_change_and_a_bad_downgrade(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      scratch_url: str, mariadb: MariaDBServer) -> None:
    ini = project(tmp_path, [CREATE, WIDEN, FORGOT_MODEL, BAD_DOWNGRADE])
    code, report = run(capsys, "-c", str(ini), "--scratch-url", scratch_url, "--steps", "1")
    assert code == 1
    (forgot,) = of(report, "models-without-migration")
    assert forgot["message"].startswith("column items.price (DECIMAL(10, 2), NULL): in the schema the migrations "
                                        "build, not in the models"), forgot
    down, up = of(report, "roundtrip-mismatch")
    assert "downgrading from head to bbbbbbbb0003" in down["message"]
    assert any("column sku" in d for d in down["details"]), down
    assert up["revision"] == "bbbbbbbb0004" and "Duplicate column name 'sku'" in up["message"], up
    assert scratch_databases(mariadb) == []


def test_lint_reads_mysql(tmp_path: Path, capsys: pytest.CaptureFixture[str], scratch_url: str) -> None:
    """Rendered for MySQL and scanned by the MySQL scanner: a narrowing against the scratch database's column is
    destructive, and its rule and safer pattern are MySQL's."""
    models = MODELS.replace("sa.String(40)", "sa.String(10)")
    ini = project(tmp_path, [CREATE, WIDEN, FORGOT_MODEL, NARROW], models.replace(
        'sa.Column("sku", sa.String(12)), sa.Index("ix_items_sku", "sku")',
        'sa.Column("price", sa.Numeric(10, 2))'))
    code, report = run(capsys, "-c", str(ini), "--scratch-url", scratch_url)
    assert code == 1
    (narrow,) = of(report, "alter-column-type")
    assert narrow["revision"] == "bbbbbbbb0005" and narrow["severity"] == "error"
    assert "MODIFY items.name VARCHAR(10) (from VARCHAR(40): a narrowing)" in narrow["message"], narrow
    assert any(d.startswith("SQL: ALTER TABLE items MODIFY name VARCHAR(10) NOT NULL") for d in narrow["details"])
    assert status(report)["models"] == status(report)["roundtrip"] == "passed"


def test_live_database_lint_and_read_only(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          mariadb_database: Database) -> None:
    """Pending revisions are scanned against the live column types, read only; an env.py that writes when it
    connects is refused by the read-only session, and nothing is written."""
    ini = project(tmp_path, [CREATE, WIDEN, NARROW])
    mariadb_database.query("CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(40) NOT NULL, body TEXT)")
    mariadb_database.query("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)")
    mariadb_database.query("INSERT INTO alembic_version VALUES ('bbbbbbbb0002')")
    code, report = run(capsys, "-c", str(ini), "--scratch", "none", "--database-url", mariadb_database.url)
    assert code == 1, report
    assert [f["rule"] for f in report["findings"] if f["check"] == "lint"] == ["alter-column-type"]
    assert "from VARCHAR(40)" in of(report, "alter-column-type")[0]["message"]
    assert of(report, "behind-head")

    env = ini.parent / "migrations" / "env.py"
    env.write_text(env.read_text().replace("        context.configure(\n            connection=connection,",
                                           "        connection.exec_driver_sql('CREATE TABLE sneaky (id int)')\n"
                                           "        context.configure(\n            connection=connection,"))
    code, report = run(capsys, "-c", str(ini), "--scratch", "none", "--database-url", mariadb_database.url)
    assert code == 2 and "READ ONLY transaction" in report["error"], report
    assert ("sneaky",) not in mariadb_database.query("SHOW TABLES")
    assert mariadb_database.password not in json.dumps(report)


def test_scratch_on_an_unsupported_server_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ini = project(tmp_path, [CREATE])
    code, report = run(capsys, "-c", str(ini), "--scratch-url", "oracle://u:s3cret-pw@db/x")
    assert code == 2 and "--scratch-url must name a server of a supported database" in report["error"], report


def test_scratch_database_is_dropped_when_the_upgrade_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          scratch_url: str, mariadb: MariaDBServer) -> None:
    ini = project(tmp_path, [CREATE, Rev("bbbbbbbb0009", upgrade=['op.drop_table("nope")'])])
    code, report = run(capsys, "-c", str(ini), "--scratch-url", scratch_url)
    assert code == 1
    (failed,) = of(report, "upgrade-failed")
    assert failed["revision"] == "bbbbbbbb0009" and "nope" in failed["message"]
    assert scratch_databases(mariadb) == []


def test_type_change_classified_against_the_scratch_database(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            scratch_url: str) -> None:
    """A table whose column types the SQL does not spell (CREATE TABLE ... SELECT): the upgrade stops just before
    the revision that changes one and reads it from the scratch database, so a widening is a note, not an
    unknown type (destructive)."""
    ini = project(tmp_path, [
        Rev("cccccccc0001", upgrade=["op.execute(\"CREATE TABLE tags SELECT CAST('x' AS CHAR(40)) AS name\")"],
            downgrade=['op.drop_table("tags")']),
        Rev("cccccccc0002", upgrade=['op.alter_column("tags", "name", type_=sa.String(60))'],
            downgrade=['op.alter_column("tags", "name", type_=sa.String(40))']),
    ], models=None)
    code, report = run(capsys, "-c", str(ini), "--scratch-url", scratch_url, "--skip", "roundtrip")
    lint = [f for f in report["findings"] if f["check"] == "lint"]
    assert [f["rule"] for f in lint] == ["alter-column-type-widening"], lint
    assert "from VARCHAR(40)" in lint[0]["message"]
    assert code == 0, report
