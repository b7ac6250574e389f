"""The MySQL scanner (no server): every rule on SQL that Alembic rendered offline for the MySQL dialect (the
operations a migration writes, through MigrationContext in as_sql mode), and what must not be flagged."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext

from alembic_operator import engines, jobtools, sqlscan, sqlscan_mysql
from alembic_operator.check import lint
from alembic_operator.sqlscan import Catalog
from alembic_operator.sqlscan_mysql import MyType, classify, parse_type, scan

Op = Callable[[Operations], Any]


def render(*ops: Op) -> str:
    """What `alembic upgrade --sql` prints for these operations on MySQL."""
    buf = io.StringIO()
    ctx = MigrationContext.configure(dialect_name="mysql", opts={"as_sql": True, "output_buffer": buf})
    operations = Operations(ctx)
    for op in ops:
        op(operations)
    return buf.getvalue()


LIVE = Catalog(columns={
    ("orders", "code"): "varchar(20) CHARACTER SET utf8mb4",
    ("orders", "note"): "varchar(40) CHARACTER SET utf8mb4 NOT NULL",
    ("orders", "tag"): "varchar(50) CHARACTER SET utf8mb4",  # 200 bytes: one length byte
    ("orders", "qty"): "int(11)",
    ("orders", "price"): "decimal(10,2) NOT NULL",
    ("orders", "state"): "enum('new','paid') NOT NULL",
    ("orders", "body"): "text CHARACTER SET utf8mb4",
})


def rules(sql: str, catalog: Catalog | None = LIVE) -> list[tuple[str, str]]:
    return [(f.rule, f.severity) for f in scan([("r1", sql)], catalog)]


CASES: list[tuple[str, Op, str, str]] = [
    ("drop table", lambda op: op.drop_table("orders"), "drop-table", "destructive"),
    ("drop column", lambda op: op.drop_column("orders", "legacy"), "drop-column", "destructive"),
    ("truncate", lambda op: op.execute("TRUNCATE TABLE orders"), "truncate", "destructive"),
    ("delete all", lambda op: op.execute("DELETE FROM orders"), "delete-without-where", "destructive"),
    ("update all", lambda op: op.execute("UPDATE orders SET qty = 0"), "update-without-where", "destructive"),
    ("drop database", lambda op: op.execute("DROP DATABASE shop"), "drop-database", "destructive"),
    ("narrowing", lambda op: op.alter_column("orders", "code", type_=sa.String(9), existing_type=sa.String(20)),
     "alter-column-type", "destructive"),
    ("int to varchar narrow", lambda op: op.alter_column("orders", "qty", type_=sa.String(5)),
     "alter-column-type", "destructive"),
    ("enum member removed", lambda op: op.alter_column("orders", "state", type_=sa.Enum("new"), nullable=False),
     "alter-column-type", "destructive"),
    ("convert to latin1", lambda op: op.execute("ALTER TABLE orders CONVERT TO CHARACTER SET latin1"),
     "convert-charset-lossy", "destructive"),
    ("int to bigint", lambda op: op.alter_column("orders", "qty", type_=sa.BigInteger()),
     "alter-column-type-rewrite", "locking"),
    ("varchar to text", lambda op: op.alter_column("orders", "code", type_=sa.Text()),
     "alter-column-type-rewrite", "locking"),
    ("varchar crossing 255 bytes", lambda op: op.alter_column("orders", "tag", type_=sa.String(200)),
     "alter-column-type-rewrite", "locking"),
    ("decimal widened", lambda op: op.alter_column("orders", "price", type_=sa.Numeric(14, 2), nullable=False),
     "alter-column-type-rewrite", "locking"),
    ("algorithm copy", lambda op: op.execute("ALTER TABLE orders ADD COLUMN y INT, ALGORITHM=COPY"),
     "algorithm-copy", "locking"),
    ("lock exclusive", lambda op: op.execute("ALTER TABLE orders ADD INDEX ix_y (qty), LOCK=EXCLUSIVE"),
     "exclusive-lock", "locking"),
    ("lock shared", lambda op: op.execute("ALTER TABLE orders ADD INDEX ix_y (qty), LOCK=SHARED"),
     "exclusive-lock", "locking"),
    ("lock tables", lambda op: op.execute("LOCK TABLES orders WRITE"), "exclusive-lock", "locking"),
    ("add auto_increment column", lambda op: op.add_column(  # MySQL renders AUTO_INCREMENT for a key column
        "orders", sa.Column("seq", sa.Integer, autoincrement=True, primary_key=True)),
     "add-column-not-instant", "locking"),
    ("add stored generated column", lambda op: op.add_column(
        "orders", sa.Column("total", sa.Integer, sa.Computed("qty * 2", persisted=True))),
     "add-column-not-instant", "locking"),
    ("add primary key", lambda op: op.create_primary_key("pk_orders", "orders", ["id"]), "add-primary-key",
     "locking"),
    ("add foreign key", lambda op: op.create_foreign_key("fk_user", "orders", "users", ["user_id"], ["id"]),
     "add-foreign-key", "locking"),
    ("add check", lambda op: op.create_check_constraint("ck_qty", "orders", "qty > 0"), "add-check-constraint",
     "locking"),
    ("fulltext index", lambda op: op.create_index("ft_note", "orders", ["note"], mysql_prefix="FULLTEXT"),
     "fulltext-index", "locking"),
    ("spatial index", lambda op: op.create_index("sp_geo", "orders", ["geo"], mysql_prefix="SPATIAL"),
     "fulltext-index", "locking"),
    ("convert to utf8mb4", lambda op: op.execute("ALTER TABLE orders CONVERT TO CHARACTER SET utf8mb4"),
     "convert-charset", "locking"),
    ("rename column", lambda op: op.alter_column("orders", "code", new_column_name="sku",
                                                 existing_type=sa.String(20)), "rename-column", "locking"),
    ("rename column (8.0 syntax)", lambda op: op.execute("ALTER TABLE orders RENAME COLUMN code TO sku"),
     "rename-column", "locking"),
    ("rename table", lambda op: op.rename_table("orders", "purchases"), "rename-table", "locking"),
    ("rename table statement", lambda op: op.execute("RENAME TABLE orders TO purchases"), "rename-table",
     "locking"),
    ("set not null", lambda op: op.alter_column("orders", "code", nullable=False, existing_type=sa.String(20)),
     "set-not-null", "warning"),
    ("not null without default", lambda op: op.add_column("orders", sa.Column("n", sa.Integer, nullable=False)),
     "add-column-not-null-without-default", "warning"),
    ("optimize", lambda op: op.execute("OPTIMIZE TABLE orders"), "table-rebuild", "warning"),
    ("force", lambda op: op.execute("ALTER TABLE orders FORCE"), "table-rebuild", "warning"),
    ("delete some", lambda op: op.execute("DELETE FROM orders WHERE qty = 0"), "delete-rows", "warning"),
    ("drop view", lambda op: op.execute("DROP VIEW order_totals"), "drop-view", "warning"),
    ("varchar widened in its length byte", lambda op: op.alter_column("orders", "code", type_=sa.String(60)),
     "alter-column-type-widening", "note"),
    ("enum member appended", lambda op: op.alter_column("orders", "state", type_=sa.Enum("new", "paid", "sent"),
                                                        nullable=False), "alter-column-type-widening", "note"),
    ("same type", lambda op: op.alter_column("orders", "note", type_=sa.String(40), nullable=False),
     "alter-column-type-widening", "note"),
    ("unparsed", lambda op: op.execute("ALTER TABLE orders EXCHANGE PARTITION p0 WITH TABLE archive"),
     "unparsed-sql", "note"),
]


@pytest.mark.parametrize(("title", "op", "rule", "severity"), CASES, ids=[c[0] for c in CASES])
def test_rule(title: str, op: Op, rule: str, severity: str) -> None:
    found = rules(render(op))
    assert (rule, severity) in found, f"{title}: {found}"
    assert sqlscan_mysql.RULES[rule].severity == severity


NOT_FLAGGED: list[tuple[str, Op]] = [
    ("create table", lambda op: op.create_table("t", sa.Column("id", sa.Integer, primary_key=True),
                                                sa.Column("n", sa.String(5)))),
    ("create index", lambda op: op.create_index("ix_code", "orders", ["code"])),
    ("create unique index", lambda op: op.create_index("ux_code", "orders", ["code"], unique=True)),
    ("unique constraint", lambda op: op.create_unique_constraint("uq_code", "orders", ["code"])),
    ("drop index", lambda op: op.drop_index("ix_code", "orders")),
    ("add nullable column", lambda op: op.add_column("orders", sa.Column("x", sa.Integer, nullable=True))),
    ("add column with default", lambda op: op.add_column(
        "orders", sa.Column("x", sa.Integer, nullable=False, server_default="0"))),
    ("drop foreign key", lambda op: op.drop_constraint("fk_user", "orders", type_="foreignkey")),
    ("drop check", lambda op: op.drop_constraint("ck_qty", "orders", type_="check")),
    ("set default", lambda op: op.alter_column("orders", "code", server_default="x", existing_type=sa.String(20))),
    ("online clauses", lambda op: op.execute("ALTER TABLE orders ADD COLUMN y INT, ALGORITHM=INSTANT, LOCK=NONE")),
    ("update with where", lambda op: op.execute("UPDATE orders SET qty = 1 WHERE qty IS NULL")),
    ("insert", lambda op: op.execute("INSERT INTO orders (code) VALUES ('a;b')")),
    ("set session", lambda op: op.execute("SET SESSION lock_wait_timeout = 3")),
    ("lock tables read local", lambda op: op.execute("LOCK TABLES orders READ LOCAL")),
]


@pytest.mark.parametrize(("title", "op"), NOT_FLAGGED, ids=[c[0] for c in NOT_FLAGGED])
def test_not_flagged(title: str, op: Op) -> None:
    assert rules(render(op)) == [], title


def test_created_in_the_same_plan_is_exempt_but_destructive_still_fires() -> None:
    created = render(lambda op: op.create_table("t", sa.Column("id", sa.Integer, primary_key=True),
                                                sa.Column("n", sa.String(20)), sa.Column("body", sa.Text)))
    later = render(
        lambda op: op.create_foreign_key("fk", "t", "users", ["id"], ["id"]),
        lambda op: op.create_index("ft", "t", ["body"], mysql_prefix="FULLTEXT"),
        lambda op: op.alter_column("t", "n", type_=sa.Text()),
        lambda op: op.rename_table("t", "t2"),
        lambda op: op.alter_column("t2", "n", type_=sa.String(5)),
        lambda op: op.drop_column("t2", "body"),
    )
    found = [(f.revision, f.rule) for f in scan([("a", created), ("b", later)], Catalog())]
    assert found == [("b", "alter-column-type"), ("b", "drop-column")]


def test_alembic_bookkeeping_and_revision_markers() -> None:
    """A whole `alembic upgrade --sql` text for MySQL: the version table's statements are not the migration, and
    findings are labelled by the `-- Running upgrade` comments when no revision is given."""
    sql = (
        "CREATE TABLE alembic_version (\n    version_num VARCHAR(32) NOT NULL, \n    CONSTRAINT alembic_version_pkc "
        "PRIMARY KEY (version_num)\n);\n\n-- Running upgrade  -> a1\n\nCREATE TABLE t (id INTEGER NOT NULL);\n\n"
        "INSERT INTO alembic_version (version_num) VALUES ('a1');\n\n-- Running upgrade a1 -> b2\n\n"
        "ALTER TABLE orders DROP COLUMN legacy;\n\n"
        "UPDATE alembic_version SET version_num='b2' WHERE alembic_version.version_num = 'a1';\n\n")
    found = scan([(None, sql)], LIVE)
    assert [(f.revision, f.rule) for f in found] == [("b2", "drop-column")]
    assert found[0].describe() == "DROP COLUMN orders.legacy (revision b2)"
    assert found[0].statement == "ALTER TABLE orders DROP COLUMN legacy"
    assert found[0].engine == "mysql"


def test_a_version_table_of_another_name_is_bookkeeping_too() -> None:
    sql = ("INSERT INTO my_versions (version_num) VALUES ('a1');\n\n"
           "UPDATE my_versions SET version_num='b2' WHERE my_versions.version_num = 'a1';\n\n"
           "DELETE FROM my_versions WHERE my_versions.version_num = 'b2';\n\n"
           "DELETE FROM orders WHERE orders.version_num = 'b2' AND qty = 0;\n\n")
    assert rules(sql) == [("delete-rows", "warning")]


def test_unknown_current_type_is_destructive_and_says_so() -> None:
    [finding] = scan([("r", render(lambda op: op.alter_column("orders", "code", type_=sa.String(60))))], None)
    assert finding.rule == "alter-column-type"
    assert "the current type is not known" in finding.operation


def test_type_followed_through_the_plan() -> None:
    sql = render(lambda op: op.alter_column("orders", "code", type_=sa.String(60)),
                 lambda op: op.alter_column("orders", "code", type_=sa.String(30)))
    assert [f.rule for f in scan([("r", sql)], LIVE)] == ["alter-column-type-widening", "alter-column-type"]


def test_semicolons_in_strings_and_comments_do_not_split() -> None:
    sql = "INSERT INTO notes (t) VALUES ('a; DROP TABLE x;');\n/* DROP TABLE y; */\nDELETE FROM orders;\n"
    assert rules(sql) == [("delete-without-where", "destructive")]


def test_garbage_is_a_note_naming_it_never_a_crash() -> None:
    found = scan([("r", "FROBNICATE THE orders;\nALTER TABLE orders DROP COLUMN x;\nSELECT 'unterminated")], LIVE)
    assert [f.rule for f in found][:2] == ["unparsed-sql", "drop-column"]
    assert "FROBNICATE" in found[0].operation
    assert all(f.severity in sqlscan.SEVERITIES for f in found)


@pytest.mark.parametrize(("old", "new", "verdict"), [
    ("varchar(20)", "varchar(20)", "same"),
    ("varchar(20) CHARACTER SET utf8mb4", "varchar(63)", "widening"),  # 80 -> 252 bytes: one length byte
    ("varchar(20) CHARACTER SET utf8mb4", "varchar(64)", "rewrite"),  # 256 bytes: two length bytes
    ("varchar(100) CHARACTER SET latin1", "varchar(255)", "widening"),
    ("varchar(300)", "varchar(400)", "widening"),
    ("varchar(20)", "varchar(10)", "lossy"),
    ("char(10)", "char(20)", "rewrite"),
    ("int(11)", "bigint(20)", "rewrite"),
    ("int(11)", "int(10) unsigned", "lossy"),
    ("int(10) unsigned", "bigint", "rewrite"),
    ("int(10) unsigned", "int", "lossy"),
    ("bigint", "int", "lossy"),
    ("tinyint(1)", "boolean", "same"),
    ("decimal(10,2)", "decimal(12,2)", "rewrite"),
    ("decimal(10,2)", "decimal(10,1)", "lossy"),
    ("int", "decimal(12,2)", "rewrite"),
    ("int", "decimal(8,2)", "lossy"),
    ("text", "mediumtext", "rewrite"),
    ("mediumtext", "text", "lossy"),
    ("varchar(20)", "text", "rewrite"),
    ("text", "varchar(20)", "lossy"),
    ("datetime", "datetime(6)", "rewrite"),
    ("datetime(6)", "datetime", "lossy"),
    ("datetime", "timestamp", "lossy"),
    ("enum('a','b')", "enum('a','b','c')", "widening"),
    ("enum('a','b')", "enum('b','a')", "lossy"),
    ("set('a','b')", "set('a','b','c')", "widening"),
    ("varchar(20) CHARACTER SET utf8mb3", "varchar(20) CHARACTER SET utf8mb4", "rewrite"),
    ("varchar(20) CHARACTER SET utf8mb4", "varchar(20) CHARACTER SET latin1", "lossy"),
    ("varbinary(16)", "varchar(16)", "lossy"),
    ("json", "json", "same"),
])
def test_classify(old: str, new: str, verdict: str) -> None:
    assert classify(parse_type(old), parse_type(new))[0] == verdict


def test_parse_type() -> None:
    assert parse_type("enum('it''s','b,c') NOT NULL") == MyType("enum", ("it's", "b,c"), not_null=True)
    assert parse_type("int(10) unsigned") == MyType("int", ("10",), unsigned=True)
    assert parse_type("varchar(20) CHARACTER SET utf8mb4") == MyType("varchar", ("20",), charset="utf8mb4")
    assert parse_type("") is None


def test_catalog_from_rows() -> None:
    catalog = sqlscan_mysql.catalog_from_rows(
        [("orders", "code", "varchar(20)", "utf8mb4", "YES"), ("orders", "qty", "int(11)", None, "NO")],
        [("orders", 12)])
    assert catalog.columns == {("orders", "code"): "varchar(20) CHARACTER SET utf8mb4",
                               ("orders", "qty"): "int(11) NOT NULL"}
    assert catalog.rows == {"orders": 12}


def test_altered_tables() -> None:
    sql = render(lambda op: op.alter_column("orders", "code", type_=sa.String(60)),
                 lambda op: op.alter_column("`users`", "name", new_column_name="n", existing_type=sa.String(9)),
                 lambda op: op.add_column("items", sa.Column("x", sa.Integer)))
    assert sqlscan_mysql.altered_tables([("r", sql)]) == {"orders", "users"}


def test_every_rule_is_exercised_and_documented() -> None:
    exercised = {c[2] for c in CASES}
    assert exercised == set(sqlscan_mysql.RULES), set(sqlscan_mysql.RULES) ^ exercised
    text = sqlscan_mysql.markdown()
    for name in sqlscan_mysql.RULES:
        assert f"`{name}`" in text


def test_docs_locking_md_has_the_mysql_section() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "locking.md").read_text()
    assert text == engines.locking_markdown(), "docs/locking.md is stale: run make crd"


def test_findings_carry_their_engine_rules_to_the_plan_and_check() -> None:
    """status.plan.locking's safer pattern and check's lint finding come from MySQL's rule, not PostgreSQL's."""
    [finding] = scan([("r", render(lambda op: op.create_foreign_key("fk", "orders", "users", ["u"], ["id"])))])
    assert sqlscan.rule_of(finding) is sqlscan_mysql.RULES["add-foreign-key"]
    assert jobtools._with_rule(finding)["safely"] == sqlscan_mysql.RULES["add-foreign-key"].safely
    assert "NOT VALID" not in jobtools._with_rule(finding)["safely"]
    checked = lint._finding(finding)
    assert checked.severity == "warning"
    assert f"safely: {sqlscan_mysql.RULES['add-foreign-key'].safely}" in checked.details
