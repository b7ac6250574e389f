"""Who may approve and who did: the webhook's decisions, from admission requests as dicts (no server)."""

from __future__ import annotations

import copy
from typing import Any

from alembic_operator import approvals
from alembic_operator import constants as c
from alembic_operator.approvals import User, approved_by, approves, four_eyes, identity_patch

ALICE, BOB = User("alice", groups=("devs",)), User("bob", groups=("dbas",))
HASH = "sha256:" + "ab" * 32


def dbm(annotations: dict[str, str] | None = None, **approval: Any) -> dict[str, Any]:
    return {"metadata": {"name": "shop", "namespace": "shop", "annotations": dict(annotations or {})},
            "spec": {"targetRevision": "head", "migrations": {"image": "shop:1"}, "approval": dict(approval)}}


def annotated(obj: dict[str, Any], **more: str) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    out["metadata"]["annotations"].update(more)
    return out


def test_what_approves() -> None:
    old = dbm()
    assert approves(old, annotated(old, **{c.APPROVE_ANNOTATION: HASH})) == [
        f"the annotation {c.APPROVE_ANNOTATION}={HASH}"]
    assert approves(old, dbm(allowDestructive=True)) == ["spec.approval.allowDestructive: true"]
    assert approves(dbm(requireForLocking=True), dbm()) == ["spec.approval.requireForLocking: false"]
    assert approves(dbm(requireDifferentUser=True), dbm()) == ["spec.approval.requireDifferentUser: false"]
    assert approves(None, dbm(allowDestructive=True)) == ["spec.approval.allowDestructive: true"]  # CREATE
    # Not approvals: no change, a stricter setting, removing an approval, another annotation.
    same = annotated(old, **{c.APPROVE_ANNOTATION: HASH})
    assert approves(same, copy.deepcopy(same)) == []
    assert approves(old, dbm(requireForLocking=True)) == []
    assert approves(same, old) == []
    assert approves(old, annotated(old, team="x")) == []
    assert approves(None, dbm()) == []


def test_identity_annotations_tell_the_truth() -> None:
    old = dbm()
    changed = dbm()
    changed["spec"]["targetRevision"] = "r9"
    assert identity_patch(old, changed, ALICE) == {approvals.SPEC_CHANGED_BY: "alice"}
    approve = annotated(changed, **{c.APPROVE_ANNOTATION: HASH, approvals.SPEC_CHANGED_BY: "alice"})
    before = annotated(changed, **{approvals.SPEC_CHANGED_BY: "alice"})
    assert identity_patch(before, approve, BOB) == {approvals.APPROVED_BY: f"bob {HASH}"}
    # A forged record is replaced by what was (and removed when there was nothing).
    forged = annotated(before, **{approvals.SPEC_CHANGED_BY: "mallory", approvals.APPROVED_BY: f"mallory {HASH}"})
    assert identity_patch(before, forged, BOB) == {approvals.SPEC_CHANGED_BY: "alice", approvals.APPROVED_BY: None}
    assert identity_patch(None, dbm(), ALICE) == {approvals.SPEC_CHANGED_BY: "alice"}  # CREATE


def test_four_eyes() -> None:
    before = annotated(dbm(requireDifferentUser=True), **{approvals.SPEC_CHANGED_BY: "alice"})
    approve = annotated(before, **{c.APPROVE_ANNOTATION: HASH})
    assert four_eyes(before, approve, BOB, required_everywhere=False) is None
    problem = four_eyes(before, approve, ALICE, required_everywhere=False)
    assert problem is not None and "alice changed the spec" in problem and "requireDifferentUser" in problem
    # Off for this resource, or on for every resource by the chart's default.
    off = annotated(dbm(), **{approvals.SPEC_CHANGED_BY: "alice"})
    assert four_eyes(off, annotated(off, **{c.APPROVE_ANNOTATION: HASH}), ALICE, required_everywhere=False) is None
    assert four_eyes(off, annotated(off, **{c.APPROVE_ANNOTATION: HASH}), ALICE, required_everywhere=True)
    opted_out = annotated(dbm(requireDifferentUser=False), **{approvals.SPEC_CHANGED_BY: "alice"})
    assert four_eyes(opted_out, annotated(opted_out, **{c.APPROVE_ANNOTATION: HASH}), ALICE,
                     required_everywhere=True)  # the chart's floor holds
    # Changing the spec and approving in one request is the same user on both sides.
    both = copy.deepcopy(approve)
    both["spec"]["targetRevision"] = "r9"
    assert four_eyes(before, both, BOB, required_everywhere=False) is not None


def test_refusal_names_the_permission_and_the_fix() -> None:
    message = approvals.refusal(ALICE, "shop", "orders", ["the annotation x=y"])
    assert "alice may not approve databasemigrations/orders in namespace shop" in message
    assert f"'approve' verb on databasemigrations.{c.GROUP}" in message and "alembic-operator-approver" in message


def test_approved_by_reads_the_record_for_this_hash_only() -> None:
    annotations = {approvals.APPROVED_BY: f"Jane Doe {HASH}"}
    assert approved_by(annotations, HASH) == "Jane Doe"
    assert approved_by(annotations, "sha256:other") is None and approved_by({}, HASH) is None
