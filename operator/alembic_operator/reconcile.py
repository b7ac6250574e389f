"""What to do next, given what was observed. Pure: no I/O, no clock, no Kubernetes client.

A *run* carries one generation of a DatabaseMigration from plan to a result:

    Planning -> [AwaitingApproval] -> [BackingUp] -> Migrating -> Done (Succeeded)
                                                        `-> RollingBack -> Done (Failed, rolled back or not)

The run lives in `status.run`, so a restarted operator continues where the last one stopped: Jobs have
deterministic names (one per role and generation), so a step is never started twice. A new generation replaces
a run that has not yet written anything (Planning, AwaitingApproval); from BackingUp on, the run finishes first and
the new generation is queued behind it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal, NamedTuple, cast

from . import approvals, plansql
from . import constants as c
from . import reasons as r
from . import status as s
from .api import (
    MIN_DRIFT_INTERVAL,
    WRITING_STEPS,
    BackupStatus,
    ConditionStatus,
    DatabaseMigrationSpec,
    DatabaseMigrationStatus,
    DriftStatus,
    HistoryEntry,
    JsonObject,
    PlanFinding,
    PlanSQL,
    PlanStatus,
    RunBackup,
    RunRecord,
    RunResult,
    RunRollback,
    RunStatus,
    SpecError,
    duration_seconds,
    name_problem,
    parse_spec,
    written,
)
from .constants import Phase, Role
from .jobs import ROLES
from .observation import JobObservation, JobRefusal, Observation
from .reasons import Reason
from .runner.results import BackupResult, DriftResult, MigrateResult, ScanResult

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


@dataclass(frozen=True)
class JobRequest:
    role: Role
    generation: int
    spec: DatabaseMigrationSpec  # the spec of the run (not the live one: a queued edit must not leak into it)
    args: dict[str, str]


class Event(NamedTuple):
    """An Event to post on the resource (and to log)."""

    type: Literal["Normal", "Warning"]
    reason: Reason
    message: str


@dataclass(frozen=True)
class PlanSQLKept:
    """A plan's SQL to keep in a ConfigMap of this name (plansql: gzip JSON), named in status.plan.sql."""

    name: str
    generation: int
    data: bytes


@dataclass
class Decision:
    state: DatabaseMigrationStatus  # the status to write
    jobs: list[JobRequest] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None
    records: list[RunRecord] = field(default_factory=list)  # finished runs, for the durable audit trail
    config_maps: list[PlanSQLKept] = field(default_factory=list)  # the plans' SQL to keep (plansql)

    @property
    def status(self) -> JsonObject:
        """The status as written (camelCase JSON): the target of the merge patch."""
        return written(self.state)


LOCKING_SHOWN = 5  # status.plan.locking: the first locking operations (lockingCount counts them all)
NOTES_SHOWN = 5
LISTED = 3  # operations a waiting plan's message names
LISTED_CHARS = 160  # ... in about this many characters: a status message stays a few hundred characters long
OPERATION_CHARS = 100


def _listed(operations: list[str], total: int) -> str:
    """The first few operations of a waiting plan (at most LISTED, in about LISTED_CHARS), and how many more:
    `kubectl dbm plan` lists them all."""
    if not operations:
        return f"{total} operation(s), listed by kubectl dbm plan"
    shown: list[str] = []
    for op in operations[:LISTED]:
        if op.startswith("... and "):  # the scan's own "and N more" marker: `total` counts them
            break
        op = op if len(op) <= OPERATION_CHARS else op[:OPERATION_CHARS - 3] + "..."
        if shown and sum(len(x) + 2 for x in shown) + len(op) > LISTED_CHARS:
            break
        shown.append(op)
    if not shown:
        return f"{total} operation(s), listed by kubectl dbm plan"
    rest = total - len(shown)
    return "; ".join(shown) + (f"; and {rest} more" if rest > 0 else "")


def plan_hash(plan: ScanResult, image: str, revisions: list[str] | None = None) -> str:
    """The approval key: changes whenever anything that will run changes (revisions, SQL, image). `revisions`: every
    id of a plan whose result carries only the first ones (read from its SQL document)."""
    material = {
        "from": plan.get("current"),
        "to": plan.get("target"),
        "revisions": revisions if revisions is not None else plan.get("revisions", []),
        "destructive": plan.get("destructive", []),
        "sql": plan.get("sqlSha256"),
        "image": image,
    }
    return "sha256:" + hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def _rev(revision: str | None) -> str:
    return revision or BASE


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


