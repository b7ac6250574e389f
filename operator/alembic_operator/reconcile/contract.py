"""Expand/contract: a plan split at its first contract revision, the wait for the older version, the contract part.

A revision file says it removes what the older version of the app uses with a module attribute next to `revision`
and `down_revision`: ``phase = "contract"`` (``"expand"`` is the default). The runner's plan names the contract
revisions; the plan's revisions before the first one are its *expand* part, the rest its *contract* part. The
expand part runs as any plan does (approval, backup, the migrate Job); the new version's pods are released once it
is applied (gate.bounds: a version built for a contract revision needs only the expand part). The contract part
waits until no pod of the older version runs, is approved on its own if it destroys data (unless its plan's hash
was approved up front), takes its own backup, and runs as the contract Job. Everything here is a pure function of
what was observed, or a step of the run (`waiting`), driven through `Turn`.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

from .. import constants as c
from .. import gate
from .. import reasons as r
from .. import status as s
from ..api import ContractStatus, DatabaseMigrationStatus, PlanPart, PlanStatus, RunStatus, duration_seconds
from ..objects import Pod, Workload
from ..observation import AppPods
from ..sqlrules import Finding
from .decision import Decision
from .turn import Turn, rev

POLL_WAITING = 2.0  # seconds between looks at the older version's pods: the contract starts this soon after
SHOWN_PODS = 20
SHOWN_OPERATIONS = 10
# Operations that break a version still running: it reads or writes what they remove.
BREAKING_RULES = frozenset({"drop-table", "drop-column", "rename-table", "rename-column"})
_OBJECT = re.compile(r"^(?:DROP (?:TABLE|COLUMN)|RENAME (?:TABLE|VIEW|COLUMN)|CHANGE COLUMN|MOVE TABLE) ([^\s(]+)")
_REPLICA_SET_REVISION = "deployment.kubernetes.io/revision"
_CONTROLLER_REVISION = "controller-revision-hash"


# --- the plan ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """A plan's revisions cut at its first contract revision."""

    expand: list[str]
    contract: list[str]


def split(revisions: Sequence[str], contract: Collection[str]) -> Split:
    """Every revision before the first contract revision is the expand part; from it on, the contract part (a later
    expand revision included: it runs after the older version is gone too)."""
    first = next((i for i, revision in enumerate(revisions) if revision in contract), len(revisions))
    return Split(list(revisions[:first]), list(revisions[first:]))


def object_of(finding: Finding) -> str | None:
    """The table or table.column a drop or rename names ("orders.code"), its schema left out."""
    match = _OBJECT.match(finding.operation)
    if match is None:
        return None
    parts = match.group(1).strip('"`').split(".")
    return ".".join(parts[-2:]) if finding.rule.endswith("column") else parts[-1]


def breaking(findings: Iterable[Finding], expand: Collection[str], start: str | None,
             used: Collection[str] | None = None) -> list[Finding]:
    """The findings of the expand part that drop or rename a table or column the running version uses: it keeps
    running (and serving) while the expand part commits. What it uses: `used` (tables and table.columns of the
    previous release's models) when known; else the schema at `start` it requires, i.e. anything the plan drops
    or renames. No running version (an empty database, start None): nothing breaks."""
    if start is None:
        return []
    found = []
    for f in findings:
        if f.rule not in BREAKING_RULES or f.revision not in expand:
            continue
        name = object_of(f)
        if used is not None and name is not None and name not in used:  # a column counts as itself, not its table
            continue
        found.append(f)
    return found


def breaking_message(f: Finding, start: str | None) -> str:
    return (f"{f.describe()}: the running version (at {rev(start)}) uses it; mark revision {f.revision} "
            'phase = "contract" so it runs once the older version\'s pods are gone')


def part_destructive(plan: PlanStatus, revisions: Collection[str], destructive_revisions: Collection[str]) -> list[str]:
    """The plan's destructive operations that belong to these revisions (status names each one's revision)."""
    return [op for op in plan.destructive
            if any(f"(revision {x})" in op or op.endswith(f"revision {x}") for x in revisions)
            or (op.startswith("... and ") and set(revisions) & set(destructive_revisions))]


def plan_parts(st: DatabaseMigrationStatus, run: RunStatus, contract: Sequence[str], generation: int,
               breaking_ops: Sequence[str], breaking_count: int) -> None:
    """Split the run's plan (status.plan, run.revisions) at its first contract revision: status.plan.expand and
    .contract, status.contract, and the run aimed at its expand part. A plan without contract revisions is left
    whole."""
    plan = st.plan
    if plan is None:
        return
    plan.contract_revisions = list(contract) or None
    if breaking_ops:
        plan.breaking = list(breaking_ops)[:SHOWN_OPERATIONS]
        plan.breaking_count = breaking_count
    revisions = list(run.revisions or [])
    parts = split(revisions, set(contract))
    st.contract = None
    run.part = None
    if not parts.contract:
        return
    start, target = run.start_revision, run.target_revision
    expand_to = parts.expand[-1] if parts.expand else start
    destructive = set(run.destructive_revisions or [])
    plan.expand = PlanPart(revisions=parts.expand, from_revision=rev(start), to_revision=rev(expand_to),
                           destructive=part_destructive(plan, parts.expand, destructive))
    plan.contract = PlanPart(revisions=parts.contract, from_revision=rev(expand_to), to_revision=target,
                             destructive=part_destructive(plan, parts.contract, destructive))
    st.contract = ContractStatus(generation=generation, state="Expanding", expand_to=expand_to, target=target,
                                 from_revision=start)
    run.part = "expand"
    run.target_revision = expand_to
    run.revisions = parts.expand
    run.destructive_revisions = [x for x in run.destructive_revisions or [] if x in parts.expand]


