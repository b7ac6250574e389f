"""Expand/contract on the bed (issue 24): one apply moves the resource to a plan whose last revision is marked
phase = "contract" and the app's Deployment to the version built for it, as GitOps does. The expand part runs while
the old version serves, the new pods are released once it is applied, the contract part starts only after the last
old pod has terminated (proved by etcd's own order: the old pods' terminations come before the contract Job's
creation), and an old version's pod started afterwards is held, naming the revision it needs."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes import watch

from alembic_operator import constants as c
from apps import Rev
from e2e import BASE_REVISIONS, E2E, R3, columns, on_every_engine, revision
from gating import Apps, GateOperator, deployment, held, template
from harness import wait_for

pytestmark = pytest.mark.bed

EXPAND, CONTRACT = "e7e7e7e7e701", "c8c8c8c8c801"
# The new version reads orders.code; the old one reads orders.legacy_code: both exist after the expand part.
REVISIONS = [
    *BASE_REVISIONS,
    Rev(EXPAND, phase="expand",
        upgrade=['op.add_column("orders", sa.Column("code", sa.String(20)))',
                 'op.execute("UPDATE orders SET code = legacy_code WHERE code IS NULL")'],
        downgrade=['op.drop_column("orders", "code")']),
    Rev(CONTRACT, phase="contract", upgrade=['op.drop_column("orders", "legacy_code")'],
        downgrade=['op.add_column("orders", sa.Column("legacy_code", sa.String(20)))']),
]


@pytest.fixture
def gated(e2e: E2E) -> Iterator[E2E]:
    """The e2e operator replaced by one that also serves the pod gate's webhook (named for this test)."""
    e2e.operator.stop()
    operator = GateOperator(e2e.bed, e2e.ns, e2e.tmp / "operator-webhook.log", core=True)
    e2e.operator = operator.start()
    yield e2e
    operator.stop()
    with contextlib.suppress(k8s.ApiException):
        k8s.AdmissionregistrationV1Api(e2e.cluster.api).delete_mutating_webhook_configuration(operator.config_name)


class Recorder:
    """The etcd revision (resourceVersion) at which each pod of the namespace terminated (its phase Succeeded or
    Failed: every container has exited; or deleted) and each Job was created, from watches started before the
    change: one global order, whatever the clocks and the polling."""

    def __init__(self, api: k8s.ApiClient, namespace: str) -> None:
        self.core, self.batch, self.ns = k8s.CoreV1Api(api), k8s.BatchV1Api(api), namespace
        self.deleted: dict[str, int] = {}
        self.created: dict[str, int] = {}
        self.watches = [watch.Watch(), watch.Watch()]
        since = self.core.list_namespaced_pod(namespace).metadata.resource_version
        self.threads = [threading.Thread(target=self._run, args=(w, fn, since), daemon=True) for w, fn in
                        zip(self.watches, (self.core.list_namespaced_pod, self.batch.list_namespaced_job),
                            strict=True)]
        for t in self.threads:
            t.start()

    def _run(self, w: watch.Watch, fn: Any, since: str) -> None:
        with contextlib.suppress(Exception):  # stop() ends the stream under it
            self._events(w, fn, since)

    def _events(self, w: watch.Watch, fn: Any, since: str) -> None:
        for event in w.stream(fn, self.ns, resource_version=since, timeout_seconds=300):
            meta = event["object"].metadata
            if fn == self.core.list_namespaced_pod and meta.name not in self.deleted and (
                    event["type"] == "DELETED" or event["object"].status.phase in ("Succeeded", "Failed")):
                self.deleted[meta.name] = int(meta.resource_version)  # terminated: every container has exited
            elif event["type"] == "ADDED" and fn == self.batch.list_namespaced_job:
                self.created.setdefault(meta.name, int(meta.resource_version))

    def stop(self) -> None:
        for w in self.watches:
            w.stop()


