"""The SQL scanner on what Alembic really renders offline for PostgreSQL.

Most samples are produced by Alembic itself (`render`: the same offline code path as `alembic upgrade a:b --sql`),
so the tests follow Alembic's actual spelling; a few are full `--sql` outputs copied verbatim.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext

from alembic_operator.sqlscan import RULES, Finding, scan_revisions, scan_sql


def render(fn: Callable[[Operations], object]) -> str:
    """The SQL Alembic's offline mode emits for these operations (PostgreSQL dialect)."""
    buf = io.StringIO()
    ctx = MigrationContext.configure(dialect_name="postgresql", opts={"as_sql": True, "output_buffer": buf})
    fn(Operations(ctx))
    return buf.getvalue()


def found(sql: str, revision: str | None = "r1", **kw: object) -> list[tuple[str, str]]:
    return [(f.rule, f.operation) for f in scan_sql(sql, revision, **kw)]  # type: ignore[arg-type]


# Full output of `alembic upgrade base:a1 --sql` (the first revision: creates the version table).
FIRST_REVISION = """BEGIN;

CREATE TABLE alembic_version (
    version_num VARCHAR(32) NOT NULL, 
    CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)
);

-- Running upgrade  -> a1

CREATE TABLE orders (
    id SERIAL NOT NULL, 
    legacy_code VARCHAR(20), 
    amount INTEGER DEFAULT '0' NOT NULL, 
    PRIMARY KEY (id)
);

CREATE INDEX ix_orders_amount ON orders (amount);

INSERT INTO alembic_version (version_num) VALUES ('a1') RETURNING alembic_version.version_num;

COMMIT;

"""  # noqa: W291 - Alembic's own trailing spaces

# Full output of `alembic upgrade a1:c3 --sql`: two revisions in one text.
TWO_REVISIONS = """BEGIN;

-- Running upgrade a1 -> b2

ALTER TABLE orders ADD COLUMN note TEXT;

UPDATE alembic_version SET version_num='b2' WHERE alembic_version.version_num = 'a1';

-- Running upgrade b2 -> c3

ALTER TABLE orders DROP COLUMN legacy_code;

UPDATE alembic_version SET version_num='c3' WHERE alembic_version.version_num = 'b2';

COMMIT;

"""


# --- destructive ---------------------------------------------------------------------------------------------------


def test_drop_column() -> None:
    sql = render(lambda op: op.drop_column("orders", "legacy_code"))
    assert sql.strip() == "ALTER TABLE orders DROP COLUMN legacy_code;"
    [f] = scan_sql(sql, "9d81aa02c4f5")
    assert f == Finding(rule="drop-column", severity="destructive", operation="DROP COLUMN orders.legacy_code",
                        revision="9d81aa02c4f5", statement="ALTER TABLE orders DROP COLUMN legacy_code")
    assert f.describe() == "DROP COLUMN orders.legacy_code (revision 9d81aa02c4f5)"


def test_drop_column_with_schema_is_qualified() -> None:
    sql = render(lambda op: op.drop_column("orders", "legacy_code", schema="shop"))
    assert found(sql) == [("drop-column", "DROP COLUMN shop.orders.legacy_code")]


def test_drop_table() -> None:
    sql = render(lambda op: op.drop_table("old"))
    assert sql.strip() == 'DROP TABLE "old";'
    assert found(sql) == [("drop-table", "DROP TABLE old")]
    assert found("DROP TABLE IF EXISTS a, shop.b CASCADE;") == [
        ("drop-table", "DROP TABLE a CASCADE"), ("drop-table", "DROP TABLE shop.b CASCADE")]


