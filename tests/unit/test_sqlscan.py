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

from alembic_operator.sqlscan import (
    RULES,
    Catalog,
    Finding,
    altered_columns,
    catalog_from_rows,
    classify_type_change,
    parse_type,
    scan_revisions,
    scan_sql,
)


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
     "ALTER COLUMN orders.amount TYPE bigint (the current type is not known)"),
    (lambda op: op.alter_column("orders", "code", type_=sa.String(5), schema="shop"),
     "ALTER COLUMN shop.orders.code TYPE varchar(5) (the current type is not known)"),
])
def test_column_type_change_without_the_current_type_is_destructive(fn: Callable[[Operations], object],
                                                                     operation: str) -> None:
    assert found(render(fn)) == [("alter-column-type", operation)]


LIVE = Catalog(columns={
    ("orders", "code"): "character varying(20)", ("orders", "note"): "character varying(250)",
    ("orders", "amount"): "integer", ("orders", "price"): "numeric(10,2)",
    ("orders", "at"): "timestamp without time zone",
    ("orders", "body"): "text", ("orders", "flag"): "character(3)",
})


@pytest.mark.parametrize(("sql", "rule", "says"), [
    # widenings PostgreSQL does in the catalog: a note, never destructive
    ("ALTER TABLE orders ALTER COLUMN note TYPE varchar(5000)", "alter-column-type-widening",
     "from varchar(250): a widening PostgreSQL does without a rewrite"),
    ("ALTER TABLE orders ALTER COLUMN note TYPE text", "alter-column-type-widening", "from varchar(250): a widening"),
    ("ALTER TABLE orders ALTER COLUMN note TYPE varchar", "alter-column-type-widening", "a widening"),
    ("ALTER TABLE orders ALTER COLUMN body TYPE varchar", "alter-column-type-widening", "from text: a widening"),
    ("ALTER TABLE orders ALTER COLUMN note TYPE character varying(250)", "alter-column-type-widening",
     "from varchar(250): the same type: nothing changes"),
    ("ALTER TABLE orders ALTER COLUMN price TYPE numeric(12, 2)", "alter-column-type-widening", "a widening"),
    ("ALTER TABLE orders ALTER COLUMN price TYPE numeric", "alter-column-type-widening", "a widening"),
    ("ALTER TABLE orders ALTER COLUMN amount TYPE int4", "alter-column-type-widening", "the same type"),
    # lossless, but the table is rewritten: locking
    ("ALTER TABLE orders ALTER COLUMN amount TYPE bigint", "alter-column-type-rewrite",
     "from integer: every value is kept, but the table is rewritten"),
    ("ALTER TABLE orders ALTER COLUMN at TYPE timestamptz", "alter-column-type-rewrite", "from timestamp: every"),
    ("ALTER TABLE orders ALTER COLUMN amount TYPE text", "alter-column-type-rewrite", "every value is kept"),
    ("ALTER TABLE orders ALTER COLUMN price TYPE numeric(14, 4)", "alter-column-type-rewrite", "every value"),
    ("ALTER TABLE orders ALTER COLUMN amount TYPE numeric(10, 0)", "alter-column-type-rewrite", "every value"),
    ("ALTER TABLE orders ALTER COLUMN flag TYPE char(5)", "alter-column-type-rewrite", "every value"),
    ("ALTER TABLE orders ALTER COLUMN amount TYPE bigint USING amount::bigint", "alter-column-type-rewrite",
     "every value"),
    # narrowing or lossy: destructive
    ("ALTER TABLE orders ALTER COLUMN code TYPE varchar(9)", "alter-column-type",
     "from varchar(20): a narrowing or lossy cast"),
    ("ALTER TABLE orders ALTER COLUMN body TYPE varchar(100)", "alter-column-type", "from text: a narrowing"),
    ("ALTER TABLE orders ALTER COLUMN code TYPE integer USING code::integer", "alter-column-type",
     "from varchar(20): a narrowing or lossy cast"),
    ("ALTER TABLE orders ALTER COLUMN price TYPE numeric(10, 1)", "alter-column-type", "a narrowing"),
    ("ALTER TABLE orders ALTER COLUMN price TYPE integer", "alter-column-type", "a narrowing"),
    ("ALTER TABLE orders ALTER COLUMN amount TYPE smallint", "alter-column-type", "a narrowing"),
    ("ALTER TABLE orders ALTER COLUMN amount TYPE numeric(5, 0)", "alter-column-type", "a narrowing"),
    ("ALTER TABLE orders ALTER COLUMN amount TYPE bigint USING amount * 100", "alter-column-type",
     "(USING expression)"),
    ("ALTER TABLE orders ALTER COLUMN at TYPE timestamp(0)", "alter-column-type", "a narrowing"),
    ("ALTER TABLE orders ALTER COLUMN missing TYPE text", "alter-column-type", "the current type is not known"),
])
def test_type_changes_are_classified_against_the_current_type(sql: str, rule: str, says: str) -> None:
    [f] = scan_sql(sql + ";", "r1", catalog=LIVE)
    assert (f.rule, f.severity) == (rule, RULES[rule].severity)
    assert says in f.operation, f.operation


