"""A DatabaseMigrationSet's pass against kmock's Kubernetes emulator (no cluster): what it creates when the watch
has not delivered its members yet, as right after an operator's start."""

from __future__ import annotations

from typing import Any

import kmock
import kubernetes
import pytest

from alembic_operator import constants as c
from alembic_operator import events, indexes
from alembic_operator.config import OperatorConfig
from alembic_operator.fleet.api import parse_set_spec, template_json
from alembic_operator.fleet.handlers import Fleet
from alembic_operator.fleet.strategy import migration_name, template_hash
from alembic_operator.kube import Client

DBM = kmock.resource(group=c.GROUP, version=c.VERSION, plural=c.PLURAL)
NS = "tenants"


def a_set() -> dict[str, Any]:
    return {"apiVersion": c.API_VERSION, "kind": c.SET_KIND,
            "metadata": {"name": "fleet", "namespace": NS, "uid": "set-uid", "generation": 1,
                         "resourceVersion": "5"},
            "spec": {"template": {"migrations": {"image": "shop:2"}, "targetRevision": "head",
                                  "backup": {"enabled": False}},
                     "targets": {"secrets": [{"name": f"t{i}", "key": "url"} for i in range(3)]},
                     "strategy": {"maxInFlight": 1}}}


def a_member(secret: str) -> dict[str, Any]:
    """A DatabaseMigration the set started before the operator restarted: its run is still under way."""
    return {"apiVersion": c.API_VERSION, "kind": c.KIND,
            "metadata": {"name": migration_name("fleet", secret), "namespace": NS, "generation": 1,
                         "resourceVersion": "7", "labels": {c.SET_LABEL: "fleet"},
                         "annotations": {c.TARGET_ANNOTATION: secret, c.SET_TEMPLATE_ANNOTATION: template_hash(
                             template_json(parse_set_spec(a_set()["spec"])))}},
            "spec": {"database": {"urlSecretRef": {"name": secret, "key": "url"}},
                     "migrations": {"image": "shop:2"}, "targetRevision": "head", "backup": {"enabled": False}},
            "status": {"observedGeneration": 1, "phase": "Migrating"}}


@pytest.mark.asyncio
async def test_a_pass_before_the_watch_delivered_the_members_counts_the_ones_under_way(
        kmock: kmock.KubernetesEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "post", lambda *_args: None)  # Kopf's poster needs Kopf's own loop
    for declared in ("v1/secrets", "v1/events", f"{c.GROUP}/{c.VERSION}/{c.PLURAL}",
                     f"{c.GROUP}/{c.VERSION}/{c.SET_PLURAL}"):
        kmock.resources[declared] = {}
    kmock.objects[DBM, NS, migration_name("fleet", "t2")] = a_member("t2")
    client = Client(kubernetes.client.Configuration(host=str(kmock.url).rstrip("/")))
    fleet = Fleet()
    runtime = indexes.Runtime()
    fleet.ctx = indexes.Context(config=OperatorConfig(), kube=client, runtime=runtime)
    fleet.set_seen(None, a_set())  # the set's watch event came first; its member's has not arrived
    try:
        await fleet.reconcile(NS, "fleet")
    finally:
        await client.close()
    names = {name for (resource, ns, name) in kmock.objects if resource == DBM and ns == NS}
    # t2 is under way and the cap is 1: nothing new starts, and the member is known to the reconciler too.
    assert names == {migration_name("fleet", "t2")}
    assert fleet.members[(NS, "fleet")] == {migration_name("fleet", "t2")}
    assert (NS, migration_name("fleet", "t2")) in runtime.migrations