@pytest.mark.parametrize(("fn", "operation"), [
    (lambda op: op.alter_column("orders", "amount", type_=sa.BigInteger(), existing_type=sa.Integer()),
     "ALTER COLUMN orders.amount TYPE bigint"),
    (lambda op: op.alter_column("orders", "amount", type_=sa.Numeric(10, 2), postgresql_using="amount::numeric"),
     "ALTER COLUMN orders.amount TYPE numeric(10, 2)"),
    (lambda op: op.alter_column("orders", "code", type_=sa.String(5), schema="shop"),
     "ALTER COLUMN shop.orders.code TYPE varchar(5)"),
    (lambda op: op.execute("ALTER TABLE orders ALTER COLUMN code SET DATA TYPE varchar(5)"),
     "ALTER COLUMN orders.code TYPE varchar(5)"),
])
def test_column_type_change(fn: Callable[[Operations], object], operation: str) -> None:
    assert found(render(fn)) == [("alter-column-type", operation)]


def test_truncate() -> None:
    assert found(render(lambda op: op.execute("TRUNCATE orders"))) == [("truncate", "TRUNCATE orders")]
    assert found("TRUNCATE TABLE a, s.b RESTART IDENTITY;") == [
        ("truncate", "TRUNCATE a"), ("truncate", "TRUNCATE s.b")]


@pytest.mark.parametrize(("sql", "expected"), [
    ("DROP SCHEMA shop CASCADE", [("drop-schema", "DROP SCHEMA shop CASCADE")]),
    ("DROP DATABASE other", [("drop-database", "DROP DATABASE other")]),
    ("DROP TYPE mood", [("drop-type", "DROP TYPE mood")]),
    ("DROP DOMAIN posint", [("drop-type", "DROP DOMAIN posint")]),
    ("DROP SEQUENCE s", [("drop-sequence", "DROP SEQUENCE s")]),
    ("DROP FUNCTION f(integer) CASCADE", [("drop-cascade", "DROP FUNCTION f CASCADE")]),
    ("DROP OWNED BY someone", [("drop-owned", "DROP OWNED BY someone")]),
    ("DROP VIEW v CASCADE", [("drop-view", "DROP VIEW v CASCADE")]),  # dependents of a view hold no rows
    ("DELETE FROM orders", [("delete-without-where", "DELETE FROM orders without WHERE")]),
    ("UPDATE shop.orders SET amount = 0, note = NULL",
     [("update-without-where", "UPDATE shop.orders SET amount, note without WHERE")]),
    ("WITH gone AS (DELETE FROM orders RETURNING id) SELECT count(*) FROM gone",
     [("delete-without-where", "DELETE FROM orders without WHERE")]),
    ("DELETE FROM orders WHERE id = 1", [("delete-rows", "DELETE FROM orders WHERE ...")]),
    ("UPDATE orders SET amount = 0 WHERE amount IS NULL", []),
])
def test_other_destructive_and_dml(sql: str, expected: list[tuple[str, str]]) -> None:
    assert found(render(lambda op: op.execute(sql))) == expected


def test_multi_action_alter_table_gives_one_finding_per_action() -> None:
    sql = "ALTER TABLE orders ADD COLUMN a int, DROP COLUMN b, ALTER COLUMN c TYPE text, DROP COLUMN d CASCADE;"
    assert found(sql) == [
        ("drop-column", "DROP COLUMN orders.b"),
        ("alter-column-type", "ALTER COLUMN orders.c TYPE text"),
        ("drop-column", "DROP COLUMN orders.d"),
    ]


