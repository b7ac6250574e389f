"""The MySQL scanner against a real MariaDB: the catalog reader reads the live column types read only, and what the
scanner says about how InnoDB does a change is what the server does: a note (metadata only) is accepted with
ALGORITHM=INSTANT, a locking change is refused with LOCK=NONE (writes would wait), an operation the scanner does
not flag runs with LOCK=NONE."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pymysql
import pytest
import sqlalchemy as sa
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext

from alembic_operator import sqlscan_mysql
from bed.mariadb import Database

TABLE = ("CREATE TABLE orders (id INT NOT NULL PRIMARY KEY, code VARCHAR(20) CHARACTER SET utf8mb4, "
         "tag VARCHAR(50) CHARACTER SET utf8mb4, note VARCHAR(40) CHARACTER SET latin1 NOT NULL DEFAULT '', "
         "qty INT, price DECIMAL(10,2) NOT NULL DEFAULT 0, state ENUM('new','paid') NOT NULL DEFAULT 'new', "
         "body TEXT, user_id INT) ENGINE=InnoDB ROW_FORMAT=DYNAMIC")
ROWS = "INSERT INTO orders (id, code, tag, qty, user_id) VALUES (1, 'a', 'b', 1, 1), (2, 'c', NULL, 2, 1)"

Op = Callable[[Operations], Any]


def render(op: Op) -> str:
    buf = io.StringIO()
    ctx = MigrationContext.configure(dialect_name="mysql", opts={"as_sql": True, "output_buffer": buf})
    op(Operations(ctx))
    return buf.getvalue()


def statements(sql: str) -> list[str]:
    return [s.strip() for s in sql.split(";\n") if s.strip()]


@pytest.fixture
def shop(mariadb_database: Database) -> Database:
    mariadb_database.query(TABLE)
    mariadb_database.query("CREATE TABLE users (id INT NOT NULL PRIMARY KEY)")
    mariadb_database.query("INSERT INTO users VALUES (1)")
    mariadb_database.query(ROWS)
    mariadb_database.query("CREATE UNIQUE INDEX ux_seed ON orders (id, qty)")
    return mariadb_database


def test_read_catalog_reads_the_live_types_read_only(shop: Database) -> None:
    items = [("r", render(lambda op: op.alter_column("orders", "code", type_=sa.String(60))))]
    with shop.connect() as conn:
        catalog = sqlscan_mysql.read_catalog(conn, items)
        with conn.cursor() as cur:  # the session is usable afterwards and holds no transaction
            cur.execute("SELECT @@in_transaction")
            assert cur.fetchone() == (0,)
    assert catalog.columns[("orders", "code")] == "varchar(20) CHARACTER SET utf8mb4"
    assert catalog.columns[("orders", "note")] == "varchar(40) CHARACTER SET latin1 NOT NULL"
    assert catalog.columns[("orders", "state")] == "enum('new','paid') CHARACTER SET utf8mb4 NOT NULL"
    assert catalog.columns[("orders", "id")] == "int(11) NOT NULL"
    assert ("users", "id") not in catalog.columns  # only the tables the plan alters
    assert catalog.rows["orders"] >= 0
    [finding] = sqlscan_mysql.scan(items, catalog)
    assert finding.rule == "alter-column-type-widening", finding


def test_read_catalog_of_a_plan_that_alters_nothing_reads_nothing(shop: Database) -> None:
    with shop.connect() as conn:
        assert sqlscan_mysql.read_catalog(conn, [("r", "ALTER TABLE orders ADD COLUMN x INT;")]).columns == {}


def test_read_catalog_cannot_write(shop: Database) -> None:
    """The transaction read_catalog runs its queries in refuses writes (the same START TRANSACTION READ ONLY)."""
    with shop.connect() as conn, conn.cursor() as cur:
        cur.execute("START TRANSACTION READ ONLY")
        with pytest.raises(pymysql.err.OperationalError, match="READ ONLY transaction"):
            cur.execute("UPDATE orders SET qty = 9")
        conn.rollback()
    assert shop.query("SELECT qty FROM orders ORDER BY id") == [(1,), (2,)]


# (title, op, severity the scanner gives, how MariaDB 10.11 does it: "instant", "online" (LOCK=NONE) or "blocks"
# (LOCK=NONE refused: writes wait, a table copy or a rebuild under LOCK=SHARED))
BEHAVIOUR: list[tuple[str, Op, str | None, str]] = [
    ("varchar within its length byte", lambda op: op.alter_column("orders", "code", type_=sa.String(30)),
     "note", "instant"),
    ("latin1 varchar within its length byte",
     lambda op: op.execute("ALTER TABLE orders MODIFY note VARCHAR(200) CHARACTER SET latin1 NOT NULL DEFAULT ''"),
     "note", "instant"),
    ("enum member appended", lambda op: op.execute(
        "ALTER TABLE orders MODIFY state ENUM('new','paid','sent') NOT NULL DEFAULT 'new'"), "note", "instant"),
    ("varchar crossing 255 bytes from 200", lambda op: op.alter_column("orders", "tag", type_=sa.String(100)),
     "locking", "blocks"),
    ("int to bigint", lambda op: op.alter_column("orders", "qty", type_=sa.BigInteger()), "locking", "blocks"),
    ("varchar to text", lambda op: op.alter_column("orders", "code", type_=sa.Text()), "locking", "blocks"),
    ("decimal widened", lambda op: op.execute(
        "ALTER TABLE orders MODIFY price DECIMAL(14,2) NOT NULL DEFAULT 0"), "locking", "blocks"),
    ("foreign key", lambda op: op.create_foreign_key("fk_user", "orders", "users", ["user_id"], ["id"]),
     "locking", "blocks"),
    ("check constraint", lambda op: op.create_check_constraint("ck_qty", "orders", "qty > 0"), "locking", "blocks"),
    ("auto_increment column", lambda op: op.execute(
        "ALTER TABLE orders ADD COLUMN seq INT NOT NULL AUTO_INCREMENT, ADD UNIQUE KEY (seq)"), "locking", "blocks"),
    ("convert to utf8mb4", lambda op: op.execute("ALTER TABLE orders CONVERT TO CHARACTER SET utf8mb4"),
     "locking", "blocks"),
    ("fulltext index", lambda op: op.create_index("ft_body", "orders", ["body"], mysql_prefix="FULLTEXT"),
     "locking", "blocks"),
    ("stored generated column", lambda op: op.add_column(
        "orders", sa.Column("total", sa.Integer, sa.Computed("qty * 2", persisted=True))), "locking", "blocks"),
    ("drop index", lambda op: op.execute("ALTER TABLE orders DROP INDEX ux_seed"), None, "online"),
    ("create index", lambda op: op.create_index("ix_code", "orders", ["code"]), None, "online"),
    ("unique index", lambda op: op.create_index("ux_code", "orders", ["code"], unique=True), None, "online"),
    ("add nullable column", lambda op: op.add_column("orders", sa.Column("x", sa.Integer)), None, "instant"),
    ("add column with default", lambda op: op.add_column(
        "orders", sa.Column("y", sa.Integer, nullable=False, server_default="0")), None, "instant"),
    ("set default", lambda op: op.alter_column("orders", "qty", server_default="5", existing_type=sa.Integer),
     None, "instant"),
]


def _with(statement: str, clause: str) -> str:
    """The ALTER TABLE statement with an ALGORITHM/LOCK clause; CREATE INDEX takes it at its end."""
    return f"{statement} {clause.replace(',', '')}" if statement.upper().startswith("CREATE") \
        else f"{statement}, {clause}"


@pytest.mark.parametrize(("title", "op", "severity", "how"), BEHAVIOUR, ids=[b[0] for b in BEHAVIOUR])
def test_the_scanner_agrees_with_the_server(shop: Database, title: str, op: Op, severity: str | None,
                                            how: str) -> None:
    sql = render(op)
    [statement] = statements(sql)
    with shop.connect() as conn:
        catalog = sqlscan_mysql.read_catalog(conn, [("r", sql)])
    found = {f.severity for f in sqlscan_mysql.scan([("r", sql)], catalog)}
    assert found == ({severity} if severity else set()), f"{title}: {found}"
    if how == "instant":
        shop.query(_with(statement, "ALGORITHM=INSTANT"))
    elif how == "online":
        shop.query(_with(statement, "ALGORITHM=INPLACE, LOCK=NONE"))
    else:  # blocks writes: the server cannot do it with concurrent DML, whichever algorithm it picks
        with pytest.raises(pymysql.err.MySQLError, match="LOCK=NONE is not supported"):
            shop.query(_with(statement, "LOCK=NONE"))
        shop.query(statement)
    assert shop.query("SELECT COUNT(*) FROM orders") == [(2,)]


def test_a_narrowing_is_destructive_and_the_server_cuts_values(shop: Database) -> None:
    sql = render(lambda op: op.alter_column("orders", "code", type_=sa.String(1)))
    with shop.connect() as conn:
        catalog = sqlscan_mysql.read_catalog(conn, [("r", sql)])
    [finding] = sqlscan_mysql.scan([("r", sql)], catalog)
    assert (finding.rule, finding.severity) == ("alter-column-type", "destructive")
    assert "from VARCHAR(20)" in finding.operation
    shop.query("UPDATE orders SET code = 'abc' WHERE id = 1")
    with pytest.raises(pymysql.err.DataError):  # strict mode refuses; without it the value would be cut
        shop.query(statements(sql)[0])