def test_type_changes_follow_the_schema_through_the_plan() -> None:
    """A column created (or changed) by an earlier revision of the plan is classified by what that revision did."""
    rev1 = render(lambda op: op.create_table("notes", sa.Column("id", sa.Integer(), primary_key=True),
                                             sa.Column("title", sa.String(20))))
    rev2 = render(lambda op: op.alter_column("notes", "title", type_=sa.String(200)))
    rev3 = render(lambda op: (op.add_column("orders", sa.Column("ref", sa.String(40))),
                              op.alter_column("orders", "ref", type_=sa.String(10))))
    rev4 = render(lambda op: (op.alter_column("notes", "title", new_column_name="heading"),
                              op.alter_column("notes", "heading", type_=sa.String(50))))
    findings = scan_revisions([("r1", rev1), ("r2", rev2), ("r3", rev3), ("r4", rev4)])
    assert [(f.rule, f.revision, f.operation) for f in findings] == [
        ("alter-column-type-widening", "r2",
         "ALTER COLUMN notes.title TYPE varchar(200) (from varchar(20): a widening PostgreSQL does without a rewrite)"),
        ("alter-column-type", "r3", "ALTER COLUMN orders.ref TYPE varchar(10) (from varchar(40): a narrowing or "
         "lossy cast)"),
        ("alter-column-type", "r4", "ALTER COLUMN notes.heading TYPE varchar(50) (from varchar(200): a narrowing or "
         "lossy cast)"),
    ]


def test_the_plan_takes_precedence_over_the_live_catalog() -> None:
    widen = "ALTER TABLE orders ALTER COLUMN code TYPE varchar(40);\n\n"
    narrow = "ALTER TABLE orders ALTER COLUMN code TYPE varchar(30);\n\n"
    findings = scan_revisions([("r1", widen), ("r2", narrow)], catalog=LIVE)
    assert [(f.rule, f.revision) for f in findings] == [("alter-column-type-widening", "r1"),
                                                        ("alter-column-type", "r2")]


@pytest.mark.parametrize(("old", "new", "verdict"), [
    ("character varying(250)", "character varying(5000)", "widening"),
    ("character varying(20)", "character varying(9)", "lossy"),
    ("character varying", "text", "widening"),
    ("text", "text", "same"),
    ("integer", "bigint", "rewrite"),
    ("bigint", "integer", "lossy"),
    ("integer", "double precision", "rewrite"),
    ("bigint", "double precision", "lossy"),
    ("timestamp without time zone", "timestamp with time zone", "rewrite"),
    ("timestamp(3) without time zone", "timestamp(6) without time zone", "widening"),
    ("numeric(10,2)", "numeric(12,2)", "widening"),
    ("numeric(10,2)", "numeric(10,3)", "lossy"),
    ("numeric(10,2)", "numeric(11,3)", "rewrite"),
    ("uuid", "text", "rewrite"),
    ("text", "uuid", "lossy"),
    ("integer[]", "bigint", "lossy"),
    ("jsonb", "json", "lossy"),
    ("cidr", "inet", "widening"),
])
def test_classify_type_change(old: str, new: str, verdict: str) -> None:
    assert classify_type_change(parse_type(old), parse_type(new)) == verdict
    assert classify_type_change(None, parse_type(new)) == "unknown"


def test_catalog_from_rows_reads_validated_not_null_checks() -> None:
    catalog = catalog_from_rows([("orders", "code", "character varying(20)")],
                                [("orders", "CHECK ((code IS NOT NULL))"), ("orders", "CHECK ((amount > 0))")])
    assert catalog.columns == {("orders", "code"): "character varying(20)"}
    assert catalog.not_null_checks == {("orders", "code")}
    sql = "ALTER TABLE orders ALTER COLUMN code SET NOT NULL;\n\nALTER TABLE orders ALTER COLUMN note SET NOT NULL;"
    assert found(sql, catalog=catalog) == [("set-not-null", "SET NOT NULL orders.note")]


