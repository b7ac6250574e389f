"""The Helm chart (charts/alembic-operator): rendered and linted with the real helm, then installed on the bed.

Without the bed: `helm lint --strict`, the values schema, what the templates render for the usual value sets, the
CRD copy, and RBAC: every Kubernetes call the operator's code makes (found in the source: client methods and Kopf
decorators) plus what Kopf itself needs must be exactly what the chart grants, in both modes.

On the bed (marked `bed`), on its real node (kubelet, containerd, runc, kube-proxy): the operator's image is built
from the project's Dockerfile and pushed to the bed's registry; the chart is installed in a namespace and its pod
runs that image under the chart's restricted securityContext (uid 65532, read-only root filesystem) with its
ServiceAccount's token and goes Ready; a DatabaseMigration (migrations in an app image, backups on a PVC) in a
watched namespace goes Ready against the test PostgreSQL; the API server calls the webhook through the chart's
Service; `helm upgrade` rolls the pod and keeps the webhook certificate; `helm uninstall` keeps the CRD, the
DatabaseMigration and the backups. `kubectl auth can-i` proves the grants.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import json
import re
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from alembic_operator import constants as c
from harness import wait_for

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "alembic-operator"
PKG = REPO / "operator" / "alembic_operator"
KUBE_VERSION = "1.36.0"
Rule = tuple[str, str, str]  # (apiGroup, resource, verb)


@functools.cache
def helm() -> str:
    from bed.tools import ensure_tools

    return str(ensure_tools()["helm"])


def run_helm(*args: str, check: bool = True, kubeconfig: Path | None = None,
             timeout: float = 300) -> subprocess.CompletedProcess[str]:
    cmd = [helm(), *args]
    if kubeconfig is not None:
        cmd.append(f"--kubeconfig={kubeconfig}")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"`helm {' '.join(args)}` failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@functools.cache
def _render(values_json: str, namespace: str) -> tuple[dict[str, Any], ...]:
    with tempfile.NamedTemporaryFile("w", suffix=".json") as values:
        values.write(values_json)
        values.flush()
        proc = run_helm("template", "rel", str(CHART), "--namespace", namespace, "--kube-version", KUBE_VERSION,
                        "--values", values.name)
    return tuple(d for d in yaml.safe_load_all(proc.stdout) if d)


def render(values: dict[str, Any] | None = None, namespace: str = "ops") -> list[dict[str, Any]]:
    return [json.loads(json.dumps(d)) for d in _render(json.dumps(values or {}, sort_keys=True), namespace)]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = find(docs, kind)
    assert len(found) == 1, f"{len(found)} {kind} rendered"
    return found[0]


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    pod = one(docs, "StatefulSet")["spec"]["template"]["spec"]
    (ctr,) = pod["containers"]
    return dict(ctr)


def env_of(ctr: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in ctr.get("env", [])}


# --- lint, schema, files ---------------------------------------------------------------------------------------


def test_helm_lint_strict() -> None:
    proc = run_helm("lint", "--strict", "--kube-version", KUBE_VERSION, str(CHART))
    assert "0 chart(s) failed" in proc.stdout
    run_helm("lint", "--strict", "--kube-version", KUBE_VERSION, str(CHART), "--set-json",
             'watchNamespaces=["a","b"]', "--set", "webhook.certificate.source=cert-manager")


def test_values_schema_refuses_typos_and_bad_values() -> None:
    for bad in (["--set", "webhok.enabled=false"], ["--set", "webhook.certificate.source=vault"],
                ["--set", "image.digest=latest"], ["--set", "logLevel=trace"], ["--set", "ports.health=0"]):
        proc = run_helm("template", "x", str(CHART), "--kube-version", KUBE_VERSION, *bad, check=False)
        assert proc.returncode != 0, bad


def test_chart_crd_is_the_generated_crd() -> None:
    """files/crds/ links to crds/databasemigrations.yaml (Helm reads nothing outside the chart but follows links)."""
    copy = CHART / "files" / "crds" / "databasemigrations.yaml"
    fix = "ln -sf ../../../../crds/databasemigrations.yaml charts/alembic-operator/files/crds/"
    assert copy.read_text() == (REPO / "crds" / "databasemigrations.yaml").read_text(), f"stale copy: {fix}"
    generated = next(d for d in yaml.safe_load_all((REPO / "crds" / "databasemigrations.yaml").read_text()) if d)
    rendered = one(render(), "CustomResourceDefinition")
    assert rendered["spec"] == generated["spec"]
    assert rendered["metadata"]["name"] == generated["metadata"]["name"]
    assert rendered["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert not find(render({"crds": {"install": False}}), "CustomResourceDefinition")
    assert "annotations" not in one(render({"crds": {"keep": False}}), "CustomResourceDefinition")["metadata"]


def test_kopf_peering_crds_in_crds_dir() -> None:
    docs = [d for d in yaml.safe_load_all((CHART / "crds" / "kopf-peering.yaml").read_text()) if d]
    assert {(d["spec"]["group"], d["spec"]["names"]["kind"], d["spec"]["scope"]) for d in docs} == {
        ("kopf.dev", "ClusterKopfPeering", "Cluster"), ("kopf.dev", "KopfPeering", "Namespaced")}


def test_argocd_snippets_are_the_health_check() -> None:
    script = (PKG / "health.lua").read_text()
    cm = yaml.safe_load((CHART / "files" / "argocd-cm.yaml").read_text())
    assert cm["metadata"]["name"] == "argocd-cm"
    assert cm["data"][f"resource.customizations.health.{c.GROUP}_{c.KIND}"] == script
    assert (CHART / "files" / "health.lua").read_text() == script


# --- the operator's pod ------------------------------------------------------------------------------------------


def test_defaults_two_replicas_peering_with_distinct_priorities() -> None:
    docs = render()
    sts = one(docs, "StatefulSet")
    assert sts["spec"]["replicas"] == 2
    ctr = container(docs)
    args = ctr["args"]
    assert args[0] == "run" and ctr["command"] == ["alembic-operator"]
    assert "--liveness=http://0.0.0.0:8080/healthz" in args
    assert "--peering=ops-rel-alembic-operator" in args and "--priority=$(POD_INDEX)" in args
    env = env_of(ctr)
    assert env["POD_INDEX"] == {"fieldRef": {"fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}}
    assert env["POD_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    peering = one(docs, "ClusterKopfPeering")
    assert peering["metadata"]["name"] == "ops-rel-alembic-operator"
    # The Jobs use the chart's own image.
    assert env["ALEMBIC_OPERATOR_IMAGE"] == ctr["image"] == "ghcr.io/alembic-operator/alembic-operator:0.1.0"
    digest = "sha256:" + "a" * 64
    pinned = container(render({"image": {"digest": digest}}))
    assert pinned["image"] == env_of(pinned)["ALEMBIC_OPERATOR_IMAGE"]
    assert pinned["image"] == f"ghcr.io/alembic-operator/alembic-operator@{digest}"
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"]


def test_single_replica_standalone_and_the_guard() -> None:
    ctr = container(render({"replicaCount": 1, "peering": {"enabled": False}}))
    assert "--standalone" in ctr["args"] and not any(a.startswith("--peering") for a in ctr["args"])
    proc = run_helm("template", "x", str(CHART), "--kube-version", KUBE_VERSION, "--set", "peering.enabled=false",
                    check=False)
    assert proc.returncode != 0 and "peering" in proc.stderr


def test_restricted_pod_security_probes_and_resources() -> None:
    docs = render()
    pod = one(docs, "StatefulSet")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    ctr = container(docs)
    sc = ctr["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert {m["mountPath"] for m in ctr["volumeMounts"]} >= {"/var/run/alembic-operator"}  # scratch (TMPDIR)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert ctr[probe]["httpGet"] == {"path": "/healthz", "port": "http-health"}
    assert ctr["resources"]["requests"] and ctr["resources"]["limits"]["memory"]
    ports = {p["name"]: p["containerPort"] for p in ctr["ports"]}
    assert ports == {"http-health": 8080, "http-metrics": 9090, "https-webhook": 9443}
    assert env_of(ctr)["ALEMBIC_OPERATOR_METRICS_PORT"] == "9090"


def test_metrics_service_and_service_monitor() -> None:
    docs = render({"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}})
    svc = find(docs, "Service", "rel-alembic-operator")[0]
    assert svc["spec"]["clusterIP"] == "None"
    assert {p["name"] for p in svc["spec"]["ports"]} == {"http-health", "http-metrics"}
    sm = one(docs, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "prom"
    assert sm["spec"]["endpoints"][0]["port"] == "http-metrics" and sm["spec"]["endpoints"][0]["honorLabels"] is True
    assert not find(render(), "ServiceMonitor")
    off = render({"metrics": {"enabled": False}})
    assert "ALEMBIC_OPERATOR_METRICS_PORT" not in env_of(container(off))


# --- the admission webhook ---------------------------------------------------------------------------------------


def test_webhook_configuration() -> None:
    from alembic_operator import webhook

    docs = render()
    mwc = one(docs, "MutatingWebhookConfiguration")
    (hook,) = mwc["webhooks"]
    assert hook["failurePolicy"] == "Fail" and hook["sideEffects"] == "None"
    assert hook["rules"] == [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                              "resources": ["pods"], "scope": "Namespaced"}]
    assert hook["objectSelector"] == {"matchExpressions": [{"key": c.WAIT_FOR_LABEL, "operator": "Exists"}]}
    assert hook["namespaceSelector"] == {"matchExpressions": [
        {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["ops"]}]}
    assert hook["clientConfig"]["service"] == {"name": "rel-alembic-operator-webhook", "namespace": "ops",
                                               "port": 443, "path": f"/{webhook.HANDLER_ID}"}
    svc = find(docs, "Service", "rel-alembic-operator-webhook")[0]
    assert svc["spec"]["ports"][0]["targetPort"] == "https-webhook"
    env = env_of(container(docs))
    assert env["ALEMBIC_OPERATOR_WEBHOOK_CONFIG_NAME"] == "none"
    assert env["ALEMBIC_OPERATOR_WEBHOOK_PORT"] == "9443"
    assert env["ALEMBIC_OPERATOR_WEBHOOK_EXCLUDE_NAMESPACES"] == "ops"
    scoped = one(render({"watchNamespaces": ["b", "a"], "webhook": {"excludeNamespaces": ["kube-system"]}}),
                 "MutatingWebhookConfiguration")["webhooks"][0]["namespaceSelector"]["matchExpressions"]
    assert scoped == [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["a", "b"]},
                      {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", "ops"]}]
    assert not find(render({"webhook": {"enabled": False}}), "MutatingWebhookConfiguration")
    assert env_of(container(render({"webhook": {"enabled": False}})))["ALEMBIC_OPERATOR_WEBHOOK_ENABLED"] == "false"


def test_helm_generated_certificate_covers_the_service_and_the_url() -> None:
    from cryptography import x509

    docs = render({"webhook": {"url": "https://127.0.0.1:9443/", "certificate": {"extraDNSNames": ["op.example"]}}})
    secret = one(docs, "Secret")
    mwc = one(docs, "MutatingWebhookConfiguration")
    client = mwc["webhooks"][0]["clientConfig"]
    assert client["url"] == "https://127.0.0.1:9443/hold-until-schema-ready" and "service" not in client
    assert client["caBundle"] == secret["data"]["ca.crt"]
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    ca = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["ca.crt"]))
    assert cert.issuer == ca.subject
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) >= {
        "rel-alembic-operator-webhook.ops.svc", "rel-alembic-operator-webhook.ops.svc.cluster.local", "op.example"}
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert secret["metadata"]["annotations"]["migrations.alembic-operator.io/certificate-names"]


def test_cert_manager_certificate() -> None:
    docs = render({"webhook": {"certificate": {"source": "cert-manager"}}})
    assert not find(docs, "Secret")
    cert = one(docs, "Certificate")
    assert cert["spec"]["secretName"] == "rel-alembic-operator-webhook-tls"
    assert "rel-alembic-operator-webhook.ops.svc" in cert["spec"]["dnsNames"]
    assert cert["spec"]["issuerRef"]["name"] == one(docs, "Issuer")["metadata"]["name"]
    mwc = one(docs, "MutatingWebhookConfiguration")
    assert mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == "ops/rel-alembic-operator-webhook-tls"
    assert "caBundle" not in mwc["webhooks"][0]["clientConfig"]
    own = render({"webhook": {"certificate": {"source": "cert-manager",
                                              "certManager": {"issuerRef": {"name": "ca", "kind": "ClusterIssuer"}}}}})
    assert not find(own, "Issuer") and one(own, "Certificate")["spec"]["issuerRef"]["kind"] == "ClusterIssuer"
    mine = render({"webhook": {"certificate": {"source": "secret", "secretName": "mine", "caBundle": "Q0E="}}})
    assert not find(mine, "Secret") and not find(mine, "Certificate")
    assert one(mine, "MutatingWebhookConfiguration")["webhooks"][0]["clientConfig"]["caBundle"] == "Q0E="


# --- RBAC: exactly what the code uses -----------------------------------------------------------------------------

# Kubernetes client methods the operator may call, and the grant each needs (the resource's API group, resource,
# verb). A method missing here fails test_rbac_covers_every_call: add it, and grant it in templates/_helpers.tpl.
CLIENT_CALLS: dict[str, Rule | None] = {
    "get_namespaced_custom_object": (c.GROUP, c.PLURAL, "get"),
    "list_namespaced_custom_object": (c.GROUP, c.PLURAL, "list"),
    "list_cluster_custom_object": (c.GROUP, c.PLURAL, "list"),
    "patch_namespaced_custom_object": (c.GROUP, c.PLURAL, "patch"),
    "replace_namespaced_custom_object_status": (c.GROUP, f"{c.PLURAL}/status", "update"),
    "patch_namespaced_custom_object_status": (c.GROUP, f"{c.PLURAL}/status", "patch"),
    "read_namespaced_secret": ("", "secrets", "get"),
    "list_namespaced_job": ("batch", "jobs", "list"),
    "create_namespaced_job": ("batch", "jobs", "create"),
    "delete_namespaced_job": ("batch", "jobs", "delete"),
    "list_namespaced_pod": ("", "pods", "list"),
    "patch_namespaced_pod": ("", "pods", "patch"),
    "create_namespaced_event": ("", "events", "create"),
    # The chart owns the MutatingWebhookConfiguration (ALEMBIC_OPERATOR_WEBHOOK_CONFIG_NAME=none): not granted.
    "read_mutating_webhook_configuration": None,
    "create_mutating_webhook_configuration": None,
    "replace_mutating_webhook_configuration": None,
}
CALL_RE = re.compile(
    r"\b((?:list|read|get|create|delete|patch|replace)_"
    r"(?:(?:namespaced|cluster)_(?:custom_object(?:_status)?|secret|job|pod|pod_status|event|config_map|lease|service|"
    r"persistent_volume_claim|deployment|stateful_set)"
    r"|mutating_webhook_configuration|validating_webhook_configuration|namespace|node|custom_resource_definition))\b")
# Raw REST calls (`request("PATCH", f"/api/v1/namespaces/{namespace}/pods/{name}", ...)`).
REST_RE = re.compile(r"""\.request\(\s*"(GET|POST|PUT|PATCH|DELETE)"\s*,\s*([^\n]+)""")
REST_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
# Raw watches (`self.kube.watch(path, ...)` in release.py) of pods.
WATCH_RE = re.compile(r"""\.kube\.watch\(\s*([^\n]+)""")
KOPF_RE = re.compile(r"@kopf\.(?:on\.(\w+)|daemon|timer|index)\(([^)]*)\)")
# What Kopf does for every watched resource (list+watch), and for a handled one (finalizer and progress
# annotations: patch). Events: Kopf's poster (kopf.event / kopf.info ...).
FRAMEWORK: set[Rule] = {
    (c.GROUP, f"{c.PLURAL}/finalizers", "update"),  # Jobs' ownerReferences with blockOwnerDeletion
}
CLUSTER_ONLY: set[Rule] = {
    ("kopf.dev", "clusterkopfpeerings", "list"), ("kopf.dev", "clusterkopfpeerings", "watch"),
    ("kopf.dev", "clusterkopfpeerings", "patch"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
}
NAMESPACED_ONLY: set[Rule] = {
    ("kopf.dev", "kopfpeerings", "list"), ("kopf.dev", "kopfpeerings", "watch"), ("kopf.dev", "kopfpeerings", "patch"),
}


def used_by_the_code() -> set[Rule]:
    """Every grant the operator's code needs, read from its source."""
    needed: set[Rule] = set(FRAMEWORK)
    unknown: set[str] = set()
    for path in sorted(PKG.rglob("*.py")):
        if "runner" in path.parts:
            continue  # runs in the app's image, never calls Kubernetes
        source = path.read_text()
        for name in set(CALL_RE.findall(source)):
            if name not in CLIENT_CALLS:
                unknown.add(f"{path.name}: {name}")
            elif (rule := CLIENT_CALLS[name]) is not None:
                needed.add(rule)
        for method, expr in REST_RE.findall(source):
            if "_migration_path" in expr or "c.PLURAL" in expr:
                group, resource, named = c.GROUP, c.PLURAL, "_migration_path" in expr or "{name}" in expr
            elif "/pods" in expr:
                group, resource, named = "", "pods", "/pods/{" in expr
            elif "/jobs" in expr:
                group, resource, named = "batch", "jobs", "/jobs/{" in expr
            elif "/secrets" in expr:
                group, resource, named = "", "secrets", "/secrets/{" in expr
            elif "WEBHOOK_CONFIGURATIONS" in expr:
                continue  # the chart owns the MutatingWebhookConfiguration (..._CONFIG_NAME=none): not granted
            else:
                unknown.add(f"{path.name}: {method} {expr.strip()}")
                continue
            if "/status" in expr:
                resource += "/status"
            verb = REST_VERBS.get(method) or ("get" if named else "list")
            needed.add((group, resource, verb))
        for expr in WATCH_RE.findall(source):
            if "path" in expr and 'f"/api/v1/namespaces/{namespace}/pods"' in source:
                needed |= {("", "pods", "list"), ("", "pods", "watch")}
            else:
                unknown.add(f"{path.name}: watch {expr.strip()}")
        for kind, args in KOPF_RE.findall(source):
            if kind in ("mutate", "validate", "startup", "cleanup", "login", "probe"):
                continue
            if "jobs" in args:
                needed |= {("batch", "jobs", "list"), ("batch", "jobs", "watch")}
            elif '"pods"' in args:
                needed |= {("", "pods", "list"), ("", "pods", "watch")}
            elif "c.PLURAL" in args or c.PLURAL in args:
                needed |= {(c.GROUP, c.PLURAL, v) for v in ("list", "watch", "patch")}
            else:
                unknown.add(f"{path.name}: @kopf.{kind or 'daemon'}({args})")
        if re.search(r"\bkopf\.(event|info|warn|exception)\(", source):
            needed.add(("", "events", "create"))
    assert not unknown, f"Kubernetes calls with no known grant: {sorted(unknown)} (extend CLIENT_CALLS)"
    return needed


def granted(rules: list[dict[str, Any]]) -> set[Rule]:
    out: set[Rule] = set()
    for rule in rules:
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert verb != "*" and resource != "*" and group != "*", rule
                    out.add((group, resource, verb))
    return out


def test_rbac_covers_every_call_and_nothing_more_cluster_wide() -> None:
    docs = render()
    role = one(docs, "ClusterRole")
    assert granted(role["rules"]) == used_by_the_code() | CLUSTER_ONLY
    binding = one(docs, "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "rel-alembic-operator", "namespace": "ops"}]
    assert not find(docs, "Role")


def test_rbac_with_watched_namespaces_is_roles_only() -> None:
    docs = render({"watchNamespaces": ["shop", "billing"]})
    assert not find(docs, "ClusterRole") and not find(docs, "ClusterRoleBinding")
    assert not find(docs, "ClusterKopfPeering")
    roles = find(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["billing", "shop"]
    for role in roles:
        assert granted(role["rules"]) == used_by_the_code() | NAMESPACED_ONLY
    assert sorted(p["metadata"]["namespace"] for p in find(docs, "KopfPeering")) == ["billing", "shop"]
    assert sorted(b["metadata"]["namespace"] for b in find(docs, "RoleBinding")) == ["billing", "shop"]
    ctr = container(docs)
    assert "--namespace=shop" in ctr["args"] and "--namespace=billing" in ctr["args"]


# --- on the bed (a real node: kubelet, containerd, runc, kube-proxy) -------------------------------------------


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
