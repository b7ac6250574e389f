"""On the bed: a database that moves under a run, Jobs the API server refuses, a Job that waits for a missing claim,
and a database that does not exist. Nothing anyone else did is ever undone."""

from __future__ import annotations

import time

import pytest
from kubernetes import client as k8s

from alembic_operator import constants as c
from apps import Rev
from bed import volumes
from e2e import BASE_REVISIONS, E2E, R3, checksum, revision, slow
from harness import wait_for

pytestmark = pytest.mark.bed

FIRST, SECOND = "e6e6e6e6e606", "e7e7e7e7e707"


def rows(e2e: E2E) -> str:
    return checksum(e2e.db, "orders", "id, customer_id, total, legacy_code") + checksum(e2e.db, "customers", "id, name")


def roles(e2e: E2E, name: str) -> list[str]:
    return sorted(j["metadata"]["labels"][c.ROLE_LABEL] for j in e2e.cluster.jobs(name))


def test_two_resources_to_different_targets_keep_each_others_work(e2e: E2E) -> None:
    """first: R3 -> FIRST; second: R3 -> SECOND (after FIRST). second plans while first migrates, waits, then must
    plan again from FIRST instead of undoing it."""
    project = e2e.project([*BASE_REVISIONS, slow(FIRST, 8), slow(SECOND, 0, down=FIRST)])
    e2e.upgrade_directly(project, R3)
    e2e.seed()
    before = rows(e2e)
    e2e.cluster.create("first", e2e.spec(project, target=FIRST))
    e2e.cluster.wait_phase("first", "Migrating", timeout=90)
    e2e.cluster.create("second", e2e.spec(project, target=SECOND))
    e2e.cluster.wait_condition("second", "Reconciling", reason="WaitingForDatabase", timeout=60)
    plan = e2e.cluster.get("second")["status"]["plan"]
    assert plan["fromRevision"] == R3 and plan["revisions"] == [FIRST, SECOND]  # stale once first is done
    e2e.cluster.wait_condition("first", "Ready", timeout=120)
    e2e.cluster.wait_event("second", "DatabaseMoved", "Normal", timeout=60)
    obj = e2e.cluster.wait_condition("second", "Ready", timeout=180)
    assert obj["status"]["plan"]["fromRevision"] == FIRST and obj["status"]["plan"]["revisions"] == [SECOND]
    assert revision(e2e.db) == SECOND
    assert e2e.db.query("SELECT rev FROM runs ORDER BY rev") == [(FIRST,), (SECOND,)]  # each ran once, both kept
    assert rows(e2e) == before
    assert "downgrade" not in roles(e2e, "second") and "restore" not in roles(e2e, "second")
    # The first resource looks again (any change wakes it): its target is contained in what the database is at.
    e2e.cluster.patch("first", {"metadata": {"annotations": {"example.com/poke": "1"}}})
    first = e2e.cluster.wait_condition("first", "Ready", reason="TargetContained", timeout=60)
    assert "second" in first["status"]["message"] and first["status"]["currentRevision"] == SECOND


def test_a_hand_upgrade_while_waiting_for_approval_is_planned_again_not_restored(e2e: E2E) -> None:
    added, drop = "a7a7a7a7a707", "d8d8d8d8d808"
    project = e2e.project([
        *BASE_REVISIONS,
        Rev(added, upgrade=['op.create_table("notes", sa.Column("id", sa.Integer, primary_key=True), '
                            'sa.Column("body", sa.Text))'], downgrade=['op.drop_table("notes")']),
        Rev(drop, upgrade=['op.drop_column("orders", "legacy_code")'],
            downgrade=['op.add_column("orders", sa.Column("legacy_code", sa.String(20)))']),
    ])
    e2e.upgrade_directly(project, R3)
    e2e.seed()
    e2e.cluster.create("shop", e2e.spec(project))
    obj = e2e.cluster.wait_phase("shop", "AwaitingApproval", timeout=90)
    first_hash = obj["status"]["plan"]["hash"]
    assert obj["status"]["plan"]["revisions"] == [added, drop]
    # Someone upgrades by hand meanwhile, and the app writes to the new table.
    e2e.upgrade_directly(project, added)
    e2e.db.query("INSERT INTO notes (id, body) VALUES (1, 'written after the hand upgrade')")
    e2e.cluster.patch("shop", {"metadata": {"annotations": {c.APPROVE_ANNOTATION: first_hash}}})
    e2e.cluster.wait_event("shop", "DatabaseMoved", "Normal", timeout=60)
    obj = e2e.cluster.wait_phase("shop", "AwaitingApproval", timeout=90)  # a new plan needs its own approval
    assert obj["status"]["plan"]["revisions"] == [drop] and obj["status"]["plan"]["hash"] != first_hash
    assert "backup" not in roles(e2e, "shop") and "restore" not in roles(e2e, "shop")
    e2e.cluster.patch("shop", {"metadata": {"annotations": {
        c.APPROVE_ANNOTATION: obj["status"]["plan"]["hash"]}}})
    e2e.cluster.wait_condition("shop", "Ready", timeout=180)
    assert revision(e2e.db) == drop
    assert e2e.db.query("SELECT body FROM notes") == [("written after the hand upgrade",)]
    assert roles(e2e, "shop") == ["backup", "migrate", "plan", "plan"]


