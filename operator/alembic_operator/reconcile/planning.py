"""A run's first steps: a new run, its plan (and a pre-Alembic baseline), the plan's approval."""

from __future__ import annotations

import hashlib
import json
from typing import cast

from .. import approvals, plansql
from .. import constants as c
from .. import reasons as r
from .. import status as s
from ..api import (
    DatabaseMigrationSpec,
    PlanFinding,
    PlanSQL,
    PlanStatus,
    RunStatus,
    SpecError,
    name_problem,
)
from ..runner.results import ScanResult
from . import contract, rehearsal
from .decision import Decision, Event, PlanSQLKept
from .turn import POLL_IDLE, SUSPENDED, Turn, rev

LOCKING_SHOWN = 5  # status.plan.locking: the first locking operations (lockingCount counts them all)
NOTES_SHOWN = 5
LISTED = 3  # operations a waiting plan's message names
LISTED_CHARS = 160  # ... in about this many characters: a status message stays a few hundred characters long
OPERATION_CHARS = 100


def _listed(operations: list[str], total: int, chars: int = LISTED_CHARS) -> str:
    """The first few operations of a waiting plan (at most LISTED, in about `chars`), and how many more:
    `kubectl dbm plan` lists them all."""
    if not operations:
        return f"{total} operation(s), listed by kubectl dbm plan"
    shown: list[str] = []
    for op in operations[:LISTED]:
        if op.startswith("... and "):  # the scan's own "and N more" marker: `total` counts them
            break
        op = op if len(op) <= OPERATION_CHARS else op[:OPERATION_CHARS - 3] + "..."
        if shown and sum(len(x) + 2 for x in shown) + len(op) > chars:
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


def new_run(turn: Turn) -> Decision:
    obs = turn.obs
    # A bad name: the CRD refuses it; a resource stored before that rule is told.
    problem = obs.parsed if isinstance(obs.parsed, SpecError) else name_problem(obs.name)
    turn.generation = obs.generation
    if problem:
        turn.run = RunStatus(generation=obs.generation, step="Done", result="Failed", spec=dict(obs.spec))
        return turn.outcome(s.stalled("Failed", r.INVALID_SPEC, f"{problem}. Fix the spec and apply it again."))
    turn.run = RunStatus(generation=obs.generation, step="Planning", started_at=obs.now, spec=dict(obs.spec),
                         requested_by=obs.annotations.get(c.SPEC_CHANGED_BY_ANNOTATION))
    turn.st.plan = None
    turn.st.contract = None
    turn.st.target_revision = None
    # A new generation flips Ready to False before any work starts (kstatus; kubectl wait must not pass early).
    turn.st = s.without_conditions(turn.st, c.APPROVAL_REQUIRED, c.BACKUP_SUCCEEDED, c.MIGRATED, c.ROLLED_BACK)
    return planning(turn)


def planning(turn: Turn) -> Decision:
    spec = turn.spec()
    if (stop := turn.database("Planning")) is not None:
        return stop
    db_rev = turn.obs.database.revision
    if spec.target_revision != "head" and db_rev == spec.target_revision:
        turn.st.target_revision = db_rev
        turn.run.start_revision = turn.run.target_revision = db_rev
        turn.done("UpToDate")
        return turn.goto("Done")
    if (stop := baselining(turn, spec)) is not None:
        return stop
    job = turn.drive("plan", {"target": spec.target_revision},
                     f"resolving {spec.target_revision} from the scripts in {spec.migrations.image}",
                     before_start=turn.unless_suspended)
    if isinstance(job, Decision):
        return job
    result = cast(ScanResult, job.result or {})  # the scan container's (the plan container's when it failed)
    if job.state == "failed" or not result.get("ok"):
        said = r.parse(result.get("reason"))
        reason = turn.failure_reason("plan", said if said in r.PLAN_ERRORS else r.PLAN_FAILED)
        message = (str(result.get("message")) if reason in r.PLAN_ERRORS else turn.failure_message("plan"))
        turn.finish("Failed", reason)
        return turn.outcome(s.stalled("Failed", reason, message), POLL_IDLE)
    return planned(turn, spec, result)


def baselining(turn: Turn, spec: DatabaseMigrationSpec) -> Decision | None:
    """Adopt a pre-Alembic database (spec.baseline): stamp it when it has tables but no alembic_version."""
    db = turn.obs.database
    needed = bool(spec.baseline) and db.versioned is False and (db.tables or 0) > 0
    if turn.job("stamp").state == "absent" and not needed:
        return None
    job = turn.drive("stamp", {"revision": str(spec.baseline)},
                     f"the database has {db.tables} table(s) and no alembic_version: stamping it at spec.baseline "
                     f"{spec.baseline}", before_start=turn.unless_suspended)
    if isinstance(job, Decision):
        return job
    result = job.result or {}
    if job.state == "failed" or not result.get("ok"):
        message = turn.failure_message("stamp") + "; nothing was changed"
        turn.finish("Failed", r.BASELINE_FAILED)
        return turn.outcome(s.stalled("Failed", turn.failure_reason("stamp", r.BASELINE_FAILED), message),
                            POLL_IDLE)
    if not turn.run.baselined:
        turn.run.baselined = True
        turn.record("Baselined", r.BASELINED, "none", spec.baseline)
        turn.decision.events.append(Event("Normal", r.BASELINED, f"stamped the pre-Alembic database at "
                                     f"{spec.baseline} (spec.baseline); no migration ran for it"))
    return None


