"""Pod gating decisions, without a cluster: requirements, Ready at target, "this revision or a descendant",
admission, release, and the webhook configuration."""

from __future__ import annotations

import argparse
import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from alembic_operator import constants as c
from alembic_operator import gate
from alembic_operator.approvals import APPROVAL_CHANGE, SET_APPROVAL_CHANGE
from alembic_operator.webhook import (
    APPROVAL_HANDLER_ID,
    HANDLER_ID,
    SET_APPROVAL_HANDLER_ID,
    WebhookOptions,
    add_arguments,
    make_certificates,
    options_from_args,
    webhook_configuration,
)

GATE = {"name": c.SCHEDULING_GATE}


def dbm(status: dict[str, Any] | None = None, generation: int = 2, name: str = "shop") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "generation": generation, "resourceVersion": "10"},
            "status": status or {}}


def ready(generation: int = 2, **status: Any) -> dict[str, Any]:
    return {"observedGeneration": generation, "phase": "Succeeded",
            "conditions": [{"type": "Ready", "status": "True", "observedGeneration": generation,
                            "reason": "Migrated", "message": "ok"}], **status}


def migrating(current: str, target: str, generation: int = 2, **status: Any) -> dict[str, Any]:
    return {"observedGeneration": generation, "phase": "Migrating", "currentRevision": current,
            "targetRevision": target,
            "conditions": [{"type": "Ready", "status": "False", "observedGeneration": generation,
                            "reason": "Migrating", "message": "migrating"}], **status}


def pod(labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None,
        gates: list[dict[str, str]] | None = None, name: str = "web-1", **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "labels": labels or {},
                         "annotations": annotations or {}},
            "spec": {"containers": [{"name": "app"}], **({"schedulingGates": gates} if gates is not None else {}),
                     **spec}}


WAIT = {c.WAIT_FOR_LABEL: "shop"}
LINEAGE = ["r4", "r3", "r2", "r1"]  # newest first, target included


# --- requirement ----------------------------------------------------------------------------------------------


def test_requirement_from_label_and_annotation() -> None:
    assert gate.requirement_of({"labels": {"app": "web"}}) is None
    assert gate.requirement_of({"labels": {c.WAIT_FOR_LABEL: ""}}) is None
    assert gate.requirement_of({"labels": WAIT}) == gate.Requirement("shop")
    assert gate.requirement_of({"labels": WAIT, "annotations": {c.REVISION_ANNOTATION: " r3 "}}) == (
        gate.Requirement("shop", "r3"))
    # "head" and an empty annotation mean Ready at the target, like no annotation.
    assert gate.requirement_of({"labels": WAIT, "annotations": {c.REVISION_ANNOTATION: "head"}}) == (
        gate.Requirement("shop"))
    assert gate.requirement_of({"labels": WAIT, "annotations": {c.REVISION_ANNOTATION: ""}}) == (
        gate.Requirement("shop"))
    assert gate.requirement_of(None) is None


# --- Ready at target --------------------------------------------------------------------------------------------


def test_ready_at_target_needs_ready_for_this_generation_and_current_equal_target() -> None:
    assert gate.ready_at_target(dbm(ready(currentRevision="r3", targetRevision="r3")))
    # Ready, but for an older generation: a new spec is not handled yet.
    assert not gate.ready_at_target(dbm(ready(generation=1, currentRevision="r3", targetRevision="r3")))
    # Ready (claimed) but the database is not at the target.
    assert not gate.ready_at_target(dbm(ready(currentRevision="r2", targetRevision="r3")))
    assert not gate.ready_at_target(dbm(ready(currentRevision=None, targetRevision=None)))
    assert not gate.ready_at_target(dbm(migrating("r2", "r3")))
    assert not gate.ready_at_target(dbm({}))
    assert not gate.ready_at_target(dbm({"observedGeneration": -1}))


def test_ready_condition_without_its_own_observed_generation_uses_the_status_one() -> None:
    st = ready(currentRevision="r3", targetRevision="r3")
    del st["conditions"][0]["observedGeneration"]
    assert gate.ready_at_target(dbm(st))
    st["observedGeneration"] = 1
    assert not gate.ready_at_target(dbm(st))


