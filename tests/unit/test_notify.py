"""Notifications (alembic_operator.notify): which are due, their payloads, and their delivery exactly once, through the
real notifier against a real HTTP receiver on loopback and an in-memory API server that applies merge patches."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from alembic_operator.api import (
    Condition,
    DatabaseMigrationStatus,
    DriftStatus,
    HistoryEntry,
    NotificationDelivery,
    PlanFinding,
    PlanStatus,
    parse_status,
)
from alembic_operator.fleet.api import DatabaseMigrationSetStatus, PlanGroup, SetCounts
from alembic_operator.notify import due, payload
from alembic_operator.notify.send import OPERATOR, RESOURCE, Notifier, Webhook
from alembic_operator.objects import Migration

NOW = datetime(2026, 12, 7, 7, 0, 0, tzinfo=UTC)
REF = due.Ref("shop", "orders")
ALL = due.Target("operator", ("AwaitingApproval", "Succeeded", "Failed", "DriftDetected"))
HASH = "sha256:1ee138a8c0ffee00112233445566778899aabbccddeeff00112233445566778"


def cond(type_: str, status: str, reason: str, message: str = "", at: datetime = NOW, gen: int = 3) -> Condition:
    return Condition(type=type_, status=status, observed_generation=gen,  # type: ignore[arg-type]
                     last_transition_time=at, reason=reason, message=message)


def awaiting(at: datetime = NOW) -> DatabaseMigrationStatus:
    return DatabaseMigrationStatus(
        observed_generation=3, phase="AwaitingApproval", target_revision="382cd6ceb09e",
        plan=PlanStatus(revisions=["382cd6ceb09e"], destructive=["DROP COLUMN orders.legacy_code (revision 382c)"],
                        locking=[PlanFinding(operation="CREATE INDEX ix ON orders (revision 382c)",
                                             rule="create-index-not-concurrently")],
                        hash=HASH, from_revision="fc7b070a6d88", to_revision="382cd6ceb09e", generation=3),
        conditions=[cond("Stalled", "True", "DestructiveChangesNotApproved"),
                    cond("ApprovalRequired", "True", "DestructiveChangesNotApproved", "the plan destroys data", at)])


def ended(result: str, reason: str, finished: datetime = NOW, rolled: bool = True) -> DatabaseMigrationStatus:
    entry = HistoryEntry.model_validate({"generation": 4, "from": "fc7b070a6d88", "to": "88d79e1b94a5",
                                         "result": result, "reason": reason,
                                         "startedAt": finished - timedelta(seconds=42), "finishedAt": finished})
    conditions = [cond("RolledBack", "True", "Restored", "the backup was restored: the database is at fc7b070a6d88",
                       gen=4)] if rolled else []
    return DatabaseMigrationStatus(observed_generation=4, phase="Failed" if result != "Succeeded" else "Succeeded",
                                   message="revision 88d79e1b94a5 failed: check constraint violated",
                                   history=[entry], conditions=conditions)


def test_a_plan_awaiting_approval_is_due_once_with_the_commands_and_the_findings() -> None:
    found = due.due(REF, awaiting(), [ALL], NOW)
    assert list(found) == ["approval-g3-1ee138a8c0ff"]
    record = found["approval-g3-1ee138a8c0ff"]
    assert record.type == "AwaitingApproval" and record.plan_hash == HASH
    assert record.commands == ["kubectl dbm plan orders -n shop", f"kubectl dbm approve orders -n shop --hash {HASH}"]
    assert record.findings == ["destructive: DROP COLUMN orders.legacy_code (revision 382c)",
                               "locking: CREATE INDEX ix ON orders (revision 382c)"]
    assert "1 destructive, 1 locking" in record.summary and record.deliveries["operator"].state == "Pending"
    # Once recorded, the same status makes nothing due again: the id is derived from the status, not from who looks.
    recorded = awaiting().model_copy(update={"notifications": found})
    assert due.due(REF, recorded, [ALL], NOW + timedelta(minutes=5)) == {}
    # A new plan (another hash) is another notification.
    replanned = recorded.model_copy(update={"plan": recorded.plan.model_copy(update={"hash": "sha256:" + "ab" * 32})})
    assert list(due.due(REF, replanned, [ALL], NOW)) == ["approval-g3-abababababab"]


def test_a_run_that_ended_is_due_as_succeeded_or_failed_with_what_was_done() -> None:
    ok = due.due(REF, ended("Succeeded", "Migrated", rolled=False), [ALL], NOW)
    (ident, record), = ok.items()
    assert ident == "succeeded-g4-20261207T070000Z"
    assert (record.from_, record.to, record.duration_seconds) == ("fc7b070a6d88", "88d79e1b94a5", 42)
    bad = due.due(REF, ended("RolledBack", "JobFailed"), [ALL], NOW)
    (ident, record), = bad.items()
    assert ident == "failed-g4-20261207T070000Z" and record.type == "Failed" and record.reason == "JobFailed"
    assert record.rollback == "Restored: the backup was restored: the database is at fc7b070a6d88"
    assert record.message == "revision 88d79e1b94a5 failed: check constraint violated"
    assert "rolled back" in record.summary
    plain = due.due(REF, ended("Failed", "BackupFailed", rolled=False), [ALL], NOW)
    assert next(iter(plain.values())).rollback == "nothing was rolled back (see the message)"


def test_drift_is_due_each_time_it_becomes_true() -> None:
    status = DatabaseMigrationStatus(observed_generation=2, drift=DriftStatus(drifted=True, differences=["add_column "
                                     "orders.note (TEXT)"]), conditions=[cond("Drifted", "True", "SchemaDrift", "x")])
    (ident, record), = due.due(REF, status, [ALL], NOW).items()
    assert ident == "drift-20261207T070000Z" and record.findings == ["add_column orders.note (TEXT)"]
    later = status.model_copy(update={"conditions": [cond("Drifted", "True", "SchemaDrift", "x",
                                                          NOW + timedelta(hours=1))]})
    assert list(due.due(REF, later, [ALL], NOW + timedelta(hours=1))) == ["drift-20261207T080000Z"]
    gone = status.model_copy(update={"conditions": [cond("Drifted", "False", "NoDrift")]})
    assert due.due(REF, gone, [ALL], NOW) == {}


def test_only_wanted_recent_news_is_recorded() -> None:
    """Turning notifications on never replays the past; a webhook gets only the types it asked for."""
    assert due.due(REF, ended("Succeeded", "Migrated", NOW - timedelta(days=2), rolled=False), [ALL], NOW) == {}
    approvals_only = due.Target("resource", ("AwaitingApproval",))
    assert due.due(REF, ended("Succeeded", "Migrated", rolled=False), [approvals_only], NOW) == {}
    assert due.due(REF, awaiting(), [], NOW) == {}
    both = due.due(REF, awaiting(), [ALL, approvals_only], NOW)
    assert set(next(iter(both.values())).deliveries) == {"operator", "resource"}


def test_a_failed_attempt_is_retried_with_backoff_then_given_up_after_a_day() -> None:
    record = next(iter(due.due(REF, awaiting(), [ALL], NOW).values()))
    delivery = record.deliveries["operator"]
    delays = []
    for n in range(9):
        delivery = due.after_attempt(record, delivery, "HTTP 503", NOW)
        assert delivery.state == "Pending" and delivery.attempts == n + 1 and delivery.next_attempt_at is not None
        delays.append((delivery.next_attempt_at - NOW).total_seconds())
    assert delays == [2, 4, 8, 16, 32, 64, 128, 256, 300]
    status = awaiting().model_copy(update={"notifications": {"a": record.model_copy(
        update={"deliveries": {"operator": delivery}})}})
    assert due.attempts_due(status, NOW) == [] and due.next_attempt(status) == delivery.next_attempt_at
    assert [a.target for a in due.attempts_due(status, NOW + timedelta(seconds=300))] == ["operator"]
    done = due.after_attempt(record, delivery, None, NOW)
    assert (done.state, done.attempts, done.delivered_at, done.error) == ("Delivered", 10, NOW, None)
    expired = due.after_attempt(record, delivery, "HTTP 503", NOW + timedelta(hours=25))
    assert expired.state == "Expired" and expired.next_attempt_at is None


def test_only_settled_records_beyond_the_newest_are_pruned() -> None:
    record = next(iter(due.due(REF, awaiting(), [ALL], NOW).values()))
    delivered = NotificationDelivery(state="Delivered", attempts=1, delivered_at=NOW)
    records = {f"n{i:02d}": record.model_copy(update={
        "occurred_at": NOW + timedelta(minutes=i),
        "deliveries": {"operator": delivered if i else record.deliveries["operator"]}}) for i in range(due.KEPT + 3)}
    assert due.pruned(DatabaseMigrationStatus(notifications=records)) == ["n01", "n02", "n03"]  # n00 is pending


def test_payloads_cloudevents_and_slack() -> None:
    record = next(iter(due.due(REF, awaiting(), [ALL], NOW).values()))
    event = payload.cloudevent(REF, "uid-1", "approval-g3-1ee138a8c0ff", record)
    assert {k: event[k] for k in ("specversion", "id", "type", "subject", "time", "datacontenttype")} == {  # type: ignore[literal-required]
        "specversion": "1.0", "id": "uid-1/approval-g3-1ee138a8c0ff",
        "type": "io.alembic-operator.databasemigration.awaitingapproval", "subject": "orders",
        "time": "2026-12-07T07:00:00Z", "datacontenttype": "application/json"}
    assert event["source"] == "/apis/migrations.alembic-operator.io/v1alpha1/namespaces/shop/databasemigrations/orders"
    assert event["data"]["planHash"] == HASH and "deliveries" not in event["data"]
    assert event["data"]["commands"] == record.commands
    body, content_type = payload.render("CloudEvents", REF, "uid-1", "approval-g3-1ee138a8c0ff", record)
    assert content_type.startswith("application/cloudevents+json") and json.loads(body) == event
    message = payload.slack(REF, "approval-g3-1ee138a8c0ff", record)
    assert message["text"] == record.summary
    text = message["blocks"][0]["text"]["text"]
    assert f"`kubectl dbm approve orders -n shop --hash {HASH}`" in text and "DROP COLUMN" in text
    assert payload.render("Slack", REF, "u", "i", record)[1].startswith("application/json")


# --- a DatabaseMigrationSet: one notification per plan its members wait for ----------------------------------------

SET = due.Ref("shop", "tenants", kind="DatabaseMigrationSet")
WAITING = [f"tenants-t{i:03d}" for i in range(5)]


def set_waiting(migrating: int = 0, approved_by: str | None = None) -> DatabaseMigrationSetStatus:
    return DatabaseMigrationSetStatus(
        observed_generation=2, template_hash="0123456789abcdef",
        counts=SetCounts(total=210, awaiting_approval=207, migrating=migrating, pending=3 - migrating),
        plans=[PlanGroup(hash=HASH, count=207, migrations=WAITING, approved_by=approved_by),
               PlanGroup(hash="", count=1, migrations=["tenants-odd"])])  # no hash: nothing to approve by


def test_a_sets_plan_is_announced_once_when_settled_with_the_count_and_the_sets_command() -> None:
    member = {HASH: due.Waiting("tenants-t000", awaiting())}
    ident = "approval-1ee138a8c0ff-0123456789abcdef"
    # Members still planning: the count is not worth telling yet; due SETTLE after the member began waiting.
    assert due.set_plans_unannounced(set_waiting(migrating=3), [ALL]) == [set_waiting().plans[0]]
    assert due.set_due(SET, set_waiting(migrating=3), member, [ALL], NOW) == due.SetDue({}, NOW + due.SETTLE)
    settled = due.set_due(SET, set_waiting(migrating=3), member, [ALL], NOW + due.SETTLE)
    assert list(settled.records) == [ident] and settled.settling is None
    (found, record), = due.set_due(SET, set_waiting(), member, [ALL], NOW).records.items()  # nothing else moves
    assert found == ident and record.waiting == 207 and record.migrations == WAITING
    assert (record.type, record.plan_hash, record.occurred_at, record.generation) == ("AwaitingApproval", HASH, NOW, 2)
    assert record.summary == ("dbms/tenants in shop: 207 DatabaseMigration(s) wait for approval of one plan: "
                              "fc7b070a6d88 -> 382cd6ceb09e (1 revision(s); 1 destructive, 1 locking)")
    assert record.commands == ["kubectl dbm set tenants -n shop", "kubectl dbm plan tenants-t000 -n shop",
                               f"kubectl dbm approve --set tenants -n shop --hash {HASH}"]
    assert record.findings == next(iter(due.due(REF, awaiting(), [ALL], NOW).values())).findings
    assert record.deliveries["operator"].state == "Pending"
    # Recorded: nothing is due again, whoever looks; approved for the set, nobody needs telling.
    recorded = set_waiting().model_copy(update={"notifications": {ident: record}})
    assert due.set_plans_unannounced(recorded, [ALL]) == []
    assert due.set_due(SET, recorded, member, [ALL], NOW) == due.SetDue({})
    assert due.set_plans_unannounced(set_waiting(approved_by="alice"), [ALL]) == []
    # No webhook wants it, the member read moved on to another plan, or it began more than a day ago: nothing.
    assert due.set_plans_unannounced(set_waiting(), [due.Target("resource", ("Failed",))]) == []
    plan = awaiting().plan
    assert plan is not None
    replanned = awaiting().model_copy(update={"plan": plan.model_copy(update={"hash": "sha256:" + "ab" * 32})})
    assert due.set_due(SET, set_waiting(), {HASH: due.Waiting("tenants-t000", replanned)}, [ALL], NOW) == due.SetDue({})
    old = due.set_due(SET, set_waiting(), member, [ALL], NOW + timedelta(days=2))
    assert old == due.SetDue({}, stale=frozenset({ident}))  # never announced; the notifier reads it no more
    assert due.set_plans_unannounced(set_waiting(), [ALL], old.stale) == []
    # A new template planning the same SQL is another rollout: announced again.
    again = recorded.model_copy(update={"template_hash": "fedcba9876543210"})
    assert list(due.set_due(SET, again, member, [ALL], NOW).records) == ["approval-1ee138a8c0ff-fedcba9876543210"]
    # The generic bookkeeping reads a set's status as a DatabaseMigration's.
    assert [a.ident for a in due.attempts_due(recorded, NOW)] == [ident] and due.next_attempt(recorded) == NOW


def test_a_member_its_set_announces_records_no_approval_nor_success_of_its_own_but_its_failures_and_drift() -> None:
    assert due.due(REF, awaiting(), [ALL], NOW, by_set=True) == {}
    assert due.due(REF, ended("Succeeded", "Migrated", rolled=False), [ALL], NOW, by_set=True) == {}
    assert list(due.due(REF, ended("RolledBack", "JobFailed"), [ALL], NOW, by_set=True)) == [
        "failed-g4-20261207T070000Z"]
    drifted = DatabaseMigrationStatus(observed_generation=2, conditions=[cond("Drifted", "True", "SchemaDrift")])
    assert list(due.due(REF, drifted, [ALL], NOW, by_set=True)) == ["drift-20261207T070000Z"]


def rollout(ready: int, failed: int = 0, pending: int = 0, migrating: int = 0, awaiting: int = 0,
            stalled: bool = False) -> DatabaseMigrationSetStatus:
    from alembic_operator.fleet.api import FailedTarget

    total = ready + failed + pending + migrating + awaiting
    return DatabaseMigrationSetStatus(
        observed_generation=2, template_hash="0123456789abcdef", updated_at=NOW,
        counts=SetCounts(total=total, ready=ready, failed=failed, pending=pending, migrating=migrating,
                         awaiting_approval=awaiting),
        failed=[FailedTarget(target=f"t{i:03d}", migration=f"tenants-t{i:03d}", canary=i == 0, reason="JobFailed",
                             message="check constraint violated") for i in range(failed)],
        message="a sentence", conditions=[
            cond("Ready", "True" if ready == total else "False", "AllTargetsReady" if ready == total else "RollingOut"),
            cond("Stalled", "True" if stalled else "False", "FailureBudgetSpent" if stalled else "AllTargetsReady")])


def test_a_sets_rollout_is_announced_once_when_it_ends() -> None:
    (ident, record), = due.set_ended(SET, rollout(210), [ALL], NOW).items()
    assert ident == "succeeded-0123456789abcdef-20261207T070000Z" and record.type == "Succeeded"
    assert record.summary == "dbms/tenants in shop: all 210 target(s) Ready at template 0123456789abcdef"
    assert due.set_ended(SET, rollout(210).model_copy(update={"notifications": {ident: record}}), [ALL], NOW) == {}
    # Not ended: targets under way, waiting for approval, or not started (paused): nothing yet.
    for busy in (rollout(200, migrating=10), rollout(200, awaiting=10), rollout(200, pending=10)):
        assert due.set_due(SET, busy, {}, [ALL], NOW).records == {}
    # Stopped with the budget spent: Failed, naming the failed targets and how to run them again.
    (ident, record), = due.set_ended(SET, rollout(1, failed=1, pending=208, stalled=True), [ALL], NOW).items()
    assert ident == "failed-0123456789abcdef-20261207T070000Z" and record.type == "Failed"
    assert record.summary == ("dbms/tenants in shop: the rollout of template 0123456789abcdef stopped with 1 "
                              "target(s) failed: 1/210 Ready, 208 not started")
    assert record.findings == ["t000 (canary): JobFailed: check constraint violated"]
    assert record.reason == "FailureBudgetSpent" and record.migrations == ["tenants-t000"]
    assert record.commands[-1].startswith("kubectl dbm resume tenants -n shop")
    ended_ = due.set_ended(SET, rollout(208, failed=2), [ALL], NOW + timedelta(minutes=5))
    assert [r.summary.split(": ", 1)[1] for r in ended_.values()] == [
        "the rollout of template 0123456789abcdef ended with 2 target(s) failed: 208/210 Ready"]
    # A later ending (fixed and resumed: the counts changed since) is news again; a webhook decides what it wants.
    later = rollout(210).model_copy(update={"updated_at": NOW + timedelta(hours=1)})
    assert list(due.set_ended(SET, later, [ALL], NOW + timedelta(hours=1))) == [
        "succeeded-0123456789abcdef-20261207T080000Z"]
    assert due.set_ended(SET, later, [due.Target("resource", ("Failed",))], NOW) == {}
    assert due.set_ended(SET, rollout(210), [ALL], NOW + timedelta(days=2)) == {}
    text = payload.slack(SET, ident, record)["blocks"][0]["text"]["text"]
    assert "Waiting:" not in text and "• t000 (canary): JobFailed" in text


def test_a_sets_payloads_name_the_set() -> None:
    (ident, record), = due.set_due(SET, set_waiting(), {HASH: due.Waiting("tenants-t000", awaiting())}, [ALL],
                                   NOW).records.items()
    event = payload.cloudevent(SET, "set-uid", ident, record)
    assert event["type"] == "io.alembic-operator.databasemigrationset.awaitingapproval"
    assert event["source"] == ("/apis/migrations.alembic-operator.io/v1alpha1/namespaces/shop/databasemigrationsets/"
                               "tenants")
    assert event["id"] == f"set-uid/{ident}" and event["subject"] == "tenants"
    assert {k: event["data"][k] for k in ("kind", "name", "waiting", "migrations", "planHash")} == {
        "kind": "DatabaseMigrationSet", "name": "tenants", "waiting": 207, "migrations": WAITING, "planHash": HASH}
    text = payload.slack(SET, ident, record)["blocks"][0]["text"]["text"]
    assert f"Waiting: {', '.join(WAITING)} ... (207 in all)" in text
    assert f"`kubectl dbm approve --set tenants -n shop --hash {HASH}`" in text and "DROP COLUMN" in text
    context = payload.slack(SET, ident, record)["blocks"][1]["elements"][0]["text"]
    assert context == f"shop/tenants (DatabaseMigrationSet) · {ident}"
    # A DatabaseMigration's payload says no kind: the same bytes as before sets had notifications.
    member_record = next(iter(due.due(REF, awaiting(), [ALL], NOW).values()))
    assert "kind" not in payload.cloudevent(REF, "uid-1", "x", member_record)["data"]


# --- the notifier, end to end on loopback ------------------------------------------------------------------------

URL_SECRET_VALUE = "http://127.0.0.1:{port}/hooks/T0KEN-IN-URL"
TOKEN = "s3cr3t-bearer-token"


def merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386, as the API server applies a merge patch."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict):
            target[key] = merge(target.get(key) if isinstance(target.get(key), dict) else {}, value)
        else:
            target[key] = value
    return target


@dataclass
class FakeKube:
    """The three calls the notifier makes, on one shared object: two notifiers on it are two operator processes."""

    obj: dict[str, Any]
    secrets: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    patches: int = 0

    async def get_migration(self, namespace: str, name: str) -> Migration | None:
        return cast(Migration, copy.deepcopy(self.obj))

    async def patch_status(self, namespace: str, name: str, patch: dict[str, Any]) -> Migration:
        self.patches += 1
        merge(self.obj.setdefault("status", {}), copy.deepcopy(patch))
        return cast(Migration, copy.deepcopy(self.obj))

    async def read_secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        data = self.secrets.get((namespace, name))
        return None if data is None else {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}


@dataclass
class Receiver:
    answers: list[int] = field(default_factory=list)  # status codes to answer in turn (then 200)
    got: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    hold: asyncio.Event | None = None  # set: answer; None: answer at once

    async def handle(self, request: web.Request) -> web.Response:
        self.got.append((dict(request.headers), await request.read()))
        self.arrived.set()
        if self.hold is not None:
            await self.hold.wait()
        return web.Response(status=self.answers.pop(0) if self.answers else 200)


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, int]]:
    rx = Receiver()
    app = web.Application()
    app.router.add_post("/hooks/{tail:.*}", rx.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield rx, int(server.port)  # type: ignore[arg-type]
    finally:
        await server.close()


def resource(status: DatabaseMigrationStatus, notifications: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"database": {"urlSecretRef": {"name": "db", "key": "url"}},
                            "migrations": {"image": "shop:1"}, "targetRevision": "head"}
    if notifications is not None:
        spec["notifications"] = notifications
    return {"metadata": {"namespace": "shop", "name": "orders", "uid": "uid-1", "resourceVersion": "7"},
            "spec": spec, "status": json.loads(status.model_dump_json(by_alias=True, exclude_none=True))}


async def settle(notifier: Notifier) -> None:
    await asyncio.gather(*notifier._tasks.values())


@pytest.mark.asyncio
async def test_delivered_once_across_a_leader_change_retried_and_secret_free(
        receiver: tuple[Receiver, int], caplog: pytest.LogCaptureFixture) -> None:
    rx, port = receiver
    rx.answers = [503]  # the webhook is down at first: retried with backoff, the reconcile never waits for it
    kube = FakeKube(resource(awaiting(datetime.now(UTC)), {"urlSecretRef": {"name": "hook", "key": "url"},
                                                            "tokenSecretRef": {"name": "hook", "key": "token"},
                                                            "format": "Slack"}))
    kube.secrets[("shop", "hook")] = {"url": URL_SECRET_VALUE.format(port=port), "token": TOKEN}
    kube.secrets[("ops", "central")] = {"url": URL_SECRET_VALUE.format(port=port)}
    central = Webhook(secret="central", url_key="url", format="CloudEvents", namespace="ops")
    caplog.set_level(logging.DEBUG, "alembic_operator")
    leader = Notifier(kube, central)  # type: ignore[arg-type]
    leader.offer(cast(Migration, kube.obj))
    await settle(leader)
    await leader.stop()
    status = parse_status(kube.obj["status"])
    (ident, record), = (status.notifications or {}).items()
    assert {t: d.state for t, d in record.deliveries.items()} == {OPERATOR: "Delivered", RESOURCE: "Delivered"}
    assert sum(d.attempts for d in record.deliveries.values()) == 3  # one 503, then both delivered
    assert len(rx.got) == 3
    # A new leader (another process: nothing in memory) looks at the same resource: nothing is sent again.
    standby = Notifier(kube, central)  # type: ignore[arg-type]
    standby.offer(cast(Migration, kube.obj))
    await settle(standby)
    await standby.stop()
    assert len(rx.got) == 3
    bodies = [json.loads(body) for _headers, body in rx.got[1:]]
    formats = {("specversion" in b and "CloudEvents") or "Slack" for b in bodies}
    assert formats == {"CloudEvents", "Slack"}
    for headers, body in rx.got:
        assert headers["Idempotency-Key"] == f"uid-1/{ident}"
        assert ("Authorization" in headers) == (b"blocks" in body)  # the token goes to its own webhook only
    assert rx.got[-1][0].get("Authorization", f"Bearer {TOKEN}") == f"Bearer {TOKEN}"
    everything = [kube.obj, *(body.decode() for _h, body in rx.got), caplog.text]
    for secret in ("T0KEN-IN-URL", TOKEN, "/hooks/"):
        assert not [x for x in everything if secret in json.dumps(x) or secret in str(x)], secret
    assert "HTTP 503" in caplog.text and record.deliveries[OPERATOR].error is None


@pytest.mark.asyncio
async def test_an_unreachable_or_missing_webhook_is_recorded_without_its_url(receiver: tuple[Receiver, int]) -> None:
    _rx, port = receiver
    kube = FakeKube(resource(ended("Succeeded", "Migrated", datetime.now(UTC), rolled=False),
                             {"urlSecretRef": {"name": "hook", "key": "url"}}))
    kube.secrets[("shop", "hook")] = {"url": f"http://127.0.0.1:{port + 1 if port < 65535 else 1}/x?k=T0KEN"}
    central = Webhook(secret="absent", url_key="url", format="CloudEvents", namespace="ops")
    posted: list[tuple[str, str, str]] = []
    notifier = Notifier(kube, central, timeout=2,  # type: ignore[arg-type]
                        post=lambda obj, kind, reason, message: posted.append((kind, reason, message)))
    assert await notifier._round(("shop", "orders")) is not None  # a retry is planned
    await notifier.stop()
    assert sorted(reason for _kind, reason, _message in posted) == ["NotificationFailed", "NotificationFailed"]
    assert not [m for _k, _r, m in posted if "T0KEN" in m or "127.0.0.1" in m]
    (record,) = (parse_status(kube.obj["status"]).notifications or {}).values()
    assert record.deliveries[OPERATOR].error == "Secret ops/absent not found"
    resource_error = record.deliveries[RESOURCE].error or ""
    assert resource_error and "T0KEN" not in resource_error and "127.0.0.1" not in resource_error
    assert all(d.state == "Pending" and d.attempts == 1 for d in record.deliveries.values())


def test_a_resources_own_webhook_can_be_turned_off_and_the_flags_parse() -> None:
    import argparse

    from alembic_operator.config import OperatorConfig, add_arguments

    body = cast(Migration, resource(awaiting(), {"urlSecretRef": {"name": "hook", "key": "url"}}))
    kube = FakeKube(dict(body))
    assert set(Notifier(kube).webhooks(body)) == {RESOURCE}  # type: ignore[arg-type]
    assert Notifier(kube, resources=False).webhooks(body) == {}  # type: ignore[arg-type]
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config = OperatorConfig.from_args(parser.parse_args([
        "--notify-secret", "ops/hook", "--notify-token-key", "token", "--notify-format", "Slack",
        "--notify-events", "Failed,AwaitingApproval", "--no-resource-notifications"]), environ={})
    assert config.notify == Webhook(secret="hook", url_key="url", format="Slack", namespace="ops",
                                    events=("AwaitingApproval", "Failed"), token_secret="hook", token_key="token")
    assert config.notify_resources is False
    assert OperatorConfig.from_args(parser.parse_args([]), environ={}).notify is None
    for bad in (["--notify-secret", "hook"], ["--notify-events", "Deployed"], ["--notify-format", "Teams"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


def test_the_reconcilers_status_patch_never_touches_the_notifiers_record() -> None:
    """The reconciler writes its status with a merge patch computed against the status it read: a status it rebuilt
    without status.notifications must not remove the record (that would send everything again)."""
    from alembic_operator import act
    from alembic_operator.status import merge_patch

    record = next(iter(due.due(REF, awaiting(), [ALL], NOW).values()))
    stored = json.loads(awaiting().model_copy(update={"notifications": {"approval": record}}).model_dump_json(
        by_alias=True, exclude_none=True))
    rebuilt = {k: v for k, v in stored.items() if k != "notifications"} | {"phase": "BackingUp"}
    assert "notifications" in merge_patch(stored, rebuilt)  # what a plain patch would do: null it
    assert merge_patch(act._reconcilers(stored), act._reconcilers(rebuilt)) == {"phase": "BackingUp"}


class Crash(BaseException):
    """The process dies (SIGKILL, a node lost): nothing after it runs, nothing catches it."""


@dataclass
class CrashAfterTheReceiverAnswers(FakeKube):
    """The API server write that would record a delivery never happens: the process died just before it."""

    async def patch_status(self, namespace: str, name: str, patch: dict[str, Any]) -> Migration:
        if any("deliveries" in (x or {}) and all(d.get("state") == "Delivered" for d in x["deliveries"].values())
               for x in patch.get("notifications", {}).values()):
            raise Crash
        return await super().patch_status(namespace, name, patch)


def _two_webhooks(port: int, status: DatabaseMigrationStatus, kube: type[FakeKube] = FakeKube) -> tuple[
        FakeKube, Webhook]:
    """The resource's own webhook (Slack) and the operator's (CloudEvents), on the test's receiver."""
    fake = kube(resource(status, {"urlSecretRef": {"name": "hook", "key": "url"}, "format": "Slack"}))
    fake.secrets[("shop", "hook")] = {"url": URL_SECRET_VALUE.format(port=port)}
    fake.secrets[("ops", "central")] = {"url": URL_SECRET_VALUE.format(port=port)}
    return fake, Webhook(secret="central", url_key="url", format="CloudEvents", namespace="ops")


