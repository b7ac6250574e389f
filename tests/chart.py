"""What the chart tests share (unit/test_chart.py renders and lints the chart; cluster/test_chart_bed.py installs
it on the bed): helm, rendering, and the RBAC grants the code needs, read from its source."""

from __future__ import annotations

import functools
import json
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

from alembic_operator import constants as c

REPO = Path(__file__).resolve().parents[1]


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
    (c.GROUP, f"{c.SET_PLURAL}/finalizers", "update"),  # the set's DatabaseMigrations' ownerReferences too
}


# Cluster-scoped in every mode, in a ClusterRole of its own (<name>-reviews): the webhook's SubjectAccessReviews,
# and the SelfSubjectReview that tells the operator its own user name (a set's members carry its template's approval).
REVIEWS: set[Rule] = {("authorization.k8s.io", "subjectaccessreviews", "create"),
                      ("authentication.k8s.io", "selfsubjectreviews", "create")}


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
        if "dbm" in path.parts:
            continue  # kubectl dbm calls with the user's own credentials, never the operator's
        source = path.read_text()
        for name in set(CALL_RE.findall(source)):
            if name not in CLIENT_CALLS:
                unknown.add(f"{path.name}: {name}")
            elif (rule := CLIENT_CALLS[name]) is not None:
                needed.add(rule)
        for method, expr in REST_RE.findall(source):
            if "METADATA_ONLY" in expr:  # kube.present: names of DatabaseMigrations and of our Jobs
                needed |= {(c.GROUP, c.PLURAL, "list"), ("batch", "jobs", "list")}
                continue
            if "_set_path" in expr or "c.SET_PLURAL" in expr:
                group, resource, named = c.GROUP, c.SET_PLURAL, "_set_path" in expr or "{name}" in expr
            elif "_migration_path" in expr or "c.PLURAL" in expr:
                group, resource, named = c.GROUP, c.PLURAL, "_migration_path" in expr or "{name}" in expr
            elif "log_path" in expr:  # kube.pod_log: GET pods/{name}/log
                group, resource, named = "", "pods/log", True
            elif "/pods" in expr:
                group, resource, named = "", "pods", "/pods/{" in expr
            elif "/jobs" in expr:
                group, resource, named = "batch", "jobs", "/jobs/{" in expr
            elif "/configmaps" in expr:
                group, resource, named = "", "configmaps", "/configmaps/{" in expr
            elif "/secrets" in expr:
                group, resource, named = "", "secrets", "/secrets/{" in expr
            elif "/apis/apps/v1/" in expr:  # kube.list_workloads: expand/contract reads the older version's owners
                needed |= {("apps", kind, "list") for kind in ("replicasets", "deployments", "statefulsets")}
                continue
            elif "subjectaccessreviews" in expr or "selfsubjectreviews" in expr:
                needed |= REVIEWS
                continue
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
            elif "c.SET_PLURAL" in args:  # watched only (Kopf's event handler): its status is ours
                needed |= {(c.GROUP, c.SET_PLURAL, v) for v in ("list", "watch")}
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

