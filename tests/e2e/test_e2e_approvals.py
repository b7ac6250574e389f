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
from test_e2e_notify import Receiver, receiver

from alembic_operator import approvals
from alembic_operator import constants as c
from bed.postgres import PostgresServer
from e2e import BASE_REVISIONS, DROP_LEGACY, E2E, R3, R4, revision
from gating import Apps, GateOperator, held, template
from harness import wait_for

__all__ = ["receiver"]  # the fixture

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


def _set_users(e2e: E2E) -> tuple[str, str]:
    """`_users`, with DatabaseMigrationSets in both roles (the chart's approver role covers sets too)."""
    dev, reviewer = _users(e2e)
    rbac = k8s.RbacAuthorizationV1Api(e2e.cluster.api)
    rbac.patch_namespaced_role("editor", e2e.ns, {"rules": [k8s.V1PolicyRule(
        api_groups=[c.GROUP], resources=[c.PLURAL, c.SET_PLURAL],
        verbs=["get", "list", "watch", "create", "update", "patch"])]})
    rbac.patch_namespaced_role("approver", e2e.ns, {"rules": [
        k8s.V1PolicyRule(api_groups=[c.GROUP], resources=[c.PLURAL, c.SET_PLURAL],
                         verbs=["get", "list", "watch", "patch", approvals.VERB]),
        k8s.V1PolicyRule(api_groups=[""], resources=["configmaps"], verbs=["get", "list"])]})
    return dev, reviewer


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



def test_a_set_is_approved_once_by_a_person_and_a_pod_waits_for_the_whole_set(
        governed: E2E, postgres: PostgresServer, postgres_in_bed: tuple[str, int],
        receiver: tuple[Receiver, int]) -> None:
    """Three tenants, one DatabaseMigrationSet, a destructive revision: two tenants' plans agree (one hash), the
    third starts from an older revision (another hash) and is held apart. dev may not approve the set; reviewer
    approves the shared hash once with kubectl dbm approve --set, and exactly those two tenants migrate, each naming
    reviewer through the set (the operator approves no DatabaseMigration: no member carries the approve
    annotation). A pod that waits for the whole set stays held until the second hash is approved and every tenant is
    Ready, then it is released. The template's webhook hears the set, not its members: one notification per plan
    hash (how many wait, the approve --set command), then one when every tenant is Ready."""
    e2e = governed
    dev, reviewer = _set_users(e2e)
    rx, port = receiver
    host, inner = e2e.bed.expose_host_port(port)
    e2e.cluster.secret("team-hook", {"url": f"http://{host}:{inner}/team/hook-path-of-the-set-test-5c1e"})
    e2e.secrets.append("hook-path-of-the-set-test-5c1e")
    project = e2e.project([*BASE_REVISIONS, DROP_LEGACY])
    label = {"tenants.example.com/app": "shop"}
    dbs = {}
    try:
        for i, start in enumerate((R3, R3, BASE_REVISIONS[1].id)):
            dbs[f"t{i}"] = db = postgres.create_database(f"{e2e.ns.replace('-', '_')[:40]}_t{i}")
            e2e.upgrade_directly_on(db, project, start)
            e2e.cluster.labelled_secret(f"t{i}", {"url": db.at(*postgres_in_bed).url}, label)
        spec = {"template": {"migrations": {"image": e2e.images[project], "workingDir": "/app"},
                             "targetRevision": "head", "backup": {"enabled": False},
                             "notifications": {"urlSecretRef": {"name": "team-hook", "key": "url"},
                                               "format": "CloudEvents"}},
                "targets": {"selector": {"matchLabels": label}}, "strategy": {"maxInFlight": 3}}
        manifest = {"apiVersion": c.API_VERSION, "kind": c.SET_KIND, "metadata": {"name": "fleet"}, "spec": spec}
        created = kubectl(e2e, "create", "-f", "-", user=dev, stdin=json.dumps(manifest))
        assert created.returncode == 0, created.stderr

        def plans() -> dict[str, int] | None:
            st = _set(e2e, "fleet").get("status") or {}
            found = {p["hash"]: p["count"] for p in st.get("plans") or []}
            return found if sorted(found.values()) == [1, 2] else None

        shared, apart = sorted(wait_for(plans, 300, "two plans waiting").items(), key=lambda kv: -kv[1])
        # A pod that needs every tenant: held at creation.
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "report"}, **template("v1", "report", "fleet")}
        pod["metadata"] = {**pod["metadata"], "name": "report",
                           "annotations": {c.WAIT_FOR_KIND_ANNOTATION: c.SET_KIND}}
        e2e.cluster.core.create_namespaced_pod(e2e.ns, pod)
        apps = Apps(e2e.cluster.api, e2e.ns)
        assert held(apps.pods("app=report")[0])

        refused = kubectl(e2e, "dbm", "approve", "--set", "fleet", "--hash", shared[0], user=dev)
        assert refused.returncode != 0 and f"{dev} may not approve databasemigrationsets/fleet" in refused.stderr, \
            refused.stderr
        shown = kubectl(e2e, "dbm", "set", "fleet", user=reviewer)
        assert shown.returncode == 0 and shared[0] in shown.stdout and apart[0] in shown.stdout, shown
        assert "fleet-t0, fleet-t1" in shown.stdout and "fleet-t2" in shown.stdout
        approved = kubectl(e2e, "dbm", "approve", "--set", "fleet", "--hash", shared[0], user=reviewer)
        assert approved.returncode == 0, approved.stderr
        record = approvals.set_record(_set(e2e, "fleet")["metadata"]["annotations"])
        assert record == {shared[0]: reviewer}

        for name in ("fleet-t0", "fleet-t1"):
            obj = e2e.cluster.wait_condition(name, "Ready", timeout=300)
            entry = obj["status"]["history"][-1]
            assert (entry["approvedBy"], entry["planHash"]) == (f"{reviewer} (DatabaseMigrationSet fleet)",
                                                               shared[0]), entry
            assert c.APPROVE_ANNOTATION not in (obj["metadata"].get("annotations") or {})
        assert revision(dbs["t0"]) == revision(dbs["t1"]) == R4
        assert e2e.cluster.get("fleet-t2")["status"]["phase"] == "AwaitingApproval"  # its own plan: held apart
        assert revision(dbs["t2"]) == BASE_REVISIONS[1].id and held(apps.pods("app=report")[0])

        assert kubectl(e2e, "dbm", "approve", "--set", "fleet", "--yes", user=reviewer).returncode == 0
        wait_for(lambda: _set(e2e, "fleet") if _condition(_set(e2e, "fleet"), c.READY).get("status") == "True"
                 else None, 300, "the set Ready")
        assert revision(dbs["t2"]) == R4
        wait_for(lambda: not held(apps.pods("app=report")[0]) or None, 60, "the report pod released")
        wait_for(lambda: any(e["reason"] == "Released" and "DatabaseMigrationSet fleet is Ready" in e["message"]
                             for e in apps.events("report")) or None, 30, "the Released Event")  # posted after

        # Told once per plan and once at the end, by the set; no member said anything of its own.
        prefix = "io.alembic-operator.databasemigrationset."
        def told() -> list[Any] | None:
            found = [a.json for a in rx.on("/team/")]
            return found if len(found) >= 3 else None

        events = wait_for(told, 60, "the set's three notifications")
        assert all(e["type"].startswith(prefix) for e in events), [e["type"] for e in events]
        approvals_told = sorted((e["data"]["planHash"], e["data"]["waiting"]) for e in events
                                if e["type"] == prefix + "awaitingapproval")
        assert approvals_told == sorted([(shared[0], 2), (apart[0], 1)]), approvals_told
        first = next(e for e in events if e["data"].get("planHash") == shared[0])
        assert f"kubectl dbm approve --set fleet -n {e2e.ns} --hash {shared[0]}" in first["data"]["commands"]
        assert sorted(first["data"]["migrations"]) == ["fleet-t0", "fleet-t1"]
        assert [e["type"] for e in events].count(prefix + "succeeded") == 1
        assert len(events) == 3 and all(a.json["id"] == a.key for a in rx.on("/team/"))  # nothing twice
    finally:
        for db in dbs.values():
            postgres.drop_database(db.name)