@pytest.mark.asyncio
async def test_a_repeat_is_the_same_request_after_a_retry_or_a_crash_before_the_status_write(
        receiver: tuple[Receiver, int]) -> None:
    """The one window exactly-once cannot close: the receiver answered 2xx, the process died before recording it.
    The next leader sends it again, byte for byte what the first one sent (and a retry after a failure is the same
    request too): a receiver that keeps the CloudEvents id (or the Idempotency-Key, the same value) drops it."""
    rx, port = receiver
    rx.answers = [503]  # attempts run in target order: the operator's fails (recorded), the resource's gets a 2xx
    kube, central = _two_webhooks(port, ended("RolledBack", "JobFailed", datetime.now(UTC)),
                                  CrashAfterTheReceiverAnswers)
    dying = Notifier(kube, central)  # type: ignore[arg-type]
    with pytest.raises(Crash):  # ... and the process dies before writing that delivery down
        await dying._round(("shop", "orders"))
    await dying.stop()  # (only to close its HTTP session: a killed process runs nothing more)
    (ident, record), = (parse_status(kube.obj["status"]).notifications or {}).items()
    assert {t: (d.state, d.attempts) for t, d in record.deliveries.items()} == {
        OPERATOR: ("Pending", 1), RESOURCE: ("Pending", 0)}
    kube.obj["status"]["notifications"][ident]["deliveries"][OPERATOR]["nextAttemptAt"] = "2026-01-01T00:00:00Z"
    leader = Notifier(FakeKube(kube.obj, kube.secrets), central)  # type: ignore[arg-type]  # the next leader
    assert await leader._round(("shop", "orders")) is None
    assert all(d.state == "Delivered" for d in parse_status(kube.obj["status"]).notifications[ident]  # type: ignore[index]
               .deliveries.values())
    assert await Notifier(FakeKube(kube.obj, kube.secrets), central)._round(("shop", "orders")) is None  # type: ignore[arg-type]
    assert len(rx.got) == 4  # operator 503, resource 2xx (lost), operator retry, resource again: nothing more
    by_format: dict[str, list[tuple[dict[str, str], bytes]]] = {}
    for headers, body in rx.got:
        by_format.setdefault(headers["Content-Type"].split(";")[0], []).append((headers, body))
    assert sorted(by_format) == ["application/cloudevents+json", "application/json"]
    for sent in by_format.values():
        (first_headers, first_body), (again_headers, again_body) = sent
        assert again_body == first_body
        assert again_headers["Idempotency-Key"] == first_headers["Idempotency-Key"] == f"uid-1/{ident}"
    event = json.loads(by_format["application/cloudevents+json"][0][1])
    assert event["id"] == f"uid-1/{ident}" and event["data"]["id"] == ident
    slack = json.loads(by_format["application/json"][0][1])
    assert ident in slack["blocks"][1]["elements"][0]["text"]  # what a person sees twice in Slack: the same id


