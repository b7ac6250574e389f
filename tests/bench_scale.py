"""Benchmark: what a thousand idle DatabaseMigrations cost the operator (issue 16), next to the empty operator.

    make bench-scale                    # N=1000; or: make bench-scale N=200, N="200 500 1000"
    python tests/bench_scale.py --n 200 500 1000 --window 180 [--bed-dir DIR] [--freshness 1m]
    python tests/bench_scale.py --migrations 100 --max-running-jobs 10    # the Job cap (a real node)

On a bed of its own (the control plane; BED_DIR / --bed-dir: reuse a running one), with one PostgreSQL database whose
alembic_version is already at the revision every resource targets (so each resource is Ready with nothing to do,
without a Job), the operator runs as its own process, as a developer runs it next to a cluster. The run:

1. the empty operator: an idle window (``--window`` seconds, default 180) with no resource;
2. for each N: a fresh operator; N resources created at once (time until all are Ready); an idle window; then all
   deleted (warnings the operator logs meanwhile, and its RSS 10 s and 30 s after they are gone: it hands freed
   memory back 20 s after the last deletion, once the connections of the burst have closed).

Figures of a window: the operator's CPU (% of one core, from /proc/PID/stat) and RSS (VmRSS at the window's end);
database sessions per minute (pg_stat_database.sessions of the one database: the operator's sessions only, the
benchmark reads the counters from another database); API requests per minute that are not watches, to the
resources the operator uses (the API server's ``apiserver_request_total``: every client's, so the empty operator's
figure includes the bed's own background; the difference is the operator's); reconcile passes and their p50 (the
operator's ``alembic_operator_reconcile_duration_seconds``: during creation, and in the idle window). 409 conflicts
are the API server's 409 answers to DatabaseMigration requests. ``--freshness`` sets every resource's
spec.freshnessCheck.interval (default 1m, as often as the old 60-second poll: the check's worst case; the
default of the field is 5m). The load average is printed with each window: other work on the machine shows
there. Prints figures only: nothing is asserted.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import os
import re
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client as k8s

sys.path.insert(0, str(Path(__file__).resolve().parent))

from alembic_operator import constants as c
from bed.controlplane import Bed
from bed.postgres import PostgresServer
from harness import Cluster, OperatorProcess, wait_for

REPO = Path(__file__).resolve().parent.parent
CRD = REPO / "crds" / "databasemigrations.yaml"
REVISION = "5ca1ab1e0001"
OPERATOR_RESOURCES = {"databasemigrations", "jobs", "pods", "secrets", "events", "configmaps", "pods/log"}
TICKS = os.sysconf("SC_CLK_TCK")


def percentile_from_buckets(buckets: list[tuple[float, float]], q: float) -> float | None:
    """The q-quantile of a Prometheus histogram's cumulative (le, count) pairs, interpolated within its bucket."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return prev_le
            span = count - prev_count
            return prev_le + (le - prev_le) * ((rank - prev_count) / span if span else 0.0)
        prev_le, prev_count = le, count
    return prev_le


def reconcile_buckets(text: str) -> list[tuple[float, float]]:
    """alembic_operator_reconcile_duration_seconds, all outcomes summed: cumulative (le, count) pairs."""
    sums: dict[float, float] = {}
    for m in re.finditer(r'^alembic_operator_reconcile_duration_seconds_bucket\{([^}]*)\} ([0-9.e+-]+)$', text, re.M):
        le = re.search(r'le="([^"]+)"', m.group(1))
        if le:
            key = float("inf") if le.group(1) == "+Inf" else float(le.group(1))
            sums[key] = sums.get(key, 0.0) + float(m.group(2))
    return sorted(sums.items())


def bucket_delta(after: list[tuple[float, float]], before: list[tuple[float, float]]) -> list[tuple[float, float]]:
    old = dict(before)
    return [(le, n - old.get(le, 0.0)) for le, n in after]


