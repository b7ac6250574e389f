"""Backups in object storage on the real bed: the backup Job streams the dump to a real S3-compatible server
(SeaweedFS, relayed into the bed like the databases), a migration that destroyed data and failed is restored from
it (and again by hand, with kubectl dbm restore), and a store the Jobs cannot use stalls the run under its own
reason before any migration. The keys of the store are in the leak check."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest
from test_e2e_runs import fail_after_add

from alembic_operator import constants as c
from alembic_operator.dbm.cli import main as kubectl_dbm
from bed.s3 import SeaweedFS
from e2e import BASE_REVISIONS, DROP_LEGACY, E2E, R1, R2, R3, checksum, on_every_engine, revision

pytestmark = [pytest.mark.bed, pytest.mark.xdist_group("s3")]  # one SeaweedFS per run
ORDERS = "id, customer_id, total, legacy_code"
WRONG_SECRET = "wrong-secret-key-of-the-e2e-test-0123"


def s3_spec(e2e: E2E, s3: SeaweedFS, in_bed: tuple[str, int], bucket: str) -> dict[str, object]:
    e2e.cluster.secret("s3-keys", {"AWS_ACCESS_KEY_ID": s3.keys.access, "AWS_SECRET_ACCESS_KEY": s3.keys.secret})
    e2e.secrets += [s3.keys.access, s3.keys.secret]
    return {"s3": {"bucket": bucket, "prefix": "prod", "endpoint": f"http://{in_bed[0]}:{in_bed[1]}",
                   "credentials": {"name": "s3-keys"}}, "retain": 3}


@on_every_engine
def test_backups_in_the_object_store_stall_on_wrong_keys_then_restore_a_failed_migration(
        e2e: E2E, s3: SeaweedFS, s3_in_bed: tuple[str, int], s3_bucket: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Wrong keys: Stalled under BackupStoreAccessDenied before any migration (on PostgreSQL only: the store's
    reasons do not depend on the engine). The keys fixed (a new generation): the dump goes to the bucket, the
    migration destroys a column and fails, Auto restores the dump from the bucket (checksum verified) and the rows
    are identical; status and history name the object, never a key. Then (PostgreSQL only: the Job is the same
    on both engines) rows are lost and kubectl dbm restore brings the same object back by hand."""
    project = e2e.project([*BASE_REVISIONS, DROP_LEGACY, fail_after_add(e2e)], transaction_per_migration=True)
    e2e.upgrade_directly(project, R3)
    e2e.seed()
    before = checksum(e2e.db, "orders", ORDERS) + checksum(e2e.db, "customers", "id, name")
    backup = s3_spec(e2e, s3, s3_in_bed, s3_bucket)
    generation = "1"
    if e2e.kind.name == "postgresql":
        e2e.cluster.secret("wrong-keys", {"AWS_ACCESS_KEY_ID": "AKIAWRONGWRONGWRONG1",
                                          "AWS_SECRET_ACCESS_KEY": WRONG_SECRET})
        e2e.secrets.append(WRONG_SECRET)
        wrong = {**backup, "s3": {**backup["s3"], "credentials": {"name": "wrong-keys"}}}  # type: ignore[dict-item]
        e2e.cluster.create("shop", e2e.spec(project, approval={"allowDestructive": True}, backup=wrong))
        obj = e2e.cluster.wait_condition("shop", "Stalled", reason="BackupStoreAccessDenied", timeout=180)
        conds = {x["type"]: x for x in obj["status"]["conditions"]}
        assert conds["BackupSucceeded"]["reason"] == "BackupStoreAccessDenied"
        assert "spec.backup.s3.credentials" in conds["Stalled"]["message"]
        assert e2e.cluster.job_roles("shop") == ["backup-g1", "plan-g1"] and revision(e2e.db) == R3
        with capsys.disabled():  # the figure for docs/backups.md; kubectl dbm's output is read from capsys below
            print(stall_delay(e2e, obj, 1))
        e2e.cluster.patch("shop", {"spec": {"backup": {"s3": {"credentials": {"name": "s3-keys"}}}}})
        generation = "2"
    else:
        e2e.cluster.create("shop", e2e.spec(project, approval={"allowDestructive": True}, backup=backup))
    obj = e2e.cluster.wait_condition("shop", "RolledBack", timeout=240)
    st = obj["status"]
    conds = {x["type"]: x for x in st["conditions"]}
    assert conds["RolledBack"]["reason"] == "Restored", conds["RolledBack"]
    assert revision(e2e.db) == R3
    assert checksum(e2e.db, "orders", ORDERS) + checksum(e2e.db, "customers", "id, name") == before
    roles = e2e.cluster.job_roles("shop")
    assert f"restore-g{generation}" in roles and f"migrate-g{generation}" in roles, roles

    where = f"s3://{s3_bucket}/prod/{e2e.ns}/shop/"
    assert st["backup"]["location"].startswith(where), st["backup"]
    assert conds["BackupSucceeded"]["message"].startswith(f"backup at {where}")
    name = st["backup"]["location"].rpartition("/")[2]
    objects = {o["Key"]: o["Size"] for o in s3.client().list_objects_v2(Bucket=s3_bucket)["Contents"]}
    assert objects == {f"prod/{e2e.ns}/shop/{name}": st["backup"]["sizeBytes"],
                       f"prod/{e2e.ns}/shop/{name}.json": objects[f"prod/{e2e.ns}/shop/{name}.json"]}
    backup_job = next(j for j in e2e.cluster.jobs("shop") if j["metadata"]["labels"][c.ROLE_LABEL] == "backup"
                      and j["metadata"]["labels"][c.GENERATION_LABEL] == generation)
    pod = backup_job["spec"]["template"]["spec"]
    assert [v["name"] for v in pod["volumes"]] == ["work"]  # no volume: the dump streams to the bucket
    if e2e.kind.name != "postgresql":
        return
    e2e.db.query("DELETE FROM orders")
    rc = kubectl_dbm(["restore", "shop", st["backup"]["location"], "--yes", "-o", "json", "-n", e2e.ns,
                      "--kubeconfig", str(e2e.bed.kubeconfig)])
    said = json.loads(capsys.readouterr().out)
    assert rc == 0 and said["ok"] and said["backup"] == st["backup"]["location"], said
    assert revision(e2e.db) == R3
    assert checksum(e2e.db, "orders", ORDERS) + checksum(e2e.db, "customers", "id, name") == before
    by_hand = [j for j in e2e.cluster.jobs("shop") if j["metadata"]["labels"][c.ROLE_LABEL] == "restore-by-hand"]
    assert [j["metadata"]["annotations"][f"{c.GROUP}/backup"] for j in by_hand] == [st["backup"]["location"]]