@on_every_engine
def test_expand_then_contract_once_the_old_version_is_gone(gated: E2E) -> None:
    e2e = gated
    apps = Apps(e2e.cluster.api, e2e.ns)
    project = e2e.project(REVISIONS)
    e2e.upgrade_directly(project, R3)
    e2e.seed()
    e2e.cluster.create("shop", e2e.spec(project, target=R3, backup={"enabled": False}))  # backups: elsewhere
    e2e.cluster.wait_condition("shop", "Ready", timeout=120)
    apps.apps.create_namespaced_deployment(e2e.ns, deployment("web", 2, template("v1", "web", "shop", R3)))
    wait_for(lambda: apps.rolled_out("web", 2, "v1"), 90, "web v1 rolled out")
    old = {p["metadata"]["name"] for p in apps.pods("app=web")}

    recorder = Recorder(e2e.cluster.api, e2e.ns)
    try:
        # One apply, as GitOps does: the resource to head (its destructive contract part allowed up front) and the
        # Deployment to the version built for the contract revision.
        e2e.cluster.patch("shop", {"spec": {"targetRevision": "head", "approval": {"allowDestructive": True}}})
        apps.apps.patch_namespaced_deployment("web", e2e.ns, {"spec": {
            "template": template("v2", "web", "shop", CONTRACT)}})
        obj = e2e.cluster.wait_condition("shop", "Ready", timeout=300)
        wait_for(lambda: apps.rolled_out("web", 2, "v2"), 90, "web v2 rolled out")
    finally:
        recorder.stop()
    st = obj["status"]
    assert revision(e2e.db) == CONTRACT
    assert "code" in columns(e2e.db, "orders") and "legacy_code" not in columns(e2e.db, "orders")
    assert st["plan"]["expand"]["revisions"] == [EXPAND] and st["plan"]["contract"]["revisions"] == [CONTRACT]
    assert e2e.cluster.job_roles("shop") == ["contract-g2", "migrate-g2", "plan-g2"]
    # While it waited, it named the old version's pods; the contract Job was created after every one terminated.
    waited = e2e.cluster.wait_event("shop", "WaitingForOldVersion")
    assert any(name in waited["message"] for name in old), waited["message"]
    contract_job = "shop-contract-g2"
    assert set(old) <= set(recorder.deleted) and contract_job in recorder.created, (recorder.deleted, recorder.created)
    assert max(recorder.deleted[name] for name in old) < recorder.created[contract_job]
    story = st["contract"]
    assert story["state"] == "Contracted" and story["oldVersionGoneAt"] <= story["contractStartedAt"]
    print(f"expanded at {story['expandedAt']}; last old pod gone at {story['oldVersionGoneAt']} (etcd revision "
          f"{max(recorder.deleted[n] for n in old)}); contract Job started at {story['contractStartedAt']} (etcd "
          f"revision {recorder.created[contract_job]}); contracted at {story['contractedAt']}")
    entry = st["history"][-1]
    assert [(p["part"], p["from"], p["to"]) for p in entry["parts"]] == [("expand", R3, EXPAND),
                                                                         ("contract", EXPAND, CONTRACT)]
    assert all(p["startedAt"] and p["finishedAt"] for p in entry["parts"])
    conds = {x["type"]: x for x in st["conditions"]}
    assert conds[c.EXPANDED]["status"] == conds[c.CONTRACTED]["status"] == "True"

    # After the contract part, a pod of the old version is held, naming the revision it needs.
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-old"}, **template("v1", "web-old", "shop",
                                                                                            R3)}
    body["metadata"] = {**body["metadata"], "name": "web-old"}
    apps.core.create_namespaced_pod(e2e.ns, body)
    pod = wait_for(lambda: next((p for p in apps.pods("app=web-old") if held(p)), None), 30, "web-old held")
    event = wait_for(lambda: next((e for e in apps.events("web-old") if e["reason"] == "Held"), None), 30,
                     "a Held Event on web-old")
    assert "SchemaContracted" in event["message"] and f"needs revision {R3}" in event["message"], event["message"]
    assert f"contract revision {CONTRACT}" in event["message"] and held(pod)
