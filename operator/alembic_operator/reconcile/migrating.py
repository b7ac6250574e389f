"""The steps that write: the backup, then the migration, judged by its Job's own report."""

from __future__ import annotations

from typing import cast

from .. import constants as c
from .. import reasons as r
from .. import status as s
from ..api import (
    BackupStatus,
    RunBackup,
)
from ..constants import Role
from ..runner.results import BackupResult, MigrateResult
from . import contract, rehearsal
from .decision import Decision
from .rollback import choose_rollback, half_applied
from .turn import JOB_RETRIES, POLL_IDLE, Turn, rev


def committed_by_run(start: str | None, planned: list[str], report: MigrateResult | None,
                     db_rev: str | None, report_lost: bool = False) -> list[str] | None:
    """The revisions this run's migration Job committed, as proven by the Job's own report; None when the database
    is somewhere that report cannot account for (another writer moved it: nothing of it may be rolled back).

    The runner reports, under the advisory lock it holds while migrating: RevisionMoved (it ran nothing), or
    "applied" (finished, failed or not: exactly what it committed), or, written before each revision starts so that
    a killed pod still leaves it behind, "attempted" (it may have committed any prefix of these). No report at all
    means it never started migrating, unless `report_lost`: its pod was deleted (at its deadline, by a person, a
    drain) and the report with it. A report lost, or a list cut to fit a termination message (it keeps its head):
    the Job ran a prefix of `planned` (its plan), and that is what it may have committed.
    """
    report = report or {}
    resumed = (report.get("from") or None) if "from" in report else start
    if resumed != start and resumed in planned:  # a retry that continued the plan where an earlier Job left it
        done = planned[: planned.index(resumed) + 1]
        rest = committed_by_run(resumed, planned[len(done):], report, db_rev)
        return None if rest is None else done + rest
    if report.get("reason") == r.REVISION_MOVED:
        return [] if db_rev == start else None
    if report_lost or report.get("appliedTruncated") or report.get("attemptedTruncated"):
        positions = [start, *planned]
        return planned[: positions.index(db_rev)] if db_rev in positions else None
    applied = report.get("applied")
    if isinstance(applied, list):
        end = applied[-1] if applied else start
        return [str(r) for r in applied] if db_rev == end else None
    attempted = [str(r) for r in report.get("attempted") or []]
    positions = [start, *attempted]
    if db_rev not in positions:
        return None
    return attempted[: positions.index(db_rev)]




def ran_nothing(report: MigrateResult | None) -> bool:
    """The migration Job's report proves it changed nothing (refused, or never got as far as migrating)."""
    report = report or {}
    return report.get("reason") == r.REVISION_MOVED or not (report.get("applied") or report.get("attempted"))


def backing_up(turn: Turn) -> Decision:
    job = turn.drive("backup", {}, "backing up the database")
    if isinstance(job, Decision):
        return job
    result = cast(BackupResult, job.result or {})
    if job.state == "failed" or not result.get("ok"):
        message = turn.failure_message("backup") + "; nothing was changed in the database"
        said = r.parse(result.get("reason"))
        turn.condition(c.BACKUP_SUCCEEDED, "False", said or r.BACKUP_FAILED, message)
        # A store that cannot be written (BackupVolumeNotWritable, BackupBucketNotFound...) is Stalled under its own
        # reason, and the run's history entry says it too: its fix is the store's, not the Job's
        store_stall = said is not None and said.info.kind == "stalled" and c.BACKUP_SUCCEEDED in said.info.where
        turn.finish("Failed", said if store_stall and said else r.BACKUP_FAILED)
        return turn.outcome(s.stalled("Failed", said if store_stall and said else turn.failure_reason(
            "backup", r.JOB_FAILED), message + ". Fix the cause, then edit the resource to retry."), POLL_IDLE)
    turn.st.backup = BackupStatus.model_validate(
        {k: result[k] for k in ("location", "sizeBytes", "sha256", "revision", "completedAt") if k in result})
    turn.run.backup = RunBackup(location=result.get("location"), file=result.get("file"),
                                sha256=result.get("sha256"), revision=result.get("revision"))
    turn.condition(c.BACKUP_SUCCEEDED, "True", r.BACKUP_COMPLETED,
                   f"backup at {result.get('location')} ({result.get('sizeBytes')} bytes)")
    return turn.goto("Rehearsing")  # spec.rehearsal, or straight on to Migrating


def migrating(turn: Turn) -> Decision:
    decision = _migrating(turn)
    contract.note_started(turn)
    return decision