def test_evaluate_without_revision() -> None:
    req = gate.Requirement("shop")
    v = gate.evaluate(req, dbm(ready(currentRevision="r3", targetRevision="r3")))
    assert v.met and v.reason == gate.READY_AT_TARGET
    v = gate.evaluate(req, dbm(migrating("r2", "r3")))
    assert not v.met and v.reason == gate.NOT_READY
    assert "phase Migrating" in v.message and "r2" in v.message and "r3" in v.message
    v = gate.evaluate(req, None)
    assert not v.met and v.reason == gate.MIGRATION_NOT_FOUND and "does not exist" in v.message


def test_failed_and_rolled_back_keeps_holding_and_says_why() -> None:
    st = {"observedGeneration": 2, "phase": "Failed", "currentRevision": "r2", "targetRevision": "r3",
          "message": "migrate Job failed: check constraint violated; rolled back to r2",
          "plan": {"revisions": ["r3"], "lineage": ["r3", "r2", "r1"], "fromRevision": "r2", "toRevision": "r3"},
          "conditions": [{"type": "Ready", "status": "False", "observedGeneration": 2, "reason": "JobFailed"},
                         {"type": "Stalled", "status": "True", "observedGeneration": 2, "reason": "JobFailed"}]}
    for req in (gate.Requirement("shop"), gate.Requirement("shop", "r3")):
        v = gate.evaluate(req, dbm(st))
        assert not v.met
        assert "check constraint violated" in v.message
    # The old version's requirement still holds: the database is at r2.
    assert gate.evaluate(gate.Requirement("shop", "r2"), dbm(st)).met
    assert gate.evaluate(gate.Requirement("shop", "r1"), dbm(st)).met


# --- this revision or a descendant ------------------------------------------------------------------------------


@pytest.mark.parametrize(("current", "wanted", "state"), [
    ("r3", "r3", "reached"),      # exactly there
    ("r3", "r2", "reached"),      # r2 is an ancestor of r3 (later in the lineage)
    ("r3", "r1", "reached"),
    ("r3", "r4", "pending"),      # the target, not reached yet
    ("r2", "r3", "pending"),
    ("r3", "zz99", "unknown"),    # appears nowhere
])
def test_revision_state_from_lineage(current: str, wanted: str, state: str) -> None:
    st = {"currentRevision": current, "targetRevision": "r4", "plan": {"lineage": LINEAGE}}
    assert gate.revision_state(st, wanted) == state


def test_revision_state_from_plan_revisions_of_an_upgrade() -> None:
    # No lineage (an older operator): the plan's revisions, in the order they run, from r1 (excluded) to r4.
    plan = {"revisions": ["r2", "r3", "r4"], "fromRevision": "r1", "toRevision": "r4"}
    st = {"currentRevision": "r3", "targetRevision": "r4", "plan": plan}
    assert gate.revision_state(st, "r2") == "reached"
    assert gate.revision_state(st, "r3") == "reached"
    assert gate.revision_state(st, "r1") == "reached"  # where the plan started: an ancestor of all of them
    assert gate.revision_state(st, "r4") == "pending"
    assert gate.revision_state({**st, "currentRevision": "r1"}, "r2") == "pending"


def test_revision_state_ignores_the_order_of_a_downgrade_plan() -> None:
    # A downgrade lists the revisions undone, newest first: its order says nothing about ancestry here.
    plan = {"revisions": ["r4", "r3"], "fromRevision": "r4", "toRevision": "r2"}
    st = {"currentRevision": "r3", "targetRevision": "r2", "plan": plan}
    assert gate.revision_state(st, "r4") == "pending"
    assert gate.revision_state(st, "r3") == "reached"


def test_revision_known_from_history_only_is_pending_not_unknown() -> None:
    st = {"currentRevision": "r2", "history": [{"from": "r1", "to": "r5", "result": "Failed"}]}
    assert gate.revision_state(st, "r5") == "pending"
    assert gate.revision_state(st, "r6") == "unknown"


def test_abbreviated_revision_resolves_to_a_unique_prefix() -> None:
    st = {"currentRevision": "3f2a9c1d0b7e", "plan": {"lineage": ["9d81aa02c4f5", "3f2a9c1d0b7e", "1111aaaa2222"]}}
    assert gate.revision_state(st, "3f2a") == "reached"
    assert gate.revision_state(st, "1111") == "reached"
    assert gate.revision_state(st, "9d81") == "pending"
    assert gate.revision_state(st, "3f2") == "unknown"  # too short to be taken as an abbreviation


