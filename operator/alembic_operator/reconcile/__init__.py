"""What to do next, given what was observed. Pure: no I/O, no clock, no Kubernetes client.

A *run* carries one generation of a DatabaseMigration from plan to a result:

    Planning -> [AwaitingApproval] -> [BackingUp] -> [Rehearsing] -> Migrating -> Done (Succeeded)
                                                           |                `-> RollingBack -> Done (Failed, ...)
                                                           `-> Done (Failed: the rehearsal failed, nothing ran)

The run lives in `status.run`, so a restarted operator continues where the last one stopped: Jobs have
deterministic names (one per role and generation), so a step is never started twice. A new generation replaces
a run that has not yet written anything (Planning, AwaitingApproval); from BackingUp on, the run finishes first and
the new generation is queued behind it.

One module per group of steps (planning, migrating, rehearsal, rollback, idle) over what they share (turn: the turn
under way and its Job driver); flow dispatches to them and is the only one that knows them all.
"""

from .decision import Decision, Event, JobRequest, PlanSQLKept
from .flow import decide
from .migrating import committed_by_run
from .planning import plan_hash
from .turn import JOB_RETRIES, MAX_REPLANS

__all__ = ["JOB_RETRIES", "MAX_REPLANS", "Decision", "Event", "JobRequest", "PlanSQLKept", "committed_by_run",
           "decide", "plan_hash"]
