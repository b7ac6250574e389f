"""Locks and true findings on the real bed (part of issue 13): CREATE INDEX CONCURRENTLY in an autocommit block
migrates and, when a later revision fails, is rolled back by a downgrade; the plan classifies column type changes
against the live database (widenings are notes, a narrowing is destructive) and, with requireForLocking, holds a
locking plan for approval of its hash."""

from __future__ import annotations

from typing import Any

import pytest

from alembic_operator import constants as c
from alembic_operator import sqlscan
from apps import Rev
from e2e import BASE_REVISIONS, E2E, FAILING, R3, checksum, revision

pytestmark = pytest.mark.bed

INDEX = "1d0c0c0c0c01"
WIDEN, NARROW = "1d0c0c0c0c02", "1d0c0c0c0c03"
CONCURRENT_INDEX = Rev(INDEX, upgrade=[
    "with op.get_context().autocommit_block():",
    '    op.create_index("ix_orders_total", "orders", ["total"], postgresql_concurrently=True)',
], downgrade=[
    "with op.get_context().autocommit_block():",
    '    op.drop_index("ix_orders_total", table_name="orders", postgresql_concurrently=True)',
])
FAIL_AFTER_INDEX = Rev(FAILING.id, upgrade=FAILING.upgrade, downgrade=FAILING.downgrade)
# Widenings PostgreSQL does in the catalog, and an index built the blocking way on a table with rows.
WIDENINGS = Rev(WIDEN, down_revision=R3, upgrade=[
    'op.alter_column("orders", "legacy_code", type_=sa.String(200))',
    'op.alter_column("customers", "name", type_=sa.Text())',
    'op.alter_column("orders", "total", type_=sa.Numeric(12, 2))',
    'op.alter_column("customers", "email", type_=sa.String(120))',
    'op.create_index("ix_customers_name", "customers", ["name"])',
], downgrade=[
    'op.drop_index("ix_customers_name", table_name="customers")',
    'op.alter_column("orders", "total", type_=sa.Numeric(10, 2))',
    'op.alter_column("customers", "name", type_=sa.String(80))',
    'op.alter_column("orders", "legacy_code", type_=sa.String(20))',
])
NARROWING = Rev(NARROW, upgrade=['op.alter_column("orders", "legacy_code", type_=sa.String(9))'],
                downgrade=['op.alter_column("orders", "legacy_code", type_=sa.String(200))'])


def indexes(e2e: E2E) -> set[str]:
    return {str(r[0]) for r in e2e.db.query("SELECT indexname FROM pg_indexes WHERE tablename = 'orders'")}


def status(e2e: E2E, name: str = "shop") -> dict[str, Any]:
    return dict(e2e.cluster.get(name)["status"])


def test_create_index_concurrently_migrates_and_is_rolled_back_by_a_downgrade(e2e: E2E) -> None:
    # env.py runs everything in one transaction: the runner switches to one per revision for this project.
    project = e2e.project([*BASE_REVISIONS, CONCURRENT_INDEX, FAIL_AFTER_INDEX], transaction_per_migration=False)
    e2e.upgrade_directly(project, R3)
    e2e.seed()
    orders = checksum(e2e.db, "orders")
    e2e.cluster.create("shop", e2e.spec(project))
    obj = e2e.cluster.wait_condition("shop", "Stalled", timeout=240)
    st = obj["status"]
    conds = {x["type"]: x for x in st["conditions"]}
    assert st["phase"] == "Failed", st
    # The plan rendered and scanned the autocommit block: no finding for the index (the failing revision's CHECK,
    # added without NOT VALID on a table with rows, is the one locking operation).
    assert st["plan"]["revisions"] == [INDEX, FAILING.id]
    assert st["plan"]["destructive"] == [] and st["plan"]["lockingCount"] == 1
    assert [f["operation"] for f in st["plan"]["locking"]] == [
        f"ADD CHECK total_positive ON orders (revision {FAILING.id})"]
    assert st["plan"]["warnings"] == [f"ADD CHECK total_positive ON orders (revision {FAILING.id})"]
    assert conds["ApprovalRequired"]["reason"] == "NoDestructiveChanges"
    # The index revision committed (with its index), the failing one did not: the downgrade dropped the index.
    assert conds["RolledBack"]["status"] == "True" and conds["RolledBack"]["reason"] == "Downgraded", conds
    assert "total_positive" in st["message"]
    assert revision(e2e.db) == R3 and indexes(e2e) == {"orders_pkey"}
    assert checksum(e2e.db, "orders") == orders
    assert e2e.cluster.job_roles("shop") == ["backup-g1", "downgrade-g1", "migrate-g1", "plan-g1"]
    # The same revision alone migrates: the index is there, built without blocking writes.
    e2e.cluster.patch("shop", {"spec": {"targetRevision": INDEX}})
    e2e.cluster.wait_condition("shop", "Ready", timeout=240)
    assert revision(e2e.db) == INDEX and indexes(e2e) == {"orders_pkey", "ix_orders_total"}
    valid = e2e.db.query("SELECT indisvalid FROM pg_index WHERE indexrelid = 'ix_orders_total'::regclass")
    assert valid == [(True,)]