@pytest.mark.asyncio
async def test_stopping_lets_the_attempt_in_flight_record_its_delivery(receiver: tuple[Receiver, int]) -> None:
    """A rollout or a leader handing over stops the process gracefully: the request in flight is answered and written
    down before the task ends, so the next leader does not send it again (only a kill leaves that window)."""
    rx, port = receiver
    rx.hold = asyncio.Event()
    kube, central = _two_webhooks(port, ended("Succeeded", "Migrated", datetime.now(UTC), rolled=False))
    notifier = Notifier(kube, central)  # type: ignore[arg-type]
    notifier.offer(cast(Migration, kube.obj))
    await asyncio.wait_for(rx.arrived.wait(), 5)
    stopping = asyncio.create_task(notifier.stop())
    await asyncio.sleep(0.05)
    assert not stopping.done()  # it waits for the answer ...
    rx.hold.set()
    await stopping
    (record,) = (parse_status(kube.obj["status"]).notifications or {}).values()
    assert record.deliveries[OPERATOR].state == "Delivered"  # ... and writes it down
    assert record.deliveries[RESOURCE].state == "Pending" and len(rx.got) == 1  # the next attempt waits for a leader


@pytest.mark.asyncio
async def test_a_paused_replica_sends_nothing_and_the_retrying_gauge_follows(receiver: tuple[Receiver, int]) -> None:
    from prometheus_client import generate_latest

    from alembic_operator import metrics

    rx, port = receiver
    kube, central = _two_webhooks(port, awaiting(datetime.now(UTC)))
    assert await Notifier(kube, central, leading=lambda: False)._round(("shop", "orders")) is None  # type: ignore[arg-type]
    assert kube.patches == 0 and rx.got == []  # Kopf's peering paused it: the leader records and sends

    def retrying() -> dict[str, float]:
        text = generate_latest(metrics.default().registry).decode()
        return {line.split("webhook=\"")[1].split("\"")[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line.startswith("alembic_operator_notifications_retrying{") and 'name="orders"' in line
                and 'namespace="shop"' in line and 'type="AwaitingApproval"' in line}

    rx.answers = [503]
    notifier = Notifier(kube, central)  # type: ignore[arg-type]
    assert await notifier._round(("shop", "orders")) is not None
    assert retrying() == {OPERATOR: 1.0}  # the operator's webhook failed and waits; the resource's was delivered
    kube.obj["status"]["notifications"][next(iter(kube.obj["status"]["notifications"]))]["deliveries"][OPERATOR][
        "nextAttemptAt"] = "2026-01-01T00:00:00Z"
    assert await notifier._round(("shop", "orders")) is None
    assert retrying() == {OPERATOR: 0.0}
    await notifier.stop()
