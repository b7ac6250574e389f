"""Holding an app's new pods until the schema is ready: every decision, as pure functions.

A pod whose labels carry ``migrations.alembic-operator.io/wait-for: <DatabaseMigration name>`` states a
*requirement* on that DatabaseMigration (same namespace):

- without the annotation ``migrations.alembic-operator.io/revision``: the resource is Ready at its target
  (condition Ready=True for the current ``metadata.generation`` and ``status.currentRevision ==
  status.targetRevision``);
- with it: the database is at that revision or at a descendant of it, whatever the resource is doing.

A pod that needs a whole DatabaseMigrationSet (every tenant's database migrated, e.g. a service that reads them all)
adds the annotation ``migrations.alembic-operator.io/wait-for-kind: DatabaseMigrationSet``: ``wait-for`` then names
the set, and the requirement holds for every one of its DatabaseMigrations (:func:`evaluate_set`), the set itself
Ready at its generation when no revision is named. A tenant's own pods keep waiting for their own tenant's
DatabaseMigration (``<set>-<secret>``).

A pod whose requirement is not met when it is created gets the scheduling gate ``constants.SCHEDULING_GATE`` (the
admission webhook, :mod:`alembic_operator.webhook`); the gate is removed as soon as the requirement is met
(:mod:`alembic_operator.release`). Nothing here talks to Kubernetes: the functions take the objects as dicts, as
the API returns them, and say what to do.

"Descendant" is read from the resource's status, newest knowledge first:

- ``status.plan.lineage``: ancestors of the plan's target, newest first, the target included (up to 50): a revision
  that appears at or after ``currentRevision``'s position is an ancestor of the database's revision;
- ``status.plan.revisions``: the revisions of the last plan in the order they run (``fromRevision`` excluded): for an
  upgrade plan, a revision at or before ``currentRevision``'s index (and ``fromRevision`` itself) has been applied.

A revision that appears nowhere in the status (plan, lineage, history, current or target) is *unknown*: the pod
stays held, and the Events say so, since a typo in the annotation would otherwise hold it silently.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from . import constants as c
from . import reasons
from .api import JsonObject
from .reasons import Reason

Obj = Mapping[str, Any]

GATE: dict[str, str] = {"name": c.SCHEDULING_GATE}
MIN_PREFIX = 4  # shortest abbreviated revision id accepted in the annotation (Alembic accepts prefixes too)
MAX_LISTED = 5  # pod names listed in one Event message

# Verdict reasons (they appear in Events; declared in .reasons).
READY_AT_TARGET = reasons.READY_AT_TARGET
REVISION_REACHED = reasons.REVISION_REACHED
MIGRATION_NOT_FOUND = reasons.MIGRATION_NOT_FOUND
NOT_READY = reasons.MIGRATION_NOT_READY
WAITING_FOR_REVISION = reasons.WAITING_FOR_REVISION
UNKNOWN_REVISION = reasons.UNKNOWN_REVISION
SCHEMA_CONTRACTED = reasons.SCHEMA_CONTRACTED


@dataclass(frozen=True)
class Requirement:
    """What a pod waits for: a DatabaseMigration (same namespace), or every one of a DatabaseMigrationSet's (kind),
    and, optionally, a revision."""

    migration: str
    revision: str | None = None
    kind: str = c.KIND  # or c.SET_KIND

    def describe(self) -> str:
        if self.kind == c.SET_KIND:
            every = f"every DatabaseMigration of DatabaseMigrationSet {self.migration}"
            return f"{every} to reach revision {self.revision}" if self.revision else \
                f"{every} to be Ready at its target revision"
        if self.revision:
            return f"the database of DatabaseMigration {self.migration} to reach revision {self.revision}"
        return f"DatabaseMigration {self.migration} to be Ready at its target revision"


@dataclass(frozen=True)
class Verdict:
    """Whether a requirement is met now; the reason and message go into Events."""

    met: bool
    reason: Reason
    message: str


def requirement_of(meta: Obj | None) -> Requirement | None:
    """The requirement a pod (or a pod template) states in its labels and annotations; None: it waits for nothing.

    An empty annotation, or ``head``, means the same as no annotation: Ready at the resource's target.
    """
    meta = meta or {}
    name = str((meta.get("labels") or {}).get(c.WAIT_FOR_LABEL) or "").strip()
    if not name:
        return None
    annotations = meta.get("annotations") or {}
    revision = str(annotations.get(c.REVISION_ANNOTATION) or "").strip()
    kind = c.SET_KIND if str(annotations.get(c.WAIT_FOR_KIND_ANNOTATION) or "").strip().lower() in (
        c.SET_KIND.lower(), c.SET_SHORT_NAME) else c.KIND
    return Requirement(name, None if revision.lower() in ("", "head") else revision, kind)


# --- the DatabaseMigration's side ---------------------------------------------------------------------------------


def _condition(status: Obj, type_: str) -> Obj | None:
    for cond in status.get("conditions") or []:
        if isinstance(cond, Mapping) and cond.get("type") == type_:
            return cond
    return None


def ready_at_target(dbm: Obj) -> bool:
    """Ready=True for this generation, and the database at the resolved target."""
    meta = dbm.get("metadata") or {}
    status = dbm.get("status") or {}
    cond = _condition(status, c.READY)
    if cond is None or cond.get("status") != "True":
        return False
    observed = cond.get("observedGeneration", status.get("observedGeneration"))
    if observed is None or observed != meta.get("generation"):
        return False
    target = status.get("targetRevision")
    return bool(target) and status.get("currentRevision") == target


def _strings(values: Any) -> list[str]:
    return [str(v) for v in values or [] if isinstance(v, str) and v]


def known_revisions(status: Obj) -> list[str]:
    """Every revision id the status mentions (plan, lineage, history, current, target), without repeats."""
    plan = status.get("plan") or {}
    found: list[str] = []
    found += _strings([status.get("currentRevision"), status.get("targetRevision")])
    found += _strings(plan.get("lineage")) + _strings(plan.get("revisions"))
    found += _strings([plan.get("fromRevision"), plan.get("toRevision")])
    for entry in status.get("history") or []:
        if isinstance(entry, Mapping):
            found += _strings([entry.get("from"), entry.get("to")])
    return list(dict.fromkeys(r for r in found if r != "base"))


def resolve_revision(status: Obj, revision: str) -> str:
    """The full id of an abbreviated revision (a unique prefix of at least MIN_PREFIX characters); else as given."""
    known = known_revisions(status)
    if revision in known or len(revision) < MIN_PREFIX:
        return revision
    matches = [r for r in known if r.startswith(revision)]
    return matches[0] if len(matches) == 1 else revision


RevisionState = Literal["reached", "pending", "unknown"]


def revision_state(status: Obj, revision: str) -> RevisionState:
    """Whether the database (``status.currentRevision``) is at ``revision`` or a descendant of it."""
    revision = resolve_revision(status, revision)
    current = status.get("currentRevision")
    if current and revision == current:
        return "reached"
    plan = status.get("plan") or {}
    if current:
        lineage = _strings(plan.get("lineage"))  # newest first: later positions are ancestors
        if current in lineage and revision in lineage and lineage.index(revision) >= lineage.index(current):
            return "reached"
        revisions = _strings(plan.get("revisions"))
        to_rev, from_rev = plan.get("toRevision"), plan.get("fromRevision")
        upgrade = bool(revisions) and revisions[-1] == to_rev and revisions[0] != from_rev
        if upgrade and current in revisions:
            applied = revisions[: revisions.index(current) + 1]
            if revision in applied or (revision == from_rev and from_rev not in (None, "", "base")):
                return "reached"
    return "pending" if revision in known_revisions(status) else "unknown"


# --- expand/contract: both bounds of a requirement ---------------------------------------------------------------


@dataclass(frozen=True)
class Bounds:
    """What a pod built for `revision` can run on: the database at `lower` or later, and not yet at `upper`.

    Contract revisions (phase = "contract") only remove what an older version used, so a version built for a
    contract revision runs on the schema its expand part left (`lower` is the newest non-contract revision at or
    before it), and a version built before a contract revision stops working once that revision is applied
    (`upper`: the first contract revision after it that follows an expand revision; a run of contract revisions
    right after a contract revision belongs to the version built for it). None: no bound."""

    lower: str | None
    upper: str | None


def bounds(lineage: Sequence[str], contract: Iterable[str], revision: str) -> Bounds:
    """Both bounds of `revision` in a lineage (newest first) whose contract revisions are `contract`; a revision
    outside the lineage keeps its own lower bound and has no upper one."""
    marked = set(contract)
    if revision not in lineage or not marked:
        return Bounds(revision, None)
    at = lineage.index(revision)
    older = at
    while older < len(lineage) and lineage[older] in marked:
        older += 1
    lower = lineage[older] if older < len(lineage) else None
    expanded = revision not in marked
    upper = None
    for newer in reversed(lineage[:at]):
        if newer in marked and expanded:
            upper = newer
            break
        expanded = expanded or newer not in marked
    return Bounds(lower, upper)


def bounds_of(status: Obj, revision: str) -> Bounds:
    """`bounds` from a DatabaseMigration's status (plan.lineage, plan.contractRevisions)."""
    plan = status.get("plan") or {}
    return bounds(_strings(plan.get("lineage")), _strings(plan.get("contractRevisions")), revision)


