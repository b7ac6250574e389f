"""Expand/contract without a cluster: the split, the "breaks the running version" finding, both bounds of the pod
gate, which pods are the older version, and a whole run (expand, wait, contract) through decide()."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from alembic_operator import constants as c
from alembic_operator import gate
from alembic_operator.api import parse_status
from alembic_operator.objects import Pod, Workload
from alembic_operator.observation import AppPods, DatabaseObservation, JobObservation, Observation
from alembic_operator.reconcile import Decision, decide
from alembic_operator.reconcile.contract import breaking, object_of, older_pods, split
from alembic_operator.sqlrules import Finding

NOW = datetime(2026, 12, 7, 7, 0, tzinfo=UTC)
SPEC: dict[str, Any] = {
    "database": {"urlSecretRef": {"name": "shop-db", "key": "url"}},
    "migrations": {"image": "shop:2"},
    "targetRevision": "head",
    "backup": {"volume": {"emptyDir": {}}},
}
# r1 (running version) -> e1 (expand: add the new column, backfill) -> k1 (contract: drop the old one)
LINEAGE = ["k1", "e1", "r1", "r0"]
PLAN = {"ok": True, "current": "r1", "target": "k1", "revisions": ["e1", "k1"], "lineage": LINEAGE,
        "contract": ["k1"], "destructive": ["DROP COLUMN orders.code (revision k1)"], "destructiveRevisions": ["k1"],
        "findings": [{"rule": "drop-column", "severity": "destructive", "revision": "k1",
                      "operation": "DROP COLUMN orders.code"}], "sqlSha256": "sha256:1"}
BACKUP = {"ok": True, "location": "b/x.dump", "file": "/backups/x.dump", "sizeBytes": 1, "sha256": "sha256:aa",
          "revision": "r1", "completedAt": "2026-12-07T07:00:00Z"}


def finding(rule: str, operation: str, revision: str) -> Finding:
    return Finding(rule=rule, severity="destructive", operation=operation, revision=revision, statement="")


def pod(name: str, revision: str | None = None, *, owner: tuple[str, str] | None = None, gated: bool = False,
        phase: str = "Running", labels: dict[str, str] | None = None) -> Pod:
    meta: dict[str, Any] = {"name": name, "namespace": "shop", "uid": name,
                            "labels": {c.WAIT_FOR_LABEL: "shop", **(labels or {})}}
    if revision:
        meta["annotations"] = {c.REVISION_ANNOTATION: revision}
    if owner:
        meta["ownerReferences"] = [{"kind": owner[0], "name": owner[1], "controller": True}]
    spec: dict[str, Any] = {"schedulingGates": [{"name": c.SCHEDULING_GATE}]} if gated else {}
    return {"metadata": meta, "spec": spec, "status": {"phase": phase}}  # type: ignore[typeddict-item]


def workload(kind: str, name: str, *, revision: str | None = None, owner: str | None = None,
             update_revision: str | None = None) -> Workload:
    meta: dict[str, Any] = {"name": name}
    if revision:
        meta["annotations"] = {"deployment.kubernetes.io/revision": revision}
    if owner:
        meta["ownerReferences"] = [{"kind": "Deployment", "name": owner, "controller": True}]
    body: dict[str, Any] = {"kind": kind, "metadata": meta}
    if update_revision:
        body["status"] = {"updateRevision": update_revision}
    return body  # type: ignore[return-value]


# --- the plan -----------------------------------------------------------------------------------------------------


def test_a_plan_splits_at_its_first_contract_revision() -> None:
    assert split(["e1", "k1", "e2"], {"k1"}) == split(["e1", "k1", "e2"], {"k1", "zz"})
    parts = split(["e1", "k1", "e2"], {"k1"})
    assert (parts.expand, parts.contract) == (["e1"], ["k1", "e2"])  # a later expand revision waits too
    assert split(["e1", "e2"], set()).contract == []
    assert split(["k1", "k2"], {"k1", "k2"}).expand == []


def test_an_unmarked_drop_or_rename_breaks_the_running_version_and_a_marked_one_does_not() -> None:
    found = [finding("drop-column", "DROP COLUMN public.orders.code", "e1"),
             finding("rename-column", "RENAME COLUMN orders.total TO amount", "e1"),
             finding("rename-table", "RENAME TABLE items TO lines", "e1"),
             finding("drop-column", "DROP COLUMN orders.legacy", "k1"),  # marked contract: fine
             finding("create-index-not-concurrently", "CREATE INDEX ix ON orders (code)", "e1")]
    assert [object_of(f) for f in found[:3]] == ["orders.code", "orders.total", "items"]
    assert breaking(found, {"e1"}, "r1") == found[:3]
    assert breaking(found, {"e1"}, None) == []  # an empty database: no running version to break
    # Known from the previous release's models: only what they use.
    assert breaking(found, {"e1"}, "r1", used={"orders", "orders.total", "customers"}) == [found[1]]
    assert breaking(found, {"e1"}, "r1", used={"items"}) == [found[2]]


# --- the pod gate's two bounds --------------------------------------------------------------------------------------


def test_bounds_of_a_revision() -> None:
    assert gate.bounds(LINEAGE, {"k1"}, "r1") == gate.Bounds("r1", "k1")  # built before the contract
    assert gate.bounds(LINEAGE, {"k1"}, "e1") == gate.Bounds("e1", "k1")
    assert gate.bounds(LINEAGE, {"k1"}, "k1") == gate.Bounds("e1", None)  # built for it: its expand part suffices
    assert gate.bounds(LINEAGE, set(), "r1") == gate.Bounds("r1", None)
    assert gate.bounds(LINEAGE, {"k1"}, "zz") == gate.Bounds("zz", None)
    # Two contract revisions in a row belong to the version built for the first; a later one does not.
    lineage = ["k3", "e3", "k2", "k1", "e1"]
    assert gate.bounds(lineage, {"k1", "k2", "k3"}, "k1") == gate.Bounds("e1", "k3")
    assert gate.bounds(lineage, {"k1", "k2", "k3"}, "k2") == gate.Bounds("e1", "k3")
    assert gate.bounds(["k1"], {"k1"}, "k1") == gate.Bounds(None, None)


def _dbm(current: str, *, ready: bool = False, generation: int = 2) -> dict[str, Any]:
    status: dict[str, Any] = {
        "currentRevision": current, "targetRevision": "k1",
        "plan": {"revisions": ["e1", "k1"], "fromRevision": "r1", "toRevision": "k1", "lineage": LINEAGE,
                 "contractRevisions": ["k1"], "generation": 2, "contract": {"revisions": ["k1"]}},
        "conditions": [{"type": "Ready", "status": "True" if ready else "False", "observedGeneration": 2}],
    }
    return {"metadata": {"name": "shop", "generation": generation}, "status": status}


def test_the_gate_releases_each_version_only_onto_a_schema_it_can_use() -> None:
    old, new, plain = gate.Requirement("shop", "r1"), gate.Requirement("shop", "k1"), gate.Requirement("shop")
    # Before the expand part: the old version runs (rollout undo just works), the new one waits.
    assert gate.evaluate(old, _dbm("r1")).met
    assert not gate.evaluate(new, _dbm("r1")).met and not gate.evaluate(plain, _dbm("r1")).met
    # Expanded: both run; a pod that waits for the target needs only the expand part of a split plan.
    assert gate.evaluate(old, _dbm("e1")).met and gate.evaluate(new, _dbm("e1")).met
    assert "the expand part before revision k1 is applied" in gate.evaluate(new, _dbm("e1")).message
    assert gate.evaluate(plain, _dbm("e1")).met
    assert not gate.evaluate(plain, _dbm("e1", generation=3)).met  # not this generation's plan: Ready is needed
    # Contracted: an old pod is held, naming the revision it needs and the contract revision past it.
    held = gate.evaluate(old, _dbm("k1", ready=True))
    assert not held.met and held.reason == "SchemaContracted"
    assert "needs revision r1" in held.message and "contract revision k1" in held.message
    assert gate.evaluate(new, _dbm("k1", ready=True)).met and gate.evaluate(plain, _dbm("k1", ready=True)).met


# --- which pods are the older version ---------------------------------------------------------------------------


def test_older_pods_by_annotation_and_by_older_replica_set_or_controller_revision() -> None:
    app = AppPods(
        pods=(pod("web-old-1", "r1", owner=("ReplicaSet", "web-a")),
              pod("web-new-1", "k1", owner=("ReplicaSet", "web-b")),
              pod("web-held", "r1", gated=True),  # never ran
              pod("web-done", "r1", phase="Succeeded"),
              pod("api-old", owner=("ReplicaSet", "api-a")), pod("api-new", owner=("ReplicaSet", "api-b")),
              pod("db-0", owner=("StatefulSet", "db"), labels={"controller-revision-hash": "db-1"}),
              pod("db-1", owner=("StatefulSet", "db"), labels={"controller-revision-hash": "db-2"}),
              pod("bare")),
        replica_sets=(workload("ReplicaSet", "web-a", owner="web"), workload("ReplicaSet", "web-b", owner="web"),
                      workload("ReplicaSet", "api-a", revision="3", owner="api"),
                      workload("ReplicaSet", "api-b", revision="4", owner="api")),
        deployments=(workload("Deployment", "api", revision="4"),),
        stateful_sets=(workload("StatefulSet", "db", update_revision="db-2"),),
    )
    older = older_pods(app, LINEAGE, {"k1"}, ["k1"])
    assert [(p.name, p.workload, p.requires) for p in older] == [
        ("api-old", "Deployment/api", None), ("db-0", "StatefulSet/db", None), ("web-old-1", "Deployment/web", "r1")]
    assert older[-1].describe() == "web-old-1 (Deployment/web, needs r1)"
    assert older_pods(app, LINEAGE, {"k1"}, ["zz"])[0].name == "api-old"  # annotated ones only for their bound


# --- a whole run --------------------------------------------------------------------------------------------------


def observe(status: dict[str, Any] | None, *, db: str = "r1", jobs: dict[str, JobObservation] | None = None,
            app: AppPods | None = None, now: datetime = NOW, annotations: dict[str, str] | None = None,
            spec: dict[str, Any] | None = None) -> Observation:
    return Observation(name="shop", namespace="shop", generation=1, spec=spec or SPEC,
                       annotations=annotations or {}, status=parse_status(status or {"observedGeneration": -1}),
                       database=DatabaseObservation(revision=db), jobs=jobs or {}, now=now, app_pods=app)


def done(role: str, result: dict[str, Any] | None, instance: int = 0) -> JobObservation:
    return JobObservation(name=f"shop-{role}-g1" + (f"-{instance}" if instance else ""), state="succeeded",
                          result=result, instance=str(instance) if instance else None)


def conditions(d: Decision) -> dict[str, tuple[str, str]]:
    return {x["type"]: (x["status"], x["reason"]) for x in d.status["conditions"]}


def kstatus(d: Decision) -> tuple[str, str, str]:
    found = conditions(d)
    return found[c.READY][0], found[c.RECONCILING][0], found[c.STALLED][0]


def test_expand_then_wait_for_the_older_version_then_contract() -> None:
    d = decide(observe(None))
    d = decide(observe(d.status, jobs={"plan": done("plan", PLAN)}))
    plan = d.status["plan"]
    assert plan["expand"]["revisions"] == ["e1"] and plan["contract"]["revisions"] == ["k1"]
    assert plan["contract"]["destructive"] == ["DROP COLUMN orders.code (revision k1)"]
    assert plan["expand"]["destructive"] == [] and plan["contractRevisions"] == ["k1"]
    # The expand part destroys nothing: no approval before it; backup, then the migrate Job up to e1.
    assert [j.role for j in d.jobs] == ["backup"] and d.status["contract"]["state"] == "Expanding"
    jobs = {"plan": done("plan", PLAN), "backup": done("backup", BACKUP)}
    d = decide(observe(d.status, jobs=jobs))
    assert [(j.role, j.args) for j in d.jobs] == [("migrate", {"from": "r1", "to": "e1"})]
    assert d.status["contract"]["expandStartedAt"]
    jobs["migrate"] = done("migrate", {"ok": True, "applied": ["e1"]})
    old = AppPods(pods=(pod("web-old-1", "r1", owner=("ReplicaSet", "web-a")), pod("web-new-1", "k1")),
                  replica_sets=(workload("ReplicaSet", "web-a", owner="web"),))
    d = decide(observe(d.status, db="e1", jobs=jobs, app=old))
    assert d.status["phase"] == "WaitingForOldVersion" and d.jobs == []
    assert kstatus(d) == ("False", "True", "False")  # Reconciling while it waits; Ready only when contracted
    assert conditions(d)[c.EXPANDED] == ("True", "Expanded")
    assert conditions(d)[c.CONTRACTED] == ("False", "WaitingForOldVersion")
    story = d.status["contract"]
    assert story["olderPods"] == ["web-old-1 (Deployment/web, needs r1)"] and story["olderWorkloads"] == [
        "Deployment/web"]
    assert story["deadline"] == "2026-12-07T07:30:00Z" and "web-old-1" in d.status["message"]
    assert d.requeue_after is not None and d.requeue_after <= 2
    # Past spec.contract.oldVersionTimeout: Stalled, still waiting.
    late = decide(observe(d.status, db="e1", jobs=jobs, app=old, now=NOW + timedelta(minutes=31)))
    assert kstatus(late) == ("False", "False", "True") and late.jobs == []
    assert conditions(late)[c.STALLED][1] == "OldVersionStillRunning"
    # The last old pod is gone: the contract part destroys data, so it waits for its own approval.
    gone = AppPods(pods=(pod("web-new-1", "k1"),))
    d = decide(observe(late.status, db="e1", jobs=jobs, app=gone, now=NOW + timedelta(minutes=32)))
    assert d.status["phase"] == "AwaitingApproval" and d.jobs == []
    assert conditions(d)[c.STALLED][1] == "DestructiveChangesNotApproved"
    assert "the contract part destroys data: DROP COLUMN orders.code" in d.status["message"]
    approve = {c.APPROVE_ANNOTATION: d.status["plan"]["hash"]}
    d = decide(observe(d.status, db="e1", jobs=jobs, app=gone, annotations=approve))
    assert [(j.role, j.args) for j in d.jobs] == [("backup", {"instance": "1"})]  # its own backup, at e1
    jobs["backup"] = done("backup", {**BACKUP, "revision": "e1"}, instance=1)
    d = decide(observe(d.status, db="e1", jobs=jobs, annotations=approve))
    assert [(j.role, j.args) for j in d.jobs] == [("contract", {"from": "e1", "to": "k1"})]
    assert d.status["phase"] == "Contracting" and d.status["contract"]["contractStartedAt"]
    jobs["contract"] = done("contract", {"ok": True, "applied": ["k1"]})
    d = decide(observe(d.status, db="k1", jobs=jobs, annotations=approve))
    assert d.status["phase"] == "Succeeded" and kstatus(d) == ("True", "False", "False")
    assert conditions(d)[c.CONTRACTED] == ("True", "Contracted") and d.status["contract"]["state"] == "Contracted"
    entry = d.status["history"][-1]
    assert (entry["from"], entry["to"], entry["result"]) == ("r1", "k1", "Succeeded")
    assert [(p["part"], p["from"], p["to"]) for p in entry["parts"]] == [("expand", "r1", "e1"),
                                                                         ("contract", "e1", "k1")]
    assert all(p["startedAt"] and p["finishedAt"] for p in entry["parts"])
    assert d.records[-1].parts is not None and len(d.records[-1].parts) == 2


def test_an_up_front_approval_of_the_hash_covers_the_contract_part() -> None:
    d = decide(observe(None))
    d = decide(observe(d.status, jobs={"plan": done("plan", PLAN)}))
    approve = {c.APPROVE_ANNOTATION: d.status["plan"]["hash"]}
    spec = {**SPEC, "backup": {"enabled": False}}
    d = decide(observe(None, spec=spec))
    d = decide(observe(d.status, jobs={"plan": done("plan", PLAN)}, spec=spec, annotations=approve))
    assert [j.role for j in d.jobs] == ["migrate"]
    jobs = {"plan": done("plan", PLAN), "migrate": done("migrate", {"ok": True, "applied": ["e1"]})}
    d = decide(observe(d.status, db="e1", jobs=jobs, app=AppPods(), spec=spec, annotations=approve))
    assert [(j.role, j.args) for j in d.jobs] == [("contract", {"from": "e1", "to": "k1"})]


def test_an_unmarked_rename_holds_the_plan_like_a_destructive_change() -> None:
    renames = {**PLAN, "target": "e1", "revisions": ["e1"], "contract": [], "destructive": [],
               "destructiveRevisions": [], "findings": [],
               "breaking": ["RENAME COLUMN orders.code TO ref (revision e1): the running version (at r1) uses it; "
                            'mark revision e1 phase = "contract" so it runs once the older version\'s pods are gone'],
               "breakingCount": 1}
    d = decide(observe(None))
    d = decide(observe(d.status, jobs={"plan": done("plan", renames)}))
    assert d.status["phase"] == "AwaitingApproval" and d.jobs == []
    assert conditions(d)[c.APPROVAL_REQUIRED] == ("True", "BreaksRunningVersion")
    assert d.status["plan"]["breakingCount"] == 1 and "phase = \"contract\"" in d.status["message"]
    allowed = {**SPEC, "approval": {"allowDestructive": True}}
    d = decide(observe(d.status, jobs={"plan": done("plan", renames)}, spec=allowed))
    assert [j.role for j in d.jobs] == ["backup"]
    # An unmarked drop is destructive too: the reason stays DestructiveChangesNotApproved, the message says more.
    drops = {**renames, "destructive": ["DROP COLUMN orders.code (revision e1)"], "destructiveRevisions": ["e1"],
             "breaking": ["DROP COLUMN orders.code (revision e1): the running version (at r1) uses it"]}
    d = decide(observe(None))
    d = decide(observe(d.status, jobs={"plan": done("plan", drops)}))
    assert conditions(d)[c.APPROVAL_REQUIRED] == ("True", "DestructiveChangesNotApproved")
    assert '1 operation(s) break the running version (status.plan.breaking): mark their revisions phase = "contract"' \
        in d.status["message"] and "DROP COLUMN orders.code (revision e1)" in d.status["message"]


def test_kubectl_dbm_status_and_plan_show_the_split() -> None:
    from alembic_operator.dbm import views

    obj: Any = {"metadata": {"name": "shop", "namespace": "shop", "generation": 2}, "status": {
        "phase": "WaitingForOldVersion", "observedGeneration": 2, "currentRevision": "e1", "targetRevision": "k1",
        "plan": {"fromRevision": "r1", "toRevision": "k1", "revisions": ["e1", "k1"], "hash": "sha256:ab",
                 "expand": {"revisions": ["e1"], "fromRevision": "r1", "toRevision": "e1"},
                 "contract": {"revisions": ["k1"], "fromRevision": "e1", "toRevision": "k1"},
                 "breaking": ["RENAME COLUMN orders.total TO amount (revision e1): the running version uses it"]},
        "contract": {"state": "WaitingForOldVersion", "expandTo": "e1", "target": "k1",
                     "expandedAt": "2026-12-07T07:01:00Z", "deadline": "2026-12-07T07:31:00Z",
                     "olderPods": ["web-old-1 (Deployment/web, needs r1)"], "olderPodCount": 1}}}
    text = views.status_text([obj], now=NOW)
    assert ("dbm/shop: expand -> e1 applied at 2026-12-07T07:01:00Z; contract -> k1 waits for 1 pod(s) of the older "
            "version (until 2026-12-07T07:31:00Z, then Stalled): web-old-1 (Deployment/web, needs r1)") in text
    plan = views.plan_text(views.plan_record(obj))
    assert "Expand part, before the new version's pods start (1): r1 -> e1\n  e1\n" in plan
    assert "Contract part, once no pod of the older version runs (1): e1 -> k1\n  k1\n" in plan
    assert "Breaks the running version (1):\n  ! RENAME COLUMN orders.total TO amount" in plan
    obj["status"]["contract"].update(state="Contracted", oldVersionGoneAt="2026-12-07T07:05:00Z",
                                     contractedAt="2026-12-07T07:05:09Z")
    assert "older version gone at 2026-12-07T07:05:00Z; contract -> k1 applied at 2026-12-07T07:05:09Z" in \
        views.status_text([obj], now=NOW)


def _at_contract(spec: dict[str, Any]) -> tuple[Decision, dict[str, JobObservation]]:
    """A run whose expand part is applied and whose older version is gone: the contract Job was just started."""
    d = decide(observe(None, spec=spec))
    jobs = {"plan": done("plan", PLAN), "migrate": done("migrate", {"ok": True, "applied": ["e1"]})}
    d = decide(observe(d.status, jobs={"plan": jobs["plan"]}, spec=spec))
    d = decide(observe(d.status, db="e1", jobs=jobs, app=AppPods(), spec=spec))
    assert [j.role for j in d.jobs] == ["contract"]
    return d, jobs


def test_a_failed_contract_part_is_undone_back_to_the_expand_part_only() -> None:
    spec = {**SPEC, "backup": {"enabled": False}, "approval": {"allowDestructive": True}}
    d, jobs = _at_contract(spec)
    jobs["contract"] = JobObservation(name="shop-contract-g1", state="failed",
                                      result={"ok": False, "reason": "MigrationFailed", "message": "boom",
                                              "applied": []})
    d = decide(observe(d.status, db="e1", jobs=jobs, spec=spec))
    # Its transaction rolled back: the database stays at the expand part's end, the new version keeps running.
    assert d.status["phase"] == "Failed" and d.jobs == []
    assert conditions(d)[c.ROLLED_BACK] == ("True", "TransactionRolledBack")
    assert "still at e1" in d.status["message"] and d.status["contract"]["state"] == "Failed"
    entry = d.status["history"][-1]
    assert (entry["from"], entry["to"], entry["result"]) == ("r1", "k1", "RolledBack")
    assert [p["part"] for p in entry["parts"]] == ["expand", "contract"]


def test_a_plan_that_only_contracts_waits_for_the_older_version_first() -> None:
    only = {**PLAN, "current": "e1", "revisions": ["k1"]}
    spec = {**SPEC, "backup": {"enabled": False}, "approval": {"allowDestructive": True}}
    d = decide(observe(None, db="e1", spec=spec))
    old = AppPods(pods=(pod("web-old-1", "r1"),))
    d = decide(observe(d.status, db="e1", jobs={"plan": done("plan", only)}, app=old, spec=spec))
    assert d.status["phase"] == "WaitingForOldVersion" and d.jobs == []
    assert d.status["contract"]["olderPods"] == ["web-old-1 (needs r1)"]
    d = decide(observe(d.status, db="e1", jobs={"plan": done("plan", only)}, app=AppPods(), spec=spec))
    assert [(j.role, j.args) for j in d.jobs] == [("contract", {"from": "e1", "to": "k1"})]


def test_a_new_generation_while_it_waits_plans_again_from_the_expanded_database() -> None:
    d = decide(observe(None))
    jobs = {"plan": done("plan", PLAN), "backup": done("backup", BACKUP),
            "migrate": done("migrate", {"ok": True, "applied": ["e1"]})}
    d = decide(observe(d.status, jobs={"plan": jobs["plan"]}))
    d = decide(observe(d.status, jobs={k: jobs[k] for k in ("plan", "backup")}))
    d = decide(observe(d.status, db="e1", jobs=jobs, app=AppPods(pods=(pod("web-old-1", "r1"),))))
    assert d.status["phase"] == "WaitingForOldVersion"
    newer = Observation(name="shop", namespace="shop", generation=2, spec={**SPEC, "migrations": {"image": "shop:3"}},
                        annotations={}, status=parse_status(d.status), database=DatabaseObservation(revision="e1"),
                        jobs={}, now=NOW)
    d = decide(newer)
    assert [j.role for j in d.jobs] == ["plan"] and d.status["phase"] == "Planning"
    assert "contract" not in d.status
