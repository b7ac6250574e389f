"""decide() when the database moves under a run, when a Job is refused, and when a Job's pod cannot start.

The rule under test: a run only ever rolls back what its own migration Job reports having committed. A database
somewhere else means another writer: plan again when this run wrote nothing, stop for a human otherwise.
"""

from __future__ import annotations

from typing import Any

import pytest
from test_reconcile import BACKUP, PLAN_DESTRUCTIVE, PLAN_OK, SPEC, _at_migrating, advance, cond, done, observe, summary

from alembic_operator import constants as c
from alembic_operator.observation import DatabaseObservation, JobObservation, JobRefusal
from alembic_operator.reconcile import MAX_REPLANS, Decision, committed_by_run, decide, plan_hash

DB = DatabaseObservation


def events(d: Decision) -> list[str]:
    return [reason for _kind, reason, _msg in d.events]


# --- the attribution rule, alone ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("report", "db_rev", "committed"), [
    ({"reason": "RevisionMoved", "revision": "r2"}, "r2", None),  # it ran nothing; r2 is someone else's
    ({"reason": "RevisionMoved"}, "r1", []),
    ({"ok": False, "applied": [], "revision": "r1"}, "r1", []),
    ({"ok": False, "applied": ["r2"], "revision": "r2"}, "r2", ["r2"]),
    ({"ok": False, "applied": ["r2"], "revision": "r2"}, "r3", None),  # moved on after the Job ended
    ({"ok": False, "applied": ["r2"], "revision": "r2"}, "r1", None),  # moved back after the Job ended
    ({"ok": True, "applied": ["r2", "r3"]}, "r3", ["r2", "r3"]),
    ({"ok": False, "reason": "Interrupted", "attempted": ["r2", "r3"]}, "r2", ["r2"]),  # killed: any prefix
    ({"ok": False, "reason": "Interrupted", "attempted": ["r2", "r3"]}, "r1", []),
    ({"ok": False, "reason": "Interrupted", "attempted": ["r2"]}, "r3", None),  # r3 was never started by it
    (None, "r1", []),  # no report: it never started migrating
    (None, "r2", None),
    ({"ok": False, "applied": ["r2"], "appliedTruncated": True}, "r3", ["r2", "r3"]),  # cut list: its plan's prefix
    ({"ok": False, "applied": ["r2"], "appliedTruncated": True}, "r9", None),
])
def test_committed_by_run_trusts_only_the_jobs_own_report(report: dict[str, Any] | None, db_rev: str,
                                                          committed: list[str] | None) -> None:
    assert committed_by_run("r1", ["r2", "r3"], report, db_rev) == committed


# --- scenario 1: two resources on one database, to different targets ----------------------------------------------


def test_a_plan_that_waited_for_another_writer_is_refreshed_before_it_runs() -> None:
    d = decide(observe())
    d = advance(d, jobs={"plan": done("plan", PLAN_OK)}, busy="DatabaseMigration shop/first")
    assert cond(d, c.RECONCILING)["reason"] == "WaitingForDatabase" and d.jobs == []
    # The other one migrated r1 -> r2 and is done: this plan (r1 -> r3) is stale. Plan again, write nothing.
    d = advance(d, jobs={"plan": done("plan", PLAN_OK)}, db=DB("r2"))
    assert [(j.role, j.args) for j in d.jobs] == [("plan", {"target": "head", "instance": "1"})]
    assert d.status["phase"] == "Planning" and summary(d) == ("False", "True", "False")
    assert "DatabaseMoved" in events(d)
    moved = next(m for _k, r, m in d.events if r == "DatabaseMoved")
    assert "from r1 to r2" in moved and "nothing was run" in moved
    assert "plan" not in d.status  # the stale plan is gone
    # The fresh plan starts where the database is, and the run goes on from there.
    fresh = {**PLAN_OK, "current": "r2", "revisions": ["r3"]}
    d = advance(d, jobs={"plan": done("plan", fresh, instance=1)}, db=DB("r2"))
    assert [j.role for j in d.jobs] == ["backup"] and d.jobs[0].args == {"instance": "1"}
    d = advance(d, jobs={"plan": done("plan", fresh, instance=1), "backup": done("backup", BACKUP, instance=1)},
                db=DB("r2"))
    assert [(j.role, j.args) for j in d.jobs] == [("migrate", {"from": "r2", "to": "r3", "instance": "1"})]


def test_a_migration_that_found_the_database_moved_rolls_nothing_back_and_plans_again() -> None:
    status = _at_migrating()
    moved = {"ok": False, "reason": "RevisionMoved", "revision": "r2",
             "message": "the database is at r2, not at r1 as planned: nothing was run (plan again)"}
    d = decide(observe(status, jobs={"migrate": done("migrate", moved, "failed")}, db=DB("r2")))
    assert [j.role for j in d.jobs] == ["plan"]  # never downgrade or restore
    assert d.status["phase"] == "Planning" and "DatabaseMoved" in events(d)
    assert c.ROLLED_BACK not in {x["type"] for x in d.status["conditions"]}
    assert d.status["run"]["replans"] == 1 and "history" not in d.status


