"""Approvals governed by RBAC on the bed (issue 14): the operator's webhook admits an approval only from a user who
may `approve` the DatabaseMigration (a SubjectAccessReview), records who changed the spec and who approved, and the
run's history names both with the plan's hash. Users are ServiceAccounts the test impersonates, as kubectl --as."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from alembic_operator import approvals
from alembic_operator import constants as c
from e2e import BASE_REVISIONS, DROP_LEGACY, E2E, R4, revision
from gating import GateOperator
from harness import wait_for

pytestmark = pytest.mark.bed


def _as(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


def _users(e2e: E2E) -> tuple[str, str]:
    """dev may edit DatabaseMigrations; reviewer may edit and approve them (the chart's approver role, bound here)."""
    rbac = k8s.RbacAuthorizationV1Api(e2e.cluster.api)
    ns = e2e.ns
    for name in ("dev", "reviewer"):
        e2e.cluster.core.create_namespaced_service_account(ns, k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(
            name=name)))
    rbac.create_namespaced_role(ns, k8s.V1Role(metadata=k8s.V1ObjectMeta(name="editor"), rules=[
        k8s.V1PolicyRule(api_groups=[c.GROUP], resources=[c.PLURAL],
                         verbs=["get", "list", "watch", "create", "update", "patch"])]))
    rbac.create_namespaced_role(ns, k8s.V1Role(metadata=k8s.V1ObjectMeta(name="approver"), rules=[  # the chart's
        k8s.V1PolicyRule(api_groups=[c.GROUP], resources=[c.PLURAL],
                         verbs=["get", "list", "watch", "patch", approvals.VERB]),
        k8s.V1PolicyRule(api_groups=[""], resources=["configmaps"], verbs=["get", "list"])]))
    for role, users in (("editor", ["dev", "reviewer"]), ("approver", ["reviewer"])):
        rbac.create_namespaced_role_binding(ns, k8s.V1RoleBinding(
            metadata=k8s.V1ObjectMeta(name=role), role_ref=k8s.V1RoleRef(api_group="rbac.authorization.k8s.io",
                                                                         kind="Role", name=role),
            subjects=[k8s.RbacV1Subject(kind="ServiceAccount", name=u, namespace=ns) for u in users]))
    return _as(ns, "dev"), _as(ns, "reviewer")


