"""Benchmark: the backup Job's command streaming a ~1 GB PostgreSQL database to S3, against pg_dump piped to the
same server by hand (issue 27; goal: ratio <= 1.1).

    make bench-s3                       # BENCH_MB=1024
    python tests/bench_s3.py --mb 1024 --runs 2

Its own PostgreSQL server (Debian's) and SeaweedFS (``make seaweedfs``), both on loopback, in temporary
directories. A table of about --mb megabytes (``pg_total_relation_size``) is filled once. Then, --runs times, one
after the other:

- the Job: ``alembic-operator job backup --store s3 ...`` as the backup Job runs it (a subprocess with the
  environment the S3 store's wiring gives the Job: the snapshot, ``pg_dump --format=custom`` streamed into a
  multipart upload with sha256 and size computed on the way, the completion checked, the record written, retention);
- by hand: ``pg_dump --format=custom | <upload stdin>`` where the upload is boto3's own managed transfer
  (``upload_fileobj`` from stdin: concurrent multipart, what ``aws s3 cp - s3://...`` does), no checksum, no record.

Prints the wall times, the dump size and the ratio (best of the runs of each); asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bed.postgres import PostgresServer, pg_bin  # noqa: E402
from bed.s3 import SeaweedFS  # noqa: E402

UPLOAD_STDIN = """
import sys, boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
c = boto3.session.Session().client("s3", config=Config(s3={"addressing_style": "path"},
                                                       request_checksum_calculation="when_required"))
c.upload_fileobj(sys.stdin.buffer, sys.argv[1], sys.argv[2],
                 Config=TransferConfig(multipart_chunksize=16 << 20, max_concurrency=4))
"""


def fill(server: PostgresServer, mb: int) -> tuple[object, int]:
    db = server.create_database("bench")
    db.query("CREATE TABLE orders (id bigint PRIMARY KEY, customer text, code text, note text, total numeric, "
             "at timestamptz)")
    batch = 500_000
    start = 0
    while True:
        db.query("INSERT INTO orders SELECT i, 'customer-' || (i %% 100000), md5(i::text), "
                 "md5((i * 7)::text) || ' ' || repeat(chr(65 + (i %% 26)), (i %% 40)), (i %% 10000) / 100.0, "
                 "now() - (i || ' seconds')::interval FROM generate_series(%s, %s) i", start, start + batch - 1)
        start += batch
        size = int(db.query("SELECT pg_total_relation_size('orders')")[0][0])  # type: ignore[arg-type]
        if size >= mb << 20:
            db.query("ANALYZE orders")
            return db, size


def timed(cmd: list[str] | str, env: dict[str, str], shell: bool = False) -> float:
    started = time.monotonic()
    proc = subprocess.run(cmd, env=env, shell=shell, capture_output=True, text=True, check=False,
                          executable="/bin/bash" if shell else None)
    took = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"{cmd!r} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=1024, help="the table's size in MiB (default 1024)")
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="alembic-operator-bench-s3-"))
    pg = PostgresServer(Path(tempfile.mkdtemp(prefix="alembic-operator-bench-pg-")))  # its own: postgres's
    s3 = SeaweedFS(base / "s3")
    try:
        pg.start()
        s3.start()
        s3.create_bucket("bench")
        started = time.monotonic()
        db, size = fill(pg, args.mb)
        print(f"database: table of {size / 2**20:.0f} MiB, filled in {time.monotonic() - started:.0f} s", flush=True)
        env = {**os.environ, **s3.env(), "ALEMBIC_OPERATOR_DATABASE_URL": db.url}  # type: ignore[attr-defined]
        venv_bin = Path(sys.executable).parent
        job = [str(venv_bin / "alembic-operator"), "job", "backup", "--store", "s3", "--location",
               "s3://bench/job", "--prefix", "bench", "--retain", "1", "--result-file", str(base / "result.json")]
        conninfo = db.conninfo  # type: ignore[attr-defined]
        by_hand = (f"set -o pipefail; {pg_bin('pg_dump')} --format=custom --no-password -d '{conninfo}' | "
                   f"{sys.executable} -c '{UPLOAD_STDIN}' bench hand/bench.dump")
        # SeaweedFS allocates the bucket's volumes on its first write (seconds): not part of either figure
        s3.client().put_object(Bucket="bench", Key="warm-up", Body=os.urandom(64 << 20))
        jobs, hands = [], []
        for run in range(args.runs):  # alternating which goes first, so that neither always follows the other
            if run % 2:
                hands.append(timed(by_hand, env, shell=True))
                jobs.append(timed(job, env))
            else:
                jobs.append(timed(job, env))
                hands.append(timed(by_hand, env, shell=True))
            print(f"run {run + 1}: job {jobs[-1]:.1f} s, pg_dump | upload {hands[-1]:.1f} s", flush=True)
        client = s3.client()
        dumps = [o for o in client.list_objects_v2(Bucket="bench", Prefix="job/")["Contents"]
                 if o["Key"].endswith(".dump")]
        hand = client.head_object(Bucket="bench", Key="hand/bench.dump")["ContentLength"]
        print(f"dump: {dumps[0]['Size'] / 2**20:.0f} MiB (job), {hand / 2**20:.0f} MiB (by hand)")
        best_job, best_hand = min(jobs), min(hands)
        print(f"backup Job: best {best_job:.1f} s, median {statistics.median(jobs):.1f} s")
        print(f"pg_dump | upload by hand: best {best_hand:.1f} s, median {statistics.median(hands):.1f} s")
        print(f"ratio (best / best): {best_job / best_hand:.2f}  (goal <= 1.1)")
        print(f"load average: {os.getloadavg()[0]:.1f}")
    finally:
        s3.destroy()
        pg.destroy()


if __name__ == "__main__":
    main()
