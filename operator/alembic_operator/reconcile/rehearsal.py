"""The rehearsal (spec.rehearsal): after the backup, the plan runs first on a scratch copy of production.

    BackingUp -> Rehearsing -> Migrating                       (the rehearsal passed, or was skipped)
                         `-> Done (Failed, Stalled RehearsalFailed: production untouched, the backup kept)

With spec.approval.requireRehearsal a plan that needs approval is rehearsed before it is approved:

    AwaitingApproval -> BackingUp -> Rehearsing -> AwaitingApproval (with the measures) -> BackingUp (a fresh
    backup: rows written meanwhile must be in the one a rollback restores) -> Rehearsing (passed for this hash:
    skipped) -> Migrating

The rehearsal Job restores the run's backup into a scratch database named after the resource (`scratch_name`:
recognisably ours, never a user's) on the server spec.rehearsal names, runs `runner rehearse` there and drops it.
Whatever ends the Job (success, failure, a kill, the operator restarted meanwhile), once it is over the decision asks
`act` to drop the database status.rehearsal.scratchDatabase names and any other of the resource's prefix
(`Decision.scratch_drops`); act writes that name back into status when the drop fails, so it is tried again.
"""

from __future__ import annotations

import hashlib
from typing import cast

from .. import constants as c
from .. import reasons as r
from .. import status as s
from ..api import DatabaseMigrationSpec, RehearsalStatus, RehearsedRevision
from ..jobs import scratch_server
from ..runner.results import MigrateResult, RehearseResult
from .decision import Decision, Event, ScratchDrop
from .turn import POLL_IDLE, Turn, rev

SHOWN_REVISIONS = 20


def scratch_prefix(namespace: str, name: str) -> str:
    """The beginning of every scratch database of one resource: ours by its prefix, the resource's by its digest."""
    return f"alembic_rehearsal_{hashlib.sha256(f'{namespace}/{name}'.encode()).hexdigest()[:10]}_"


def scratch_name(namespace: str, name: str, generation: int) -> str:
    """The scratch database of a generation's rehearsal (a retried Job reuses it: its restore starts it afresh); at
    most 40 characters, which any server takes."""
    return f"{scratch_prefix(namespace, name)}g{generation}"


def wanted(spec: DatabaseMigrationSpec, by_default: bool) -> bool:
    """Whether this spec rehearses: its own setting, else the chart's."""
    return spec.rehearsal.enabled if spec.rehearsal.enabled is not None else by_default


def passed_for(turn: Turn) -> bool:
    """A rehearsal of exactly this run's plan passed (its hash covers the revisions, the SQL and the image)."""
    done = turn.st.rehearsal
    return (done is not None and done.result == "Passed" and turn.run.plan_hash is not None
            and done.plan_hash == turn.run.plan_hash)


def before_approval(turn: Turn, spec: DatabaseMigrationSpec) -> bool:
    """spec.approval.requireRehearsal and a rehearsal would run but has not passed for this plan: the run rehearses
    before it may be approved."""
    return (spec.approval.require_rehearsal and wanted(spec, turn.obs.rehearse_by_default) and spec.backup.enabled
            and scratch_server(spec) is not None and not passed_for(turn))


def needs_rehearsed_approval(turn: Turn) -> bool:
    """After a passed rehearsal: the plan waits for an approval that requireRehearsal held back."""
    plan = turn.st.plan
    spec = turn.spec()
    needs = plan is not None and bool(plan.destructive or plan.breaking or (spec.approval.require_for_locking and (
        plan.locking_count or plan.locking)))
    return spec.approval.require_rehearsal and needs and turn.run.approved_by is None


