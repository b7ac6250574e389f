"""Holding an app's new pods until the schema is ready, on the bed: the API server calls the operator's webhook over
TLS, and kube-scheduler binds only ungated pods.

Most cases run the gating part of the operator alone and write the DatabaseMigration's status themselves (the
reconciler has its own tests): they are exact about timing and quick. The last one runs the whole operator with a
real PostgreSQL database and a real Alembic project.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from alembic_operator import constants as c
from bed.controlplane import Bed
from bed.postgres import Database
from e2e import APPS_ROOT, BASE_REVISIONS, E2E, FAIL, FAILING, R3, SLOW, backups_dir, crd, revision, slow
from gating import (
    PY,
    Apps,
    GateOperator,
    Migration,
    deployment,
    held,
    remove_webhook_configuration,
    running,
    scheduling_gated,
    template,
)
from harness import Cluster, wait_for

pytestmark = pytest.mark.bed
__all__ = ["crd"]  # the fixture


@dataclass
class Gate:
    bed: Bed
    api: k8s.ApiClient
    cluster: Cluster
    apps: Apps
    operator: GateOperator
    tmp: Path

    @property
    def ns(self) -> str:
        return self.cluster.ns

    def restart(self, webhook: bool = True) -> GateOperator:
        self.operator.stop()
        old = self.operator
        self.operator = GateOperator(self.bed, self.ns, self.tmp / "operator.log", webhook=webhook)
        self.operator.starts = old.starts
        if not webhook:
            remove_webhook_configuration(self.api, old.config_name)
        return self.operator.start()

    def deploy(self, name: str, replicas: int, tmpl: dict[str, Any]) -> None:
        self.apps.apps.create_namespaced_deployment(self.ns, deployment(name, replicas, tmpl))

    def set_template(self, name: str, tmpl: dict[str, Any]) -> None:
        self.apps.apps.patch_namespaced_deployment(name, self.ns, {"spec": {"template": tmpl}})

    def held_pods(self, selector: str, count: int, timeout: float = 30) -> list[dict[str, Any]]:
        def check() -> list[dict[str, Any]] | None:
            pods = self.apps.pods(selector)
            ok = len(pods) == count and all(held(p) and scheduling_gated(p) and not p["spec"].get("nodeName")
                                            for p in pods)
            return pods if ok else None

        try:
            return wait_for(check, timeout, f"{count} held pod(s) {selector}")
        except AssertionError as err:
            seen = [(p["metadata"]["name"], held(p), p["status"].get("phase")) for p in self.apps.pods(selector)]
            raise AssertionError(f"{err}\npods (name, held, phase): {seen}\noperator log:\n"
                                 f"{self.operator.log()[-3000:]}") from None

    def released(self, selector: str, timeout: float = 30) -> list[dict[str, Any]]:
        return wait_for(lambda: (pods := self.apps.pods(selector)) and not any(held(p) for p in pods) and pods,
                        timeout, f"pods {selector} released")

    def held_count(self, name: str, count: int, timeout: float = 15) -> None:
        wait_for(lambda: (self.cluster.get(name).get("status") or {}).get("heldPods") == count, timeout,
                 f"status.heldPods == {count}")

    def reasons(self, name: str) -> list[str]:
        return [e["reason"] for e in self.apps.events(name)]


@pytest.fixture
def gate(bed: Bed, crd: Path, kube_api: k8s.ApiClient, namespace: str, tmp_path: Path) -> Iterator[Gate]:
    cluster = Cluster(kube_api, namespace)
    operator = GateOperator(bed, namespace, tmp_path / "operator.log")
    env = Gate(bed=bed, api=kube_api, cluster=cluster, apps=Apps(kube_api, namespace), operator=operator,
               tmp=tmp_path)
    operator.start()
    try:
        yield env
    finally:
        env.operator.stop()
        remove_webhook_configuration(kube_api, env.operator.config_name)
        for obj in cluster.custom.list_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.PLURAL)["items"]:
            cluster.patch(obj["metadata"]["name"], {"metadata": {"finalizers": None}})


def migrating_to_r2(g: Gate) -> Migration:
    """shop was Ready at r1; its target is now r2 and the migration runs."""
    m = Migration(g.cluster, target="r1")
    m.simulate("ready", "r1", "r1", revisions=["r1"], start="base")
    m.retarget("r2")
    m.simulate("migrating", "r1", "r2", lineage=["r2", "r1"], revisions=["r2"], start="r1")
    return m


def rollout_to_v2(g: Gate) -> tuple[Migration, set[str]]:
    """Deployment web at v1 (2 replicas, running), then its template at v2, which needs r2, during the migration."""
    m = Migration(g.cluster, target="r1")
    m.simulate("ready", "r1", "r1", revisions=["r1"], start="base")
    g.deploy("web", 2, template("v1", "web"))
    wait_for(lambda: g.apps.rolled_out("web", 2, "v1"), 60, "web v1 rolled out")
    v1 = {p["metadata"]["name"] for p in g.apps.pods("app=web")}
    m.retarget("r2")
    m.simulate("migrating", "r1", "r2", lineage=["r2", "r1"], revisions=["r2"], start="r1")
    g.set_template("web", template("v2", "web", wait_for="shop", revision="r2"))
    g.held_pods("app=web,version=v2", 1)  # maxSurge 1, maxUnavailable 0: one new pod, held
    return m, v1


def v1_serving(g: Gate, v1: set[str]) -> None:
    pods = g.apps.pods("app=web,version=v1")
    assert {p["metadata"]["name"] for p in pods} == v1
    assert all(running(p) for p in pods), [p["status"].get("phase") for p in pods]


def test_rollout_is_held_until_the_migration_then_completes(gate: Gate) -> None:
    m, v1 = rollout_to_v2(gate)
    time.sleep(2)
    (new,) = gate.held_pods("app=web,version=v2", 1)
    v1_serving(gate, v1)
    gate.held_count("shop", 1)
    name = new["metadata"]["name"]
    wait_for(lambda: "Held" in gate.reasons(name), 10, "a Held Event on the pod")
    held_event = next(e for e in gate.apps.events(name) if e["reason"] == "Held")
    assert "r2" in held_event["message"] and "shop" in held_event["message"], held_event["message"]
    wait_for(lambda: "PodsHeld" in gate.reasons("shop"), 10, "a PodsHeld Event on the DatabaseMigration")

    ready = time.monotonic()
    m.simulate("ready", "r2", "r2", lineage=["r2", "r1"], revisions=["r2"], start="r1")
    gate.released("app=web,version=v2", timeout=10)
    print(f"released {time.monotonic() - ready:.3f}s after Ready")
    wait_for(lambda: gate.apps.rolled_out("web", 2, "v2"), 90, "web v2 rolled out")
    gate.held_count("shop", 0)
    assert "Released" in gate.reasons(name)
    assert "PodsReleased" in gate.reasons("shop")


def test_failed_migration_keeps_new_pods_held_and_old_serving_until_fixed(gate: Gate) -> None:
    m, v1 = rollout_to_v2(gate)
    m.simulate("failed", "r1", "r2", lineage=["r2", "r1"], revisions=["r2"], start="r1",
               message="migrate Job failed: check constraint violated; rolled back to r1")
    time.sleep(3)
    gate.held_pods("app=web,version=v2", 1, timeout=1)
    v1_serving(gate, v1)
    # The fix: a new target past r2 (the app needs r2 "or a descendant"); Ready there releases the pods.
    m.retarget("r3")
    m.simulate("migrating", "r1", "r3", lineage=["r3", "r2", "r1"], revisions=["r2", "r3"], start="r1")
    time.sleep(1)
    gate.held_pods("app=web,version=v2", 1, timeout=1)
    m.simulate("ready", "r3", "r3", lineage=["r3", "r2", "r1"], revisions=["r2", "r3"], start="r1")
    gate.released("app=web,version=v2", timeout=10)
    wait_for(lambda: gate.apps.rolled_out("web", 2, "v2"), 90, "web v2 rolled out")


def test_old_version_scale_up_is_not_held_and_unlabelled_pods_are_untouched(gate: Gate) -> None:
    migrating_to_r2(gate)
    gate.deploy("old", 1, template("v1", "old", wait_for="shop", revision="r1"))  # the old version says r1
    gate.deploy("plain", 1, template("v1", "plain"))
    gate.deploy("new", 1, template("v2", "new", wait_for="shop", revision="r2"))
    gate.held_pods("app=new", 1)
    for name in ("old", "plain"):
        gate.apps.apps.patch_namespaced_deployment_scale(name, gate.ns, {"spec": {"replicas": 3}})
    for name in ("old", "plain"):
        wait_for(lambda n=name: gate.apps.rolled_out(n, 3, "v1"), 60, f"{name} scaled to 3")  # type: ignore[misc]
    assert not any(held(p) for p in gate.apps.pods("app in (old,plain)"))
    gate.held_pods("app=new", 1, timeout=1)
    gate.held_count("shop", 1)


def test_statefulset_job_and_bare_pod_are_held_then_released(gate: Gate) -> None:
    m = migrating_to_r2(gate)
    tmpl = template("v2", "sts", wait_for="shop")  # no revision: Ready at the target
    gate.apps.apps.create_namespaced_stateful_set(gate.ns, {
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "sts"},
        "spec": {"replicas": 1, "serviceName": "sts", "selector": {"matchLabels": {"app": "sts"}}, "template": tmpl}})
    job_tmpl = template("v2", "job", wait_for="shop", revision="r2")
    job_tmpl["spec"].update(restartPolicy="Never", containers=[
        {"name": "app", "image": job_tmpl["spec"]["containers"][0]["image"],
         "command": [PY, "-c", "print('schema ready')"]}])
    gate.apps.batch.create_namespaced_job(gate.ns, {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "job"},
        "spec": {"backoffLimit": 0, "template": job_tmpl}})
    bare = template("v2", "bare", wait_for="shop")
    gate.apps.core.create_namespaced_pod(gate.ns, {"apiVersion": "v1", "kind": "Pod",
                                                   "metadata": {"name": "bare", **bare["metadata"]},
                                                   "spec": bare["spec"]})
    gate.held_pods("app in (sts,job,bare)", 3)
    gate.held_count("shop", 3)
    m.simulate("ready", "r2", "r2", lineage=["r2", "r1"], revisions=["r2"], start="r1")
    gate.released("app in (sts,job,bare)", timeout=10)
    wait_for(lambda: (j := gate.apps.batch.read_namespaced_job("job", gate.ns)).status and j.status.succeeded, 60,
             "the Job to complete")
    wait_for(lambda: all(running(p) for p in gate.apps.pods("app in (sts,bare)")), 60, "sts and bare running")


def test_operator_down_refuses_labelled_pods_and_a_restart_releases_held_ones(gate: Gate) -> None:
    m = migrating_to_r2(gate)
    gate.deploy("web", 2, template("v2", "web", wait_for="shop", revision="r2"))
    gate.held_pods("app=web", 2)
    gate.operator.kill()  # down without a clean stop (which removes a local `run`'s configuration: test_run_bed.py)

    labelled = template("v2", "late", wait_for="shop", revision="r2")
    with pytest.raises(k8s.ApiException) as refused:
        gate.apps.core.create_namespaced_pod(gate.ns, {"apiVersion": "v1", "kind": "Pod",
                                                       "metadata": {"name": "late", **labelled["metadata"]},
                                                       "spec": labelled["spec"]})
    message = str(refused.value.body)
    print(message)
    assert refused.value.status == 500
    assert 'failed calling webhook \\"schema-gate.migrations.alembic-operator.io\\"' in message or (
        'failed calling webhook "schema-gate.migrations.alembic-operator.io"' in message), message
    plain = template("v1", "plain")
    gate.apps.core.create_namespaced_pod(gate.ns, {"apiVersion": "v1", "kind": "Pod",
                                                   "metadata": {"name": "plain", **plain["metadata"]},
                                                   "spec": plain["spec"]})
    wait_for(lambda: running(gate.apps.pods("app=plain")[0]), 30, "the unlabelled pod running")

    m.simulate("ready", "r2", "r2", lineage=["r2", "r1"], revisions=["r2"], start="r1")
    time.sleep(2)
    gate.held_pods("app=web", 2, timeout=1)  # nobody to release them
    gate.operator.start()
    gate.released("app=web", timeout=20)
    wait_for(lambda: gate.apps.rolled_out("web", 2, "v2"), 60, "web rolled out")
    gate.held_count("shop", 0)


def test_pods_gated_in_their_template_are_released_without_the_webhook(gate: Gate) -> None:
    gate.restart(webhook=False)
    m = migrating_to_r2(gate)
    gate.deploy("web", 2, template("v2", "web", wait_for="shop", revision="r2", gated=True))
    gate.held_pods("app=web", 2)
    gate.held_count("shop", 2)
    m.simulate("ready", "r2", "r2", lineage=["r2", "r1"], revisions=["r2"], start="r1")
    gate.released("app=web", timeout=10)
    wait_for(lambda: gate.apps.rolled_out("web", 2, "v2"), 60, "web rolled out")


def test_unknown_revision_is_held_and_said_so(gate: Gate) -> None:
    m = Migration(gate.cluster, target="r1")
    m.simulate("ready", "r1", "r1", revisions=["r1"], start="base")
    bad = template("v2", "typo", wait_for="shop", revision="deadbeef0000")
    gate.apps.core.create_namespaced_pod(gate.ns, {"apiVersion": "v1", "kind": "Pod",
                                                   "metadata": {"name": "typo", **bad["metadata"]},
                                                   "spec": bad["spec"]})
    gate.held_pods("app=typo", 1)
    wait_for(lambda: "Held" in gate.reasons("typo"), 10, "a Held Event")
    event = next(e for e in gate.apps.events("typo") if e["reason"] == "Held")
    assert event["type"] == "Warning" and "unknown" in event["message"] and "deadbeef0000" in event["message"]
    wait_for(lambda: "UnknownRevision" in gate.reasons("shop"), 10, "an UnknownRevision Event on shop")


# --- the whole operator, a real database ---------------------------------------------------------------------------


@pytest.fixture
def gate_e2e(bed: Bed, crd: Path, kube_api: k8s.ApiClient, namespace: str, database: Database,
             postgres_in_bed: tuple[str, int], tmp_path: Path) -> Iterator[tuple[E2E, Gate]]:
    backups = backups_dir(bed, namespace)
    cluster = Cluster(kube_api, namespace)
    pod_db = database.at(*postgres_in_bed)
    cluster.secret("db", {"url": pod_db.url})
    operator = GateOperator(bed, namespace, tmp_path / "operator.log", core=True)
    APPS_ROOT.mkdir(parents=True, exist_ok=True)
    apps = Path(tempfile.mkdtemp(prefix="app-", dir=APPS_ROOT))
    env = E2E(bed=bed, cluster=cluster, db=database, operator=operator, tmp=tmp_path, backups=backups, apps=apps,
              pod_db=pod_db)
    g = Gate(bed=bed, api=kube_api, cluster=cluster, apps=Apps(kube_api, namespace), operator=operator, tmp=tmp_path)
    operator.start()
    try:
        yield env, g
        env.leak_check()
    finally:
        operator.stop()
        remove_webhook_configuration(kube_api, operator.config_name)
        shutil.rmtree(apps, ignore_errors=True)
        shutil.rmtree(backups, ignore_errors=True)
        for obj in cluster.custom.list_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.PLURAL)["items"]:
            cluster.patch(obj["metadata"]["name"], {"metadata": {"finalizers": None}})


def test_e2e_rollout_waits_for_the_real_migration_and_a_failed_one_keeps_holding(
        gate_e2e: tuple[E2E, Gate]) -> None:
    e2e, g = gate_e2e
    project = e2e.project([*BASE_REVISIONS, slow(SLOW, 4)])
    e2e.cluster.create("shop", e2e.spec(project, target=R3))
    e2e.cluster.wait_condition("shop", c.READY, timeout=180)
    e2e.seed()  # an order with total 0: FAILING's check constraint cannot hold
    g.deploy("web", 2, template("v1", "web"))
    wait_for(lambda: g.apps.rolled_out("web", 2, "v1"), 60, "web v1 rolled out")
    v1 = {p["metadata"]["name"] for p in g.apps.pods("app=web")}

    # v2 needs SLOW: its pods wait while the operator plans, backs up and migrates.
    e2e.cluster.patch("shop", {"spec": {"targetRevision": SLOW}})
    g.set_template("web", template("v2", "web", wait_for="shop", revision=SLOW))
    g.held_pods("app=web,version=v2", 1)
    v1_serving(g, v1)
    e2e.cluster.wait_condition("shop", c.READY, timeout=180)
    ready = time.monotonic()
    g.released("app=web,version=v2", timeout=10)
    print(f"released {time.monotonic() - ready:.3f}s after Ready was seen by the test")
    assert revision(e2e.db) == SLOW
    wait_for(lambda: g.apps.rolled_out("web", 2, "v2"), 90, "web v2 rolled out")
    v2 = {p["metadata"]["name"] for p in g.apps.pods("app=web")}

    # v3 needs FAILING, whose migration fails and is rolled back: v3 stays held, v2 keeps serving.
    failing = e2e.project([*BASE_REVISIONS, slow(SLOW, 4), FAILING], name="app-v3")
    e2e.cluster.patch("shop", {"spec": {"targetRevision": FAIL, "migrations": {"image": e2e.images[failing]}}})
    g.set_template("web", template("v3", "web", wait_for="shop", revision=FAIL))
    g.held_pods("app=web,version=v3", 1)
    e2e.cluster.wait_phase("shop", "Failed", timeout=180)
    assert revision(e2e.db) == SLOW
    time.sleep(2)
    g.held_pods("app=web,version=v3", 1, timeout=1)
    assert {p["metadata"]["name"] for p in g.apps.pods("app=web,version=v2")} == v2
    assert all(running(p) for p in g.apps.pods("app=web,version=v2"))
    g.held_count("shop", 1)
