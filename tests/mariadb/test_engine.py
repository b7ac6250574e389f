"""The MySQL/MariaDB engine against a real MariaDB server: the revision the operator reads, the migration lock, and
backup and restore through the Job commands (`alembic-operator job backup|restore|current`)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from alembic_operator import dbstate, engines
from alembic_operator.jobio import JobError
from alembic_operator.runner.errors import Failure
from alembic_operator.runner.lock import migration_lock, mysql_lock_name
from bed.mariadb import Database

pytestmark = pytest.mark.mariadb


def target(db: Database) -> dbstate.DatabaseTarget:
    return dbstate.parse_url(db.url, "shop/shop-db", "url")


def seed(db: Database, revision: str = "a1") -> None:
    db.query("CREATE TABLE orders (id INT AUTO_INCREMENT PRIMARY KEY, code VARCHAR(20), amount INT NOT NULL, "
             "blob_col VARBINARY(16))")
    with db.connect() as conn, conn.cursor() as cur:
        cur.executemany("INSERT INTO orders (code, amount, blob_col) VALUES (%s, %s, %s)",
                        [(f"code-{i}", i, bytes([i, 0, 255])) for i in range(1, 51)])
    db.query("CREATE TABLE customers (id INT PRIMARY KEY, name VARCHAR(40))")
    db.query("INSERT INTO customers VALUES (1, 'Ada'), (2, 'Grace')")
    db.query("CREATE VIEW big_orders AS SELECT id, amount FROM orders WHERE amount > 25")
    db.query("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)")
    db.query("INSERT INTO alembic_version VALUES (%s)", revision)


def checksums(db: Database) -> dict[str, str]:
    """Every base table's rows, checksummed in primary-key order, and its definition."""
    out = {}
    for (name,) in db.query("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() "
                            "AND TABLE_TYPE = 'BASE TABLE' ORDER BY TABLE_NAME"):
        rows = db.query(f"SELECT * FROM `{name}` ORDER BY 1")
        create = db.query(f"SHOW CREATE TABLE `{name}`")[0][1]
        out[str(name)] = hashlib.sha256(repr((rows, create)).encode()).hexdigest()
    return out


# --- the revision the operator reads -----------------------------------------------------------------------------


def test_revision_at_base_at_a_revision_and_with_several_heads(mariadb_database: Database) -> None:
    t = target(mariadb_database)
    assert isinstance(t.engine, engines.REGISTRY.get("mysql").__class__)
    obs = dbstate.read_revision(t)
    assert (obs.revision, obs.versioned, obs.tables, obs.error_reason) == (None, False, 0, None)
    seed(mariadb_database)
    obs = dbstate.read_revision(t)
    assert (obs.revision, obs.versioned, obs.tables, obs.error_reason) == ("a1", True, 2, None)
    mariadb_database.query("INSERT INTO alembic_version VALUES ('b2')")
    obs = dbstate.read_revision(t)
    assert obs.error_reason == "MultipleHeads" and "a1, b2" in str(obs.error_message)


def test_wrong_password_and_missing_database_are_explained_without_the_password(mariadb_database: Database) -> None:
    wrong = mariadb_database.url.replace(mariadb_database.password, "pw-wrong-secret-4711")
    obs = dbstate.read_revision(dbstate.parse_url(wrong, "shop/shop-db", "url"))
    assert obs.error_reason == "DatabaseAuthenticationFailed" and not obs.transient
    assert "pw-wrong-secret-4711" not in str(obs.error_message) and "Access denied" in str(obs.error_message)
    missing = mariadb_database.url.rsplit("/", 1)[0] + "/no_such_db"
    obs = dbstate.read_revision(dbstate.parse_url(missing, "shop/shop-db", "url"))
    assert obs.error_reason in ("DatabaseNotFound", "DatabaseAuthenticationFailed")  # app may not see other dbs
    assert mariadb_database.password not in str(obs.error_message)
    unreachable = mariadb_database.url.replace(f":{mariadb_database.port}/", ":1/")
    obs = dbstate.read_revision(dbstate.parse_url(unreachable, "shop/shop-db", "url"))
    assert obs.error_reason == "DatabaseUnreachable" and obs.transient
    assert mariadb_database.password not in str(obs.error_message)


