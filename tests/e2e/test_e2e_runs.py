"""Rollbacks, restarts and concurrency on the real bed: the properties a production operator must keep.

The scenarios marked `on_every_engine` run on PostgreSQL and on MariaDB with the same code, where MariaDB's DDL
commits at once: a failed revision there is half-applied unless it failed at its first statement.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from alembic_operator import constants as c
from apps import Rev
from e2e import (
    BASE_REVISIONS,
    DROP_LEGACY,
    E2E,
    FAIL,
    FAILING,
    FAILING_AT_ONCE,
    GATE_TABLE,
    HALF_APPLIED,
    R3,
    SLOW,
    checksum,
    columns,
    connect,
    gated,
    has_table,
    on_every_engine,
    revision,
    slow,
)
from harness import wait_for

pytestmark = pytest.mark.bed

ADD_NOTE = "a0d0e0000001"
# A revision that destroys nothing, then the failing one: with one transaction per revision, ADD_NOTE commits.
ADD = Rev(ADD_NOTE, upgrade=['op.add_column("orders", sa.Column("note", sa.Text))'],
          downgrade=['op.drop_column("orders", "note")'])
FAIL_AFTER_ADD = Rev(FAILING.id, upgrade=FAILING.upgrade, downgrade=FAILING.downgrade)
ORDERS = "id, customer_id, total, legacy_code"


def fail_after_add(e2e: E2E) -> Rev:
    """The revision that fails after ADD_NOTE committed, leaving nothing of itself behind: on PostgreSQL its own
    transaction takes back the table it created; on MariaDB, where that table would stay, it fails at once."""
    return FAIL_AFTER_ADD if e2e.kind.transactional_ddl else FAILING_AT_ONCE


def prepared(e2e: E2E, revisions: list[Rev], per_migration: bool) -> tuple[Path, str]:
    """A project, the database at R3 with rows, and the checksums of those rows."""
    project = e2e.project(revisions, transaction_per_migration=per_migration)
    e2e.upgrade_directly(project, R3)
    e2e.seed()
    return project, rows(e2e)


def rows(e2e: E2E) -> str:
    return checksum(e2e.db, "orders", ORDERS) + checksum(e2e.db, "customers", "id, name")


def failed(e2e: E2E, name: str = "shop") -> dict[str, Any]:
    obj = e2e.cluster.wait_condition(name, "Stalled", timeout=180)
    assert obj["status"]["phase"] == "Failed", obj["status"]
    return {x["type"]: x for x in obj["status"]["conditions"]} | {"status": obj["status"]}


@on_every_engine
def test_failed_revision_is_undone_and_loses_nothing(e2e: E2E) -> None:
    """PostgreSQL: the revision's transaction rolled back, nothing else to do. MariaDB: two of its DDL statements
    committed before the third failed (half-applied), so Auto restores the backup: identical rows, no leftovers."""
    project, before = prepared(e2e, [*BASE_REVISIONS, HALF_APPLIED], per_migration=False)
    e2e.cluster.create("shop", e2e.spec(project))
    conds = failed(e2e)
    transactional = e2e.kind.transactional_ddl
    assert conds["RolledBack"]["status"] == "True"
    expected = "TransactionRolledBack" if transactional else "Restored"
    assert conds["RolledBack"]["reason"] == expected, conds["RolledBack"]
    if not transactional:  # and it says why: which revision, how much of it committed
        assert f"revision {FAIL} is half-applied: 2 of its statement(s) committed" in conds["RolledBack"]["message"]
    assert conds["Stalled"]["reason"] == "JobFailed"
    assert conds["Migrated"]["status"] == "False"
    assert "total_positive" in conds["status"]["message"]  # the database's own words
    assert revision(e2e.db) == R3 and rows(e2e) == before
    assert not has_table(e2e.db, "shipments") and "note" not in columns(e2e.db, "orders")
    rollback = [] if transactional else ["restore-g1"]
    assert e2e.cluster.job_roles("shop") == sorted(["backup-g1", "migrate-g1", "plan-g1", *rollback])
    assert conds["status"]["history"][-1]["result"] == "RolledBack"
    e2e.cluster.wait_event("shop", "JobFailed", "Warning")


@on_every_engine
def test_auto_downgrades_committed_revisions_that_destroyed_nothing(e2e: E2E) -> None:
    project, before = prepared(e2e, [*BASE_REVISIONS, ADD, fail_after_add(e2e)], per_migration=True)
    e2e.cluster.create("shop", e2e.spec(project))
    conds = failed(e2e)
    assert conds["RolledBack"]["reason"] == "Downgraded", conds["RolledBack"]
    assert revision(e2e.db) == R3 and rows(e2e) == before
    assert e2e.cluster.job_roles("shop") == ["backup-g1", "downgrade-g1", "migrate-g1", "plan-g1"]


@on_every_engine
def test_auto_restores_when_a_committed_revision_destroyed_data(e2e: E2E) -> None:
    project, before = prepared(e2e, [*BASE_REVISIONS, DROP_LEGACY, fail_after_add(e2e)], per_migration=True)
    e2e.cluster.create("shop", e2e.spec(project, approval={"allowDestructive": True}))
    conds = failed(e2e)
    assert conds["RolledBack"]["reason"] == "Restored", conds["RolledBack"]
    assert revision(e2e.db) == R3
    assert rows(e2e) == before  # legacy_code is back, with its values
    assert e2e.cluster.job_roles("shop") == ["backup-g1", "migrate-g1", "plan-g1", "restore-g1"]


@on_every_engine
def test_a_plan_from_an_empty_database_that_fails_is_restored_to_an_empty_database(e2e: E2E) -> None:
    """The backup of a database at base holds nothing: restoring it drops every table the committed revisions
    made (MariaDB's restore once refused such a dump as "not a dump", and the rollback failed)."""
    failing = Rev(FAIL, upgrade=['op.execute("SELECT no_such_function()")'])  # fails whatever the rows
    project = e2e.project([*BASE_REVISIONS, failing], transaction_per_migration=True)
    e2e.cluster.create("shop", e2e.spec(project, rollback={"strategy": "Restore"}))
    conds = failed(e2e)
    assert conds["RolledBack"]["reason"] == "Restored", conds["RolledBack"]
    assert revision(e2e.db) is None
    with connect(e2e.db) as conn:
        assert sa.inspect(conn).get_table_names() == []
    assert e2e.cluster.job_roles("shop") == ["backup-g1", "migrate-g1", "plan-g1", "restore-g1"]


@on_every_engine
@pytest.mark.parametrize(("strategy", "reason", "role"), [
    ("Downgrade", "Downgraded", "downgrade-g1"),
    ("Restore", "Restored", "restore-g1"),
])
def test_explicit_strategies(e2e: E2E, strategy: str, reason: str, role: str) -> None:
    project, before = prepared(e2e, [*BASE_REVISIONS, ADD, fail_after_add(e2e)], per_migration=True)
    e2e.cluster.create("shop", e2e.spec(project, rollback={"strategy": strategy}))
    conds = failed(e2e)
    assert conds["RolledBack"]["reason"] == reason
    assert revision(e2e.db) == R3 and rows(e2e) == before
    assert role in e2e.cluster.job_roles("shop")


@on_every_engine
def test_strategy_none_only_reports(e2e: E2E) -> None:
    project, before = prepared(e2e, [*BASE_REVISIONS, ADD, fail_after_add(e2e)], per_migration=True)
    e2e.cluster.create("shop", e2e.spec(project, rollback={"strategy": "None"}))
    conds = failed(e2e)
    assert conds["RolledBack"]["status"] == "False" and conds["RolledBack"]["reason"] == "RollbackDisabled"
    assert revision(e2e.db) == ADD_NOTE and ADD_NOTE in conds["status"]["message"]
    assert rows(e2e) == before  # nothing destroyed, nothing undone
    assert e2e.cluster.job_roles("shop") == ["backup-g1", "migrate-g1", "plan-g1"]


# --- restarts -----------------------------------------------------------------------------------------------------


def _phase(e2e: E2E, name: str, phase: str, role: str) -> None:
    wait_for(lambda: (e2e.cluster.get(name).get("status") or {}).get("phase") == phase
             and any(j["metadata"]["labels"][c.ROLE_LABEL] == role for j in e2e.cluster.jobs(name)),
             120, f"phase {phase} with a {role} Job")


def test_operator_killed_during_backup_resumes(e2e: E2E) -> None:
    project = e2e.project([*BASE_REVISIONS, slow(SLOW, 1)])
    e2e.cluster.create("shop", e2e.spec(project))
    _phase(e2e, "shop", "BackingUp", "backup")
    e2e.operator.kill()
    wait_for(lambda: all(j["status"].get("succeeded") for j in e2e.cluster.jobs("shop")), 60, "the backup to end")
    e2e.operator.start()
    e2e.cluster.wait_condition("shop", "Ready", timeout=120)
    assert e2e.cluster.job_roles("shop") == ["backup-g1", "migrate-g1", "plan-g1"]
    assert e2e.cluster.get("shop")["status"]["backup"]["sha256"].startswith("sha256:")
    assert e2e.db.query("SELECT count(*) FROM runs") == [(1,)]


@on_every_engine
def test_operator_killed_during_migration_never_runs_it_twice(e2e: E2E) -> None:
    project = e2e.project([*BASE_REVISIONS, slow(SLOW, 4)])
    e2e.cluster.create("shop", e2e.spec(project))
    _phase(e2e, "shop", "Migrating", "migrate")
    e2e.operator.kill()
    e2e.operator.start()  # while the migration Job still runs
    e2e.cluster.wait_condition("shop", "Ready", timeout=120)
    assert e2e.db.query("SELECT count(*) FROM runs") == [(1,)]
    assert e2e.cluster.job_roles("shop") == ["backup-g1", "migrate-g1", "plan-g1"]
    assert len(e2e.cluster.get("shop")["status"]["history"]) == 1


def test_operator_killed_during_rollback_finishes_it(e2e: E2E) -> None:
    slow_down = Rev(ADD_NOTE, upgrade=ADD.upgrade,
                    downgrade=['op.execute("SELECT pg_sleep(4)")', 'op.drop_column("orders", "note")'])
    project, before = prepared(e2e, [*BASE_REVISIONS, slow_down, FAIL_AFTER_ADD], per_migration=True)
    e2e.cluster.create("shop", e2e.spec(project))
    _phase(e2e, "shop", "RollingBack", "downgrade")
    e2e.operator.kill()
    e2e.operator.start()
    conds = failed(e2e)
    assert conds["RolledBack"]["reason"] == "Downgraded"
    assert revision(e2e.db) == R3 and rows(e2e) == before
    assert e2e.cluster.job_roles("shop") == ["backup-g1", "downgrade-g1", "migrate-g1", "plan-g1"]


# --- concurrency, edits, deletion ---------------------------------------------------------------------------------


@on_every_engine
def test_two_resources_on_one_database_take_turns(e2e: E2E) -> None:
    project = e2e.project([*BASE_REVISIONS, gated(SLOW)])  # the first one's migration waits for the test
    e2e.cluster.create("first", e2e.spec(project))
    _phase(e2e, "first", "Migrating", "migrate")
    e2e.cluster.create("second", e2e.spec(project))
    e2e.cluster.wait_condition("second", "Reconciling", reason="WaitingForDatabase", timeout=120)
    msg = e2e.cluster.get("second")["status"]["message"]
    assert "first" in msg
    assert e2e.cluster.get("first")["status"]["phase"] == "Migrating"
    e2e.db.query(f"CREATE TABLE {GATE_TABLE} (id integer)")  # the gate opens: the first migration finishes
    e2e.cluster.wait_condition("first", "Ready", timeout=120)
    e2e.cluster.wait_condition("second", "Ready", timeout=120)
    assert e2e.db.query("SELECT count(*) FROM runs") == [(1,)]  # the second found the work done
    assert revision(e2e.db) == SLOW


def test_spec_edit_during_a_migration_is_queued(e2e: E2E) -> None:
    nxt = "e7e7e7e7e707"
    project = e2e.project([*BASE_REVISIONS, slow(SLOW, 4), slow(nxt, 0, down=SLOW)])
    e2e.cluster.create("shop", e2e.spec(project, target=SLOW))
    _phase(e2e, "shop", "Migrating", "migrate")
    e2e.cluster.patch("shop", {"spec": {"targetRevision": nxt}})
    wait_for(lambda: "queued" in (e2e.cluster.get("shop")["status"].get("message") or ""), 30, "the queued note")
    assert e2e.cluster.get("shop")["status"]["observedGeneration"] == 1
    obj = e2e.cluster.wait_condition("shop", "Ready", timeout=180)
    assert obj["status"]["currentRevision"] == nxt and obj["status"]["observedGeneration"] == 2
    assert [(h["generation"], h["to"], h["result"]) for h in obj["status"]["history"]] == [
        (1, SLOW, "Succeeded"), (2, nxt, "Succeeded")]


def test_deleting_during_a_migration_waits_for_it_and_keeps_the_backup(e2e: E2E) -> None:
    project = e2e.project([*BASE_REVISIONS, slow(SLOW, 4)])
    e2e.cluster.create("shop", e2e.spec(project))
    _phase(e2e, "shop", "Migrating", "migrate")
    e2e.cluster.delete("shop")
    obj = e2e.cluster.get("shop")
    assert obj["metadata"].get("deletionTimestamp")
    assert e2e.cluster.jobs("shop")[0]["status"].get("active") or any(
        j["metadata"]["labels"][c.ROLE_LABEL] == "migrate" and not j["status"].get("succeeded")
        for j in e2e.cluster.jobs("shop"))
    wait_for(lambda: not e2e.cluster.exists("shop"), 120, "the resource to go once the Job ended")
    assert revision(e2e.db) == SLOW  # the migration was not killed
    assert e2e.db.query("SELECT count(*) FROM runs") == [(1,)]
    assert list(e2e.backups.rglob("*.dump")), "the backup must outlive the resource"


def test_resource_deleted_when_idle_leaves_database_and_backups(e2e: E2E) -> None:
    project = e2e.project(BASE_REVISIONS)
    e2e.cluster.create("shop", e2e.spec(project))
    e2e.cluster.wait_condition("shop", "Ready")
    e2e.cluster.delete("shop")
    wait_for(lambda: not e2e.cluster.exists("shop"), 60, "the resource to go")
    assert revision(e2e.db) == R3
    assert list(e2e.backups.rglob("*.dump"))
