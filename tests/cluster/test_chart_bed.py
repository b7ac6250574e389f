"""The bed half of test_chart.py (a real node): see its docstring."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from alembic_operator import constants as c
from chart import CHART, CLUSTER_ONLY, NAMESPACED_ONLY, PKG, Rule, run_helm, used_by_the_code
from harness import wait_for


@pytest.fixture(scope="module")
def operator_ref(bed: Any) -> str:
    """The project's Dockerfile built with the bed's build arguments (cached by content), pushed to the bed's
    registry: ``127.0.0.1:5000/alembic-operator:dev@sha256:...``."""
    from bed import images

    return str(images.push(images.operator_image(), f"{bed.registry}/alembic-operator:dev", bed.netns_cmd()))


def image_values(ref: str) -> dict[str, str]:
    """The chart's image values for a pushed reference (repository + digest: the pods run exactly that image)."""
    name, _, digest = ref.partition("@")
    return {"repository": name.rsplit(":", 1)[0], "digest": digest}


def _operator_serves_the_webhook() -> bool:
    """The operator registers the webhook's Kopf handler and can leave the configuration to the chart."""
    from alembic_operator import app
    from alembic_operator.config import OperatorConfig

    registry, _operator = app.registry(OperatorConfig())  # what `alembic-operator run` registers
    return bool(registry._webhooks.get_all_handlers())


def _operator_serves_metrics() -> bool:
    return any("metrics.serve(" in p.read_text() for p in PKG.glob("*.py") if p.name != "metrics.py")


@pytest.fixture
def app_namespace(kube_api: Any) -> Iterator[str]:
    from kubernetes import client as k8s

    name = f"t-chart-app-{uuid.uuid4().hex[:6]}"
    core = k8s.CoreV1Api(kube_api)
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        with contextlib.suppress(k8s.ApiException):
            core.delete_namespace(name, propagation_policy="Background")


def _adopt_crd(kubectl: Any, release: str, namespace: str) -> None:
    """A CRD applied with kubectl (e.g. by the end-to-end tests) is adopted by the release, as a user would."""
    crd = f"customresourcedefinitions/{c.PLURAL}.{c.GROUP}"
    if kubectl("get", crd).returncode != 0:
        return
    kubectl("label", "--overwrite", crd, "app.kubernetes.io/managed-by=Helm", check=True)
    kubectl("annotate", "--overwrite", crd, f"meta.helm.sh/release-name={release}",
            f"meta.helm.sh/release-namespace={namespace}", check=True)


def _pod_log(kubectl: Any, namespace: str, pod: str) -> str:
    proc = kubectl("logs", "-n", namespace, pod, "--tail=-1")
    return str(proc.stdout or proc.stderr)


def _wait_ready(custom: Any, namespace: str, name: str, timeout: float) -> dict[str, Any]:
    """The resource's status once Ready; fails at once when it is Stalled (nothing would change any more)."""
    def settled() -> dict[str, Any] | None:
        obj = custom.get_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.PLURAL, name)
        conds = {x["type"]: x for x in (obj.get("status") or {}).get("conditions") or []}
        if any(conds.get(t, {}).get("status") == "True" for t in ("Stalled",)) or \
                conds.get("Ready", {}).get("status") == "True":
            return dict(obj["status"])
        return None

    return wait_for(settled, timeout, f"DatabaseMigration {namespace}/{name} Ready (or Stalled)")


