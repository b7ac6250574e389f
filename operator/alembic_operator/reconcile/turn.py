"""What every step of a run uses: the turn under way (`Turn`), its outcome, one Job driver for every role."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Literal

from .. import constants as c
from .. import reasons as r
from .. import status as s
from ..api import (
    ConditionStatus,
    DatabaseMigrationSpec,
    HistoryEntry,
    JsonObject,
    RunRecord,
    RunResult,
    RunStatus,
    RunStep,
    SpecError,
    parse_spec,
)
from ..constants import Phase, Role
from ..jobs import ROLES
from ..observation import JobObservation, Observation
from ..reasons import Reason
from .decision import Decision, Event, JobRequest

HISTORY_LIMIT = 10
# A database or API error that lasts longer than this turns from Reconciling into Stalled (it still retries).
TRANSIENT_GRACE = timedelta(minutes=5)
POLL_ACTIVE = 10.0  # seconds; Job watch events usually wake the reconciler long before
POLL_IDLE = 60.0
POLL_HUMAN = 15.0
# A run whose database keeps moving under it (other writers) plans again at most this many times, then stalls.
MAX_REPLANS = 3
POLL_STARTING = 3.0  # seconds; while a Job's pod has not started, so a pod that cannot start is reported quickly
JOB_RETRIES = 5
BASE = "base"
SUSPENDED = s.progressing("Pending", r.SUSPENDED, "spec.suspend is true: no plan, backup or migration Job starts "
                          "until it is false")


def rev(revision: str | None) -> str:
    return revision or BASE


Step = Callable[["Turn"], Decision]
"""A step of the run (planning.planning, migrating.migrating...): where `Turn.goto` continues."""


class Turn:
    """One decide() call: the status being built, the run it carries on, and the decision's side effects; what every
    step uses (its outcome, its conditions, one way of driving a Job, the run's history)."""

    def __init__(self, obs: Observation, steps: dict[RunStep, Step]) -> None:
        self.obs = obs
        self.steps = steps
        self.st = obs.status.model_copy(deep=True)
        self.run = self.st.run or RunStatus()
        self.decision = Decision(state=self.st)
        self.generation = int(self.run.generation or obs.generation)
        self._spec: tuple[JsonObject, DatabaseMigrationSpec] | None = None

    def goto(self, step: RunStep) -> Decision:
        """Continue the run at `step`, through the flow's table: a step never imports the one it leads to."""
        self.run.step = step
        return self.steps[step](self)

    def outcome(self, outcome: s.Outcome, requeue: float | None = None) -> Decision:
        before = (self.obs.status.phase, s.get_condition(self.obs.status, c.STALLED))
        self.st.run = self.run
        if self.obs.generation != self.generation and self.run.step != "Done":
            outcome = s.Outcome(outcome.kind, outcome.phase, outcome.reason,
                                f"{outcome.message} (generation {self.obs.generation} is queued behind this run)")
        st = s.summarize(self.st, outcome, self.generation, self.obs.now)
        stalled_before = before[1] is not None and before[1].status == "True" and before[1].reason == outcome.reason
        if before[0] != outcome.phase or (outcome.kind == "stalled" and not stalled_before):
            kind: Literal["Normal", "Warning"] = (
                "Warning" if outcome.kind == "stalled" or outcome.phase == "Failed" else "Normal")
            self.decision.events.append(Event(kind, outcome.reason, f"{outcome.phase}: {outcome.message}"))
        self.decision.state = st
        self.decision.requeue_after = requeue
        return self.decision

    def condition(self, type_: str, value: ConditionStatus, reason: Reason, message: str) -> None:
        self.st = s.set_condition(self.st, type_, value, reason, message, self.generation, self.obs.now)

    def start_job(self, role: Role, args: dict[str, str]) -> None:
        instance = self.instance(role)
        if instance:
            args = {**args, "instance": str(instance)}
        self.decision.jobs.append(JobRequest(role, self.generation, self.spec(), args))

    def instances(self) -> dict[str, int]:
        """Which Job of each role the run is on: 0 first, then one more per retry or re-plan (names never repeat).
        A run persisted before re-plans existed counted retries only."""
        found = self.run.instances
        return dict(found if found is not None else self.run.attempts or {})

    def instance(self, role: Role) -> int:
        return int(self.instances().get(role, 0))

    def next_instance(self, role: Role) -> None:
        self.run.instances = {**self.instances(), role: self.instance(role) + 1}

    def job(self, role: Role) -> JobObservation:
        """The observed Job of the run's current instance of `role`; an older one (before a re-plan) is absent."""
        job = self.obs.jobs.get(role)
        if job is None or (role != "drift" and int(job.instance or 0) != self.instance(role)):
            return JobObservation(name="", state="absent")
        return job

    def drive(self, role: Role, args: dict[str, str], starting: str, running: str | None = None, *,
              before_start: Callable[[], Decision | None] | None = None,
              before_retry: Callable[[], Decision | None] | None = None,
              may_retry: Callable[[], bool] = lambda: True,
              changed: str = "nothing was changed") -> Decision | JobObservation:
        """One step's Job, the same way for every role: start it when absent (unless `before_start` stops first),
        report it while it runs, retry it with backoff when it failed for a transient reason (roles that retry, once
        `before_retry` found nothing to stop for and `may_retry` agrees). Returns the finished Job for the step to
        judge, or the decision to return now."""
        spec = ROLES[role]
        phase = spec.phase or "Succeeded"
        job = self.job(role)
        if job.state == "absent":
            if before_start is not None and (stop := before_start()) is not None:
                return stop
            if self.obs.job_queue:  # the operator-wide cap: started when another Job ends (its event wakes us)
                return self.outcome(s.progressing(phase, r.JOB_QUEUED, f"the {role} Job waits: {self.obs.job_queue}"),
                                    POLL_ACTIVE)
            self.start_job(role, args)
            return self.outcome(s.progressing(phase, spec.reason, starting), POLL_ACTIVE)
        if job.state == "active":
            if job.blocked:  # its pod cannot start for a reason a human must fix: kept, it starts once fixed
                why, detail = job.blocked
                return self.outcome(s.stalled(phase, why, f"{job.name}: {detail}"), POLL_STARTING)
            if not job.started:  # only slow so far (scheduling, pulling a big image): say what it waits for
                waits = job.waiting or "its pod waits to be scheduled, for its image or for its container"
                return self.outcome(s.progressing(phase, spec.reason, f"{role} Job {job.name} is starting: {waits}"),
                                    POLL_STARTING)
            return self.outcome(s.progressing(phase, spec.reason, running or f"{role} Job {job.name} is running"),
                                POLL_ACTIVE)
        if before_retry is not None and (stop := before_retry()) is not None:
            return stop
        if spec.retries and may_retry() and (retrying := self.retry(role, args, changed)) is not None:
            return retrying
        return job

    def unless_suspended(self) -> Decision | None:
        return self.outcome(SUSPENDED, POLL_IDLE) if self.suspended() else None

    def suspended(self) -> bool:
        live = self.obs.parsed
        return isinstance(live, DatabaseMigrationSpec) and live.suspend

    def live(self) -> DatabaseMigrationSpec:
        """The live spec (a queued edit included); SpecError when it is invalid."""
        if isinstance(self.obs.parsed, SpecError):
            raise self.obs.parsed
        return self.obs.parsed

    def spec(self) -> DatabaseMigrationSpec:
        """The spec the run carries out, parsed once (the live one's model when they are the same)."""
        raw = self.run.spec or {}
        if self._spec is None or self._spec[0] is not raw:
            live = self.obs.parsed
            self._spec = (raw, live if isinstance(live, DatabaseMigrationSpec) and raw == self.obs.spec
                          else parse_spec(raw))
        return self._spec[1]

    def finish(self, result: RunResult, reason: Reason) -> None:
        split = self.st.contract if self.st.contract and self.st.contract.generation == self.generation else None
        if split is not None and result != "Succeeded":
            split.state = "Failed"
        start = split.from_revision if split is not None and self.run.part == "contract" else self.run.start_revision
        self.record(result, reason, rev(start),
                    (split.target if split is not None else None) or self.run.target_revision
                    or self.spec().target_revision,
                    self.run.backup.location if self.run.backup else None)
        self.done(result)

    def done(self, result: RunResult) -> None:
        self.run.step = "Done"
        self.run.result = result

    def record(self, result: str, reason: Reason, from_: str, to: str | None, backup: str | None = None) -> None:
        """Add a status.history entry (the newest HISTORY_LIMIT are kept) and the run's durable record."""
        plan = self.st.plan
        this_plan = plan if plan is not None and self.run.plan_hash and plan.hash == self.run.plan_hash else None
        sql = this_plan.sql if this_plan is not None else None
        record = RunRecord(
            generation=self.generation, from_=from_, to=to, result=result, reason=reason,
            started_at=self.run.started_at, finished_at=self.obs.now, backup=backup, plan_hash=self.run.plan_hash,
            sql_config_map=sql.config_map if sql else None, requested_by=self.run.requested_by,
            approved_by=self.run.approved_by,
            parts=self.st.contract.parts() if self.st.contract and self.run.part else None)
        history = [*self.st.history, HistoryEntry.model_validate(record.model_dump(exclude_none=True))]
        self.st.history = history[-HISTORY_LIMIT:]
        record.sequence = sum(1 for e in history if e.generation == self.generation)  # stable across re-decisions
        record.revisions = list(self.run.revisions or []) or None
        record.sql_sha256 = sql.sha256 if sql else None
        record.destructive = int(this_plan.destructive_count or len(this_plan.destructive)) if this_plan else None
        record.image = self.spec().migrations.image
        done = self.st.rehearsal  # spec.rehearsal: its measures next to the real run's
        record.rehearsal = done if done is not None and done.plan_hash == self.run.plan_hash else None
        self.decision.records.append(record)

    def failure_message(self, role: Role) -> str:
        job = self.job(role)
        result = job.result or {}
        if job.cause:  # stopped from outside: Kubernetes' account first, the runner's own (if any) after it
            said = result.get("message")
            return f"{role} Job {job.name} failed: {job.cause[1]}" + (f" (the Job said: {said})" if said else "")
        detail = result.get("message") or job.message or "no details (see the Job's pod logs)"
        return f"{role} Job {job.name} failed: {detail}"

    def failure_reason(self, role: Role, default: Reason) -> Reason:
        """The Stalled reason for a failed step: what stopped its Job from outside (OOMKilled...) or `default`."""
        job = self.job(role)
        return job.cause[0] if job.state == "failed" and job.cause else default

    def database(self, phase: Phase) -> Decision | None:
        """Stop here if the database cannot be read: transient errors retry, the rest needs a human."""
        db = self.obs.database
        if db.ok:
            self.run.transient_since = None
            self.st.current_revision = db.revision
            return None
        reason, message = db.error_reason or r.DATABASE_UNREACHABLE, db.error_message
        if not db.transient:  # a human must act (create the Secret, fix the URL): look again soon after
            return self.outcome(s.stalled(phase, reason, message), requeue=POLL_HUMAN)
        if self.run.transient_since is None:
            self.run.transient_since = self.obs.now
        started = self.run.transient_since
        retries = (self.run.transient_retries or 0) + 1
        self.run.transient_retries = retries
        backoff = min(POLL_IDLE, 2.0 ** min(retries, 6))
        if self.obs.now - started > TRANSIENT_GRACE:
            return self.outcome(s.stalled(phase, reason, f"{message} (for over {TRANSIENT_GRACE}; still retrying)"),
                                requeue=backoff)
        return self.outcome(s.progressing(phase, reason, f"{message}; retrying"), requeue=backoff)

    def retry(self, role: Role, args: dict[str, str], changed: str = "nothing was changed") -> Decision | None:
        """Start a Job again, with backoff, when it failed for a passing reason and left the database where `args`
        start (`changed` says what it did change: the whole revisions a migration committed)."""
        job = self.job(role)
        result = job.result or {}
        attempts = self.run.attempts = dict(self.run.attempts or {})
        done = int(attempts.get(role, 0))
        said = r.parse(result.get("reason"))
        if job.state != "failed" or said is None or said not in r.TRANSIENT_JOB_REASONS or done >= JOB_RETRIES:
            return None
        phase, reason = ROLES[role].phase or "Succeeded", said
        retry_at = self.run.retry_at
        if retry_at is None:
            delay = min(12 * self.obs.job_retry_backoff, self.obs.job_retry_backoff * 2**done)
            self.run.retry_at = self.obs.now + timedelta(seconds=delay)
            message = (f"{self.failure_message(role)}; {changed}; retrying in {delay}s (attempt {done + 2} "
                       f"of {JOB_RETRIES + 1})")
            self.decision.events.append(Event("Warning", reason, message))  # each failure, with what the Job said
            return self.outcome(s.progressing(phase, reason, message), delay)
        wait = (retry_at - self.obs.now).total_seconds()
        if wait > 0:
            return self.outcome(s.progressing(phase, reason, f"{self.failure_message(role)}; {changed}; "
                                              f"retrying in {wait:.0f}s (attempt {done + 2} of {JOB_RETRIES + 1})"),
                                wait)
        self.run.retry_at = None
        self.next_instance(role)
        attempts[role] = done + 1
        self.start_job(role, args)
        return self.outcome(s.progressing(phase, reason, f"retrying the {role} Job (attempt {done + 2} of "
                                          f"{JOB_RETRIES + 1}) after: {result.get('message')}"), POLL_ACTIVE)

    def replan(self, why: str) -> Decision:
        """Nothing of this run reached the database, but its plan no longer starts where the database is: plan
        again, from scratch (a new approval if the new plan destroys data), at most MAX_REPLANS times."""
        replans = (self.run.replans or 0) + 1
        if replans > MAX_REPLANS:
            msg = (f"{why}; this run already planned again {MAX_REPLANS} times because other writers keep moving the "
                   "database. Nothing was run. Stop the other writers, then edit the resource to plan again")
            self.finish("Failed", r.DATABASE_KEEPS_MOVING)
            return self.outcome(s.stalled("Failed", r.DATABASE_KEEPS_MOVING, msg), POLL_IDLE)
        self.decision.events.append(Event("Normal", r.DATABASE_MOVED, f"{why}; nothing was run: planning again"))
        # New Job names: this round's Jobs never reuse the last one's.
        for role in ("plan", "backup", "migrate", "contract"):
            self.next_instance(role)
        old = self.run
        self.run = RunStatus(generation=old.generation, started_at=old.started_at, spec=old.spec,
                             requested_by=old.requested_by,
                             instances=old.instances, database_key=old.database_key, jobs=old.jobs, replans=replans,
                             step="Planning")
        self.st.plan = None
        self.st = s.without_conditions(self.st, c.APPROVAL_REQUIRED, c.BACKUP_SUCCEEDED, c.MIGRATED, c.ROLLED_BACK)
        return self.goto("Planning")

    def failed(self, message: str, reason: Reason | None = None) -> Decision:
        """End the run Failed (RolledBack when it was): `reason`, else what stopped the migration Job (JobFailed)."""
        reason = reason or r.parse(self.run.failure_reason) or r.JOB_FAILED
        rolled = s.condition_is(self.st, c.ROLLED_BACK, "True")
        self.finish("RolledBack" if rolled else "Failed", reason)
        hint = (" Fix the migration in a new image (or change targetRevision), then apply the resource again."
                if reason != self.run.failure_reason or reason == r.JOB_FAILED else "")  # a cause says its own fix
        if reason == r.LOCK_TIMEOUT:
            hint = (" End the sessions holding the lock (or wait until they are done), or raise "
                    "spec.migrations.lockTimeout, then edit the resource to try again.")
        elif reason == r.DATABASE_UNREACHABLE:
            hint = " Check the database (the Job's log says what failed), then edit the resource to try again."
        return self.outcome(s.stalled("Failed", reason, message + "." + hint), POLL_IDLE)
