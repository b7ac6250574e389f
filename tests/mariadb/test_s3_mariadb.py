"""The S3 store on MariaDB: the backup Job streams mariadb-dump to a real S3-compatible server (SeaweedFS), a failed
migration is restored from it with identical rows, and retention keeps the newest N (the PostgreSQL side, the cut
off upload and the reasons are in tests/postgres/test_s3_jobtools.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from test_engine import checksums, seed

from bed.mariadb import Database
from bed.s3 import SeaweedFS

pytestmark = [pytest.mark.mariadb, pytest.mark.xdist_group("s3")]


def test_backup_to_s3_restore_from_it_and_retention(
        mariadb_database: Database, job: Any, s3: SeaweedFS, s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    db = mariadb_database
    seed(db)
    before = checksums(db)
    location = f"s3://{s3_bucket}/shop/orders"
    runs = []
    for _ in range(3):
        run = job(db.url, "backup", "--store", "s3", "--location", location, "--prefix", "orders", "--retain", "2")
        assert run.rc == 0, run
        text = run.out + run.err + json.dumps(run.result)
        assert s3.keys.secret not in text and s3.keys.access not in text
        runs.append(run)
    assert runs[-1].result["pruned"] == [runs[0].result["file"].rpartition("/")[2]]
    kept = sorted(o["Key"] for o in s3.client().list_objects_v2(Bucket=s3_bucket)["Contents"])
    assert kept == sorted(f"shop/orders/{r.result['file'].rpartition('/')[2]}{ext}" for r in runs[1:]
                          for ext in ("", ".json"))

    db.query("UPDATE orders SET amount = amount + 1000 WHERE id < 10")
    db.query("ALTER TABLE orders DROP COLUMN code")
    db.query("CREATE TABLE audit (id INT PRIMARY KEY)")
    db.query("UPDATE alembic_version SET version_num = 'b2'")
    newest = runs[-1].result
    run = job(db.url, "restore", "--store", "s3", "--dump", newest["file"], "--sha256", newest["sha256"])
    assert run.rc == 0, run
    assert run.result["revision"] == "a1" and run.result["dropped"] == ["TABLE audit"]
    assert checksums(db) == before
