"""The Job commands against a real PostgreSQL server: backup, restore, current, scan."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from alembic_operator import engines, jobtools
from alembic_operator.api import parse_spec
from alembic_operator.dbstate import database_key
from alembic_operator.jobparts import manifest
from alembic_operator.jobs import Owner, build_job
from alembic_operator.sqlscan import RULES
from bed.postgres import Database, PostgresServer, pg_bin
from spoolstore import spool_store

pytestmark = pytest.mark.postgres


def seed(db: Database) -> None:
    db.query("CREATE TABLE orders (id serial PRIMARY KEY, legacy_code text, amount int NOT NULL DEFAULT 0)")
    db.query("INSERT INTO orders (legacy_code, amount) SELECT 'code-' || i, i FROM generate_series(1, 50) i")
    db.query("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
    db.query("INSERT INTO alembic_version VALUES ('a1')")


def sha256_of(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


# --- backup --------------------------------------------------------------------------------------------------------


def test_backup_writes_a_verifiable_dump_and_a_sidecar(database: Database, job: Any, tmp_path: Path) -> None:
    seed(database)
    backups = tmp_path / "backups" / "shop" / "orders"
    run = job(database.url, "backup", "--store", "volume", "--location", str(backups), "--prefix", "orders",
              "--retain", "3",
              "--location-prefix", "pvc/shop-backups/shop/orders")
    assert run.rc == 0, run
    r = run.result
    dump = Path(r["file"])
    assert dump.parent == backups and dump.name.startswith("orders-") and dump.name.endswith("-a1.dump")
    assert r["location"] == f"pvc/shop-backups/shop/orders/{dump.name}"
    assert r["revision"] == "a1"
    assert r["sizeBytes"] == dump.stat().st_size
    assert r["sha256"] == sha256_of(dump)
    assert r["completedAt"].endswith("Z") and r["pruned"] == []
    listing = subprocess.run([pg_bin("pg_restore"), "--list", str(dump)], capture_output=True, text=True, check=True)
    assert "TABLE DATA public orders" in listing.stdout
    sidecar = json.loads(Path(f"{dump}.json").read_text())
    assert sidecar["revision"] == "a1" and sidecar["sha256"] == r["sha256"] and sidecar["sizeBytes"] == r["sizeBytes"]
    assert sidecar["database"] == {"host": database.host, "port": database.port, "database": database.name}
    assert not [p for p in backups.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_backup_of_an_unversioned_database(database: Database, job: Any, tmp_path: Path) -> None:
    run = job(database.url, "backup", "--store", "volume", "--location", str(tmp_path / "b"), "--prefix", "x",
              "--retain", "1")
    assert run.rc == 0, run
    assert run.result["revision"] is None and run.result["file"].endswith("-base.dump")
    assert run.result["location"] == run.result["file"]


def test_backup_prunes_beyond_retain(database: Database, job: Any, tmp_path: Path) -> None:
    seed(database)
    backups = tmp_path / "b"
    backups.mkdir()
    old = [f"shop-2024010{i}T000000Z-a0.dump" for i in range(1, 5)]  # older than anything written now
    for name in old:
        (backups / name).write_bytes(b"old")
        (backups / f"{name}.json").write_text("{}")
    other = backups / "shop-eu-20240101T000000Z-a0.dump"  # another resource's prefix: never touched
    other.write_bytes(b"other")
    (backups / ".shop-20240101T000000Z-a0.dump.partial").write_bytes(b"interrupted")
    run = job(database.url, "backup", "--store", "volume", "--location", str(backups), "--prefix", "shop", "--retain",
              "2")
    assert run.rc == 0, run
    assert sorted(run.result["pruned"]) == sorted(old[:3])
    names = sorted(p.name for p in backups.iterdir())
    new = Path(run.result["file"]).name
    assert names == sorted([new, f"{new}.json", old[3], f"{old[3]}.json", other.name])

    # retain 0 still keeps the backup just written
    run = job(database.url, "backup", "--store", "volume", "--location", str(backups), "--prefix", "shop", "--retain",
              "0")
    assert run.rc == 0, run
    assert Path(run.result["file"]).exists()
    assert {p.name for p in backups.iterdir() if p.name.startswith("shop-2")} == {
        Path(run.result["file"]).name, f"{Path(run.result['file']).name}.json"}


def test_backup_failures_name_no_secret(database: Database, job: Any, tmp_path: Path) -> None:
    wrong = database.url.replace(database.password, "pw-wrong-secret-123")
    run = job(wrong, "backup", "--store", "volume", "--location", str(tmp_path), "--prefix", "p", "--retain", "1")
    assert run.result["reason"] == "DatabaseAuthenticationFailed", run
    unreachable = database.url.replace(f":{database.port}/", ":1/")
    run = job(unreachable, "backup", "--store", "volume", "--location", str(tmp_path), "--prefix", "p", "--retain", "1")
    assert run.result["reason"] == "DatabaseUnreachable", run
    run = job(None, "current")
    assert run.result["reason"] == "InvalidDatabaseURL"
    run = job("mssql+pymssql://u:pw-mssql-secret@h/db", "current")  # no engine for it
    assert run.result["reason"] == "InvalidDatabaseURL"
    run = job("not a url pw-garbage-secret", "current")
    assert run.result["reason"] == "InvalidDatabaseURL"


# --- restore -------------------------------------------------------------------------------------------------------


def backup(database: Database, job: Any, tmp_path: Path) -> tuple[str, str]:
    run = job(database.url, "backup", "--store", "volume", "--location", str(tmp_path / "backups"), "--prefix", "shop",
              "--retain", "5")
    assert run.rc == 0, run
    return run.result["file"], run.result["sha256"]


def failed_migration(db: Database) -> None:
    """What a half-applied (committed) revision might have left: data lost, new objects pointing at old ones."""
    db.query("ALTER TABLE orders DROP COLUMN legacy_code")
    db.query("CREATE TABLE invoices (id serial PRIMARY KEY, order_id int REFERENCES orders (id))")
    db.query("INSERT INTO invoices (order_id) VALUES (1), (2)")
    db.query("CREATE VIEW big_orders AS SELECT * FROM orders WHERE amount > 10")
    db.query("CREATE TYPE mood AS ENUM ('ok')")
    db.query("ALTER TABLE orders ADD COLUMN mood mood")
    db.query("CREATE SCHEMA billing")
    db.query("CREATE TABLE billing.ledger (id int)")
    db.query("UPDATE alembic_version SET version_num = 'b2'")


def relations(db: Database) -> set[str]:
    rows = db.query("SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = "
                    "c.relnamespace WHERE c.relkind IN ('r', 'v') AND n.nspname NOT IN ('pg_catalog', "
                    "'information_schema') AND n.nspname NOT LIKE 'pg_toast%'")
    return {str(r[0]) for r in rows}


def columns(db: Database, table: str = "orders") -> list[str]:
    return [str(r[0]) for r in db.query("SELECT column_name FROM information_schema.columns WHERE table_name = %s "
                                         "ORDER BY ordinal_position", table)]


def test_restore_brings_back_the_schema_and_rows(database: Database, job: Any, tmp_path: Path) -> None:
    seed(database)
    file, sha = backup(database, job, tmp_path)
    failed_migration(database)
    run = job(database.url, "restore", "--store", "volume", "--dump", file, "--sha256", sha)
    assert run.rc == 0, run
    assert run.result["revision"] == "a1"
    assert set(run.result["dropped"]) >= {"TABLE public.invoices", "VIEW public.big_orders", "TYPE public.mood",
                                          "SCHEMA billing"}
    assert relations(database) == {"public.orders", "public.alembic_version"}
    assert columns(database) == ["id", "legacy_code", "amount"]
    assert database.query("SELECT count(*), min(legacy_code), sum(amount) FROM orders") == [(50, "code-1", 1275)]
    assert database.query("SELECT version_num FROM alembic_version") == [("a1",)]
    assert database.query("SELECT nextval('orders_id_seq')") == [(51,)]  # sequences come back too
    assert not database.query("SELECT 1 FROM pg_type WHERE typname = 'mood'")


def test_restore_waits_for_the_migration_lock_and_restores_nothing_without_it(
        database: Database, job: Any, tmp_path: Path) -> None:
    """Restore writes to the database: it holds the lock migrate, downgrade and stamp take, so it never runs beside
    another writer. While another session holds it, the restore gives up (LockTimeout: transient) and changes
    nothing; once free, the same command restores."""
    seed(database)
    file, sha = backup(database, job, tmp_path)
    failed_migration(database)
    key = "-4242"
    with database.connect() as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (int(key),))
        run = job(database.url, "restore", "--store", "volume", "--dump", file, "--sha256", sha, "--lock-key", key,
                  "--lock-wait-seconds", "2")
        assert run.rc == 1 and run.result["reason"] == "LockTimeout", run
        assert "advisory lock -4242" in run.result["message"] and "nothing was restored" in run.result["message"]
        assert "public.invoices" in relations(database)  # untouched
    run = job(database.url, "restore", "--store", "volume", "--dump", file, "--sha256", sha, "--lock-key", key,
              "--lock-wait-seconds", "2")
    assert run.rc == 0, run
    assert relations(database) == {"public.orders", "public.alembic_version"}
    assert "took the migration lock (advisory lock -4242)" in run.err


def test_a_restore_by_hand_verifies_the_recorded_checksum_and_takes_the_databases_own_lock(
        database: Database, job: Any, tmp_path: Path) -> None:
    """kubectl dbm restore's Job: --sha256 recorded (the dump's record in the store) and --lock-key database (the
    lock the operator's writers take on this database, derived from the URL in the Job): it waits for a migration
    holding that lock and restores nothing meanwhile; then it restores."""
    seed(database)
    file, _sha = backup(database, job, tmp_path)
    failed_migration(database)
    url = make_url(database.url)
    key = engines.for_url(url).lock_key(database_key(url))  # what act.py passes the operator's Jobs
    by_hand = ["restore", "--store", "volume", "--dump", file, "--sha256", "recorded", "--lock-key", "database",
               "--lock-wait-seconds", "1"]
    with database.connect() as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (key,))
        run = job(database.url, *by_hand)
        assert run.rc == 1 and run.result["reason"] == "LockTimeout", run
        assert f"advisory lock {key}" in run.result["message"] and "public.invoices" in relations(database)
    run = job(database.url, *by_hand)
    assert run.rc == 0 and run.result["revision"] == "a1", run
    assert "checksum recorded with" in run.err and "checksum verified" in run.err
    assert relations(database) == {"public.orders", "public.alembic_version"}


def test_restore_with_nothing_extra_uses_pg_restore_directly(database: Database, job: Any, tmp_path: Path) -> None:
    seed(database)
    file, sha = backup(database, job, tmp_path)
    database.query("ALTER TABLE orders DROP COLUMN legacy_code")
    database.query("UPDATE alembic_version SET version_num = 'b2'")
    run = job(database.url, "restore", "--store", "volume", "--dump", file, "--sha256", sha)
    assert run.rc == 0, run
    assert run.result == {"ok": True, "revision": "a1", "dropped": []}
    assert "--single-transaction" in run.err and "| psql" not in run.err
    assert database.query("SELECT count(*), min(legacy_code) FROM orders") == [(50, "code-1")]


def test_restore_to_base_drops_the_version_table(database: Database, job: Any, tmp_path: Path) -> None:
    database.query("CREATE TABLE keep (id int)")
    file, sha = backup(database, job, tmp_path)
    seed(database)  # the first migration: orders + alembic_version
    run = job(database.url, "restore", "--store", "volume", "--dump", file, "--sha256", sha)
    assert run.rc == 0, run
    assert run.result["revision"] is None
    assert relations(database) == {"public.keep"}


def test_restore_refuses_a_corrupt_backup_and_changes_nothing(database: Database, job: Any, tmp_path: Path) -> None:
    seed(database)
    file, sha = backup(database, job, tmp_path)
    failed_migration(database)
    before = (relations(database), columns(database))
    wrong = "sha256:" + "0" * 64
    run = job(database.url, "restore", "--store", "volume", "--dump", file, "--sha256", wrong)
    assert run.result["reason"] == "BackupCorrupt", run
    with open(file, "r+b") as fh:  # a flipped byte: the recorded checksum no longer matches
        fh.seek(100)
        byte = fh.read(1)
        fh.seek(100)
        fh.write(bytes([byte[0] ^ 0xFF]))
    run = job(database.url, "restore", "--store", "volume", "--dump", file, "--sha256", sha)
    assert run.result["reason"] == "BackupCorrupt", run
    assert (relations(database), columns(database)) == before
    run = job(database.url, "restore", "--store", "volume", "--dump", file + ".missing", "--sha256", sha)
    assert run.result["reason"] == "BackupNotFound"
    run = job(database.url, "restore", "--store", "volume", "--dump", file, "--sha256", "md5:abc")
    assert run.result["reason"] == "InvalidArgument"


def test_a_failing_restore_with_drops_leaves_the_database_unchanged(
    database: Database, postgres: PostgresServer, job: Any, tmp_path: Path
) -> None:
    seed(database)
    file, sha = backup(database, job, tmp_path)
    failed_migration(database)
    with postgres.admin(database.name) as conn:  # objects the app's role may not drop: the restore must fail
        conn.execute("CREATE SCHEMA audit")  # owned by the superuser
        conn.execute("CREATE VIEW audit.orders AS SELECT id FROM public.orders")
    before = (relations(database), columns(database), database.query("SELECT count(*) FROM invoices"))
    run = job(database.url, "restore", "--store", "volume", "--dump", file, "--sha256", sha)
    assert run.result["reason"] == "RestoreFailed", run
    assert "must be owner" in run.result["message"]
    assert (relations(database), columns(database), database.query("SELECT count(*) FROM invoices")) == before
    assert database.query("SELECT version_num FROM alembic_version") == [("b2",)]


def test_a_failing_direct_restore_leaves_the_database_unchanged(
    database: Database, postgres: PostgresServer, job: Any, tmp_path: Path
) -> None:
    seed(database)
    role = f"reader_{database.name}"[:60]
    with postgres.admin() as conn:
        conn.execute(f'DROP ROLE IF EXISTS "{role}"')
        conn.execute(f'CREATE ROLE "{role}"')
    database.query(f'GRANT SELECT ON orders TO "{role}"')
    file, sha = backup(database, job, tmp_path)
    with postgres.admin(database.name) as conn:  # the dump's GRANT now names a role that is gone
        conn.execute(f'DROP OWNED BY "{role}"')
        conn.execute(f'DROP ROLE "{role}"')
    database.query("ALTER TABLE orders DROP COLUMN legacy_code")
    database.query("UPDATE alembic_version SET version_num = 'b2'")
    run = job(database.url, "restore", "--store", "volume", "--dump", file, "--sha256", sha)
    assert run.result["reason"] == "RestoreFailed", run
    assert "does not exist" in run.result["message"]
    assert columns(database) == ["id", "amount"]
    assert database.query("SELECT version_num FROM alembic_version") == [("b2",)]


# --- current -------------------------------------------------------------------------------------------------------


def test_current(database: Database, job: Any) -> None:
    run = job(database.url, "current")
    assert run.result == {"ok": True, "current": None}
    seed(database)
    run = job(database.url + "?sslmode=disable&application_name=check", "current")
    assert run.result == {"ok": True, "current": "a1"}
    database.query("INSERT INTO alembic_version VALUES ('b9')")
    assert job(database.url, "current").result["reason"] == "MultipleHeads"


def test_url_conversion() -> None:
    env = {jobtools.URL_ENV: "postgresql+psycopg://u:p%40ss@db.example:6543/shop?sslmode=require&foo=bar"}
    db = jobtools.database_from_env(env)
    assert db.password == "p@ss"
    assert db.params == {"sslmode": "require", "host": "db.example", "port": "6543", "user": "u", "dbname": "shop",
                         "connect_timeout": "10", "application_name": "alembic-operator"}
    assert "p@ss" not in db.conninfo
    assert db.env()["PGPASSWORD"] == "p@ss" and jobtools.URL_ENV not in db.env()
    multi = jobtools.database_from_env({jobtools.URL_ENV: "postgresql://u@/shop?host=h1:5432&host=h2:5433"})
    assert (multi.params["host"], multi.params["port"], multi.password) == ("h1,h2", "5432,5433", None)
    assert jobtools.sanitize("x postgresql://a:b@c/d password=zz y") == "x postgresql://a:***@c/d password=*** y"


def test_results_stay_valid_json_when_scrubbed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "r.json"
    jobtools.write_result(str(path), {"ok": False, "reason": "X", "message": "bad password=hunter2"})
    assert json.loads(path.read_text()) == {"ok": False, "reason": "X", "message": "bad password=***"}


# --- scan ----------------------------------------------------------------------------------------------------------


def write_plan(plan_dir: Path, plan: dict[str, Any], files: dict[str, str]) -> None:
    plan_dir.mkdir(parents=True, exist_ok=True)
    for name, sql in files.items():
        (plan_dir / name).write_text(sql)
    (plan_dir / "plan.json").write_text(json.dumps(plan))


REV1 = """BEGIN;

-- Running upgrade 3f2a9c1d0b7e -> 5b0e11aa2c3d

ALTER TABLE orders ADD COLUMN note TEXT;

CREATE INDEX ix_orders_note ON orders (note);

UPDATE alembic_version SET version_num='5b0e11aa2c3d' WHERE alembic_version.version_num = '3f2a9c1d0b7e';

COMMIT;
"""
REV2 = """BEGIN;

-- Running upgrade 5b0e11aa2c3d -> 9d81aa02c4f5

ALTER TABLE orders DROP COLUMN legacy_code;

UPDATE alembic_version SET version_num='9d81aa02c4f5' WHERE alembic_version.version_num = '5b0e11aa2c3d';

COMMIT;
"""


def test_scan_a_plan(job: Any, tmp_path: Path) -> None:
    plan = {
        "version": 1, "command": "plan", "current": "3f2a9c1d0b7e", "target": "c0ffee000001",
        "transactionPerMigration": False, "transactionalDDL": True,
        "revisions": [
            {"revision": "5b0e11aa2c3d", "file": "001-5b0e11aa2c3d.sql", "renderable": True},
            {"revision": "9d81aa02c4f5", "file": "002-9d81aa02c4f5.sql", "renderable": True},
            {"revision": "c0ffee000001", "file": None, "renderable": False, "error": "reads the database"},
        ],
        "unrenderable": [{"revision": "c0ffee000001", "message": "reads the database"}],
    }
    write_plan(tmp_path / "plan", plan, {"001-5b0e11aa2c3d.sql": REV1, "002-9d81aa02c4f5.sql": REV2})
    run = job(None, "scan", "--plan-dir", str(tmp_path / "plan"))
    assert run.rc == 0, run
    r = run.result
    assert r["current"] == "3f2a9c1d0b7e" and r["target"] == "c0ffee000001"
    assert r["revisions"] == ["5b0e11aa2c3d", "9d81aa02c4f5", "c0ffee000001"]
    assert r["destructive"] == [
        "DROP COLUMN orders.legacy_code (revision 9d81aa02c4f5)",
        "revision c0ffee000001 could not be rendered offline: review it",
    ]
    assert r["destructiveRevisions"] == ["9d81aa02c4f5", "c0ffee000001"]
    assert r["warnings"] == ["CREATE INDEX ix_orders_note ON orders (revision 5b0e11aa2c3d)"]
    assert r["findings"][0] == {"rule": "create-index-not-concurrently", "severity": "locking",
                                "revision": "5b0e11aa2c3d", "operation": "CREATE INDEX ix_orders_note ON orders"}
    assert r["lockingCount"] == 1 and r["noteCount"] == 0
    assert r["locking"] == [{"operation": "CREATE INDEX ix_orders_note ON orders (revision 5b0e11aa2c3d)",
                             "rule": "create-index-not-concurrently",
                             "safely": RULES["create-index-not-concurrently"].safely}]
    assert [f["rule"] for f in r["findings"]] == ["create-index-not-concurrently", "drop-column",
                                                  "unrenderable-revision"]
    assert r["sqlSha256"] == "sha256:" + hashlib.sha256((REV1 + REV2).encode()).hexdigest()
    assert (r["transactionPerMigration"], r["transactionalDDL"]) == (False, True)
    assert "DROP COLUMN orders.legacy_code" in run.err and "reads the database" in run.err


def test_scan_nothing_to_do_and_errors(job: Any, tmp_path: Path) -> None:
    write_plan(tmp_path / "same", {"current": "a1", "target": "a1", "revisions": [], "unrenderable": []}, {})
    run = job(None, "scan", "--plan-dir", str(tmp_path / "same"))
    assert run.result["destructive"] == [] and run.result["revisions"] == []
    assert run.result["sqlSha256"] == "sha256:" + hashlib.sha256(b"").hexdigest()

    write_plan(tmp_path / "failed", {"ok": False, "reason": "MultipleHeads", "message": "merge the heads"}, {})
    run = job(None, "scan", "--plan-dir", str(tmp_path / "failed"))
    assert run.result == {"ok": False, "reason": "MultipleHeads", "message": "merge the heads"}

    assert job(None, "scan", "--plan-dir", str(tmp_path / "absent")).result["reason"] == "PlanNotFound"
    write_plan(tmp_path / "escape", {"current": None, "target": "x",
                                     "revisions": [{"revision": "x", "file": "../../etc/passwd"}]}, {})
    assert job(None, "scan", "--plan-dir", str(tmp_path / "escape")).result["reason"] == "PlanInvalid"


def test_scan_result_fits_a_termination_message(job: Any, tmp_path: Path) -> None:
    revisions, files = [], {}
    for i in range(40):
        rev = f"{i:012x}"
        name = f"{i:03d}-{rev}.sql"
        files[name] = "".join(f"ALTER TABLE table_{i} DROP COLUMN column_number_{j};\n\n" for j in range(10))
        files[name] += "".join(f"CREATE INDEX ix_{i}_{j} ON table_{i} (c{j});\n\n" for j in range(10))
        revisions.append({"revision": rev, "file": name})
    write_plan(tmp_path / "big", {"current": None, "target": revisions[-1]["revision"], "revisions": revisions}, files)
    run = job(None, "scan", "--plan-dir", str(tmp_path / "big"))
    assert run.rc == 0, run
    r = run.result
    assert len(r["revisions"]) == 40 and len(r["destructiveRevisions"]) == 40
    assert r["destructiveCount"] == 400 and r["warningCount"] == 400
    assert r["destructive"][-1].startswith("... and ") and len(r["destructive"]) > 1
    assert r["findings"] == [] and r["warnings"][-1].startswith("... and ")


def test_scan_what_the_runner_renders(database: Database, job: Any, tmp_path: Path) -> None:
    """The real runner (the zipapp, as the Jobs have it) renders a tiny app's plan; the scan reads exactly what it
    wrote."""
    from test_runner import RUNNER

    app = tmp_path / "app"
    (app / "mig" / "versions").mkdir(parents=True)
    (app / "alembic.ini").write_text("[alembic]\nscript_location = mig\n")
    (app / "mig" / "env.py").write_text(
        "import os\nfrom alembic import context\nfrom sqlalchemy import engine_from_config, pool\n"
        "config = context.config\n"
        "if context.is_offline_mode():\n"
        "    context.configure(url=config.get_main_option('sqlalchemy.url'), literal_binds=True)\n"
        "    with context.begin_transaction():\n        context.run_migrations()\n"
        "else:\n"
        "    engine = engine_from_config(config.get_section(config.config_ini_section), prefix='sqlalchemy.',"
        " poolclass=pool.NullPool)\n"
        "    with engine.connect() as connection:\n"
        "        context.configure(connection=connection)\n"
        "        with context.begin_transaction():\n            context.run_migrations()\n")
    (app / "mig" / "script.py.mako").write_text("")
    (app / "mig" / "versions" / "a1.py").write_text(
        "revision = 'a1'\ndown_revision = None\nfrom alembic import op\nimport sqlalchemy as sa\n"
        "def upgrade():\n    op.create_table('orders', sa.Column('id', sa.Integer, primary_key=True),"
        " sa.Column('legacy_code', sa.Text))\n    op.create_index('ix_code', 'orders', ['legacy_code'])\n"
        "def downgrade():\n    op.drop_table('orders')\n")
    (app / "mig" / "versions" / "b2.py").write_text(
        "revision = 'b2'\ndown_revision = 'a1'\nfrom alembic import op\n"
        "def upgrade():\n    op.drop_column('orders', 'legacy_code')\n"
        "def downgrade():\n    pass\n")
    env = {**os.environ, jobtools.URL_ENV: database.url}
    proc = subprocess.run([sys.executable, str(RUNNER), "plan", "--target", "head", "--out", str(tmp_path / "plan"),
                           "--result-file", str(tmp_path / "runner.json")],
                          cwd=app, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = job(None, "scan", "--plan-dir", str(tmp_path / "plan"))
    assert run.rc == 0, run
    assert run.result["revisions"] == ["a1", "b2"]
    assert run.result["destructive"] == ["DROP COLUMN orders.legacy_code (revision b2)"]
    assert run.result["warnings"] == []  # the index is on a table the plan itself creates
    assert run.result["current"] is None and run.result["target"] == "b2"


# --- a store the package does not know ------------------------------------------------------------------------------


def test_a_store_defined_outside_the_package_backs_up_and_restores_through_the_job_commands(
        database: Database, job: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The spool store (tests/spoolstore.py): the backup and restore Jobs built from its wiring run, with the
    arguments and environment those Jobs carry (its mount stands in for the hostPath, the token for its Secret), and
    the result names the dump as the store shows it in status; jobtools.py knows nothing of it."""
    seed(database)
    with spool_store() as store:
        wiring = store.wiring({"node": "node-a", "path": "/var/spool/db", "tokenSecret": "spool-token"}, "shop",
                              "orders")
        # api.BackupSpec has no spool field (the test does not add one): the wiring comes from the store directly
        spec = parse_spec({"database": {"urlSecretRef": {"name": "db", "key": "url"}}, "targetRevision": "head",
                           "migrations": {"image": "app:1"}, "backup": {"enabled": False, "retain": 2}})
        owner = Owner("orders", "shop", "uid", 1)

        def command(role: str, args: dict[str, str]) -> list[str]:
            ctr = manifest(build_job(role, owner, spec, operator_image="op:1", args=args,  # type: ignore[arg-type]
                                     store=wiring))["spec"]["template"]["spec"]["containers"][0]  # type: ignore[index,call-overload]
            env = {e["name"]: e.get("value") for e in ctr["env"]}
            assert env["SPOOL_ROOT"] == "/spool" and env["SPOOL_TOKEN"] is None  # from the Secret, by the kubelet
            return [str(a) for a in ctr["command"]][2:]  # after `alembic-operator job`

        monkeypatch.setenv("SPOOL_ROOT", str(tmp_path))  # where /spool is mounted
        refused = job(database.url, *command("backup", {}))
        assert refused.result["reason"] == "BackupFailed" and "SPOOL_TOKEN" in refused.result["message"]
        monkeypatch.setenv("SPOOL_TOKEN", "t0ken")
        run = job(database.url, *command("backup", {}))
        assert run.rc == 0, run
        name = Path(run.result["file"]).name
        assert run.result["file"] == f"spool://shop/orders/{name}"
        assert run.result["location"] == f"spool node-a:/var/spool/db/shop/orders/{name}"
        assert (tmp_path / "shop" / "orders" / name).stat().st_size == run.result["sizeBytes"]
        failed_migration(database)
        restored = job(database.url, *command("restore", {"file": run.result["file"], "sha256": run.result["sha256"],
                                                          "lockKey": "7"}))
        assert restored.rc == 0, restored
        assert columns(database) == ["id", "legacy_code", "amount"]
