"""The decision function, without a cluster: each step, each Stalled reason, each rollback path, kstatus rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from alembic_operator import constants as c
from alembic_operator.api import parse_status
from alembic_operator.observation import DatabaseObservation, JobObservation, Observation
from alembic_operator.reconcile import Decision, decide, plan_hash

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
SPEC: dict[str, Any] = {
    "database": {"urlSecretRef": {"name": "shop-db", "key": "url"}},
    "migrations": {"image": "shop:1"},
    "targetRevision": "head",
    "backup": {"volume": {"emptyDir": {}}},
}
PLAN_OK = {"ok": True, "current": "r1", "target": "r3", "revisions": ["r2", "r3"], "destructive": [],
           "findings": [], "sqlSha256": "abc"}
PLAN_DESTRUCTIVE = {**PLAN_OK, "destructive": ["DROP COLUMN orders.legacy (revision r3)"],
                    "findings": [{"rule": "drop-column", "severity": "destructive", "revision": "r3",
                                  "operation": "DROP COLUMN orders.legacy"}]}


def observe(status: dict[str, Any] | None = None, *, generation: int = 1, spec: dict[str, Any] | None = None,
            db: DatabaseObservation | None = None, jobs: dict[str, JobObservation] | None = None,
            annotations: dict[str, str] | None = None, now: datetime = NOW, busy: str | None = None) -> Observation:
    return Observation(
        name="shop", namespace="shop", generation=generation, spec=spec or SPEC, annotations=annotations or {},
        status=parse_status(status or {"observedGeneration": -1}), database=db or DatabaseObservation(revision="r1"),
        jobs=jobs or {}, now=now, busy_with=busy,
    )


def cond(d: Decision, type_: str) -> dict[str, Any]:
    found = next((x for x in d.status.get("conditions") or [] if x["type"] == type_), None)
    assert found is not None, f"no {type_} condition"
    return dict(found)


def summary(d: Decision) -> tuple[str, str, str]:
    return tuple(cond(d, t)["status"] for t in (c.READY, c.RECONCILING, c.STALLED))  # type: ignore[return-value]


def done(job: str, result: dict[str, Any] | None, state: str = "succeeded", instance: int = 0) -> JobObservation:
    return JobObservation(name=f"shop-{job}-g1" + (f"-{instance}" if instance else ""), state=state,  # type: ignore[arg-type]
                          result=result, instance=str(instance) if instance else None)


def advance(d: Decision, **kw: Any) -> Decision:
    return decide(observe(d.status, **kw))


def test_new_resource_starts_a_plan_job_and_is_reconciling() -> None:
    d = decide(observe())
    assert [j.role for j in d.jobs] == ["plan"]
    assert d.jobs[0].args == {"target": "head"}
    assert d.status["phase"] == "Planning"
    assert summary(d) == ("False", "True", "False")
    assert d.status["observedGeneration"] == 1
    assert all(x["observedGeneration"] == 1 for x in d.status["conditions"])
    assert d.events and d.events[0][1] == "Planning"


def test_explicit_target_already_in_database_is_ready_without_jobs() -> None:
    d = decide(observe(spec={**SPEC, "targetRevision": "r1"}))
    assert d.jobs == []
    assert d.status["phase"] == "Succeeded"
    assert summary(d) == ("True", "False", "False")


def test_plan_with_nothing_to_do_is_ready_without_backup_or_migration() -> None:
    d = decide(observe())
    d = advance(d, jobs={"plan": done("plan", {**PLAN_OK, "revisions": [], "target": "r1"})})
    assert d.jobs == []
    assert summary(d) == ("True", "False", "False")
    assert d.status["targetRevision"] == "r1"


def test_happy_path_plan_backup_migrate_verify() -> None:
    d = decide(observe())
    d = advance(d, jobs={"plan": done("plan", PLAN_OK)})
    assert [j.role for j in d.jobs] == ["backup"]
    assert d.status["phase"] == "BackingUp"
    assert cond(d, c.APPROVAL_REQUIRED)["status"] == "False"
    backup = {"ok": True, "location": "pvc/b/shop/shop/x.dump", "file": "/backups/shop/shop/x.dump",
              "sizeBytes": 10, "sha256": "sha256:aa", "revision": "r1", "completedAt": "2026-11-24T12:00:00Z"}
    d = advance(d, jobs={"plan": done("plan", PLAN_OK), "backup": done("backup", backup)})
    assert [j.role for j in d.jobs] == ["migrate"]
    assert d.jobs[0].args == {"from": "r1", "to": "r3"}
    assert d.status["backup"]["sha256"] == "sha256:aa"
    assert cond(d, c.BACKUP_SUCCEEDED)["status"] == "True"
    jobs = {"plan": done("plan", PLAN_OK), "backup": done("backup", backup), "migrate": done("migrate", {"ok": True})}
    d = advance(d, jobs=jobs, db=DatabaseObservation(revision="r3"))
    assert d.status["phase"] == "Succeeded"
    assert summary(d) == ("True", "False", "False")
    assert cond(d, c.MIGRATED)["status"] == "True"
    assert d.status["currentRevision"] == "r3"
    assert d.status["history"][-1]["result"] == "Succeeded"
    assert d.status["history"][-1]["backup"] == "pvc/b/shop/shop/x.dump"
    # Idle afterwards: no new jobs, stays Ready.
    again = advance(d, jobs=jobs, db=DatabaseObservation(revision="r3"))
    assert again.jobs == [] and summary(again) == ("True", "False", "False") and again.events == []


def test_migration_job_success_but_wrong_revision_is_a_failure() -> None:
    status = _at_migrating()
    report = {"ok": True, "applied": ["r2", "r3"], "revision": "r3"}
    d = decide(observe(status, jobs={"migrate": done("migrate", report)}, db=DatabaseObservation("r2")))
    # The Job left the database at r3; something else took it to r2 since: nothing of that is ours to undo.
    assert d.jobs == [] and d.status["phase"] == "Failed"
    assert "not r3" in cond(d, c.MIGRATED)["message"]
    assert cond(d, c.STALLED)["reason"] == "DatabaseMoved" and cond(d, c.ROLLED_BACK)["reason"] == "DatabaseMoved"


@pytest.mark.parametrize("reason", ["MultipleHeads", "UnknownRevision", "DowngradeNotSupported"])
def test_plan_errors_stall_with_the_runner_reason(reason: str) -> None:
    d = decide(observe())
    d = advance(d, jobs={"plan": done("plan", {"ok": False, "reason": reason, "message": "explain"}, "failed")})
    assert d.status["phase"] == "Failed"
    assert summary(d) == ("False", "False", "True")
    assert cond(d, c.STALLED)["reason"] == reason
    assert d.events[-1][0] == "Warning"


def test_plan_job_crash_is_plan_failed_with_details() -> None:
    d = decide(observe())
    d = advance(d, jobs={"plan": JobObservation("shop-plan-g1", "failed", None, "DeadlineExceeded: too long")})
    assert cond(d, c.STALLED)["reason"] == "PlanFailed"
    assert "DeadlineExceeded" in d.status["message"]


@pytest.mark.parametrize(("db", "reason"), [
    (DatabaseObservation(error_reason="SecretNotFound", error_message="Secret shop/x does not exist"),
     "SecretNotFound"),
    (DatabaseObservation(error_reason="InvalidDatabaseURL", error_message="bad"), "InvalidDatabaseURL"),
])
def test_secret_problems_stall_at_once(db: DatabaseObservation, reason: str) -> None:
    d = decide(observe(db=db))
    assert summary(d) == ("False", "False", "True")
    assert cond(d, c.STALLED)["reason"] == reason
    assert d.jobs == []
    assert d.requeue_after  # and it keeps looking, so creating the Secret recovers


def test_unreachable_database_reconciles_with_backoff_then_stalls() -> None:
    down = DatabaseObservation(error_reason="DatabaseUnreachable", error_message="refused", transient=True)
    d = decide(observe(db=down))
    assert summary(d) == ("False", "True", "False")
    assert cond(d, c.RECONCILING)["reason"] == "DatabaseUnreachable"
    first = d.requeue_after
    d = advance(d, db=down, now=NOW + timedelta(seconds=30))
    assert d.requeue_after and first and d.requeue_after > first
    d = advance(d, db=down, now=NOW + timedelta(minutes=6))
    assert summary(d) == ("False", "False", "True")
    d = advance(d, now=NOW + timedelta(minutes=7))  # it comes back: planning resumes
    assert [j.role for j in d.jobs] == ["plan"] and summary(d) == ("False", "True", "False")


def test_destructive_plan_waits_for_approval_of_exactly_that_plan() -> None:
    d = decide(observe())
    jobs = {"plan": done("plan", PLAN_DESTRUCTIVE)}
    d = advance(d, jobs=jobs)
    assert d.status["phase"] == "AwaitingApproval"
    assert summary(d) == ("False", "False", "True")
    assert cond(d, c.STALLED)["reason"] == "DestructiveChangesNotApproved"
    assert cond(d, c.APPROVAL_REQUIRED)["status"] == "True"
    assert d.status["plan"]["destructive"] == ["DROP COLUMN orders.legacy (revision r3)"]
    h = d.status["plan"]["hash"]
    assert h == plan_hash(PLAN_DESTRUCTIVE, "shop:1") and h in d.status["message"]
    assert d.jobs == []
    wrong = advance(d, jobs=jobs, annotations={c.APPROVE_ANNOTATION: "sha256:other"})
    assert wrong.status["phase"] == "AwaitingApproval"
    ok = advance(d, jobs=jobs, annotations={c.APPROVE_ANNOTATION: h})
    assert ok.status["phase"] == "BackingUp" and [j.role for j in ok.jobs] == ["backup"]
    assert cond(ok, c.APPROVAL_REQUIRED)["status"] == "False"


def test_allow_destructive_skips_the_wait() -> None:
    spec = {**SPEC, "approval": {"allowDestructive": True}}
    d = decide(observe(spec=spec))
    d = advance(d, spec=spec, jobs={"plan": done("plan", PLAN_DESTRUCTIVE)})
    assert d.status["phase"] == "BackingUp"


LOCKING = [{"operation": f"CREATE INDEX ix_{i} ON orders (revision r2)", "rule": "create-index-not-concurrently",
            "safely": "CREATE INDEX CONCURRENTLY in an autocommit block."} for i in range(7)]
PLAN_LOCKING = {**PLAN_OK, "warnings": [f["operation"] for f in LOCKING], "locking": LOCKING[:5],
                "lockingCount": 7, "notes": ["ALTER COLUMN orders.note TYPE text (from varchar(250): a widening "
                                             "PostgreSQL does without a rewrite) (revision r3)"]}


def test_locking_plan_runs_and_shows_its_findings_by_default() -> None:
    d = decide(observe())
    d = advance(d, jobs={"plan": done("plan", PLAN_LOCKING)})
    assert d.status["phase"] == "BackingUp"
    plan = d.status["plan"]
    assert plan["lockingCount"] == 7 and plan["locking"] == LOCKING[:5]
    assert plan["notes"] == PLAN_LOCKING["notes"] and "destructive" in plan and plan["destructive"] == []
    assert cond(d, c.APPROVAL_REQUIRED)["reason"] == "NoDestructiveChanges"


def test_require_for_locking_waits_for_approval_of_that_plan() -> None:
    spec = {**SPEC, "approval": {"requireForLocking": True}}
    jobs = {"plan": done("plan", PLAN_LOCKING)}
    d = advance(decide(observe(spec=spec)), spec=spec, jobs=jobs)
    assert d.status["phase"] == "AwaitingApproval" and d.jobs == []
    assert cond(d, c.STALLED)["reason"] == "LockingChangesNotApproved"
    assert cond(d, c.APPROVAL_REQUIRED)["reason"] == "LockingChangesNotApproved"
    message = d.status["message"]
    assert "CREATE INDEX ix_0 ON orders (revision r2); CREATE INDEX ix_1" in message and "and 4 more" in message
    assert "ix_3" not in message and len(message) < 600
    h = d.status["plan"]["hash"]
    assert h in message
    allowed = {**spec, "approval": {"requireForLocking": True, "allowDestructive": True}}
    still = advance(d, spec=allowed, jobs=jobs)  # allowDestructive does not approve locking changes
    assert cond(still, c.STALLED)["reason"] == "LockingChangesNotApproved"
    ok = advance(d, spec=spec, jobs=jobs, annotations={c.APPROVE_ANNOTATION: h})
    assert ok.status["phase"] == "BackingUp"
    assert cond(ok, c.APPROVAL_REQUIRED)["message"] == f"locking changes approved by {c.APPROVE_ANNOTATION}"


def test_destructive_and_locking_plan_names_the_destructive_first() -> None:
    spec = {**SPEC, "approval": {"requireForLocking": True}}
    both = {**PLAN_DESTRUCTIVE, "locking": LOCKING[:1], "lockingCount": 1}
    jobs = {"plan": done("plan", both)}
    d = advance(decide(observe(spec=spec)), spec=spec, jobs=jobs)
    assert cond(d, c.STALLED)["reason"] == "DestructiveChangesNotApproved"
    allowed = {**SPEC, "approval": {"requireForLocking": True, "allowDestructive": True}}
    d = advance(d, spec=allowed, jobs=jobs)
    assert cond(d, c.STALLED)["reason"] == "LockingChangesNotApproved"
    ok = advance(d, spec=allowed, jobs=jobs, annotations={c.APPROVE_ANNOTATION: d.status["plan"]["hash"]})
    assert ok.status["phase"] == "BackingUp"
    assert "destructive and locking changes approved" in cond(ok, c.APPROVAL_REQUIRED)["message"]


def test_plan_hash_changes_with_sql_and_image() -> None:
    assert plan_hash(PLAN_OK, "a") != plan_hash(PLAN_OK, "b")
    assert plan_hash(PLAN_OK, "a") != plan_hash({**PLAN_OK, "sqlSha256": "other"}, "a")


def test_a_second_resource_on_the_same_database_waits() -> None:
    d = decide(observe())
    d = advance(d, jobs={"plan": done("plan", PLAN_OK)}, busy="DatabaseMigration other/x")
    assert d.jobs == [] and cond(d, c.RECONCILING)["reason"] == "WaitingForDatabase"
    assert "other/x" in d.status["message"]


def test_backup_failure_stalls_without_touching_the_database() -> None:
    d = decide(observe())
    d = advance(d, jobs={"plan": done("plan", PLAN_OK)})
    broken = done("backup", {"ok": False, "reason": "BackupFailed", "message": "disk"}, "failed")
    d = advance(d, jobs={"plan": done("plan", PLAN_OK), "backup": broken})
    assert d.jobs == [] and d.status["phase"] == "Failed"
    assert cond(d, c.STALLED)["reason"] == "JobFailed"
    assert cond(d, c.BACKUP_SUCCEEDED)["status"] == "False"


def test_an_unwritable_backup_volume_stalls_under_its_own_reason_with_the_fix() -> None:
    d = decide(observe())
    d = advance(d, jobs={"plan": done("plan", PLAN_OK)})
    fix = "chown -R 65532:65532 DIR, or use a volume type that applies fsGroup"
    broken = done("backup", {"ok": False, "reason": "BackupVolumeNotWritable", "message": fix}, "failed")
    d = advance(d, jobs={"plan": done("plan", PLAN_OK), "backup": broken})
    assert d.jobs == [] and d.status["phase"] == "Failed"  # no migration started
    assert cond(d, c.STALLED)["reason"] == "BackupVolumeNotWritable" and fix in cond(d, c.STALLED)["message"]
    assert cond(d, c.BACKUP_SUCCEEDED)["reason"] == "BackupVolumeNotWritable"
    assert d.status["history"][-1]["reason"] == "BackupVolumeNotWritable"  # the run's record names the cause too
    # A backup that failed for a cause of the Job's own stays BackupFailed in the history.
    d = decide(observe())
    d = advance(d, jobs={"plan": done("plan", PLAN_OK)})
    crashed = done("backup", {"ok": False, "reason": "InternalError", "message": "boom"}, "failed")
    d = advance(d, jobs={"plan": done("plan", PLAN_OK), "backup": crashed})
    assert d.status["history"][-1]["reason"] == "BackupFailed"


BACKUP = {"ok": True, "location": "pvc/b/x.dump", "file": "/backups/x.dump", "sha256": "sha256:aa", "revision": "r1"}


def _at_migrating(spec: dict[str, Any] | None = None, plan: dict[str, Any] = PLAN_OK) -> dict[str, Any]:
    spec = spec or SPEC
    d = decide(observe(spec=spec))
    d = advance(d, spec=spec, jobs={"plan": done("plan", plan)},
                annotations={c.APPROVE_ANNOTATION: plan_hash(plan, "shop:1")})
    if d.status["phase"] == "BackingUp":
        d = advance(d, spec=spec, jobs={"plan": done("plan", plan), "backup": done("backup", BACKUP)})
    assert d.status["phase"] == "Migrating"
    return d.status


FAILED = {"ok": False, "reason": "MigrationFailed", "message": "check constraint violated", "applied": []}


def test_failed_transaction_already_rolled_back_needs_nothing_more() -> None:
    status = _at_migrating()
    d = decide(observe(status, jobs={"migrate": done("migrate", FAILED, "failed")}, db=DatabaseObservation("r1")))
    assert d.jobs == []
    assert d.status["phase"] == "Failed"
    assert summary(d) == ("False", "False", "True")
    assert cond(d, c.ROLLED_BACK)["status"] == "True"
    assert cond(d, c.ROLLED_BACK)["reason"] == "TransactionRolledBack"
    assert d.status["history"][-1]["result"] == "RolledBack"
    assert "check constraint violated" in d.status["message"]


def failed_at(db_after: str) -> dict[str, Any]:
    """The runner's report of a migration that committed the plan's revisions up to `db_after`, then failed."""
    applied = ["r2", "r3"][: ["r1", "r2", "r3"].index(db_after)]
    return {**FAILED, "applied": applied, "revision": db_after}


def _rollback(status: dict[str, Any], db_after: str) -> Decision:
    failed = {"migrate": done("migrate", failed_at(db_after), "failed")}
    return decide(observe(status, jobs=failed, db=DatabaseObservation(db_after)))


def test_auto_downgrades_when_committed_revisions_destroyed_nothing() -> None:
    d = _rollback(_at_migrating(), "r2")
    assert [(j.role, j.args) for j in d.jobs] == [("downgrade", {"from": "r2", "to": "r1"})]
    assert d.status["phase"] == "RollingBack" and summary(d) == ("False", "True", "False")
    d = advance(d, jobs={"migrate": done("migrate", failed_at("r2"), "failed"),
                         "downgrade": done("downgrade", {"ok": True})},
                db=DatabaseObservation("r1"))
    assert d.status["phase"] == "Failed"
    assert cond(d, c.ROLLED_BACK)["reason"] == "Downgraded"
    assert summary(d) == ("False", "False", "True")


def test_auto_restores_when_a_committed_revision_destroyed_data() -> None:
    plan = {**PLAN_DESTRUCTIVE, "destructive": ["DROP TABLE t (revision r2)"],
            "findings": [{"rule": "drop-table", "severity": "destructive", "revision": "r2", "operation": "x"}]}
    d = _rollback(_at_migrating(plan=plan), "r2")
    assert [(j.role, j.args) for j in d.jobs] == [("restore", {"file": "/backups/x.dump", "sha256": "sha256:aa"})]
    d = advance(d, jobs={"migrate": done("migrate", failed_at("r2"), "failed"),
                         "restore": done("restore", {"ok": True})},
                db=DatabaseObservation("r1"))
    assert cond(d, c.ROLLED_BACK)["reason"] == "Restored"


def test_auto_falls_back_to_restore_when_the_downgrade_fails() -> None:
    d = _rollback(_at_migrating(), "r2")
    jobs = {"migrate": done("migrate", failed_at("r2"), "failed"),
            "downgrade": done("downgrade", {"ok": False, "reason": "DowngradeFailed", "message": "no"}, "failed")}
    d = advance(d, jobs=jobs, db=DatabaseObservation("r2"))
    assert [j.role for j in d.jobs] == ["restore"]
    d = advance(d, jobs={**jobs, "restore": done("restore", {"ok": True})}, db=DatabaseObservation("r1"))
    assert cond(d, c.ROLLED_BACK)["reason"] == "Restored"


@pytest.mark.parametrize(("strategy", "role"), [("Downgrade", "downgrade"), ("Restore", "restore")])
def test_explicit_strategies_do_only_their_step(strategy: str, role: str) -> None:
    spec = {**SPEC, "rollback": {"strategy": strategy}}
    d = _rollback(_at_migrating(spec), "r2")
    assert [j.role for j in d.jobs] == [role]
    jobs = {"migrate": done("migrate", failed_at("r2"), "failed"),
            role: done(role, {"ok": False, "message": "x"}, "failed")}
    d = advance(d, spec=spec, jobs=jobs, db=DatabaseObservation("r2"))
    assert d.jobs == []
    assert cond(d, c.ROLLED_BACK)["status"] == "False"
    assert cond(d, c.STALLED)["reason"] == "RollbackFailed"


def test_strategy_none_only_reports() -> None:
    spec = {**SPEC, "rollback": {"strategy": "None"}}
    d = _rollback(_at_migrating(spec), "r2")
    assert d.jobs == [] and cond(d, c.ROLLED_BACK)["reason"] == "RollbackDisabled"
    assert "r2" in d.status["message"]


def test_restore_without_backup_is_reported() -> None:
    # Restore with backups disabled is refused by the schema; Auto can still need a restore.
    spec = {**SPEC, "backup": {"enabled": False}}
    plan = {**PLAN_DESTRUCTIVE, "findings": [{"rule": "drop-table", "severity": "destructive", "revision": "r2"}]}
    status = _at_migrating(spec, plan=plan)
    d = _rollback(status, "r2")
    assert d.jobs == [] and cond(d, c.ROLLED_BACK)["reason"] == "NoBackup"


def test_new_generation_flips_ready_false_before_work() -> None:
    jobs = {"plan": done("plan", {**PLAN_OK, "revisions": [], "target": "r1"})}
    d = advance(decide(observe()), jobs=jobs)
    assert summary(d) == ("True", "False", "False")
    d2 = decide(observe(d.status, generation=2))
    assert summary(d2) == ("False", "True", "False")
    assert cond(d2, c.READY)["observedGeneration"] == 2
    assert [(j.role, j.generation) for j in d2.jobs] == [("plan", 2)]


def test_spec_edit_during_migration_is_queued_until_the_run_ends() -> None:
    status = _at_migrating()
    edited = {**SPEC, "targetRevision": "r9"}
    running = {"migrate": JobObservation("shop-migrate-g1", "active")}
    d = decide(observe(status, generation=2, spec=edited, jobs=running))
    assert d.jobs == [] and d.status["run"]["generation"] == 1
    assert d.status["observedGeneration"] == 1 and "generation 2 is queued" in d.status["message"]
    jobs = {"migrate": done("migrate", {"ok": True})}
    d = decide(observe(d.status, generation=2, spec=edited, jobs=jobs, db=DatabaseObservation("r3")))
    assert d.status["history"][-1]["generation"] == 1
    d = decide(observe(d.status, generation=2, spec=edited, db=DatabaseObservation("r3")))
    assert [(j.role, j.generation, j.args["target"]) for j in d.jobs] == [("plan", 2, "r9")]


def test_a_run_uses_its_own_spec_not_a_queued_edit() -> None:
    status = _at_migrating()
    edited = {**SPEC, "migrations": {"image": "shop:2"}}
    d = decide(observe(status, generation=2, spec=edited, jobs={"migrate": done("migrate", failed_at("r2"), "failed")},
                       db=DatabaseObservation("r2")))
    assert d.jobs[0].spec.migrations.image == "shop:1"


def test_database_changed_behind_our_back_is_not_ready() -> None:
    jobs = {"plan": done("plan", {**PLAN_OK, "revisions": [], "target": "r1"})}
    d = advance(decide(observe()), jobs=jobs)
    d = advance(d, db=DatabaseObservation("r0"))
    assert summary(d) == ("False", "False", "True") and cond(d, c.STALLED)["reason"] == "DatabaseChanged"


def test_last_transition_time_moves_only_on_change() -> None:
    d = decide(observe())
    t = cond(d, c.RECONCILING)["lastTransitionTime"]
    d2 = advance(d, jobs={"plan": JobObservation("shop-plan-g1", "active")}, now=NOW + timedelta(minutes=1))
    assert cond(d2, c.RECONCILING)["lastTransitionTime"] == t


def test_suspend_starts_nothing_until_lifted() -> None:
    spec = {**SPEC, "suspend": True}
    d = decide(observe(spec=spec))
    assert d.jobs == [] and cond(d, c.RECONCILING)["reason"] == "Suspended"
    d = advance(d, spec=SPEC)
    assert [j.role for j in d.jobs] == ["plan"]


def _ready(spec: dict[str, Any]) -> Decision:
    jobs = {"plan": done("plan", {**PLAN_OK, "revisions": [], "target": "r1"})}
    d = advance(decide(observe(spec=spec)), spec=spec, jobs=jobs)
    assert summary(d) == ("True", "False", "False")
    return d


def test_drift_check_runs_once_per_interval_and_sets_drifted() -> None:
    spec = {**SPEC, "driftCheck": {"interval": "10m"}}
    d = _ready(spec)
    assert [(j.role, j.args["instance"]) for j in d.jobs] == [("drift", str(int(NOW.timestamp()) // 600))]
    bucket = d.jobs[0].args["instance"]
    drift = JobObservation(f"shop-drift-g1-{bucket}", "succeeded",
                           {"ok": True, "drifted": True, "differences": ["add_column orders.note (TEXT)"]},
                           instance=bucket)
    d = advance(d, spec=spec, jobs={"drift": drift})
    assert d.jobs == []
    assert cond(d, c.DRIFTED)["status"] == "True" and "orders.note" in cond(d, c.DRIFTED)["message"]
    assert summary(d) == ("True", "False", "False")  # drift is reported, not a failure of the migration
    assert [e[1] for e in d.events] == ["SchemaDrift"]
    again = advance(d, spec=spec, jobs={"drift": drift})
    assert again.events == [] and again.status == d.status
    later = advance(d, spec=spec, jobs={"drift": drift}, now=NOW + timedelta(minutes=11))
    assert [j.role for j in later.jobs] == ["drift"]
    clean = JobObservation("shop-drift-g1-x", "succeeded", {"ok": True, "drifted": False},
                           instance=str(int(bucket) + 1))
    d = advance(later, spec=spec, jobs={"drift": clean}, now=NOW + timedelta(minutes=11))
    assert cond(d, c.DRIFTED)["status"] == "False" and [e[1] for e in d.events] == ["DriftResolved"]


def test_a_drift_check_longer_than_its_interval_is_let_finish_and_read() -> None:
    spec = {**SPEC, "driftCheck": {"interval": "10s"}}
    d = _ready(spec)
    bucket = d.jobs[0].args["instance"]
    running = JobObservation(f"shop-drift-g1-{bucket}", "active", instance=bucket)
    later = NOW + timedelta(seconds=45)
    d = advance(d, spec=spec, jobs={"drift": running}, now=later)
    assert d.jobs == []  # no second check over the running one
    done_ = JobObservation(running.name, "succeeded", {"ok": True, "drifted": True, "differences": ["x"]},
                           instance=bucket)
    d = advance(d, spec=spec, jobs={"drift": done_}, now=later)
    assert cond(d, c.DRIFTED)["status"] == "True"
    assert [(j.role, j.args["instance"]) for j in d.jobs] == [("drift", str(int(later.timestamp()) // 10))]


def test_a_running_drift_check_is_looked_at_within_a_minute_not_at_the_next_interval() -> None:
    spec = {**SPEC, "driftCheck": {"interval": "1h"}}
    d = _ready(spec)
    assert [j.role for j in d.jobs] == ["drift"] and d.requeue_after is not None and d.requeue_after <= 60
    bucket = d.jobs[0].args["instance"]
    running = JobObservation(f"shop-drift-g1-{bucket}", "active", instance=bucket)
    d = advance(d, spec=spec, jobs={"drift": running})
    assert d.jobs == [] and d.requeue_after is not None and d.requeue_after <= 60  # its end's event may be missed
    done_ = JobObservation(running.name, "succeeded", {"ok": True, "drifted": False}, instance=bucket)
    d = advance(d, spec=spec, jobs={"drift": done_})
    assert cond(d, c.DRIFTED)["reason"] == "NoDrift" and d.requeue_after is not None and d.requeue_after > 60


def test_a_failed_drift_check_is_unknown_with_a_warning_once_and_the_next_interval_checks_again() -> None:
    spec = {**SPEC, "driftCheck": {"interval": "10m"}}
    d = _ready(spec)
    bucket = d.jobs[0].args["instance"]
    failed = JobObservation(f"shop-drift-g1-{bucket}", "failed", {"ok": False, "error": "connection refused"},
                            message="container drift exited 1", instance=bucket)
    d = advance(d, spec=spec, jobs={"drift": failed})
    assert (cond(d, c.DRIFTED)["status"], cond(d, c.DRIFTED)["reason"]) == ("Unknown", "DriftCheckFailed")
    assert summary(d) == ("True", "False", "False")  # the schema was not judged: the migration stays Ready
    assert [(e[0], e[1]) for e in d.events] == [("Warning", "DriftCheckFailed")]
    assert d.jobs == []  # not again within the interval
    later = advance(d, spec=spec, jobs={"drift": failed}, now=NOW + timedelta(minutes=11))
    assert [j.role for j in later.jobs] == ["drift"]
    again = JobObservation("shop-drift-g1-y", "failed", {"ok": False}, instance=str(int(bucket) + 1))
    d = advance(later, spec=spec, jobs={"drift": again}, now=NOW + timedelta(minutes=11))
    assert cond(d, c.DRIFTED)["reason"] == "DriftCheckFailed" and d.events == []  # still failing: said once


def test_no_drift_check_unless_asked() -> None:
    assert _ready(SPEC).jobs == []


def test_baseline_stamps_a_pre_alembic_database_then_plans() -> None:
    spec = {**SPEC, "baseline": "r1"}
    legacy = DatabaseObservation(revision=None, versioned=False, tables=3)
    d = decide(observe(spec=spec, db=legacy))
    assert [(j.role, j.args) for j in d.jobs] == [("stamp", {"revision": "r1"})]
    assert cond(d, c.RECONCILING)["reason"] == "Baselining"
    stamped = {"stamp": done("stamp", {"ok": True, "revision": "r1"})}
    d = advance(d, spec=spec, jobs=stamped, db=DatabaseObservation("r1", versioned=True, tables=3))
    assert [j.role for j in d.jobs] == ["plan"]
    assert d.status["history"][-1]["result"] == "Baselined"
    assert [e[1] for e in d.events][:1] == ["Baselined"]


def test_baseline_is_ignored_for_an_empty_or_versioned_database() -> None:
    spec = {**SPEC, "baseline": "r1"}
    for db in (DatabaseObservation(None, versioned=False, tables=0), DatabaseObservation("r0", versioned=True)):
        assert [j.role for j in decide(observe(spec=spec, db=db)).jobs] == ["plan"]


def test_a_job_that_failed_for_a_passing_reason_is_retried_with_backoff() -> None:
    unreachable = {"ok": False, "reason": "DatabaseUnreachable", "message": "connection refused"}
    d = decide(observe())
    d = advance(d, jobs={"plan": done("plan", unreachable, "failed")})
    assert d.jobs == [] and cond(d, c.RECONCILING)["status"] == "True"
    assert cond(d, c.RECONCILING)["reason"] == "DatabaseUnreachable" and d.requeue_after == 5
    d = advance(d, jobs={"plan": done("plan", unreachable, "failed")}, now=NOW + timedelta(seconds=6))
    assert [(j.role, j.args) for j in d.jobs] == [("plan", {"target": "head", "instance": "1"})]
    # Five retries, then it is a human's problem.
    now = NOW + timedelta(seconds=6)
    for attempt in range(2, 6):
        for _ in range(2):  # schedule, then start
            now += timedelta(seconds=61)
            d = advance(d, jobs={"plan": done("plan", unreachable, "failed", attempt - 1)}, now=now)
        assert d.jobs[0].args["instance"] == str(attempt)
    d = advance(d, jobs={"plan": done("plan", unreachable, "failed", 5)}, now=now + timedelta(seconds=61))
    assert summary(d) == ("False", "False", "True") and cond(d, c.STALLED)["reason"] == "PlanFailed"


def test_a_migration_is_retried_only_if_nothing_changed() -> None:
    lock = {"ok": False, "reason": "LockTimeout", "message": "another migration holds the lock"}
    status = _at_migrating()
    d = decide(observe(status, jobs={"migrate": done("migrate", lock, "failed")}, db=DatabaseObservation("r1")))
    assert d.jobs == [] and cond(d, c.RECONCILING)["reason"] == "LockTimeout"
    moved = decide(observe(status, jobs={"migrate": done("migrate", lock, "failed")}, db=DatabaseObservation("r2")))
    # It never got the lock, so it ran nothing: someone else moved the database. Plan again; undo nothing.
    assert [(j.role, j.args) for j in moved.jobs] == [("plan", {"target": "head", "instance": "1"})]
    assert moved.status["phase"] == "Planning" and [e[1] for e in moved.events][:1] == ["DatabaseMoved"]


# --- a Job stopped from outside: its cause is the Stalled reason, the rollback path is today's -------------------

OOM = ("OOMKilled", "the container migrate was killed for running out of memory (OOMKilled): its memory limit is "
                    "128Mi. To fix: raise spec.jobTemplate.resources.limits.memory")


def stopped(job: str, cause: tuple[str, str], result: dict[str, Any] | None = None) -> JobObservation:
    return JobObservation(name=f"shop-{job}-g1", state="failed", result=result, message="container exited 137",
                          cause=cause)


def test_a_plan_job_stopped_at_its_deadline_says_so() -> None:
    d = decide(observe())
    cause = ("DeadlineExceeded", "it ran longer than its deadline of 600 s (activeDeadlineSeconds)")
    d = advance(d, jobs={"plan": stopped("plan", cause, {"ok": False, "reason": "Interrupted",
                                                         "message": "terminated by signal SIGTERM"})})
    assert cond(d, c.STALLED)["reason"] == "DeadlineExceeded" and d.status["phase"] == "Failed"
    assert "deadline of 600 s" in d.status["message"] and "SIGTERM" in d.status["message"]
    assert d.status["history"][-1]["reason"] == "DeadlineExceeded"


def test_an_evicted_backup_changed_nothing_and_says_why() -> None:
    d = decide(observe())
    d = advance(d, jobs={"plan": done("plan", PLAN_OK)})
    assert d.status["phase"] == "BackingUp"
    cause = ("PodEvicted", "the node evicted its pod: The node was low on resource: memory.")
    d = advance(d, jobs={"plan": done("plan", PLAN_OK), "backup": stopped("backup", cause)})
    assert cond(d, c.STALLED)["reason"] == "PodEvicted" and d.jobs == []
    assert "low on resource: memory" in d.status["message"] and "nothing was changed" in d.status["message"]


def test_an_oom_killed_migration_rolls_back_then_stalls_with_its_cause() -> None:
    """The usual rollback runs (the kill may come after commits); once it is over, Stalled says OOMKilled, and
    RolledBack says which way, as for any failed migration."""
    d = decide(observe(_at_migrating(), jobs={"migrate": stopped("migrate", OOM)}, db=DatabaseObservation("r1")))
    assert cond(d, c.STALLED)["reason"] == "OOMKilled" and cond(d, c.ROLLED_BACK)["reason"] == "TransactionRolledBack"
    assert "128Mi" in d.status["message"]
    status = _at_migrating()
    # SIGKILLed: the report the runner wrote before starting r3 says what it may have committed.
    failed = {"migrate": stopped("migrate", OOM, {"ok": False, "reason": "Interrupted", "attempted": ["r2", "r3"]})}
    d = decide(observe(status, jobs=failed, db=DatabaseObservation("r2")))  # r2 committed before the kill
    assert [j.role for j in d.jobs] == ["downgrade"]
    d = advance(d, jobs={**failed, "downgrade": done("downgrade", {"ok": True})}, db=DatabaseObservation("r1"))
    assert cond(d, c.ROLLED_BACK)["reason"] == "Downgraded"
    assert cond(d, c.STALLED)["reason"] == "OOMKilled" and d.status["history"][-1]["reason"] == "OOMKilled"
    assert "Fix the migration in a new image" not in d.status["message"]  # the migration is not at fault


def test_a_failed_rollback_still_says_rollback_failed() -> None:
    """What matters most once the database is left half-way is the rollback's failure, not the first cause."""
    failed = {"migrate": stopped("migrate", OOM, {"ok": False, "reason": "Interrupted", "attempted": ["r2", "r3"]})}
    spec = {**SPEC, "rollback": {"strategy": "Downgrade"}}
    d = decide(observe(_at_migrating(spec), spec=spec, jobs=failed, db=DatabaseObservation("r2")))
    jobs = {**failed, "downgrade": done("downgrade", {"ok": False, "message": "x"}, "failed")}
    d = advance(d, spec=spec, jobs=jobs, db=DatabaseObservation("r2"))
    assert cond(d, c.STALLED)["reason"] == "RollbackFailed"