@pytest.mark.asyncio
async def test_a_sets_recorded_approval_reaches_its_members_and_its_status(
        kmock: kmock.KubernetesEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """Governed (the webhook on): the hash the webhook recorded counts, the other named one does not; the member
    waiting for approval is woken, counts it from its observation's view, and status.plans names the approver."""
    import json

    from alembic_operator import approvals
    from alembic_operator.fleet.approval import member_approvals

    monkeypatch.setattr(events, "post", lambda *_args: None)
    for declared in ("v1/secrets", "v1/events", f"{c.GROUP}/{c.VERSION}/{c.PLURAL}",
                     f"{c.GROUP}/{c.VERSION}/{c.SET_PLURAL}"):
        kmock.resources[declared] = {}
    waiting = a_member("t0")
    waiting["metadata"]["ownerReferences"] = [{"apiVersion": c.API_VERSION, "kind": c.SET_KIND, "name": "fleet",
                                               "uid": "set-uid", "controller": True}]
    waiting["status"] = {"observedGeneration": 1, "phase": "AwaitingApproval", "plan": {"hash": "sha256:p1"}}
    kmock.objects[DBM, NS, migration_name("fleet", "t0")] = waiting
    kmock.objects[kmock.resource(group=c.GROUP, version=c.VERSION, plural=c.SET_PLURAL), NS, "fleet"] = a_set()
    client = Client(kubernetes.client.Configuration(host=str(kmock.url).rstrip("/")))
    fleet = Fleet(governed=True)
    runtime = indexes.Runtime()
    woken: list[tuple[str, str]] = []
    monkeypatch.setattr(runtime, "wake", lambda ns, name: woken.append((ns, name)))
    fleet.ctx = indexes.Context(config=OperatorConfig(), kube=client, runtime=runtime)
    approved = a_set()
    approved["metadata"]["annotations"] = {c.APPROVE_ANNOTATION: "sha256:p1,sha256:p2",
                                           approvals.APPROVED_BY: json.dumps({"sha256:p1": "reviewer"})}
    try:
        fleet.set_seen(None, approved)
        await fleet.reconcile(NS, "fleet")
    finally:
        await client.close()
    kept = runtime.set_approvals[(NS, "fleet")]
    assert kept.approvals == {"sha256:p1": "reviewer"} and kept.targets == frozenset({"t0", "t1", "t2"})
    assert woken == [(NS, migration_name("fleet", "t0"))]
    assert member_approvals(waiting, kept) == {"sha256:p1": "reviewer (DatabaseMigrationSet fleet)"}
    status = kmock.objects[kmock.resource(group=c.GROUP, version=c.VERSION, plural=c.SET_PLURAL), NS,
                           "fleet"]["status"]
    assert [(p["hash"], p.get("approvedBy")) for p in status["plans"]] == [("sha256:p1", "reviewer")]


def test_a_member_wakes_its_set_only_when_what_the_set_reads_of_it_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    fleet = Fleet()
    woken: list[tuple[str, str]] = []
    monkeypatch.setattr(fleet, "wake", woken.append)
    member = a_member("t0")

    def seen(version: int, **status: Any) -> int:
        member["metadata"]["resourceVersion"] = str(version)
        member["status"] = {**member["status"], **status}
        fleet.migration_seen("MODIFIED", member)
        return len(woken)

    assert seen(7, message="planning") == 1  # first sight
    assert seen(8, message="migrating 1 of 2 revisions") == 1  # progress only: the set's pass would decide alike
    assert seen(8) == 1  # the same version again (a re-list)
    ready = {"type": "Ready", "status": "True", "reason": "Migrated", "message": "", "observedGeneration": 1,
             "lastTransitionTime": "2026-01-01T00:00:00Z"}
    assert seen(9, phase="Succeeded", conditions=[ready]) == 2  # Ready: its slot is free, the set runs at once
    member["metadata"]["generation"] = 2
    assert seen(10) == 3  # a new generation (a retry): under way again
    fleet.migration_seen("DELETED", member)
    assert woken == [(NS, "fleet")] * 4 and (NS, member["metadata"]["name"]) not in fleet.observed


@pytest.mark.asyncio
async def test_a_member_is_created_with_kopfs_finalizer(kmock: kmock.KubernetesEmulator,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Kopf would otherwise PATCH each new member to add it: a wave of hundreds, hundreds of PATCHes at once (on
    as many connections: measured 223 sockets and +40 MiB RSS for a 1,000-member set, bench_fleet --idle)."""
    monkeypatch.setattr(events, "post", lambda *_args: None)
    for declared in ("v1/secrets", "v1/events", f"{c.GROUP}/{c.VERSION}/{c.PLURAL}",
                     f"{c.GROUP}/{c.VERSION}/{c.SET_PLURAL}"):
        kmock.resources[declared] = {}
    client = Client(kubernetes.client.Configuration(host=str(kmock.url).rstrip("/")))
    fleet = Fleet()
    fleet.ctx = indexes.Context(config=OperatorConfig(), kube=client, runtime=indexes.Runtime())
    fleet.set_seen(None, a_set())
    try:
        await fleet.reconcile(NS, "fleet")
    finally:
        await client.close()
    created = [obj for (resource, ns, _name), obj in kmock.objects.items() if resource == DBM and ns == NS]
    assert len(created) == 1 and created[0]["metadata"]["finalizers"] == [c.FINALIZER]


@pytest.mark.asyncio
async def test_a_sets_members_waiting_for_one_plan_make_one_notification_of_the_set(
        kmock: kmock.KubernetesEmulator, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The whole path without a cluster: three members wait for one plan; the set's pass writes status.plans and
    offers the set to the notifier, which records one notification in the set's status and delivers it to the
    operator's webhook (CloudEvents) and the template's (Slack: the members' own); the members, offered too, record
    none; a new leader sends nothing again; the set's next pass (a member approved) leaves the record in place; once
    every member migrated, the set announces the rollout's end and the members no success of their own."""
    import asyncio
    import base64
    import json
    import logging
    from datetime import UTC, datetime

    from aiohttp import web
    from aiohttp.test_utils import TestServer

    from alembic_operator.notify.send import OPERATOR, RESOURCE, Notifier, Webhook

    monkeypatch.setattr(events, "post", lambda *_args: None)
    caplog.set_level(logging.DEBUG, "alembic_operator")
    got: list[tuple[dict[str, str], bytes]] = []

    async def receive(request: web.Request) -> web.Response:
        got.append((dict(request.headers), await request.read()))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hooks/{tail:.*}", receive)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    url = base64.b64encode(f"http://127.0.0.1:{server.port}/hooks/T0KEN-IN-URL".encode()).decode()
    for declared in ("v1/secrets", "v1/events", f"{c.GROUP}/{c.VERSION}/{c.PLURAL}",
                     f"{c.GROUP}/{c.VERSION}/{c.SET_PLURAL}"):
        kmock.resources[declared] = {}
    secrets = kmock.resource(group="", version="v1", plural="secrets")
    for ns, name in (("ops", "central"), (NS, "hook")):
        kmock.objects[secrets, ns, name] = {"apiVersion": "v1", "kind": "Secret",
                                            "metadata": {"name": name, "namespace": ns}, "data": {"url": url}}
    body = a_set()
    body["spec"]["template"]["notifications"] = {"urlSecretRef": {"name": "hook", "key": "url"}, "format": "Slack"}
    body["spec"]["strategy"]["maxInFlight"] = 3
    sets = kmock.resource(group=c.GROUP, version=c.VERSION, plural=c.SET_PLURAL)
    kmock.objects[sets, NS, "fleet"] = body
    thash = template_hash(template_json(parse_set_spec(body["spec"])))
    plan_hash = "sha256:" + "5f0c" * 16
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    for secret in ("t0", "t1", "t2"):
        member = a_member(secret)
        member["spec"]["notifications"] = body["spec"]["template"]["notifications"]
        member["metadata"]["annotations"][c.SET_TEMPLATE_ANNOTATION] = thash
        member["metadata"]["ownerReferences"] = [{"apiVersion": c.API_VERSION, "kind": c.SET_KIND, "name": "fleet",
                                                  "uid": "set-uid", "controller": True}]
        member["status"] = {
            "observedGeneration": 1, "phase": "AwaitingApproval", "targetRevision": "b2",
            "plan": {"hash": plan_hash, "revisions": ["b2"], "fromRevision": "a1", "toRevision": "b2",
                     "generation": 1, "destructive": ["DROP COLUMN orders.legacy_code (revision b2)"]},
            "conditions": [{"type": c.APPROVAL_REQUIRED, "status": "True", "reason": "DestructiveChangesNotApproved",
                            "message": "the plan destroys data", "lastTransitionTime": now, "observedGeneration": 1}]}
        kmock.objects[DBM, NS, migration_name("fleet", secret)] = member
    client = Client(kubernetes.client.Configuration(host=str(kmock.url).rstrip("/")))
    central = Webhook(secret="central", url_key="url", format="CloudEvents", namespace="ops")
    runtime = indexes.Runtime()
    runtime.notifier = Notifier(client, central)
    fleet = Fleet()
    fleet.ctx = indexes.Context(config=OperatorConfig(), kube=client, runtime=runtime)
    try:
        fleet.set_seen(None, body)
        await fleet.reconcile(NS, "fleet")
        for obj in list(runtime.migrations.values()):  # after each member's own reconcile
            runtime.notifier.offer(obj)
        assert [key[0] for key in runtime.notifier._tasks] == [c.SET_KIND]  # the members have nothing due
        await asyncio.gather(*runtime.notifier._tasks.values())
        stored = kmock.objects[sets, NS, "fleet"].raw["status"]
        (ident, record), = stored["notifications"].items()
        assert ident == f"approval-{'5f0c' * 3}-{thash}"
        assert {k: record[k] for k in ("type", "waiting", "planHash")} == {
            "type": "AwaitingApproval", "waiting": 3, "planHash": plan_hash}
        assert {t: d["state"] for t, d in record["deliveries"].items()} == {OPERATOR: "Delivered",
                                                                            RESOURCE: "Delivered"}
        assert [dict(kmock.objects[DBM, NS, migration_name("fleet", s)].raw["status"]).get("notifications")
                for s in ("t0", "t1", "t2")] == [None] * 3
        assert len(got) == 2 and {h["Idempotency-Key"] for h, _b in got} == {f"set-uid/{ident}"}
        event = next(json.loads(b) for h, b in got if h["Content-Type"].startswith("application/cloudevents"))
        assert event["type"] == "io.alembic-operator.databasemigrationset.awaitingapproval"
        assert event["data"]["migrations"] == [migration_name("fleet", s) for s in ("t0", "t1", "t2")]
        slack = next(json.loads(b) for h, b in got if not h["Content-Type"].startswith("application/cloudevents"))
        assert f"kubectl dbm approve --set fleet -n {NS} --hash {plan_hash}" in slack["blocks"][0]["text"]["text"]
        # A new leader (nothing in memory) looks at the set: nothing is sent again.
        leader = Notifier(client, central)
        assert await leader._round_set((NS, "fleet")) is None
        await leader.stop()
        # t0 approved and migrating: the set's next pass rewrites status.plans and leaves status.notifications be.
        approved = dict(kmock.objects[DBM, NS, migration_name("fleet", "t0")].raw)
        approved["metadata"] = {**approved["metadata"], "resourceVersion": "8"}
        approved["status"] = {**approved["status"], "phase": "Migrating"}
        runtime.migration_seen("MODIFIED", approved)
        fleet.migration_seen("MODIFIED", approved)
        seen = dict(kmock.objects[sets, NS, "fleet"].raw)  # the watch brings the notifier's write to the set's cache
        fleet.set_seen("MODIFIED", {**seen, "metadata": {**seen["metadata"], "resourceVersion": "99"}})
        await fleet.reconcile(NS, "fleet")
        stored = kmock.objects[sets, NS, "fleet"].raw["status"]
        assert [p["count"] for p in stored["plans"]] == [2] and list(stored["notifications"]) == [ident]
        # Every member migrated: the set announces the rollout's end once; the members announce no success of theirs.
        for version, secret in enumerate(("t0", "t1", "t2"), start=10):
            done = dict(kmock.objects[DBM, NS, migration_name("fleet", secret)].raw)
            done["metadata"] = {**done["metadata"], "resourceVersion": str(version)}
            done["status"] = {
                "observedGeneration": 1, "phase": "Succeeded",
                "conditions": [{"type": c.READY, "status": "True", "reason": "Migrated", "message": "at b2",
                                "observedGeneration": 1,
                                "lastTransitionTime": now}],
                "history": [{"generation": 1, "from": "a1", "to": "b2", "result": "Succeeded", "reason": "Migrated",
                             "startedAt": now, "finishedAt": now}]}
            kmock.objects[DBM, NS, migration_name("fleet", secret)] = done
            runtime.migration_seen("MODIFIED", done)
            fleet.migration_seen("MODIFIED", done)
        seen = dict(kmock.objects[sets, NS, "fleet"].raw)
        fleet.set_seen("MODIFIED", {**seen, "metadata": {**seen["metadata"], "resourceVersion": "100"}})
        await fleet.reconcile(NS, "fleet")
        for obj in list(runtime.migrations.values()):
            runtime.notifier.offer(obj)
        assert {key[0] for key in runtime.notifier._tasks} == {c.SET_KIND}
        await asyncio.gather(*runtime.notifier._tasks.values())
        stored = kmock.objects[sets, NS, "fleet"].raw["status"]
        (done_id,) = set(stored["notifications"]) - {ident}
        assert done_id.startswith(f"succeeded-{thash}-") and stored["notifications"][done_id]["summary"] == (
            f"dbms/fleet in {NS}: all 3 target(s) Ready at template {thash}")
        assert len(got) == 4 and sum(f"set-uid/{done_id}" == h["Idempotency-Key"] for h, _b in got) == 2
        await runtime.notifier.stop()
        # The set's deletion removes its notifications' series (counted under the set's name).
        from prometheus_client import generate_latest

        from alembic_operator import metrics

        def series() -> list[str]:
            return [line for line in generate_latest(metrics.default().registry).decode().splitlines()
                    if line.startswith("alembic_operator_notifications_") and f'namespace="{NS}"' in line
                    and 'name="fleet"' in line]

        assert len([x for x in series() if x.startswith("alembic_operator_notifications_total{")]) == 4
        fleet.set_seen("DELETED", seen)
        assert series() == []
    finally:
        await client.close()
        await server.close()
    assert len(got) == 4
    for secret in ("T0KEN-IN-URL", "/hooks/"):
        assert not [x for x in (stored, caplog.text, *(b.decode() for _h, b in got)) if secret in str(x)], secret
