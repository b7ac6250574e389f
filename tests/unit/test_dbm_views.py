"""What `kubectl dbm` shows, from objects as the API returns them (no server)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from alembic_operator import constants as c
from alembic_operator.dbm import views

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def dbm(name: str = "shop", **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "shop", "generation": 3, "creationTimestamp":
                         "2026-11-27T11:00:00Z", "annotations": {}},
            "spec": {"targetRevision": "head"}, "status": {"observedGeneration": 3, **status}}


WAITING = dbm(phase="AwaitingApproval", currentRevision="r1", message="the plan destroys data: DROP COLUMN "
              "orders.legacy_code (revision r2). Review it, then approve: kubectl dbm approve shop",
              plan={"revisions": ["r2", "r3"], "destructive": ["DROP COLUMN orders.legacy_code (revision r2)"],
                    "warnings": ["CREATE INDEX ix ON orders without CONCURRENTLY (revision r3)"],
                    "hash": "sha256:abc", "fromRevision": "r1", "toRevision": "r3"},
              conditions=[{"type": "Ready", "status": "False", "reason": "DestructiveChangesNotApproved"},
                          {"type": "Stalled", "status": "True", "reason": "DestructiveChangesNotApproved"},
                          {"type": "ApprovalRequired", "status": "True", "reason": "DestructiveChangesNotApproved"}])
READY = dbm("billing", phase="Succeeded", currentRevision="r9", targetRevision="r9",
            conditions=[{"type": "Ready", "status": "True", "reason": "Migrated"}],
            history=[{"generation": 1, "from": "base", "to": "r9", "result": "Succeeded", "reason": "Migrated",
                      "startedAt": "2026-11-27T11:00:01Z", "finishedAt": "2026-11-27T11:00:09Z",
                      "backup": "pvc://b/shop/x.dump"}])


def test_status_is_one_line_each_with_the_reason_that_matters() -> None:
    text = views.status_text([WAITING, READY], now=NOW)
    head, waiting, ready = text.splitlines()
    assert head.split() == ["NAME", "PHASE", "CURRENT", "TARGET", "READY", "REASON", "HELD", "AGE", "MESSAGE"]
    assert waiting.split()[:6] == ["shop", "AwaitingApproval", "r1", "head", "False",
                                   "DestructiveChangesNotApproved"]
    assert "1h" in waiting and len(waiting) < 250  # the message is cut
    assert ready.split()[:6] == ["billing", "Succeeded", "r9", "r9", "True", "Migrated"]
    assert views.summary(WAITING)["reason"] == "DestructiveChangesNotApproved"
    assert views.status_text([], now=NOW) == "No DatabaseMigrations found.\n"


def test_not_ready_while_the_generation_is_not_observed_yet() -> None:
    stale = dbm(phase="Succeeded", conditions=[{"type": "Ready", "status": "True", "reason": "Migrated"}])
    stale["metadata"]["generation"] = 4
    assert views.summary(stale)["ready"] is False


def test_plan_shows_revisions_findings_hash_and_sql() -> None:
    sql = [{"revision": "r2", "message": "drop legacy", "sql": "ALTER TABLE orders DROP COLUMN legacy_code;\n"}]
    record = views.plan_record(WAITING, sql)
    assert record["waitsForApproval"] and not record["approved"] and record["hash"] == "sha256:abc"
    text = views.plan_text(record)
    assert "r1 -> r3 (2 revision(s))" in text and "hash: sha256:abc" in text
    assert "kubectl dbm approve shop" in text
    assert "! DROP COLUMN orders.legacy_code (revision r2)" in text and "- CREATE INDEX ix" in text
    assert "-- revision r2: drop legacy\nALTER TABLE orders DROP COLUMN legacy_code;" in text
    approved = {**WAITING, "metadata": {**WAITING["metadata"], "annotations": {c.APPROVE_ANNOTATION: "sha256:abc"}}}
    assert views.plan_record(approved)["approved"]
    assert "no plan yet" in views.plan_text(views.plan_record(dbm(phase="Planning")))


def test_plan_shows_the_rehearsal_of_that_very_plan() -> None:
    rehearsal = {"result": "Failed", "planHash": "sha256:abc", "seconds": 3.25, "failedRevision": "r3",
                 "message": "revision r3 failed: could not create unique index", "revisions": [
                     {"revision": "r2", "seconds": 2.5, "rows": 1200,
                      "locks": [{"on": "public.orders", "mode": "AccessExclusiveLock", "heldSeconds": 2.4}]},
                     {"revision": "r3", "seconds": 0.75}]}
    text = views.plan_text(views.plan_record({**WAITING, "status": {**WAITING["status"], "rehearsal": rehearsal}}))
    assert "Rehearsal on a scratch copy: Failed in 3.2s" in text
    assert "  r2: 2.5s, 1200 rows, AccessExclusiveLock on public.orders held 2.4s" in text
    assert "  r3: 0.8s  <- failed" in text and "could not create unique index" in text
    other = {**rehearsal, "planHash": "sha256:older"}  # another plan's rehearsal says nothing of this one
    text = views.plan_text(views.plan_record({**WAITING, "status": {**WAITING["status"], "rehearsal": other}}))
    assert "Rehearsal" not in text


def test_history_in_order() -> None:
    text = views.history_text(READY)
    assert text.splitlines()[1].split()[:5] == ["1", "base", "r9", "Succeeded", "Migrated"]
    assert "pvc://b/shop/x.dump" in text
    assert "no history yet" in views.history_text(WAITING)


def test_history_from_the_run_records_names_who_asked_and_who_approved() -> None:
    def record(name: str, body: dict[str, Any] | str) -> dict[str, Any]:
        return {"metadata": {"name": name}, "data": {c.RUN_RECORD_KEY: body if isinstance(body, str) else
                                                     json.dumps(body)}}

    maps = [record("shop-run-000002-1", {"generation": 2, "from": "r9", "to": "r10", "result": "RolledBack",
                                         "reason": "Downgraded", "requestedBy": "dev", "approvedBy": "alice",
                                         "planHash": "sha256:" + "ab" * 32}),
            record("shop-run-000001-1", {"generation": 1, "from": "base", "to": "r9", "result": "Succeeded",
                                         "reason": "Migrated", "requestedBy": "dev"}),
            record("shop-run-000001-2", "edited by hand")]
    records = views.run_records(maps)
    assert [r["generation"] for r in records] == [1, 2]
    lines = views.history_text(READY, records).splitlines()
    assert lines[0].split()[:7] == ["GENERATION", "FROM", "TO", "RESULT", "REASON", "STARTED", "FINISHED"]
    assert lines[2].split()[:5] == ["2", "r9", "r10", "RolledBack", "Downgraded"]
    assert "dev" in lines[2] and "alice" in lines[2] and "sha256:abababababab" in lines[2]


def test_held_pods_say_what_they_wait_for() -> None:
    def pod(name: str, waits_for: str, gated: bool = True) -> dict[str, Any]:
        return {"metadata": {"name": name, "labels": {c.WAIT_FOR_LABEL: waits_for},
                             "creationTimestamp": "2026-11-27T11:58:00Z"},
                "spec": {"schedulingGates": [{"name": c.SCHEDULING_GATE}] if gated else []}}

    records = views.held_records([pod("web-1", "shop"), pod("web-2", "shop", gated=False), pod("api-1", "gone")],
                                 {"shop": WAITING})
    assert [(r["pod"], r["why"]) for r in records] == [
        ("web-1", "AwaitingApproval (DestructiveChangesNotApproved)"), ("api-1", "dbm/gone does not exist")]
    text = views.held_text(records, now=NOW)
    assert "web-1" in text and "dbm/shop" in text and "2m" in text
    assert views.held_text([]) == "No pods are held.\n"