def test_no_current_revision_reaches_nothing() -> None:
    st = {"currentRevision": None, "targetRevision": "r1", "plan": {"lineage": ["r1"], "revisions": ["r1"],
                                                                    "fromRevision": "base", "toRevision": "r1"}}
    assert gate.revision_state(st, "r1") == "pending"


def test_evaluate_with_revision_ignores_readiness() -> None:
    st = migrating("r3", "r4", plan={"lineage": LINEAGE})
    assert gate.evaluate(gate.Requirement("shop", "r2"), dbm(st)).met
    v = gate.evaluate(gate.Requirement("shop", "r4"), dbm(st))
    assert not v.met and v.reason == gate.WAITING_FOR_REVISION
    v = gate.evaluate(gate.Requirement("shop", "nope"), dbm(st))
    assert not v.met and v.reason == gate.UNKNOWN_REVISION
    assert "unknown" in v.message and c.REVISION_ANNOTATION in v.message


# --- admission ------------------------------------------------------------------------------------------------


def test_admission_holds_only_labelled_pods_whose_requirement_is_not_met() -> None:
    moving = dbm(migrating("r1", "r2", plan={"lineage": ["r2", "r1"]}))
    done = dbm(ready(currentRevision="r2", targetRevision="r2"))
    assert not gate.admit(pod(), moving).hold  # unlabelled
    held = gate.admit(pod(WAIT), moving)
    assert held.hold and held.verdict is not None and held.verdict.reason == gate.NOT_READY
    assert not gate.admit(pod(WAIT), done).hold
    # The old version (needs r1) scales up during the migration: not held.
    assert not gate.admit(pod(WAIT, {c.REVISION_ANNOTATION: "r1"}), moving).hold
    assert gate.admit(pod(WAIT, {c.REVISION_ANNOTATION: "r2"}), moving).hold
    assert gate.admit(pod(WAIT), None).hold  # no such resource: hold (and say so)


def test_admission_leaves_pods_gated_in_their_template_and_excluded_namespaces_alone() -> None:
    moving = dbm(migrating("r1", "r2"))
    assert not gate.admit(pod(WAIT, gates=[GATE]), moving).hold
    assert not gate.admit(pod(WAIT), moving, excluded_namespaces=["ns"]).hold


def test_admission_cannot_gate_a_pod_with_node_name() -> None:
    decision = gate.admit(pod(WAIT, nodeName="n1"), dbm(migrating("r1", "r2")))
    assert not decision.hold and decision.warning and "nodeName" in decision.warning


def test_with_gate_keeps_other_gates() -> None:
    other = {"name": "example.com/other"}
    assert gate.with_gate(pod(WAIT, gates=[other])) == [other, GATE]
    assert gate.with_gate(pod(WAIT, gates=[other, GATE])) == [other, GATE]
    assert gate.with_gate(pod(WAIT)) == [GATE]


# --- release ----------------------------------------------------------------------------------------------------


def test_review_pods_reports_only_our_gated_pods() -> None:
    done = dbm(ready(currentRevision="r2", targetRevision="r2", plan={"lineage": ["r2", "r1"]}))
    pods = [
        pod(WAIT, gates=[GATE], name="a"),
        pod(WAIT, {c.REVISION_ANNOTATION: "r3"}, gates=[GATE], name="b"),
        pod(WAIT, gates=[{"name": "example.com/other"}], name="c"),  # not ours to release
        pod(WAIT, name="d"),  # already released
        pod({"app": "web"}, gates=[GATE], name="e"),  # gated but no requirement: not ours to decide
        {**pod(WAIT, gates=[GATE], name="f"), "metadata": {**pod(WAIT, name="f")["metadata"],
                                                           "deletionTimestamp": "2026-01-01T00:00:00Z"}},
    ]
    out = gate.review_pods(pods, {("ns", "shop"): done})
    assert [(p.name, p.verdict.met) for p in out] == [("a", True), ("b", False)]
    assert out[1].verdict.reason == gate.UNKNOWN_REVISION
    assert gate.review_pods(pods, {})[0].verdict.reason == gate.MIGRATION_NOT_FOUND