@pytest.mark.parametrize("cause", ["DeadlineExceeded", "PodDeleted"])
def test_a_deleted_pod_took_its_report_with_it_and_its_commits_are_still_undone(cause: str) -> None:
    """At its deadline (or when someone deletes it) the pod goes, and the runner's report with it: the database at
    a prefix of the plan is this run's doing (it held the lock), so it is rolled back, not blamed on another writer."""
    failed = {"migrate": stopped("migrate", (cause, "its pod was deleted"))}
    d = decide(observe(_at_migrating(), jobs=failed, db=DatabaseObservation("r2")))
    assert [(j.role, j.args) for j in d.jobs] == [("downgrade", {"from": "r2", "to": "r1"})]
    d = advance(d, jobs={**failed, "downgrade": done("downgrade", {"ok": True})}, db=DatabaseObservation("r1"))
    assert cond(d, c.ROLLED_BACK)["reason"] == "Downgraded" and cond(d, c.STALLED)["reason"] == cause
    elsewhere = decide(observe(_at_migrating(), jobs=failed, db=DatabaseObservation("zz")))  # not on its plan
    assert cond(elsewhere, c.STALLED)["reason"] == "DatabaseMoved" and elsewhere.jobs == []


# --- non-transactional DDL (MySQL/MariaDB): a failed revision may be half-applied ----------------------------------

