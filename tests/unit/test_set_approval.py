"""One approval for a whole DatabaseMigrationSet (no server): the webhook's decisions on a set (who approved which
hash, the four-eyes rule, what fails closed), what a member counts of its owning set's approvals (and when it counts
nothing), the plan groups shown with their approver, and a member's approval decision taking the set's."""

from __future__ import annotations

import copy
import json
from typing import Any

from alembic_operator import approvals
from alembic_operator import constants as c
from alembic_operator.approvals import User, set_approves, set_four_eyes, set_hashes, set_identity_patch
from alembic_operator.fleet.api import PlanGroup, parse_set_spec
from alembic_operator.fleet.approval import (
    SetApprovals,
    announced_by_set,
    approvals_of,
    member_approvals,
    member_template_hash,
    of_set,
    shown,
)
from alembic_operator.fleet.strategy import Target, member_spec, template_hash
from alembic_operator.objects import Migration

ALICE, BOB = User("alice"), User("bob")
H1, H2 = "sha256:" + "a1" * 32, "sha256:" + "b2" * 32
TEMPLATE = {"migrations": {"image": "shop:2"}, "targetRevision": "head", "backup": {"enabled": False}}


def a_set(annotations: dict[str, str] | None = None, **approval: Any) -> dict[str, Any]:
    template = {**TEMPLATE, "approval": dict(approval)} if approval else dict(TEMPLATE)
    return {"metadata": {"name": "tenants", "namespace": "shop", "uid": "set-uid",
                         "annotations": dict(annotations or {})},
            "spec": {"template": template, "targets": {"selector": {"matchLabels": {"tier": "t"}}}}}


def approving(obj: dict[str, Any], value: str) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    out["metadata"]["annotations"][c.APPROVE_ANNOTATION] = value
    return out


def test_a_set_approves_each_new_hash_and_the_record_names_each_approver() -> None:
    old = a_set()
    assert set_hashes(f" {H1}, {H2},{H1}") == [H1, H2] and set_hashes(None) == []
    assert set_approves(old, approving(old, H1)) == [H1]
    first = approving(old, H1)
    first["metadata"]["annotations"].update(set_identity_patch(old, first, ALICE))  # as the webhook leaves it
    assert approvals.set_record(first["metadata"]["annotations"]) == {H1: "alice"}
    # Bob adds the second plan: only it is his; Alice's stays hers.
    both = approving(first, f"{H1},{H2}")
    assert set_approves(first, both) == [H2]
    patch = set_identity_patch(first, both, BOB)
    assert json.loads(str(patch[approvals.APPROVED_BY])) == {H1: "alice", H2: "bob"}
    # Removing a hash approves nothing and drops its record; a forged record is replaced by the truth.
    assert set_approves(both, approving(first, H1)) == []
    forged = approving(first, H1)
    forged["metadata"]["annotations"][approvals.APPROVED_BY] = json.dumps({H1: "mallory"})
    assert json.loads(str(set_identity_patch(first, forged, BOB)[approvals.APPROVED_BY])) == {H1: "alice"}
    gone = copy.deepcopy(first)
    del gone["metadata"]["annotations"][c.APPROVE_ANNOTATION]
    assert set_identity_patch(first, gone, BOB) == {approvals.APPROVED_BY: None}
    # A hash approved in the same request that names it anew is this user's, not an earlier record's.
    assert json.loads(str(set_identity_patch(old, approving(old, H1), BOB)[approvals.APPROVED_BY])) == {H1: "bob"}
    assert approvals.set_record({approvals.APPROVED_BY: "not json"}) == {}


def test_the_four_eyes_rule_on_a_set_and_the_refusal() -> None:
    before = a_set({approvals.SPEC_CHANGED_BY: "alice"}, requireDifferentUser=True)
    assert set_four_eyes(before, approving(before, H1), BOB, required_everywhere=False) is None
    problem = set_four_eyes(before, approving(before, H1), ALICE, required_everywhere=False)
    assert problem is not None and "alice changed the spec of this DatabaseMigrationSet" in problem
    plain = a_set({approvals.SPEC_CHANGED_BY: "alice"})
    assert set_four_eyes(plain, approving(plain, H1), ALICE, required_everywhere=False) is None
    assert set_four_eyes(plain, approving(plain, H1), ALICE, required_everywhere=True) is not None
    message = approvals.set_refusal(ALICE, "shop", "tenants", [f"plan {H1}"])
    assert "may not approve databasemigrationsets/tenants" in message and f"databasemigrationsets.{c.GROUP}" in message
    assert f"(plan {H1})" in message