def half_applied(report: MigrateResult | None) -> tuple[str, list[str], int] | None:
    """(revision, the statements of it that committed, how many) from the migration Job's report, when it failed
    half-applied (DDL is not transactional); None otherwise."""
    partial = (report or {}).get("partialRevision")
    if not isinstance(partial, dict) or not partial.get("revision"):
        return None
    statements = [str(x) for x in partial.get("statements") or []]
    return str(partial["revision"]), statements, int(partial.get("statementCount") or len(statements))


def ran_nothing(report: MigrateResult | None) -> bool:
    """The migration Job's report proves it changed nothing (refused, or never got as far as migrating)."""
    report = report or {}
    return report.get("reason") == r.REVISION_MOVED or not (report.get("applied") or report.get("attempted"))


class _Run:
    """One decide() call: the status being built and the decision's side effects."""

    def __init__(self, obs: Observation) -> None:
        self.obs = obs
        self.st = obs.status.model_copy(deep=True)
        self.run = self.st.run or RunStatus()
        self.decision = Decision(state=self.st)
        self.generation = int(self.run.generation or obs.generation)
        self._spec: tuple[JsonObject, DatabaseMigrationSpec] | None = None

    # --- helpers ------------------------------------------------------------------------------------------------
    def now(self) -> str:
        return s.now_rfc3339(self.obs.now)

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
        self.record(result, reason, _rev(self.run.start_revision),
                    self.run.target_revision or self.spec().target_revision,
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
            approved_by=self.run.approved_by)
        history = [*self.st.history, HistoryEntry.model_validate(record.model_dump(exclude_none=True))]
        self.st.history = history[-HISTORY_LIMIT:]
        record.sequence = sum(1 for e in history if e.generation == self.generation)  # stable across re-decisions
        record.revisions = list(self.run.revisions or []) or None
        record.sql_sha256 = sql.sha256 if sql else None
        record.destructive = int(this_plan.destructive_count or len(this_plan.destructive)) if this_plan else None
        record.image = self.spec().migrations.image
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

    # --- the flow -----------------------------------------------------------------------------------------------
    def decide(self) -> Decision:
        decision = self.flow()
        if self.obs.refused is not None:
            return self.refuse(self.obs.refused)
        return decision

    def refuse(self, refusal: JobRefusal) -> Decision:
        """The Job this decision asked for was refused by the API server: say so at once, naming its message.

        Before anything was written the run ends (Failed): fixing the spec is a new generation, hence a new run.
        A refused rollback Job keeps the run (the database needs it) and is tried again.
        """
        self.decision.jobs = []
        self.st = self.decision.state
        msg = f"the API server refused the {refusal.role} Job: {refusal.message}"
        if refusal.role == "drift":
            self.condition(c.DRIFTED, "Unknown", r.JOB_REFUSED, f"{msg}. Fix spec.jobTemplate")
            self.decision.state = self.st
            return self.decision
        if self.run.step == "RollingBack":
            return self.outcome(s.stalled("RollingBack", r.JOB_REFUSED, f"{msg}. The rollback has not run; it is "
                                          "tried again every minute (fix the cause in the cluster)"), POLL_IDLE)
        self.finish("Failed", r.JOB_REFUSED)
        return self.outcome(s.stalled("Failed", r.JOB_REFUSED, f"{msg}. Nothing was run. Fix the spec and apply it "
                                      "again"), POLL_IDLE)

    def flow(self) -> Decision:
        obs = self.obs
        if self.run.step == "Done" and self.run.generation == obs.generation:
            return self.idle()
        if self.run.step is None or (self.run.generation != obs.generation and self.run.step not in WRITING_STEPS):
            return self.new_run()
        step = self.run.step
        if step in ("Planning", "AwaitingApproval"):
            return self.planning() if step == "Planning" else self.approval()
        if step == "BackingUp":
            return self.backing_up()
        if step == "Migrating":
            return self.migrating()
        return self.rolling_back()

    def new_run(self) -> Decision:
        obs = self.obs
        # A bad name: the CRD refuses it; a resource stored before that rule is told.
        problem = obs.parsed if isinstance(obs.parsed, SpecError) else name_problem(obs.name)
        self.generation = obs.generation
        if problem:
            self.run = RunStatus(generation=obs.generation, step="Done", result="Failed", spec=dict(obs.spec))
            return self.outcome(s.stalled("Failed", r.INVALID_SPEC, f"{problem}. Fix the spec and apply it again."))
        self.run = RunStatus(generation=obs.generation, step="Planning", started_at=obs.now, spec=dict(obs.spec),
                             requested_by=obs.annotations.get(c.SPEC_CHANGED_BY_ANNOTATION))
        self.st.plan = None
        self.st.target_revision = None
        # A new generation flips Ready to False before any work starts (kstatus; kubectl wait must not pass early).
        self.st = s.without_conditions(self.st, c.APPROVAL_REQUIRED, c.BACKUP_SUCCEEDED, c.MIGRATED, c.ROLLED_BACK)
        return self.planning()

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

    def planning(self) -> Decision:
        spec = self.spec()
        if (stop := self.database("Planning")) is not None:
            return stop
        db_rev = self.obs.database.revision
        if spec.target_revision != "head" and db_rev == spec.target_revision:
            self.st.target_revision = db_rev
            self.run.start_revision = self.run.target_revision = db_rev
            self.done("UpToDate")
            return self.idle()
        if (stop := self.baselining(spec)) is not None:
            return stop
        job = self.drive("plan", {"target": spec.target_revision},
                         f"resolving {spec.target_revision} from the scripts in {spec.migrations.image}",
                         before_start=self.unless_suspended)
        if isinstance(job, Decision):
            return job
        result = cast(ScanResult, job.result or {})  # the scan container's (the plan container's when it failed)
        if job.state == "failed" or not result.get("ok"):
            said = r.parse(result.get("reason"))
            reason = self.failure_reason("plan", said if said in r.PLAN_ERRORS else r.PLAN_FAILED)
            message = (str(result.get("message")) if reason in r.PLAN_ERRORS else self.failure_message("plan"))
            self.finish("Failed", reason)
            return self.outcome(s.stalled("Failed", reason, message), POLL_IDLE)
        return self.planned(spec, result)

    def baselining(self, spec: DatabaseMigrationSpec) -> Decision | None:
        """Adopt a pre-Alembic database (spec.baseline): stamp it when it has tables but no alembic_version."""
        db = self.obs.database
        needed = bool(spec.baseline) and db.versioned is False and (db.tables or 0) > 0
        if self.job("stamp").state == "absent" and not needed:
            return None
        job = self.drive("stamp", {"revision": str(spec.baseline)},
                         f"the database has {db.tables} table(s) and no alembic_version: stamping it at spec.baseline "
                         f"{spec.baseline}", before_start=self.unless_suspended)
        if isinstance(job, Decision):
            return job
        result = job.result or {}
        if job.state == "failed" or not result.get("ok"):
            message = self.failure_message("stamp") + "; nothing was changed"
            self.finish("Failed", r.BASELINE_FAILED)
            return self.outcome(s.stalled("Failed", self.failure_reason("stamp", r.BASELINE_FAILED), message),
                                POLL_IDLE)
        if not self.run.baselined:
            self.run.baselined = True
            self.record("Baselined", r.BASELINED, "none", spec.baseline)
            self.decision.events.append(Event("Normal", r.BASELINED, f"stamped the pre-Alembic database at "
                                         f"{spec.baseline} (spec.baseline); no migration ran for it"))
        return None

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
            delay = min(60, 5 * 2**done)
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

    def whole_plan(self, result: ScanResult) -> tuple[list[str], list[str]] | None:
        """(every revision id, in order; the destructive ones): from the scan's result, or, for a plan too long for
        it (hundreds of revisions), from the SQL document its log carried, once the ids hash to what the result
        says. None: that document could not be read yet."""
        revisions = list(result.get("revisions") or [])
        destructive = list(result.get("destructiveRevisions") or [])
        if int(result.get("revisionCount") or len(revisions)) == len(revisions):
            return revisions, destructive
        doc = self.plan_document()
        ids = plansql.planned_revisions(doc, result.get("revisionsSha256")) if doc else None
        if doc is None or ids is None:
            return None
        return ids, [str(x) for x in (doc.get("plan") or {}).get("destructiveRevisions") or []]

    def plan_document(self) -> plansql.Document | None:
        """The plan Job's SQL document (plansql), when its log was read and it is the SQL this plan scanned."""
        job = self.job("plan")
        if job.plan_sql is None:
            return None
        try:
            doc = plansql.read(job.plan_sql)
        except (OSError, ValueError, EOFError):
            return None
        return doc if doc.get("sqlSha256") == (job.result or {}).get("sqlSha256") else None

    def planned(self, spec: DatabaseMigrationSpec, result: ScanResult) -> Decision:
        whole = self.whole_plan(result)
        if whole is None:
            job = self.job("plan")
            return self.outcome(s.progressing(
                "Planning", r.PLANNING, f"the plan has {result.get('revisionCount')} revisions, more than its result "
                f"can list: reading them from Job {job.name}'s log (container scan)"), 5.0)
        revisions, destructive_revisions = whole
        destructive = list(result.get("destructive") or [])
        findings = result.get("findings") or []
        run = self.run
        run.start_revision, run.target_revision = result.get("current"), result.get("target")
        run.revisions = revisions
        run.destructive_revisions = sorted({f["revision"] for f in findings
                                            if f.get("severity") == "destructive" and f.get("revision")}
                                           | set(destructive_revisions))
        run.plan_hash = plan_hash(result, spec.migrations.image, revisions)
        ddl = result.get("transactionalDDL")
        run.transactional_ddl = ddl if isinstance(ddl, bool) else None
        run.image = spec.migrations.image
        if destructive and not run.destructive_revisions:
            run.destructive_revisions = list(revisions)  # findings trimmed away: assume the worst
        self.st.target_revision = result.get("target")
        plan = self.st.plan = PlanStatus(
            revisions=revisions,
            destructive=destructive,
            hash=run.plan_hash,
            destructive_count=int(result.get("destructiveCount") or len(destructive)),
            warning_count=int(result.get("warningCount") or len(result.get("warnings") or [])),
            from_revision=_rev(result.get("current")),
            to_revision=result.get("target"),
            generation=self.generation,
        )
        if result.get("warnings"):
            plan.warnings = list(result["warnings"])
        locking = [PlanFinding.model_validate(f) for f in result.get("locking") or []][:LOCKING_SHOWN]
        if locking or result.get("lockingCount"):
            plan.locking = locking
            plan.locking_count = int(result.get("lockingCount") or len(locking))
        if result.get("notes"):
            plan.notes = list(result["notes"])[:NOTES_SHOWN]
        if result.get("lineage"):
            plan.lineage = list(result["lineage"])
        self.keep_plan_sql()
        if not revisions:
            self.done("UpToDate")
            return self.idle()
        run.step = "AwaitingApproval"
        return self.approval()

    def keep_plan_sql(self) -> None:
        """Keep the plan's SQL (read from its Job's log) in a ConfigMap, named in status.plan.sql: once per plan."""
        plan, job = self.st.plan, self.job("plan")
        if plan is None or job.plan_sql is None or (plan.sql is not None and plan.sql.job == job.name):
            return
        if (doc := self.plan_document()) is None:
            return  # unreadable, or not the SQL this plan's hash covers
        name = f"{job.name}-sql"
        self.decision.config_maps.append(PlanSQLKept(name, self.generation, job.plan_sql))
        plan.sql = PlanSQL(config_map=name, job=job.name, sha256=doc.get("sqlSha256"),
                           revisions=len(doc.get("revisions") or []), total=doc.get("total"),
                           truncated=bool(doc.get("truncated")))

    def approval(self) -> Decision:
        self.keep_plan_sql()  # when the log could not be read as the plan finished
        spec = self.spec()
        live_spec = self.live() if self.obs.spec else spec
        plan = self.st.plan or PlanStatus()
        destructive = plan.destructive
        locking = [f.operation for f in plan.locking or []]
        locking_count = int(plan.locking_count or len(locking))
        gate_locking = live_spec.approval.require_for_locking and locking_count > 0
        if destructive or gate_locking:
            plan_hash_ = self.run.plan_hash
            annotated = self.obs.annotations.get(c.APPROVE_ANNOTATION) == plan_hash_
            how = (f"review it with kubectl dbm plan {self.obs.name} -n {self.obs.namespace}, then approve its hash "
                   f"{plan_hash_}")
            if annotated:  # the user the webhook recorded for this hash, when it did
                approved_by = approvals.approved_by(self.obs.annotations, plan_hash_) or c.APPROVE_ANNOTATION
            elif destructive and not live_spec.approval.allow_destructive:
                count = int(plan.destructive_count or len(destructive))
                message = f"the plan destroys data: {_listed(destructive, count)}. To go ahead, {how}"
                self.condition(c.APPROVAL_REQUIRED, "True", r.DESTRUCTIVE_CHANGES_NOT_APPROVED, message)
                return self.outcome(s.stalled("AwaitingApproval", r.DESTRUCTIVE_CHANGES_NOT_APPROVED, message),
                                    POLL_IDLE)
            elif gate_locking:
                message = (f"the plan takes strong locks on existing tables: {_listed(locking, locking_count)}. "
                           f"Rewrite them the safer way (status.plan.locking), or {how}")
                self.condition(c.APPROVAL_REQUIRED, "True", r.LOCKING_CHANGES_NOT_APPROVED, message)
                return self.outcome(s.stalled("AwaitingApproval", r.LOCKING_CHANGES_NOT_APPROVED, message),
                                    POLL_IDLE)
            else:
                approved_by = "spec.approval.allowDestructive"
            what = "destructive changes" if destructive else "locking changes"
            if destructive and gate_locking:
                what = "destructive and locking changes"
            self.run.approved_by = approved_by
            self.condition(c.APPROVAL_REQUIRED, "False", r.APPROVED, f"{what} approved by {approved_by}")
        else:
            self.condition(c.APPROVAL_REQUIRED, "False", r.NO_DESTRUCTIVE_CHANGES, "the plan destroys no data")
        if self.obs.busy_with:
            return self.outcome(s.progressing(
                "Pending", r.WAITING_FOR_DATABASE,
                f"{self.obs.busy_with} is migrating the same database; this one starts when it is done"), 5.0)
        if self.suspended():
            return self.outcome(SUSPENDED, POLL_IDLE)
        if (stop := self.database("Pending")) is not None:
            return stop
        if self.obs.database.revision != self.run.start_revision:  # e.g. while it waited for approval or
            return self.replan(f"the database moved from {_rev(self.run.start_revision)} to "  # another writer
                               f"{_rev(self.obs.database.revision)} since this run planned")
        if spec.backup.enabled:
            self.run.step = "BackingUp"
            return self.backing_up()
        self.condition(c.BACKUP_SUCCEEDED, "False", r.BACKUP_DISABLED, "spec.backup.enabled is false: no backup")
        self.run.step = "Migrating"
        return self.migrating()

    def backing_up(self) -> Decision:
        job = self.drive("backup", {}, "backing up the database")
        if isinstance(job, Decision):
            return job
        result = cast(BackupResult, job.result or {})
        if job.state == "failed" or not result.get("ok"):
            message = self.failure_message("backup") + "; nothing was changed in the database"
            said = r.parse(result.get("reason"))
            self.condition(c.BACKUP_SUCCEEDED, "False", said or r.BACKUP_FAILED, message)
            self.finish("Failed", r.BACKUP_FAILED)
            # A store that cannot be written (BackupVolumeNotWritable...) is Stalled under its own reason: its fix
            # is the store's, not the Job's
            store_stall = said is not None and said.info.kind == "stalled" and c.BACKUP_SUCCEEDED in said.info.where
            return self.outcome(s.stalled("Failed", said if store_stall and said else self.failure_reason(
                "backup", r.JOB_FAILED), message + ". Fix the cause, then edit the resource to retry."), POLL_IDLE)
        self.st.backup = BackupStatus.model_validate(
            {k: result[k] for k in ("location", "sizeBytes", "sha256", "revision", "completedAt") if k in result})
        self.run.backup = RunBackup(location=result.get("location"), file=result.get("file"),
                                    sha256=result.get("sha256"), revision=result.get("revision"))
        self.condition(c.BACKUP_SUCCEEDED, "True", r.BACKUP_COMPLETED,
                       f"backup at {result.get('location')} ({result.get('sizeBytes')} bytes)")
        self.run.step = "Migrating"
        return self.migrating()

    def migrating(self) -> Decision:
        start, target = self.run.start_revision, self.run.target_revision

        def unless_moved() -> Decision | None:
            if (stop := self.database("Migrating")) is not None:
                return stop
            if self.obs.database.revision != start:  # moved while the backup ran: this plan is stale
                return self.replan(f"the database moved from {_rev(start)} to {_rev(self.obs.database.revision)} "
                                   "before the migration started")
            return None

        kept = self.clean_stop()  # a lock timeout or a lost connection: the retry continues from the database
        resume = self.obs.database.revision if kept else start
        changed = (f"{', '.join(kept)} committed whole and kept: the retry continues the plan from {_rev(resume)}"
                   if kept else "nothing was changed")
        job = self.drive("migrate", {"from": _rev(resume), "to": str(target)}, f"upgrading {_rev(start)} -> {target}",
                         f"migration Job {self.job('migrate').name} is upgrading {_rev(start)} -> {target}",
                         before_start=unless_moved, before_retry=lambda: self.database("Migrating"),
                         may_retry=lambda: kept is not None, changed=changed)
        if isinstance(job, Decision):
            return job
        db_rev = self.obs.database.revision
        report = cast(MigrateResult, job.result) if job.result is not None else None
        if job.state == "succeeded" and db_rev == target:
            self.condition(c.MIGRATED, "True", r.UPGRADE_SUCCEEDED, f"upgraded {_rev(start)} -> {target}")
            self.finish("Succeeded", r.MIGRATED)
            return self.idle()
        if kept:  # retried until now: what committed is whole and good, so it stays; a human ends the blocker
            why = (f"{self.failure_message('migrate')} (attempt {int((self.run.attempts or {}).get('migrate', 0)) + 1}"
                   f" of {JOB_RETRIES + 1}); {', '.join(kept)} committed whole and {'is' if len(kept) == 1 else 'are'}"
                   f" kept (nothing undone): the database is at {_rev(db_rev)}, on the way from {_rev(start)} to "
                   f"{target}")
            self.condition(c.MIGRATED, "False", r.UPGRADE_FAILED, why)
            self.run.failure, self.run.failure_reason = why, str((report or {}).get("reason"))
            return self.failed(why)
        # Stopped from outside with no report left: its pod, and the report in it, were deleted.
        lost = job.state == "failed" and report is None and job.cause is not None
        committed = committed_by_run(start, list(self.run.revisions or []), report, db_rev, report_lost=lost)
        if committed is None and job.state == "failed" and ran_nothing(report) and not lost and \
                _rev((report or {}).get("from", start)) == _rev(start):  # a resumed Job's run committed before it
            return self.replan(f"the database is at {_rev(db_rev)}, not at {_rev(start)} where this run's plan "
                               f"starts: another writer moved it, and migration Job {job.name} ran nothing")
        locked = job.state == "failed" and (report or {}).get("reason") == r.LOCK_TIMEOUT
        if job.state == "succeeded":
            why = f"the migration Job succeeded but the database is at {_rev(db_rev)}, not {target}"
        else:
            why = self.failure_message("migrate")
        if locked:  # retried until now: a human must end the blocker (or allow a longer wait)
            why += f" (attempt {int((self.run.attempts or {}).get('migrate', 0)) + 1} of {JOB_RETRIES + 1})"
        self.condition(c.MIGRATED, "False", r.UPGRADE_FAILED, why)
        self.run.failure = why
        self.run.failure_reason = (self.failure_reason("migrate", r.LOCK_TIMEOUT if locked else r.JOB_FAILED)
                                   if job.state == "failed" else None)
        if committed is None:
            ran = (report or {}).get("applied") or (report or {}).get("attempted") or []
            msg = (f"{why}; the database is at {_rev(db_rev)}, where this run did not leave it (its Job reported "
                   f"{', '.join(ran)}): another writer changed it, so nothing was rolled back. Check the database "
                   "and who else migrates it, then edit the resource to plan again")
            self.condition(c.ROLLED_BACK, "False", r.DATABASE_MOVED, msg)
            self.finish("Failed", r.DATABASE_MOVED)
            return self.outcome(s.stalled("Failed", r.DATABASE_MOVED, msg), POLL_IDLE)
        return self.choose_rollback(db_rev, committed, why, report, lost)

    def clean_stop(self) -> list[str] | None:
        """What this run committed, when its migration Job stopped for a passing reason (a lock timeout, a lost
        connection) with the database at a revision of the plan, each revision whole: the retry continues the same
        approved plan from there (no new plan, approval or backup), and nothing is undone. None when it did not (a
        real failure, a half-applied revision, a database another writer moved): the rollback decides."""
        job, db = self.job("migrate"), self.obs.database
        report = job.result or {}
        if job.state != "failed" or report.get("reason") not in r.TRANSIENT_JOB_REASONS or not db.ok \
                or half_applied(cast(MigrateResult, report)):
            return None
        nontransactional = self.run.transactional_ddl is False or report.get("transactionalDDL") is False
        if nontransactional and "applied" not in report and report.get("attempted"):
            return None  # it could not say where it stopped: the revision it was running may be half-applied
        return committed_by_run(self.run.start_revision, list(self.run.revisions or []),
                                cast(MigrateResult, report), db.revision)

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
        for role in ("plan", "backup", "migrate"):  # new Job names: this round's Jobs never reuse the last one's
            self.next_instance(role)
        old = self.run
        self.run = RunStatus(generation=old.generation, started_at=old.started_at, spec=old.spec,
                             requested_by=old.requested_by,
                             instances=old.instances, database_key=old.database_key, jobs=old.jobs, replans=replans,
                             step="Planning")
        self.st.plan = None
        self.st = s.without_conditions(self.st, c.APPROVAL_REQUIRED, c.BACKUP_SUCCEEDED, c.MIGRATED, c.ROLLED_BACK)
        return self.planning()

    def choose_rollback(self, db_rev: str | None, committed: list[str], why: str,
                        report: MigrateResult | None = None, report_lost: bool = False) -> Decision:
        """Undo exactly what this run committed (`committed`, from its own Job's report), nothing else.

        Where DDL is not transactional (MySQL/MariaDB) the failed revision may be half-applied: its statements up to
        the failure committed, and the version table does not count it, so no downgrade undoes them. Auto then
        restores the backup; so it does when the Job could not say where it stopped (a killed pod)."""
        start = self.run.start_revision
        spec = self.spec()
        half = half_applied(report)
        nontransactional = self.run.transactional_ddl is False or (report or {}).get("transactionalDDL") is False
        unknown = (nontransactional and half is None and "applied" not in (report or {})
                   and (report_lost or bool((report or {}).get("attempted"))))
        damage = ""
        if half is not None:
            revision, statements, count = half
            shown = "; ".join(statements) + ("; ..." if count > len(statements) else "")
            damage = (f"revision {revision} is half-applied: {count} of its statement(s) committed before it failed "
                      f"(DDL is not transactional on this database): {shown}")
        elif unknown:
            damage = ("the migration Job could not report where it stopped, and DDL is not transactional on this "
                      "database: the revision it was running may be half-applied")
        if not committed and not damage:
            msg = f"{why}; the transaction rolled back: the database is still at {_rev(start)}"
            self.condition(c.ROLLED_BACK, "True", r.TRANSACTION_ROLLED_BACK, msg)
            return self.failed(msg)
        destroyed = [rev for rev in committed if rev in set(self.run.destructive_revisions or [])]
        strategy = spec.rollback.strategy
        have_backup = bool(self.run.backup and self.run.backup.file)
        if strategy == "None":
            msg = f"{why}; spec.rollback.strategy is None: the database was left at {_rev(db_rev)}"
            self.condition(c.ROLLED_BACK, "False", r.ROLLBACK_DISABLED, msg + (f"; {damage}" if damage else ""))
            return self.failed(msg + (f"; {damage}" if damage else ""))
        if strategy == "Downgrade" and damage:
            where = f"the backup {self.run.backup.location}" if have_backup and self.run.backup else "a backup"
            msg = (f"{why}; {damage}. spec.rollback.strategy is Downgrade, and a downgrade cannot undo a half-applied "
                   f"revision: nothing was run. Restore {where} by hand (see the runbook), or use strategy Auto or "
                   "Restore")
            self.condition(c.ROLLED_BACK, "False", r.REVISION_HALF_APPLIED, msg)
            return self.failed(msg, reason=r.ROLLBACK_FAILED)
        mode = "Downgrade" if strategy == "Downgrade" or (strategy == "Auto" and not destroyed and not damage) \
            else "Restore"
        because = None
        if strategy == "Auto":
            reasons = ([f"revision(s) {', '.join(destroyed)} destroyed data"] if destroyed else []) + \
                      ([damage + ", which no downgrade undoes"] if damage else [])
            because = (f"Auto restores the backup: {' and '.join(reasons)}" if reasons else
                       "Auto downgrades: nothing destructive committed and no revision is half-applied")
        if mode == "Restore" and not have_backup:
            done = ", ".join(destroyed or committed)
            msg = (f"{why}; {f'revisions {done} committed and ' if done else ''}a restore is needed, "
                   f"but there is no backup (spec.backup.enabled is false): the database is at {_rev(db_rev)}"
                   + (f"; {damage}" if damage else ""))
            self.condition(c.ROLLED_BACK, "False", r.NO_BACKUP, msg)
            return self.failed(msg, reason=r.ROLLBACK_FAILED)
        self.run.step = "RollingBack"
        self.run.rollback = RunRollback(mode=mode, from_=_rev(db_rev), committed=committed, destroyed=destroyed,
                                        half_applied=half[0] if half else None, because=because)
        return self.rolling_back()

    def rolling_back(self) -> Decision:
        rb = self.run.rollback
        assert rb is not None, "RollingBack without a rollback"
        start = self.run.start_revision
        role: Role = "downgrade" if rb.mode == "Downgrade" else "restore"
        backup = self.run.backup or RunBackup()
        if role == "downgrade":
            args = {"from": str(rb.from_), "to": _rev(start)}
            what = f"downgrading {rb.from_} -> {_rev(start)} (keeps rows written since the backup)"
        else:
            args = {"file": str(backup.file), "sha256": str(backup.sha256)}
            what = f"restoring the backup {backup.location} (taken at {_rev(backup.revision)})"
        if rb.because and not rb.downgrade_failure:
            what += f". {rb.because}"

        def announce() -> None:
            self.condition(c.ROLLED_BACK, "Unknown", r.ROLLING_BACK, what)

        job = self.drive(role, args, what, before_start=announce, before_retry=lambda: self.database("RollingBack"))
        if isinstance(job, Decision):
            return job
        db_rev = self.obs.database.revision
        why = self.run.failure or "the migration failed"
        if job.state == "succeeded" and db_rev == start:
            reason = r.DOWNGRADED if role == "downgrade" else r.RESTORED
            how = "downgraded" if role == "downgrade" else f"restored the backup {backup.location}"
            msg = f"{why}; {how}: the database is back at {_rev(start)}"
            if rb.because and not rb.downgrade_failure:
                msg += f" ({rb.because})"
            self.condition(c.ROLLED_BACK, "True", reason, msg)
            return self.failed(msg)
        problem = (self.failure_message(role) if job.state == "failed"
                   else f"{role} finished but the database is at {_rev(db_rev)}, not {_rev(start)}")
        spec = self.spec()
        if role == "downgrade" and spec.rollback.strategy == "Auto" and backup.file:
            rb.mode, rb.downgrade_failure = "Restore", problem
            return self.rolling_back()
        msg = (f"{why}; rollback failed: {problem}. The database is at {_rev(db_rev)}; restore it by hand from "
               f"{backup.location or 'your own backups'} (see the runbook)")
        self.condition(c.ROLLED_BACK, "False", r.DOWNGRADE_FAILED if role == "downgrade" else r.RESTORE_FAILED, msg)
        return self.failed(msg, reason=r.ROLLBACK_FAILED)

    def drift_check(self) -> float:
        """spec.driftCheck: one drift Job per interval while Ready; its result sets the Drifted condition."""
        live = self.obs.parsed
        if isinstance(live, SpecError):
            return POLL_IDLE
        try:
            interval = duration_seconds(live.drift_check.interval)
        except ValueError:
            return POLL_IDLE
        if not interval or live.suspend:
            return POLL_IDLE
        interval = max(interval, MIN_DRIFT_INTERVAL)
        bucket = int(self.obs.now.timestamp()) // interval
        job = self.job("drift")
        if job.state in ("succeeded", "failed"):
            self.drift_result(job)
        if job.state == "absent" or int(job.instance or -1) < bucket:
            self.decision.jobs.append(JobRequest("drift", self.generation, live, {"instance": str(bucket)}))
        return float((bucket + 1) * interval - self.obs.now.timestamp() + 1)  # the operator wakes it then

    def drift_result(self, job: JobObservation) -> None:
        if self.run.drift_job == job.name:
            return  # already recorded
        self.run.drift_job = job.name
        result = cast(DriftResult, job.result or {})
        if job.state == "failed" or not result.get("ok"):
            self.condition(c.DRIFTED, "Unknown", r.DRIFT_CHECK_FAILED, self.failure_message("drift"))
            return
        differences = [str(x) for x in result.get("differences") or []]
        if result.get("behindHead"):
            differences.insert(0, f"behind head: {len(result.get('pending') or [])} revision(s) pending")
        drifted = bool(result.get("drifted"))
        before = s.get_condition(self.st, c.DRIFTED)
        self.st.drift = DriftStatus(checked_at=self.obs.now, drifted=drifted, differences=differences[:20])
        if drifted:
            message = "the live database differs from the app's models: " + "; ".join(differences[:5])
            self.condition(c.DRIFTED, "True", r.SCHEMA_DRIFT, message)
            if before is None or before.status != "True":
                self.decision.events.append(Event("Warning", r.SCHEMA_DRIFT, message))
        else:
            self.condition(c.DRIFTED, "False", r.NO_DRIFT, "the live database matches the app's models and scripts")
            if before is not None and before.status == "True":
                self.decision.events.append(Event("Normal", r.DRIFT_RESOLVED, "the live database matches again"))

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

    def idle(self) -> Decision:
        """The run is over: keep currentRevision fresh and the summary conditions true to the database."""
        result = self.run.result
        if result in ("Succeeded", "UpToDate"):
            if (stop := self.database("Succeeded")) is not None:
                return stop
            db_rev = self.obs.database.revision
            target = self.run.target_revision
            if db_rev != target and target in self.obs.database_lineage:
                by = f" by {self.obs.database_moved_by}" if self.obs.database_moved_by else ""
                return self.outcome(s.ready(r.TARGET_CONTAINED, f"the database is at {_rev(db_rev)}, which contains "
                                            f"the target {target} (migrated further{by})"), self.drift_check())
            if db_rev != target:
                return self.outcome(s.stalled(
                    "Failed", r.DATABASE_CHANGED,
                    f"the database is at {_rev(db_rev)}, not at the target {target}: it was changed outside the "
                    "operator. Check it, then edit the resource (or its targetRevision) to plan again."), POLL_IDLE)
            self.st.target_revision = target
            if result == "UpToDate" and not s.get_condition(self.st, c.MIGRATED):
                self.condition(c.MIGRATED, "True", r.UP_TO_DATE, f"the database is already at {target}")
            msg = f"the database is at {target}"
            requeue = self.drift_check()
            return self.outcome(s.ready(r.AT_TARGET_REVISION if result == "UpToDate" else r.MIGRATED, msg), requeue)
        # Failed runs stay as they are until a new generation; only keep currentRevision fresh.
        if self.obs.database.ok:
            self.st.current_revision = self.obs.database.revision
        self.st.run = self.run
        self.decision.state = self.st
        self.decision.requeue_after = POLL_IDLE
        return self.decision


def decide(obs: Observation) -> Decision:
    """The next step for one DatabaseMigration; call again after acting on it until nothing changes."""
    return _Run(obs).decide()