PLAN_MYSQL = {**PLAN_OK, "transactionalDDL": False}
PARTIAL = {"revision": "r3", "statements": ["CREATE TABLE notes (id INTEGER NOT NULL)",
                                            "ALTER TABLE orders ADD COLUMN code VARCHAR(?)"], "statementCount": 2}


def half_failed(db_after: str, **extra: Any) -> dict[str, Any]:
    return {**failed_at(db_after), "transactionalDDL": False, "failedRevision": "r3", **extra}


def test_auto_restores_a_half_applied_revision_and_says_why() -> None:
    status = _at_migrating(plan=PLAN_MYSQL)
    assert status["run"]["transactionalDDL"] is False
    report = half_failed("r2", partialRevision=PARTIAL)
    d = decide(observe(status, jobs={"migrate": done("migrate", report, "failed")}, db=DatabaseObservation("r2")))
    assert [(j.role, j.args) for j in d.jobs] == [("restore", {"file": "/backups/x.dump", "sha256": "sha256:aa"})]
    rollback = d.status["run"]["rollback"]
    assert rollback["mode"] == "Restore" and rollback["halfApplied"] == "r3" and rollback["committed"] == ["r2"]
    rolling = cond(d, c.ROLLED_BACK)["message"]
    assert "Auto restores the backup: revision r3 is half-applied: 2 of its statement(s) committed" in rolling
    assert "ALTER TABLE orders ADD COLUMN code VARCHAR(?)" in rolling and "no downgrade undoes" in rolling
    d = advance(d, jobs={"migrate": done("migrate", report, "failed"), "restore": done("restore", {"ok": True})},
                db=DatabaseObservation("r1"))
    assert cond(d, c.ROLLED_BACK)["reason"] == "Restored" and "half-applied" in d.status["message"]