def rehearsing(turn: Turn) -> Decision:
    """After the backup: rehearse, or say why not, then migrate; a failed rehearsal ends the run here."""
    spec = turn.spec()
    if not wanted(spec, turn.obs.rehearse_by_default):
        return turn.goto("Migrating")
    if passed_for(turn):  # rehearsed before its approval (requireRehearsal): this backup is the fresh one
        return turn.goto("Migrating")
    server = scratch_server(spec)
    if server is None:
        return skipped(turn, "no scratch server: set spec.rehearsal.urlSecretRef (or onProductionServer: true)")
    size = turn.st.backup.size_bytes if turn.st.backup else None
    limit = spec.rehearsal.max_backup_bytes
    if limit is not None and size is not None and size > limit:
        why = f"the backup is {size} bytes, more than spec.rehearsal.maxBackupBytes ({limit})"
        if spec.rehearsal.over_limit == "Skip":
            return skipped(turn, why)
        message = (f"{why} and spec.rehearsal.overLimit is Refuse: nothing ran on production. Raise the limit, set "
                   "overLimit: Skip, or turn the rehearsal off, then edit the resource")
        turn.condition(c.REHEARSED, "False", r.REHEARSAL_TOO_LARGE, message)
        turn.finish("Failed", r.REHEARSAL_TOO_LARGE)
        return turn.outcome(s.stalled("Failed", r.REHEARSAL_TOO_LARGE, message), POLL_IDLE)
    backup = turn.run.backup
    if backup is None or not backup.file or not backup.sha256:
        return skipped(turn, "the run has no backup to restore")
    name = scratch_name(turn.obs.namespace, turn.obs.name, turn.generation)
    # the whole plan, both parts of one split at its contract boundary (contract.py: the run's target is the part's)
    target = (turn.st.plan.to_revision if turn.st.plan else None) or turn.run.target_revision
    args = {"from": rev(turn.run.start_revision), "to": str(target), "file": backup.file,
            "sha256": backup.sha256, "database": name}
    if turn.job("rehearse").state in ("absent", "active"):
        turn.st.rehearsal = RehearsalStatus(result="Running", plan_hash=turn.run.plan_hash,
                                            generation=turn.generation, scratch_database=name)
    job = turn.drive("rehearse", args, f"rehearsing {rev(turn.run.start_revision)} -> {target} on "
                     "a scratch copy of the backup",
                     f"rehearsal Job {turn.job('rehearse').name} runs the plan on a scratch copy of the backup "
                     f"({name}); production is untouched until it passes",
                     changed="production was not touched")
    if isinstance(job, Decision):
        return job
    drop(turn, name)
    result = cast(RehearseResult, job.result or {})
    done = measured(turn, result, name)
    if job.state == "succeeded" and result.get("ok"):
        done.result = "Passed"
        took = f"{done.seconds:.1f}s" if done.seconds is not None else "an unknown time"
        slowest = max(done.revisions, key=lambda x: x.seconds or 0.0, default=None)
        detail = f"; slowest revision {slowest.revision} ({slowest.seconds:.1f}s)" if slowest and \
            slowest.seconds is not None else ""
        message = f"the plan ran whole on a scratch copy of the backup in {took}{detail}"
        done.message = message
        turn.st.rehearsal = done
        turn.condition(c.REHEARSED, "True", r.REHEARSAL_PASSED, message)
        turn.decision.events.append(Event("Normal", r.REHEARSAL_PASSED, message))
        if needs_rehearsed_approval(turn):
            turn.next_instance("backup")  # once approved, a fresh backup: this one may be old by then
            turn.run.backup = None
            return turn.goto("AwaitingApproval")
        return turn.goto("Migrating")
    failed = result.get("failedRevision")
    said = result.get("message") or turn.failure_message("rehearse")
    where = f"revision {failed} failed" if failed else "the rehearsal failed"
    message = (f"rehearsal: {where} on a scratch copy of production ({said}). Production was not touched (no "
               f"migration or rollback ran; the backup {turn.run.backup.location if turn.run.backup else ''} is "
               "kept). Fix the data or the revision, then edit the resource to try again")
    done.result, done.failed_revision, done.message = "Failed", failed, said
    turn.st.rehearsal = done
    turn.condition(c.REHEARSED, "False", r.REHEARSAL_FAILED, message)
    turn.finish("Failed", r.REHEARSAL_FAILED)
    return turn.outcome(s.stalled("Failed", r.REHEARSAL_FAILED, message), POLL_IDLE)


def skipped(turn: Turn, why: str) -> Decision:
    message = f"rehearsal skipped: {why}"
    turn.st.rehearsal = RehearsalStatus(result="Skipped", plan_hash=turn.run.plan_hash, generation=turn.generation,
                                        message=message, finished_at=turn.obs.now)
    turn.condition(c.REHEARSED, "False", r.REHEARSAL_SKIPPED, message)
    turn.decision.events.append(Event("Normal", r.REHEARSAL_SKIPPED, message))
    return turn.goto("Migrating")


def measured(turn: Turn, result: RehearseResult, name: str) -> RehearsalStatus:
    revisions = [RehearsedRevision.model_validate(item) for item in result.get("revisions") or []]
    return RehearsalStatus(plan_hash=turn.run.plan_hash, generation=turn.generation,
                           seconds=result.get("durationSeconds"), revisions=revisions[:SHOWN_REVISIONS],
                           finished_at=turn.obs.now, scratch_database=None)


def drop(turn: Turn, name: str) -> None:
    """Ask act to drop `name`, and any other scratch database of this resource it finds (no rehearsal Job of it
    runs: the caller knows)."""
    server = scratch_server(turn.spec())
    if server is not None:
        turn.decision.scratch_drops.append(ScratchDrop(secret=server, names=(name,),
                                                       prefix=scratch_prefix(turn.obs.namespace, turn.obs.name)))
    if turn.st.rehearsal is not None and turn.st.rehearsal.scratch_database == name:
        turn.st.rehearsal.scratch_database = None


def tidy(turn: Turn) -> None:
    """Whatever step the run is at: a scratch database status still names, with no rehearsal Job running, is
    dropped (the run moved on while the operator was away, the resource is being deleted...)."""
    left = turn.decision.state.rehearsal.scratch_database if turn.decision.state.rehearsal else None
    if not left or turn.run.step == "Rehearsing" or turn.job("rehearse").state == "active":
        return  # the step itself drops it when its Job is over (a retry restores into it afresh)
    if any(left in d.names for d in turn.decision.scratch_drops):
        return
    turn.st = turn.decision.state
    drop(turn, left)


def rehearsed_note(turn: Turn) -> str:
    """For an approval's message: what the passed rehearsal of this plan measured."""
    done = turn.st.rehearsal
    if not passed_for(turn) or done is None:
        return ""
    slow = sorted(done.revisions, key=lambda x: -(x.seconds or 0.0))[:3]
    each = ", ".join(f"{x.revision} {x.seconds:.1f}s" for x in slow if x.seconds is not None)
    took = f" in {done.seconds:.1f}s" if done.seconds is not None else ""
    return f". Its rehearsal on a scratch copy passed{took}" + (f" ({each})" if each else "")


def expectation(turn: Turn) -> str:
    """For the migration's messages: how long its rehearsal took, when this plan was rehearsed."""
    if not passed_for(turn) or turn.st.rehearsal is None or turn.st.rehearsal.seconds is None:
        return ""
    return f" (its rehearsal took {turn.st.rehearsal.seconds:.1f}s)"


def migrated(turn: Turn, report: MigrateResult | None) -> None:
    """The real migration's duration next to its rehearsal's, to check the prediction over time."""
    seconds = (report or {}).get("durationSeconds")
    if passed_for(turn) and turn.st.rehearsal is not None and isinstance(seconds, int | float):
        turn.st.rehearsal.migration_seconds = float(seconds)