def kubectl(e2e: E2E, *args: str, user: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    from bed.tools import ensure_tools

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    env.pop("KUBECONFIG", None)
    return subprocess.run([str(ensure_tools()["kubectl"]), *args, "-n", e2e.ns, f"--as={user}",
                           f"--kubeconfig={e2e.bed.kubeconfig}"], input=stdin, capture_output=True, text=True,
                          env=env, timeout=60, check=False)


@pytest.fixture
def governed(e2e: E2E) -> Iterator[E2E]:
    """The e2e operator replaced by one that also serves the webhook (its configuration named for this test)."""
    e2e.operator.stop()
    operator = GateOperator(e2e.bed, e2e.ns, e2e.tmp / "operator-webhook.log", core=True)
    e2e.operator = operator.start()
    yield e2e
    operator.stop()
    with contextlib.suppress(k8s.ApiException):
        k8s.AdmissionregistrationV1Api(e2e.cluster.api).delete_mutating_webhook_configuration(operator.config_name)


def test_only_a_user_who_may_approve_approves_and_the_history_names_both(governed: E2E) -> None:
    e2e = governed
    dev, reviewer = _users(e2e)
    project = e2e.project([*BASE_REVISIONS, DROP_LEGACY])
    e2e.upgrade_directly(project, BASE_REVISIONS[-1].id)
    manifest = {"apiVersion": c.API_VERSION, "kind": c.KIND, "metadata": {"name": "shop"}, "spec": e2e.spec(project)}
    created = kubectl(e2e, "create", "-f", "-", user=dev, stdin=json.dumps(manifest))
    assert created.returncode == 0, created.stderr
    obj = e2e.cluster.wait_condition("shop", "Stalled", reason="DestructiveChangesNotApproved", timeout=180)
    assert obj["metadata"]["annotations"][approvals.SPEC_CHANGED_BY] == dev
    plan_hash = obj["status"]["plan"]["hash"]

    # dev may edit, not approve: refused, with the permission to ask for; nothing was approved.
    refused = kubectl(e2e, "annotate", "dbm/shop", f"{c.APPROVE_ANNOTATION}={plan_hash}", user=dev)
    assert refused.returncode != 0
    assert f"{dev} may not approve databasemigrations/shop" in refused.stderr, refused.stderr
    assert "'approve' verb" in refused.stderr and "alembic-operator-approver" in refused.stderr
    assert c.APPROVE_ANNOTATION not in (e2e.cluster.get("shop")["metadata"].get("annotations") or {})
    # A forged record is replaced by the truth (the identity entry, which never blocks an edit).
    forged = kubectl(e2e, "annotate", "--overwrite", "dbm/shop", f"{approvals.SPEC_CHANGED_BY}=someone-else",
                     user=dev)
    assert forged.returncode == 0, forged.stderr
    assert e2e.cluster.get("shop")["metadata"]["annotations"][approvals.SPEC_CHANGED_BY] == dev

    # The reviewer reads the SQL the plan scanned, kept in a ConfigMap and checked against the plan's hash.
    shown = kubectl(e2e, "dbm", "plan", "shop", "-o", "json", user=reviewer)
    assert shown.returncode == 0, shown.stderr
    record = json.loads(shown.stdout)
    assert record["sqlNote"] == "" and [r["revision"] for r in record["sql"]] == [R4], record
    assert "ALTER TABLE orders DROP COLUMN legacy_code" in record["sql"][0]["sql"]
    assert "ALTER TABLE orders DROP COLUMN legacy_code" in kubectl(e2e, "dbm", "plan", "shop", user=reviewer).stdout

    # reviewer approves the plan shown, through kubectl dbm.
    approved = kubectl(e2e, "dbm", "approve", "shop", "--hash", plan_hash, user=reviewer)
    assert approved.returncode == 0, approved.stderr
    obj = e2e.cluster.wait_condition("shop", "Ready", timeout=240)
    assert revision(e2e.db) == R4
    entry = obj["status"]["history"][-1]
    assert (entry["requestedBy"], entry["approvedBy"], entry["planHash"]) == (dev, reviewer, plan_hash), entry
    assert entry["sqlConfigMap"] == obj["status"]["plan"]["sql"]["configMap"] == "shop-plan-g1-sql", entry
    shown = kubectl(e2e, "dbm", "history", "shop", "-o", "json", user=reviewer)
    assert json.loads(shown.stdout)[-1]["approvedBy"] == reviewer
    # The durable record of the run: listed in order by kubectl get, naming both users, the plan and the backup.
    listed = e2e.bed.kubectl("get", "configmaps", "-n", e2e.ns, "-o", "name", "-l",
                             f"{c.OWNER_LABEL}=shop,app.kubernetes.io/component=run-record")
    assert listed.stdout.split() == ["configmap/shop-run-000001-1"], listed
    record = json.loads(e2e.cluster.core.read_namespaced_config_map("shop-run-000001-1", e2e.ns).data["record.json"])
    assert (record["requestedBy"], record["approvedBy"], record["planHash"], record["result"]) == (
        dev, reviewer, plan_hash, "Succeeded")
    assert record["backup"] == entry["backup"] and record["to"] == R4
    assert record["sqlConfigMap"] == "shop-plan-g1-sql"
    assert record["sqlSha256"] == obj["status"]["plan"]["sql"]["sha256"]
    assert '"schema": "alembic-operator.io/run-record/v1"' in e2e.operator.log()
    trail = kubectl(e2e, "dbm", "history", "shop", "--all", "-o", "json", user=reviewer)
    assert trail.returncode == 0, trail.stderr
    assert [(r["approvedBy"], r["sqlConfigMap"]) for r in json.loads(trail.stdout)] == [(reviewer, "shop-plan-g1-sql")]
    hidden = kubectl(e2e, "dbm", "history", "shop", "--all", user=dev)
    assert hidden.returncode == 2 and "needs the right to list configmaps" in hidden.stderr, hidden.stderr


def test_four_eyes_refuses_the_user_who_changed_the_spec(governed: E2E) -> None:
    e2e = governed
    _dev, reviewer = _users(e2e)
    project = e2e.project([*BASE_REVISIONS, DROP_LEGACY])
    e2e.upgrade_directly(project, BASE_REVISIONS[-1].id)
    spec: dict[str, Any] = {**e2e.spec(project), "approval": {"requireDifferentUser": True}}
    manifest = {"apiVersion": c.API_VERSION, "kind": c.KIND, "metadata": {"name": "shop"}, "spec": spec}
    assert kubectl(e2e, "create", "-f", "-", user=reviewer, stdin=json.dumps(manifest)).returncode == 0
    obj = e2e.cluster.wait_condition("shop", "Stalled", reason="DestructiveChangesNotApproved", timeout=180)
    own = kubectl(e2e, "annotate", "dbm/shop", f"{c.APPROVE_ANNOTATION}={obj['status']['plan']['hash']}",
                  user=reviewer)
    assert own.returncode != 0 and "needs another user" in own.stderr, own.stderr

    # The operator down (killed: a clean stop of a local `run` removes its configuration, see test_run_bed.py):
    # ordinary edits go through, approvals and forged records are refused (fail closed).
    e2e.operator.kill()
    plain = kubectl(e2e, "label", "dbm/shop", "team=shop", user=reviewer)
    assert plain.returncode == 0, plain.stderr
    for refused in (kubectl(e2e, "annotate", "dbm/shop", f"{c.APPROVE_ANNOTATION}=sha256:x", user=reviewer),
                    kubectl(e2e, "annotate", "--overwrite", "dbm/shop", f"{approvals.SPEC_CHANGED_BY}=someone",
                            user=reviewer)):
        assert refused.returncode != 0 and "approvals.migrations.alembic-operator.io" in refused.stderr, refused
    wait_for(lambda: e2e.cluster.get("shop")["status"].get("phase") == "AwaitingApproval" or None, 10,
             "still waiting")

