"""A DatabaseMigrationSet's rollout decisions (fleet.strategy), without a cluster: the order and the waves, the cap,
the canary barrier, the failure budget, pause, retry, late and removed targets, plans shown per hash, the status and
the Events."""

from __future__ import annotations

from typing import Any

import pytest

from alembic_operator import constants as c
from alembic_operator import reasons
from alembic_operator.api import SpecError
from alembic_operator.fleet.api import DatabaseMigrationSetStatus, parse_set_spec, template_json
from alembic_operator.fleet.strategy import (
    Inputs,
    Member,
    State,
    Target,
    decide,
    member_of,
    member_spec,
    migration_name,
    ordered,
    template_hash,
    wave_ends,
)


def spec(**strategy: Any) -> Any:
    return parse_set_spec({"template": {"migrations": {"image": "shop:2"}, "targetRevision": "head",
                                        "backup": {"enabled": False}},
                           "targets": {"selector": {"matchLabels": {"tier": "tenant"}}},
                           "strategy": strategy})


def tenants(n: int) -> list[Target]:
    return [Target(f"t{i:03d}", "url") for i in range(n)]


HASH = "h1"


def inputs(s: Any, targets: list[Target], states: dict[str, State] | None = None,
           previous: DatabaseMigrationSetStatus | None = None, retry: str | None = None,
           old: set[str] = frozenset(), reason: str = "JobFailed") -> Inputs:  # type: ignore[assignment]
    members = [Member(name=f"s-{t}", target=t, template_hash="h0" if t in old else HASH, state=st,
                      reason=reason if st == "failed" else "", plan_hash="sha256:p" if st == "awaiting" else None)
               for t, st in (states or {}).items()]
    return Inputs(name="s", generation=3, spec=s, template_hash=HASH, targets=targets, members=members,
                  previous=previous or DatabaseMigrationSetStatus(), retry_token=retry)


def condition(status: DatabaseMigrationSetStatus, type_: str) -> tuple[str, str]:
    cond = next(x for x in status.conditions if x.type == type_)
    return cond.status, cond.reason


def test_the_bench_shape_canary_two_then_ten_fifty_hundred_percent() -> None:
    s = spec(canary={"count": 2}, waves=["10%", "50%", "100%"], maxInFlight=20)
    order, canaries = ordered(s, tenants(210))
    assert canaries == 2 and [t.secret for t in order[:3]] == ["t000", "t001", "t002"]
    assert wave_ends(s, 210, 2) == [2, 21, 105, 210]
    assert wave_ends(spec(waves=["5", "5", "50%"]), 10, 0) == [5, 10]  # empty waves dropped, the last reaches all
    assert wave_ends(spec(), 0, 0) == []


def test_canaries_by_label_first_then_by_name() -> None:
    s = spec(canary={"count": 2, "selector": {"matchLabels": {"canary": "yes"}}})
    targets = [Target("a", "url"), Target("b", "url"), Target("z", "url", {"canary": "yes"})]
    order, canaries = ordered(s, targets)
    assert canaries == 2 and [t.secret for t in order] == ["z", "a", "b"]


def test_first_pass_starts_only_the_canaries_and_says_so() -> None:
    s = spec(canary={"count": 2}, waves=["10%", "100%"], maxInFlight=20)
    out = decide(inputs(s, tenants(30)))
    assert [t.secret for t in out.start] == ["t000", "t001"]
    assert out.status.wave_name == "canary" and out.status.counts.migrating == 2 and out.status.counts.pending == 28
    assert [(e.reason, e.message.split(":")[0]) for e in out.events] == [(reasons.WAVE_STARTED, "wave canary started")]
    assert condition(out.status, c.RECONCILING) == ("True", reasons.ROLLING_OUT)


def test_a_failed_canary_starts_nothing_beyond_the_canary_wave_and_stalls_naming_it() -> None:
    s = spec(canary={"count": 2}, waves=["10%", "100%"], maxInFlight=20, failureBudget=1)
    out = decide(inputs(s, tenants(30), {"t000": "ready", "t001": "failed"}))
    assert out.start == [] and out.status.wave == 0
    assert condition(out.status, c.STALLED) == ("True", reasons.FAILURE_BUDGET_SPENT)
    assert [(f.target, f.migration, f.canary, f.reason) for f in out.status.failed] == [
        ("t001", "s-t001", True, "JobFailed")]
    assert "t001 (JobFailed)" in out.status.message and c.RETRY_ANNOTATION in out.status.message
    # a larger budget does not let a failed canary through either
    more = decide(inputs(spec(canary={"count": 2}, failureBudget=5), tenants(30),
                         {"t000": "ready", "t001": "failed"}))
    assert more.start == [] and condition(more.status, c.STALLED) == ("True", reasons.CANARY_FAILED)