def split_target(dbm: Obj) -> str | None:
    """The target of this generation's plan when it is split into expand and contract parts (status.plan.contract
    set for the resource's generation): a pod that waits for the target needs only the expand part."""
    status = dbm.get("status") or {}
    plan = status.get("plan") or {}
    generation = (dbm.get("metadata") or {}).get("generation")
    if not plan.get("contract") or plan.get("generation") != generation:
        return None
    target = status.get("targetRevision") or plan.get("toRevision")
    return str(target) if target else None


def _state_of(dbm: Obj) -> str:
    status = dbm.get("status") or {}
    phase = status.get("phase") or "not processed yet"
    current = status.get("currentRevision") or "empty"
    target = status.get("targetRevision") or "not resolved yet"
    text = f"phase {phase}, database at {current}, target {target}"
    stalled = (_condition(status, c.STALLED) or {}).get("status") == "True"
    message = str(status.get("message") or "").strip()
    if message and (stalled or phase in ("Failed", "AwaitingApproval")):
        text += f": {message[:300]}"
    return text


def evaluate(requirement: Requirement, dbm: Obj | None) -> Verdict:
    """Is the requirement met by this DatabaseMigration (None: it does not exist)?"""
    name = requirement.migration
    if dbm is None:
        return Verdict(False, MIGRATION_NOT_FOUND,
                       f"waiting for {requirement.describe()}, but DatabaseMigration {name} does not exist in this "
                       "namespace: create it, or fix the label " + c.WAIT_FOR_LABEL)
    status = dbm.get("status") or {}
    if requirement.revision is None:
        if ready_at_target(dbm):
            return Verdict(True, READY_AT_TARGET,
                           f"DatabaseMigration {name} is Ready at revision {status.get('currentRevision')}")
        target = split_target(dbm)
        split = bounds_of(status, target) if target else None
        if split is None or not split.lower or revision_state(status, split.lower) != "reached":
            return Verdict(False, NOT_READY, f"waiting for {requirement.describe()} ({_state_of(dbm)})")
        return Verdict(True, REVISION_REACHED,
                       f"the database of DatabaseMigration {name} is at {status.get('currentRevision')}: the expand "
                       f"part of the plan to {target} is applied, and what is left (contract revisions) removes only "
                       "what the older version used")
    wanted = resolve_revision(status, requirement.revision)
    limits = bounds_of(status, wanted)
    if limits.upper and revision_state(status, limits.upper) == "reached":
        return Verdict(False, SCHEMA_CONTRACTED,
                       f"this pod's version needs revision {requirement.revision} (annotation "
                       f"{c.REVISION_ANNOTATION}), but the database of DatabaseMigration {name} is at "
                       f"{status.get('currentRevision')}, past contract revision {limits.upper}, which removed what "
                       f"that version uses: it stays held. Roll the workload forward to a version built for "
                       f"{limits.upper} or later")
    state = revision_state(status, limits.lower) if limits.lower and limits.lower != wanted else \
        revision_state(status, requirement.revision)
    if limits.lower is None:
        state = "reached"  # contract revisions all the way down: nothing of the schema is needed first
    if state == "reached" and limits.lower != wanted:
        return Verdict(True, REVISION_REACHED,
                       f"the database of DatabaseMigration {name} is at {status.get('currentRevision')}: the expand "
                       f"part before revision {requirement.revision} is applied, and what is left of it (contract "
                       "revisions) removes only what the older version used")
    if state == "reached":
        return Verdict(True, REVISION_REACHED,
                       f"the database of DatabaseMigration {name} is at {status.get('currentRevision')}, "
                       f"revision {requirement.revision} or a descendant of it")
    if state == "unknown":
        return Verdict(False, UNKNOWN_REVISION,
                       f"revision {requirement.revision} (annotation {c.REVISION_ANNOTATION}) is unknown to "
                       f"DatabaseMigration {name}: it is not in its plan, lineage or history ({_state_of(dbm)}). "
                       "The pod stays held until the database reaches it: check the annotation, or the resource's "
                       "targetRevision")
    return Verdict(False, WAITING_FOR_REVISION, f"waiting for {requirement.describe()} ({_state_of(dbm)})")


