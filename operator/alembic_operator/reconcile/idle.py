"""A finished run: keep currentRevision and the summary conditions true to the database; the drift checks."""

from __future__ import annotations

from typing import cast

from .. import constants as c
from .. import reasons as r
from .. import status as s
from ..api import (
    MIN_DRIFT_INTERVAL,
    DriftStatus,
    SpecError,
    duration_seconds,
)
from ..observation import JobObservation
from ..runner.results import DriftResult
from .decision import Decision, Event, JobRequest
from .turn import POLL_IDLE, Turn, rev


def idle(turn: Turn) -> Decision:
    """The run is over: keep currentRevision fresh and the summary conditions true to the database."""
    result = turn.run.result
    if result in ("Succeeded", "UpToDate"):
        if (stop := turn.database("Succeeded")) is not None:
            return stop
        db_rev = turn.obs.database.revision
        target = turn.run.target_revision
        if db_rev != target and target in turn.obs.database_lineage:
            by = f" by {turn.obs.database_moved_by}" if turn.obs.database_moved_by else ""
            return turn.outcome(s.ready(r.TARGET_CONTAINED, f"the database is at {rev(db_rev)}, which contains "
                                        f"the target {target} (migrated further{by})"), drift_check(turn))
        if db_rev != target:
            return turn.outcome(s.stalled(
                "Failed", r.DATABASE_CHANGED,
                f"the database is at {rev(db_rev)}, not at the target {target}: it was changed outside the "
                "operator. Check it, then edit the resource (or its targetRevision) to plan again."), POLL_IDLE)
        turn.st.target_revision = target
        if result == "UpToDate" and not s.get_condition(turn.st, c.MIGRATED):
            turn.condition(c.MIGRATED, "True", r.UP_TO_DATE, f"the database is already at {target}")
        msg = f"the database is at {target}"
        requeue = drift_check(turn)
        return turn.outcome(s.ready(r.AT_TARGET_REVISION if result == "UpToDate" else r.MIGRATED, msg), requeue)
    # Failed runs stay as they are until a new generation; only keep currentRevision fresh.
    if turn.obs.database.ok:
        turn.st.current_revision = turn.obs.database.revision
    turn.st.run = turn.run
    turn.decision.state = turn.st
    turn.decision.requeue_after = POLL_IDLE
    return turn.decision


def drift_check(turn: Turn) -> float:
    """spec.driftCheck: one drift Job per interval while Ready; its result sets the Drifted condition."""
    live = turn.obs.parsed
    if isinstance(live, SpecError):
        return POLL_IDLE
    try:
        interval = duration_seconds(live.drift_check.interval)
    except ValueError:
        return POLL_IDLE
    if not interval or live.suspend:
        return POLL_IDLE
    interval = max(interval, MIN_DRIFT_INTERVAL)
    bucket = int(turn.obs.now.timestamp()) // interval
    job = turn.job("drift")
    if job.state in ("succeeded", "failed"):
        drift_result(turn, job)
    # A check still running is let finish: starting the next one over it (a slow node, a large schema) would
    # supersede every check before its result is read, and Drifted would never be written.
    starting = job.state == "absent" or (job.state != "active" and int(job.instance or -1) < bucket)
    if starting:
        turn.decision.jobs.append(JobRequest("drift", turn.generation, live, {"instance": str(bucket)}))
    next_check = float((bucket + 1) * interval - turn.obs.now.timestamp() + 1)  # the operator wakes it then
    if starting or job.state == "active":
        # The Job's end wakes the resource; should that event be missed, its result is still read within a
        # minute, not at the next interval (an hour later, say).
        return min(next_check, POLL_IDLE)
    return next_check


def drift_result(turn: Turn, job: JobObservation) -> None:
    if turn.run.drift_job == job.name:
        return  # already recorded
    turn.run.drift_job = job.name
    result = cast(DriftResult, job.result or {})
    before = s.get_condition(turn.st, c.DRIFTED)
    if job.state == "failed" or not result.get("ok"):
        # Said once, as drift is: a check that keeps failing is a Warning to act on, not a silent Unknown.
        message = turn.failure_message("drift")
        turn.condition(c.DRIFTED, "Unknown", r.DRIFT_CHECK_FAILED, message)
        if before is None or before.reason != r.DRIFT_CHECK_FAILED:
            turn.decision.events.append(Event("Warning", r.DRIFT_CHECK_FAILED, message))
        return
    differences = [str(x) for x in result.get("differences") or []]
    if result.get("behindHead"):
        differences.insert(0, f"behind head: {len(result.get('pending') or [])} revision(s) pending")
    drifted = bool(result.get("drifted"))
    turn.st.drift = DriftStatus(checked_at=turn.obs.now, drifted=drifted, differences=differences[:20])
    if drifted:
        message = "the live database differs from the app's models: " + "; ".join(differences[:5])
        turn.condition(c.DRIFTED, "True", r.SCHEMA_DRIFT, message)
        if before is None or before.status != "True":
            turn.decision.events.append(Event("Warning", r.SCHEMA_DRIFT, message))
    else:
        turn.condition(c.DRIFTED, "False", r.NO_DRIFT, "the live database matches the app's models and scripts")
        if before is not None and before.status == "True":
            turn.decision.events.append(Event("Normal", r.DRIFT_RESOLVED, "the live database matches again"))
