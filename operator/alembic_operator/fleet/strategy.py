"""A DatabaseMigrationSet's rollout, decided: pure functions of the set, its targets and its DatabaseMigrations.

Targets are ordered once (canaries first, then by Secret name) and cut into waves (the canary wave, then each
``spec.strategy.waves`` end). A wave is *complete* when each of its targets is Ready at the template, or failed
while the failure budget holds (a canary never: a failed canary holds everything after it). Targets of the waves
up to the first incomplete one may start, in order, while fewer than ``maxInFlight`` are under way, the budget is
not spent and the set is not paused. "Starting" a target is giving its DatabaseMigration the template (creating it,
or changing its spec); the DatabaseMigration does the rest as it always does. The wave reached is kept in status
for the template, so a later target (a new tenant's Secret) of a wave already reached starts at once.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from .. import constants as c
from .. import reasons
from ..api import Condition, ConditionStatus, JsonObject, parse_status
from ..objects import Migration
from ..reasons import Reason
from .api import DatabaseMigrationSetSpec, DatabaseMigrationSetStatus, FailedTarget, PlanGroup, SetCounts

State = Literal["pending", "migrating", "awaiting", "ready", "failed"]
EventType = Literal["Normal", "Warning"]
Kind = Literal["progressing", "ready", "stalled"]

MAX_FAILED_LISTED = 50
MAX_PLAN_MEMBERS = 5
MAX_MESSAGE = 1024
NAME_LIMIT = 63  # a DatabaseMigration's name is the pods' wait-for label value


@dataclass(frozen=True)
class Target:
    """A database of the set: a Secret (its name and the key holding the URL) and the Secret's labels."""

    secret: str
    key: str
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Member:
    """A DatabaseMigration the set owns, as observed: only what a decision reads (two equal Members decide alike, so
    a watch event that leaves a member's Member unchanged need not wake its set)."""

    name: str
    target: str
    template_hash: str | None
    state: State
    reason: str = ""
    message: str = ""
    plan_hash: str | None = None


@dataclass(frozen=True)
class Inputs:
    """Everything one decision reads."""

    name: str
    generation: int
    spec: DatabaseMigrationSetSpec
    template_hash: str
    targets: list[Target]
    members: list[Member]
    previous: DatabaseMigrationSetStatus
    retry_token: str | None = None
    now: datetime | None = None


@dataclass(frozen=True)
class Event:
    type: EventType
    reason: Reason
    message: str


@dataclass
class Rollout:
    """What to do now: targets to give the template (create or update their DatabaseMigration), members to start
    again (a retry), members whose target is gone (delete them), the set's new status and its Events."""

    start: list[Target]
    retry: list[Member]
    delete: list[Member]
    status: DatabaseMigrationSetStatus
    events: list[Event]


# --- naming and hashing ---------------------------------------------------------------------------------------------


def migration_name(set_name: str, secret: str) -> str:
    """The DatabaseMigration of a target: ``<set>-<secret>``, shortened with a hash when longer than 63."""
    name = f"{set_name}-{secret}"
    if len(name) <= NAME_LIMIT:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[:NAME_LIMIT - 9].rstrip('-.')}-{digest}"