def test_the_other_resource_stays_ready_when_the_database_went_further() -> None:
    jobs = {"plan": done("plan", {**PLAN_OK, "target": "r2", "revisions": ["r2"]})}
    d = decide(observe(spec={**SPEC, "targetRevision": "r2"}))
    d = advance(d, spec={**SPEC, "targetRevision": "r2"}, jobs=jobs)
    d = advance(d, spec={**SPEC, "targetRevision": "r2"}, jobs={**jobs, "backup": done("backup", BACKUP)})
    d = advance(d, spec={**SPEC, "targetRevision": "r2"}, db=DB("r2"),
                jobs={**jobs, "backup": done("backup", BACKUP), "migrate": done("migrate", {"ok": True})})
    assert summary(d) == ("True", "False", "False")
    # Another resource took the database on to r3, whose lineage contains r2.
    obs = observe(d.status, spec={**SPEC, "targetRevision": "r2"}, db=DB("r3"))
    ahead = decide(obs.__class__(**{**obs.__dict__, "database_lineage": ("r3", "r2", "r1"),
                                    "database_moved_by": "DatabaseMigration shop/second"}))
    assert summary(ahead) == ("True", "False", "False") and cond(ahead, c.READY)["reason"] == "TargetContained"
    assert "shop/second" in ahead.status["message"] and ahead.status["currentRevision"] == "r3"
    # Moved anywhere else (back, or sideways), it is still a human's question.
    behind = decide(observe(d.status, spec={**SPEC, "targetRevision": "r2"}, db=DB("r1")))
    assert cond(behind, c.STALLED)["reason"] == "DatabaseChanged"


# --- scenario 2: the database upgraded by hand while a plan waits for approval --------------------------------------


def test_an_approved_plan_whose_database_moved_is_planned_again_and_needs_a_new_approval() -> None:
    d = decide(observe())
    jobs = {"plan": done("plan", PLAN_DESTRUCTIVE)}
    d = advance(d, jobs=jobs)
    old_hash = d.status["plan"]["hash"]
    approved = {c.APPROVE_ANNOTATION: old_hash}
    d = advance(d, jobs=jobs, annotations=approved, db=DB("r2"))  # someone ran `alembic upgrade r2` meanwhile
    assert [j.role for j in d.jobs] == ["plan"] and "DatabaseMoved" in events(d)
    assert not any(j.role in ("backup", "migrate", "restore", "downgrade") for j in d.jobs)
    fresh = {**PLAN_DESTRUCTIVE, "current": "r2", "revisions": ["r3"]}
    d = advance(d, jobs={"plan": done("plan", fresh, instance=1)}, annotations=approved, db=DB("r2"))
    assert d.status["phase"] == "AwaitingApproval"  # the approval was for the other plan
    assert d.status["plan"]["hash"] == plan_hash(fresh, "shop:1") != old_hash


def test_a_restore_is_only_for_this_runs_own_damage() -> None:
    status = _at_migrating(plan=PLAN_DESTRUCTIVE, spec=SPEC)
    moved = {"ok": False, "reason": "RevisionMoved", "revision": "r2", "message": "moved"}
    d = decide(observe(status, jobs={"migrate": done("migrate", moved, "failed")}, db=DB("r2")))
    assert [j.role for j in d.jobs] == ["plan"]


# --- partial runs: what the Job reports decides ---------------------------------------------------------------------


def test_a_killed_migration_rolls_back_what_it_may_have_committed() -> None:
    status = _at_migrating()
    killed = {"ok": False, "reason": "Interrupted", "attempted": ["r2", "r3"], "message": "killed"}
    d = decide(observe(status, jobs={"migrate": done("migrate", killed, "failed")}, db=DB("r2")))
    assert [(j.role, j.args) for j in d.jobs] == [("downgrade", {"from": "r2", "to": "r1"})]
    assert d.status["run"]["rollback"]["committed"] == ["r2"]


@pytest.mark.parametrize("report", [
    {"ok": False, "reason": "MigrationFailed", "applied": ["r2"], "revision": "r2", "message": "boom"},
    {"ok": False, "reason": "Interrupted", "attempted": ["r2"], "message": "killed"},
])
def test_a_database_beyond_what_the_job_reports_is_left_to_a_human(report: dict[str, Any]) -> None:
    status = _at_migrating()
    d = decide(observe(status, jobs={"migrate": done("migrate", report, "failed")}, db=DB("r3")))
    assert d.jobs == [] and d.status["phase"] == "Failed"
    assert cond(d, c.STALLED)["reason"] == "DatabaseMoved"
    assert cond(d, c.ROLLED_BACK)["status"] == "False" and "nothing was rolled back" in d.status["message"]
    assert d.status["history"][-1]["reason"] == "DatabaseMoved"