# --- the lock ----------------------------------------------------------------------------------------------------


def test_a_second_holder_times_out_naming_the_first(mariadb_database: Database) -> None:
    engine = engines.REGISTRY.get("mysql")
    url = make_url(mariadb_database.url)
    db = engine.connect(url)
    key = engine.lock_key(engine.database_key(url))
    with mariadb_database.connect() as holder, holder.cursor() as cur:
        cur.execute("SELECT GET_LOCK(%s, 0), CONNECTION_ID()", (mysql_lock_name(key),))
        got, holder_id = cur.fetchone()  # type: ignore[misc]
        assert got == 1
        cur.execute("SELECT 'a secret literal' AS x")  # the holder's last statement, literals removed when shown
        with pytest.raises(JobError) as err, engine.advisory_lock(db, key, timeout=2):
            pass
        assert err.value.reason == "LockTimeout"
        assert f"pid {holder_id}" in err.value.message and "user app" in err.value.message
        assert "secret literal" not in err.value.message
        # the runner's upgrade, downgrade and stamp take the same lock
        import sqlalchemy

        sa_engine = sqlalchemy.create_engine(mariadb_database.url)
        try:
            with pytest.raises(Failure) as failure, migration_lock(sa_engine, key, timeout=1):
                pass
            assert failure.value.reason == "LockTimeout" and f"pid {holder_id}" in failure.value.message
        finally:
            sa_engine.dispose()
    # released with the session: the engine takes it, and a second taker waits for it
    with engine.advisory_lock(db, key, timeout=5), mariadb_database.connect() as other, other.cursor() as cur:
        cur.execute("SELECT GET_LOCK(%s, 0)", (mysql_lock_name(key),))
        assert cur.fetchone() == (0,)
    with mariadb_database.connect() as other, other.cursor() as cur:
        cur.execute("SELECT GET_LOCK(%s, 0)", (mysql_lock_name(key),))
        assert cur.fetchone() == (1,)


# --- backup and restore ------------------------------------------------------------------------------------------


def backup(db: Database, job: Any, tmp_path: Path) -> tuple[str, str]:
    run = job(db.url, "backup", "--dir", str(tmp_path / "backups"), "--prefix", "shop", "--retain", "5")
    assert run.rc == 0, run
    return run.result["file"], run.result["sha256"]


def test_backup_records_the_revision_in_the_dump(mariadb_database: Database, job: Any, tmp_path: Path) -> None:
    seed(mariadb_database)
    run = job(mariadb_database.url, "backup", "--dir", str(tmp_path / "b"), "--prefix", "shop", "--retain", "2")
    assert run.rc == 0, run
    assert run.result["revision"] == "a1" and run.result["sizeBytes"] > 1000
    dump = Path(run.result["file"]).read_bytes()
    assert run.result["sha256"] == "sha256:" + hashlib.sha256(dump).hexdigest()
    assert b"INSERT INTO `alembic_version` VALUES\n('a1');" in dump
    assert mariadb_database.password.encode() not in dump
    assert b"GTID" not in dump.upper().replace(b"GTID_", b"")