# --- a whole DatabaseMigrationSet ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SetView:
    """A DatabaseMigrationSet (None: it does not exist) and its DatabaseMigrations, read together."""

    set: Obj | None
    members: tuple[Obj, ...] = ()


def evaluate_set(requirement: Requirement, view: SetView | None) -> Verdict:
    """Is the requirement met by every DatabaseMigration of the set? Every target must have its DatabaseMigration
    (the set's status counts them), each meets the requirement as a pod of its own would, and without a revision the
    set is Ready at its generation (a new template is a new rollout: its old Ready does not count)."""
    name = requirement.migration
    if view is None or view.set is None:
        return Verdict(False, MIGRATION_NOT_FOUND,
                       f"waiting for {requirement.describe()}, but DatabaseMigrationSet {name} does not exist in "
                       f"this namespace: create it, or fix the label {c.WAIT_FOR_LABEL}")
    meta, status = view.set.get("metadata") or {}, view.set.get("status") or {}
    members = sorted((m for m in view.members if not (m.get("metadata") or {}).get("deletionTimestamp")),
                     key=lambda m: str((m.get("metadata") or {}).get("name")))
    counts = status.get("counts") or {}
    cond = _condition(status, c.READY) or {}
    current = status.get("observedGeneration") == meta.get("generation")
    ready = current and cond.get("status") == "True" and cond.get("observedGeneration", status.get(
        "observedGeneration")) == meta.get("generation")
    progress = (f"DatabaseMigrationSet {name}: {counts.get('ready', 0)}/{counts.get('total', 0)} Ready, wave "
                f"{status.get('waveName') or '-'}, {cond.get('reason') or 'not processed yet'}")
    if not current or (requirement.revision is None and not ready) or counts.get("total", 0) != len(members):
        return Verdict(False, NOT_READY, f"waiting for {requirement.describe()} ({progress})")
    for member in members:
        verdict = evaluate(Requirement(str((member.get("metadata") or {}).get("name")), requirement.revision), member)
        if not verdict.met:
            return Verdict(False, verdict.reason, f"waiting for {requirement.describe()}: {verdict.message}")
    if requirement.revision is None:
        return Verdict(True, READY_AT_TARGET, f"DatabaseMigrationSet {name} is Ready: its {len(members)} "
                       "DatabaseMigration(s) are Ready at their target revision")
    return Verdict(True, REVISION_REACHED, f"the {len(members)} database(s) of DatabaseMigrationSet {name} are at "
                   f"revision {requirement.revision} or a descendant of it")


