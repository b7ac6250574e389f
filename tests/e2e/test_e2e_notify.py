"""Notifications on the bed (issue 26): two operator processes in Kopf peering, the leader killed in the middle, and
a receiver of the test's own (an HTTP server on the host, relayed to the node as the database is) behind both
webhooks: the operator-wide one (--notify-secret, CloudEvents) and the resource's own (spec.notifications, Slack,
with a bearer token). Awaiting approval, succeeded, failed (rolled back) and drift detected each arrive exactly once
per webhook (the old leader sent the approval; the new one sees it recorded and sends the rest), with no secret in
any payload. The delays from each condition to its arrival are printed (no timed assertion)."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from prometheus_client.parser import text_string_to_metric_families

from alembic_operator import constants as c
from e2e import BASE_REVISIONS, DROP_LEGACY, E2E, FAILING_AT_ONCE, GATE_TABLE, R3, SLOW, gated, revision
from harness import VENV_BIN, OperatorProcess, wait_for

pytestmark = pytest.mark.bed

PEERING = "notify-e2e"
# The app's models: the schema at head (the failing revision's check constraint is not compared by autogenerate).
MODELS = '''
sa.Table("customers", metadata, sa.Column("id", sa.Integer, primary_key=True),
         sa.Column("name", sa.String(80), nullable=False), sa.Column("email", sa.String(120)))
sa.Table("orders", metadata, sa.Column("id", sa.Integer, primary_key=True),
         sa.Column("customer_id", sa.Integer, sa.ForeignKey("customers.id")),
         sa.Column("total", sa.Numeric(10, 2), nullable=False))
sa.Table("runs", metadata, sa.Column("rev", sa.Text))
'''
TOKEN = "bearer-7e1c0d5f"
URL_MARK = "hook-path-secret-91b2"  # in both URLs' paths: a URL from a Secret is a secret too


@dataclass
class Arrival:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.time() on arrival

    @property
    def key(self) -> str:
        return self.headers.get("Idempotency-Key", "")

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    arrivals: list[Arrival] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on(self, path_part: str) -> list[Arrival]:
        with self.lock:
            return [a for a in self.arrivals if path_part in a.path]


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, int]]:
    rx = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with rx.lock:
                rx.arrivals.append(Arrival(self.path, dict(self.headers), body, time.time()))
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield rx, int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


class PeeredOperator(OperatorProcess):
    """An operator in the namespace's KopfPeering (not --standalone): the highest priority alive works."""

    def start(self) -> PeeredOperator:
        env = {**self.base_env(), "ALEMBIC_OPERATOR_METRICS_PORT": str(self.metrics_port),
               "ALEMBIC_OPERATOR_METRICS_ADDR": "127.0.0.1"}
        args = [str(VENV_BIN / "alembic-operator"), "run", "--liveness", f"http://127.0.0.1:{self.port}/healthz"]
        for ns in self.namespaces:
            args += ["--namespace", ns]
        self.spawn([*args, *self.extra_args], env)
        wait_for(self.healthy, 60, "the operator's liveness endpoint")
        return self


def _peering(e2e: E2E) -> None:
    """Kopf's peering CRDs (the chart's crds/: the same objects a helm install makes) and this namespace's peering."""
    proc = e2e.bed.kubectl("apply", "--server-side", "-f",
                           str(Path(__file__).resolve().parents[2] / "charts/alembic-operator/crds/kopf-peering.yaml"))
    assert proc.returncode == 0, proc.stderr
    custom = k8s.CustomObjectsApi(e2e.cluster.api)
    wait_for(lambda: _try(lambda: custom.create_namespaced_custom_object(
        "kopf.dev", "v1", e2e.ns, "kopfpeerings", {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering",
                                                   "metadata": {"name": PEERING}})), 30, "the KopfPeering created")


def _try(call: Any) -> bool:
    try:
        call()
    except k8s.ApiException as err:
        return err.status == 409
    return True


def _condition_since(e2e: E2E, name: str, type_: str, reason: str | None = None, timeout: float = 180) -> float:
    """Wait for the condition (this generation's); the wall time the test first saw it, and print its own time."""
    e2e.cluster.wait_condition(name, type_, reason=reason, timeout=timeout)
    return time.time()


def _arrived(rx: Receiver, part: str, kind: str, timeout: float = 60) -> Arrival:
    def found() -> Arrival | None:
        return next((a for a in rx.on(part) if kind in a.key), None)
    return wait_for(found, timeout, f"the {kind} notification on {part}", interval=0.05)


def _transition(obj: dict[str, Any], type_: str) -> float:
    cond = next(x for x in obj["status"]["conditions"] if x["type"] == type_)
    return datetime.fromisoformat(cond["lastTransitionTime"].replace("Z", "+00:00")).timestamp()


