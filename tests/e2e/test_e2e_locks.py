"""Never take production down with a lock, on the real bed: a long transaction holds a lock on orders; the
migration (an ALTER TABLE on orders) gives up after spec.migrations.lockTimeout, is retried, names the blocker in
status, an Event and its Job's log, and succeeds once the blocker ends, while the app's reader on orders never
waits much longer than the lock timeout."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest

from alembic_operator import constants as c
from apps import Rev
from blocking import BLOCKER_APP, SECRET, Reader, blocker
from e2e import BASE_REVISIONS, E2E, R3, revision
from harness import wait_for

pytestmark = pytest.mark.bed

ADD_NOTE = "a0d0e0000013"
ADD = Rev(ADD_NOTE, upgrade=['op.add_column("orders", sa.Column("note", sa.Text))'],
          downgrade=['op.drop_column("orders", "note")'])
LOCK_TIMEOUT = 3.0  # seconds: the default spec.migrations.lockTimeout


@pytest.fixture
def reader(e2e: E2E) -> Iterator[Reader]:
    """The app's reader on orders; stopped before the database goes, whatever the test did."""
    app = Reader(e2e.db)
    yield app
    app.finish()


def job_failed(e2e: E2E, name: str) -> bool:
    return any(j["metadata"]["name"] == name and j["status"].get("failed") for j in e2e.cluster.jobs("shop"))


def test_a_blocked_migration_times_out_retries_names_the_blocker_and_succeeds_once_it_ends(e2e: E2E,
                                                                                           reader: Reader) -> None:
    project = e2e.project([*BASE_REVISIONS, ADD])
    e2e.upgrade_directly(project, R3)
    e2e.seed()
    with blocker(e2e.db, "SELECT count(*) FROM orders WHERE legacy_code <> '{secret}'") as report:
        pid = report.info.backend_pid
        reader.start()
        e2e.cluster.create("shop", e2e.spec(project))  # lockTimeout: the default
        obj = e2e.cluster.wait_condition("shop", "Reconciling", reason="LockTimeout", timeout=300)
        message = obj["status"]["message"]
        print(f"\nReconciling/LockTimeout: {message}")
        assert obj["status"]["phase"] == "Migrating"
        assert f"pid {pid} (user {e2e.db.user}, application '{BLOCKER_APP}'" in message
        assert "idle in transaction" in message and "for a lock on orders" in message
        assert "query 'SELECT count(*) FROM orders WHERE legacy_code <> ?'" in message and SECRET not in message
        assert "3000 ms, spec.migrations.lockTimeout" in message
        assert re.search(r"nothing was changed; retrying in \d+s \(attempt 2 of 6\)$", message), message
        event = e2e.cluster.wait_event("shop", "LockTimeout", "Warning")
        assert f"pid {pid}" in event["message"]
        # The first retry times out too while the blocker stays; then the blocker ends (its report is done).
        wait_for(lambda: job_failed(e2e, "shop-migrate-g1-1"), 120, "the first retry to time out as well")
        report.commit()
        released = time.monotonic()
    obj = e2e.cluster.wait_condition("shop", "Ready", timeout=180)
    longest = reader.finish()
    print(f"the migration succeeded {time.monotonic() - released:.0f}s after the blocker ended; the app's reader "
          f"ran {reader.queries} queries on orders meanwhile, the longest waited {longest:.2f}s "
          f"(lockTimeout {LOCK_TIMEOUT:.0f}s)")
    assert revision(e2e.db) == ADD_NOTE and obj["status"]["currentRevision"] == ADD_NOTE
    assert longest < LOCK_TIMEOUT + 2, f"the app waited {longest:.2f}s behind the migration"
    migrate_jobs = {j["metadata"]["name"]: j for j in e2e.cluster.jobs("shop")
                    if j["metadata"]["labels"][c.ROLE_LABEL] == "migrate"}
    assert sorted(migrate_jobs)[:2] == ["shop-migrate-g1", "shop-migrate-g1-1"], sorted(migrate_jobs)
    command = migrate_jobs["shop-migrate-g1"]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--db-lock-timeout-ms") + 1] == "3000"
    # The Job's log named the blocker while the migration waited.
    logs = e2e.bed.kubectl("logs", "-n", e2e.ns, "job/shop-migrate-g1", "-c", "migrate")
    assert f"revision {ADD_NOTE} waits for a lock on orders held by pid {pid}" in logs.stdout, logs.stdout[-2000:]
    assert SECRET not in logs.stdout


def test_a_blocker_that_stays_stalls_the_run_with_lock_timeout_and_the_fix_then_an_edit_migrates(
        e2e: E2E, reader: Reader) -> None:
    project = e2e.project([*BASE_REVISIONS, ADD])
    e2e.upgrade_directly(project, R3)
    e2e.seed()
    with blocker(e2e.db, "LOCK TABLE orders IN ACCESS SHARE MODE") as report:
        pid = report.info.backend_pid
        reader.start()
        spec = e2e.spec(project)
        spec["migrations"]["lockTimeout"] = "2s"
        e2e.cluster.create("shop", spec)
        obj = e2e.cluster.wait_condition("shop", "Stalled", reason="LockTimeout", timeout=600)
        longest = reader.finish()
    print(f"\nStalled/LockTimeout: {obj['status']['message']}\nthe app's reader ran {reader.queries} queries on "
          f"orders through six timed-out attempts, the longest waited {longest:.2f}s (lockTimeout 2s)")
    status = obj["status"]
    conds = {x["type"]: x for x in status["conditions"]}
    assert status["phase"] == "Failed" and conds["RolledBack"]["reason"] == "TransactionRolledBack"
    assert f"pid {pid}" in status["message"] and "(attempt 6 of 6)" in status["message"]
    assert status["message"].endswith("raise spec.migrations.lockTimeout, then edit the resource to try again.")
    assert revision(e2e.db) == R3
    assert len([j for j in e2e.cluster.jobs("shop") if j["metadata"]["labels"][c.ROLE_LABEL] == "migrate"]) == 6
    assert longest < 2 + 2, f"the app waited {longest:.2f}s behind the migration"
    # The blocker is gone; the runbook's fix: edit the resource.
    e2e.cluster.patch("shop", {"spec": {"migrations": {"lockTimeout": "5s"}}})
    obj = e2e.cluster.wait_condition("shop", "Ready", timeout=240)
    assert revision(e2e.db) == ADD_NOTE and obj["status"]["observedGeneration"] == 2