def test_a_half_applied_first_revision_is_not_a_rolled_back_transaction() -> None:
    """Nothing counted as committed, yet DDL of the failed revision is in the database: restore, do not report
    TransactionRolledBack."""
    report = {**half_failed("r1"), "failedRevision": "r2", "partialRevision": {**PARTIAL, "revision": "r2"}}
    d = decide(observe(_at_migrating(plan=PLAN_MYSQL), jobs={"migrate": done("migrate", report, "failed")},
                       db=DatabaseObservation("r1")))
    assert [j.role for j in d.jobs] == ["restore"]
    assert d.status["run"]["rollback"]["committed"] == []


def test_auto_downgrades_on_mysql_when_nothing_is_half_applied_and_says_why() -> None:
    status = _at_migrating(plan=PLAN_MYSQL)
    d = decide(observe(status, jobs={"migrate": done("migrate", half_failed("r2"), "failed")},
                       db=DatabaseObservation("r2")))
    assert [(j.role, j.args) for j in d.jobs] == [("downgrade", {"from": "r2", "to": "r1"})]
    assert "Auto downgrades: nothing destructive committed and no revision is half-applied" in \
        cond(d, c.ROLLED_BACK)["message"]
    # a MySQL revision that failed before any DDL: its transaction rolled back, as on PostgreSQL
    d = decide(observe(status, jobs={"migrate": done("migrate", half_failed("r1"), "failed")},
                       db=DatabaseObservation("r1")))
    assert d.jobs == [] and cond(d, c.ROLLED_BACK)["reason"] == "TransactionRolledBack"


