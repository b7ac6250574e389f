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
from typing import Any

import yaml

from alembic_operator import constants as c
from chart import (
    CHART,
    CLUSTER_ONLY,
    KUBE_VERSION,
    NAMESPACED_ONLY,
    PKG,
    REPO,
    REVIEWS,
    container,
    env_of,
    find,
    granted,
    one,
    render,
    run_helm,
    used_by_the_code,
)


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
    """files/crds/ links to crds/databasemigrations.yaml and crds/databasemigrationsets.yaml (Helm reads nothing
    outside the chart but follows links); both are rendered, kept on uninstall."""
    rendered = find(render(), "CustomResourceDefinition")
    assert len(rendered) == 2
    for file, crd in zip(("databasemigrations.yaml", "databasemigrationsets.yaml"), rendered, strict=True):
        copy = CHART / "files" / "crds" / file
        fix = f"ln -sf ../../../../crds/{file} charts/alembic-operator/files/crds/"
        assert copy.read_text() == (REPO / "crds" / file).read_text(), f"stale copy: {fix}"
        generated = next(d for d in yaml.safe_load_all((REPO / "crds" / file).read_text()) if d)
        assert crd["spec"] == generated["spec"]
        assert crd["metadata"]["name"] == generated["metadata"]["name"]
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert not find(render({"crds": {"install": False}}), "CustomResourceDefinition")
    assert all("annotations" not in crd["metadata"]
               for crd in find(render({"crds": {"keep": False}}), "CustomResourceDefinition"))


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


def test_defaults_two_replicas_peering_with_distinct_priorities() -> None:
    docs = render()
    sts = one(docs, "StatefulSet")
    assert sts["spec"]["replicas"] == 2
    ctr = container(docs)
    args = ctr["args"]
    assert args[0] == "run" and ctr["command"] == ["alembic-operator"]
    assert "--liveness=http://0.0.0.0:8080/healthz" in args
    assert "--peering=ops-rel-alembic-operator" in args and "--priority=$(POD_INDEX)" in args
    # A standby takes over 20 s (not Kopf's 60) after the leader died without leaving the peering.
    assert "--peering-lifetime=20" in args
    assert "--peering-lifetime=30" in container(render({"peering": {"lifetime": 30}}))["args"]
    short = run_helm("template", "x", str(CHART), "--kube-version", KUBE_VERSION, "--set", "peering.lifetime=5",
                     check=False)
    assert short.returncode != 0 and "lifetime" in short.stderr
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


def test_webhook_configuration() -> None:
    from alembic_operator import webhook

    docs = render()
    mwc = one(docs, "MutatingWebhookConfiguration")
    hook, *for_migrations = mwc["webhooks"]
    # The DatabaseMigration entries are the operator's own (webhook.approval_webhooks), through the Service.
    opts = webhook.WebhookOptions(service="ops/rel-alembic-operator-webhook", exclude_namespaces=("ops",),
                                  timeout_seconds=10)
    expected = webhook.approval_webhooks(opts, {"url": "unused", "caBundle": hook["clientConfig"]["caBundle"]})
    assert for_migrations == expected, "the chart's DatabaseMigration webhooks differ from the operator's"
    assert env_of(container(docs))["ALEMBIC_OPERATOR_WEBHOOK_REQUIRE_DIFFERENT_APPROVER"] == "false"
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


def test_rbac_covers_every_call_and_nothing_more_cluster_wide() -> None:
    docs = render()
    role = find(docs, "ClusterRole", "ops-rel-alembic-operator")[0]
    assert granted(role["rules"]) == (used_by_the_code() - REVIEWS) | CLUSTER_ONLY
    _reviews_and_approver(docs)
    binding = find(docs, "ClusterRoleBinding", "ops-rel-alembic-operator")[0]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "rel-alembic-operator", "namespace": "ops"}]
    assert not find(docs, "Role")


def test_rbac_with_watched_namespaces_is_roles_only() -> None:
    docs = render({"watchNamespaces": ["shop", "billing"]})
    # Nothing cluster-wide but what is cluster-scoped by nature: the webhook's SubjectAccessReviews, and the role
    # for reviewers (bound by the cluster's admins, to people).
    assert sorted(r["metadata"]["name"] for r in find(docs, "ClusterRole")) == [
        "alembic-operator-approver", "ops-rel-alembic-operator-reviews"]
    assert [b["metadata"]["name"] for b in find(docs, "ClusterRoleBinding")] == ["ops-rel-alembic-operator-reviews"]
    _reviews_and_approver(docs)
    assert not find(docs, "ClusterKopfPeering")
    roles = find(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["billing", "shop"]
    for role in roles:
        assert granted(role["rules"]) == (used_by_the_code() - REVIEWS) | NAMESPACED_ONLY
    assert sorted(p["metadata"]["namespace"] for p in find(docs, "KopfPeering")) == ["billing", "shop"]
    assert sorted(b["metadata"]["namespace"] for b in find(docs, "RoleBinding")) == ["billing", "shop"]
    ctr = container(docs)
    assert "--namespace=shop" in ctr["args"] and "--namespace=billing" in ctr["args"]



def _reviews_and_approver(docs: list[dict[str, Any]]) -> None:
    reviews = find(docs, "ClusterRole", "ops-rel-alembic-operator-reviews")[0]
    assert granted(reviews["rules"]) == REVIEWS and used_by_the_code() >= REVIEWS
    binding = find(docs, "ClusterRoleBinding", "ops-rel-alembic-operator-reviews")[0]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "rel-alembic-operator", "namespace": "ops"}]
    approver = find(docs, "ClusterRole", "alembic-operator-approver")[0]
    assert granted(approver["rules"]) == ({(c.GROUP, kind, v) for v in ("get", "list", "watch", "patch", "approve")
                                           for kind in (c.PLURAL, c.SET_PLURAL)}
                                          | {("", "configmaps", v) for v in ("get", "list")})
    assert not find(render({"approval": {"approverRole": {"create": False}}}), "ClusterRole",
                    "alembic-operator-approver")


def test_notifications_pass_the_secret_reference_and_read_only_that_secret() -> None:
    """Off by default; on, the operator gets where the webhook's Secret is (never its value) and, with watched
    namespaces, a Role to read that one Secret in the release's namespace."""
    assert not any(a.startswith("--notify") for a in container(render())["args"])
    values = {"notifications": {"enabled": True, "secretName": "hook", "tokenKey": "token", "format": "Slack",
                                "events": ["AwaitingApproval", "Failed"]}}
    args = container(render(values))["args"]
    assert [a for a in args if a.startswith("--notify")] == [
        "--notify-secret=ops/hook", "--notify-url-key=url", "--notify-token-key=token", "--notify-format=Slack",
        "--notify-events=AwaitingApproval,Failed"]
    assert not find(render(values), "Role")  # all namespaces: the ClusterRole reads Secrets already
    assert "--no-resource-notifications" in container(render({"notifications": {"perResource": False}}))["args"]
    scoped = render({**values, "watchNamespaces": ["shop"]})
    role = find(scoped, "Role", "rel-alembic-operator-notifications")[0]
    assert role["metadata"]["namespace"] == "ops"
    assert role["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["hook"],
                              "verbs": ["get"]}]
    assert find(scoped, "RoleBinding", "rel-alembic-operator-notifications")[0]["subjects"][0]["name"] == \
        "rel-alembic-operator"
    for bad in (["--set", "notifications.enabled=true"], ["--set", "notifications.format=Teams"]):
        proc = run_helm("template", "x", str(CHART), "--kube-version", KUBE_VERSION, *bad, check=False)
        assert proc.returncode != 0, bad
