"""kubectl dbm restore's decisions (dbm/restore.py): when it refuses, which backup and checksum it takes, its Job."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from alembic_operator import backupstores, reasons
from alembic_operator.api import parse_spec, parse_status
from alembic_operator.backupstores import StoreError
from alembic_operator.dbm import restore
from alembic_operator.jobparts import manifest
from alembic_operator.jobs import ROLES, Owner
from alembic_operator.jobtools import cmd_restore

BASE: dict[str, Any] = {
    "database": {"urlSecretRef": {"name": "shop-db", "key": "url"}},
    "migrations": {"image": "ghcr.io/acme/shop:1.4.2"},
    "targetRevision": "head",
}
OWNER = Owner(name="orders", namespace="shop", uid="0000-1111", generation=3)
NEWEST = "orders-20261124T020738Z-9d81aa02c4f5.dump"
OLDER = "orders-20261120T010000Z-3f2a9c1d0b7e.dump"
SHA = "sha256:" + "ab" * 32


def s3_spec() -> Any:
    return parse_spec({**BASE, "backup": {"s3": {"bucket": "shop-backups", "prefix": "prod",
                                                 "credentials": {"name": "s3-keys"}}}})


def wiring_of(spec: Any) -> Any:
    return backupstores.wiring_for(spec.backup, OWNER.namespace, OWNER.name)


def status(step: str | None = "Done", phase: str = "Succeeded") -> Any:
    where = "s3://shop-backups/prod/shop/orders"
    return parse_status({
        "phase": phase,
        "backup": {"location": f"{where}/{NEWEST}", "sha256": SHA, "revision": "9d81aa02c4f5"},
        "history": [{"generation": 1, "result": "Succeeded", "backup": f"{where}/{OLDER}"},
                    {"generation": 2, "result": "Succeeded", "backup": f"{where}/{NEWEST}"}],
        "run": {"generation": 3, "step": step, "backup": {"location": f"{where}/{NEWEST}",
                                                          "file": f"{where}/{NEWEST}", "sha256": SHA}},
    })


def test_it_refuses_while_a_run_is_under_way_or_the_resource_is_deleted() -> None:
    for step in ("Planning", "AwaitingApproval", "BackingUp", "Migrating", "RollingBack"):
        why = restore.under_way(status(step, "Migrating"), False, "orders")
        assert why is not None and "under way" in why and step in why and "nothing was restored" in why
    assert "being deleted" in (restore.under_way(status(), True, "orders") or "")
    assert restore.under_way(status(), False, "orders") is None
    assert restore.under_way(status(None, "Pending"), False, "orders") is None  # never ran


def test_a_backup_named_by_its_name_or_its_location_takes_the_checksum_status_recorded() -> None:
    spec = s3_spec()
    wiring = wiring_of(spec)
    for named in (NEWEST, f"s3://shop-backups/prod/shop/orders/{NEWEST}"):
        chosen = restore.choose(named, "orders", status(), wiring)
        assert chosen.reference == f"s3://shop-backups/prod/shop/orders/{NEWEST}" and chosen.sha256 == SHA
        assert chosen.revision == "9d81aa02c4f5" and chosen.shown == chosen.reference
    older = restore.choose(OLDER, "orders", status(), wiring)  # status kept no checksum: the store's record's
    assert older.sha256 == restore.RECORDED and older.revision is None
    given = restore.choose(OLDER, "orders", status(), wiring, sha256="CD" * 32)
    assert given.sha256 == "sha256:" + "cd" * 32
    assert restore.known_backups(status()) == [f"s3://shop-backups/prod/shop/orders/{n}" for n in (NEWEST, OLDER)]


@pytest.mark.parametrize(("named", "says"), [
    ("invoices-20261124T020738Z-9d81aa02c4f5.dump", "is not a backup of dbm/orders"),
    ("orders-latest.dump", "is not a backup of dbm/orders"),
    (f"s3://other-bucket/prod/shop/orders/{NEWEST}", "is not in the backup store"),
    (f"/backups/shop/orders/{NEWEST}", "is not in the backup store"),
])
def test_a_name_that_is_not_this_resources_backup_is_refused(named: str, says: str) -> None:
    with pytest.raises(restore.Refused, match=says):
        restore.choose(named, "orders", status(), wiring_of(s3_spec()))
    with pytest.raises(restore.Refused, match="not a sha256"):
        restore.choose(NEWEST, "orders", status(), wiring_of(s3_spec()), sha256="md5:abc")


def test_the_job_is_the_rollbacks_restore_under_its_own_role_with_the_databases_lock_and_no_secret() -> None:
    spec = s3_spec()
    wiring = wiring_of(spec)
    chosen = restore.choose(OLDER, "orders", status(), wiring)
    job = manifest(restore.restore_job(OWNER, spec, wiring, chosen, operator_image="op:1",
                                       now=dt.datetime(2026, 12, 7, 10, 0, 0, tzinfo=dt.UTC)))
    meta = job["metadata"]
    assert meta["name"] == "orders-restore-g3-by-hand-20261207100000" and len(meta["name"]) <= 63
    labels = meta["labels"]
    assert labels["migrations.alembic-operator.io/role"] == "restore-by-hand" not in ROLES  # no run takes it as its own
    assert labels["migrations.alembic-operator.io/migration"] == "orders"
    assert job["spec"]["template"]["metadata"]["labels"]["migrations.alembic-operator.io/role"] == "restore-by-hand"
    assert meta["ownerReferences"][0]["uid"] == "0000-1111"
    assert meta["annotations"] == {"migrations.alembic-operator.io/backup": f"s3://shop-backups/prod/shop/orders/{OLDER}"}
    ctr = job["spec"]["template"]["spec"]["containers"][0]
    assert ctr["image"] == "op:1"
    assert ctr["command"][3:] == ["--store", "s3", "--dump", f"s3://shop-backups/prod/shop/orders/{OLDER}",
                                  "--sha256", "recorded", "--lock-key", "database", "--lock-wait-seconds",
                                  ctr["command"][-1]]
    env = {e["name"]: e for e in ctr["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "s3-keys"
    assert all("value" not in e for e in env.values() if e["name"].startswith(("AWS_ACCESS", "AWS_SECRET")))


def test_a_volume_backup_is_named_as_status_shows_it(tmp_path: Path) -> None:
    spec = parse_spec({**BASE, "backup": {"volume": {"persistentVolumeClaim": {"claimName": "shop-backups"}}}})
    wiring = wiring_of(spec)
    chosen = restore.choose(f"{wiring.shown_as}/{OLDER}", "orders", status(), wiring)
    assert chosen.reference == f"/backups/shop/orders/{OLDER}" and chosen.shown == f"{wiring.shown_as}/{OLDER}"


def test_outcome_says_the_revision_or_the_jobs_reason() -> None:
    done = restore.outcome({"ok": True, "revision": "3f2a", "dropped": []})
    assert done == (True, "the database is at revision 3f2a")
    ok, line = restore.outcome({"ok": False, "reason": "BackupCorrupt", "message": "checksum differs"})
    assert not ok and line == "BackupCorrupt: checksum differs"
    assert restore.outcome(None)[0] is False


def test_the_job_checks_the_recorded_checksum_before_it_reads_the_database_url(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """--sha256 recorded: the record's checksum; a dump that differs from it, or has no record, is refused
    before the database is touched (the URL is not even set here)."""
    monkeypatch.delenv("ALEMBIC_OPERATOR_DATABASE_URL", raising=False)
    store = backupstores.open_store("volume", str(tmp_path))
    (tmp_path / OLDER).write_bytes(b"a dump")
    with pytest.raises(StoreError) as missing:
        cmd_restore("volume", f"{tmp_path}/{OLDER}", "recorded")
    assert missing.value.reason == reasons.BACKUP_NOT_FOUND and "has no record" in missing.value.message
    store.write_record(OLDER, {"revision": None, "sha256": SHA, "sizeBytes": 6, "completedAt": "", "database": {},
                               "file": OLDER})
    assert store.recorded_sha256(OLDER) == SHA
    with pytest.raises(StoreError) as corrupt:
        cmd_restore("volume", f"{tmp_path}/{OLDER}", "recorded")
    assert corrupt.value.reason == reasons.BACKUP_CORRUPT and "nothing was restored" in corrupt.value.message
    (tmp_path / f"{OLDER}.json").write_text(json.dumps({"sha256": "none"}))
    with pytest.raises(StoreError, match="holds no checksum"):
        store.recorded_sha256(OLDER)