def stall_delay(e2e: E2E, obj: dict[str, Any], generation: int) -> str:
    """The seconds from the failure of the generation's backup Job (the Job's Failed condition, and its pod's
    termination) to the Stalled condition, in words to print for docs/backups.md: a figure, never asserted (no
    timed assertions). The API's timestamps are whole seconds."""
    job = next(j for j in e2e.cluster.jobs("shop") if j["metadata"]["labels"][c.ROLE_LABEL] == "backup"
               and j["metadata"]["labels"][c.GENERATION_LABEL] == str(generation))
    failed = next(datetime.fromisoformat(x["lastTransitionTime"]) for x in job["status"]["conditions"]
                  if x["type"] == "Failed")
    ended = min((datetime.fromisoformat(s["state"]["terminated"]["finishedAt"]) for pod in e2e.cluster.pods()
                 if pod["metadata"]["labels"].get("job-name") == job["metadata"]["name"]
                 for s in pod["status"]["containerStatuses"] if s["state"].get("terminated")), default=failed)
    stalled = next(x for x in obj["status"]["conditions"] if x["type"] == "Stalled")
    at = datetime.fromisoformat(stalled["lastTransitionTime"])
    return (f"\nStalled {stalled['reason']} {(at - failed).total_seconds():.0f} s after the backup Job's Failed "
            f"condition ({(at - ended).total_seconds():.0f} s after its pod ended; generation {generation})")