def template_hash(template: JsonObject) -> str:
    """The template's identity: a new one is a new rollout."""
    return hashlib.sha256(json.dumps(template, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def member_spec(template: JsonObject, target: Target, attempt: str | None) -> JsonObject:
    """A target's DatabaseMigration spec: the template, its database, and (after a retry) the attempt's token among
    its pods' annotations (a spec change: the DatabaseMigration's new generation runs again)."""
    spec: JsonObject = json.loads(json.dumps(template))
    spec["database"] = {"urlSecretRef": {"name": target.secret, "key": target.key}}
    if attempt:
        job_template = spec.setdefault("jobTemplate", {})
        assert isinstance(job_template, dict)
        annotations = job_template.setdefault("podAnnotations", {})
        assert isinstance(annotations, dict)
        annotations[c.SET_ATTEMPT_ANNOTATION] = attempt
    return spec


# --- reading a member -----------------------------------------------------------------------------------------------


def member_of(obj: Migration) -> Member:
    """A DatabaseMigration of the set as a Member: its state for its current generation (a status older than its
    generation is work under way). Its message is kept for a failed member only (the set shows it), so the progress
    messages of one under way do not tell it apart from itself."""
    meta = obj.get("metadata") or {}
    generation = int(meta.get("generation") or 0)
    status = parse_status(obj.get("status") or {})
    ready = next((x for x in status.conditions if x.type == c.READY), None)
    stalled = next((x for x in status.conditions if x.type == c.STALLED), None)
    current = status.observed_generation == generation
    plan_hash = status.plan.hash if status.plan is not None else None
    state: State = "migrating"
    reason, message = "", status.message or ""
    if current and ready is not None and ready.status == "True" and ready.observed_generation == generation:
        state, reason = "ready", ready.reason
    elif current and status.phase == "AwaitingApproval":
        state, reason = "awaiting", stalled.reason if stalled is not None else ""
    elif current and (status.phase == "Failed" or (stalled is not None and stalled.status == "True"
                                                   and stalled.observed_generation == generation)):
        said = stalled is not None and stalled.status == "True"
        state, reason = "failed", (stalled.reason if stalled is not None and said else reasons.JOB_FAILED)
    annotations = meta.get("annotations") or {}
    return Member(name=str(meta.get("name") or ""), target=annotations.get(c.TARGET_ANNOTATION, ""),
                  template_hash=annotations.get(c.SET_TEMPLATE_ANNOTATION), state=state,
                  reason=reason, message=message if state == "failed" else "", plan_hash=plan_hash)


# --- order and waves ------------------------------------------------------------------------------------------------


def ordered(spec: DatabaseMigrationSetSpec, targets: list[Target]) -> tuple[list[Target], int]:
    """The targets in rollout order, and how many canaries lead it (matching the canary selector first, then by
    name)."""
    by_name = sorted({t.secret: t for t in targets}.values(), key=lambda t: t.secret)
    canary = spec.strategy.canary
    count = min(canary.count, len(by_name))
    chosen: list[Target] = []
    if canary.selector is not None:
        wanted = canary.selector.match_labels
        chosen = [t for t in by_name if all(t.labels.get(k) == v for k, v in wanted.items())][:count]
    names = {t.secret for t in chosen}
    chosen += [t for t in by_name if t.secret not in names][:count - len(chosen)]
    names = {t.secret for t in chosen}
    return chosen + [t for t in by_name if t.secret not in names], len(chosen)


def wave_ends(spec: DatabaseMigrationSetSpec, total: int, canaries: int) -> list[int]:
    """Where each wave ends (exclusive index in the rollout order): the canaries', then each of spec's waves
    (empty ones dropped), the last one at `total`."""
    ends = [canaries] if canaries else []
    for wave in spec.strategy.waves:
        end = math.ceil(total * int(wave[:-1]) / 100) if wave.endswith("%") else int(wave)
        end = min(total, end)
        if end > (ends[-1] if ends else 0):
            ends.append(end)
    if total and (not ends or ends[-1] < total):
        ends.append(total)
    return ends


def wave_name(index: int, ends: list[int], canaries: int) -> str:
    if index >= len(ends):
        return "done"
    if canaries and index == 0:
        return "canary"
    waves = len(ends) - (1 if canaries else 0)
    return f"{index + (0 if canaries else 1)}/{waves}"


# --- the decision ---------------------------------------------------------------------------------------------------


def decide(x: Inputs) -> Rollout:
    """Which targets start now, which are retried or dropped, and the set's status."""
    strategy = x.spec.strategy
    order, canaries = ordered(x.spec, x.targets)
    ends = wave_ends(x.spec, len(order), canaries)
    members = {m.target: m for m in x.members}
    wanted = {t.secret for t in order}
    delete = [m for m in x.members if m.target not in wanted]
    previous = x.previous if x.previous.template_hash == x.template_hash else None

    retry: list[Member] = []
    retried = x.previous.retried
    if x.retry_token and x.retry_token != x.previous.retried:
        retry = [m for m in x.members if m.target in wanted and m.template_hash == x.template_hash
                 and m.state == "failed"]
        retried = x.retry_token
    retrying = {m.target for m in retry}

    def state(t: Target) -> State:
        m = members.get(t.secret)
        if m is None or m.template_hash != x.template_hash:
            return "pending"
        return "migrating" if t.secret in retrying else m.state

    states = [state(t) for t in order]
    failed = [i for i, s in enumerate(states) if s == "failed"]
    spent = len(failed) >= strategy.failure_budget
    canary_failed = [i for i in failed if i < canaries]

    def complete(end: int) -> bool:
        return all(s == "ready" or (s == "failed" and i >= canaries and not spent)
                   for i, s in enumerate(states[:end]))

    reached = next((k for k, end in enumerate(ends) if not complete(end)), len(ends))
    wave = reached if previous is None or previous.wave is None else max(reached, min(previous.wave, len(ends)))
    allowed = ends[min(wave, len(ends) - 1)] if ends else 0
    in_flight = sum(1 for s in states if s in ("migrating", "awaiting"))
    start: list[Target] = []
    if not strategy.paused and not spent and not canary_failed:
        slots = max(0, strategy.max_in_flight - in_flight)
        start = [t for i, t in enumerate(order[:allowed]) if states[i] == "pending"][:slots]
    started = {t.secret for t in start}
    states = ["migrating" if t.secret in started else s for t, s in zip(order, states, strict=True)]

    counts = SetCounts(total=len(order), pending=states.count("pending"), migrating=states.count("migrating"),
                       awaiting_approval=states.count("awaiting"), ready=states.count("ready"),
                       failed=states.count("failed"))
    failed_targets = [FailedTarget(target=order[i].secret, migration=members[order[i].secret].name,
                                   canary=i < canaries, reason=members[order[i].secret].reason or reasons.JOB_FAILED,
                                   message=members[order[i].secret].message[:200])
                      for i in failed][:MAX_FAILED_LISTED]
    plans: dict[str, list[str]] = {}
    for t, s in zip(order, states, strict=True):
        if s == "awaiting":
            plans.setdefault(members[t.secret].plan_hash or "", []).append(members[t.secret].name)
    groups = [PlanGroup(hash=h, count=len(names), migrations=names[:MAX_PLAN_MEMBERS])
              for h, names in sorted(plans.items(), key=lambda kv: (-len(kv[1]), kv[0]))]

    kind, reason, message = _summary(x, counts, failed_targets, spent, bool(canary_failed), bool(start),
                                     wave_name(wave, ends, canaries))
    events = _events(x, previous, wave, ends, canaries, counts, retry)
    status = DatabaseMigrationSetStatus(
        observed_generation=x.generation, template_hash=x.template_hash, wave=wave, waves=len(ends),
        wave_name=wave_name(wave, ends, canaries), counts=counts, failed=failed_targets, plans=groups,
        retried=retried, message=message[:MAX_MESSAGE],
        updated_at=x.previous.updated_at if previous is not None and x.previous.counts == counts else x.now,
        conditions=summarize(x.previous.conditions, kind, reason, message, x.generation, x.now))
    return Rollout(start=start, retry=retry, delete=delete, status=status, events=events)


def _names(failed: list[FailedTarget]) -> str:
    shown = ", ".join(f"{f.target} ({f.reason})" for f in failed[:5])
    return shown + (f" and {len(failed) - 5} more" if len(failed) > 5 else "")


def _summary(x: Inputs, counts: SetCounts, failed: list[FailedTarget], spent: bool, canary_failed: bool,
             starting: bool, wave: str) -> tuple[Kind, Reason, str]:
    fix = (f"fix them (kubectl dbm status -n NAMESPACE), then annotate the set {c.RETRY_ANNOTATION}=<any new value> "
           "to run them again")
    if counts.total and counts.ready == counts.total:
        return "ready", reasons.ALL_TARGETS_READY, f"all {counts.total} targets are Ready at template {x.template_hash}"
    if spent:
        return ("stalled", reasons.FAILURE_BUDGET_SPENT,
                f"{counts.failed} target(s) failed, the failure budget ({x.spec.strategy.failure_budget}) is spent: "
                f"no target starts; failed: {_names(failed)}; {fix}")
    if canary_failed:
        return ("stalled", reasons.CANARY_FAILED,
                f"a canary failed, no other target starts: {_names([f for f in failed if f.canary])}; {fix}")
    progress = (f"wave {wave}: {counts.ready}/{counts.total} Ready, {counts.migrating} migrating, "
                f"{counts.awaiting_approval} awaiting approval, {counts.failed} failed, {counts.pending} pending")
    if x.spec.strategy.paused:
        return "progressing", reasons.ROLLOUT_PAUSED, f"paused (spec.strategy.paused): {progress}"
    if counts.awaiting_approval and not counts.migrating and not starting:
        return ("stalled", reasons.TARGETS_AWAITING_APPROVAL,
                f"{counts.awaiting_approval} target(s) wait for their plan's approval (kubectl dbm set {x.name} "
                f"lists each plan and its targets; approve one for the whole set: kubectl dbm approve --set "
                f"{x.name}): {progress}")
    if not counts.total:
        return "ready", reasons.ALL_TARGETS_READY, "the set has no targets"
    return "progressing", reasons.ROLLING_OUT, progress


def _events(x: Inputs, previous: DatabaseMigrationSetStatus | None, wave: int, ends: list[int], canaries: int,
            counts: SetCounts, retry: list[Member]) -> list[Event]:
    events: list[Event] = []
    if retry:
        events.append(Event("Normal", reasons.TARGETS_RETRIED,
                            f"running {len(retry)} failed target(s) again: {', '.join(m.target for m in retry[:10])}"))
    before = previous.wave if previous is not None and previous.wave is not None else None
    for k in range(before if before is not None else wave, wave):
        events.append(Event("Normal", reasons.WAVE_COMPLETED,
                            f"wave {wave_name(k, ends, canaries)} complete: {ends[k]} of {counts.total} targets "
                            f"done ({counts.ready} Ready, {counts.failed} failed)"))
    if wave < len(ends) and (before is None or wave > before):
        first = ends[wave - 1] if wave else 0
        events.append(Event("Normal", reasons.WAVE_STARTED,
                            f"wave {wave_name(wave, ends, canaries)} started: targets {first + 1} to {ends[wave]} of "
                            f"{counts.total} (template {x.template_hash})"))
    return events


def summarize(conditions: list[Condition], kind: Kind, reason: Reason, message: str, generation: int,
              now: datetime | None) -> list[Condition]:
    """The kstatus triple (Ready, Reconciling, Stalled) from one outcome; a transition time moves only with its
    value."""
    when = (now or datetime.now(UTC)).replace(microsecond=0)
    old = {x.type: x for x in conditions}
    values: dict[str, ConditionStatus] = {
        c.READY: "True" if kind == "ready" else "False",
        c.RECONCILING: "True" if kind == "progressing" else "False",
        c.STALLED: "True" if kind == "stalled" else "False",
    }
    out = []
    for type_, value in values.items():
        before = old.get(type_)
        at = before.last_transition_time if before is not None and before.status == value else when
        out.append(Condition(type=type_, status=value, observed_generation=generation, last_transition_time=at,
                             reason=reason, message=message[:MAX_MESSAGE]))
    return out