def test_notifications_once_each_across_a_leader_failover(e2e: E2E, receiver: tuple[Receiver, int]) -> None:
    rx, port = receiver
    host, inner = e2e.bed.expose_host_port(port)
    e2e.cluster.secret("central", {"url": f"http://{host}:{inner}/central/{URL_MARK}"})
    _peering(e2e)
    e2e.operator.stop()
    notify = ["--no-webhook", "--peering", PEERING, "--peering-lifetime", "11",
              "--notify-secret", f"{e2e.ns}/central", "--notify-format", "CloudEvents"]
    leader = PeeredOperator(e2e.bed, [e2e.ns], e2e.tmp / "leader.log", [*notify, "--priority", "2"]).start()
    standby = PeeredOperator(e2e.bed, [e2e.ns], e2e.tmp / "standby.log", [*notify, "--priority", "1"]).start()
    # Kopf starts a peer paused; only the leader says "Resuming operations" (when it has found no higher peer).
    wait_for(lambda: "Resuming operations after the pause" in leader.log(), 60, "the leader to lead")
    e2e.operator = standby  # the fixture's leak check reads its log (it stops the operator it started itself)
    try:
        _scenario(e2e, rx, leader, standby, f"http://{host}:{inner}/team/{URL_MARK}")
    finally:
        leader.stop()
        standby.stop()