def test_retry_runs_the_failed_ones_again_once_per_token_and_the_waves_go_on() -> None:
    s = spec(canary={"count": 2}, waves=["10%", "100%"], maxInFlight=20)
    first = decide(inputs(s, tenants(30), {"t000": "ready", "t001": "failed"}, retry="1"))
    assert [m.name for m in first.retry] == ["s-t001"] and first.status.retried == "1"
    assert first.start == [] and first.status.counts.migrating == 1
    assert condition(first.status, c.RECONCILING) == ("True", reasons.ROLLING_OUT)
    assert first.events[0].reason == reasons.TARGETS_RETRIED
    again = decide(inputs(s, tenants(30), {"t000": "ready", "t001": "failed"}, retry="1", previous=first.status))
    assert again.retry == []  # the same token: acted on already
    done = decide(inputs(s, tenants(30), {"t000": "ready", "t001": "ready"}, previous=first.status))
    assert [t.secret for t in done.start] == ["t002"]  # 10% of 30 = 3
    assert [e.reason for e in done.events] == [reasons.WAVE_COMPLETED, reasons.WAVE_STARTED]
    assert done.status.wave_name == "1/2"


def test_at_most_max_in_flight_and_awaiting_approval_counts() -> None:
    s = spec(waves=["100%"], maxInFlight=3)
    out = decide(inputs(s, tenants(10), {"t000": "migrating", "t001": "awaiting"}))
    assert [t.secret for t in out.start] == ["t002"]
    full = decide(inputs(s, tenants(10), {"t000": "migrating", "t001": "awaiting", "t002": "ready",
                                          "t003": "migrating"}))
    assert full.start == []  # three under way, one of them waiting for approval: the cap is reached
    assert full.status.counts.migrating == 2 and full.status.counts.awaiting_approval == 1


def test_failures_within_the_budget_let_the_next_wave_start_and_the_budget_stops_it() -> None:
    s = spec(waves=["2", "100%"], maxInFlight=5, failureBudget=2)
    out = decide(inputs(s, tenants(6), {"t000": "ready", "t001": "failed"}))
    assert [t.secret for t in out.start] == ["t002", "t003", "t004", "t005"]
    spent = decide(inputs(s, tenants(6), {"t000": "failed", "t001": "failed"}))
    assert spent.start == [] and condition(spent.status, c.STALLED) == ("True", reasons.FAILURE_BUDGET_SPENT)


def test_paused_starts_nothing_but_reports() -> None:
    out = decide(inputs(spec(paused=True), tenants(4)))
    assert out.start == [] and condition(out.status, c.RECONCILING) == ("True", reasons.ROLLOUT_PAUSED)


def test_ready_when_every_target_is_ready_at_the_template() -> None:
    s = spec(maxInFlight=5)
    out = decide(inputs(s, tenants(3), {"t000": "ready", "t001": "ready", "t002": "ready"}))
    assert condition(out.status, c.READY) == ("True", reasons.ALL_TARGETS_READY) and out.status.wave_name == "done"
    # a new template: every member is on the old one, so the rollout starts again
    again = decide(inputs(s, tenants(3), {"t000": "ready", "t001": "ready", "t002": "ready"},
                          old={"t000", "t001", "t002"}, previous=out.status))
    assert [t.secret for t in again.start] == ["t000", "t001", "t002"]
    assert condition(again.status, c.READY) == ("False", reasons.ROLLING_OUT)


def test_a_late_target_starts_at_once_and_a_removed_one_is_deleted() -> None:
    s = spec(canary={"count": 1}, waves=["50%", "100%"], maxInFlight=5)
    done = decide(inputs(s, tenants(2), {"t000": "ready", "t001": "ready"}))
    late = decide(inputs(s, [*tenants(2), Target("t999", "url")], {"t000": "ready", "t001": "ready"},
                         previous=done.status))
    assert [t.secret for t in late.start] == ["t999"]
    gone = decide(inputs(s, tenants(1), {"t000": "ready", "t001": "ready"}, previous=done.status))
    assert [m.name for m in gone.delete] == ["s-t001"] and gone.start == []