def test_a_database_that_keeps_moving_stalls_after_a_few_replans() -> None:
    d = decide(observe())
    rev = 1
    for replan in range(1, MAX_REPLANS + 2):
        plan = {**PLAN_OK, "current": f"r{rev}", "revisions": ["r9"], "target": "r9"}
        rev += 1
        d = advance(d, jobs={"plan": done("plan", plan, instance=replan - 1)}, db=DB(f"r{rev}"))
        if replan <= MAX_REPLANS:
            assert [j.role for j in d.jobs] == ["plan"] and d.status["run"]["replans"] == replan
    assert d.jobs == [] and cond(d, c.STALLED)["reason"] == "DatabaseKeepsMoving"
    assert d.status["phase"] == "Failed"


# --- Jobs the API server refuses ------------------------------------------------------------------------------------

REFUSED = ('Job.batch "shop-plan-g1" is invalid: spec.template.spec.containers[0].resources.requests[cpu]: '
           'Invalid value: "lots": quantities must match the regular expression')


def test_a_refused_job_stalls_at_once_quoting_the_api_server() -> None:
    first = decide(observe())
    assert [j.role for j in first.jobs] == ["plan"]
    obs = observe()
    d = decide(obs.__class__(**{**obs.__dict__, "refused": JobRefusal("plan", REFUSED)}))
    assert d.jobs == [] and summary(d) == ("False", "False", "True")
    assert cond(d, c.STALLED)["reason"] == "JobRefused" and d.status["phase"] == "Failed"
    assert "resources.requests[cpu]" in d.status["message"] and "Fix the spec" in d.status["message"]
    assert d.status["observedGeneration"] == 1  # kubectl wait, Argo CD and Flux see an answer
    assert "JobRefused" in events(d)
    again = advance(d)  # the same generation: no new attempt, no new Event
    assert again.jobs == [] and cond(again, c.STALLED)["reason"] == "JobRefused" and not again.events
    fixed = advance(d, generation=2)  # the fix is a new generation: a new run
    assert [j.role for j in fixed.jobs] == ["plan"] and summary(fixed) == ("False", "True", "False")


def test_a_refused_rollback_job_keeps_the_run_and_tries_again() -> None:
    status = _at_migrating()
    failing = {"migrate": done("migrate", {"ok": False, "reason": "MigrationFailed", "applied": ["r2"],
                                           "message": "x"}, "failed")}
    obs = observe(status, jobs=failing, db=DB("r2"))
    d = decide(obs.__class__(**{**obs.__dict__, "refused": JobRefusal("downgrade", "forbidden: exceeded quota")}))
    assert d.jobs == [] and d.status["phase"] == "RollingBack" and d.status["run"]["step"] == "RollingBack"
    assert cond(d, c.STALLED)["reason"] == "JobRefused" and d.requeue_after == 60
    retry = advance(d, jobs=failing, db=DB("r2"))
    assert [j.role for j in retry.jobs] == ["downgrade"]


# --- a Job whose pod cannot start ----------------------------------------------------------------------------------

MISSING = ("PersistentVolumeClaimNotFound", "its pod cannot start: PersistentVolumeClaim shop/backups does not exist")


def test_a_backup_waiting_for_a_missing_claim_stalls_then_continues_on_its_own() -> None:
    d = decide(observe())
    d = advance(d, jobs={"plan": done("plan", PLAN_OK)})
    assert [j.role for j in d.jobs] == ["backup"]
    pending = JobObservation("shop-backup-g1", "active", started=False)
    d = advance(d, jobs={"plan": done("plan", PLAN_OK), "backup": pending})
    assert cond(d, c.RECONCILING)["reason"] == "BackingUp" and d.requeue_after == 3.0
    assert "shop-backup-g1 is starting" in d.status["message"] and "for its image" in d.status["message"]
    pulling = JobObservation("shop-backup-g1", "active", started=False, waiting="its node pulls the image op:1")
    d = advance(d, jobs={"plan": done("plan", PLAN_OK), "backup": pulling})
    assert d.status["message"] == "backup Job shop-backup-g1 is starting: its node pulls the image op:1"
    assert cond(d, c.RECONCILING)["status"] == "True"
    blocked = JobObservation("shop-backup-g1", "active", started=False, blocked=MISSING)
    d = advance(d, jobs={"plan": done("plan", PLAN_OK), "backup": blocked})
    assert summary(d) == ("False", "False", "True") and d.jobs == []
    assert cond(d, c.STALLED)["reason"] == "PersistentVolumeClaimNotFound"
    assert "shop/backups" in d.status["message"] and d.status["phase"] == "BackingUp"
    # The claim is created: the same Job's pod starts, and the run goes on.
    d = advance(d, jobs={"plan": done("plan", PLAN_OK), "backup": JobObservation("shop-backup-g1", "active")})
    assert summary(d) == ("False", "True", "False") and d.jobs == []
    d = advance(d, jobs={"plan": done("plan", PLAN_OK), "backup": done("backup", BACKUP)})
    assert [j.role for j in d.jobs] == ["migrate"]


def test_a_name_too_long_for_a_label_is_answered_not_retried() -> None:
    obs = observe()
    d = decide(obs.__class__(**{**obs.__dict__, "name": "s" * 120}))
    assert d.jobs == [] and cond(d, c.STALLED)["reason"] == "InvalidSpec"
    assert "120 characters" in d.status["message"] and d.status["observedGeneration"] == 1