def _scenario(e2e: E2E, rx: Receiver, leader: PeeredOperator, standby: PeeredOperator, team_url: str) -> None:
    project = e2e.project([*BASE_REVISIONS, DROP_LEGACY, gated(SLOW), FAILING_AT_ONCE], models=MODELS,
                          models_module="models_notify_e2e")  # named: one image build, reused by later runs
    e2e.upgrade_directly(project, R3)
    e2e.seed()
    own = {"urlSecretRef": {"name": "team-hook", "key": "url"},
           "tokenSecretRef": {"name": "team-hook", "key": "token"}, "format": "Slack"}
    # No backups: none of this needs one (the failing revision rolls back with its transaction), and two Jobs fewer.
    e2e.cluster.create("shop", e2e.spec(project, SLOW, notifications=own, backup={"enabled": False}))
    delays: dict[str, list[float]] = {}

    # 1. The plan drops a column: it waits for approval, and the leader says so to both webhooks. The team's
    # webhook Secret does not exist yet: that delivery fails (a Warning Event), nothing waits for it, and it is
    # retried with backoff until the Secret appears.
    seen = _condition_since(e2e, "shop", "ApprovalRequired")
    obj = e2e.cluster.get("shop")
    delays["awaiting approval"] = [_arrived(rx, "/central/", "approval-g1-").at - seen]
    wait_for(lambda: [e for e in e2e.cluster.events("shop") if e["reason"] == "NotificationFailed"], 30,
             "the NotificationFailed Event")
    e2e.cluster.secret("team-hook", {"url": team_url, "token": TOKEN})
    created = time.time()
    retried = _arrived(rx, "/team/", "approval-g1-").at - created
    plan_hash = obj["status"]["plan"]["hash"]
    slack = _arrived(rx, "/team/", "approval-g1-").json
    assert f"kubectl dbm approve shop -n {e2e.ns} --hash {plan_hash}" in slack["blocks"][0]["text"]["text"]
    assert "DROP COLUMN orders.legacy_code" in slack["blocks"][0]["text"]["text"]
    event = _arrived(rx, "/central/", "approval-g1-").json
    assert (event["specversion"], event["type"], event["data"]["planHash"]) == (
        "1.0", "io.alembic-operator.databasemigration.awaitingapproval", plan_hash)
    wait_for(lambda: all(d["state"] == "Delivered" for n in (e2e.cluster.get("shop")["status"].get("notifications")
                                                           or {}).values() for d in n["deliveries"].values()),
             30, "the deliveries recorded")

    # 2. The leader dies (SIGKILL) while the plan still waits: the standby takes over, sees both deliveries
    # recorded in status, and sends nothing again.
    leader.kill()
    killed = time.time()
    wait_for(lambda: "Resuming operations after the pause" in standby.log(), 90, "the standby to take over")
    took_over = time.time()

    # 3. Approved: the new leader backs up and migrates; the migration waits for the test's gate.
    e2e.cluster.patch("shop", {"metadata": {"annotations": {c.APPROVE_ANNOTATION: plan_hash}}})
    wait_for(lambda: e2e.cluster.get("shop")["status"].get("phase") == "Migrating", 120, "Migrating")
    e2e.db.query(f"CREATE TABLE {GATE_TABLE} (x int)")
    seen = _condition_since(e2e, "shop", "Ready")
    obj = e2e.cluster.get("shop")
    for part in ("/central/", "/team/"):
        got = _arrived(rx, part, "succeeded-g1-")
        delays.setdefault("succeeded", []).append(got.at - seen)
    data = _arrived(rx, "/central/", "succeeded-g1-").json["data"]
    assert (data["from"], data["to"], revision(e2e.db)) == (R3, SLOW, SLOW) and data["durationSeconds"] >= 0

    # 4. The next revision fails; its transaction rolls back; both webhooks hear what happened and what was done.
    e2e.cluster.patch("shop", {"spec": {"targetRevision": "head"}})
    wait_for(lambda: e2e.cluster.get("shop")["status"].get("phase") == "Failed", 180, "Failed")
    seen = time.time()
    obj = e2e.cluster.get("shop")
    for part in ("/central/", "/team/"):
        got = _arrived(rx, part, "failed-g2-")
        delays.setdefault("failed", []).append(got.at - seen)
    failed = _arrived(rx, "/central/", "failed-g2-").json["data"]
    assert failed["reason"] == obj["status"]["history"][-1]["reason"] and failed["rollback"].startswith(
        "TransactionRolledBack") and failed["to"] == FAILING_AT_ONCE.id

    # 5. The team fixes the row the revision tripped on and turns drift checks on (a new generation: the run to head
    # is tried again and succeeds); someone had added a column by hand meanwhile. The first check at head (at once
    # when Ready; the next one an hour later) finds it, and both webhooks hear of it.
    e2e.db.query("UPDATE orders SET total = 1 WHERE total <= 0")
    e2e.db.query("ALTER TABLE customers ADD COLUMN nickname text")
    e2e.cluster.patch("shop", {"spec": {"driftCheck": {"interval": "1h"}}})
    for part in ("/central/", "/team/"):
        _arrived(rx, part, "succeeded-g3-", timeout=180)
    seen = _condition_since(e2e, "shop", "Drifted", reason="SchemaDrift")
    for part in ("/central/", "/team/"):
        delays.setdefault("drift detected", []).append(_arrived(rx, part, "/drift-").at - seen)
    drift = _arrived(rx, "/central/", "/drift-").json
    assert drift["type"] == "io.alembic-operator.databasemigration.driftdetected"
    assert [f for f in drift["data"]["findings"] if "nickname" in f], drift["data"]["findings"]
    assert "nickname" in _arrived(rx, "/team/", "/drift-").json["blocks"][0]["text"]["text"]

    # Exactly once each, per webhook: 5 CloudEvents and 5 Slack messages, no repeat, none lost.
    time.sleep(2)  # a repeat would come within the notifier's first retry (2 s): show that none does
    for part, fmt in (("/central/", "CloudEvents"), ("/team/", "Slack")):
        keys = [re.sub(r"-(\d{8}T\d{6}Z|[0-9a-f]{12})$", "", a.key.split("/", 1)[1]) for a in rx.on(part)]
        assert sorted(keys) == ["approval-g1", "drift", "failed-g2", "succeeded-g1", "succeeded-g3"], (part, keys)
        for a in rx.on(part):
            assert ("specversion" in a.json) == (fmt == "CloudEvents")
            assert fmt == "Slack" or a.json["id"] == a.key  # the id a receiver deduplicates on: uid/notification
            assert ("Authorization" in a.headers) == (part == "/team/")
    assert all(a.headers.get("Authorization") == f"Bearer {TOKEN}" for a in rx.on("/team/"))
    # No secret anywhere it could leak: payloads (bodies and headers but the token's own), status, Events, logs.
    payloads = [a.body.decode() + json.dumps({k: v for k, v in a.headers.items() if k != "Authorization"})
                for a in rx.arrivals]
    # The new leader's metrics count what it delivered (all but the approval), per webhook and type; none retries.
    exported = standby.metrics()
    samples = {(x.name, x.labels.get("webhook"), x.labels.get("type"), x.labels.get("result")): x.value
               for family in text_string_to_metric_families(exported) for x in family.samples
               if x.labels.get("namespace") == e2e.ns}
    for webhook in ("operator", "resource"):
        assert {(t, n) for (name, w, t, r), n in samples.items() if name == "alembic_operator_notifications_total"
                and w == webhook} == {("Succeeded", 2), ("Failed", 1), ("DriftDetected", 1)}, samples
    assert not [n for (name, *_), n in samples.items() if name == "alembic_operator_notifications_retrying" and n]
    places = {"payloads": "\n".join(payloads), "status": json.dumps(e2e.cluster.get("shop")),
              "events": json.dumps(e2e.cluster.events()), "leader log": leader.log(), "standby log": standby.log(),
              "metrics": exported}
    for secret in (TOKEN, URL_MARK, e2e.db.password):
        assert not [where for where, text in places.items() if secret in text], secret
    print(f"\nthe team's approval notification arrived {retried:+.2f}s after its Secret was created (retried)")
    print(f"notification delays (arrival - the test seeing the condition; leader killed at +0, standby in charge "
          f"{took_over - killed:.1f}s later):")
    for what, values in delays.items():
        print(f"  {what:18s} " + ", ".join(f"{v:+.2f}s" for v in values) + "  (central CloudEvents[, team Slack])")
