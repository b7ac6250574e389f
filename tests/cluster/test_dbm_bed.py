"""`kubectl dbm` as a kubectl plugin against the bed: kubectl finds `kubectl-dbm` on PATH and passes it the user's
flags; the plugin reads and annotates with the user's kubeconfig. The resource's status is written here through
its status subresource, as the operator would (the plugin is a client of what the operator writes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from alembic_operator import constants as c
from harness import operator_image, wait_for

pytestmark = pytest.mark.bed

PLAN = {"revisions": ["r2", "r3"], "destructive": ["DROP COLUMN orders.legacy_code (revision r2)"],
        "hash": "sha256:" + "ab" * 32, "fromRevision": "r1", "toRevision": "r3", "generation": 1}


def dbm(bed: Any, namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`kubectl dbm ARGS -n NAMESPACE`, through the real kubectl and its plugin lookup on PATH."""
    from bed.tools import ensure_tools

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    env.pop("KUBECONFIG", None)
    return subprocess.run([str(ensure_tools()["kubectl"]), "dbm", *args, "-n", namespace,
                           f"--kubeconfig={bed.kubeconfig}"], capture_output=True, text=True, env=env, timeout=60,
                          check=False)


@pytest.fixture
def waiting(kube_api: Any, crd: Path, namespace: str) -> dict[str, Any]:
    """dbm/shop waiting for approval of PLAN, with one finished run in its history."""
    from kubernetes import client as k8s

    custom = k8s.CustomObjectsApi(kube_api)
    spec = {"database": {"urlSecretRef": {"name": "db", "key": "url"}}, "migrations": {"image": "shop:1"},
            "targetRevision": "r3", "backup": {"enabled": False}}
    obj = custom.create_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.PLURAL, {
        "apiVersion": c.API_VERSION, "kind": c.KIND, "metadata": {"name": "shop"}, "spec": spec})
    now = "2026-11-27T10:00:00Z"
    obj["status"] = {
        "observedGeneration": 1, "phase": "AwaitingApproval", "currentRevision": "r1", "targetRevision": "r3",
        "message": "the plan destroys data: review it, then approve its hash", "plan": PLAN,
        "conditions": [
            {"type": t, "status": s, "reason": "DestructiveChangesNotApproved", "message": "review it",
             "lastTransitionTime": now, "observedGeneration": 1}
            for t, s in (("Ready", "False"), ("Reconciling", "False"), ("Stalled", "True"),
                         ("ApprovalRequired", "True"))],
        "history": [{"generation": 0, "from": "base", "to": "r1", "result": "Succeeded", "reason": "Migrated",
                     "startedAt": now, "finishedAt": now}],
    }
    written: dict[str, Any] = custom.replace_namespaced_custom_object_status(c.GROUP, c.VERSION, namespace, c.PLURAL,
                                                                              "shop", obj)
    return written


def test_status_plan_history_through_kubectl(bed: Any, namespace: str, waiting: dict[str, Any]) -> None:
    out = dbm(bed, namespace, "status")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[1].split()[:6] == ["shop", "AwaitingApproval", "r1", "r3", "False",
                                                      "DestructiveChangesNotApproved"]
    shown = dbm(bed, namespace, "plan", "shop", "-o", "json")
    assert shown.returncode == 0, shown.stderr
    record = json.loads(shown.stdout)
    assert record["hash"] == PLAN["hash"] and record["waitsForApproval"] and record["revisions"] == ["r2", "r3"]
    text = dbm(bed, namespace, "plan", "shop").stdout
    assert "! DROP COLUMN orders.legacy_code (revision r2)" in text and PLAN["hash"] in text
    history = dbm(bed, namespace, "history", "shop")
    assert history.stdout.splitlines()[1].split()[:5] == ["0", "base", "r1", "Succeeded", "Migrated"]
    missing = dbm(bed, namespace, "plan", "nope")
    assert missing.returncode == 2 and f"dbm/nope not found in namespace {namespace}" in missing.stderr


def test_approve_by_the_hash_shown_and_refuse_a_changed_plan(bed: Any, kube_api: Any, namespace: str,
                                                            waiting: dict[str, Any]) -> None:
    from kubernetes import client as k8s

    custom = k8s.CustomObjectsApi(kube_api)
    stale = dbm(bed, namespace, "approve", "shop", "--hash", "sha256:" + "cd" * 32)
    assert stale.returncode == 2 and "changed since it was shown" in stale.stderr
    blind = dbm(bed, namespace, "approve", "shop")  # no terminal, no hash: never approves blindly
    assert blind.returncode == 2 and "--hash" in blind.stderr
    annotations = custom.get_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.PLURAL, "shop")[
        "metadata"].get("annotations") or {}
    assert c.APPROVE_ANNOTATION not in annotations
    done = dbm(bed, namespace, "approve", "shop", "--hash", PLAN["hash"], "-o", "json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"approved": True, "hash": PLAN["hash"], "changed": True}
    obj = custom.get_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.PLURAL, "shop")
    assert obj["metadata"]["annotations"][c.APPROVE_ANNOTATION] == PLAN["hash"]
    again = dbm(bed, namespace, "approve", "shop", "--hash", PLAN["hash"])
    assert again.returncode == 0 and "already approved" in again.stdout


def test_held_pods_and_a_jobs_logs(bed: Any, kube_api: Any, namespace: str, waiting: dict[str, Any]) -> None:
    from kubernetes import client as k8s

    core, batch = k8s.CoreV1Api(kube_api), k8s.BatchV1Api(kube_api)
    image = operator_image(bed)
    core.create_namespaced_pod(namespace, k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name="web-1", labels={c.WAIT_FOR_LABEL: "shop"}),
        spec=k8s.V1PodSpec(scheduling_gates=[k8s.V1PodSchedulingGate(name=c.SCHEDULING_GATE)],
                           containers=[k8s.V1Container(name="web", image=image, command=["sleep", "60"])])))
    held = dbm(bed, namespace, "held", "-o", "json")
    assert held.returncode == 0, held.stderr
    assert [(r["pod"], r["waitsFor"], r["why"]) for r in json.loads(held.stdout)] == [
        ("web-1", "shop", "AwaitingApproval (DestructiveChangesNotApproved)")]
    labels = {c.OWNER_LABEL: "shop", c.ROLE_LABEL: "migrate", c.GENERATION_LABEL: "1"}
    batch.create_namespaced_job(namespace, k8s.V1Job(
        metadata=k8s.V1ObjectMeta(name="shop-migrate-g1", labels=labels),
        spec=k8s.V1JobSpec(backoff_limit=0, template=k8s.V1PodTemplateSpec(
            metadata=k8s.V1ObjectMeta(labels=labels),
            spec=k8s.V1PodSpec(restart_policy="Never", containers=[k8s.V1Container(
                name="migrate", image=image, command=["echo", "upgrading r1 -> r3"])])))))
    wait_for(lambda: (batch.read_namespaced_job("shop-migrate-g1", namespace).status.succeeded or None), 90,
             "the Job to finish")
    logs = dbm(bed, namespace, "logs", "shop", "--role", "migrate")
    assert logs.returncode == 0, logs.stderr
    assert "==> shop-migrate-g1 / migrate <==\nupgrading r1 -> r3" in logs.stdout
    none = dbm(bed, namespace, "logs", "shop", "--role", "restore")
    assert none.returncode == 2 and "no restore Job of dbm/shop" in none.stderr
