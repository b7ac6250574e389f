"""The MySQL/MariaDB engine against a real MariaDB server: the revision the operator reads, the migration lock, and
backup and restore through the Job commands (`alembic-operator job backup|restore|current`)."""

from __future__ import annotations

import hashlib
import json
import threading
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


@pytest.mark.parametrize("scheme", ["mysql+mysqldb", "mariadb+mariadbconnector", "mysql+aiomysql"])
def test_the_operator_reads_through_pymysql_whatever_driver_the_app_uses(
        mariadb_database: Database, scheme: str) -> None:
    seed(mariadb_database)
    url = mariadb_database.url.replace("mysql+pymysql://", f"{scheme}://")
    obs = dbstate.read_revision(dbstate.parse_url(url, "shop/shop-db", "url"))
    assert (obs.revision, obs.error_reason) == ("a1", None)
    # the app's driver's own options are the app's: the operator reads without them
    odd = dbstate.read_revision(dbstate.parse_url(url + "?no_such_option=1&charset=utf8mb4", "shop/shop-db", "url"))
    assert (odd.revision, odd.error_reason) == ("a1", None)


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
        # The holder is busy with a statement while the second taker gives up: it is shown, its literals removed.
        busy_sql = "SELECT SLEEP(4), 'a secret literal', \"another secret\""
        busy = threading.Thread(target=cur.execute, args=(busy_sql,))
        busy.start()
        try:
            with pytest.raises(JobError) as err, engine.advisory_lock(db, key, timeout=2):
                pass
        finally:
            busy.join()
        assert err.value.reason == "LockTimeout"
        assert f"pid {holder_id}" in err.value.message and "user app" in err.value.message
        assert "secret" not in err.value.message and "SELECT SLEEP(?), ?, ?" in err.value.message
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
    run = job(db.url, "backup", "--store", "volume", "--location", str(tmp_path / "backups"), "--prefix", "shop",
              "--retain", "5")
    assert run.rc == 0, run
    return run.result["file"], run.result["sha256"]


def test_backup_records_the_revision_in_the_dump(mariadb_database: Database, job: Any, tmp_path: Path) -> None:
    seed(mariadb_database)
    run = job(mariadb_database.url, "backup", "--store", "volume", "--location", str(tmp_path / "b"), "--prefix",
              "shop", "--retain", "2")
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

    run = job(db.url, "restore", "--store", "volume", "--dump", file, "--sha256", sha)
    assert run.rc == 0, run
    assert run.result["revision"] == "a1"
    assert sorted(run.result["dropped"]) == ["FUNCTION twice", "TABLE audit", "VIEW recent"]
    assert checksums(db) == before
    assert db.query("SELECT COUNT(*) FROM big_orders") == [(25,)]
    assert db.query("SELECT ROUTINE_NAME FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = DATABASE()") == [
        ("total",)]
    # a second restore of the same backup changes nothing and drops nothing
    run = job(db.url, "restore", "--store", "volume", "--dump", file, "--sha256", sha)
    assert run.rc == 0 and run.result["dropped"] == [], run
    assert checksums(db) == before


def test_restore_refuses_a_corrupt_backup_and_changes_nothing(
        mariadb_database: Database, job: Any, tmp_path: Path) -> None:
    seed(mariadb_database)
    file, sha = backup(mariadb_database, job, tmp_path)
    mariadb_database.query("CREATE TABLE extra (id INT)")
    Path(file).write_bytes(Path(file).read_bytes().replace(b"code-1", b"code-X"))
    run = job(mariadb_database.url, "restore", "--store", "volume", "--dump", file, "--sha256", sha)
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
        run = job(mariadb_database.url, "restore", "--store", "volume", "--dump", file, "--sha256", sha, "--lock-key",
                  str(key),
                  "--lock-wait-seconds", "2")
        assert run.result["reason"] == "LockTimeout", run
        # kubectl dbm restore's Job: the same lock, derived in the Job from the URL; the record's checksum
        by_hand = ["restore", "--store", "volume", "--dump", file, "--sha256", "recorded", "--lock-key", "database",
                   "--lock-wait-seconds", "1"]
        run = job(mariadb_database.url, *by_hand)
        assert run.result["reason"] == "LockTimeout", run
    assert mariadb_database.query("SHOW TABLES LIKE 'extra'") == [("extra",)]
    run = job(mariadb_database.url, *by_hand)
    assert run.rc == 0 and run.result["revision"] == "a1", run
    assert mariadb_database.query("SHOW TABLES LIKE 'extra'") == []


def test_current_and_failures_name_no_secret(mariadb_database: Database, job: Any, tmp_path: Path) -> None:
    assert job(mariadb_database.url, "current").result == {"ok": True, "current": None}
    seed(mariadb_database)
    assert job(mariadb_database.url, "current").result == {"ok": True, "current": "a1"}
    wrong = mariadb_database.url.replace(mariadb_database.password, "pw-wrong-secret-123")
    run = job(wrong, "backup", "--store", "volume", "--location", str(tmp_path), "--prefix", "p", "--retain", "1")
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


# --- the plan's scan ---------------------------------------------------------------------------------------------


