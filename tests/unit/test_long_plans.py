"""A plan of 1,000 revisions: the scan's result fits a termination message, the SQL document (log -> ConfigMap) keeps
every revision id and every finding, the operator runs all of them, and the status message stays short."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import pytest
from test_reconcile import SPEC, advance, cond, done, observe

from alembic_operator import constants as c
from alembic_operator import jobtools, plansql
from alembic_operator.dbm import views
from alembic_operator.reconcile import decide, plan_hash
from alembic_operator.runner.results import RESULT_LIMIT, size

Scanned = tuple[dict[str, Any], bytes]  # the scan's result, the SQL document its log carried
REVISIONS = 1000
DROPS_EVERY = 20  # 50 revisions drop a table


def _plan_dir(tmp_path: Path) -> Path:
    ids = [f"{i:04d}{'ab' * 4}" for i in range(REVISIONS)]
    entries = []
    for i, rev in enumerate(ids):
        sql = f"CREATE TABLE t{i} (id integer PRIMARY KEY, note text);\n"
        if i % DROPS_EVERY == DROPS_EVERY - 1:
            sql += f"DROP TABLE legacy_{i};\n"
        (tmp_path / f"{i:04d}-{rev}.sql").write_text(sql)
        entries.append({"revision": rev, "file": f"{i:04d}-{rev}.sql", "message": f"step {i}"})
    (tmp_path / "plan.json").write_text(json.dumps({
        "ok": True, "current": None, "target": ids[-1], "dialect": "postgresql", "revisions": entries,
        "lineage": list(reversed(ids))[:50], "transactionPerMigration": False, "transactionalDDL": True}))
    return tmp_path


@pytest.fixture(scope="module")
def scanned(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], bytes]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        result = dict(jobtools.cmd_scan(_plan_dir(tmp_path_factory.mktemp("plan"))))
    data = plansql.from_log(err.getvalue())
    assert data is not None
    return result, data


def test_the_scan_result_of_a_thousand_revisions_fits_and_the_document_keeps_them_all(scanned: Scanned) -> None:
    result, data = scanned
    assert size(result) <= RESULT_LIMIT
    assert result["revisionCount"] == REVISIONS and len(result["revisions"]) < REVISIONS
    assert result["destructiveCount"] == REVISIONS // DROPS_EVERY
    doc = plansql.read(data)
    ids = plansql.planned_revisions(doc, result["revisionsSha256"])
    assert ids is not None and len(ids) == REVISIONS and ids[: len(result["revisions"])] == result["revisions"]
    drops = [f for f in doc["plan"]["findings"] if f["severity"] == "destructive"]
    assert len(drops) == REVISIONS // DROPS_EVERY and drops[-1]["operation"] == "DROP TABLE legacy_999"
    assert len(doc["plan"]["destructiveRevisions"]) == REVISIONS // DROPS_EVERY
    assert plansql.verified(doc) and doc["total"] == REVISIONS


def test_the_operator_runs_every_revision_of_a_long_plan_and_its_message_stays_short(scanned: Scanned) -> None:
    result, data = scanned
    plan = done("plan", result)
    d = advance(decide(observe()), jobs={"plan": dataclasses.replace(plan, plan_sql=data)}, db=None)
    ids = plansql.planned_revisions(plansql.read(data), result["revisionsSha256"])
    assert d.status["plan"]["revisions"] == ids and d.status["run"]["revisions"] == ids
    assert d.status["plan"]["hash"] == plan_hash(result, SPEC["migrations"]["image"], ids)  # type: ignore[arg-type]
    assert d.status["plan"]["destructiveCount"] == 50 and d.status["plan"]["sql"]["total"] == REVISIONS
    assert len(d.status["run"]["destructiveRevisions"]) == 50
    assert cond(d, c.STALLED)["reason"] == "DestructiveChangesNotApproved"
    message = d.status["message"]
    assert len(message) < 400, message
    assert "DROP TABLE legacy_19" in message and "and 47 more" in message  # what, how many
    assert f"kubectl dbm plan shop -n shop, then approve its hash {d.status['plan']['hash']}" in message
    assert all(len(x.get("message") or "") < 400 for x in d.status["conditions"])


def test_a_long_plan_waits_for_its_document_and_takes_only_ids_that_hash_to_the_result(scanned: Scanned) -> None:
    result, data = scanned
    plan = done("plan", result)
    waiting = advance(decide(observe()), jobs={"plan": plan})  # the log not read (yet)
    assert waiting.status["phase"] == "Planning" and not (waiting.status.get("run") or {}).get("revisions")
    assert "reading them from Job shop-plan-g1's log" in waiting.status["message"]
    doc = plansql.read(data)
    forged = {**doc, "plan": {**doc["plan"], "revisions": doc["plan"]["revisions"][:-1]}}  # one revision short
    forged_data, _ = plansql.compress(forged)
    still = advance(decide(observe()), jobs={"plan": dataclasses.replace(plan, plan_sql=forged_data)})
    assert still.status["phase"] == "Planning" and still.status.get("plan") is None


def test_kubectl_dbm_plan_lists_every_finding_from_the_configmap(scanned: Scanned) -> None:
    result, data = scanned
    d = advance(decide(observe()), jobs={"plan": dataclasses.replace(done("plan", result), plan_sql=data)})
    doc = plansql.read(data)
    text = views.plan_text(views.plan_record({"metadata": {"name": "shop"}, "status": d.status},
                                             doc["revisions"], "", doc["plan"]["findings"]))
    assert "Destructive (50):" in text and "DROP TABLE legacy_999 (revision 0999abababab)" in text
    assert f"({REVISIONS} revision(s))" in text