def test_plan_classifies_type_changes_and_holds_locking_changes(e2e: E2E) -> None:
    project = e2e.project([*BASE_REVISIONS, WIDENINGS, NARROWING])
    e2e.upgrade_directly(project, R3)
    e2e.seed()
    spec = e2e.spec(project, target=WIDEN, approval={"requireForLocking": True})
    e2e.cluster.create("shop", spec)
    obj = e2e.cluster.wait_condition("shop", "Stalled", reason="LockingChangesNotApproved", timeout=240)
    plan = obj["status"]["plan"]
    # Widenings are not destructive: nothing to approve for them, a note each, naming the type they widen.
    assert plan["destructive"] == []
    assert plan["notes"] == [
        f"ALTER COLUMN orders.legacy_code TYPE varchar(200) (from varchar(20): a widening PostgreSQL does without a "
        f"rewrite) (revision {WIDEN})",
        f"ALTER COLUMN customers.name TYPE text (from varchar(80): a widening PostgreSQL does without a rewrite) "
        f"(revision {WIDEN})",
        f"ALTER COLUMN orders.total TYPE numeric(12, 2) (from numeric(10, 2): a widening PostgreSQL does without a "
        f"rewrite) (revision {WIDEN})",
        f"ALTER COLUMN customers.email TYPE varchar(120) (from varchar(120): the same type: nothing changes) "
        f"(revision {WIDEN})",
    ]
    assert plan["lockingCount"] == 1
    assert plan["locking"] == [{"operation": f"CREATE INDEX ix_customers_name ON customers (revision {WIDEN})",
                                "rule": "create-index-not-concurrently",
                                "safely": sqlscan.RULES["create-index-not-concurrently"].safely}]
    assert plan["hash"] in obj["status"]["message"] and "CREATE INDEX ix_customers_name" in obj["status"]["message"]
    assert e2e.cluster.job_roles("shop") == ["plan-g1"] and revision(e2e.db) == R3  # nothing ran
    e2e.cluster.wait_event("shop", "LockingChangesNotApproved", "Warning")
    e2e.cluster.patch("shop", {"metadata": {"annotations": {c.APPROVE_ANNOTATION: plan["hash"]}}})
    e2e.cluster.wait_condition("shop", "Ready", timeout=240)
    assert revision(e2e.db) == WIDEN
    types = dict(e2e.db.query("SELECT column_name, data_type || coalesce('(' || character_maximum_length || ')', '')"
                              " FROM information_schema.columns WHERE table_name = 'orders'"))
    assert types["legacy_code"] == "character varying(200)"
    # A narrowing is destructive, and says so against the type the column has now.
    e2e.cluster.patch("shop", {"spec": {"targetRevision": NARROW}})
    obj = e2e.cluster.wait_condition("shop", "Stalled", reason="DestructiveChangesNotApproved", timeout=240)
    assert obj["status"]["plan"]["destructive"] == [
        f"ALTER COLUMN orders.legacy_code TYPE varchar(9) (from varchar(200): a narrowing or lossy cast) "
        f"(revision {NARROW})"]
    assert revision(e2e.db) == WIDEN