def test_restore_gives_identical_rows_and_drops_what_the_backup_lacks(
        mariadb_database: Database, job: Any, tmp_path: Path) -> None:
    seed(mariadb_database)
    mariadb_database.query("CREATE PROCEDURE total() SELECT SUM(amount) FROM orders")
    before = checksums(mariadb_database)
    file, sha = backup(mariadb_database, job, tmp_path)
    db = mariadb_database
    db.query("UPDATE orders SET amount = amount + 1000 WHERE id < 10")
    db.query("DELETE FROM customers WHERE id = 2")
    db.query("ALTER TABLE orders ADD COLUMN note VARCHAR(10), DROP COLUMN code")
    db.query("CREATE TABLE audit (id INT PRIMARY KEY, order_id INT, FOREIGN KEY (order_id) REFERENCES orders (id))")
    db.query("INSERT INTO audit VALUES (1, 1)")
    db.query("CREATE VIEW recent AS SELECT id FROM audit")
    db.query("CREATE FUNCTION twice(x INT) RETURNS INT DETERMINISTIC RETURN x * 2")
    db.query("DROP PROCEDURE total")
    db.query("UPDATE alembic_version SET version_num = 'b2'")
    assert checksums(db) != before

    run = job(db.url, "restore", "--file", file, "--sha256", sha)
    assert run.rc == 0, run
    assert run.result["revision"] == "a1"
    assert sorted(run.result["dropped"]) == ["FUNCTION twice", "TABLE audit", "VIEW recent"]
    assert checksums(db) == before
    assert db.query("SELECT COUNT(*) FROM big_orders") == [(25,)]
    assert db.query("SELECT ROUTINE_NAME FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = DATABASE()") == [
        ("total",)]
    # a second restore of the same backup changes nothing and drops nothing
    run = job(db.url, "restore", "--file", file, "--sha256", sha)
    assert run.rc == 0 and run.result["dropped"] == [], run
    assert checksums(db) == before


def test_restore_refuses_a_corrupt_backup_and_changes_nothing(
        mariadb_database: Database, job: Any, tmp_path: Path) -> None:
    seed(mariadb_database)
    file, sha = backup(mariadb_database, job, tmp_path)
    mariadb_database.query("CREATE TABLE extra (id INT)")
    Path(file).write_bytes(Path(file).read_bytes().replace(b"code-1", b"code-X"))
    run = job(mariadb_database.url, "restore", "--file", file, "--sha256", sha)
    assert run.result["reason"] == "BackupCorrupt"
    assert mariadb_database.query("SHOW TABLES LIKE 'extra'") == [("extra",)]


def test_restore_waits_for_the_migration_lock(mariadb_database: Database, job: Any, tmp_path: Path) -> None:
    seed(mariadb_database)
    file, sha = backup(mariadb_database, job, tmp_path)
    mariadb_database.query("CREATE TABLE extra (id INT)")
    engine = engines.REGISTRY.get("mysql")
    key = engine.lock_key(engine.database_key(make_url(mariadb_database.url)))
    with mariadb_database.connect() as holder, holder.cursor() as cur:
        cur.execute("SELECT GET_LOCK(%s, 0)", (mysql_lock_name(key),))
        run = job(mariadb_database.url, "restore", "--file", file, "--sha256", sha, "--lock-key", str(key),
                  "--lock-timeout", "2")
    assert run.result["reason"] == "LockTimeout", run
    assert mariadb_database.query("SHOW TABLES LIKE 'extra'") == [("extra",)]


def test_current_and_failures_name_no_secret(mariadb_database: Database, job: Any, tmp_path: Path) -> None:
    assert job(mariadb_database.url, "current").result == {"ok": True, "current": None}
    seed(mariadb_database)
    assert job(mariadb_database.url, "current").result == {"ok": True, "current": "a1"}
    wrong = mariadb_database.url.replace(mariadb_database.password, "pw-wrong-secret-123")
    run = job(wrong, "backup", "--dir", str(tmp_path), "--prefix", "p", "--retain", "1")
    assert run.result["reason"] == "DatabaseAuthenticationFailed", run
    unreachable = mariadb_database.url.replace(f":{mariadb_database.port}/", ":1/")
    run = job(unreachable, "current")
    assert run.result["reason"] == "DatabaseUnreachable", run


def test_a_backup_taken_while_the_revision_moves_is_refused(mariadb_database: Database, tmp_path: Path) -> None:
    """The heads recorded are those in the dump: a revision that moved between the read and the dump fails the
    backup (no file kept) instead of recording a revision the dump does not hold."""
    seed(mariadb_database)
    engine = engines.REGISTRY.get("mysql")
    db = engine.connect(make_url(mariadb_database.url))
    with engine.snapshot(db) as snapshot:
        assert snapshot.heads == ["a1"]
        mariadb_database.query("UPDATE alembic_version SET version_num = 'b2'")
        with open(tmp_path / "dump.sql", "wb") as out, pytest.raises(JobError, match="moved while it was dumped"):
            snapshot.dump(out)