def test_a_template_that_loosens_approval_is_an_approval_of_the_set() -> None:
    """Every member carries the template's spec.approval: loosening it is approving, governed at the set."""
    plain, loose = a_set(), a_set(allowDestructive=True)
    assert approvals.set_approval_items(None, loose) == ["spec.template.approval.allowDestructive: true"]
    assert approvals.set_approval_items(None, plain) == [] and approvals.set_approval_items(loose, loose) == []
    assert approvals.set_approval_items(plain, approving(loose, H1)) == [
        f"plan {H1}", "spec.template.approval.allowDestructive: true"]
    assert approvals.set_approval_items(loose, plain) == []  # tightening approves nothing
    # The four-eyes rule: whoever loosens the template changes the spec in the same request.
    assert set_four_eyes(plain, loose, ALICE, required_everywhere=True) is not None
    assert set_four_eyes(plain, loose, ALICE, required_everywhere=False) is None


def test_the_operator_applying_a_sets_template_approves_nothing_new() -> None:
    """A member created by the operator (its own user name) under a set's controller reference carries the
    template's loosened approval without an approver; anyone else, or anything beyond spec.approval, does not."""
    operator = User("system:serviceaccount:ops:alembic-operator")
    spec = member_spec({**TEMPLATE, "approval": {"allowDestructive": True}}, Target("t001", "url"), None)
    new = member(spec)
    new["metadata"]["ownerReferences"][0]["apiVersion"] = c.API_VERSION
    by_operator = approvals.set_member_by_the_operator
    assert approvals.approves(None, new) == ["spec.approval.allowDestructive: true"]
    assert by_operator(None, new, operator, operator.username) == "tenants"
    assert by_operator(None, new, ALICE, operator.username) is None  # a person is governed as always
    assert by_operator(None, new, operator, None) is None  # the operator's identity unknown: governed as always
    annotated = approving({**new, "metadata": {**new["metadata"], "annotations": {}}}, H1)
    assert by_operator(None, annotated, operator, operator.username) is None  # the annotation is a person's act
    orphan = copy.deepcopy(new)
    orphan["metadata"]["ownerReferences"][0]["controller"] = False
    assert by_operator(None, orphan, operator, operator.username) is None


def test_the_webhook_refuses_a_loosened_member_from_a_person_and_admits_the_operators() -> None:
    import asyncio
    import logging

    import kopf

    from alembic_operator import webhook

    class Client:
        def __init__(self) -> None:
            self.asked: list[tuple[str, str]] = []

        async def may(self, username: str, *args: Any) -> tuple[bool, str]:
            self.asked.append((username, args[-1]))
            return False, ""

    operator = "system:serviceaccount:ops:alembic-operator"
    spec = member_spec({**TEMPLATE, "approval": {"allowDestructive": True}}, Target("t001", "url"), None)
    new = member(spec)
    new["metadata"]["ownerReferences"][0]["apiVersion"] = c.API_VERSION
    opts = webhook.WebhookOptions(require_different_approver=True)
    log = logging.getLogger("test")

    def admit(user: str, body: dict[str, Any], governed: approvals.Governed) -> kopf.Patch:
        patch = kopf.Patch()
        asyncio.run(webhook.govern_approvals(governed, client, opts, kopf.Body(body), None,  # type: ignore[arg-type]
                                             {"username": user}, patch, log, operator=operator))
        return patch

    client = Client()
    patch = admit(operator, new, approvals.MIGRATION_APPROVALS)
    assert client.asked == [] and patch["metadata"]["annotations"][approvals.SPEC_CHANGED_BY] == operator
    try:
        admit("alice", new, approvals.MIGRATION_APPROVALS)
        raise AssertionError("admitted")
    except kopf.AdmissionError as err:
        assert "alice may not approve databasemigrations/tenants-t001" in str(err)
        assert "spec.approval.allowDestructive: true" in str(err)
    try:  # the set itself, loosened by a user who may not approve it
        admit("alice", a_set(allowDestructive=True), approvals.SET_APPROVALS)
        raise AssertionError("admitted")
    except kopf.AdmissionError as err:
        assert "may not approve databasemigrationsets/tenants in namespace shop (spec.template.approval." \
            "allowDestructive: true)" in str(err)
    assert client.asked == [("alice", c.PLURAL), ("alice", c.SET_PLURAL)]