def test_a_killed_migration_on_mysql_may_be_half_applied_so_auto_restores() -> None:
    status = _at_migrating(plan=PLAN_MYSQL)
    failed = {"migrate": stopped("migrate", OOM, {"ok": False, "reason": "Interrupted", "attempted": ["r2", "r3"]})}
    d = decide(observe(status, jobs=failed, db=DatabaseObservation("r2")))
    assert [j.role for j in d.jobs] == ["restore"]
    assert "could not report where it stopped" in cond(d, c.ROLLED_BACK)["message"]
    # the same kill on a database with transactional DDL downgrades (test_an_oom_killed_migration_...)


def test_strategy_downgrade_refuses_a_half_applied_revision() -> None:
    spec = {**SPEC, "rollback": {"strategy": "Downgrade"}}
    report = half_failed("r2", partialRevision=PARTIAL)
    d = decide(observe(_at_migrating(spec, plan=PLAN_MYSQL), spec=spec,
                       jobs={"migrate": done("migrate", report, "failed")}, db=DatabaseObservation("r2")))
    assert d.jobs == [] and cond(d, c.ROLLED_BACK)["reason"] == "RevisionHalfApplied"
    assert cond(d, c.STALLED)["reason"] == "RollbackFailed"
    assert "restore the backup pvc/b/x.dump by hand" in d.status["message"].lower()


def test_strategy_none_names_the_half_applied_statements() -> None:
    spec = {**SPEC, "rollback": {"strategy": "None"}}
    report = half_failed("r2", partialRevision=PARTIAL)
    d = decide(observe(_at_migrating(spec, plan=PLAN_MYSQL), spec=spec,
                       jobs={"migrate": done("migrate", report, "failed")}, db=DatabaseObservation("r2")))
    assert d.jobs == [] and cond(d, c.ROLLED_BACK)["reason"] == "RollbackDisabled"
    assert "CREATE TABLE notes" in d.status["message"] and "half-applied" in d.status["message"]


def test_half_applied_without_a_backup_is_reported() -> None:
    spec = {**SPEC, "backup": {"enabled": False}}
    report = half_failed("r1", failedRevision="r2", partialRevision={**PARTIAL, "revision": "r2"})
    d = decide(observe(_at_migrating(spec, plan=PLAN_MYSQL), spec=spec,
                       jobs={"migrate": done("migrate", report, "failed")}, db=DatabaseObservation("r1")))
    assert d.jobs == [] and cond(d, c.ROLLED_BACK)["reason"] == "NoBackup"
    assert "revision r2 is half-applied" in d.status["message"]
