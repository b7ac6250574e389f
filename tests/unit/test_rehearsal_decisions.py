"""The rehearsal's decisions (reconcile/rehearsal.py): after the backup the plan runs on a scratch copy first; a
failure there stops the run before production; its scratch database is always dropped; the size guard; approval
that requires a passed rehearsal of exactly the plan."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from test_reconcile import PLAN_DESTRUCTIVE, PLAN_OK, SPEC, advance, cond, done, observe, summary

from alembic_operator import constants as c
from alembic_operator.api import SpecError, parse_spec
from alembic_operator.observation import DatabaseObservation, JobObservation
from alembic_operator.reconcile import Decision, decide
from alembic_operator.reconcile.rehearsal import scratch_name, scratch_prefix
from alembic_operator.scratchdb import NAME

SCRATCH = {"urlSecretRef": {"name": "scratch-db", "key": "url"}}
REHEARSED = {**SPEC, "rehearsal": {"enabled": True, **SCRATCH}}
BACKUP = {"ok": True, "location": "pvc/b/shop/shop/x.dump", "file": "/backups/shop/shop/x.dump",
          "sizeBytes": 1000, "sha256": "sha256:aa", "revision": "r1", "completedAt": "2026-11-24T12:00:00Z"}
PASSED = {"ok": True, "command": "rehearse", "from": "r1", "to": "r3", "applied": ["r2", "r3"],
          "durationSeconds": 12.5, "rehearsalSeconds": 12.6, "database": "x", "locksSampled": True,
          "revisions": [{"revision": "r2", "seconds": 10.25, "rows": 1200,
                         "locks": [{"on": "public.orders", "mode": "AccessExclusiveLock", "heldSeconds": 10.2}]},
                        {"revision": "r3", "seconds": 2.25}]}
FAILED = {"ok": False, "command": "rehearse", "reason": "MigrationFailed", "failedRevision": "r3",
          "message": 'revision r3 failed: IntegrityError: could not create unique index "ux_code"; the database is at '
                     "r2", "revisions": [{"revision": "r2", "seconds": 1.0}, {"revision": "r3", "seconds": 0.5}]}


def backed_up(spec: dict[str, Any], plan: dict[str, Any] = PLAN_OK,
              annotations: dict[str, str] | None = None) -> tuple[Decision, dict[str, JobObservation]]:
    """The run with its plan approved (or not) and its backup taken; the Jobs it has."""
    d = decide(observe(spec=spec))
    jobs = {"plan": done("plan", plan)}
    d = advance(d, spec=spec, jobs=jobs, annotations=annotations)
    jobs = {**jobs, "backup": done("backup", BACKUP)}
    return advance(d, spec=spec, jobs=jobs, annotations=annotations), jobs


def test_scratch_databases_are_named_recognisably_per_resource_and_generation() -> None:
    name = scratch_name("shop", "orders", 12)
    assert name.startswith(scratch_prefix("shop", "orders")) and name.startswith("alembic_rehearsal_")
    assert NAME.fullmatch(name) and len(name) <= 40
    assert scratch_prefix("shop", "orders") != scratch_prefix("shop", "order") != scratch_prefix("sho", "porders")
    assert not NAME.fullmatch("shop") and not NAME.fullmatch("alembic_rehearsal_users")


def test_after_the_backup_the_plan_is_rehearsed_on_a_scratch_copy_then_migrated() -> None:
    d, jobs = backed_up(REHEARSED)
    assert [j.role for j in d.jobs] == ["rehearse"] and d.status["phase"] == "Rehearsing"
    name = scratch_name("shop", "shop", 1)
    assert d.jobs[0].args == {"from": "r1", "to": "r3", "file": "/backups/shop/shop/x.dump", "sha256": "sha256:aa",
                              "database": name}
    assert d.status["rehearsal"] == {"result": "Running", "planHash": d.status["plan"]["hash"], "generation": 1,
                                     "scratchDatabase": name}
    assert d.scratch_drops == []  # the Job is using it
    jobs = {**jobs, "rehearse": done("rehearse", PASSED)}
    d = advance(d, spec=REHEARSED, jobs=jobs)
    assert [j.role for j in d.jobs] == ["migrate"] and d.status["phase"] == "Migrating"
    assert [(x.names, x.secret) for x in d.scratch_drops] == [((name,), ("scratch-db", "url"))]
    assert d.scratch_drops[0].prefix == scratch_prefix("shop", "shop")
    rehearsal = d.status["rehearsal"]
    assert rehearsal["result"] == "Passed" and "scratchDatabase" not in rehearsal and rehearsal["seconds"] == 12.5
    assert rehearsal["revisions"][0] == PASSED["revisions"][0]
    assert cond(d, c.REHEARSED)["status"] == "True" and "12.5s" in cond(d, c.REHEARSED)["message"]
    assert "slowest revision r2 (10.2s)" in cond(d, c.REHEARSED)["message"]
    assert "its rehearsal took 12.5s" in d.status["message"]
    jobs = {**jobs, "migrate": done("migrate", {"ok": True, "durationSeconds": 13.0})}
    d = advance(d, spec=REHEARSED, jobs=jobs, db=DatabaseObservation(revision="r3"))
    assert d.status["phase"] == "Succeeded" and d.scratch_drops == []
    assert d.status["rehearsal"]["migrationSeconds"] == 13.0
    assert "its rehearsal took 12.5s" in cond(d, c.MIGRATED)["message"]
    record = d.records[-1]
    assert record.rehearsal is not None and record.rehearsal.seconds == 12.5
    assert record.rehearsal.migration_seconds == 13.0


def test_a_failed_rehearsal_stops_the_run_before_production_is_touched() -> None:
    d, jobs = backed_up(REHEARSED)
    jobs = {**jobs, "rehearse": done("rehearse", FAILED, state="failed")}
    d = advance(d, spec=REHEARSED, jobs=jobs)
    assert d.jobs == []  # no migrate, no downgrade, no restore
    assert d.status["phase"] == "Failed" and summary(d) == ("False", "False", "True")
    assert cond(d, c.STALLED)["reason"] == "RehearsalFailed" and cond(d, c.REHEARSED)["reason"] == "RehearsalFailed"
    message = d.status["message"]
    assert "revision r3 failed" in message and "ux_code" in message and "Production was not touched" in message
    assert "pvc/b/shop/shop/x.dump" in message  # the backup is kept
    assert d.status["rehearsal"]["failedRevision"] == "r3" and d.status["rehearsal"]["result"] == "Failed"
    assert [x.names for x in d.scratch_drops] == [(scratch_name("shop", "shop", 1),)]
    assert d.status["history"][-1]["reason"] == "RehearsalFailed" and "RolledBack" not in str(d.status["conditions"])
    # It stays so, asking for nothing more, until the resource is edited: then a new run plans again.
    again = advance(d, spec=REHEARSED, jobs=jobs)
    assert again.jobs == [] and again.scratch_drops == [] and cond(again, c.STALLED)["reason"] == "RehearsalFailed"
    edited = decide(observe(again.status, spec={**REHEARSED, "targetRevision": "r3"}, generation=2))
    assert [j.role for j in edited.jobs] == ["plan"]


def test_a_killed_rehearsal_job_stops_the_run_and_its_scratch_database_is_dropped() -> None:
    d, jobs = backed_up(REHEARSED)
    killed = JobObservation(name="shop-rehearse-g1", state="failed", message="pod deleted",
                            result={"ok": False, "reason": "Interrupted", "attempted": ["r2"]},
                            cause=("PodDeleted", "its pod was deleted"))
    d = advance(d, spec=REHEARSED, jobs={**jobs, "rehearse": killed})
    assert d.jobs == [] and cond(d, c.STALLED)["reason"] == "RehearsalFailed"
    assert "its pod was deleted" in d.status["message"]
    assert [x.names for x in d.scratch_drops] == [(scratch_name("shop", "shop", 1),)]


def test_a_scratch_database_status_still_names_is_dropped_once_no_job_uses_it() -> None:
    """The operator restarted after the Job ended, or a drop failed (act wrote the name back): dropped now."""
    d, jobs = backed_up(REHEARSED)
    status = d.status
    status["run"]["step"] = "Done"
    status["run"]["result"] = "Failed"
    d = decide(observe(status, spec=REHEARSED, jobs={**jobs, "rehearse": done("rehearse", FAILED, "failed")}))
    assert [x.names for x in d.scratch_drops] == [(scratch_name("shop", "shop", 1),)]
    assert "scratchDatabase" not in (d.status.get("rehearsal") or {})


def test_a_rehearsal_retried_after_a_passing_failure_reuses_its_database_name() -> None:
    d, jobs = backed_up(REHEARSED)
    lost = {"ok": False, "reason": "DatabaseUnreachable", "message": "the scratch server went away"}
    d = advance(d, spec=REHEARSED, jobs={**jobs, "rehearse": done("rehearse", lost, "failed")})
    assert d.jobs == [] and d.status["phase"] == "Rehearsing" and "retrying" in d.status["message"]
    assert d.scratch_drops == []  # the retry restores into it afresh


def test_the_size_guard_skips_or_refuses() -> None:
    skip = {**REHEARSED, "rehearsal": {**REHEARSED["rehearsal"], "maxBackupBytes": 999}}
    d, _ = backed_up(skip)
    assert [j.role for j in d.jobs] == ["migrate"]
    assert cond(d, c.REHEARSED)["reason"] == "RehearsalSkipped"
    assert "1000 bytes, more than spec.rehearsal.maxBackupBytes (999)" in cond(d, c.REHEARSED)["message"]
    assert d.status["rehearsal"]["result"] == "Skipped"
    refuse = {**REHEARSED, "rehearsal": {**skip["rehearsal"], "overLimit": "Refuse"}}
    d, _ = backed_up(refuse)
    assert d.jobs == [] and cond(d, c.STALLED)["reason"] == "RehearsalTooLarge" and d.status["phase"] == "Failed"
    fits = {**REHEARSED, "rehearsal": {**REHEARSED["rehearsal"], "maxBackupBytes": 1000}}
    d, _ = backed_up(fits)
    assert [j.role for j in d.jobs] == ["rehearse"]


def test_the_charts_default_turns_it_on_unless_the_spec_says_otherwise() -> None:
    def after_backup(spec: dict[str, Any], by_default: bool) -> Decision:
        d = decide(replace(observe(spec=spec), rehearse_by_default=by_default))
        planned = {"plan": done("plan", PLAN_OK)}
        for jobs in (planned, {**planned, "backup": done("backup", BACKUP)}):
            d = decide(replace(observe(d.status, spec=spec, jobs=jobs), rehearse_by_default=by_default))
        return d

    unset = {**SPEC, "rehearsal": SCRATCH}
    assert [j.role for j in after_backup(unset, True).jobs] == ["rehearse"]
    assert [j.role for j in after_backup(unset, False).jobs] == ["migrate"]
    off = {**SPEC, "rehearsal": {**SCRATCH, "enabled": False}}
    assert [j.role for j in after_backup(off, True).jobs] == ["migrate"]
    skipped = after_backup(SPEC, True)  # on by default, but no scratch server named: skipped, saying so
    assert [j.role for j in skipped.jobs] == ["migrate"]
    assert "no scratch server" in cond(skipped, c.REHEARSED)["message"]


def test_approval_can_require_a_passed_rehearsal_of_exactly_the_plan() -> None:
    spec = {**REHEARSED, "approval": {"requireRehearsal": True}}
    d = decide(observe(spec=spec))
    jobs = {"plan": done("plan", PLAN_DESTRUCTIVE)}
    h = advance(d, spec=spec, jobs=jobs).status["plan"]["hash"]
    # approved already, but not rehearsed: the rehearsal comes first
    d = advance(d, spec=spec, jobs=jobs, annotations={c.APPROVE_ANNOTATION: h})
    assert [j.role for j in d.jobs] == ["backup"]
    assert cond(d, c.APPROVAL_REQUIRED)["reason"] == "RehearsalRequired"
    jobs = {**jobs, "backup": done("backup", BACKUP)}
    d = advance(d, spec=spec, jobs=jobs)
    assert [j.role for j in d.jobs] == ["rehearse"]
    jobs = {**jobs, "rehearse": done("rehearse", PASSED)}
    d = advance(d, spec=spec, jobs=jobs)  # passed: waits for approval, the measures in its message
    assert d.jobs == [] and d.status["phase"] == "AwaitingApproval"
    assert cond(d, c.STALLED)["reason"] == "DestructiveChangesNotApproved"
    assert "rehearsal on a scratch copy passed in 12.5s (r2 10.2s, r3 2.2s)" in d.status["message"]
    d = advance(d, spec=spec, jobs=jobs, annotations={c.APPROVE_ANNOTATION: h})
    assert [(j.role, j.args.get("instance")) for j in d.jobs] == [("backup", "1")]  # a fresh backup
    fresh = {**jobs, "backup": done("backup", {**BACKUP, "file": "/backups/shop/shop/y.dump"}, instance=1)}
    d = advance(d, spec=spec, jobs=fresh, annotations={c.APPROVE_ANNOTATION: h})
    assert [j.role for j in d.jobs] == ["migrate"]  # rehearsed for this hash: not again


def test_a_rehearsal_needs_a_backup_and_a_server_in_the_spec() -> None:
    for spec, field in (({**REHEARSED, "backup": {"enabled": False}}, "spec.rehearsal.enabled"),
                        ({**SPEC, "rehearsal": {"enabled": True}}, "spec.rehearsal.urlSecretRef")):
        try:
            parse_spec(spec)
        except SpecError as err:
            assert any(p.startswith(field) for p in err.problems), err.problems
        else:
            raise AssertionError(f"accepted {spec}")
    assert parse_spec({**SPEC, "rehearsal": {"enabled": True, "onProductionServer": True}}).rehearsal.enabled
