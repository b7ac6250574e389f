"""Which notifications a resource's status makes due, and what becomes of their delivery: pure functions.

A notification's id is derived from the status that makes it due, so that whoever looks (this process, a restarted
one, a new leader) derives the same id and finds it already recorded in ``status.notifications``:

    approval-g<generation>-<plan hash, 12 hex>   phase AwaitingApproval with a plan hash (a new plan: a new one)
    succeeded-g<generation>-<finished, UTC>      the newest status.history entry, result Succeeded
    failed-g<generation>-<finished, UTC>         ... result Failed or RolledBack
    drift-<Drifted's lastTransitionTime, UTC>    Drifted=True (each time it becomes True)

A DatabaseMigrationSet announces the plans its DatabaseMigrations wait for, once per plan hash and template (and
those members announce none of their own: fleet.approval.announced_by_set):

    approval-<plan hash, 12 hex>-<template hash>   a status.plans entry nobody approved yet
    succeeded-<template hash>-<updatedAt, UTC>     the rollout ended: every target Ready
    failed-<template hash>-<updatedAt, UTC>        ... with targets failed (or stopped: the budget spent)

(those members announce no success of their own either: one message per rollout; their failures and drift stay
theirs, each is news of its own)

Only what the status says now is looked at (the newest history entry, the current phase and condition), and only if
it began less than MAX_AGE ago: turning notifications on never replays a resource's past.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, Protocol

from .. import constants as c
from ..api import (
    DatabaseMigrationStatus,
    HistoryEntry,
    NotificationDelivery,
    NotificationRecord,
    NotificationType,
    PlanStatus,
)
from ..fleet.api import DatabaseMigrationSetStatus, PlanGroup, SetNotificationRecord
from ..status import get_condition

MAX_AGE = timedelta(hours=24)  # older conditions are not announced, and deliveries are given up after it
KEPT = 20  # records kept in status (the newest; only settled ones are dropped)
FIRST_RETRY = 2.0  # seconds; doubled each attempt
MAX_RETRY = 300.0
MESSAGE_CHARS = 600
FINDINGS = 5
SETTLE = timedelta(seconds=30)  # a set's plan is announced once nothing else moves, or this long after it began


@dataclass(frozen=True)
class Target:
    """A webhook, by name ("operator": the chart's; "resource": spec.notifications), and what it wants."""

    name: str
    events: tuple[NotificationType, ...]


@dataclass(frozen=True)
class Ref:
    namespace: str
    name: str
    kind: Literal["DatabaseMigration", "DatabaseMigrationSet"] = c.KIND


class Notified(Protocol):
    """A status that keeps notifications: a DatabaseMigration's or a DatabaseMigrationSet's."""

    @property
    def notifications(self) -> Mapping[str, NotificationRecord] | None: ...


def _stamp(when: datetime) -> str:
    return when.strftime("%Y%m%dT%H%M%SZ")


def _short(text: str | None, limit: int = MESSAGE_CHARS) -> str | None:
    if not text:
        return None
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _commands(ref: Ref, plan_hash: str) -> list[str]:
    return [f"kubectl dbm plan {ref.name} -n {ref.namespace}",
            f"kubectl dbm approve {ref.name} -n {ref.namespace} --hash {plan_hash}"]


def _approval(ref: Ref, status: DatabaseMigrationStatus) -> tuple[str, NotificationRecord] | None:
    plan = status.plan
    cond = get_condition(status, c.APPROVAL_REQUIRED)
    if status.phase != "AwaitingApproval" or plan is None or not plan.hash or cond is None or cond.status != "True":
        return None
    generation = plan.generation or (status.run.generation if status.run else None)
    summary = f"dbm/{ref.name} in {ref.namespace} waits for approval: plan {_plan_line(plan, status)}"
    return f"approval-g{generation}-{_digest(plan.hash)}", NotificationRecord(
        type="AwaitingApproval", occurred_at=cond.last_transition_time, generation=generation, summary=summary,
        from_=plan.from_revision, to=plan.to_revision or status.target_revision, reason=cond.reason,
        message=_short(cond.message), plan_hash=plan.hash, findings=_findings(plan), commands=_commands(ref, plan.hash))


def _digest(plan_hash: str) -> str:
    return plan_hash.split(":")[-1][:12]


def _plan_line(plan: PlanStatus, status: DatabaseMigrationStatus) -> str:
    """'<from> -> <to> (<n> revision(s); <counts of findings>)'."""
    destructive = int(plan.destructive_count or len(plan.destructive))
    locking = int(plan.locking_count or len(plan.locking or []))
    counts = ", ".join(f"{n} {what}" for n, what in ((destructive, "destructive"), (locking, "locking"),
                                                       (int(plan.warning_count or len(plan.warnings)), "warning"))
                       if n)
    return (f"{plan.from_revision or 'base'} -> {plan.to_revision or status.target_revision} "
            f"({len(plan.revisions)} revision(s); {counts or 'no findings'})")


def _findings(plan: PlanStatus) -> list[str]:
    findings = [f"destructive: {x}" for x in plan.destructive[:FINDINGS]]
    return findings + [f"locking: {x.operation}" for x in (plan.locking or [])[: max(0, FINDINGS - len(findings))]]


def _run_ended(ref: Ref, status: DatabaseMigrationStatus) -> tuple[str, NotificationRecord] | None:
    if not status.history:
        return None
    entry: HistoryEntry = status.history[-1]
    if entry.finished_at is None or entry.result not in ("Succeeded", "Failed", "RolledBack"):
        return None
    duration = (int((entry.finished_at - entry.started_at).total_seconds())
                if entry.started_at is not None else None)
    route = f"{entry.from_ or 'base'} -> {entry.to}"
    if entry.result == "Succeeded":
        took = f" in {duration}s" if duration is not None else ""
        return f"succeeded-g{entry.generation}-{_stamp(entry.finished_at)}", NotificationRecord(
            type="Succeeded", occurred_at=entry.finished_at, generation=entry.generation,
            summary=f"dbm/{ref.name} in {ref.namespace} migrated {route}{took}", from_=entry.from_, to=entry.to,
            duration_seconds=duration, reason=entry.reason)
    rolled = get_condition(status, c.ROLLED_BACK)
    undone = (f"{rolled.reason}: {rolled.message}" if rolled is not None and rolled.status == "True" and
              rolled.observed_generation == entry.generation else
              "nothing was rolled back (see the message)")
    message = status.message if status.observed_generation == entry.generation else None
    return f"failed-g{entry.generation}-{_stamp(entry.finished_at)}", NotificationRecord(
        type="Failed", occurred_at=entry.finished_at, generation=entry.generation,
        summary=f"dbm/{ref.name} in {ref.namespace} failed {route} ({entry.reason}); "
                f"{'rolled back' if entry.result == 'RolledBack' else 'not rolled back'}",
        from_=entry.from_, to=entry.to, duration_seconds=duration, reason=entry.reason, message=_short(message),
        rollback=_short(undone), commands=[f"kubectl dbm status {ref.name} -n {ref.namespace}",
                                           f"kubectl dbm logs {ref.name} -n {ref.namespace} --role migrate"])


def _drift(ref: Ref, status: DatabaseMigrationStatus) -> tuple[str, NotificationRecord] | None:
    cond = get_condition(status, c.DRIFTED)
    if cond is None or cond.status != "True":
        return None
    differences = status.drift.differences if status.drift is not None else []
    return f"drift-{_stamp(cond.last_transition_time)}", NotificationRecord(
        type="DriftDetected", occurred_at=cond.last_transition_time, generation=status.observed_generation,
        summary=f"dbm/{ref.name} in {ref.namespace}: the live database differs from the app's models "
                f"({len(differences)} difference(s))",
        reason=cond.reason, message=_short(cond.message), findings=differences[:FINDINGS * 2],
        commands=[f"kubectl dbm status {ref.name} -n {ref.namespace}"])


def due(ref: Ref, status: DatabaseMigrationStatus, targets: list[Target], now: datetime,
        by_set: bool = False) -> dict[str, NotificationRecord]:
    """The notifications the status makes due that status.notifications does not hold yet, each with a Pending
    delivery to every target that wants its type (none: nothing is recorded). `by_set`: a set announces this
    member's plans waiting for approval and its rollout's success (fleet.approval.announced_by_set), so it announces
    neither of its own; its failures and drift are its own."""
    known = status.notifications or {}
    quiet: set[NotificationType] = {"AwaitingApproval", "Succeeded"} if by_set else set()
    out: dict[str, NotificationRecord] = {}
    for found in (_approval(ref, status), _run_ended(ref, status), _drift(ref, status)):
        if found is None or found[1].type in quiet or found[0] in known or now - found[1].occurred_at > MAX_AGE:
            continue
        ident, record = found
        if wanted := _deliveries(record.type, targets, now):
            out[ident] = record.model_copy(update={"deliveries": wanted})
    return out


def _deliveries(kind: NotificationType, targets: list[Target], now: datetime) -> dict[str, NotificationDelivery]:
    return {t.name: NotificationDelivery(state="Pending", next_attempt_at=now) for t in targets if kind in t.events}


# --- a DatabaseMigrationSet: one notification per plan its members wait for ---------------------------------------


@dataclass(frozen=True)
class Waiting:
    """One of a set's DatabaseMigrations waiting for a plan, as read: its plan (revisions, findings) is every
    member's with that hash, and its ApprovalRequired condition says since when it waits."""

    name: str
    status: DatabaseMigrationStatus


def set_approval_id(plan_hash: str, template_hash: str) -> str:
    """One per plan and template: the set's generation is not in it, so pausing and resuming the set announces
    nothing again; a new template that plans the same SQL (approved by hash) is a new rollout, announced again."""
    return f"approval-{_digest(plan_hash)}-{template_hash}"


def _rollout_ended(ref: Ref, status: DatabaseMigrationSetStatus) -> tuple[str, SetNotificationRecord] | None:
    """The rollout of the set's template ended: nothing under way or waiting for approval, and nothing pending but
    what cannot start (the set Stalled: the failure budget spent, a canary failed). Its id takes the time the counts
    last changed: a later ending (after a retry, or a new tenant's target) is another notification."""
    n = status.counts
    if not status.template_hash or status.updated_at is None or not n.total or n.migrating or n.awaiting_approval:
        return None
    stalled = next((x for x in status.conditions if x.type == c.STALLED), None)
    if n.pending and (stalled is None or stalled.status != "True"):
        return None  # paused, or not started yet
    where = f"dbms/{ref.name} in {ref.namespace}"
    commands = [f"kubectl dbm set {ref.name} -n {ref.namespace}"]
    if n.ready == n.total:
        return f"succeeded-{status.template_hash}-{_stamp(status.updated_at)}", SetNotificationRecord(
            type="Succeeded", occurred_at=status.updated_at, generation=status.observed_generation,
            summary=f"{where}: all {n.total} target(s) Ready at template {status.template_hash}",
            reason=next((x.reason for x in status.conditions if x.type == c.READY), None), commands=commands)
    failed = [f"{f.target}{' (canary)' if f.canary else ''}: {f.reason}{': ' + f.message if f.message else ''}"
              for f in status.failed[:FINDINGS * 2]]
    return f"failed-{status.template_hash}-{_stamp(status.updated_at)}", SetNotificationRecord(
        type="Failed", occurred_at=status.updated_at, generation=status.observed_generation,
        summary=(f"{where}: the rollout of template {status.template_hash} "
                 f"{'stopped' if n.pending else 'ended'} with {n.failed} target(s) failed: {n.ready}/{n.total} Ready"
                 f"{f', {n.pending} not started' if n.pending else ''}"),
        reason=stalled.reason if stalled is not None and stalled.status == "True" else None,
        message=_short(status.message), findings=failed,
        commands=[*commands, f"kubectl dbm resume {ref.name} -n {ref.namespace}  # once fixed: the failed run again"],
        migrations=[f.migration for f in status.failed[:FINDINGS]])


def set_plans_unannounced(status: DatabaseMigrationSetStatus, targets: list[Target],
                          stale: frozenset[str] = frozenset()) -> list[PlanGroup]:
    """The plans status.plans lists that nobody approved for the set yet and that status.notifications does not
    hold (nor `stale`: found too old to announce): what the notifier reads a member of (none when no webhook wants
    AwaitingApproval). A rollout's end needs no member: see set_ended."""
    if not status.template_hash or not any("AwaitingApproval" in t.events for t in targets):
        return []
    known = status.notifications or {}
    return [g for g in status.plans if g.hash and not g.approved_by
            and (ident := set_approval_id(g.hash, status.template_hash)) not in known and ident not in stale]


def set_ended(ref: Ref, status: DatabaseMigrationSetStatus, targets: list[Target],
              now: datetime) -> dict[str, SetNotificationRecord]:
    """The end of the set's rollout, when it is news (not recorded yet, less than MAX_AGE old, a webhook wants it)."""
    found = _rollout_ended(ref, status)
    if found is None or found[0] in (status.notifications or {}) or now - found[1].occurred_at > MAX_AGE:
        return {}
    wanted = _deliveries(found[1].type, targets, now)
    return {found[0]: found[1].model_copy(update={"deliveries": wanted})} if wanted else {}


@dataclass(frozen=True)
class SetDue:
    """What a set's status makes due: records to keep now, when the first plan still settling is due (None: none
    is), and the ids of plans that began waiting more than MAX_AGE ago (never announced: the notifier stops
    reading their members)."""

    records: dict[str, SetNotificationRecord]
    settling: datetime | None = None
    stale: frozenset[str] = frozenset()


def set_due(ref: Ref, status: DatabaseMigrationSetStatus, waiting: Mapping[str, Waiting], targets: list[Target],
            now: datetime) -> SetDue:
    """The set's notifications due now (`waiting`: a member waiting for each plan hash, as read).

    A plan is announced once the count is worth telling: when no target of the set is planning or migrating any
    more (everyone under way waits for a person: a wave's members plan at about the same time), or SETTLE after
    its member began waiting (others may still be running for long). Then: how many wait, the findings of the plan
    (one member's: the same plan for all), and the one command that approves it for every one of them."""
    out: dict[str, SetNotificationRecord] = {}
    later: datetime | None = None
    stale: set[str] = set()
    for group in set_plans_unannounced(status, targets):
        sample = waiting.get(group.hash)
        found = _approval(Ref(ref.namespace, sample.name), sample.status) if sample is not None else None
        plan = sample.status.plan if sample is not None else None
        if sample is None or found is None or plan is None or found[1].plan_hash != group.hash:
            continue  # that member moved on: the set's next pass says who waits now
        began = found[1].occurred_at
        if now - began > MAX_AGE:
            stale.add(set_approval_id(group.hash, status.template_hash or ""))
            continue
        if status.counts.migrating and now < began + SETTLE:
            later = began + SETTLE if later is None else min(later, began + SETTLE)
            continue
        wanted = _deliveries("AwaitingApproval", targets, now)
        out[set_approval_id(group.hash, status.template_hash or "")] = SetNotificationRecord(
            type="AwaitingApproval", occurred_at=began, generation=status.observed_generation,
            summary=(f"dbms/{ref.name} in {ref.namespace}: {group.count} DatabaseMigration(s) wait for approval of "
                     f"one plan: {_plan_line(plan, sample.status)}"),
            from_=plan.from_revision, to=found[1].to, reason=found[1].reason, message=found[1].message,
            plan_hash=group.hash, findings=found[1].findings,
            commands=[f"kubectl dbm set {ref.name} -n {ref.namespace}",
                      f"kubectl dbm plan {sample.name} -n {ref.namespace}",
                      f"kubectl dbm approve --set {ref.name} -n {ref.namespace} --hash {group.hash}"],
            waiting=group.count, migrations=list(group.migrations), deliveries=wanted)
    return SetDue({**out, **set_ended(ref, status, targets, now)}, later, frozenset(stale))


@dataclass(frozen=True)
class Attempt:
    """A delivery to make now: the notification's id, its record, the target's name."""

    ident: str
    record: NotificationRecord
    target: str


def attempts_due(status: Notified, now: datetime) -> list[Attempt]:
    """Pending deliveries whose time has come, oldest notification first."""
    out = []
    for ident, record in sorted((status.notifications or {}).items(), key=lambda x: x[1].occurred_at):
        for target, delivery in sorted(record.deliveries.items()):
            if delivery.state == "Pending" and (delivery.next_attempt_at is None or delivery.next_attempt_at <= now):
                out.append(Attempt(ident, record, target))
    return out


def next_attempt(status: Notified) -> datetime | None:
    """When the earliest Pending delivery is due (None: nothing pending)."""
    times = [d.next_attempt_at or r.occurred_at for r in (status.notifications or {}).values()
             for d in r.deliveries.values() if d.state == "Pending"]
    return min(times, default=None)


def retrying(status: Notified) -> dict[tuple[str, str], int]:
    """Deliveries that failed and wait for their next attempt, per (target, type): what the dashboard shows."""
    out: dict[tuple[str, str], int] = {}
    for record in (status.notifications or {}).values():
        for target, delivery in record.deliveries.items():
            if delivery.state == "Pending" and delivery.attempts > 0:
                out[(target, record.type)] = out.get((target, record.type), 0) + 1
    return out


def backoff(attempts: int) -> float:
    """Seconds before attempt `attempts + 1`: 2, 4, 8 ... at most MAX_RETRY."""
    return float(min(FIRST_RETRY * 2.0 ** max(attempts - 1, 0), MAX_RETRY))


def after_attempt(record: NotificationRecord, delivery: NotificationDelivery, error: str | None,
                  now: datetime) -> NotificationDelivery:
    """The delivery once an attempt ended: Delivered (no error), Pending with the next time, or Expired (the
    notification is older than MAX_AGE: a webhook down for a day gets no stale news)."""
    attempts = delivery.attempts + 1
    if error is None:
        return NotificationDelivery(state="Delivered", attempts=attempts, delivered_at=now)
    if now - record.occurred_at > MAX_AGE:
        return NotificationDelivery(state="Expired", attempts=attempts, error=error)
    return NotificationDelivery(state="Pending", attempts=attempts, error=error,
                                next_attempt_at=now + timedelta(seconds=backoff(attempts)))


def pruned(status: Notified) -> list[str]:
    """Ids to drop so that at most KEPT records stay: the oldest whose deliveries are all settled."""
    records = status.notifications or {}
    if len(records) <= KEPT:
        return []
    settled = sorted((r.occurred_at, i) for i, r in records.items()
                     if all(d.state != "Pending" for d in r.deliveries.values()))
    return [i for _, i in settled[: len(records) - KEPT]]