@pytest.mark.bed
def test_install_migrate_upgrade_uninstall(bed: Any, kube_api: Any, namespace: str, app_namespace: str,
                                           kubectl: Any, database: Any, postgres_in_bed: tuple[str, int],
                                           operator_ref: str, tmp_path: Path) -> None:
    from kubernetes import client as k8s

    from apps import Rev, make_project
    from bed import images
    from bed.volumes import writable_claim

    release = "ao"
    kubeconfig = bed.kubeconfig
    webhook_on = _operator_serves_the_webhook()
    # The webhook through the chart's own Service: the API server reaches it via kube-proxy (endpoint routing).
    values = {
        "image": image_values(operator_ref),
        "replicaCount": 1,
        "watchNamespaces": [app_namespace],
        "startupProbe": {"periodSeconds": 1, "failureThreshold": 120},
        "readinessProbe": {"periodSeconds": 2},
        "webhook": {"enabled": webhook_on},
    }
    values_file = tmp_path / "values.json"
    values_file.write_text(json.dumps(values))
    _adopt_crd(kubectl, release, namespace)
    run_helm("install", release, str(CHART), "-n", namespace, "-f", str(values_file), "--wait", "--timeout", "180s",
             kubeconfig=kubeconfig)
    installed = True
    core = k8s.CoreV1Api(kube_api)
    custom = k8s.CustomObjectsApi(kube_api)
    pod_name = "ao-alembic-operator-0"
    try:
        # The operator pod: Ready through the probes, priority = its ordinal, in the KopfPeering of the namespace.
        pod = core.read_namespaced_pod(pod_name, namespace)
        assert any(x.type == "Ready" and x.status == "True" for x in pod.status.conditions or [])
        assert pod.metadata.labels["apps.kubernetes.io/pod-index"] == "0"
        assert pod.spec.service_account_name == "ao-alembic-operator"
        assert pod.status.container_statuses[0].image_id.endswith(operator_ref.partition("@")[2])
        peering = wait_for(lambda: (custom.get_namespaced_custom_object("kopf.dev", "v1", app_namespace,
                                                                     "kopfpeerings", "ao-alembic-operator")
                                 .get("status") or {}).get(pod_name), 60, "the operator in the KopfPeering")
        assert peering["priority"] == 0
        # runc enforces the chart's securityContext: the image's user, a read-only root filesystem.
        probe = kubectl("exec", "-n", namespace, pod_name, "--", "sh", "-c",
                        "id -u; id -g; touch /opt/venv/x 2>&1; touch $TMPDIR/x && echo scratch-ok")
        assert probe.returncode == 0, probe.stderr
        uid, gid, *rest = probe.stdout.splitlines()
        assert (uid, gid) == ("65532", "65532")
        assert "Read-only file system" in "\n".join(rest) and rest[-1] == "scratch-ok", probe.stdout
        # ... and it runs this checkout's code (a stale image layer would not show anywhere else).
        script = ("import alembic_operator, hashlib, json, pathlib; d = pathlib.Path(alembic_operator.__file__).parent;"
                  " print(json.dumps({p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in d.glob('*.py')}))")
        code = kubectl("exec", "-n", namespace, pod_name, "--", "python", "-c", script)
        assert code.returncode == 0, code.stderr
        assert json.loads(code.stdout) == {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                                           for p in PKG.glob("*.py")}, "the operator image is stale"

        # A DatabaseMigration in the watched namespace goes Ready: the migrations in an app image, the database as
        # the pods see it, backups on a PersistentVolumeClaim.
        project = make_project(tmp_path / "app", [
            Rev("a1a1a1a1a101", upgrade=['op.create_table("t", sa.Column("id", sa.Integer, primary_key=True))'],
                downgrade=['op.drop_table("t")'])])
        app_ref = images.app_image(project.parent, push_to=f"{bed.registry}/apps/chart", netns_cmd=bed.netns_cmd())
        backups = writable_claim(bed, core, app_namespace, "backups")  # fsGroup does not apply to hostPath PVs
        url = database.at(*postgres_in_bed).url
        core.create_namespaced_secret(app_namespace, k8s.V1Secret(metadata=k8s.V1ObjectMeta(name="db"),
                                                                  string_data={"url": url}))
        spec = {"database": {"urlSecretRef": {"name": "db", "key": "url"}},
                "migrations": {"image": app_ref, "workingDir": images.APP_DIR},
                "targetRevision": "head",
                "backup": {"volume": {"persistentVolumeClaim": {"claimName": "backups"}}}}
        custom.create_namespaced_custom_object(c.GROUP, c.VERSION, app_namespace, c.PLURAL, {
            "apiVersion": c.API_VERSION, "kind": c.KIND, "metadata": {"name": "shop"}, "spec": spec})
        status = _wait_ready(custom, app_namespace, "shop", 240)
        assert status.get("currentRevision") == "a1a1a1a1a101", (
            f"{json.dumps(status)}\n{_pod_log(kubectl, namespace, pod_name)[-3000:]}")
        dumps = list(backups.rglob("*.dump"))
        assert dumps, f"no backup was written in {backups}"

        log = _pod_log(kubectl, namespace, pod_name)
        # Kopf's scan of namespaces and CRDs is refused (Roles only, by design) and logged; nothing else may be.
        forbidden = [line for line in log.splitlines() if re.search(r"\b403\b|[Ff]orbidden", line)
                     and not re.search(r"GET \S+/(api/v1/namespaces|customresourcedefinitions) ->", line)]
        assert not forbidden, "\n".join(forbidden[:10])

        if _operator_serves_metrics():  # through the API server's pod proxy (the pod IP is inside the bed)
            scraped = kubectl("get", "--raw", f"/api/v1/namespaces/{namespace}/pods/{pod_name}:9090/proxy/metrics")
            assert "alembic_operator_build_info" in scraped.stdout, scraped.stderr

        if webhook_on:
            def make_pod(name: str, wait_for: str) -> k8s.V1Pod:
                return core.create_namespaced_pod(app_namespace, k8s.V1Pod(
                    metadata=k8s.V1ObjectMeta(name=name, labels={c.WAIT_FOR_LABEL: wait_for}),
                    spec=k8s.V1PodSpec(termination_grace_period_seconds=0, containers=[
                        k8s.V1Container(name="app", image=app_ref, command=["sleep", "300"])])))

            held = make_pod("held", "not-there")  # the API server called the webhook via its Service, over TLS
            assert [g.name for g in held.spec.scheduling_gates or []] == [c.SCHEDULING_GATE]
            free = make_pod("free", "shop")  # Ready at its target: not held
            assert not free.spec.scheduling_gates

        # A fresh DatabaseMigration in a namespace nobody watches reads InProgress (kstatus) at once: the CRD default.
        custom.create_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.PLURAL, {
            "apiVersion": c.API_VERSION, "kind": c.KIND, "metadata": {"name": "unwatched"}, "spec": spec})
        fresh = custom.get_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.PLURAL, "unwatched")
        assert fresh["status"]["observedGeneration"] == -1 != fresh["metadata"]["generation"]

        # helm upgrade: a new pod template rolls the pod; the webhook certificate is kept (lookup).
        secret_before = core.read_namespaced_secret("ao-alembic-operator-webhook-tls", namespace).data \
            if webhook_on else None
        old_uid = pod.metadata.uid
        run_helm("upgrade", release, str(CHART), "-n", namespace, "-f", str(values_file), "--set",
                 "podAnnotations.rollout=two", "--wait", "--timeout", "180s", kubeconfig=kubeconfig)

        def rolled() -> bool:
            try:
                new = core.read_namespaced_pod(pod_name, namespace)
            except k8s.ApiException:
                return False
            return new.metadata.uid != old_uid and any(
                x.type == "Ready" and x.status == "True" for x in new.status.conditions or [])

        wait_for(rolled, 120, "the upgraded operator pod to be Ready")
        if webhook_on:
            assert core.read_namespaced_secret("ao-alembic-operator-webhook-tls", namespace).data == secret_before
        ready = kubectl("wait", "-n", app_namespace, "--for=condition=Ready", "dbm/shop", "--timeout=60s")
        assert ready.returncode == 0, ready.stderr

        # helm uninstall: the operator goes, the CRD, the DatabaseMigration and the backups stay.
        run_helm("uninstall", release, "-n", namespace, "--wait", "--timeout", "120s", kubeconfig=kubeconfig)
        installed = False
        assert kubectl("get", f"crd/{c.PLURAL}.{c.GROUP}").returncode == 0
        assert custom.get_namespaced_custom_object(c.GROUP, c.VERSION, app_namespace, c.PLURAL, "shop")
        assert all(d.exists() for d in dumps)
        assert kubectl("get", "statefulset", "-n", namespace, "-o", "name").stdout.strip() == ""
        assert kubectl("get", "mutatingwebhookconfiguration", f"{namespace}-ao-alembic-operator").returncode != 0
    finally:
        if installed:
            run_helm("uninstall", release, "-n", namespace, "--wait", "--timeout", "120s", check=False,
                     kubeconfig=kubeconfig)
        for ns in (app_namespace, namespace):  # nothing runs our finalizer any more: let the namespaces go
            items = kubectl("get", "dbm", "-n", ns, "-o", "name").stdout.split()
            for item in items:
                kubectl("patch", "-n", ns, item, "--type=merge", "-p", '{"metadata":{"finalizers":null}}')