def test_the_fail_closed_condition_names_the_sets_annotations_and_its_templates_approval() -> None:
    cel = approvals.SET_APPROVAL_CHANGE
    for key in (c.APPROVE_ANNOTATION, approvals.APPROVED_BY, approvals.SPEC_CHANGED_BY):
        assert f"'{key}'" in cel
    for name, _ in approvals.LOOSENING:  # the members carry the template's settings: loosening them fails closed
        assert f"has(object.spec.template.approval.{name}) ? object.spec.template.approval.{name}" in cel
    assert "object.spec.approval" not in cel


def test_governed_only_the_webhooks_record_counts() -> None:
    annotations = {c.APPROVE_ANNOTATION: f"{H1},{H2}", approvals.APPROVED_BY: json.dumps({H1: "alice"})}
    assert approvals_of(annotations, governed=True) == {H1: "alice"}  # H2 without the webhook's word: nothing
    assert approvals_of(annotations, governed=False) == {H1: "alice", H2: c.APPROVE_ANNOTATION}
    assert approvals_of({}, governed=False) == {}


def member(spec: dict[str, Any] | None = None, uid: str = "set-uid", label: str = "tenants",
           secret: str = "t001") -> Migration:
    return {"metadata": {"name": f"tenants-{secret}", "namespace": "shop", "labels": {c.SET_LABEL: label},
                         "ownerReferences": [{"kind": c.SET_KIND, "name": "tenants", "uid": uid, "controller": True}]},
            "spec": spec if spec is not None else member_spec(TEMPLATE, Target(secret, "url"), None)}


def owner(**approved: str) -> SetApprovals:
    body = a_set()
    kept = of_set(body["metadata"], parse_set_spec(body["spec"]), governed=True, targets=frozenset({"t001", "t002"}))
    return SetApprovals(name=kept.name, uid=kept.uid, template_hash=kept.template_hash, approvals=dict(approved),
                        targets=kept.targets)


def test_a_member_counts_its_owning_sets_approvals_only_when_it_is_the_sets() -> None:
    kept = owner(**{H1: "alice"})
    assert member_approvals(member(), kept) == {H1: "alice (DatabaseMigrationSet tenants)"}
    # A retry's token among the pods' annotations is still the set's template.
    retried = member(member_spec(TEMPLATE, Target("t001", "url"), "2"))
    assert member_approvals(retried, kept) == {H1: "alice (DatabaseMigrationSet tenants)"}
    # Not the set's: another owner, another label, a database that is not a target, a changed template.
    assert member_approvals(member(uid="other"), kept) == {}
    assert member_approvals(member(label="other"), kept) == {}
    assert member_approvals(member(secret="t999"), kept) == {}
    changed = member_spec({**TEMPLATE, "targetRevision": "r9"}, Target("t001", "url"), None)
    assert member_approvals(member(changed), kept) == {}
    assert member_approvals(member(), None) == {} and member_approvals(member(), owner()) == {}
    # Targets unknown until the set's first pass: nothing counts yet.
    assert member_approvals(member(), SetApprovals("tenants", "set-uid", kept.template_hash, {H1: "alice"})) == {}


def test_a_member_the_set_announces_is_its_controlled_member_at_the_template_it_was_given() -> None:
    """Read from the member alone (no set in memory after a restart): its set announces its plans waiting for
    approval, and it none of its own (notify.due.due(by_set=True))."""
    def given(obj: Migration, template: dict[str, Any] = TEMPLATE) -> Migration:
        out = copy.deepcopy(obj)
        out["metadata"]["annotations"] = {c.SET_TEMPLATE_ANNOTATION: template_hash(
            parse_set_spec({"template": template, "targets": {}}).template.model_dump(
                mode="json", by_alias=True, exclude_none=True))}
        return out

    assert announced_by_set(given(member())) == "tenants"
    assert announced_by_set(given(member(member_spec(TEMPLATE, Target("t001", "url"), "2")))) == "tenants"  # a retry
    assert announced_by_set(member()) is None  # no set-template annotation: not given by a set
    assert announced_by_set(given(member(label="other"))) is None  # its label names another set than its owner
    edited = given(member())
    edited["spec"]["targetRevision"] = "r9"  # a person changed the member's spec: it announces its own
    assert announced_by_set(edited) is None
    not_controller = given(member())
    not_controller["metadata"]["ownerReferences"][0]["controller"] = False
    assert announced_by_set(not_controller) is None
    # A member left on an older template (the set's changed since) is still the set's to announce.
    older = {**TEMPLATE, "targetRevision": "r1"}
    assert announced_by_set(given(member(member_spec(older, Target("t001", "url"), None)), older)) == "tenants"