def test_a_job_the_api_server_refuses_stalls_within_seconds_then_recovers(e2e: E2E) -> None:
    """requests above limits: the CRD's schema cannot know, the Job's validation does."""
    project = e2e.project(BASE_REVISIONS)
    bad = {"resources": {"limits": {"cpu": "100m"}, "requests": {"cpu": "2"}}}
    started = time.monotonic()
    e2e.cluster.create("shop", e2e.spec(project, jobTemplate=bad))
    obj = e2e.cluster.wait_condition("shop", "Stalled", reason="JobRefused", timeout=10)
    assert time.monotonic() - started < 10
    message = obj["status"]["message"]
    assert "resources.requests" in message and "less than or equal to cpu limit" in message, message
    assert obj["status"]["observedGeneration"] == 1 and obj["status"]["phase"] == "Failed"
    assert e2e.cluster.jobs("shop") == []  # the dry run refused it before anything ran
    e2e.cluster.wait_event("shop", "JobRefused", "Warning")
    # The fix fits the node beside the other tests' pods (the bed's node has 2 CPUs, shared by every worker).
    e2e.cluster.patch("shop", {"spec": {"jobTemplate": {"resources": {"limits": {"cpu": "4"},
                                                                      "requests": {"cpu": "100m"}}}}})
    obj = e2e.cluster.wait_condition("shop", "Ready", timeout=120)
    assert obj["status"]["observedGeneration"] == 2 and revision(e2e.db) == R3


def test_a_backup_waiting_for_a_missing_claim_stalls_then_continues_once_it_exists(e2e: E2E) -> None:
    project = e2e.project(BASE_REVISIONS)
    spec = e2e.spec(project)
    spec["backup"] = {"volume": {"persistentVolumeClaim": {"claimName": "shop-backups"}}}
    e2e.cluster.create("shop", spec)
    e2e.cluster.wait_phase("shop", "BackingUp", timeout=90)
    started = time.monotonic()
    obj = e2e.cluster.wait_condition("shop", "Stalled", reason="PersistentVolumeClaimNotFound", timeout=15)
    assert time.monotonic() - started < 10
    assert f"{e2e.ns}/shop-backups" in obj["status"]["message"] and obj["status"]["phase"] == "BackingUp"
    assert revision(e2e.db) is None  # nothing ran
    volumes.writable_claim(e2e.bed, e2e.cluster.core, e2e.ns, "shop-backups")  # what fsGroup does on a cluster
    obj = e2e.cluster.wait_condition("shop", "Ready", timeout=120)
    assert revision(e2e.db) == R3 and obj["status"]["backup"]["location"].startswith("pvc/shop-backups/")
    assert roles(e2e, "shop") == ["backup", "migrate", "plan"]  # the same backup Job, started once the claim was there


def test_a_database_that_does_not_exist_stalls_and_recovers(e2e: E2E) -> None:
    project = e2e.project(BASE_REVISIONS)
    e2e.cluster.secret("db", {"url": e2e.pod_url.rsplit("/", 1)[0] + "/no_such_database"})
    e2e.cluster.create("shop", e2e.spec(project))
    obj = e2e.cluster.wait_condition("shop", "Stalled", reason="DatabaseNotFound", timeout=30)
    assert "'no_such_database' does not exist" in obj["status"]["message"]
    e2e.cluster.secret("db", {"url": e2e.pod_url})
    wait_for(lambda: revision(e2e.db) == R3, 120, "the migration once the Secret names a database that exists")
    e2e.cluster.wait_condition("shop", "Ready", timeout=60)


BAD_SPECS = {
    "env without a name": ({"jobTemplate": {"env": [{"value": "x"}]}}, "env"),
    "a cpu quantity of lots": ({"jobTemplate": {"resources": {"requests": {"cpu": "lots"}}}}, "resources"),
    "a label value with a space": ({"jobTemplate": {"podLabels": {"team": "data platform"}}}, "podLabels"),
    "runAsUser root": ({"jobTemplate": {"securityContext": {"runAsUser": "root"}}}, "runAsUser"),
}


@pytest.mark.parametrize("case", [*BAD_SPECS, "a name of 120 characters"])
def test_every_bad_spec_is_refused_at_apply_or_answered_within_seconds(e2e: E2E, case: str) -> None:
    """Refused by the API server naming the field, or else Stalled with a reason that names it within 10 s:
    never a resource without a status while the operator retries forever."""
    project = e2e.project(BASE_REVISIONS)
    name, (extra, field) = ("shop", BAD_SPECS[case]) if case in BAD_SPECS else ("s" * 120, ({}, "name"))
    spec = e2e.spec(project)
    for key, value in extra.items():
        spec[key] = value
    started = time.monotonic()
    try:
        e2e.cluster.create(name, spec)
    except k8s.ApiException as err:
        assert err.status == 422 and field in str(err.body), err.body
        return
    obj = e2e.cluster.wait_condition(name, "Stalled", timeout=10)
    assert time.monotonic() - started < 10
    assert obj["status"]["observedGeneration"] == 1 and field in obj["status"]["message"], obj["status"]