def _can_i_list(kubectl: Any, sa: str, namespace: str) -> set[Rule]:
    """What `kubectl auth can-i --list` shows, as JSON: a SelfSubjectRulesReview made as the ServiceAccount."""
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview",
              "spec": {"namespace": namespace}}
    proc = kubectl("create", f"--as={sa}", "--validate=false", "-o", "json", "-f", "-", input=json.dumps(review))
    assert proc.returncode == 0, proc.stderr
    rules = json.loads(proc.stdout)["status"].get("resourceRules") or []
    out: set[Rule] = set()
    for rule in rules:
        for group in rule.get("apiGroups") or [""]:
            for resource in rule.get("resources") or []:
                for verb in rule.get("verbs") or []:
                    out.add((group, resource, verb))
    return out


def _can_i(kubectl: Any, sa: str, verb: str, resource: str, namespace: str | None) -> bool:
    """`kubectl auth can-i VERB RESOURCE[.GROUP][/SUBRESOURCE]` as the ServiceAccount."""
    scope = ["-n", namespace] if namespace else []
    name, _, sub = resource.partition("/")
    proc = kubectl("auth", "can-i", verb, name, f"--as={sa}", *scope, *([f"--subresource={sub}"] if sub else []))
    return proc.stdout.strip() == "yes"