@dataclass(frozen=True)
class ToApprove:
    """What the approval step weighs for the part under way (the whole plan when it is not split)."""

    destructive: list[str]
    count: int
    breaking: list[str]
    part: str  # "the plan", "the expand part", "the contract part"


def to_approve(run: RunStatus, plan: PlanStatus) -> ToApprove:
    count = int(plan.destructive_count or len(plan.destructive))
    breaking_ops = list(plan.breaking or [])
    if run.part == "expand" and plan.expand is not None:
        ops = plan.expand.destructive
        return ToApprove(ops, len(ops), breaking_ops, "the expand part")
    if run.part == "contract" and plan.contract is not None:
        ops = plan.contract.destructive
        return ToApprove(ops, len(ops), [], "the contract part")
    return ToApprove(list(plan.destructive), count if plan.destructive else 0, breaking_ops, "the plan")


# --- the older version's pods -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OlderPod:
    name: str
    workload: str | None  # "Deployment/shop", "StatefulSet/db", "ReplicaSet/shop-5f7c"
    requires: str | None  # the revision its annotation names (None: it comes from an older template)

    def describe(self) -> str:
        what = [x for x in (self.workload, f"needs {self.requires}" if self.requires else "an older template") if x]
        return f"{self.name} ({', '.join(what)})"


def _owner(meta: Mapping[str, object], kind: str) -> str | None:
    for ref in meta.get("ownerReferences") or []:  # type: ignore[attr-defined]
        if isinstance(ref, Mapping) and ref.get("kind") == kind and ref.get("controller", True):
            return str(ref.get("name"))
    return None


def outdated(pod: Pod, replica_sets: Mapping[str, Workload], deployments: Mapping[str, Workload],
             stateful_sets: Mapping[str, Workload]) -> str | None:
    """The workload of a pod made from an older template of it (an older ReplicaSet of a Deployment, an older
    controller revision of a StatefulSet), else None."""
    meta = pod.get("metadata") or {}
    if (name := _owner(meta, "ReplicaSet")) is not None and (rs := replica_sets.get(name)) is not None:
        rs_meta = rs.get("metadata") or {}
        deployment = _owner(rs_meta, "Deployment")
        owner = deployments.get(deployment or "")
        if owner is None:
            return None
        mine = (rs_meta.get("annotations") or {}).get(_REPLICA_SET_REVISION)
        current = ((owner.get("metadata") or {}).get("annotations") or {}).get(_REPLICA_SET_REVISION)
        return f"Deployment/{deployment}" if mine and current and mine != current else None
    if (name := _owner(meta, "StatefulSet")) is not None and (sts := stateful_sets.get(name)) is not None:
        mine = (meta.get("labels") or {}).get(_CONTROLLER_REVISION)
        current = (sts.get("status") or {}).get("updateRevision")
        return f"StatefulSet/{name}" if mine and current and mine != current else None
    return None


def workload_of(pod: Pod, replica_sets: Mapping[str, Workload]) -> str | None:
    meta = pod.get("metadata") or {}
    if (name := _owner(meta, "ReplicaSet")) is not None:
        deployment = _owner((replica_sets.get(name) or {}).get("metadata") or {}, "Deployment")
        return f"Deployment/{deployment}" if deployment else f"ReplicaSet/{name}"
    if (name := _owner(meta, "StatefulSet")) is not None:
        return f"StatefulSet/{name}"
    return None


def older_pods(app: AppPods, lineage: Sequence[str], contract: Collection[str],
               part: Collection[str]) -> list[OlderPod]:
    """The pods of the older version that the contract part (`part`) would break, still there (a terminating pod
    still serves): those whose revision annotation's upper bound (gate.bounds) is in the part, and those without
    the annotation made from an older template of their workload. A pod still held by our gate never ran."""
    by_name = {str((w.get("metadata") or {}).get("name")): w for w in app.replica_sets}
    deployments = {str((w.get("metadata") or {}).get("name")): w for w in app.deployments}
    stateful_sets = {str((w.get("metadata") or {}).get("name")): w for w in app.stateful_sets}
    found: list[OlderPod] = []
    for pod in app.pods:
        meta = pod.get("metadata") or {}
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed") or gate.has_gate(pod):
            continue
        requirement = gate.requirement_of(meta)
        if requirement is None:
            continue
        name = str(meta.get("name"))
        if requirement.revision:
            upper = gate.bounds(lineage, contract, requirement.revision).upper
            if upper is not None and upper in part:
                found.append(OlderPod(name, workload_of(pod, by_name), requirement.revision))
        elif (workload := outdated(pod, by_name, deployments, stateful_sets)) is not None:
            found.append(OlderPod(name, workload, None))
    return sorted(found, key=lambda p: p.name)