def test_a_template_that_allows_destructive_plans_is_approved_at_the_set_and_its_members_migrate(
        governed: E2E, postgres: PostgresServer, postgres_in_bed: tuple[str, int]) -> None:
    """spec.template.approval.allowDestructive approves every member's plan: dev may not create such a set,
    reviewer may, and the operator's members then carry it through the webhook and migrate the destructive plan
    with no approval of their own."""
    e2e = governed
    dev, reviewer = _set_users(e2e)
    project = e2e.project([*BASE_REVISIONS, DROP_LEGACY])
    label = {"tenants.example.com/app": "loose"}
    db = postgres.create_database(f"{e2e.ns.replace('-', '_')[:40]}_t0")
    try:
        e2e.upgrade_directly_on(db, project, R3)
        e2e.cluster.labelled_secret("t0", {"url": db.at(*postgres_in_bed).url}, label)
        spec = {"template": {"migrations": {"image": e2e.images[project], "workingDir": "/app"},
                             "targetRevision": "head", "backup": {"enabled": False},
                             "approval": {"allowDestructive": True}},
                "targets": {"selector": {"matchLabels": label}}}
        manifest = json.dumps({"apiVersion": c.API_VERSION, "kind": c.SET_KIND, "metadata": {"name": "loose"},
                               "spec": spec})
        refused = kubectl(e2e, "create", "-f", "-", user=dev, stdin=manifest)
        assert refused.returncode != 0, refused.stdout
        assert f"{dev} may not approve databasemigrationsets/loose" in refused.stderr, refused.stderr
        assert "spec.template.approval.allowDestructive: true" in refused.stderr, refused.stderr
        created = kubectl(e2e, "create", "-f", "-", user=reviewer, stdin=manifest)
        assert created.returncode == 0, created.stderr
        assert _set(e2e, "loose")["metadata"]["annotations"][approvals.SPEC_CHANGED_BY] == reviewer

        wait_for(lambda: e2e.cluster.exists("loose-t0") or None, 60, "the set to create its DatabaseMigration")
        obj = e2e.cluster.wait_condition("loose-t0", "Ready", timeout=300)
        assert revision(db) == R4
        assert obj["status"]["history"][-1]["approvedBy"] == "spec.approval.allowDestructive", obj["status"]
        annotations = obj["metadata"].get("annotations") or {}
        assert c.APPROVE_ANNOTATION not in annotations and approvals.APPROVED_BY not in annotations
        assert annotations[approvals.SPEC_CHANGED_BY] not in (dev, reviewer)  # the operator's own user name
    finally:
        postgres.drop_database(db.name)


def _set(e2e: E2E, name: str) -> dict[str, Any]:
    return dict(e2e.cluster.custom.get_namespaced_custom_object(c.GROUP, c.VERSION, e2e.ns, c.SET_PLURAL, name))


def _condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((x for x in (obj.get("status") or {}).get("conditions") or [] if x["type"] == type_), {})