def api_counts(bed: Bed) -> dict[tuple[str, str, str], float]:
    """apiserver_request_total by (verb, resource, code)."""
    status, body = bed.api_get("/metrics", timeout=30)
    if status != 200:
        raise RuntimeError(f"GET /metrics: {status}")
    counts: dict[tuple[str, str, str], float] = {}
    for m in re.finditer(r'^apiserver_request_total\{([^}]*)\} ([0-9.e+-]+)$', body.decode(), re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        resource = labels.get("resource", "") + (f"/{labels['subresource']}" if labels.get("subresource") else "")
        key = (labels.get("verb", ""), resource, labels.get("code", ""))
        counts[key] = counts.get(key, 0.0) + float(m.group(2))
    return counts


def requests_between(before: dict[tuple[str, str, str], float], after: dict[tuple[str, str, str], float]) -> float:
    """Requests that are not watches, to the resources the operator uses (status included)."""
    return sum(n - before.get(k, 0.0) for k, n in after.items()
               if k[0] != "WATCH" and k[1].split("/")[0] in {r.split("/")[0] for r in OPERATOR_RESOURCES})


def conflicts_between(before: dict[tuple[str, str, str], float], after: dict[tuple[str, str, str], float]) -> float:
    return sum(n - before.get(k, 0.0) for k, n in after.items()
               if k[2] == "409" and k[1].startswith("databasemigrations"))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Window:
    label: str
    seconds: float
    cpu_percent: float
    rss: float
    sessions_per_min: float
    requests_per_min: float
    reconciles: float
    p50: float | None
    load: tuple[float, float, float]


class EnvOperator(OperatorProcess):
    """The operator with extra environment variables (allocator settings, to compare)."""

    extra_env: dict[str, str] = {}

    def base_env(self) -> dict[str, str]:
        return {**super().base_env(), **self.extra_env}


class Bench:
    def __init__(self, bed: Bed, pg: PostgresServer, dbname: str, tmp: Path, freshness: str) -> None:
        self.bed, self.pg, self.dbname, self.tmp, self.freshness = bed, pg, dbname, tmp, freshness
        self.api = bed.api_client()
        self.core = k8s.CoreV1Api(self.api)
        self.ns = f"bench-scale-{uuid.uuid4().hex[:6]}"
        self.core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=self.ns)))
        self.cluster = Cluster(self.api, self.ns)
        self.operator: OperatorProcess | None = None
        self.starts = 0

    def sessions(self) -> float:
        with self.pg.admin() as conn:
            row = conn.execute("SELECT sessions FROM pg_stat_database WHERE datname = %s", (self.dbname,)).fetchone()
        return float(row[0]) if row else 0.0

    def start_operator(self) -> OperatorProcess:
        self.stop_operator()
        self.starts += 1
        self.operator = EnvOperator(self.bed, [self.ns], self.tmp / f"operator-{self.starts}.log").start()
        time.sleep(10)  # its start-up (listings, first watch) is not part of any window
        return self.operator

    def stop_operator(self) -> None:
        if self.operator is not None:
            self.operator.stop()
            self.operator = None

    @property
    def pid(self) -> int:
        assert self.operator is not None and self.operator.proc is not None
        return self.operator.proc.pid

    def window(self, label: str, seconds: float) -> Window:
        pid = self.pid
        assert self.operator is not None
        cpu0, t0, s0, a0 = cpu_seconds(pid), time.monotonic(), self.sessions(), api_counts(self.bed)
        h0 = reconcile_buckets(self.operator.metrics())
        time.sleep(seconds)
        cpu1, t1, s1, a1 = cpu_seconds(pid), time.monotonic(), self.sessions(), api_counts(self.bed)
        hist = bucket_delta(reconcile_buckets(self.operator.metrics()), h0)
        minutes = (t1 - t0) / 60
        return Window(label, t1 - t0, 100 * (cpu1 - cpu0) / (t1 - t0), rss_mib(pid), (s1 - s0) / minutes,
                      requests_between(a0, a1) / minutes, hist[-1][1] if hist else 0.0,
                      percentile_from_buckets(hist, 0.5), os.getloadavg())

    def spec(self) -> dict[str, Any]:
        return {"database": {"urlSecretRef": {"name": "db-url", "key": "url"}},
                "migrations": {"image": "bench.local/app:1"}, "targetRevision": REVISION,
                "backup": {"enabled": False}, "freshnessCheck": {"interval": self.freshness}}

    def ready_count(self) -> int:
        listed = self.cluster.custom.list_namespaced_custom_object(c.GROUP, c.VERSION, self.ns, c.PLURAL)
        ready = 0
        for obj in listed["items"]:
            for cond in (obj.get("status") or {}).get("conditions") or []:
                if (cond.get("type") == "Ready" and cond.get("status") == "True"
                        and cond.get("observedGeneration") == obj["metadata"]["generation"]):
                    ready += 1
        return ready

    def count(self) -> int:
        listed = self.cluster.custom.list_namespaced_custom_object(c.GROUP, c.VERSION, self.ns, c.PLURAL)
        return len(listed["items"])

    def create(self, n: int) -> tuple[float, float | None, float]:
        """Create n at once; (seconds to all Ready, reconcile p50 meanwhile, reconciles)."""
        assert self.operator is not None
        h0 = reconcile_buckets(self.operator.metrics())
        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda i: self.cluster.create(f"db-{i:04d}", self.spec()), range(n)))
        created = time.monotonic() - t0
        wait_for(lambda: self.ready_count() == n or None, 600, f"{n} resources Ready")
        elapsed = time.monotonic() - t0
        hist = bucket_delta(reconcile_buckets(self.operator.metrics()), h0)
        print(f"  created {n} in {created:.1f}s; all Ready {elapsed:.1f}s after the first create", flush=True)
        return elapsed, percentile_from_buckets(hist, 0.5), hist[-1][1] if hist else 0.0

    def delete_all(self) -> tuple[float, int, int]:
        """Delete them all; (seconds until gone, warnings logged, 'Will escalate' lines)."""
        assert self.operator is not None
        mark = len(self.operator.log())
        t0 = time.monotonic()
        names = [o["metadata"]["name"] for o in self.cluster.custom.list_namespaced_custom_object(
            c.GROUP, c.VERSION, self.ns, c.PLURAL)["items"]]
        with concurrent.futures.ThreadPoolExecutor(16) as pool:  # one by one: a deletecollection of 1,000 times out
            list(pool.map(self.cluster.delete, names))
        wait_for(lambda: self.count() == 0 or None, 600, "every resource gone")
        elapsed = time.monotonic() - t0
        time.sleep(3)
        lines = self.operator.log()[mark:].splitlines()
        warnings = [x for x in lines if "WARNING" in x or "ERROR" in x]
        for line in warnings[:5]:
            print(f"    {line[:200]}", flush=True)
        return elapsed, len(warnings), sum("Will escalate" in x for x in lines)