def whole_plan(turn: Turn, result: ScanResult) -> tuple[list[str], list[str]] | None:
    """(every revision id, in order; the destructive ones): from the scan's result, or, for a plan too long for
    it (hundreds of revisions), from the SQL document its log carried, once the ids hash to what the result
    says. None: that document could not be read yet."""
    revisions = list(result.get("revisions") or [])
    destructive = list(result.get("destructiveRevisions") or [])
    if int(result.get("revisionCount") or len(revisions)) == len(revisions):
        return revisions, destructive
    doc = plan_document(turn)
    ids = plansql.planned_revisions(doc, result.get("revisionsSha256")) if doc else None
    if doc is None or ids is None:
        return None
    return ids, [str(x) for x in (doc.get("plan") or {}).get("destructiveRevisions") or []]


def plan_document(turn: Turn) -> plansql.Document | None:
    """The plan Job's SQL document (plansql), when its log was read and it is the SQL this plan scanned."""
    job = turn.job("plan")
    if job.plan_sql is None:
        return None
    try:
        doc = plansql.read(job.plan_sql)
    except (OSError, ValueError, EOFError):
        return None
    return doc if doc.get("sqlSha256") == (job.result or {}).get("sqlSha256") else None


def planned(turn: Turn, spec: DatabaseMigrationSpec, result: ScanResult) -> Decision:
    whole = whole_plan(turn, result)
    if whole is None:
        job = turn.job("plan")
        return turn.outcome(s.progressing(
            "Planning", r.PLANNING, f"the plan has {result.get('revisionCount')} revisions, more than its result "
            f"can list: reading them from Job {job.name}'s log (container scan)"), 5.0)
    revisions, destructive_revisions = whole
    destructive = list(result.get("destructive") or [])
    findings = result.get("findings") or []
    run = turn.run
    run.start_revision, run.target_revision = result.get("current"), result.get("target")
    run.revisions = revisions
    run.destructive_revisions = sorted({revision for f in findings
                                        if f.get("severity") == "destructive" and (revision := f.get("revision"))}
                                       | set(destructive_revisions))
    run.plan_hash = plan_hash(result, spec.migrations.image, revisions)
    ddl = result.get("transactionalDDL")
    run.transactional_ddl = ddl if isinstance(ddl, bool) else None
    run.image = spec.migrations.image
    if destructive and not run.destructive_revisions:
        run.destructive_revisions = list(revisions)  # findings trimmed away: assume the worst
    turn.st.target_revision = result.get("target")
    plan = turn.st.plan = PlanStatus(
        revisions=revisions,
        destructive=destructive,
        hash=run.plan_hash,
        destructive_count=int(result.get("destructiveCount") or len(destructive)),
        warning_count=int(result.get("warningCount") or len(result.get("warnings") or [])),
        from_revision=rev(result.get("current")),
        to_revision=result.get("target"),
        generation=turn.generation,
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
    contract.plan_parts(turn.st, run, list(result.get("contract") or []), turn.generation,
                        list(result.get("breaking") or []),
                        int(result.get("breakingCount") or len(result.get("breaking") or [])))
    keep_plan_sql(turn)
    if not revisions:
        turn.done("UpToDate")
        return turn.goto("Done")
    run.step = "AwaitingApproval"
    return approval(turn)


def keep_plan_sql(turn: Turn) -> None:
    """Keep the plan's SQL (read from its Job's log) in a ConfigMap, named in status.plan.sql: once per plan."""
    plan, job = turn.st.plan, turn.job("plan")
    if plan is None or job.plan_sql is None or (plan.sql is not None and plan.sql.job == job.name):
        return
    if (doc := plan_document(turn)) is None:
        return  # unreadable, or not the SQL this plan's hash covers
    name = f"{job.name}-sql"
    turn.decision.config_maps.append(PlanSQLKept(name, turn.generation, job.plan_sql))
    plan.sql = PlanSQL(config_map=name, job=job.name, sha256=doc.get("sqlSha256"),
                       revisions=len(doc.get("revisions") or []), total=doc.get("total"),
                       truncated=bool(doc.get("truncated")))


def approval(turn: Turn) -> Decision:
    keep_plan_sql(turn)  # when the log could not be read as the plan finished
    spec = turn.spec()
    live_spec = turn.live() if turn.obs.spec else spec
    plan = turn.st.plan or PlanStatus()
    scope = contract.to_approve(turn.run, plan)  # a split plan: the part under way (approved up front by its hash)
    destructive = scope.destructive
    breaking = scope.breaking
    locking = [f.operation for f in plan.locking or []] if turn.run.part != "contract" else []
    locking_count = int(plan.locking_count or len(locking)) if locking else 0
    gate_locking = live_spec.approval.require_for_locking and locking_count > 0
    if (destructive or gate_locking or breaking) and rehearsal.before_approval(turn, live_spec):
        turn.condition(c.APPROVAL_REQUIRED, "True", r.REHEARSAL_REQUIRED, "spec.approval.requireRehearsal: the plan "
                       "is rehearsed on a scratch copy of the database first, then waits for approval")
    elif destructive or gate_locking or breaking:
        plan_hash_ = turn.run.plan_hash
        annotated = turn.obs.annotations.get(c.APPROVE_ANNOTATION) == plan_hash_
        how = (f"review it with kubectl dbm plan {turn.obs.name} -n {turn.obs.namespace}, then approve its hash "
               f"{plan_hash_}")
        if annotated:  # the user the webhook recorded for this hash, when it did
            approved_by = approvals.approved_by(turn.obs.annotations, plan_hash_) or c.APPROVE_ANNOTATION
        elif plan_hash_ and (by_set := turn.obs.set_approvals.get(plan_hash_)):  # a person, for the whole set
            approved_by = by_set
        elif destructive and not live_spec.approval.allow_destructive:
            count = scope.count
            # A drop the running version still reads: the same approval, and a better way (the note takes the
            # room of a listed operation, so that the message stays a few hundred characters long).
            note = (f". {len(breaking)} operation(s) break the running version (status.plan.breaking): mark their "
                    'revisions phase = "contract"') if breaking else ""
            listed = _listed(destructive, count, LISTED_CHARS - len(note))
            message = f"{scope.part} destroys data: {listed}. To go ahead, {how}{note}"
            message += rehearsal.rehearsed_note(turn)
            turn.condition(c.APPROVAL_REQUIRED, "True", r.DESTRUCTIVE_CHANGES_NOT_APPROVED, message)
            return turn.outcome(s.stalled("AwaitingApproval", r.DESTRUCTIVE_CHANGES_NOT_APPROVED, message),
                                POLL_IDLE)
        elif breaking and not live_spec.approval.allow_destructive:
            count = int(plan.breaking_count or len(breaking))
            message = (f"the plan breaks the running version: {_listed(breaking, count)}. Mark such revisions "
                       f'phase = "contract" in a new image, or, to accept the outage, {how}')
            turn.condition(c.APPROVAL_REQUIRED, "True", r.BREAKS_RUNNING_VERSION, message)
            return turn.outcome(s.stalled("AwaitingApproval", r.BREAKS_RUNNING_VERSION, message), POLL_IDLE)
        elif gate_locking:
            message = (f"the plan takes strong locks on existing tables: {_listed(locking, locking_count)}. "
                       f"Rewrite them the safer way (status.plan.locking), or {how}{rehearsal.rehearsed_note(turn)}")
            turn.condition(c.APPROVAL_REQUIRED, "True", r.LOCKING_CHANGES_NOT_APPROVED, message)
            return turn.outcome(s.stalled("AwaitingApproval", r.LOCKING_CHANGES_NOT_APPROVED, message),
                                POLL_IDLE)
        else:
            approved_by = "spec.approval.allowDestructive"
        what = "destructive changes" if destructive else "locking changes" if gate_locking else \
            "changes that break the running version"
        if destructive and gate_locking:
            what = "destructive and locking changes"
        turn.run.approved_by = approved_by
        turn.condition(c.APPROVAL_REQUIRED, "False", r.APPROVED, f"{what} approved by {approved_by}")
    else:
        turn.condition(c.APPROVAL_REQUIRED, "False", r.NO_DESTRUCTIVE_CHANGES, f"{scope.part} destroys no data")
    if turn.obs.busy_with:
        return turn.outcome(s.progressing(
            "Pending", r.WAITING_FOR_DATABASE,
            f"{turn.obs.busy_with} is migrating the same database; this one starts when it is done"), 5.0)
    if turn.suspended():
        return turn.outcome(SUSPENDED, POLL_IDLE)
    if (stop := turn.database("Pending")) is not None:
        return stop
    if turn.obs.database.revision != turn.run.start_revision:  # e.g. while it waited for approval or
        return turn.replan(f"the database moved from {rev(turn.run.start_revision)} to "  # another writer
                           f"{rev(turn.obs.database.revision)} since this run planned")
    if turn.run.part == "expand" and not turn.run.revisions:  # all contract: it waits for the older version now
        return contract.expanded(turn)
    if spec.backup.enabled:
        turn.run.step = "BackingUp"
        return turn.goto("BackingUp")
    turn.condition(c.BACKUP_SUCCEEDED, "False", r.BACKUP_DISABLED, "spec.backup.enabled is false: no backup")
    turn.run.step = "Migrating"
    return turn.goto("Migrating")