# --- warnings ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fn", "expected"), [
    (lambda op: op.alter_column("orders", "name", new_column_name="title"),
     [("rename-column", "RENAME COLUMN orders.name TO title")]),
    (lambda op: op.rename_table("orders", "purchases"), [("rename-table", "RENAME TABLE orders TO purchases")]),
    (lambda op: op.execute("ALTER TABLE orders SET SCHEMA archive"),
     [("rename-table", "MOVE TABLE orders TO SCHEMA archive")]),
    (lambda op: op.execute("ALTER TYPE mood RENAME VALUE 'ok' TO 'fine'"),
     [("rename-object", "RENAME VALUE mood 'ok' TO 'fine'")]),
    (lambda op: op.create_index("ix_a", "orders", ["amount"]),
     [("create-index-not-concurrently", "CREATE INDEX ix_a ON orders")]),
    (lambda op: op.create_index("ux_a", "orders", ["code"], unique=True),
     [("create-index-not-concurrently", "CREATE UNIQUE INDEX ux_a ON orders")]),
    (lambda op: op.create_index("ix_b", "orders", ["amount"], postgresql_concurrently=True), []),
    (lambda op: op.drop_index("ix_a", table_name="orders"), [("drop-index", "DROP INDEX ix_a")]),
    (lambda op: op.drop_index("ix_a", table_name="orders", postgresql_concurrently=True), []),
    (lambda op: op.alter_column("orders", "note", nullable=False), [("set-not-null", "SET NOT NULL orders.note")]),
    (lambda op: op.alter_column("orders", "note", nullable=True), []),
    (lambda op: op.add_column("orders", sa.Column("req", sa.Text(), nullable=False)),
     [("add-column-not-null-without-default", "ADD COLUMN orders.req NOT NULL without DEFAULT")]),
    (lambda op: op.add_column("orders", sa.Column("u", sa.Text(), server_default=sa.text("gen_random_uuid()"))),
     [("add-column-volatile-default", "ADD COLUMN orders.u with volatile DEFAULT gen_random_uuid()")]),
    (lambda op: op.add_column("orders", sa.Column("n", sa.BigInteger(), sa.Identity())),
     [("add-column-volatile-default", "ADD COLUMN orders.n with a computed value")]),
    (lambda op: op.create_foreign_key("fk_c", "orders", "customers", ["cid"], ["id"]),
     [("add-foreign-key", "ADD FOREIGN KEY fk_c ON orders REFERENCES customers")]),
    (lambda op: op.execute("ALTER TABLE orders ADD CONSTRAINT fk_c FOREIGN KEY (cid) REFERENCES customers (id) "
                           "NOT VALID"), []),
    (lambda op: op.create_check_constraint("ck_amount", "orders", "amount > 0"),
     [("add-check-constraint", "ADD CHECK ck_amount ON orders")]),
    (lambda op: op.execute("ALTER TABLE orders ADD CONSTRAINT ck_amount CHECK (amount > 0) NOT VALID"), []),
    (lambda op: op.execute("ALTER TABLE orders VALIDATE CONSTRAINT ck_amount"), []),
    (lambda op: op.create_unique_constraint("uq_code", "orders", ["code"]),
     [("add-unique-constraint", "ADD UNIQUE uq_code ON orders")]),
    (lambda op: op.create_primary_key("pk_orders", "orders", ["id"]),
     [("add-unique-constraint", "ADD PRIMARY KEY pk_orders ON orders")]),
    (lambda op: op.execute("ALTER TABLE orders ADD CONSTRAINT uq_code UNIQUE USING INDEX ux_code"), []),
    (lambda op: op.execute("DROP VIEW v"), [("drop-view", "DROP VIEW v")]),
    (lambda op: op.execute("DROP MATERIALIZED VIEW mv"), [("drop-view", "DROP MATERIALIZED VIEW mv")]),
    (lambda op: op.execute("VACUUM FULL orders"), [("table-rewrite", "VACUUM FULL orders")]),
    (lambda op: op.execute("CLUSTER orders USING ix_a"), [("table-rewrite", "CLUSTER orders")]),
    (lambda op: op.execute("ALTER TABLE orders SET TABLESPACE slow"), [("table-rewrite", "SET TABLESPACE orders")]),
    (lambda op: op.execute("REINDEX TABLE orders"), [("exclusive-lock", "REINDEX orders")]),
    (lambda op: op.execute("REINDEX TABLE CONCURRENTLY orders"), []),
    (lambda op: op.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE"), [("exclusive-lock", "LOCK TABLE orders")]),
    (lambda op: op.execute("LOCK TABLE orders IN ROW EXCLUSIVE MODE"), []),
])
def test_warnings(fn: Callable[[Operations], object], expected: list[tuple[str, str]]) -> None:
    findings = scan_sql(render(fn), "r1")
    assert [(f.rule, f.operation) for f in findings] == expected
    assert all(f.severity == "warning" for f in findings)


