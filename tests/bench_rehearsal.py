"""Benchmark: does a rehearsal predict the real migration's duration? A table-rewriting revision on ~1 GB.

    make bench-rehearsal                 # or: PYTHONPATH=tests .venv/bin/python tests/bench_rehearsal.py
    python tests/bench_rehearsal.py --gigabytes 1 --runs 5

On a real PostgreSQL server of its own (bed.postgres, a temporary data directory) run with a production's settings
(fsync, full-page writes: timings of writes are what is measured), with the very commands of the rehearsal Job and
the migration Job: the database gets a table of about --gigabytes GB; each run backs it up (`job backup`), restores
the backup into a scratch database (`job rehearsal-restore`), rehearses the plan there (`runner rehearse`: it first
settles the copy, then times a revision that changes a column's type, which rewrites the table and its index), then
runs the same plan on production (`runner upgrade`), and finally undoes it (`runner downgrade`, another rewrite) and
brings production back to the state of the first run (VACUUM, CHECKPOINT: as autovacuum and the checkpointer would,
given time) for the next run. The scratch server's user is granted pg_checkpoint, as docs/rehearsal.md advises.
Prints, per run, the backup, the restore, the settling, the rehearsal's plan time and the real one, and their ratio;
then the median ratio and how many runs fell within +-25 %. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from alembic_operator import cli, jobtools
from alembic_operator.runner.results import BackupResult
from apps import Rev, make_project
from bed.postgres import APP_ROLE, PostgresServer
from rehearsal_cases import runner

BIG = "bbbbbbbb0001"
REWRITE = Rev("bbbbbbbb0002", upgrade=['op.alter_column("big", "amount", type_=sa.BigInteger, '
                                       'existing_type=sa.Integer)'],
              downgrade=['op.alter_column("big", "amount", type_=sa.Integer, existing_type=sa.BigInteger)'])
ROW_BYTES = 120  # about, on disk, for the rows below
TIMEOUT = 1800  # seconds, for one runner command on a loaded machine


def job(url: str, *argv: str) -> BackupResult:
    """`alembic-operator job ...` in this process, the URL in its environment; its result."""
    os.environ[jobtools.URL_ENV] = url
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        rc = cli.main(["job", *argv, "--result-file", out.name])
        result: BackupResult = json.loads(Path(out.name).read_text())
    if rc != 0:
        raise SystemExit(f"job {argv[0]} failed: {result}")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--gigabytes", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-rehearsal-"))
    server = PostgresServer(Path(tempfile.mkdtemp(prefix="alembic-operator-pg-")), durable=True)
    server.start()
    try:
        db = server.create_database("shop")
        with server.admin() as conn:  # the scratch server's user may write a restore out before it is timed
            conn.execute(f"GRANT pg_checkpoint TO {APP_ROLE}")

        def steady() -> None:
            """Production as a running server keeps it: vacuumed, analyzed, written out."""
            with server.admin("shop") as conn:
                conn.execute("VACUUM (ANALYZE) big")
                conn.execute("CHECKPOINT")

        scratch_server = db.url.rsplit("/", 1)[0] + "/postgres"
        app = base / "app"
        make_project(app, [Rev(BIG, upgrade=[
            'op.create_table("big", sa.Column("id", sa.BigInteger, primary_key=True), '
            'sa.Column("amount", sa.Integer, nullable=False), sa.Column("payload", sa.Text))']), REWRITE])
        rc, _, err = runner(app, db.url, "upgrade", "--from", "base", "--to", BIG, password=db.password)
        assert rc == 0, err
        rows = int(args.gigabytes * 1024**3 / ROW_BYTES)
        started = time.monotonic()
        db.query(f"INSERT INTO big SELECT i, i % 100000, repeat(md5(i::text), 2) FROM generate_series(1, {rows}) i")
        db.query("CREATE INDEX ix_big_amount ON big (amount)")
        steady()
        size = db.query("SELECT pg_database_size(current_database())")[0][0]
        print(f"database: {rows} rows, {int(size) / 1024**3:.2f} GB, filled in {time.monotonic() - started:.0f} s",
              flush=True)
        ratios = []
        print(f"{'run':>3} {'backup s':>9} {'restore s':>10} {'settle s':>9} {'rehearsal s':>12} {'real s':>8} "
              f"{'real/rehearsal':>15}", flush=True)
        for number in range(1, args.runs + 1):
            t0 = time.monotonic()
            backup = job(db.url, "backup", "--store", "volume", "--location", str(base / "backups"), "--prefix",
                         "shop", "--retain", "1")
            t1 = time.monotonic()
            name = f"alembic_rehearsal_0123456789_g{number}"
            job(scratch_server, "rehearsal-restore", "--store", "volume", "--dump", backup["file"], "--sha256",
                backup["sha256"], "--database", name)
            t2 = time.monotonic()
            rc, rehearsed, err = runner(app, scratch_server, "rehearse", "--from", BIG, "--to", REWRITE.id,
                                        "--database", name, password=db.password, timeout=TIMEOUT)
            assert rc == 0 and rehearsed.get("checkpointed"), err
            rc, real, err = runner(app, db.url, "upgrade", "--from", BIG, "--to", REWRITE.id, password=db.password,
                                   timeout=TIMEOUT)
            assert rc == 0, err
            ratio = real["durationSeconds"] / rehearsed["durationSeconds"]
            ratios.append(ratio)
            print(f"{number:>3} {t1 - t0:>9.1f} {t2 - t1:>10.1f} {rehearsed['settleSeconds']:>9.1f} "
                  f"{rehearsed['durationSeconds']:>12.1f} {real['durationSeconds']:>8.1f} {ratio:>15.2f}", flush=True)
            rc, _, err = runner(app, db.url, "downgrade", "--from", REWRITE.id, "--to", BIG, password=db.password,
                                timeout=TIMEOUT)
            assert rc == 0, err
            steady()
        within = sum(1 for r in ratios if 0.75 <= r <= 1.25)
        print(f"median real/rehearsal: {statistics.median(ratios):.2f} (min {min(ratios):.2f}, max "
              f"{max(ratios):.2f}); within +-25 %: {within} of {len(ratios)} runs")
    finally:
        server.destroy()
        shutil.rmtree(base, ignore_errors=True)  # the app and a backup of --gigabytes
    return 0


if __name__ == "__main__":
    sys.exit(main())
