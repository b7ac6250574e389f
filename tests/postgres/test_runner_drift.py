"""The runner's `drift` command against a real PostgreSQL database: the live database vs the scripts and the models.

Runs go through test_runner's `run()` (a subprocess, as the Jobs run it, asserting the password appears nowhere).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_runner import RUNNER, SHOP, SHOP_REVS, Run, Runner, current_stack_only, run, tables, version

from apps import Rev, make_project
from bed.postgres import Database

pytestmark = pytest.mark.postgres

CUSTOMERS = Rev(
    "dddddddd0001",
    upgrade=[
        'op.create_table("customers", sa.Column("id", sa.Integer, primary_key=True),',
        '    sa.Column("name", sa.String(80), nullable=False), sa.Column("email", sa.String(200)),',
        '    sa.UniqueConstraint("email", name="uq_customers_email"))',
    ],
    downgrade=['op.drop_table("customers")'],
)
ORDERS = Rev(
    "dddddddd0002",
    upgrade=[
        'op.create_table("orders", sa.Column("id", sa.Integer, primary_key=True),',
        '    sa.Column("customer_id", sa.Integer, nullable=False),',
        '    sa.Column("total", sa.Numeric(10, 2), nullable=False),',
        '    sa.ForeignKeyConstraint(["customer_id"], ["customers.id"], name="fk_orders_customer"))',
        'op.create_index("ix_orders_customer_id", "orders", ["customer_id"])',
    ],
    downgrade=['op.drop_table("orders")'],
)
REVS = [CUSTOMERS, ORDERS]

MODELS = """\
customers = sa.Table(
    "customers", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(80), nullable=False),
    sa.Column("email", sa.String(200)),
    sa.UniqueConstraint("email", name="uq_customers_email"),
)
orders = sa.Table(
    "orders", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("customer_id", sa.Integer, nullable=False),
    sa.Column("total", sa.Numeric(10, 2), nullable=False),
    sa.ForeignKeyConstraint(["customer_id"], ["customers.id"], name="fk_orders_customer"),
    sa.Index("ix_orders_customer_id", "customer_id"),
    {extra}
)
"""


def models(extra: str = "") -> str:
    return MODELS.format(extra=extra)


def at_head(runner: Runner, app: Path, source: str | None = None) -> None:
    make_project(app, REVS, models=models() if source is None else source)
    r = runner("upgrade", "--from", "base", "--to", ORDERS.id)
    assert r.rc == 0, r.stderr


def drift(runner: Runner) -> Run:
    r = runner("drift")
    assert r.result["command"] == "drift"
    return r


def test_no_drift_at_head(runner: Runner, app: Path) -> None:
    at_head(runner, app)
    r = drift(runner)
    assert r.rc == 0, r.stderr
    assert r.result == {
        "ok": True, "command": "drift", "current": ORDERS.id, "currentHeads": [ORDERS.id], "heads": [ORDERS.id],
        "versionTable": True, "unknownRevision": False, "behindHead": False, "pending": [], "pendingCount": 0,
        "modelsComparable": True, "drifted": False, "differences": [], "differenceCount": 0,
    }
    assert "the schema matches the models" in r.stderr


def test_changes_made_by_hand_are_drift(runner: Runner, app: Path, database: Database) -> None:
    at_head(runner, app)
    for statement in (
        "ALTER TABLE orders ADD COLUMN note text",
        "ALTER TABLE customers ALTER COLUMN name TYPE varchar(50)",
        "ALTER TABLE customers ALTER COLUMN email SET NOT NULL",
        "CREATE TABLE legacy (id integer)",
        "DROP INDEX ix_orders_customer_id",
        "ALTER TABLE customers DROP CONSTRAINT uq_customers_email",
        "ALTER TABLE orders DROP CONSTRAINT fk_orders_customer",
    ):
        database.query(statement)
    r = drift(runner)
    assert r.rc == 0, r.stderr
    assert r.result["drifted"] is True
    assert r.result["modelsComparable"] is True and r.result["behindHead"] is False
    assert sorted(r.result["differences"]) == sorted([
        "remove_column orders.note (TEXT)",
        "modify_type customers.name VARCHAR(50) -> VARCHAR(80)",
        "modify_nullable customers.email NOT NULL -> NULL",
        "remove_table legacy",
        "add_index ix_orders_customer_id on orders (customer_id)",
        "add_constraint uq_customers_email unique on customers (email)",
        "add_fk fk_orders_customer on orders (customer_id) -> customers (id)",
    ])
    assert r.result["differenceCount"] == 7
    for line in r.result["differences"]:  # every difference is logged too
        assert f"drift: {line}" in r.stderr


def test_models_ahead_of_the_migrations(runner: Runner, app: Path) -> None:
    at_head(runner, app, models('sa.Column("note", sa.Text), sa.Column("paid", sa.Boolean, nullable=False),'))
    r = drift(runner)
    assert r.rc == 0, r.stderr
    assert r.result["differences"] == ["add_column orders.note (TEXT)", "add_column orders.paid (BOOLEAN, NOT NULL)"]
    assert r.result["drifted"] is True


def test_behind_head_lists_pending_and_skips_the_models(runner: Runner, app: Path) -> None:
    make_project(app, [*REVS, Rev("dddddddd0003", upgrade=['op.add_column("orders", sa.Column("x", sa.Integer))'])],
                 models=models())
    assert runner("upgrade", "--from", "base", "--to", CUSTOMERS.id).rc == 0
    r = drift(runner)
    assert r.rc == 0, r.stderr
    assert r.result["current"] == CUSTOMERS.id
    assert r.result["behindHead"] is True
    assert r.result["pending"] == [ORDERS.id, "dddddddd0003"] and r.result["pendingCount"] == 2
    assert r.result["modelsComparable"] is False
    assert r.result["drifted"] is False and r.result["differences"] == []
    assert "2 revision(s) behind head" in r.stderr


def test_unversioned_database(runner: Runner, app: Path, database: Database) -> None:
    make_project(app, REVS, models=models())
    r = drift(runner)
    assert r.rc == 0, r.stderr
    assert r.result["current"] is None and r.result["versionTable"] is False
    assert r.result["pending"] == [CUSTOMERS.id, ORDERS.id] and r.result["behindHead"] is True
    assert r.result["drifted"] is False and r.result["modelsComparable"] is False
    assert "alembic_version" not in tables(database)  # dont_mutate: the version table was not created


def test_unknown_revision_is_drift(runner: Runner, app: Path, database: Database) -> None:
    at_head(runner, app)
    database.query("UPDATE alembic_version SET version_num = 'ffffffffffff'")
    r = drift(runner)
    assert r.rc == 0, r.stderr
    assert r.result["unknownRevision"] is True and r.result["drifted"] is True
    assert r.result["differences"] == ["the database is at ffffffffffff, unknown to the scripts"]
    assert r.result["modelsComparable"] is False and r.result["pending"] == []
    assert version(database) == "ffffffffffff"


def test_no_target_metadata(runner: Runner, app: Path) -> None:
    make_project(app, REVS)
    assert runner("upgrade", "--from", "base", "--to", ORDERS.id).rc == 0
    r = drift(runner)
    assert r.rc == 4
    assert r.result["ok"] is False and r.result["reason"] == "NoTargetMetadata"
    assert "target_metadata" in r.result["message"] and "env.py" in r.result["message"]
    assert r.result["current"] == ORDERS.id


def catalog(database: Database) -> list[tuple[object, ...]]:
    """The public schema as the catalog has it, plus the version table's and the tables' contents."""
    rows = database.query(
        "SELECT c.relname, c.relkind, c.relfilenode::text, a.attname, format_type(a.atttypid, a.atttypmod), "
        "a.attnotnull FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
        "WHERE n.nspname = 'public' ORDER BY 1, 4"
    )
    rows += database.query(
        "SELECT conname, contype, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE connamespace = 'public'::regnamespace ORDER BY 1"
    )
    rows += database.query("SELECT 'version', version_num FROM alembic_version")
    rows += database.query("SELECT 'customers', id, name, email FROM customers ORDER BY id")
    return rows


def written_since(database: Database, xid: int) -> list[tuple[object, ...]]:
    """Rows (of the schema's catalogs and tables) written by transactions newer than `xid`."""
    newer = f"xmin::text::bigint > {xid % 2**32}"
    public = "'public'::regnamespace"
    return database.query(
        f"SELECT 'pg_class', relname FROM pg_class WHERE relnamespace = {public} AND {newer} "
        f"UNION ALL SELECT 'pg_attribute', attname FROM pg_attribute WHERE {newer} AND attrelid IN "
        f"(SELECT oid FROM pg_class WHERE relnamespace = {public}) "
        f"UNION ALL SELECT 'pg_constraint', conname FROM pg_constraint WHERE {newer} "
        f"UNION ALL SELECT 'pg_namespace', nspname FROM pg_namespace WHERE {newer} "
        f"UNION ALL SELECT 'alembic_version', version_num FROM alembic_version WHERE {newer} "
        f"UNION ALL SELECT 'customers', name FROM customers WHERE {newer}"
    )


def test_drift_writes_nothing(runner: Runner, app: Path, database: Database) -> None:
    at_head(runner, app)
    database.query("INSERT INTO customers (name, email) VALUES ('Ada', 'ada@example.com')")
    database.query("ALTER TABLE orders ADD COLUMN note text")
    before = catalog(database)
    xid = int(str(database.query("SELECT txid_current()")[0][0]))
    r = drift(runner)
    assert r.rc == 0 and r.result["drifted"] is True, r.stderr
    assert catalog(database) == before
    assert written_since(database, xid) == []


def test_drift_rolls_back_what_env_py_did(runner: Runner, app: Path, database: Database) -> None:
    at_head(runner, app)
    env = app / "migrations" / "env.py"
    online = "        with context.begin_transaction():\n            context.run_migrations()\n"
    source = env.read_text()
    assert source.count(online) == 1
    env.write_text(source.replace(online, (
        "        with context.begin_transaction():\n"
        "            connection.exec_driver_sql('CREATE TABLE sneaky (id integer)')\n"
        "            context.run_migrations()\n"
        "        connection.exec_driver_sql('CREATE TABLE after_migrations (id integer)')\n"
        "        connection.commit()\n"
    )))
    r = drift(runner)
    assert r.rc == 0, r.stderr
    assert r.result["differences"] == ["remove_table sneaky"]  # seen inside the transaction...
    assert not {"sneaky", "after_migrations"} & tables(database)  # ...which was rolled back


def test_many_differences_are_trimmed(runner: Runner, app: Path, database: Database) -> None:
    at_head(runner, app)
    database.query(";".join(f"CREATE TABLE hand_made_{i:03d} (id integer)" for i in range(150)))
    r = drift(runner)  # run() asserts that the result fits in 3500 bytes
    assert r.rc == 0, r.stderr
    assert r.result["differenceCount"] == 150
    assert r.result["differencesTruncated"] is True
    assert 0 < len(r.result["differences"]) <= 60
    assert all(line.startswith("remove_table hand_made_") for line in r.result["differences"])
    assert r.result["drifted"] is True


def test_unreachable_database(database: Database, app: Path) -> None:
    make_project(app, REVS, models=models())
    url = database.url.replace(f":{database.port}/", ":1/")
    r = run(app, url, "drift", secrets=(database.password, url))
    assert r.rc == 5
    assert r.result["reason"] == "DatabaseUnreachable"


@current_stack_only
def test_shop_at_head_has_not_drifted(database: Database, tmp_path: Path) -> None:
    lone = tmp_path / "alembic-operator" / "runner.pyz"
    lone.parent.mkdir()
    shutil.copy(RUNNER, lone)

    def shop(*args: str) -> Run:
        return run(SHOP, database.url, *args, runner=lone, secrets=(database.password, database.url))

    assert shop("upgrade", "--from", "base", "--to", SHOP_REVS[2]).rc == 0
    r = shop("drift")
    assert r.rc == 0, r.stderr
    assert r.result["pending"] == SHOP_REVS[3:] and r.result["modelsComparable"] is False
    assert shop("upgrade", "--from", SHOP_REVS[2], "--to", SHOP_REVS[-1]).rc == 0
    r = shop("drift")
    assert r.result["drifted"] is False and r.result["modelsComparable"] is True, r.result
    database.query("ALTER TABLE shipments DROP COLUMN carrier")
    r = shop("drift")
    assert r.result["drifted"] is True
    assert [line.split(" (")[0] for line in r.result["differences"]] == ["add_column shipments.carrier"]


def test_writes_during_the_comparison_are_refused(runner: Runner, app: Path, database: Database) -> None:
    """The comparison runs in a READ ONLY transaction: an env.py hook that writes fails, and nothing is written."""
    at_head(runner, app)
    env = app / "migrations" / "env.py"
    source = env.read_text()
    hook = (
        "def include_object(obj, name, type_, reflected, compare_to):\n"
        "    context.get_context().connection.exec_driver_sql('CREATE TABLE sneaky (id integer)')\n"
        "    return True\n\n\n"
        "def run_migrations_online() -> None:\n"
    )
    source = source.replace("def run_migrations_online() -> None:\n", hook)
    source = source.replace("            target_metadata=target_metadata,\n            transaction_per_migration",
                            "            target_metadata=target_metadata,\n            include_object=include_object,\n"
                            "            transaction_per_migration")
    assert "include_object=include_object" in source
    env.write_text(source)
    r = drift(runner)
    assert r.rc == 4, r.stderr
    assert r.result["reason"] == "DatabaseError"
    assert "read-only transaction" in r.result["message"]
    assert "sneaky" not in tables(database)