# --- the run's steps ----------------------------------------------------------------------------------------------


def expanded(turn: Turn) -> Decision:
    """The migrate Job applied the expand part: the new version's pods go (the gate), the contract part waits."""
    cs = turn.st.contract or ContractStatus(state="Expanding")
    cs.state, cs.expanded_at = "WaitingForOldVersion", turn.obs.now
    turn.st.contract = cs
    turn.condition(c.EXPANDED, "True", r.EXPANDED,
                   f"expand part applied: {rev(turn.run.start_revision)} -> {rev(cs.expand_to)}; the new version's "
                   "pods may start")
    turn.run.step = "WaitingForOldVersion"
    return turn.goto("WaitingForOldVersion")


def waiting(turn: Turn) -> Decision:
    """Wait until no pod of the older version runs, then start the contract part (its approval first)."""
    cs, plan = turn.st.contract, turn.st.plan
    if cs is None or plan is None or plan.contract is None:  # a status written by hand: plan again
        return turn.replan("the run waits for a contract part its status no longer describes")
    spec = turn.spec()
    now = turn.obs.now
    if cs.waiting_since is None:
        cs.waiting_since = now
        timeout = duration_seconds(spec.contract.old_version_timeout) or 0
        cs.deadline = now + timedelta(seconds=timeout)
    if turn.obs.app_pods is None:
        return turn.outcome(s.progressing("WaitingForOldVersion", r.WAITING_FOR_OLD_VERSION,
                                          "reading the pods that wait for this resource"), POLL_WAITING)
    older = older_pods(turn.obs.app_pods, plan.lineage, plan.contract_revisions or [], plan.contract.revisions)
    cs.older_pods = [p.describe() for p in older[:SHOWN_PODS]]
    cs.older_pod_count = len(older)
    cs.older_workloads = sorted({p.workload for p in older if p.workload})
    if older:
        cs.state = "WaitingForOldVersion"
        listed = ", ".join(cs.older_pods[:5]) + (f" and {len(older) - 5} more" if len(older) > 5 else "")
        message = (f"the expand part is applied ({rev(cs.expand_to)}); the contract part "
                   f"({', '.join(plan.contract.revisions)}) waits until the older version's {len(older)} pod(s) are "
                   f"gone: {listed}")
        turn.condition(c.CONTRACTED, "False", r.WAITING_FOR_OLD_VERSION, message)
        if cs.deadline is not None and now >= cs.deadline:
            return turn.outcome(s.stalled(
                "WaitingForOldVersion", r.OLD_VERSION_STILL_RUNNING,
                f"{message}, for longer than spec.contract.oldVersionTimeout ({spec.contract.old_version_timeout}). "
                "Finish or undo the rollout of " + (", ".join(cs.older_workloads) or "their workloads") +
                "; the contract part starts by itself once they are gone"), POLL_WAITING)
        return turn.outcome(s.progressing("WaitingForOldVersion", r.WAITING_FOR_OLD_VERSION, message), POLL_WAITING)
    cs.old_version_gone_at = cs.old_version_gone_at or now
    cs.state = "Contracting"
    turn.condition(c.CONTRACTED, "False", r.CONTRACTING,
                   f"the older version's pods are gone: the contract part {rev(cs.expand_to)} -> {cs.target} starts")
    run = turn.run
    all_destructive = set(run.destructive_revisions or []) | {
        x for x in plan.contract.revisions if any(f"revision {x}" in op for op in plan.contract.destructive)}
    run.part = "contract"
    run.start_revision, run.target_revision = cs.expand_to, cs.target
    run.revisions = list(plan.contract.revisions)
    run.destructive_revisions = sorted(x for x in all_destructive if x in plan.contract.revisions)
    run.backup, run.rollback, run.retry_at, run.attempts = None, None, None, {}
    turn.next_instance("backup")
    run.step = "AwaitingApproval"
    return turn.goto("AwaitingApproval")


def note_started(turn: Turn) -> None:
    """When this run's migrate (expand part) or contract Job was asked for: status.contract's timestamps."""
    cs = turn.st.contract
    if cs is None:
        return
    for job in turn.decision.jobs:
        if job.role == "migrate" and turn.run.part == "expand" and cs.expand_started_at is None:
            cs.expand_started_at = turn.obs.now
            cs.state = "Expanding"
        elif job.role == "contract" and cs.contract_started_at is None:
            cs.contract_started_at = turn.obs.now
            cs.state = "Contracting"


def contracted(turn: Turn) -> None:
    """The contract Job applied the contract part."""
    cs = turn.st.contract
    if cs is None:
        return
    cs.state, cs.contracted_at = "Contracted", turn.obs.now
    cs.older_pods, cs.older_pod_count, cs.older_workloads = [], 0, []
    turn.condition(c.CONTRACTED, "True", r.CONTRACTED,
                   f"contract part applied: {rev(cs.expand_to)} -> {cs.target}")