def test_only_approvals_left_stalls_showing_each_plan_once() -> None:
    s = spec(maxInFlight=2)
    out = decide(inputs(s, tenants(2), {"t000": "awaiting", "t001": "awaiting"}))
    assert condition(out.status, c.STALLED) == ("True", reasons.TARGETS_AWAITING_APPROVAL)
    assert [(p.hash, p.count, p.migrations) for p in out.status.plans] == [("sha256:p", 2, ["s-t000", "s-t001"])]


def test_member_of_reads_a_migration_for_its_generation() -> None:
    def dbm(generation: int, observed: int, phase: str, ready: str, stalled: str = "False",
            reason: str = "Migrated") -> Any:
        conds = [{"type": "Ready", "status": ready, "reason": reason, "message": "", "observedGeneration": observed,
                  "lastTransitionTime": "2026-01-01T00:00:00Z"},
                 {"type": "Stalled", "status": stalled, "reason": reason, "message": "",
                  "observedGeneration": observed, "lastTransitionTime": "2026-01-01T00:00:00Z"}]
        return {"metadata": {"name": "s-a", "generation": generation, "labels": {c.SET_LABEL: "s"},
                             "annotations": {c.TARGET_ANNOTATION: "a", c.SET_TEMPLATE_ANNOTATION: "h"}},
                "status": {"observedGeneration": observed, "phase": phase, "conditions": conds}}

    assert member_of(dbm(2, 2, "Succeeded", "True")).state == "ready"
    assert member_of(dbm(3, 2, "Succeeded", "True")).state == "migrating"  # a new generation not seen yet
    failed = member_of(dbm(2, 2, "Failed", "False", "True", "JobFailed"))
    assert (failed.state, failed.reason, failed.target, failed.template_hash) == ("failed", "JobFailed", "a", "h")
    assert member_of(dbm(2, 2, "AwaitingApproval", "False", "True", "DestructiveChangesNotApproved")).state == \
        "awaiting"
    assert member_of(dbm(2, 2, "Migrating", "False")).state == "migrating"


def test_member_spec_names_and_hashes() -> None:
    s = spec()
    template = template_json(s)
    out = member_spec(template, Target("acme-db", "url"), "7")
    assert out["database"] == {"urlSecretRef": {"name": "acme-db", "key": "url"}}
    assert out["jobTemplate"]["podAnnotations"] == {c.SET_ATTEMPT_ANNOTATION: "7"}  # type: ignore[index,call-overload]
    assert "database" not in template and template_hash(template) == template_hash(dict(template))
    assert migration_name("shop", "acme") == "shop-acme"
    long = migration_name("s" * 40, "t" * 40)
    assert len(long) <= 63 and long != migration_name("s" * 40, "t" * 39 + "u")
    with pytest.raises(SpecError, match=r"spec\.strategy\.waves\[0\]"):
        spec(waves=["150%"])


def test_the_set_crd_and_kubectl_dbm_set_show_the_rollout() -> None:
    from alembic_operator import crdgen
    from alembic_operator.dbm import sets

    crd = crdgen.set_crd()
    assert crd["spec"]["names"]["shortNames"] == ["dbms"] and crd["spec"]["names"]["categories"] == ["migrations"]
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert {"migrations", "targetRevision", "backup"} <= set(schema["template"]["properties"])
    assert "database" not in schema["template"]["properties"]
    s = spec(canary={"count": 2}, waves=["10%", "100%"], maxInFlight=20)
    out = decide(inputs(s, tenants(30), {"t000": "ready", "t001": "failed"}))
    obj = {"metadata": {"name": "tenants", "creationTimestamp": "2026-01-01T00:00:00Z"},
           "status": out.status.model_dump(mode="json", by_alias=True, exclude_none=True)}
    (one,) = sets.by_name([obj])
    listed = sets.list_text([one])
    assert listed.splitlines()[1].split()[:8] == ["tenants", "canary", "1/30", "0", "0", "1", "28",
                                                   "FailureBudgetSpent"]
    detail = sets.detail_text(one)
    assert "t001" in detail and "s-t001" in detail and "JobFailed" in detail and "kubectl dbm resume tenants" in detail
    assert sets.resume_patch("7") == {"spec": {"strategy": {"paused": False}},
                                      "metadata": {"annotations": {c.RETRY_ANNOTATION: "7"}}}
