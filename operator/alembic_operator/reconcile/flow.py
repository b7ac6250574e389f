"""Where a run is, and which step continues it: the one dispatcher of the run's steps."""

from __future__ import annotations

from .. import constants as c
from .. import reasons as r
from .. import status as s
from ..api import (
    WRITING_STEPS,
    RunStep,
)
from ..observation import JobRefusal, Observation
from .contract import waiting
from .decision import Decision
from .idle import idle
from .migrating import backing_up, migrating
from .planning import approval, new_run, planning
from .rehearsal import rehearsing, tidy
from .rollback import rolling_back
from .turn import POLL_IDLE, Step, Turn

STEPS: dict[RunStep, Step] = {"Planning": planning, "AwaitingApproval": approval, "BackingUp": backing_up,
                               "Rehearsing": rehearsing, "Migrating": migrating, "WaitingForOldVersion": waiting,
                               "RollingBack": rolling_back,
                               "Done": idle}


def decide(obs: Observation) -> Decision:
    """The next step for one DatabaseMigration; call again after acting on it until nothing changes."""
    turn = Turn(obs, STEPS)
    decision = flow(turn)
    if obs.refused is not None:
        return refuse(turn, obs.refused)
    tidy(turn)
    return decision


def flow(turn: Turn) -> Decision:
    obs = turn.obs
    if turn.run.step == "Done" and turn.run.generation == obs.generation:
        return idle(turn)
    if turn.run.step is None or (turn.run.generation != obs.generation and turn.run.step not in WRITING_STEPS):
        return new_run(turn)
    step = turn.run.step
    if step in ("Planning", "AwaitingApproval"):
        return planning(turn) if step == "Planning" else approval(turn)
    if step == "BackingUp":
        return backing_up(turn)
    if step == "Rehearsing":
        return rehearsing(turn)
    if step == "Migrating":
        return migrating(turn)
    if step == "WaitingForOldVersion":
        return waiting(turn)
    return rolling_back(turn)


def refuse(turn: Turn, refusal: JobRefusal) -> Decision:
    """The Job this decision asked for was refused by the API server: say so at once, naming its message.

    Before anything was written the run ends (Failed): fixing the spec is a new generation, hence a new run.
    A refused rollback Job keeps the run (the database needs it) and is tried again.
    """
    turn.decision.jobs = []
    turn.st = turn.decision.state
    msg = f"the API server refused the {refusal.role} Job: {refusal.message}"
    if refusal.role == "drift":
        turn.condition(c.DRIFTED, "Unknown", r.JOB_REFUSED, f"{msg}. Fix spec.jobTemplate")
        turn.decision.state = turn.st
        return turn.decision
    if turn.run.step == "RollingBack":
        return turn.outcome(s.stalled("RollingBack", r.JOB_REFUSED, f"{msg}. The rollback has not run; it is "
                                      "tried again every minute (fix the cause in the cluster)"), POLL_IDLE)
    turn.finish("Failed", r.JOB_REFUSED)
    return turn.outcome(s.stalled("Failed", r.JOB_REFUSED, f"{msg}. Nothing was run. Fix the spec and apply it "
                                  "again"), POLL_IDLE)
