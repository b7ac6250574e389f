"""A long history on the bed (issue 14): a plan of 1,000 revisions is planned, reviewed with kubectl dbm, approved
by its hash and run, although its revision ids alone are four times what a Job's result may carry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from alembic_operator import constants as c
from apps import Rev, linear
from e2e import E2E, revision

pytestmark = pytest.mark.bed

REVISIONS = 1000
LEGACY = 20  # tables that predate the plan; every 50th revision drops one


def dbm(e2e: E2E, *args: str) -> subprocess.CompletedProcess[str]:
    """`kubectl dbm ...` through the real kubectl's plugin lookup, as the bed's admin."""
    from bed.tools import ensure_tools

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    env.pop("KUBECONFIG", None)
    return subprocess.run([str(ensure_tools()["kubectl"]), "dbm", *args, "-n", e2e.ns,
                           f"--kubeconfig={e2e.bed.kubeconfig}"], capture_output=True, text=True, env=env,
                          timeout=120, check=False)


def test_a_plan_of_a_thousand_revisions_is_reviewed_approved_and_runs_whole(e2e: E2E) -> None:
    legacy = Rev("0000feedf00d", message="the legacy tables",
                 upgrade=[f'op.create_table("legacy_{i}", sa.Column("id", sa.Integer, primary_key=True))'
                          for i in range(1, LEGACY + 1)],
                 downgrade=[f'op.drop_table("legacy_{i}")' for i in range(1, LEGACY + 1)])
    revisions = [legacy]
    for i, rev in enumerate(linear(REVISIONS - 1, prefix="1000aaaa"), 1):
        if i % 50 == 0:
            rev.upgrade = [*rev.upgrade, f'op.drop_table("legacy_{i // 50}")']
        revisions.append(rev)
    project = e2e.project(revisions, name="long")
    e2e.upgrade_directly(project, legacy.id)  # the team's database before the operator: at the first revision

    e2e.cluster.create("shop", e2e.spec(project))
    obj = e2e.cluster.wait_condition("shop", "Stalled", reason="DestructiveChangesNotApproved", timeout=600)
    st = obj["status"]
    planned = [r.id for r in revisions[1:]]
    assert st["plan"]["revisions"] == planned and st["run"]["revisions"] == planned
    assert st["plan"]["destructiveCount"] == LEGACY - 1 and st["plan"]["sql"]["total"] == REVISIONS - 1
    # What, how many, and the command to run next, in a few hundred characters.
    assert len(st["message"]) < 400 and "DROP TABLE legacy_1 " in st["message"], st["message"]
    assert f"kubectl dbm plan shop -n {e2e.ns}, then approve its hash {st['plan']['hash']}" in st["message"]
    assert all(len(x.get("message") or "") < 400 for x in st["conditions"])

    shown = dbm(e2e, "plan", "shop", "-o", "json")
    assert shown.returncode == 0, shown.stderr
    record = json.loads(shown.stdout)
    assert record["sqlNote"] == "" and [p["revision"] for p in record["sql"]] == planned  # whole and verified
    drops = [f for f in record["findings"] if f["severity"] == "destructive"]
    assert len(drops) == LEGACY - 1 and drops[-1]["operation"] == f"DROP TABLE legacy_{LEGACY - 1}"
    assert f"Destructive ({LEGACY - 1}):" in dbm(e2e, "plan", "shop", "--no-pager").stdout

    approved = dbm(e2e, "approve", "shop", "--hash", st["plan"]["hash"])
    assert approved.returncode == 0, approved.stderr
    obj = e2e.cluster.wait_condition("shop", "Ready", timeout=600)
    assert revision(e2e.db) == planned[-1]
    tables = e2e.db.query("SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE 't%'")
    assert tables == [(REVISIONS - 1,)]
    entry = obj["status"]["history"][-1]
    assert (entry["result"], entry["planHash"], entry["sqlConfigMap"]) == (
        "Succeeded", st["plan"]["hash"], st["plan"]["sql"]["configMap"])
    e2e.cluster.get("shop")  # the resource reads back whole (status of ~1,000 revision ids twice)
    assert c.APPROVE_ANNOTATION in obj["metadata"]["annotations"]
