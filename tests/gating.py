"""Pod gating on the bed: an operator process serving the webhook, apps (Deployments...), simulated statuses.

Used by tests/cluster/test_gate_bed.py and tests/bench_gate.py.

``GateOperator`` runs the operator with the webhook listening on 127.0.0.1:<free port> (the bed's API server calls
it there over TLS) and a MutatingWebhookConfiguration of its own name, limited to the test's namespace, so that
tests running side by side never see each other's webhook. ``core=False`` runs only the gating part (no
reconciler): the tests then write the DatabaseMigration's status themselves (``Migration.simulate``), which makes
every case quick and exact; ``core=True`` runs the whole operator for the end-to-end case.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kubernetes import client as k8s

from alembic_operator import constants as c
from bed.controlplane import Bed
from harness import VENV_BIN, Cluster, OperatorProcess, free_port, wait_for

PY = "python3"  # in the pods' image (the bed's Debian Python base)
SLEEP = [PY, "-c", "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(0)); "
         "time.sleep(100000)"]
_POD_IMAGES: dict[str, str] = {}
_BED: list[Bed] = []  # the bed whose registry template() puts the apps' images in (set by GateOperator)


def pod_image(bed: Bed, app: str = "app", version: str = "1") -> str:
    """An image the apps' pods run (Debian's Python, from the bed's registry), under the app's name and version
    so that a rollout changes the image as a real one does."""
    key = f"{bed.dir}:{app}:{version}"
    if key not in _POD_IMAGES:
        from bed import images

        _POD_IMAGES[key] = images.push(images.python_base(), f"{bed.registry}/{app}:{version}", bed.netns_cmd())
    return _POD_IMAGES[key]


class GateOperator(OperatorProcess):
    """The operator with the gating webhook, watching one namespace; ``core`` adds the reconciler."""

    def __init__(self, target: Path | Bed, namespace: str, log_path: Path, core: bool = False,
                 webhook: bool = True) -> None:
        super().__init__(target, [namespace], log_path)
        if isinstance(target, Bed) and target.node == "real":
            _BED[:] = [target]
        self.namespace = namespace
        self.core = core
        self.webhook = webhook
        self.webhook_port = free_port(self.bed)
        self.config_name = f"gate-{namespace}"

    def command(self) -> list[str]:
        """The product's own command line; without ``core``, only its gating part (``--no-reconciler``)."""
        liveness = f"http://127.0.0.1:{self.port}/healthz"
        args = [str(VENV_BIN / "alembic-operator"), "run", "--standalone", "--liveness", liveness,
                "--namespace", self.namespace]
        if not self.core:
            args += ["--no-reconciler"]
        if self.webhook:
            args += ["--webhook-listen", "127.0.0.1", "--webhook-port", str(self.webhook_port),
                     "--webhook-config-name", self.config_name]
        else:
            args += ["--no-webhook"]
        return args

    def environment(self) -> dict[str, str]:
        return {**self.base_env(),
                "ALEMBIC_OPERATOR_WEBHOOK_LISTEN": "127.0.0.1",
                "ALEMBIC_OPERATOR_WEBHOOK_PORT": str(self.webhook_port),
                "ALEMBIC_OPERATOR_WEBHOOK_NAMESPACES": self.namespace,
                "ALEMBIC_OPERATOR_WEBHOOK_CONFIG_NAME": self.config_name,
                "ALEMBIC_OPERATOR_WEBHOOK_ENABLED": "1" if self.webhook else "0"}

    def start(self) -> GateOperator:
        self.spawn(self.command(), self.environment(), note=f": {' '.join(self.command())}")
        wait_for(self.healthy, 60, "the operator's liveness endpoint")
        if self.webhook:
            wait_for(lambda: f"{self.config_name} points at" in self.log(), 30, "the webhook configuration")
        return self