def migrations(args: argparse.Namespace, tmp: Path) -> int:
    """100 migrations on 100 databases started together under the Job cap: all must succeed; the operator's
    overhead is the wall time against the best a hand-run could do with the same cap (the Jobs' own run times,
    packed perfectly: their sum divided by the cap)."""
    from apps import make_project
    from e2e import BASE_REVISIONS, app_image
    from harness import operator_image

    own_bed = not (args.bed_dir and Bed(args.bed_dir).is_up())
    bed = Bed(tmp / "bed", node="real", daemon=False) if own_bed else Bed(args.bed_dir)
    if own_bed:
        print(f"starting a bed with a real node in {bed.dir} ...", flush=True)
        bed.start()
    pg = PostgresServer(tmp / "pg")
    pg.start()
    api = bed.api_client()
    core = k8s.CoreV1Api(api)
    ns = f"bench-migrations-{uuid.uuid4().hex[:6]}"
    operator: OperatorProcess | None = None
    n, cap = args.migrations, args.max_running_jobs
    try:
        proc = bed.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD),
                             "-f", str(CRD.with_name("databasemigrationsets.yaml")))
        assert proc.returncode == 0, proc.stderr
        core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=ns)))
        cluster = Cluster(api, ns)
        project = make_project(tmp / "app", BASE_REVISIONS).parent
        image = app_image(bed, project)
        operator_image(bed)
        relay = bed.expose_host_port(pg.port, name="bench-postgres")
        for i in range(n):
            db = pg.create_database(f"m{i:03d}").at(*relay)
            cluster.secret(f"db-{i:03d}", {"url": db.url})
        operator = OperatorProcess(bed, [ns], tmp / "operator-migrations.log",
                                   extra_args=["--no-webhook", f"--max-running-jobs={cap}"]).start()
        spec = {"migrations": {"image": image, "workingDir": "/app"}, "targetRevision": "head",
                "backup": {"enabled": False}}
        print(f"{n} migrations (plan + migrate Jobs each), --max-running-jobs {cap}", flush=True)
        t0 = time.time()
        for i in range(n):
            cluster.create(f"m-{i:03d}", {**spec, "database": {"urlSecretRef": {"name": f"db-{i:03d}", "key": "url"}}})
        queued: set[str] = set()
        most = 0

        def done() -> bool | None:
            nonlocal most
            items = cluster.custom.list_namespaced_custom_object(c.GROUP, c.VERSION, ns, c.PLURAL)["items"]
            jobs = cluster.batch.list_namespaced_job(ns).items
            most = max(most, sum(1 for j in jobs if not (j.status.succeeded or j.status.failed)))
            finished = 0
            for obj in items:
                st = obj.get("status") or {}
                if any(x.get("reason") == "JobQueued" for x in st.get("conditions") or []):
                    queued.add(obj["metadata"]["name"])
                finished += st.get("phase") in ("Succeeded", "Failed")
            return finished == n or None

        wait_for(done, 3600, f"{n} migrations finished")
        wall = time.time() - t0
        items = cluster.custom.list_namespaced_custom_object(c.GROUP, c.VERSION, ns, c.PLURAL)["items"]
        succeeded = sum((o.get("status") or {}).get("phase") == "Succeeded" for o in items)
        durations = []
        for job in cluster.batch.list_namespaced_job(ns).items:
            start, end = job.status.start_time, job.status.completion_time
            if start and end:
                durations.append((end - start).total_seconds())
        ideal = sum(durations) / cap
        print()
        print("| migrations | succeeded | Jobs | --max-running-jobs | most Jobs seen at once | resources seen "
              "JobQueued | wall s | Jobs' run time s (sum) | hand-run best s (sum / cap) | ratio | load avg |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        load = os.getloadavg()
        print(f"| {n} | {succeeded} | {len(durations)} | {cap} | {most} | {len(queued)} | {wall:.1f} | "
              f"{sum(durations):.0f} | {ideal:.1f} | {wall / ideal:.2f} | {load[0]:.2f} / {load[1]:.2f} |")
        return 0
    finally:
        if operator is not None:
            operator.stop()
        with contextlib.suppress(k8s.ApiException):
            for obj in k8s.CustomObjectsApi(api).list_namespaced_custom_object(c.GROUP, c.VERSION, ns,
                                                                              c.PLURAL)["items"]:
                Cluster(api, ns).patch(obj["metadata"]["name"], {"metadata": {"finalizers": None}})
            core.delete_namespace(ns, propagation_policy="Background")
        api.close()  # type: ignore[no-untyped-call]
        pg.destroy()
        if own_bed:
            bed.stop(purge=True)


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[int(x) for x in os.environ.get("N", "1000").split()])
    parser.add_argument("--window", type=float, default=180.0, help="idle window, seconds (default %(default)s)")
    parser.add_argument("--freshness", default="1m", help="spec.freshnessCheck.interval (default %(default)s)")
    parser.add_argument("--bed-dir", default=os.environ.get("BED_DIR"),
                        help="a running bed to use (default: $BED_DIR, else start a fresh one)")
    parser.add_argument("--cycles", type=int, default=1,
                        help="create and delete each N this many times with one operator (RSS after each)")
    parser.add_argument("--operator-env", nargs="*", default=[], metavar="K=V",
                        help="environment of the operator process, e.g. PYTHONMALLOC=malloc MALLOC_ARENA_MAX=2")
    parser.add_argument("--migrations", type=int, default=0, metavar="M",
                        help="instead: M migrations on M databases started together, on a bed with a real node")
    parser.add_argument("--max-running-jobs", type=int, default=10, help="the Job cap of --migrations")
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    tmp.chmod(0o755)  # PostgreSQL runs as its own user under it
    if args.migrations:
        return migrations(args, tmp)
    EnvOperator.extra_env = dict(item.split("=", 1) for item in args.operator_env)
    own_bed = not (args.bed_dir and Bed(args.bed_dir).is_up())
    bed = Bed(tmp / "bed", node="none", daemon=False) if own_bed else Bed(args.bed_dir)
    if own_bed:
        print(f"starting a bed (control plane) in {bed.dir} ...", flush=True)
        bed.start()
    pg = PostgresServer(tmp / "pg")
    pg.start()
    bench: Bench | None = None
    try:
        db = pg.create_database("scale")
        db.query("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
        db.query(f"INSERT INTO alembic_version VALUES ('{REVISION}')")
        proc = bed.kubectl("apply", "--server-side", "-f", str(CRD),
                             "-f", str(CRD.with_name("databasemigrationsets.yaml")))
        assert proc.returncode == 0, proc.stderr
        bench = Bench(bed, pg, "scale", tmp, args.freshness)
        bench.cluster.secret("db-url", {"url": db.url})
        print(f"logs in {tmp}; idle window {args.window:.0f}s; spec.freshnessCheck.interval {args.freshness}; "
              f"operator environment {EnvOperator.extra_env or 'as is'}", flush=True)

        bench.start_operator()
        empty = bench.window("empty", args.window)
        print(f"  empty operator: {empty}", flush=True)
        rows: list[tuple[int, Window, tuple[float, float | None, float], float, tuple[float, int, int], float]] = []
        for n in args.n:
            print(f"N={n}", flush=True)
            bench.start_operator()
            a0 = api_counts(bed)
            created = bench.create(n)
            time.sleep(10)
            idle = bench.window(f"N={n}", args.window)
            conflicts = conflicts_between(a0, api_counts(bed))
            print(f"  idle: {idle}", flush=True)
            deleted = bench.delete_all()
            time.sleep(10)
            soon = rss_mib(bench.pid)
            time.sleep(20)  # the operator hands freed memory back 20 s after the last deletion (indexes.TRIM_DELAY)
            after = rss_mib(bench.pid)
            print(f"  deleted in {deleted[0]:.1f}s, {deleted[1]} warning(s) logged; RSS 10 s after {soon:.0f} MiB, "
                  f"30 s after {after:.0f} MiB", flush=True)
            rows.append((n, idle, created, conflicts, deleted, after))
            for cycle in range(1, args.cycles):  # the same operator again: does what stays after deletion grow?
                bench.create(n)
                bench.delete_all()
                time.sleep(30)
                print(f"  cycle {cycle + 1}: RSS after deleting {n} again {rss_mib(bench.pid):.0f} MiB", flush=True)

        print()
        print(f"Idle window {args.window:.0f}s; freshnessCheck.interval {args.freshness}; one database; "
              "API requests: not watches, to databasemigrations, jobs, pods, secrets, events, configmaps "
              "(every client's: the empty row is the bed's background plus the empty operator)")
        print("| idle resources | operator CPU (% of a core) | RSS MiB | DB sessions/min | API requests/min "
              "| reconciles in window (p50) | load avg (1/5 min) |")
        print("|---|---|---|---|---|---|---|")
        for label, w in [("0 (empty operator)", empty), *[(str(r[0]), r[1]) for r in rows]]:
            print(f"| {label} | {w.cpu_percent:.2f} | {w.rss:.0f} | {w.sessions_per_min:.1f} | "
                  f"{w.requests_per_min:.1f} | {w.reconciles:.0f} ({fmt(w.p50 * 1000 if w.p50 else None, 0)} ms) "
                  f"| {w.load[0]:.2f} / {w.load[1]:.2f} |")
        print()
        print("| N created at once | all Ready (s) | reconciles (p50 ms) | 409 conflicts | deletion (s) "
              "| warnings on deletion | 'Will escalate' | RSS 30 s after deletion MiB (empty: "
              f"{empty.rss:.0f}) |")
        print("|---|---|---|---|---|---|---|---|")
        for n, _idle, (ready_s, p50, count), conflicts, (del_s, warns, escalate), after in rows:
            print(f"| {n} | {ready_s:.1f} | {count:.0f} ({fmt(p50 * 1000 if p50 else None, 0)}) | {conflicts:.0f} "
                  f"| {del_s:.1f} | {warns} | {escalate} | {after:.0f} ({100 * (after / empty.rss - 1):+.0f} %) |")
        return 0
    finally:
        if bench is not None:
            bench.stop_operator()
            with contextlib.suppress(k8s.ApiException):
                for obj in bench.cluster.custom.list_namespaced_custom_object(c.GROUP, c.VERSION, bench.ns,
                                                                               c.PLURAL)["items"]:
                    bench.cluster.patch(obj["metadata"]["name"], {"metadata": {"finalizers": None}})
                bench.core.delete_namespace(bench.ns, propagation_policy="Background")
            bench.api.close()  # type: ignore[no-untyped-call]
        pg.destroy()
        if own_bed:
            bed.stop(purge=True)


if __name__ == "__main__":
    sys.exit(main())