def _migrating(turn: Turn) -> Decision:
    start, target = turn.run.start_revision, turn.run.target_revision
    role: Role = "contract" if turn.run.part == "contract" else "migrate"  # a split plan's part (contract.py)

    def unless_moved() -> Decision | None:
        if (stop := turn.database("Migrating")) is not None:
            return stop
        if turn.obs.database.revision != start:  # moved while the backup ran: this plan is stale
            return turn.replan(f"the database moved from {rev(start)} to {rev(turn.obs.database.revision)} "
                               "before the migration started")
        return None

    kept = clean_stop(turn, role)  # a lock timeout or a lost connection: the retry continues from the database
    resume = turn.obs.database.revision if kept else start
    changed = (f"{', '.join(kept)} committed whole and kept: the retry continues the plan from {rev(resume)}"
               if kept else "nothing was changed")
    job = turn.drive(role, {"from": rev(resume), "to": str(target)},
                     f"upgrading {rev(start)} -> {target}{rehearsal.expectation(turn)}",
                     f"{role} Job {turn.job(role).name} is upgrading {rev(start)} -> {target}"
                     f"{rehearsal.expectation(turn)}",
                     before_start=unless_moved, before_retry=lambda: turn.database("Migrating"),
                     may_retry=lambda: kept is not None, changed=changed)
    if isinstance(job, Decision):
        return job
    db_rev = turn.obs.database.revision
    report = cast(MigrateResult, job.result) if job.result is not None else None
    if job.state == "succeeded" and db_rev == target:
        if turn.run.part is None:  # a whole plan: its duration next to its rehearsal's
            rehearsal.migrated(turn, report)
        if turn.run.part == "expand":
            return contract.expanded(turn)
        if turn.run.part == "contract":
            contract.contracted(turn)
        first = turn.st.contract.from_revision if turn.run.part == "contract" and turn.st.contract else start
        turn.condition(c.MIGRATED, "True", r.UPGRADE_SUCCEEDED, f"upgraded {rev(first)} -> {target}"
                       f"{rehearsal.expectation(turn)}")
        turn.finish("Succeeded", r.MIGRATED)
        return turn.goto("Done")
    if kept:  # retried until now: what committed is whole and good, so it stays; a human ends the blocker
        why = (f"{turn.failure_message(role)} (attempt {int((turn.run.attempts or {}).get(role, 0)) + 1}"
               f" of {JOB_RETRIES + 1}); {', '.join(kept)} committed whole and {'is' if len(kept) == 1 else 'are'}"
               f" kept (nothing undone): the database is at {rev(db_rev)}, on the way from {rev(start)} to "
               f"{target}")
        turn.condition(c.MIGRATED, "False", r.UPGRADE_FAILED, why)
        turn.run.failure, turn.run.failure_reason = why, str((report or {}).get("reason"))
        return turn.failed(why)
    # Stopped from outside with no report left: its pod, and the report in it, were deleted.
    lost = job.state == "failed" and report is None and job.cause is not None
    committed = committed_by_run(start, list(turn.run.revisions or []), report, db_rev, report_lost=lost)
    if committed is None and job.state == "failed" and ran_nothing(report) and not lost and \
            rev((report or {}).get("from", start)) == rev(start):  # a resumed Job's run committed before it
        return turn.replan(f"the database is at {rev(db_rev)}, not at {rev(start)} where this run's plan "
                           f"starts: another writer moved it, and migration Job {job.name} ran nothing")
    locked = job.state == "failed" and (report or {}).get("reason") == r.LOCK_TIMEOUT
    if job.state == "succeeded":
        why = f"the migration Job succeeded but the database is at {rev(db_rev)}, not {target}"
    else:
        why = turn.failure_message(role)
    if locked:  # retried until now: a human must end the blocker (or allow a longer wait)
        why += f" (attempt {int((turn.run.attempts or {}).get(role, 0)) + 1} of {JOB_RETRIES + 1})"
    turn.condition(c.MIGRATED, "False", r.UPGRADE_FAILED, why)
    turn.run.failure = why
    turn.run.failure_reason = (turn.failure_reason(role, r.LOCK_TIMEOUT if locked else r.JOB_FAILED)
                               if job.state == "failed" else None)
    if committed is None:
        ran = (report or {}).get("applied") or (report or {}).get("attempted") or []
        msg = (f"{why}; the database is at {rev(db_rev)}, where this run did not leave it (its Job reported "
               f"{', '.join(ran)}): another writer changed it, so nothing was rolled back. Check the database "
               "and who else migrates it, then edit the resource to plan again")
        turn.condition(c.ROLLED_BACK, "False", r.DATABASE_MOVED, msg)
        turn.finish("Failed", r.DATABASE_MOVED)
        return turn.outcome(s.stalled("Failed", r.DATABASE_MOVED, msg), POLL_IDLE)
    return choose_rollback(turn, db_rev, committed, why, report, lost)


def clean_stop(turn: Turn, role: Role = "migrate") -> list[str] | None:
    """What this run committed, when its migration Job stopped for a passing reason (a lock timeout, a lost
    connection) with the database at a revision of the plan, each revision whole: the retry continues the same
    approved plan from there (no new plan, approval or backup), and nothing is undone. None when it did not (a
    real failure, a half-applied revision, a database another writer moved): the rollback decides."""
    job, db = turn.job(role), turn.obs.database
    report = job.result or {}
    if job.state != "failed" or report.get("reason") not in r.TRANSIENT_JOB_REASONS or not db.ok \
            or half_applied(cast(MigrateResult, report)):
        return None
    nontransactional = turn.run.transactional_ddl is False or report.get("transactionalDDL") is False
    if nontransactional and "applied" not in report and report.get("attempted"):
        return None  # it could not say where it stopped: the revision it was running may be half-applied
    return committed_by_run(turn.run.start_revision, list(turn.run.revisions or []),
                            cast(MigrateResult, report), db.revision)