def test_the_scan_job_judges_a_type_change_against_the_live_column(
        mariadb_database: Database, job: Any, tmp_path: Path) -> None:
    """`job scan` on a MySQL plan goes to the MySQL scanner with the live column types (read only): widening an
    INT is a note, narrowing a VARCHAR destroys data; without the database the narrowing is still destructive."""
    seed(mariadb_database)
    plan_dir = tmp_path / "plan"
    plan_dir.mkdir()
    sql = ("ALTER TABLE orders MODIFY amount BIGINT NOT NULL;\n\nALTER TABLE orders MODIFY code VARCHAR(5);\n\n"
           "UPDATE alembic_version SET version_num='b2' WHERE alembic_version.version_num = 'a1';\n")
    (plan_dir / "001-b2.sql").write_text(sql)
    (plan_dir / "plan.json").write_text(json.dumps({
        "version": 1, "command": "plan", "dialect": "mysql", "current": "a1", "target": "b2", "transactionalDDL": False,
        "revisions": [{"revision": "b2", "file": "001-b2.sql", "renderable": True}], "unrenderable": []}))
    run = job(mariadb_database.url, "scan", "--plan-dir", str(plan_dir))
    assert run.rc == 0, run
    assert run.result["transactionalDDL"] is False and run.result["destructiveRevisions"] == ["b2"]
    assert any("code" in d for d in run.result["destructive"]), run.result
    assert not any("amount" in d for d in run.result["destructive"]), run.result
    assert "read the current types of" in run.err
    assert mariadb_database.query("SELECT COUNT(*) FROM orders") == [(50,)]  # read only
    blind = job(None, "scan", "--plan-dir", str(plan_dir))  # no URL: the current types are unknown
    assert any("amount" in d for d in blind.result["destructive"]), blind.result


def test_a_restore_that_fails_midway_says_so_and_a_rerun_converges(
        mariadb_database: Database, job: Any, tmp_path: Path) -> None:
    """DDL is not transactional: a restore that stops at an error leaves part of the dump applied and says so; the
    same restore run again (here from an intact dump) makes the database exactly what the dump holds."""
    db = mariadb_database
    seed(db)
    before = checksums(db)
    file, sha = backup(db, job, tmp_path)
    db.query("DELETE FROM orders WHERE id > 10")
    db.query("CREATE TABLE extra (id INT)")
    dump = Path(file).read_bytes()
    cut = dump.index(b"DROP TABLE IF EXISTS `orders`")
    broken = tmp_path / "broken" / "shop-broken.dump"
    broken.parent.mkdir()
    broken.write_bytes(dump[:cut] + b"THIS IS NOT SQL;\n" + dump[cut:])
    run = job(db.url, "restore", "--store", "volume", "--dump", str(broken),
              "--sha256", "sha256:" + hashlib.sha256(broken.read_bytes()).hexdigest())
    assert run.result["reason"] == "RestoreFailed", run
    assert "partly restored" in run.result["message"] and "again" in run.result["message"]
    assert db.query("SELECT COUNT(*) FROM orders") == [(10,)]  # it stopped before orders
    run = job(db.url, "restore", "--store", "volume", "--dump", file, "--sha256", sha)
    assert run.rc == 0, run
    assert checksums(db) == before


def test_a_backup_taken_at_base_restores_to_an_empty_database(
        mariadb_database: Database, job: Any, tmp_path: Path) -> None:
    """Rolling back a plan that started at base: the dump of the empty database is whole, and restoring it drops
    every table, view and routine the failed migration made."""
    db = mariadb_database
    file, sha = backup(db, job, tmp_path)
    seed(db)
    db.query("CREATE PROCEDURE total() SELECT SUM(amount) FROM orders")
    run = job(db.url, "restore", "--store", "volume", "--dump", file, "--sha256", sha)
    assert run.rc == 0, run
    assert run.result["revision"] in (None, "base"), run
    assert sorted(run.result["dropped"]) == ["PROCEDURE total", "TABLE alembic_version", "TABLE customers",
                                             "TABLE orders", "VIEW big_orders"]
    assert db.query("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()") == [(0,)]
    # a file that is not a whole dump is refused and changes nothing
    seed(db)
    other = tmp_path / "other.sql"
    other.write_bytes(b"DROP TABLE orders;\n")
    run = job(db.url, "restore", "--store", "volume", "--dump", str(other),
              "--sha256", "sha256:" + hashlib.sha256(other.read_bytes()).hexdigest())
    assert run.result["reason"] == "BackupCorrupt" and "Dump completed" in run.result["message"], run
    assert db.query("SHOW TABLES LIKE 'orders'") == [("orders",)]


def test_localhost_in_the_url_means_tcp_for_the_client_tools_too(
        mariadb_database: Database, job: Any, tmp_path: Path) -> None:
    seed(mariadb_database)
    local = mariadb_database.url.replace("@127.0.0.1:", "@localhost:")
    run = job(local, "backup", "--store", "volume", "--location", str(tmp_path / "b"), "--prefix", "shop", "--retain",
              "1")
    assert run.rc == 0 and run.result["revision"] == "a1", run