def test_the_members_template_hashes_as_the_sets() -> None:
    body = a_set()
    spec = parse_set_spec(body["spec"])
    set_hash = of_set(body["metadata"], spec, governed=False).template_hash
    assert set_hash == template_hash(spec.template.model_dump(mode="json", by_alias=True, exclude_none=True))
    # The member's spec as the API server keeps it: the set's template with its defaults filled in, plus a database.
    stored = member_spec(spec.template.model_dump(mode="json", by_alias=True, exclude_none=True),
                         Target("t001", "url"), None)
    assert member_template_hash(stored) == set_hash
    assert member_template_hash({"migrations": "not an object"}) is None


def test_plan_groups_show_who_approved_them_for_the_set() -> None:
    plans = [PlanGroup(hash=H1, count=180, migrations=["tenants-t001"]),
             PlanGroup(hash=H2, count=3, migrations=["tenants-t007"])]
    out = shown(plans, {H1: "alice"})
    assert [(p.hash, p.approved_by) for p in out] == [(H1, "alice"), (H2, None)]


def test_a_members_destructive_plan_goes_on_with_its_sets_approval_of_that_hash() -> None:
    from dataclasses import replace

    from test_reconcile import PLAN_DESTRUCTIVE, advance, cond, decide, done, observe

    jobs = {"plan": done("plan", PLAN_DESTRUCTIVE)}
    waiting = advance(decide(observe()), jobs=jobs)
    h = waiting.status["plan"]["hash"]

    def by_set(approved: dict[str, str]) -> Any:
        return decide(replace(observe(waiting.status, jobs=jobs), set_approvals=approved))

    other = by_set({"sha256:other": "alice (DatabaseMigrationSet tenants)"})
    assert other.status["phase"] == "AwaitingApproval"  # another plan's approval: held apart
    ok = by_set({h: "alice (DatabaseMigrationSet tenants)"})
    assert ok.status["phase"] == "BackingUp" and [j.role for j in ok.jobs] == ["backup"]
    assert cond(ok, c.APPROVAL_REQUIRED)["message"] == ("destructive changes approved by alice (DatabaseMigrationSet "
                                                        "tenants)")


def test_kubectl_dbm_shows_which_members_wait_on_which_plan_and_approves_one_for_the_set() -> None:
    from alembic_operator.dbm import sets
    from alembic_operator.fleet.api import DatabaseMigrationSetStatus

    status = DatabaseMigrationSetStatus(plans=[PlanGroup(hash=H1, count=3, migrations=["tenants-t001"]),
                                               PlanGroup(hash=H2, count=1, migrations=["tenants-t007"])])
    obj = {"metadata": {"name": "tenants", "resourceVersion": "42", "annotations": {}},
           "status": status.model_dump(mode="json", by_alias=True, exclude_none=True)}
    (one,) = sets.by_name([obj])
    members = [{"metadata": {"name": f"tenants-t00{i}"},
                "status": {"phase": "AwaitingApproval", "plan": {"hash": H2 if i == 7 else H1}}} for i in (1, 2, 3, 7)]
    members.append({"metadata": {"name": "tenants-t004"}, "status": {"phase": "Succeeded", "plan": {"hash": H1}}})
    waiting = sets.waiting_by_plan(members)
    assert waiting == {H1: ["tenants-t001", "tenants-t002", "tenants-t003"], H2: ["tenants-t007"]}
    detail = sets.detail_text(one, waiting)
    assert "tenants-t001, tenants-t002, tenants-t003" in detail and "tenants-t007" in detail
    assert f"kubectl dbm approve --set tenants --hash {H1}" in detail
    # Two plans wait: the hash must be named; a hash no target waits for is refused; the patch keeps the version.
    group, why = sets.approval_choice(one, None)
    assert group is None and "2 different plans" in why and H1 in why and H2 in why
    group, why = sets.approval_choice(one, "sha256:unknown")
    assert group is None and "no target of dbms/tenants waits for plan sha256:unknown" in why
    group, why = sets.approval_choice(one, H1)
    assert group is not None and group.hash == H1 and why == ""
    assert sets.approve_patch(one, H1) == {"metadata": {"resourceVersion": "42",
                                                        "annotations": {c.APPROVE_ANNOTATION: H1}}}
    # Once H1 is approved, the other is the only one left; approving H1 again changes nothing.
    one["metadata"]["annotations"] = {c.APPROVE_ANNOTATION: H1}
    group, why = sets.approval_choice(one, None)
    assert group is not None and group.hash == H2
    assert sets.approve_patch(one, H2)["metadata"] == {"resourceVersion": "42",
                                                       "annotations": {c.APPROVE_ANNOTATION: f"{H1},{H2}"}}
    assert sets.approval_choice(one, H1)[1] == "already approved"
