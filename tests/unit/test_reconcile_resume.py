"""A lock timeout or a lost connection after some revisions of the plan committed is a wait, not a failure: the
database is at a revision of the plan, each revision whole, so the same approved plan continues from there (no new
plan, approval or backup, nothing downgraded), and after the retries the run stalls where it is. A real failure after
a commit, and a half-applied revision (MySQL/MariaDB), still roll back as before."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from test_reconcile import (
    NOW,
    PLAN_OK,
    SPEC,
    _at_migrating,
    advance,
    cond,
    decide,
    done,
    failed_at,
    half_failed,
    observe,
    stopped,
    summary,
)
from test_reconcile_locks import BLOCKED

from alembic_operator import constants as c
from alembic_operator.observation import DatabaseObservation, JobObservation
from alembic_operator.reconcile import JOB_RETRIES, Decision

# The runner's report: r2 committed (its own transaction), r3 waited for a lock and gave up, changing nothing.
LOCKED_AFTER_R2: dict[str, Any] = {
    "ok": False, "reason": "LockTimeout", "from": "r1", "to": "r3", "revision": "r2", "applied": ["r2"],
    "failedRevision": "r3", "blockers": [{"pid": 4242, "application": "nightly-report"}],
    "message": BLOCKED.replace("revision r2", "revision r3").replace("at r1 (nothing was committed)", "at r2")}
# The same Job resumed from r2, timing out again at r3: it committed nothing more.
LOCKED_FROM_R2 = {**LOCKED_AFTER_R2, "from": "r2", "applied": []}
# PostgreSQL restarted during r3: the runner could not read the revision afterwards, it may have committed r2 and r3.
LOST = {"ok": False, "reason": "DatabaseUnreachable", "from": "r1", "to": "r3", "attempted": ["r2", "r3"],
        "failedRevision": "r3", "message": "revision r3 lost its connection to the database: terminating connection "
        "due to administrator command (SQLSTATE 57P01); the database's revision could not be read afterwards"}
WRITERS = ("downgrade", "restore", "backup", "plan")  # what a resumed run must not start again (or at all)


def roles(d: Decision) -> list[str]:
    return [j.role for j in d.jobs]


def migrate(report: dict[str, Any] | None, attempt: int, state: str = "failed") -> dict[str, JobObservation]:
    return {"migrate": done("migrate", report, state, attempt)}


def test_a_lock_timeout_after_a_committed_revision_continues_the_same_plan_from_there() -> None:
    status = _at_migrating()
    approved = status["plan"]["hash"]
    d = decide(observe(status, jobs=migrate(LOCKED_AFTER_R2, 0), db=DatabaseObservation("r2")))
    assert d.jobs == [] and summary(d) == ("False", "True", "False") and d.status["phase"] == "Migrating"
    waiting = cond(d, c.RECONCILING)
    assert waiting["reason"] == "LockTimeout" and "pid 4242" in waiting["message"]
    assert ("the database is at r2; r2 committed whole and kept: the retry continues the plan from r2; retrying in "
            "5s (attempt 2 of 6)") in waiting["message"]
    assert d.events == [("Warning", "LockTimeout", waiting["message"])]
    assert c.ROLLED_BACK not in [x["type"] for x in d.status["conditions"]]
    d = advance(d, jobs=migrate(LOCKED_AFTER_R2, 0), db=DatabaseObservation("r2"), now=NOW + timedelta(seconds=6))
    assert [(j.role, j.args) for j in d.jobs] == [("migrate", {"from": "r2", "to": "r3", "instance": "1"})]
    # The blocker is gone: the retry finishes the plan.
    d = advance(d, jobs=migrate({"ok": True, "from": "r2", "to": "r3", "applied": ["r3"]}, 1, "succeeded"),
                db=DatabaseObservation("r3"), now=NOW + timedelta(seconds=9))
    assert summary(d) == ("True", "False", "False") and d.status["phase"] == "Succeeded"
    assert cond(d, c.MIGRATED)["message"] == "upgraded r1 -> r3"
    assert d.status["plan"]["hash"] == approved and not set(roles(d)) & set(WRITERS)
    [entry] = d.status["history"]
    assert (entry["from"], entry["to"], entry["result"], entry["planHash"]) == ("r1", "r3", "Succeeded", approved)


def test_after_the_retries_it_stalls_where_it_is_nothing_downgraded_and_says_where_that_is() -> None:
    status = _at_migrating()
    d = decide(observe(status, jobs=migrate(LOCKED_AFTER_R2, 0), db=DatabaseObservation("r2")))
    now = NOW
    for attempt in range(1, JOB_RETRIES + 1):
        now += timedelta(seconds=61)
        d = advance(d, jobs=migrate(LOCKED_AFTER_R2 if attempt == 1 else LOCKED_FROM_R2, attempt - 1),
                    db=DatabaseObservation("r2"), now=now)
        assert [(j.role, j.args["from"]) for j in d.jobs] == [("migrate", "r2")]
        d = advance(d, jobs=migrate(LOCKED_FROM_R2, attempt), db=DatabaseObservation("r2"), now=now)
        assert not set(roles(d)) & set(WRITERS)
    assert d.jobs == [] and d.status["phase"] == "Failed" and summary(d) == ("False", "False", "True")
    stalled = cond(d, c.STALLED)
    assert stalled["reason"] == "LockTimeout" and "pid 4242" in stalled["message"]
    assert (f"(attempt {JOB_RETRIES + 1} of {JOB_RETRIES + 1}); r2 committed whole and is kept (nothing undone): the "
            "database is at r2, on the way from r1 to r3") in stalled["message"]
    assert stalled["message"].endswith("raise spec.migrations.lockTimeout, then edit the resource to try again.")
    assert c.ROLLED_BACK not in [x["type"] for x in d.status["conditions"]]
    assert d.status["run"]["result"] == "Failed" and d.status["history"][-1]["reason"] == "LockTimeout"
    assert d.status["currentRevision"] == "r2"


def test_a_connection_lost_mid_plan_resumes_from_the_committed_revision_once_the_server_is_back() -> None:
    status = _at_migrating()
    down = DatabaseObservation(error_reason="DatabaseUnreachable", error_message="connection refused", transient=True)
    d = decide(observe(status, jobs=migrate(LOST, 0), db=down))  # the server is still restarting
    assert d.jobs == [] and cond(d, c.RECONCILING)["reason"] == "DatabaseUnreachable"
    d = advance(d, jobs=migrate(LOST, 0), db=DatabaseObservation("r2"), now=NOW + timedelta(seconds=3))
    assert d.jobs == [] and cond(d, c.RECONCILING)["reason"] == "DatabaseUnreachable"
    assert "r2 committed whole and kept: the retry continues the plan from r2" in cond(d, c.RECONCILING)["message"]
    d = advance(d, jobs=migrate(LOST, 0), db=DatabaseObservation("r2"), now=NOW + timedelta(seconds=9))
    assert [(j.role, j.args["from"]) for j in d.jobs] == [("migrate", "r2")]
    d = advance(d, jobs=migrate({"ok": True, "from": "r2", "to": "r3", "applied": ["r3"]}, 1, "succeeded"),
                db=DatabaseObservation("r3"), now=NOW + timedelta(seconds=12))
    assert d.status["phase"] == "Succeeded" and not set(roles(d)) & set(WRITERS)


def test_a_real_failure_after_a_commit_still_rolls_back() -> None:
    d = decide(observe(_at_migrating(), jobs=migrate(failed_at("r2"), 0), db=DatabaseObservation("r2")))
    assert [(j.role, j.args) for j in d.jobs] == [("downgrade", {"from": "r2", "to": "r1"})]


def test_a_real_failure_of_the_resumed_job_undoes_what_the_whole_run_committed() -> None:
    """The resumed Job reports only its own part (from r2): the r2 its predecessor committed is undone too."""
    d = decide(observe(_at_migrating(), jobs=migrate(LOCKED_AFTER_R2, 0), db=DatabaseObservation("r2")))
    d = advance(d, jobs=migrate(LOCKED_AFTER_R2, 0), db=DatabaseObservation("r2"), now=NOW + timedelta(seconds=6))
    broken = {"ok": False, "reason": "MigrationFailed", "message": "check constraint violated", "from": "r2",
              "to": "r3", "revision": "r2", "applied": [], "failedRevision": "r3"}
    d = advance(d, jobs=migrate(broken, 1), db=DatabaseObservation("r2"), now=NOW + timedelta(seconds=9))
    assert [(j.role, j.args) for j in d.jobs] == [("downgrade", {"from": "r2", "to": "r1"})]
    assert d.status["run"]["rollback"]["committed"] == ["r2"]
    # ... and its pod deleted with its report: the whole plan's prefix up to the database is this run's.
    gone = {"migrate": JobObservation(name="shop-migrate-g1-1", state="failed", instance="1", message="deleted",
                                      cause=("PodDeleted", "its pod was deleted"))}
    d2 = advance(d, jobs=gone, db=DatabaseObservation("r2"), now=NOW + timedelta(seconds=9))
    assert d2.status["phase"] == "RollingBack" and d2.status["run"]["rollback"]["committed"] == ["r2"]


def test_a_resumed_job_that_finds_the_database_moved_by_another_writer_does_not_plan_again() -> None:
    """Its run committed r2 before it: re-planning would drop that; it stalls as DatabaseMoved instead."""
    d = decide(observe(_at_migrating(), jobs=migrate(LOCKED_AFTER_R2, 0), db=DatabaseObservation("r2")))
    d = advance(d, jobs=migrate(LOCKED_AFTER_R2, 0), db=DatabaseObservation("r2"), now=NOW + timedelta(seconds=6))
    moved = {"ok": False, "reason": "RevisionMoved", "from": "r2", "to": "r3", "revision": "zz",
             "message": "the database is at zz, not at r2 as planned"}
    d = advance(d, jobs=migrate(moved, 1), db=DatabaseObservation("zz"), now=NOW + timedelta(seconds=9))
    assert d.jobs == [] and cond(d, c.STALLED)["reason"] == "DatabaseMoved"


# --- MySQL/MariaDB: DDL is not transactional -----------------------------------------------------------------------

PLAN_MYSQL = {**PLAN_OK, "transactionalDDL": False}


def test_on_mysql_a_lock_timeout_at_a_revisions_first_statement_continues_too() -> None:
    report = {**LOCKED_AFTER_R2, "transactionalDDL": False}
    d = decide(observe(_at_migrating(plan=PLAN_MYSQL), jobs=migrate(report, 0), db=DatabaseObservation("r2")))
    assert d.jobs == [] and cond(d, c.RECONCILING)["reason"] == "LockTimeout"
    d = advance(d, jobs=migrate(report, 0), db=DatabaseObservation("r2"), now=NOW + timedelta(seconds=6))
    assert [(j.role, j.args["from"]) for j in d.jobs] == [("migrate", "r2")]


def test_on_mysql_a_half_applied_revision_is_restored_as_before() -> None:
    """A lock timeout after some of the revision's own statements committed: the runner reports the failure (not
    LockTimeout) with the partial revision, and Auto restores the backup."""
    partial = {"revision": "r3", "statements": ["CREATE TABLE notes (id INTEGER NOT NULL)"], "statementCount": 1}
    report = half_failed("r2", partialRevision=partial)
    d = decide(observe(_at_migrating(plan=PLAN_MYSQL), jobs=migrate(report, 0), db=DatabaseObservation("r2")))
    assert roles(d) == ["restore"]
    # Even a report that said LockTimeout over a half-applied revision is not resumed.
    d = decide(observe(_at_migrating(plan=PLAN_MYSQL), jobs=migrate({**report, "reason": "LockTimeout"}, 0),
                       db=DatabaseObservation("r2")))
    assert roles(d) == ["restore"]


def test_on_mysql_a_lost_connection_that_could_not_say_where_it_stopped_is_restored_as_before() -> None:
    report = {**LOST, "transactionalDDL": False}
    d = decide(observe(_at_migrating(plan=PLAN_MYSQL), jobs=migrate(report, 0), db=DatabaseObservation("r2")))
    assert roles(d) == ["restore"]
    assert "could not report where it stopped" in cond(d, c.ROLLED_BACK)["message"]


def test_a_killed_pod_is_not_a_passing_failure() -> None:
    killed = {"migrate": stopped("migrate", ("OOMKilled", "out of memory"),
                                 {"ok": False, "reason": "Interrupted", "attempted": ["r2", "r3"]})}
    d = decide(observe(_at_migrating({**SPEC}), jobs=killed, db=DatabaseObservation("r2")))
    assert [(j.role, j.args) for j in d.jobs] == [("downgrade", {"from": "r2", "to": "r1"})]


def test_a_connection_lost_every_time_stalls_with_its_own_reason_where_the_database_is() -> None:
    lost_from_r2 = {**LOST, "from": "r2", "attempted": ["r3"]}
    d = decide(observe(_at_migrating(), jobs=migrate(LOST, 0), db=DatabaseObservation("r2")))
    now = NOW
    for attempt in range(1, JOB_RETRIES + 1):
        now += timedelta(seconds=61)
        d = advance(d, jobs=migrate(LOST if attempt == 1 else lost_from_r2, attempt - 1),
                    db=DatabaseObservation("r2"), now=now)
        d = advance(d, jobs=migrate(lost_from_r2, attempt), db=DatabaseObservation("r2"), now=now)
    stalled = cond(d, c.STALLED)
    assert stalled["reason"] == "DatabaseUnreachable" and d.status["phase"] == "Failed" and d.jobs == []
    assert "r2 committed whole and is kept (nothing undone): the database is at r2" in stalled["message"]
    assert stalled["message"].endswith("Check the database (the Job's log says what failed), then edit the resource "
                                       "to try again.")