# --- what is fine --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [
    lambda op: op.add_column("orders", sa.Column("note", sa.Text(), nullable=True)),
    lambda op: op.add_column("orders", sa.Column("flag", sa.Boolean(), nullable=False, server_default=sa.false())),
    lambda op: op.add_column("orders", sa.Column("ts", sa.DateTime(), server_default=sa.func.now())),
    lambda op: op.create_table("customers", sa.Column("id", sa.Integer(), primary_key=True),
                               sa.Column("name", sa.String(100), nullable=False)),
    lambda op: op.alter_column("orders", "amount", server_default="5"),
    lambda op: op.drop_constraint("fk_x", "orders", type_="foreignkey"),
    lambda op: op.execute("INSERT INTO settings (k, v) VALUES ('a', 'b')"),
    lambda op: op.execute("SELECT 1"),
    lambda op: op.execute("CREATE TYPE mood AS ENUM ('a', 'b')"),
    lambda op: op.execute("ALTER TYPE mood ADD VALUE 'c'"),
    lambda op: op.execute("CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$ BEGIN "
                          "DELETE FROM orders; RETURN 1; END $$"),
])
def test_safe_operations_give_no_finding(fn: Callable[[Operations], object]) -> None:
    assert scan_sql(render(fn), "r1") == []


def test_alembic_bookkeeping_is_ignored() -> None:
    assert scan_sql(FIRST_REVISION) == []  # CREATE TABLE alembic_version, INSERT INTO alembic_version, BEGIN/COMMIT
    merge = "DELETE FROM alembic_version WHERE alembic_version.version_num = 'b2';\n\n"
    assert scan_sql(merge, "m1") == []
    downgrade_to_base = ("DELETE FROM alembic_version WHERE alembic_version.version_num = 'a1';\n\n"
                         "DROP TABLE alembic_version;")
    assert scan_sql(downgrade_to_base) == []
    custom = ("INSERT INTO my_versions (version_num) VALUES ('a1') RETURNING my_versions.version_num;\n\n"
              "UPDATE my_versions SET version_num='b2' WHERE my_versions.version_num = 'a1';\n\n"
              "DELETE FROM my_versions WHERE my_versions.version_num = 'b1';\n\n")
    assert scan_sql(custom) == []  # a custom version_table name, recognised by its version_num column
    assert scan_sql("DROP TABLE my_versions;", version_table="my_versions") == []


def test_revisions_come_from_alembic_comments_when_not_given() -> None:
    [f] = scan_sql(TWO_REVISIONS)
    assert (f.rule, f.revision) == ("drop-column", "c3")
    assert f.describe() == "DROP COLUMN orders.legacy_code (revision c3)"
    [f] = scan_sql(TWO_REVISIONS, "given")
    assert f.revision == "given"
    downgrade = "-- Running downgrade c3 -> b2\n\nALTER TABLE orders DROP COLUMN note;\n"
    assert scan_sql(downgrade)[0].revision == "c3"


# --- parsing -------------------------------------------------------------------------------------------------------


def test_unparseable_sql_is_destructive_and_the_rest_is_still_scanned() -> None:
    sql = "ALTER TABLE orders DROP COLUMN a;\n\nALTER TABLE orders DROPP COLUMN b;\n\nDROP TABLE old;\n\n"
    findings = scan_sql(sql, "r1")
    assert [f.rule for f in findings] == ["drop-column", "unparseable-sql", "drop-table"]
    bad = findings[1]
    assert bad.severity == "destructive"
    assert bad.statement == "ALTER TABLE orders DROPP COLUMN b"
    assert "syntax error" in bad.operation


def test_unterminated_quote_falls_back_to_alembic_delimiters() -> None:
    sql = "-- Running upgrade a -> b\n\nDROP TABLE x;\n\n$$ oops;\n\nALTER TABLE t DROP COLUMN c;\n\n"
    findings = scan_sql(sql)
    assert [f.rule for f in findings][:2] == ["drop-table", "unparseable-sql"]
    assert {f.revision for f in findings} == {"b"}


def test_semicolons_inside_dollar_quotes_do_not_split() -> None:
    sql = render(lambda op: op.execute(
        "CREATE FUNCTION trg() RETURNS trigger LANGUAGE plpgsql AS $body$ BEGIN DELETE FROM audit; "
        "RETURN NEW; END $body$"))
    assert scan_sql(sql) == []


