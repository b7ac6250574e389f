"""The S3 store against a real S3-compatible server (SeaweedFS, the `s3` fixture): the backup and restore Jobs'
commands on PostgreSQL, retention, an upload cut off by stopping the server, and each misconfiguration's reason.
No key of the server appears in any result or log line (`leak_free`)."""

from __future__ import annotations

import json
import os
from typing import IO, Any

import pytest
from test_jobtools import failed_migration, relations, seed

from alembic_operator import reasons
from alembic_operator.backupstores.s3 import PART_SIZE_ENV, S3Store
from bed.postgres import Database
from bed.s3 import Keys, SeaweedFS

# One worker runs every test of the S3 server (one SeaweedFS per run, not one per worker)
pytestmark = [pytest.mark.postgres, pytest.mark.xdist_group("s3")]


@pytest.fixture
def s3_env(s3: SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> SeaweedFS:
    """The Job's environment as the S3 store's wiring sets it, with the server's keys."""
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    return s3


def leak_free(run: Any, *keys: Keys) -> Any:
    text = run.out + run.err + json.dumps(run.result)
    for k in keys:
        assert k.secret not in text and k.access not in text
    return run


def backup(job: Any, db: Database, s3: SeaweedFS, location: str, prefix: str = "orders", retain: int = 5) -> Any:
    return leak_free(job(db.url, "backup", "--store", "s3", "--location", location, "--prefix", prefix,
                         "--retain", str(retain), "--location-prefix", location), s3.keys)


def test_backup_to_s3_then_a_failed_migration_restored_from_it(
        database: Database, job: Any, s3_env: SeaweedFS, s3_bucket: str) -> None:
    seed(database)
    before = database.query("SELECT id, legacy_code, amount FROM orders ORDER BY id")
    location = f"s3://{s3_bucket}/prod/shop/orders"
    run = backup(job, database, s3_env, location)
    assert run.rc == 0, run
    taken = run.result
    name = taken["file"].rpartition("/")[2]
    assert taken["file"] == taken["location"] == f"{location}/{name}"
    client = s3_env.client()
    record = json.loads(client.get_object(Bucket=s3_bucket, Key=f"prod/shop/orders/{name}.json")["Body"].read())
    assert record["sha256"] == taken["sha256"] and record["sizeBytes"] == taken["sizeBytes"] > 0
    assert record["revision"] == "a1" and record["file"] == name

    failed_migration(database)
    wrong = "sha256:" + "0" * 64  # the checksum is verified before anything is touched
    run = job(database.url, "restore", "--store", "s3", "--dump", taken["file"], "--sha256", wrong)
    assert run.result["reason"] == reasons.BACKUP_CORRUPT and "nothing was restored" in run.result["message"]
    assert "public.invoices" in relations(database)
    run = job(database.url, "restore", "--store", "s3", "--dump", f"{location}/orders-missing.dump", "--sha256", wrong)
    assert run.result["reason"] == reasons.BACKUP_NOT_FOUND
    run = leak_free(job(database.url, "restore", "--store", "s3", "--dump", taken["file"], "--sha256",
                        taken["sha256"]), s3_env.keys)
    assert run.rc == 0, run
    assert run.result["revision"] == "a1" and "checksum verified" in run.err
    assert relations(database) == {"public.orders", "public.alembic_version"}
    assert database.query("SELECT id, legacy_code, amount FROM orders ORDER BY id") == before


def test_retention_keeps_the_newest_n_backups_and_deletes_what_interrupted_uploads_left(
        database: Database, job: Any, s3_env: SeaweedFS, s3_bucket: str) -> None:
    seed(database)
    location = f"s3://{s3_bucket}/shop/orders"
    client = s3_env.client()
    # what an interrupted backup leaves: a dump without its record, and a multipart upload never completed
    client.put_object(Bucket=s3_bucket, Key="shop/orders/orders-20200101T000000Z-a1.dump", Body=b"half")
    client.create_multipart_upload(Bucket=s3_bucket, Key="shop/orders/orders-20200101T000001Z-a1.dump")
    client.put_object(Bucket=s3_bucket, Key="shop/orders/other-20200101T000000Z-a1.dump", Body=b"not ours")
    files = []
    for _ in range(3):
        run = backup(job, database, s3_env, location, retain=2)
        assert run.rc == 0, run
        files.append(run.result["file"].rpartition("/")[2])
    assert run.result["pruned"] == [files[0]]
    keys = sorted(o["Key"].rpartition("/")[2] for o in client.list_objects_v2(Bucket=s3_bucket)["Contents"])
    assert keys == sorted([*files[1:], *(f + ".json" for f in files[1:]), "other-20200101T000000Z-a1.dump"])
    assert not client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")
    store = S3Store(location)
    assert store.list_dumps("orders") == files[:0:-1]  # newest first, each with its record


def test_an_upload_cut_off_by_the_server_stopping_leaves_no_backup_and_the_next_one_succeeds(
        database: Database, job: Any, s3_env: SeaweedFS, s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server stops after the first parts of a dump went up: the write fails as BackupUploadInterrupted
    (retried by the operator), no object and no record exist once it is back, and the next backup succeeds and
    aborts the upload the failed one could not."""
    monkeypatch.setenv(PART_SIZE_ENV, str(5 << 20))
    location = f"s3://{s3_bucket}/shop/orders"
    store = S3Store(location)
    name = "orders-20260101T000000Z-a1.dump"

    def produce(out: IO[bytes]) -> None:
        for _ in range(3):  # three parts, then the server goes away: four more cannot be uploaded
            out.write(os.urandom(5 << 20))
        assert store.uploads_in_progress("orders") == [name]
        s3_env.stop(grace=0)  # as a crash: at once
        for _ in range(4):
            out.write(os.urandom(5 << 20))

    try:
        with pytest.raises(Exception) as raised:
            store.write(name, produce)
    finally:
        s3_env.start()
    assert getattr(raised.value, "reason", None) == reasons.BACKUP_UPLOAD_INTERRUPTED, raised.value
    assert "nothing counts as a backup" in str(raised.value)
    assert not store.exists(name) and store.list_dumps("orders") == []

    seed(database)
    run = backup(job, database, s3_env, location)
    assert run.rc == 0, run
    assert S3Store(location).list_dumps("orders") == [run.result["file"].rpartition("/")[2]]
    assert not s3_env.client().list_multipart_uploads(Bucket=s3_bucket).get("Uploads")


def test_each_misconfiguration_fails_the_backup_with_its_own_reason_before_the_dump(
        database: Database, job: Any, s3_env: SeaweedFS, s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    seed(database)
    location = f"s3://{s3_bucket}/shop/orders"
    wrong = Keys("AKIAWRONGWRONGWRONG1", "wrong-secret-key-of-the-test-0123456789")
    for name, value in s3_env.env(wrong).items():
        monkeypatch.setenv(name, value)
    run = leak_free(job(database.url, "backup", "--store", "s3", "--location", location, "--prefix", "orders",
                        "--retain", "1"), wrong)
    assert run.result["reason"] == reasons.BACKUP_STORE_ACCESS_DENIED, run
    assert "spec.backup.s3.credentials" in run.result["message"] and "no migration started" in run.result["message"]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-" + s3_env.keys.secret)  # a known key, a wrong secret
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_env.keys.access)
    run = job(database.url, "backup", "--store", "s3", "--location", location, "--prefix", "orders", "--retain", "1")
    assert run.result["reason"] == reasons.BACKUP_STORE_ACCESS_DENIED and "secret access key" in run.result["message"]
    for name, value in s3_env.env(s3_env.reader).items():  # may read, may not write
        monkeypatch.setenv(name, value)
    run = leak_free(job(database.url, "backup", "--store", "s3", "--location", location, "--prefix", "orders",
                        "--retain", "1"), s3_env.reader)
    assert run.result["reason"] == reasons.BACKUP_STORE_ACCESS_DENIED and "s3:PutObject" in run.result["message"]

    for name, value in s3_env.env().items():
        monkeypatch.setenv(name, value)
    run = backup(job, database, s3_env, f"s3://{s3_bucket}-missing/shop/orders")
    assert run.result["reason"] == reasons.BACKUP_BUCKET_NOT_FOUND and "create it" in run.result["message"]
    closed = SeaweedFS.closed_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{closed}")
    run = backup(job, database, s3_env, location)
    assert run.result["reason"] == reasons.BACKUP_STORE_UNREACHABLE
    assert f"127.0.0.1:{closed}" in run.result["message"] and "spec.backup.s3.endpoint" in run.result["message"]
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_env.endpoint.replace("http://", "https://"))  # TLS to plain HTTP
    run = backup(job, database, s3_env, location)
    assert run.result["reason"] == reasons.BACKUP_STORE_UNREACHABLE
    assert not s3_env.client().list_objects_v2(Bucket=s3_bucket).get("Contents")  # nothing was written anywhere
    run = job(database.url, "restore", "--store", "s3", "--dump", "/backups/x.dump", "--sha256", "sha256:" + "a" * 64)
    assert run.result["reason"] == reasons.INVALID_ARGUMENT  # not an s3:// reference
