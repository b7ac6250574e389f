"""A lock timeout or a lost connection in the middle of a plan is a wait, not a failure, on the real bed: the
revisions before it committed whole, so the same approved plan continues from where the database is once the blocker
is gone (or the connection is back), and ends Ready with nothing downgraded, each revision run once.

On every engine: PostgreSQL with one transaction per revision, MariaDB where each revision commits anyway."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from alembic_operator import constants as c
from apps import Rev
from blocking import SECRET, blocker
from e2e import BASE_REVISIONS, E2E, GATE_TABLE, R3, gated, has_table, on_every_engine, revision
from harness import wait_for

pytestmark = pytest.mark.bed

COUNTED, ALTER = "a0e0e0000001", "a0e0e0000002"
# The first revision only counts its runs (table runs); the second needs orders' strongest lock, at its first
# statement (on MariaDB a statement before it would commit as the ALTER starts: a half-applied revision).
FIRST = Rev(COUNTED, upgrade=['op.execute("CREATE TABLE IF NOT EXISTS runs (rev varchar(20))")',
                              f'op.execute("INSERT INTO runs VALUES (\'{COUNTED}\')")'])
SECOND = Rev(ALTER, upgrade=['op.add_column("orders", sa.Column("note", sa.Text))'])
HOLDING = "SELECT count(*) FROM orders WHERE legacy_code <> '{secret}'"


@contextmanager
def holding_orders(e2e: E2E, request: pytest.FixtureRequest) -> Iterator[tuple[int, Callable[[], None]]]:
    """A transaction left open after reading orders (it keeps the table's lock): (its session id, its commit)."""
    if e2e.kind.transactional_ddl:
        with blocker(e2e.db, HOLDING) as conn:  # type: ignore[arg-type]
            yield conn.info.backend_pid, conn.commit
        return
    server = request.getfixturevalue("mariadb")
    with server.admin() as admin, admin.cursor() as cur:  # to name the blocker, the docs ask for PROCESS
        cur.execute("GRANT PROCESS ON *.* TO 'app'@'%'")
    try:
        with e2e.db.connect() as conn, conn.cursor() as cur:  # type: ignore[attr-defined]
            cur.execute("BEGIN")
            cur.execute(HOLDING.format(secret=SECRET))
            cur.execute("SELECT CONNECTION_ID()")
            yield int(cur.fetchone()[0]), conn.commit
    finally:
        with server.admin() as admin, admin.cursor() as cur:
            cur.execute("REVOKE PROCESS ON *.* FROM 'app'@'%'")


def runs(e2e: E2E) -> list[str]:
    return sorted(str(r[0]) for r in e2e.db.query("SELECT rev FROM runs"))


def migrate_commands(e2e: E2E) -> dict[str, list[str]]:
    return {j["metadata"]["name"]: j["spec"]["template"]["spec"]["containers"][0]["command"]
            for j in e2e.cluster.jobs("shop") if j["metadata"]["labels"][c.ROLE_LABEL] == "migrate"}


def finished_once(e2e: E2E, obj: dict[str, Any]) -> None:
    """Ready at the target, nothing downgraded or restored, one backup, one run in history."""
    assert obj["status"]["phase"] == "Succeeded" and obj["status"]["currentRevision"] == ALTER
    roles = e2e.cluster.job_roles("shop")
    assert not [r for r in roles if r.startswith(("downgrade", "restore"))], roles
    assert roles.count("backup-g1") == 1 and roles.count("plan-g1") == 1, roles
    [entry] = obj["status"]["history"]
    assert (entry["from"], entry["to"], entry["result"]) == (R3, ALTER, "Succeeded"), entry
    conds = {x["type"]: x for x in obj["status"]["conditions"]}
    assert "RolledBack" not in conds, conds


@on_every_engine
def test_a_later_revision_behind_a_held_lock_waits_and_the_plan_continues_once_the_blocker_ends(
        e2e: E2E, request: pytest.FixtureRequest) -> None:
    project = e2e.project([*BASE_REVISIONS, FIRST, SECOND], transaction_per_migration=True)
    e2e.upgrade_directly(project, R3)
    e2e.seed()
    started = time.monotonic()
    with holding_orders(e2e, request) as (pid, release):
        e2e.cluster.create("shop", e2e.spec(project))  # lockTimeout: the default 3s
        obj = e2e.cluster.wait_condition("shop", "Reconciling", reason="LockTimeout", timeout=300)
        message = obj["status"]["message"]
        print(f"\n{e2e.kind.name}: Reconciling/LockTimeout after {time.monotonic() - started:.0f}s: {message}")
        assert obj["status"]["phase"] == "Migrating" and f"pid {pid}" in message and SECRET not in message
        assert f"the database is at {COUNTED}; {COUNTED} committed whole and kept: the retry continues the plan " \
            f"from {COUNTED}; retrying in" in message
        assert revision(e2e.db) == COUNTED  # the first revision stays; nothing was undone
        event = e2e.cluster.wait_event("shop", "LockTimeout", "Warning")
        assert f"pid {pid}" in event["message"]
        release()
        released = time.monotonic()
    obj = e2e.cluster.wait_condition("shop", "Ready", timeout=240)
    print(f"{e2e.kind.name}: Ready {time.monotonic() - released:.0f}s after the blocker ended "
          f"({time.monotonic() - started:.0f}s in all); migrate Jobs: {sorted(migrate_commands(e2e))}")
    finished_once(e2e, obj)
    assert revision(e2e.db) == ALTER and runs(e2e) == [COUNTED]  # the first revision ran once
    commands = migrate_commands(e2e)
    first, *retries = sorted(commands)
    assert first == "shop-migrate-g1" and retries, commands
    assert commands[first][commands[first].index("--from") + 1] == R3
    for name in retries:  # the same plan, from where the database was
        assert commands[name][commands[name].index("--from") + 1] == COUNTED, commands[name]


def test_a_connection_lost_mid_plan_resumes_from_the_committed_revision(e2e: E2E) -> None:
    """PostgreSQL: the migration's backend is terminated (as a server restart does) while the second revision runs;
    the first committed, the second rolled back alone, and the retry continues from the first."""
    second = gated(ALTER)
    project = e2e.project([*BASE_REVISIONS, FIRST, second], transaction_per_migration=True)
    e2e.upgrade_directly(project, R3)
    e2e.seed()
    e2e.cluster.create("shop", e2e.spec(project))

    def migrating_second() -> int | None:  # the backend whose open transaction inserted the gated revision's row
        rows = e2e.db.query("SELECT pid FROM pg_locks WHERE relation = to_regclass('runs') "
                            "AND mode = 'RowExclusiveLock' AND pid <> pg_backend_pid()")
        return int(rows[0][0]) if rows and revision(e2e.db) == COUNTED else None

    pid = wait_for(migrating_second, 300, "the migration to run the gated revision")
    e2e.db.query(f"SELECT pg_terminate_backend({pid})")
    e2e.db.query(f"CREATE TABLE {GATE_TABLE} (id int)")
    cut = time.monotonic()
    obj = e2e.cluster.wait_condition("shop", "Ready", timeout=240)
    print(f"\npostgresql: Ready {time.monotonic() - cut:.0f}s after the migration's connection was cut")
    finished_once(e2e, obj)
    assert revision(e2e.db) == ALTER and has_table(e2e.db, "runs")
    assert runs(e2e) == [COUNTED, ALTER], runs(e2e)  # each committed once: the cut run of the second rolled back
    commands = migrate_commands(e2e)
    assert sorted(commands)[:2] == ["shop-migrate-g1", "shop-migrate-g1-1"], commands
    assert commands["shop-migrate-g1-1"][commands["shop-migrate-g1-1"].index("--from") + 1] == COUNTED
    assert any(e["reason"] == "DatabaseUnreachable" for e in e2e.cluster.events("shop")), \
        [e["reason"] for e in e2e.cluster.events("shop")]
