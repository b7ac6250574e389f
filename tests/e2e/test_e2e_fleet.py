"""A DatabaseMigrationSet on the bed: a dozen PostgreSQL tenant databases, one set, a canary, two waves.

One scenario proves the whole path: the canary's data breaks the revision, so the rollout stops at the canary wave
(no other tenant gets a DatabaseMigration) and the set is Stalled naming the canary; once the data is fixed, the
retry annotation runs it again and every wave completes (each tenant at the new revision, WaveStarted/WaveCompleted
Events); a tenant's Secret labelled while the set runs is found and migrated with the others; a Secret unlabelled
loses its DatabaseMigration, never its database. (Slow on a loaded machine: every tenant runs a plan and a migrate
Job; the waits are generous, nothing is timed.)
"""

from __future__ import annotations

from typing import Any

import pytest

from alembic_operator import constants as c
from alembic_operator.fleet.handlers import RESCAN_ENV
from apps import Rev
from bed.postgres import PostgresServer
from e2e import E2E, revision
from harness import wait_for

TENANTS = 12
LABEL = {"tenants.example.com/app": "shop"}
BASE = Rev("f1ee70000001", upgrade=['op.create_table("items", sa.Column("id", sa.Integer, primary_key=True), '
                                    'sa.Column("qty", sa.Integer))'],
           downgrade=['op.drop_table("items")'])
CHECK = Rev("f1ee70000002", upgrade=['op.create_check_constraint("qty_positive", "items", "qty >= 0")'],
            downgrade=['op.drop_constraint("qty_positive", "items", type_="check")'])


def _set(e2e: E2E, name: str) -> dict[str, Any]:
    return dict(e2e.cluster.custom.get_namespaced_custom_object(c.GROUP, c.VERSION, e2e.ns, c.SET_PLURAL, name))


def _condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((x for x in (obj.get("status") or {}).get("conditions") or [] if x["type"] == type_), {})


def _when(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return obj if _condition(obj, type_).get("status") == "True" else None


def _members(e2e: E2E, name: str) -> list[str]:
    items = e2e.cluster.custom.list_namespaced_custom_object(c.GROUP, c.VERSION, e2e.ns, c.PLURAL,
                                                             label_selector=f"{c.SET_LABEL}={name}")["items"]
    return sorted(i["metadata"]["name"] for i in items if not i["metadata"].get("deletionTimestamp"))


@pytest.fixture
def rescan(monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator looks for newly labelled Secrets every 2 s (not every minute): the late tenant's wait."""
    monkeypatch.setenv(RESCAN_ENV, "2")


@pytest.mark.timeout(2400)
def test_canary_failure_stops_the_rollout_then_retry_completes_every_wave(
        rescan: None, e2e: E2E, postgres: PostgresServer, postgres_in_bed: tuple[str, int]) -> None:
    project = e2e.project([BASE, CHECK], name="tenants")
    dbs = {}
    try:
        for i in range(TENANTS + 1):
            db = postgres.create_database(f"{e2e.ns.replace('-', '_')[:40]}_t{i:02d}")
            dbs[f"tenant-{i:02d}"] = db
            e2e.upgrade_directly_on(db, project, BASE.id)
            db.query("INSERT INTO items (id, qty) VALUES (1, %s)", -1 if i == 0 else 5)  # the canary's bad row
        for secret, db in list(dbs.items())[:TENANTS]:
            e2e.cluster.labelled_secret(secret, {"url": db.at(*postgres_in_bed).url}, LABEL)
        spec = {"template": {"migrations": {"image": e2e.images[project], "workingDir": "/app"},
                             "targetRevision": "head", "backup": {"enabled": False}},
                "targets": {"selector": {"matchLabels": LABEL}},
                "strategy": {"canary": {"count": 1}, "waves": ["50%", "100%"], "maxInFlight": 6,
                             "failureBudget": 1}}
        e2e.cluster.custom.create_namespaced_custom_object(c.GROUP, c.VERSION, e2e.ns, c.SET_PLURAL, {
            "apiVersion": c.API_VERSION, "kind": c.SET_KIND, "metadata": {"name": "fleet"}, "spec": spec})

        # The canary fails on its data: the rollout stops at the canary wave, the set names it.
        stalled = wait_for(lambda: _when(_set(e2e, "fleet"), c.STALLED), 900, "the set Stalled")
        cond = _condition(stalled, c.STALLED)
        assert cond["reason"] == "FailureBudgetSpent" and "tenant-00 (JobFailed)" in cond["message"]
        assert [(f["target"], f["canary"]) for f in stalled["status"]["failed"]] == [("tenant-00", True)]
        assert stalled["status"]["waveName"] == "canary" and stalled["status"]["counts"]["pending"] == TENANTS - 1
        assert _members(e2e, "fleet") == ["fleet-tenant-00"]  # 0 tenants beyond the canary wave
        assert revision(dbs["tenant-00"]) == BASE.id and revision(dbs["tenant-01"]) == BASE.id

        # Fix the data, retry; meanwhile a new tenant's Secret gets the label: every wave completes, with it.
        dbs["tenant-00"].query("UPDATE items SET qty = 0 WHERE qty < 0")
        e2e.cluster.custom.patch_namespaced_custom_object(c.GROUP, c.VERSION, e2e.ns, c.SET_PLURAL, "fleet", {
            "metadata": {"annotations": {c.RETRY_ANNOTATION: "1"}}})
        late = list(dbs)[TENANTS]
        e2e.cluster.labelled_secret(late, {"url": dbs[late].at(*postgres_in_bed).url}, LABEL)
        ready = wait_for(lambda: _when(_set(e2e, "fleet"), c.READY), 1200, "the set Ready")
        assert ready["status"]["counts"]["ready"] == TENANTS + 1 and ready["status"]["failed"] == []
        assert _members(e2e, "fleet") == [f"fleet-tenant-{i:02d}" for i in range(TENANTS + 1)]
        assert {revision(db) for db in dbs.values()} == {CHECK.id}
        said = [(e["reason"], e["message"].split(":")[0]) for e in e2e.cluster.events("fleet")]
        for wave in ("canary", "1/2", "2/2"):
            assert ("WaveStarted", f"wave {wave} started") in said and ("WaveCompleted", f"wave {wave} complete") \
                in said, said
        assert ("TargetsRetried", "running 1 failed target(s) again") in said

        # A Secret that loses the label loses its DatabaseMigration, never its database.
        e2e.cluster.labelled_secret("tenant-05", {"url": dbs["tenant-05"].at(*postgres_in_bed).url}, {})
        wait_for(lambda: "fleet-tenant-05" not in _members(e2e, "fleet") or None, 300, "tenant-05's resource gone")
        assert revision(dbs["tenant-05"]) == CHECK.id and dbs["tenant-05"].query("SELECT qty FROM items") == [(5,)]
        wait_for(lambda: _set(e2e, "fleet")["status"]["counts"] == {
            "total": TENANTS, "pending": 0, "migrating": 0, "awaitingApproval": 0, "ready": TENANTS, "failed": 0}
            or None, 300, "the counts")
    finally:
        for db in dbs.values():
            postgres.drop_database(db.name)
