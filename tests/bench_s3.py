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

Prints, per run, the wall time and the CPU time (user + system of the whole process tree: pg_dump, Python, the
upload) of each side, and the Job's phases read from its log as it runs (start-up: interpreter, imports, the
snapshot, the store's preflight; dump, upload and record; retention and exit); then the dump size, the ratio of the
best runs and the median of each run's pair ratio. The machine's other load moves wall times by tens of percent
between runs: the pairs alternate which side goes first, and CPU seconds, which load barely moves, say what each
side costs. Asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
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


@dataclass
class Timing:
    wall: float
    cpu: float  # user + system seconds of the process tree
    marks: dict[str, float]  # seconds from the start to the first stderr line starting with each mark


def timed(cmd: list[str] | str, env: dict[str, str], shell: bool = False, marks: tuple[str, ...] = ()) -> Timing:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, shell=shell, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            executable="/bin/bash" if shell else None)
    seen: dict[str, float] = {}
    lines: list[str] = []
    assert proc.stderr is not None and proc.stdout is not None
    for line in proc.stderr:  # the Job logs each step as it goes: when each arrived
        lines.append(line)
        for mark in marks:
            if mark not in seen and line.startswith(mark):
                seen[mark] = time.monotonic() - started
    out = proc.stdout.read()
    code = proc.wait()
    took = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if code != 0:
        raise SystemExit(f"{cmd!r} failed ({code}):\n{out[-2000:]}\n{''.join(lines)[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Timing(took, cpu, seen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=1024, help="the table's size in MiB (default 1024)")
    parser.add_argument("--runs", type=int, default=4)
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
        alone = timed(f"{pg_bin('pg_dump')} --format=custom --no-password -d '{conninfo}' > /dev/null", env,
                      shell=True)
        print(f"pg_dump alone to /dev/null: {alone.wall:.1f} s, {alone.cpu:.1f} s CPU", flush=True)
        marks = ("backing up ", "backup ")
        jobs: list[Timing] = []
        hands: list[Timing] = []
        for run in range(args.runs):  # alternating which goes first, so that neither always follows the other
            if run % 2:
                hands.append(timed(by_hand, env, shell=True))
                jobs.append(timed(job, env, marks=marks))
            else:
                jobs.append(timed(job, env, marks=marks))
                hands.append(timed(by_hand, env, shell=True))
            j, h = jobs[-1], hands[-1]
            began, ended = j.marks.get("backing up ", 0.0), j.marks.get("backup ", j.wall)
            print(f"run {run + 1}: job {j.wall:.1f} s ({j.cpu:.1f} s CPU; start-up {began:.1f} s, dump, upload and "
                  f"record {ended - began:.1f} s, retention and exit {j.wall - ended:.1f} s), pg_dump | upload "
                  f"{h.wall:.1f} s ({h.cpu:.1f} s CPU): ratio {j.wall / h.wall:.2f}, load {os.getloadavg()[0]:.1f}",
                  flush=True)
        client = s3.client()
        dumps = [o for o in client.list_objects_v2(Bucket="bench", Prefix="job/")["Contents"]
                 if o["Key"].endswith(".dump")]
        hand = client.head_object(Bucket="bench", Key="hand/bench.dump")["ContentLength"]
        print(f"dump: {dumps[0]['Size'] / 2**20:.0f} MiB (job), {hand / 2**20:.0f} MiB (by hand)")
        best_job, best_hand = min(j.wall for j in jobs), min(h.wall for h in hands)
        print(f"backup Job: best {best_job:.1f} s, median {statistics.median(j.wall for j in jobs):.1f} s, "
              f"CPU median {statistics.median(j.cpu for j in jobs):.1f} s")
        hand_cpu = statistics.median(h.cpu for h in hands)
        print(f"pg_dump | upload by hand: best {best_hand:.1f} s, median "
              f"{statistics.median(h.wall for h in hands):.1f} s, CPU median {hand_cpu:.1f} s")
        pairs = statistics.median(j.wall / h.wall for j, h in zip(jobs, hands, strict=True))
        cpu = statistics.median(j.cpu for j in jobs) / hand_cpu
        print(f"ratio (best / best): {best_job / best_hand:.2f}, median of the runs' ratios {pairs:.2f}, CPU "
              f"{cpu:.2f}  (goal <= 1.1)")
        print(f"load average: {os.getloadavg()[0]:.1f}")
    finally:
        s3.destroy()
        pg.destroy()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