def _resource_arg(group: str, resource: str) -> str:
    name, _, sub = resource.partition("/")
    full = f"{name}.{group}" if group else name
    return f"{full}/{sub}" if sub else full


@pytest.mark.bed
@pytest.mark.parametrize("mode", ["namespaced", "cluster"])
def test_rbac_grants_exactly_what_the_operator_uses(bed: Any, namespace: str, app_namespace: str, kubectl: Any,
                                                    mode: str, tmp_path: Path) -> None:
    """`kubectl auth can-i` as the chart's ServiceAccount: every needed verb yes, and nothing else beyond what any
    ServiceAccount has (the namespace's `default` one is the baseline)."""
    release = f"rbac-{mode[:2]}"
    values: dict[str, Any] = {"replicaCount": 0, "webhook": {"enabled": False}, "crds": {"install": False}}
    if mode == "namespaced":
        values["watchNamespaces"] = [app_namespace]
    values_file = tmp_path / "values.json"
    values_file.write_text(json.dumps(values))
    run_helm("install", release, str(CHART), "-n", namespace, "-f", str(values_file), kubeconfig=bed.kubeconfig)
    try:
        sa = f"system:serviceaccount:{namespace}:{release}-alembic-operator"
        baseline = _can_i_list(kubectl, f"system:serviceaccount:{namespace}:default", app_namespace)
        expected = used_by_the_code() | (NAMESPACED_ONLY if mode == "namespaced" else CLUSTER_ONLY)
        extra = wait_for(lambda: (_can_i_list(kubectl, sa, app_namespace) - baseline) or None, 30, "the grants")
        assert extra == expected
        for group, resource, verb in sorted(expected):
            cluster_scoped = resource in ("customresourcedefinitions", "clusterkopfpeerings")
            assert _can_i(kubectl, sa, verb, _resource_arg(group, resource),
                          None if cluster_scoped else app_namespace), (verb, group, resource)
        for verb, resource in [("delete", f"{c.PLURAL}.{c.GROUP}"), ("create", f"{c.PLURAL}.{c.GROUP}"),
                               ("update", f"{c.PLURAL}.{c.GROUP}"), ("list", "secrets"), ("create", "secrets"),
                               ("update", "jobs.batch"), ("get", "configmaps"), ("delete", "pods"),
                               ("create", "pods")]:
            assert not _can_i(kubectl, sa, verb, resource, app_namespace), (verb, resource)
        assert not _can_i(kubectl, sa, "create", "mutatingwebhookconfigurations", None)
        assert not _can_i(kubectl, sa, "list", "namespaces", None)
        if mode == "namespaced":
            assert not _can_i(kubectl, sa, "get", "secrets", namespace)  # not even in its own namespace
            assert not _can_i(kubectl, sa, "list", "customresourcedefinitions", None)
            assert not _can_i(kubectl, sa, "list", f"{c.PLURAL}.{c.GROUP}", "default")
        else:
            assert _can_i(kubectl, sa, "get", "secrets", "default")
    finally:
        run_helm("uninstall", release, "-n", namespace, "--wait", check=False, kubeconfig=bed.kubeconfig)