def test_release_patch_deletes_only_our_gate() -> None:
    assert gate.release_patch() == {"spec": {"schedulingGates": [{"$patch": "delete", "name": c.SCHEDULING_GATE}]}}


def test_held_summary() -> None:
    v = gate.Verdict(False, gate.NOT_READY, "waiting for X")
    held = [gate.PodVerdict("ns", f"web-{i}", f"u{i}", gate.Requirement("shop"), v) for i in range(7)]
    kind, reason, message = gate.summarize_held("shop", held)
    assert (kind, reason) == ("Normal", "PodsHeld")
    assert message.startswith("7 pod(s) held") and "and 2 more" in message and "waiting for X" in message
    unknown_verdict = gate.Verdict(False, gate.UNKNOWN_REVISION, "?")
    unknown = gate.PodVerdict("ns", "x", "ux", gate.Requirement("shop", "zz"), unknown_verdict)
    kind, reason, message = gate.summarize_held("shop", [*held, unknown])
    assert (kind, reason) == ("Warning", gate.UNKNOWN_REVISION) and "zz" in message


# --- the webhook's configuration and certificates ---------------------------------------------------------------


def test_webhook_configuration_fails_closed_for_labelled_pods_only() -> None:
    opts = WebhookOptions(exclude_namespaces=("alembic-operator",), timeout_seconds=7)
    body = webhook_configuration(opts, {"url": "https://10.0.0.1:9443", "caBundle": "Q0E="})
    hook, approving, identity, set_approving, set_identity = body["webhooks"]
    # DatabaseMigrations: one handler, two entries split by the API server; only approvals fail closed.
    assert [approving["name"], identity["name"]] == [f"approvals.{c.GROUP}", f"identity.{c.GROUP}"]
    assert approving["failurePolicy"] == "Fail" and identity["failurePolicy"] == "Ignore"
    for entry in (approving, identity):
        assert entry["clientConfig"] == {"url": f"https://10.0.0.1:9443/{APPROVAL_HANDLER_ID}", "caBundle": "Q0E="}
        assert entry["rules"] == [{"apiGroups": [c.GROUP], "apiVersions": [c.VERSION], "resources": [c.PLURAL],
                                   "operations": ["CREATE", "UPDATE"], "scope": "Namespaced"}]
    assert approving["matchConditions"] == [{"name": "approves", "expression": APPROVAL_CHANGE}]
    assert identity["matchConditions"] == [{"name": "does-not-approve", "expression": f"!({APPROVAL_CHANGE})"}]
    # DatabaseMigrationSets the same way, by their own handler (a set's approval counts for its members).
    assert [set_approving["name"], set_identity["name"]] == [f"set-approvals.{c.GROUP}", f"set-identity.{c.GROUP}"]
    assert set_approving["failurePolicy"] == "Fail" and set_identity["failurePolicy"] == "Ignore"
    for entry in (set_approving, set_identity):
        assert entry["clientConfig"]["url"] == f"https://10.0.0.1:9443/{SET_APPROVAL_HANDLER_ID}"
        assert entry["rules"][0]["resources"] == [c.SET_PLURAL]
    assert set_approving["matchConditions"] == [{"name": "approves", "expression": SET_APPROVAL_CHANGE}]
    assert set_identity["matchConditions"] == [{"name": "does-not-approve",
                                                "expression": f"!({SET_APPROVAL_CHANGE})"}]
    assert body["metadata"]["name"] == f"alembic-operator.{c.GROUP}"
    assert hook["clientConfig"] == {"url": f"https://10.0.0.1:9443/{HANDLER_ID}", "caBundle": "Q0E="}
    assert hook["failurePolicy"] == "Fail"
    assert hook["objectSelector"] == {"matchExpressions": [{"key": c.WAIT_FOR_LABEL, "operator": "Exists"}]}
    assert hook["namespaceSelector"] == {"matchExpressions": [
        {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["alembic-operator"]}]}
    assert hook["rules"] == [{"apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"],
                              "operations": ["CREATE"], "scope": "Namespaced"}]
    assert hook["sideEffects"] == "None" and hook["timeoutSeconds"] == 7