def verdict_of(requirement: Requirement, dbm: Obj | None, view: SetView | None = None) -> Verdict:
    """The requirement's verdict, on the DatabaseMigration it names or on the set (kind)."""
    return evaluate_set(requirement, view) if requirement.kind == c.SET_KIND else evaluate(requirement, dbm)


# --- the pod's side -----------------------------------------------------------------------------------------------


def gates_of(pod: Obj) -> list[Obj]:
    return [g for g in (pod.get("spec") or {}).get("schedulingGates") or [] if isinstance(g, Mapping)]


def has_gate(pod: Obj) -> bool:
    """Does the pod carry our scheduling gate (whatever other gates it has)?"""
    return any(g.get("name") == c.SCHEDULING_GATE for g in gates_of(pod))


def with_gate(pod: Obj) -> list[JsonObject]:
    """The pod's schedulingGates with ours added at the end (others kept as they are, in order)."""
    gates = [dict(g) for g in gates_of(pod)]
    if not any(g.get("name") == c.SCHEDULING_GATE for g in gates):
        gates.append(dict(GATE))
    return gates


def release_patch() -> JsonObject:
    """A strategic merge patch that removes our gate and only ours (schedulingGates merge on ``name``).

    The server applies it to the latest pod (no resourceVersion, hence no conflict), and it is a no-op when the
    gate is already gone: safe to send twice, from two replicas, or after a restart.
    """
    return {"spec": {"schedulingGates": [{"$patch": "delete", "name": c.SCHEDULING_GATE}]}}


