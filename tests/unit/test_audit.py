"""The audit trail's records: one per finished run, named in run order, written once (no server)."""

from __future__ import annotations

import json

from test_reconcile import PLAN_OK, advance, done, observe

from alembic_operator import audit
from alembic_operator import constants as c
from alembic_operator.api import RunRecord, dump
from alembic_operator.observation import DatabaseObservation, JobObservation
from alembic_operator.reconcile import decide

OBJ = {"metadata": {"name": "shop", "namespace": "apps", "uid": "u-1"}}


def test_a_finished_run_leaves_one_record_with_who_what_and_when() -> None:
    d = decide(observe(annotations={c.SPEC_CHANGED_BY_ANNOTATION: "alice"}))
    assert d.records == []
    d = advance(d, jobs={"plan": done("plan", PLAN_OK)})
    d = advance(d, jobs={"plan": done("plan", PLAN_OK), "backup": done("backup", {"ok": True, "file": "x.dump",
                                                                               "location": "pvc://b/x.dump"})})
    jobs = {"plan": done("plan", PLAN_OK), "backup": done("backup", {"ok": True, "file": "x.dump",
                                                                     "location": "pvc://b/x.dump"}),
            "migrate": JobObservation("shop-migrate-g1", "succeeded", {"ok": True, "applied": ["r2", "r3"]})}
    d = advance(d, jobs=jobs, db=DatabaseObservation("r3"))
    assert d.status["phase"] == "Succeeded"
    (record,) = [dump(x) for x in d.records]
    assert record["result"] == "Succeeded" and record["from"] == "r1" and record["to"] == "r3"
    assert record["requestedBy"] == "alice" and record["revisions"] == ["r2", "r3"] and record["sequence"] == 1
    assert record["planHash"] == d.status["plan"]["hash"] and record["backup"] == "pvc://b/x.dump"
    assert advance(d, jobs=jobs, db=DatabaseObservation("r3")).records == []  # written once, not every pass


def test_record_names_sort_in_run_order_and_the_body_is_stable_json() -> None:
    names = [audit.record_name("shop", g, n) for g, n in ((2, 1), (10, 1), (10, 2), (9, 1))]
    assert sorted(names) == [names[0], names[3], names[1], names[2]]
    body = audit.manifest(OBJ, RunRecord.model_validate({"generation": 10, "sequence": 2, "result": "RolledBack",
                                                         "approvedBy": "bob"}))
    assert body["metadata"]["name"] == "shop-run-000010-2" and body["immutable"] is True
    assert body["metadata"]["labels"][f"{c.GROUP}/result"] == "RolledBack"
    assert body["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    data = json.loads(body["data"][audit.RECORD_KEY])
    assert data["schema"] == audit.SCHEMA and data["migration"] == {"namespace": "apps", "name": "shop", "uid": "u-1"}
    assert data["approvedBy"] == "bob"