class Migration:
    """One DatabaseMigration whose status the test writes (nothing reconciles it when ``core=False``)."""

    def __init__(self, cluster: Cluster, name: str = "shop", target: str = "r1") -> None:
        self.cluster = cluster
        self.name = name
        cluster.create(name, {"database": {"urlSecretRef": {"name": "db", "key": "url"}},
                              "migrations": {"image": "bed.local/app:1"}, "targetRevision": target,
                              "backup": {"enabled": False}})

    @property
    def generation(self) -> int:
        return int(self.cluster.get(self.name)["metadata"]["generation"])

    def retarget(self, target: str) -> int:
        """Change spec.targetRevision (a new generation); returns the generation."""
        return int(self.cluster.patch(self.name, {"spec": {"targetRevision": target}})["metadata"]["generation"])

    def simulate(self, state: str, current: str | None, target: str, lineage: Iterable[str] = (),
                 revisions: Iterable[str] = (), start: str | None = None, message: str = "") -> dict[str, Any]:
        """Write a status as the reconciler would: state is ready, migrating or failed (rolled back).

        ``revisions`` (the plan, in the order it runs, after ``start``) is what tells descendants apart until the
        CRD carries ``status.plan.lineage`` (pruned by the API server before that).
        """
        gen = self.generation
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        kind = {"ready": ("True", "False", "False"), "migrating": ("False", "True", "False"),
                "failed": ("False", "False", "True")}[state]
        phase = {"ready": "Succeeded", "migrating": "Migrating", "failed": "Failed"}[state]
        reason = {"ready": "Migrated", "migrating": "Migrating", "failed": "JobFailed"}[state]
        message = message or {"ready": f"the database is at {target}", "migrating": f"migrating to {target}",
                              "failed": f"migrate Job failed; rolled back to {current}"}[state]
        conditions = [{"type": t, "status": v, "observedGeneration": gen, "reason": reason, "message": message,
                       "lastTransitionTime": now} for t, v in zip((c.READY, c.RECONCILING, c.STALLED), kind,
                                                                  strict=True)]
        revisions = list(revisions)
        status = {"observedGeneration": gen, "phase": phase, "message": message, "currentRevision": current,
                  "targetRevision": target, "conditions": conditions,
                  "plan": {"revisions": revisions, "lineage": list(lineage), "toRevision": target,
                           "fromRevision": start}}
        return dict(self.cluster.custom.patch_namespaced_custom_object_status(
            c.GROUP, c.VERSION, self.cluster.ns, c.PLURAL, self.name, {"status": status}))

    def status(self) -> dict[str, Any]:
        return dict(self.cluster.get(self.name).get("status") or {})


# --- apps ---------------------------------------------------------------------------------------------------------


def template(version: str, app: str, wait_for: str | None = None, revision: str | None = None,
             gated: bool = False) -> dict[str, Any]:
    labels = {"app": app, "version": version}
    annotations: dict[str, str] = {}
    if wait_for:
        labels[c.WAIT_FOR_LABEL] = wait_for
    if revision:
        annotations[c.REVISION_ANNOTATION] = revision
    image = pod_image(_BED[0], app, version) if _BED else f"bed.local/{app}:{version}"
    spec: dict[str, Any] = {"containers": [{"name": "app", "image": image, "command": SLEEP}],
                            "terminationGracePeriodSeconds": 2}
    if gated:
        spec["schedulingGates"] = [{"name": c.SCHEDULING_GATE}]
    return {"metadata": {"labels": labels, "annotations": annotations}, "spec": spec}


def deployment(name: str, replicas: int, tmpl: dict[str, Any], progress_deadline: int = 600) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": tmpl["metadata"]["labels"]["app"]}},
                     "progressDeadlineSeconds": progress_deadline, "template": tmpl}}


class Apps:
    """Workloads and pods of one namespace, as plain dicts."""

    def __init__(self, api: k8s.ApiClient, namespace: str) -> None:
        self.api = api
        self.ns = namespace
        self.core = k8s.CoreV1Api(api)
        self.apps = k8s.AppsV1Api(api)
        self.batch = k8s.BatchV1Api(api)

    def pods(self, selector: str = "") -> list[dict[str, Any]]:
        items = self.core.list_namespaced_pod(self.ns, label_selector=selector).items
        return [self.api.sanitize_for_serialization(p) for p in items
                if not (p.metadata and p.metadata.deletion_timestamp)]

    def events(self, name: str) -> list[dict[str, Any]]:
        items = self.core.list_namespaced_event(self.ns).items
        return [e for e in (self.api.sanitize_for_serialization(x) for x in items)
                if e["involvedObject"].get("name") == name]

    def deployment_status(self, name: str) -> dict[str, Any]:
        obj = self.api.sanitize_for_serialization(self.apps.read_namespaced_deployment(name, self.ns))
        return dict(obj.get("status") or {})

    def rolled_out(self, name: str, replicas: int, version: str) -> bool:
        st = self.deployment_status(name)
        pods = self.pods(f"app={name}")
        return (st.get("updatedReplicas") == replicas and st.get("availableReplicas") == replicas
                and st.get("replicas") == replicas and len(pods) == replicas
                and all(p["metadata"]["labels"].get("version") == version and running(p) for p in pods))


def held(pod: dict[str, Any]) -> bool:
    return any(g.get("name") == c.SCHEDULING_GATE for g in pod["spec"].get("schedulingGates") or [])


def running(pod: dict[str, Any]) -> bool:
    return bool(pod.get("status", {}).get("phase") == "Running")


def scheduling_gated(pod: dict[str, Any]) -> bool:
    return any(x.get("type") == "PodScheduled" and x.get("reason") == "SchedulingGated"
               for x in pod.get("status", {}).get("conditions") or [])


def remove_webhook_configuration(api: k8s.ApiClient, name: str) -> None:
    try:
        k8s.AdmissionregistrationV1Api(api).delete_mutating_webhook_configuration(name)
    except k8s.ApiException as err:
        if err.status != 404:
            raise