def test_do_blocks_are_scanned_and_dynamic_sql_is_opaque() -> None:
    sql = render(lambda op: op.execute(
        "DO $$ BEGIN IF EXISTS (SELECT 1) THEN ALTER TABLE orders DROP COLUMN legacy; END IF; "
        "EXECUTE 'DROP TABLE ' || 'x'; END $$"))
    findings = scan_sql(sql, "r1")
    assert [(f.rule, f.severity) for f in findings] == [("drop-column", "destructive"), ("opaque-sql", "destructive")]
    assert findings[0].operation == "DROP COLUMN orders.legacy (in a DO block)"
    assert [f.rule for f in scan_sql("DO LANGUAGE plpython3u $$ plpy.execute('x') $$;")] == ["opaque-sql"]
    idempotent = "DO $$ BEGIN CREATE TYPE mood AS ENUM ('a'); EXCEPTION WHEN duplicate_object THEN NULL; END $$;"
    assert scan_sql(idempotent) == []


def test_statement_is_trimmed() -> None:
    sql = "DELETE FROM orders WHERE " + " OR ".join(f"id = {i}" for i in range(200)) + ";"
    [f] = scan_sql(sql)
    assert len(f.statement) == 300 and f.statement.endswith("…")


# --- plans, suppression, rules -------------------------------------------------------------------------------------


def test_no_lock_warnings_for_tables_the_plan_created() -> None:
    rev1 = render(lambda op: op.create_table("invoices", sa.Column("id", sa.Integer(), primary_key=True)))

    def second(op: Operations) -> None:
        op.create_index("ix_inv", "invoices", ["id"])
        op.add_column("invoices", sa.Column("n", sa.Integer(), nullable=False))
        op.create_foreign_key("fk", "invoices", "orders", ["n"], ["id"])
        op.drop_index("ix_inv", table_name="invoices")
        op.drop_column("invoices", "n")  # destructive rules always fire
        op.create_index("ix_orders", "orders", ["id"])

    rev2 = render(second)
    findings = scan_revisions([("r1", rev1), ("r2", rev2)])
    assert [(f.rule, f.revision) for f in findings] == [("drop-column", "r2"), ("create-index-not-concurrently", "r2")]
    # scanned alone, r2 does not know the table is new
    assert "create-index-not-concurrently" in [f.rule for f in scan_sql(rev2, "r2") if "invoices" in f.operation]


def test_allowed_rules_are_dropped() -> None:
    sql = "ALTER TABLE orders DROP COLUMN a, ALTER COLUMN b TYPE text;"
    assert [f.rule for f in scan_sql(sql, allowed={"drop-column"})] == ["alter-column-type"]
    assert scan_revisions([("r", sql)], allowed={"drop-column", "alter-column-type"}) == []


def test_rules_table() -> None:
    for name, rule in RULES.items():
        assert rule.name == name and re.fullmatch(r"[a-z]+(-[a-z]+)*", name)
        assert rule.severity in ("destructive", "warning") and rule.why and rule.safely
    for name in ("drop-table", "drop-column", "truncate", "alter-column-type", "drop-schema", "drop-database",
                 "delete-without-where", "update-without-where", "drop-type", "unparseable-sql",
                 "unrenderable-revision"):
        assert RULES[name].severity == "destructive", name
    for name in ("rename-table", "rename-column", "set-not-null", "add-column-volatile-default",
                 "create-index-not-concurrently", "add-foreign-key", "add-check-constraint", "drop-index"):
        assert RULES[name].severity == "warning", name


def test_finding_severity_follows_the_rules_table() -> None:
    sql = "ALTER TABLE a DROP COLUMN b;\n\nALTER TABLE a RENAME TO c;\n\nTRUNCATE x;\n\n"
    for f in scan_sql(sql):
        assert f.severity == RULES[f.rule].severity
    assert Finding("drop-table", "destructive", "DROP TABLE x", None, "").describe() == "DROP TABLE x"