def test_altered_columns_names_the_tables_the_scan_reads() -> None:
    items = [("r1", "ALTER TABLE shop.orders ALTER COLUMN a TYPE text;\n\nALTER TABLE t ALTER COLUMN b SET NOT NULL;"
                    "\n\nALTER TABLE u ADD COLUMN c int;\n\nCREATE INDEX ix ON v (a);")]
    assert altered_columns(items) == {("shop", "orders"), (None, "t")}


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
        ("alter-column-type", "ALTER COLUMN orders.c TYPE text (the current type is not known)"),
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
    (lambda op: op.execute("ALTER TABLE orders VALIDATE CONSTRAINT ck_amount"),
     [("validate-constraint", "VALIDATE CONSTRAINT ck_amount ON orders")]),
    (lambda op: op.execute("REFRESH MATERIALIZED VIEW totals"),
     [("refresh-materialized-view", "REFRESH MATERIALIZED VIEW totals")]),
    (lambda op: op.execute("REFRESH MATERIALIZED VIEW CONCURRENTLY totals"), []),
    (lambda op: op.add_column("orders", sa.Column("r", sa.Float(), server_default=sa.text("random()"))),
     [("add-column-volatile-default", "ADD COLUMN orders.r with volatile DEFAULT random()")]),
    (lambda op: op.add_column("orders", sa.Column("t", sa.DateTime(), server_default=sa.text("clock_timestamp()"))),
     [("add-column-volatile-default", "ADD COLUMN orders.t with volatile DEFAULT clock_timestamp()")]),
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
    assert all(f.severity in ("locking", "warning", "note") for f in findings)


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
    assert [f.rule for f in scan_sql(sql, allowed={"drop-column"})] == ["alter-column-type"]  # b's type: unknown
    assert scan_revisions([("r", sql)], allowed={"drop-column", "alter-column-type"}) == []


def test_rules_table() -> None:
    for name, rule in RULES.items():
        assert rule.name == name and re.fullmatch(r"[a-z]+(-[a-z]+)*", name)
        assert rule.severity in ("destructive", "locking", "warning", "note") and rule.why and rule.safely
    for name in ("drop-table", "drop-column", "truncate", "alter-column-type", "drop-schema", "drop-database",
                 "delete-without-where", "update-without-where", "drop-type", "unparseable-sql",
                 "unrenderable-revision"):
        assert RULES[name].severity == "destructive", name
    for name in ("rename-table", "rename-column", "set-not-null", "add-column-volatile-default",
                 "create-index-not-concurrently", "add-foreign-key", "add-check-constraint", "drop-index",
                 "alter-column-type-rewrite", "add-unique-constraint", "refresh-materialized-view", "table-rewrite",
                 "exclusive-lock"):
        assert RULES[name].severity == "locking", name
    for name in ("alter-column-type-widening", "validate-constraint"):
        assert RULES[name].severity == "note", name


def test_finding_severity_follows_the_rules_table() -> None:
    sql = "ALTER TABLE a DROP COLUMN b;\n\nALTER TABLE a RENAME TO c;\n\nTRUNCATE x;\n\n"
    for f in scan_sql(sql):
        assert f.severity == RULES[f.rule].severity
    assert Finding("drop-table", "destructive", "DROP TABLE x", None, "").describe() == "DROP TABLE x"


def test_docs_list_every_rule_with_its_safer_pattern() -> None:
    from pathlib import Path

    from alembic_operator import sqlscan

    text = (Path(__file__).resolve().parents[2] / "docs" / "locking.md").read_text()
    assert text.startswith(sqlscan.markdown()), "docs/locking.md is stale: run make crd"
    for rule in RULES.values():
        assert f"| `{rule.name}` | {rule.why} | {rule.safely} |" in text
        assert "|" not in rule.why + rule.safely  # a table cell


def test_set_not_null_after_a_validated_check_in_the_plan_is_not_flagged() -> None:
    safe = render(lambda op: (
        op.execute("ALTER TABLE orders ADD CONSTRAINT ck_note_nn CHECK (note IS NOT NULL) NOT VALID"),
        op.execute("ALTER TABLE orders VALIDATE CONSTRAINT ck_note_nn"),
        op.alter_column("orders", "note", nullable=False),
        op.drop_constraint("ck_note_nn", "orders", type_="check"),
    ))
    assert found(safe) == [("validate-constraint", "VALIDATE CONSTRAINT ck_note_nn ON orders")]
    unvalidated = render(lambda op: (
        op.execute("ALTER TABLE orders ADD CONSTRAINT ck_note_nn CHECK (note IS NOT NULL) NOT VALID"),
        op.alter_column("orders", "note", nullable=False),
    ))
    assert found(unvalidated) == [("set-not-null", "SET NOT NULL orders.note")]


def test_validate_constraint_is_a_note_on_huge_tables_or_of_unknown_size() -> None:
    sql = "ALTER TABLE orders VALIDATE CONSTRAINT ck;\n\nALTER TABLE events VALIDATE CONSTRAINT ck2;"
    catalog = catalog_from_rows([], [], [("orders", 1200), ("events", 5_000_000)])
    assert found(sql, catalog=catalog) == [("validate-constraint", "VALIDATE CONSTRAINT ck2 ON events (~5000000 rows)")]
    assert [rule for rule, _ in found(sql)] == ["validate-constraint", "validate-constraint"]  # sizes unknown
    assert catalog_from_rows([], [], [("never_analyzed", -1)]).rows == {}