def test_a_missing_bucket_or_unreachable_endpoint_stalls_then_retention_keeps_the_newest_backup(
        e2e: E2E, s3: SeaweedFS, s3_in_bed: tuple[str, int], s3_bucket: str) -> None:
    """Each store the Jobs cannot use stalls the run under its own reason, with the field to fix, before any
    migration (printing how long after the backup Job's failure). The store fixed, with retain: 1, two generations
    each take a backup then migrate: the bucket keeps the newest dump and its record, as status and the history name
    it (N+1 backups for N = 1: each generation costs a plan, a backup and a migrate pod, ~15 s, so retain: 2 would
    add one more). PostgreSQL only: the store's reasons and retention do not depend on the engine."""
    project = e2e.project(BASE_REVISIONS)
    e2e.upgrade_directly(project, R1)
    backup = s3_spec(e2e, s3, s3_in_bed, s3_bucket)
    good: dict[str, object] = backup["s3"]  # type: ignore[assignment]
    missing = {**good, "bucket": f"{s3_bucket}-missing"}
    e2e.cluster.create("shop", e2e.spec(project, target=R2, backup={**backup, "s3": missing}))
    obj = e2e.cluster.wait_condition("shop", "Stalled", reason="BackupBucketNotFound", timeout=180)
    conds = {x["type"]: x for x in obj["status"]["conditions"]}
    assert conds["BackupSucceeded"]["reason"] == "BackupBucketNotFound", conds["BackupSucceeded"]
    assert f"{s3_bucket}-missing" in conds["Stalled"]["message"], conds["Stalled"]
    assert "spec.backup.s3.bucket" in conds["Stalled"]["message"], conds["Stalled"]
    assert e2e.cluster.job_roles("shop") == ["backup-g1", "plan-g1"] and revision(e2e.db) == R1
    print(stall_delay(e2e, obj, 1))

    # The relay's host (the node's address, where pods reach the store) at port 1: below the ports the kernel hands
    # out, so no relay or server of the bed ever listens there and every connection is refused.
    refusing = f"http://{s3_in_bed[0]}:1"
    e2e.cluster.patch("shop", {"spec": {"backup": {"s3": {"bucket": s3_bucket, "endpoint": refusing}}}})
    obj = e2e.cluster.wait_condition("shop", "Stalled", reason="BackupStoreUnreachable", timeout=180)
    conds = {x["type"]: x for x in obj["status"]["conditions"]}
    assert conds["BackupSucceeded"]["reason"] == "BackupStoreUnreachable", conds["BackupSucceeded"]
    assert refusing in conds["Stalled"]["message"] and "spec.backup.s3.endpoint" in conds["Stalled"]["message"]
    assert e2e.cluster.job_roles("shop") == ["backup-g1", "backup-g2", "plan-g1", "plan-g2"]
    assert revision(e2e.db) == R1
    print(stall_delay(e2e, obj, 2))

    # The store fixed, keeping one: two generations, each a backup then its migration.
    e2e.cluster.patch("shop", {"spec": {"backup": {"s3": {"endpoint": good["endpoint"]}, "retain": 1}}})
    obj = e2e.cluster.wait_condition("shop", "Ready", timeout=180)
    first = obj["status"]["backup"]["location"]
    e2e.cluster.patch("shop", {"spec": {"targetRevision": R3}})
    obj = e2e.cluster.wait_condition("shop", "Ready", timeout=180)
    st = obj["status"]
    assert st["currentRevision"] == R3 and revision(e2e.db) == R3, st
    assert [(h["generation"], h["result"], h["reason"], h.get("backup")) for h in st["history"]] == [
        (1, "Failed", "BackupBucketNotFound", None), (2, "Failed", "BackupStoreUnreachable", None),
        (3, "Succeeded", "Migrated", first), (4, "Succeeded", "Migrated", st["backup"]["location"])]
    where = f"s3://{s3_bucket}/prod/{e2e.ns}/shop/"
    assert first.startswith(where) and st["backup"]["location"].startswith(where) and first != st["backup"]["location"]
    newest = f"prod/{e2e.ns}/shop/{st['backup']['location'].removeprefix(where)}"
    listed = {o["Key"]: o["Size"] for o in s3.client().list_objects_v2(Bucket=s3_bucket)["Contents"]}
    assert set(listed) == {newest, f"{newest}.json"}, (first, listed)  # the first dump and its record are pruned
    assert listed[newest] == st["backup"]["sizeBytes"]
    record = json.loads(s3.client().get_object(Bucket=s3_bucket, Key=f"{newest}.json")["Body"].read())
    assert (record["revision"], record["sizeBytes"], record["sha256"]) == (
        R2, st["backup"]["sizeBytes"], st["backup"]["sha256"]), (record, st["backup"])