def pod_key(pod: Obj) -> tuple[str, str]:
    meta = pod.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


@dataclass(frozen=True)
class Admission:
    """What the webhook does with a pod being created: add the gate or not, and why."""

    hold: bool
    verdict: Verdict | None = None
    warning: str | None = None


def admit(pod: Obj, dbm: Obj | None, excluded_namespaces: Iterable[str] = (), view: SetView | None = None) -> Admission:
    """Decide at creation. Unlabelled pods, pods whose requirement is met and pods already gated pass unchanged.
    `view`: the set and its DatabaseMigrations, for a pod that waits for a set."""
    meta = pod.get("metadata") or {}
    requirement = requirement_of(meta)
    if requirement is None or meta.get("namespace") in set(excluded_namespaces):
        return Admission(hold=False)
    if has_gate(pod):
        return Admission(hold=False)  # gated in its template already: the release loop handles it
    verdict = verdict_of(requirement, dbm, view)
    if verdict.met:
        return Admission(hold=False, verdict=verdict)
    if (pod.get("spec") or {}).get("nodeName"):
        return Admission(hold=False, verdict=verdict,
                         warning=f"not held: the pod sets spec.nodeName, and Kubernetes refuses scheduling gates on "
                                 f"such pods; it starts now although it is {verdict.message}")
    return Admission(hold=True, verdict=verdict)


@dataclass(frozen=True)
class PodVerdict:
    namespace: str
    name: str
    uid: str
    requirement: Requirement
    verdict: Verdict


def review_pods(pods: Iterable[Obj], migrations: Mapping[tuple[str, str], Obj],
                sets: Mapping[tuple[str, str], SetView] | None = None) -> list[PodVerdict]:
    """For each pod that carries our gate and a requirement: is the requirement met now?

    ``migrations`` maps (namespace, name) to the DatabaseMigration; a missing key means it does not exist. ``sets``
    the same for DatabaseMigrationSets (pods that wait for a whole set).
    Pods without our gate (released, or never held) and pods being deleted are left out.
    """
    out: list[PodVerdict] = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        requirement = requirement_of(meta)
        if requirement is None or not has_gate(pod) or meta.get("deletionTimestamp"):
            continue
        namespace, name = pod_key(pod)
        key = (namespace, requirement.migration)
        out.append(PodVerdict(namespace, name, str(meta.get("uid") or ""), requirement,
                              verdict_of(requirement, migrations.get(key), (sets or {}).get(key))))
    return out


def summarize_held(migration: str, held: Sequence[PodVerdict]) -> tuple[Literal["Normal", "Warning"], Reason, str]:
    """(type, reason, message) of the Event posted on a DatabaseMigration that holds pods."""
    names = sorted(p.name for p in held)
    listed = ", ".join(names[:MAX_LISTED]) + (f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else "")
    unknown = sorted({p.requirement.revision or "" for p in held if p.verdict.reason == UNKNOWN_REVISION})
    if unknown:
        return ("Warning", UNKNOWN_REVISION,
                f"{len(names)} pod(s) held ({listed}); revision(s) {', '.join(unknown)} in their annotation "
                f"{c.REVISION_ANNOTATION} are unknown to this resource: check the annotation")
    return ("Normal", reasons.PODS_HELD, f"{len(names)} pod(s) held until the schema is ready ({listed}): "
            f"{held[0].verdict.message}" if held else f"no pods held by {migration}")