def test_webhook_configuration_through_a_service_and_for_some_namespaces() -> None:
    opts = WebhookOptions(service="ops/alembic-operator:8443", namespaces=("b", "a"), exclude_namespaces=("ops",))
    hook, approving, *_rest = webhook_configuration(opts, {"url": "https://ignored:9443",
                                                              "caBundle": "Q0E="})["webhooks"]
    assert approving["clientConfig"]["service"]["path"] == f"/{APPROVAL_HANDLER_ID}"
    assert approving["namespaceSelector"] == hook["namespaceSelector"]
    assert hook["clientConfig"] == {"caBundle": "Q0E=", "service": {
        "namespace": "ops", "name": "alembic-operator", "port": 8443, "path": f"/{HANDLER_ID}"}}
    assert hook["namespaceSelector"]["matchExpressions"][0] == {
        "key": "kubernetes.io/metadata.name", "operator": "In", "values": ["a", "b"]}
    assert "alembic-operator.ops.svc" in opts.hostnames()


def test_webhook_options_from_env_and_flags() -> None:
    opts = WebhookOptions.from_env({"ALEMBIC_OPERATOR_WEBHOOK_LISTEN": "127.0.0.1",
                                    "ALEMBIC_OPERATOR_WEBHOOK_PORT": "18443",
                                    "ALEMBIC_OPERATOR_WEBHOOK_NAMESPACES": "a, b",
                                    "ALEMBIC_OPERATOR_WEBHOOK_ENABLED": "false"})
    assert (opts.listen, opts.port, opts.namespaces, opts.enabled) == ("127.0.0.1", 18443, ("a", "b"), False)
    assert opts.url_host() == "127.0.0.1"
    assert WebhookOptions(listen="0.0.0.0").url_host() == "127.0.0.1"
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--webhook-port", "9000", "--webhook-exclude-namespace", "x,y"])
    opts = options_from_args(args, namespaces=["n"])
    assert (opts.enabled, opts.port, opts.exclude_namespaces, opts.namespaces) == (True, 9000, ("x", "y"), ("n",))
    assert not options_from_args(parser.parse_args(["--no-webhook"])).enabled
    # The configuration can be left to the chart (e.g. cert-manager's CA injection).
    assert WebhookOptions().managed()
    assert not options_from_args(parser.parse_args(["--webhook-config-name", "none"])).managed()
    assert not WebhookOptions.from_env({"ALEMBIC_OPERATOR_WEBHOOK_CONFIG_NAME": ""}).managed()


def test_generated_certificates_verify_for_the_hostnames(tmp_path: Path) -> None:
    files = make_certificates(tmp_path, ["127.0.0.1", "alembic-operator.ops.svc"])
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert sans.get_values_for_type(x509.DNSName) == ["alembic-operator.ops.svc"]
    assert files.key.stat().st_mode & 0o077 == 0
    # The chain loads into a server context and the CA verifies the serving certificate.
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(files.cert, files.key)
    ca = x509.load_pem_x509_certificate(files.ca.read_bytes())
    cert.verify_directly_issued_by(ca)


def test_a_late_watch_event_never_takes_the_cache_back_in_time() -> None:
    from alembic_operator.release import Gatekeeper

    class Quiet(Gatekeeper):
        def kick(self, key: tuple[str, str]) -> None:
            pass

        def watch_pods(self, namespace: str) -> None:
            pass

    keeper = Quiet()
    old_ready = dbm(ready(generation=1, currentRevision="r1", targetRevision="r1"), generation=1)
    old_ready["metadata"]["resourceVersion"] = "5"
    fresh = dbm(migrating("r1", "r2"), generation=2)  # read by the webhook: newer
    keeper.remember(fresh)
    keeper.migration_seen("MODIFIED", old_ready)  # the watch catching up
    assert keeper.migrations.get(("ns", "shop")) == fresh
    newer = dbm(ready(currentRevision="r2", targetRevision="r2"))
    newer["metadata"]["resourceVersion"] = "11"
    keeper.migration_seen("MODIFIED", newer)
    assert keeper.migrations.get(("ns", "shop")) == newer
    keeper.migration_seen("DELETED", newer)
    assert ("ns", "shop") not in keeper.migrations
