"""Which notifications a resource's status makes due, and what becomes of their delivery: pure functions.

A notification's id is derived from the status that makes it due, so that whoever looks (this process, a restarted
one, a new leader) derives the same id and finds it already recorded in ``status.notifications``:

    approval-g<generation>-<plan hash, 12 hex>   phase AwaitingApproval with a plan hash (a new plan: a new one)
    succeeded-g<generation>-<finished, UTC>      the newest status.history entry, result Succeeded
    failed-g<generation>-<finished, UTC>         ... result Failed or RolledBack
    drift-<Drifted's lastTransitionTime, UTC>    Drifted=True (each time it becomes True)

Only what the status says now is looked at (the newest history entry, the current phase and condition), and only if
it began less than MAX_AGE ago: turning notifications on never replays a resource's past.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from .. import constants as c
from ..api import (
    DatabaseMigrationStatus,
    HistoryEntry,
    NotificationDelivery,
    NotificationRecord,
    NotificationType,
)
from ..status import get_condition

MAX_AGE = timedelta(hours=24)  # older conditions are not announced, and deliveries are given up after it
KEPT = 20  # records kept in status (the newest; only settled ones are dropped)
FIRST_RETRY = 2.0  # seconds; doubled each attempt
MAX_RETRY = 300.0
MESSAGE_CHARS = 600
FINDINGS = 5


@dataclass(frozen=True)
class Target:
    """A webhook, by name ("operator": the chart's; "resource": spec.notifications), and what it wants."""

    name: str
    events: tuple[NotificationType, ...]


@dataclass(frozen=True)
class Ref:
    namespace: str
    name: str


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
    destructive = int(plan.destructive_count or len(plan.destructive))
    locking = int(plan.locking_count or len(plan.locking or []))
    findings = [f"destructive: {x}" for x in plan.destructive[:FINDINGS]]
    findings += [f"locking: {x.operation}" for x in (plan.locking or [])[: max(0, FINDINGS - len(findings))]]
    counts = ", ".join(f"{n} {what}" for n, what in ((destructive, "destructive"), (locking, "locking"),
                                                       (int(plan.warning_count or len(plan.warnings)), "warning"))
                       if n)
    summary = (f"dbm/{ref.name} in {ref.namespace} waits for approval: plan {plan.from_revision or 'base'} -> "
               f"{plan.to_revision or status.target_revision} ({len(plan.revisions)} revision(s); "
               f"{counts or 'no findings'})")
    digest = plan.hash.split(":")[-1][:12]
    return f"approval-g{generation}-{digest}", NotificationRecord(
        type="AwaitingApproval", occurred_at=cond.last_transition_time, generation=generation, summary=summary,
        from_=plan.from_revision, to=plan.to_revision or status.target_revision, reason=cond.reason,
        message=_short(cond.message), plan_hash=plan.hash, findings=findings, commands=_commands(ref, plan.hash))


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


def due(ref: Ref, status: DatabaseMigrationStatus, targets: list[Target],
        now: datetime) -> dict[str, NotificationRecord]:
    """The notifications the status makes due that status.notifications does not hold yet, each with a Pending
    delivery to every target that wants its type (none: nothing is recorded)."""
    known = status.notifications or {}
    out: dict[str, NotificationRecord] = {}
    for found in (_approval(ref, status), _run_ended(ref, status), _drift(ref, status)):
        if found is None or found[0] in known or now - found[1].occurred_at > MAX_AGE:
            continue
        ident, record = found
        wanted = {t.name: NotificationDelivery(state="Pending", next_attempt_at=now)
                  for t in targets if record.type in t.events}
        if wanted:
            out[ident] = record.model_copy(update={"deliveries": wanted})
    return out


@dataclass(frozen=True)
class Attempt:
    """A delivery to make now: the notification's id, its record, the target's name."""

    ident: str
    record: NotificationRecord
    target: str


def attempts_due(status: DatabaseMigrationStatus, now: datetime) -> list[Attempt]:
    """Pending deliveries whose time has come, oldest notification first."""
    out = []
    for ident, record in sorted((status.notifications or {}).items(), key=lambda x: x[1].occurred_at):
        for target, delivery in sorted(record.deliveries.items()):
            if delivery.state == "Pending" and (delivery.next_attempt_at is None or delivery.next_attempt_at <= now):
                out.append(Attempt(ident, record, target))
    return out


def next_attempt(status: DatabaseMigrationStatus) -> datetime | None:
    """When the earliest Pending delivery is due (None: nothing pending)."""
    times = [d.next_attempt_at or r.occurred_at for r in (status.notifications or {}).values()
             for d in r.deliveries.values() if d.state == "Pending"]
    return min(times, default=None)


def retrying(status: DatabaseMigrationStatus) -> dict[tuple[str, str], int]:
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


def pruned(status: DatabaseMigrationStatus) -> list[str]:
    """Ids to drop so that at most KEPT records stay: the oldest whose deliveries are all settled."""
    records = status.notifications or {}
    if len(records) <= KEPT:
        return []
    settled = sorted((r.occurred_at, i) for i, r in records.items()
                     if all(d.state != "Pending" for d in r.deliveries.values()))
    return [i for _, i in settled[: len(records) - KEPT]]
