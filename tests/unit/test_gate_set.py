"""Pods that wait for a whole DatabaseMigrationSet (no server): the requirement read from the pod, the verdict on
the set and every one of its DatabaseMigrations, and the admission and review that use it."""

from __future__ import annotations

from typing import Any

from alembic_operator import constants as c
from alembic_operator import gate, reasons

SET_POD = {"labels": {c.WAIT_FOR_LABEL: "tenants"}, "annotations": {c.WAIT_FOR_KIND_ANNOTATION: c.SET_KIND}}


def member(name: str, current: str = "r4", ready: bool = True, generation: int = 1) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "generation": generation},
            "status": {"observedGeneration": generation, "currentRevision": current, "targetRevision": "r4",
                       "plan": {"lineage": ["r4", "r3", "r2", "r1"]},
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False",
                                       "observedGeneration": generation, "reason": "Migrated"}]}}


def a_set(ready: bool = True, total: int = 2, generation: int = 3, observed: int = 3) -> dict[str, Any]:
    return {"kind": c.SET_KIND, "metadata": {"name": "tenants", "namespace": "ns", "generation": generation},
            "status": {"observedGeneration": observed, "waveName": "done" if ready else "1/2",
                       "counts": {"total": total, "ready": total if ready else 1},
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False",
                                       "observedGeneration": observed,
                                       "reason": "AllTargetsReady" if ready else "RollingOut"}]}}


def view(s: dict[str, Any] | None, *members: dict[str, Any]) -> gate.SetView:
    return gate.SetView(s, tuple(members))


def test_the_requirement_names_a_set_by_its_annotation() -> None:
    assert gate.requirement_of(SET_POD) == gate.Requirement("tenants", None, c.SET_KIND)
    short = {**SET_POD, "annotations": {c.WAIT_FOR_KIND_ANNOTATION: "dbms", c.REVISION_ANNOTATION: "r3"}}
    assert gate.requirement_of(short) == gate.Requirement("tenants", "r3", c.SET_KIND)
    assert gate.requirement_of({"labels": SET_POD["labels"]}) == gate.Requirement("tenants")  # a DatabaseMigration
    assert "every DatabaseMigration of DatabaseMigrationSet tenants" in gate.Requirement(
        "tenants", None, c.SET_KIND).describe()


def test_every_member_ready_and_the_set_ready_at_its_generation() -> None:
    need = gate.Requirement("tenants", None, c.SET_KIND)
    met = gate.evaluate_set(need, view(a_set(), member("tenants-a"), member("tenants-b")))
    assert met.met and met.reason == reasons.READY_AT_TARGET and "2 DatabaseMigration(s)" in met.message
    # Not yet: the set rolls out, a new template not observed yet, a target without its DatabaseMigration yet.
    rolling = gate.evaluate_set(need, view(a_set(ready=False), member("tenants-a"), member("tenants-b", "r3", False)))
    assert not rolling.met and rolling.reason == reasons.MIGRATION_NOT_READY and "1/2 Ready" in rolling.message
    assert not gate.evaluate_set(need, view(a_set(observed=2), member("tenants-a"), member("tenants-b"))).met
    assert not gate.evaluate_set(need, view(a_set(total=3), member("tenants-a"), member("tenants-b"))).met
    # The set says Ready but a member is not (a watch a moment behind): held, naming the member.
    behind = gate.evaluate_set(need, view(a_set(), member("tenants-a"), member("tenants-b", "r3", False)))
    assert not behind.met and "tenants-b" in behind.message
    gone = gate.evaluate_set(need, view(None))
    assert not gone.met and gone.reason == reasons.MIGRATION_NOT_FOUND
    assert "DatabaseMigrationSet tenants does not exist" in gone.message


def test_a_revision_holds_for_every_database_of_the_set() -> None:
    need = gate.Requirement("tenants", "r3", c.SET_KIND)
    rolling = a_set(ready=False)
    assert gate.evaluate_set(need, view(rolling, member("tenants-a"), member("tenants-b", "r3", False))).met
    waiting = gate.evaluate_set(need, view(rolling, member("tenants-a"), member("tenants-b", "r2", False)))
    assert not waiting.met and waiting.reason == reasons.WAITING_FOR_REVISION and "tenants-b" in waiting.message


def test_admission_and_review_decide_on_the_set() -> None:
    pod = {"metadata": {**SET_POD, "name": "report-1", "namespace": "ns", "uid": "u1"}, "spec": {"containers": []}}
    rolling = view(a_set(ready=False), member("tenants-a"), member("tenants-b", "r3", False))
    held = gate.admit(pod, None, (), rolling)
    assert held.hold and held.verdict is not None and "DatabaseMigrationSet tenants" in held.verdict.message
    assert not gate.admit(pod, None, (), view(a_set(), member("tenants-a"), member("tenants-b"))).hold
    gated = {**pod, "spec": {"containers": [], "schedulingGates": [{"name": c.SCHEDULING_GATE}]}}
    (verdict,) = gate.review_pods([gated], {}, {("ns", "tenants"): view(a_set(), member("tenants-a"),
                                                                         member("tenants-b"))})
    assert verdict.verdict.met and verdict.requirement.kind == c.SET_KIND
    # A DatabaseMigration of the same name does not stand for the set.
    (unknown,) = gate.review_pods([gated], {("ns", "tenants"): member("tenants")})
    assert not unknown.verdict.met and unknown.verdict.reason == reasons.MIGRATION_NOT_FOUND
