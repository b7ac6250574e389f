"""Benchmark: a DatabaseMigrationSet rolling one migration out to many tenant databases (issue 28), and what sets
cost while idle.

    make bench-fleet                                    # 200 PostgreSQL + 10 MariaDB tenants, then 1,000 idle
    python tests/bench_fleet.py --pg 200 --mariadb 10 --max-in-flight 20 --idle 1000 [--bed-dir DIR]
    python tests/bench_fleet.py --pg 40 --mariadb 4 --idle 0           # a smaller rollout only

Rollout (a bed with a real node: every Job is a pod): one set over every tenant's Secret (a label selector),
canary 2, waves 10 % / 50 % / 100 %, at most ``--max-in-flight`` at once, failure budget 1, backups off. Every
tenant is at the first revision with a row; the first canary's row breaks the second revision (a CHECK). Printed:
how many tenants beyond the canary wave got a DatabaseMigration or the new revision (must be 0) and whether the
set is Stalled naming the canary; then, after the row is fixed and the set resumed (the retry annotation): the wall
time until every tenant is Ready, the sum of the Jobs' run times (plan and migrate of each tenant, from the resume
on), the best possible for the same cap (that sum ÷ M: Jobs packed perfectly, no gap, no wave barrier) and the
ratio; the operator's CPU over the same time; and where the slots' time went, from the bench's own watches of the
namespace's DatabaseMigrations, Jobs and pods: the set's reaction (a member Ready -> the next one given the
template), a member's first Job, a Job's pod start and completion, the step between a member's plan and migrate
Jobs, the last Job to Ready; and the same Jobs packed under the waves with no gap (what the waves' barriers alone
cost against sum / M). Idle (``--idle N``): N DatabaseMigrations owned by 4 sets over N Secrets whose database is
already at the target revision (Ready with no Job), then an idle window: the operator's CPU, RSS and API requests
per minute (not watches, every client's: bench_scale.py's measures). Prints figures only: nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes import watch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from alembic_operator import constants as c
from alembic_operator.fleet.api import parse_set_spec
from alembic_operator.fleet.strategy import wave_ends
from apps import Rev, make_project
from bed.controlplane import Bed
from bed.mariadb import MariaDBServer
from bed.postgres import PostgresServer
from bench_scale import CRD, REVISION, api_counts, cpu_seconds, requests_between, rss_mib
from e2e import E2E, app_image
from harness import Cluster, OperatorProcess, operator_image, wait_for

SET_CRD = CRD.with_name("databasemigrationsets.yaml")
LABEL = "tenants.bench/app"
BASE = Rev("f1ee7b000001", upgrade=['op.create_table("items", sa.Column("id", sa.Integer, primary_key=True), '
                                    'sa.Column("qty", sa.Integer))'], downgrade=['op.drop_table("items")'])
CHECK = Rev("f1ee7b000002", upgrade=['op.create_check_constraint("qty_positive", "items", "qty >= 0")'],
            downgrade=['op.drop_constraint("qty_positive", "items", type_="check")'])


def _set_body(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": c.API_VERSION, "kind": c.SET_KIND, "metadata": {"name": name}, "spec": spec}


def _condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((x for x in (obj.get("status") or {}).get("conditions") or [] if x["type"] == type_), {})


# --- where the time goes: a timeline of the namespace's DatabaseMigrations, Jobs and pods, seen by watches ---------


@dataclass
class Seen:
    """First times (time.time(), as the bench's watches saw them) of what happened to one object."""

    first: float = 0.0
    marks: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def mark(self, what: str, at: float) -> None:
        self.marks.setdefault(what, at)


class Timeline:
    """Watches (in threads) the namespace's DatabaseMigrations, Jobs and pods and keeps when each changed: a member
    given the template (created, or its generation raised by a retry) and seen Ready; each Job created, started and
    complete (its own startTime/completionTime too); each pod's containers running and terminated."""

    def __init__(self, api: k8s.ApiClient, ns: str) -> None:
        self.ns = ns
        self.custom, self.batch, self.core = k8s.CustomObjectsApi(api), k8s.BatchV1Api(api), k8s.CoreV1Api(api)
        self.members: dict[str, Seen] = {}  # "<name>@<generation>"
        self.jobs: dict[str, Seen] = {}
        self.pods: dict[str, Seen] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._watch, args=(kind,), daemon=True)
                        for kind in ("members", "jobs", "pods")]

    def start(self) -> Timeline:
        for thread in self.threads:
            thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()

    def _list(self, kind: str) -> Any:
        if kind == "members":
            return lambda **kw: self.custom.list_namespaced_custom_object(c.GROUP, c.VERSION, self.ns, c.PLURAL, **kw)
        return {"jobs": self.batch.list_namespaced_job, "pods": self.core.list_namespaced_pod}[kind]

    def _watch(self, kind: str) -> None:
        while not self.stopping.is_set():
            with contextlib.suppress(Exception):
                stream = watch.Watch().stream(self._list(kind), **({} if kind == "members" else {"namespace": self.ns}),
                                              timeout_seconds=20)
                for event in stream:
                    obj = event["object"]
                    with self.lock:
                        getattr(self, f"_{kind}")(time.time(), obj if isinstance(obj, dict) else obj.to_dict())
                    if self.stopping.is_set():
                        return

    def _members(self, now: float, obj: dict[str, Any]) -> None:
        meta, status = obj["metadata"], obj.get("status") or {}
        gen = int(meta.get("generation") or 0)
        seen = self.members.setdefault(f"{meta['name']}@{gen}", Seen(first=now))
        ready = _condition(obj, c.READY)
        if status.get("observedGeneration") == gen and ready.get("status") == "True" \
                and ready.get("observedGeneration") == gen:
            seen.mark("ready", now)

    def _jobs(self, now: float, obj: dict[str, Any]) -> None:
        meta, status = obj["metadata"], obj.get("status") or {}
        seen = self.jobs.setdefault(meta["name"], Seen(first=now))
        seen.info["name"] = meta["name"]
        seen.info["member"] = (meta.get("labels") or {}).get(c.OWNER_LABEL)
        seen.info["role"] = (meta.get("labels") or {}).get(c.ROLE_LABEL)
        seen.info["generation"] = (meta.get("labels") or {}).get(c.GENERATION_LABEL)
        if status.get("start_time"):
            seen.info["start"] = status["start_time"].timestamp()
        if status.get("completion_time"):
            seen.info["completion"] = status["completion_time"].timestamp()
        if any(x["type"] in ("Complete", "Failed") and x["status"] == "True" for x in status.get("conditions") or []):
            seen.mark("done", now)

    def _pods(self, now: float, obj: dict[str, Any]) -> None:
        meta, status = obj["metadata"], obj.get("status") or {}
        seen = self.pods.setdefault(meta["name"], Seen(first=now))
        seen.info["job"] = (meta.get("labels") or {}).get("job-name")
        if (obj.get("spec") or {}).get("node_name"):
            seen.mark("scheduled", now)
        for st in (status.get("init_container_statuses") or []) + (status.get("container_statuses") or []):
            state = st.get("state") or {}
            if state.get("running") or state.get("terminated"):
                seen.mark(f"{st['name']}:running", now)
            if state.get("terminated"):
                seen.mark(f"{st['name']}:terminated", now)
                finished = state["terminated"].get("finished_at")
                started = state["terminated"].get("started_at")
                if finished and started:
                    seen.info[f"{st['name']}:ran"] = (finished - started).total_seconds()

    def report(self, since: float, m: int, ends: list[int]) -> None:
        """Where each slot's time went between `since` and the last member Ready; and the same members' Job times
        packed under the waves (`ends`: each wave's end in the rollout order, a member's place is its tenant's
        number) with no gap at all: what the waves alone cost against the best possible."""
        with self.lock:
            members = {k: v for k, v in self.members.items() if v.first >= since - 1 and "ready" in v.marks}
            jobs = {k: v for k, v in self.jobs.items() if v.first >= since - 1}
            pods = dict(self.pods)
        by_member: dict[str, list[Seen]] = {}
        for job in jobs.values():
            by_member.setdefault(f"{job.info['member']}@{job.info['generation']}", []).append(job)
        pod_of = {p.info.get("job"): p for p in pods.values()}
        gaps: dict[str, list[float]] = {k: [] for k in (
            "set: a member Ready -> the next member given the template", "member given the template -> its first Job",
            "a Job created -> its pod's first container running", "a pod's last container done -> its Job complete",
            "plan Job complete -> migrate Job created", "migrate Job complete -> the member Ready",
            "Job run time (startTime -> completionTime)", "  of which containers' own run times")}
        keys = list(gaps)
        readies = sorted(v.marks["ready"] for v in members.values())
        for seen in members.values():
            before = [r for r in readies if r <= seen.first]
            gaps[keys[0]].append(seen.first - (before[-1] if before else since))
        for name, seen in members.items():
            mine = sorted(by_member.get(name, []), key=lambda j: j.first)
            if not mine:
                continue
            gaps[keys[1]].append(mine[0].first - seen.first)
            for job in mine:
                pod = pod_of.get(job.info["name"])
                if pod is not None:
                    running = [t for k, t in pod.marks.items() if k.endswith(":running")]
                    done = [t for k, t in pod.marks.items() if k.endswith(":terminated")]
                    if running:
                        gaps[keys[2]].append(min(running) - job.first)
                    if done and "done" in job.marks:
                        gaps[keys[3]].append(job.marks["done"] - max(done))
                    gaps[keys[7]].append(sum(v for k, v in pod.info.items() if k.endswith(":ran")))
                if "start" in job.info and "completion" in job.info:
                    gaps[keys[6]].append(job.info["completion"] - job.info["start"])
            roles = {j.info["role"]: j for j in mine}
            if "plan" in roles and "migrate" in roles and "done" in roles["plan"].marks:
                gaps[keys[4]].append(roles["migrate"].first - roles["plan"].marks["done"])
            last = mine[-1]
            if "done" in last.marks:
                gaps[keys[5]].append(seen.marks["ready"] - last.marks["done"])
        end = max(readies) if readies else since
        held = sum(v.marks["ready"] - v.first for v in members.values())
        run = sum(gaps[keys[6]])
        print()
        print(f"Where the time went ({len(members)} members, {len(jobs)} Jobs, {end - since:.0f}s from the resume to "
              f"the last Ready, M={m}: {m * (end - since):.0f} slot-seconds)")
        print(f"  slots held by a member: {held:.0f}s ({100 * held / max(1.0, m * (end - since)):.0f} %), "
              f"of which Jobs running: {run:.0f}s; free slots: {m * (end - since) - held:.0f}s")
        work: dict[int, float] = {}
        for name in members:
            mine = [j for j in by_member.get(name, []) if "start" in j.info and "completion" in j.info]
            work[int(name.split("@")[0].rsplit("-", 1)[1])] = sum(j.info["completion"] - j.info["start"] for j in mine)
        packed = _packed(work, ends, m)
        print(f"  the same Jobs packed with no gap but the waves' barriers: {packed:.0f}s, "
              f"{packed / max(1.0, run / m):.2f} x the best possible (sum / M); the wall time is "
              f"{(end - since) / max(1.0, packed):.2f} x that")
        print("| step | count | mean s | median s | p90 s | sum s |")
        print("|---|---|---|---|---|---|")
        for what, values in gaps.items():
            if values:
                values.sort()
                print(f"| {what} | {len(values)} | {statistics.fmean(values):.2f} | {statistics.median(values):.2f} | "
                      f"{values[int(0.9 * (len(values) - 1))]:.2f} | {sum(values):.0f} |")


def _packed(work: dict[int, float], ends: list[int], m: int) -> float:
    """When the last of these members (place -> its Jobs' run time) would end, started in order at most `m` at once
    the moment a slot frees, each wave once every member of the ones before it ended: no gap of any kind."""
    now, begin = 0.0, 0
    for end in ends:
        slots = [now] * m
        for place in sorted(p for p in work if begin <= p < end):
            heapq.heappush(slots, heapq.heappop(slots) + work[place])
        now, begin = max(slots), end
    return now


def rollout(args: argparse.Namespace, bed: Bed, tmp: Path) -> None:
    pg, my = PostgresServer(tmp / "pg"), MariaDBServer(Path(tempfile.mkdtemp(prefix="bench-fleet-mariadb-")))
    pg.start()
    my.start()
    api = bed.api_client()
    core, custom = k8s.CoreV1Api(api), k8s.CustomObjectsApi(api)
    ns = f"bench-fleet-{uuid.uuid4().hex[:6]}"
    operator: OperatorProcess | None = None
    timeline: Timeline | None = None
    try:
        core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=ns)))
        cluster = Cluster(api, ns)
        project = make_project(tmp / "tenants", [BASE, CHECK]).parent
        image = app_image(bed, project)
        operator_image(bed)
        pg_relay, my_relay = bed.expose_host_port(pg.port, "bench-fleet-pg"), bed.expose_host_port(my.port,
                                                                                                   "bench-fleet-my")
        total = args.pg + args.mariadb
        dbs = {}
        t0 = time.monotonic()
        for i in range(total):
            on_pg = i < args.pg
            db = (pg if on_pg else my).create_database(f"t{i:03d}")
            E2E.upgrade_directly_on(db, project, BASE.id)
            db.query("INSERT INTO items (id, qty) VALUES (1, %s)", -1 if i == 0 else 5)
            dbs[f"t-{i:03d}"] = db
            cluster.labelled_secret(f"t-{i:03d}", {"url": db.at(*(pg_relay if on_pg else my_relay)).url},
                                    {LABEL: "shop"})
        print(f"{args.pg} PostgreSQL + {args.mariadb} MariaDB tenants at {BASE.id} in "
              f"{time.monotonic() - t0:.0f}s; the canary t-000 has a row that breaks {CHECK.id}", flush=True)
        operator = OperatorProcess(bed, [ns], tmp / "operator-rollout.log", extra_args=["--no-webhook"]).start()
        timeline = Timeline(bed.api_client(), ns).start()
        m = args.max_in_flight
        # A loaded machine runs 20 plan Jobs at once slowly: the default 600 s deadline failed them (a 210-tenant
        # run, load average 35), which measures the machine, not the rollout.
        spec = {"template": {"migrations": {"image": image, "workingDir": "/app"}, "targetRevision": "head",
                             "backup": {"enabled": False}, "jobTemplate": {"activeDeadlineSeconds": 7200}},
                "targets": {"selector": {"matchLabels": {LABEL: "shop"}}},
                "strategy": {"canary": {"count": 2}, "waves": ["10%", "50%", "100%"], "maxInFlight": m,
                             "failureBudget": 1}}
        custom.create_namespaced_custom_object(c.GROUP, c.VERSION, ns, c.SET_PLURAL, _set_body("tenants", spec))

        def get() -> dict[str, Any]:
            return dict(custom.get_namespaced_custom_object(c.GROUP, c.VERSION, ns, c.SET_PLURAL, "tenants"))

        def stalled_set() -> dict[str, Any] | None:
            obj = get()
            return obj if _condition(obj, c.STALLED).get("status") == "True" else None

        stalled = wait_for(stalled_set, 1800, "the set Stalled")
        members = custom.list_namespaced_custom_object(c.GROUP, c.VERSION, ns, c.PLURAL)["items"]
        beyond_dbm = sum(1 for o in members if o["metadata"]["name"] not in ("tenants-t-000", "tenants-t-001"))
        beyond_rev = sum(1 for name, db in list(dbs.items())[2:] if _revision(db) == CHECK.id)
        cond = _condition(stalled, c.STALLED)
        print(f"canary failure: Stalled={cond.get('status')} {cond.get('reason')}: "
              f"{cond.get('message', '')[:160]}", flush=True)
        print(f"  tenants beyond the canary wave with a DatabaseMigration: {beyond_dbm}, at the new revision: "
              f"{beyond_rev}; failed: {[f['target'] for f in stalled['status'].get('failed', [])]}", flush=True)

        dbs["t-000"].query("UPDATE items SET qty = 0 WHERE qty < 0")
        resumed = time.time()
        pid = operator.proc.pid if operator.proc is not None else 0
        cpu0 = cpu_seconds(pid)
        custom.patch_namespaced_custom_object(c.GROUP, c.VERSION, ns, c.SET_PLURAL, "tenants", {
            "metadata": {"annotations": {c.RETRY_ANNOTATION: "fixed"}}})

        waves_seen: set[object] = set()

        def ready_set() -> bool | None:
            obj = get()  # Stalled until the operator has seen the retry; Stalled after it: a target failed again
            if (wave := (obj.get("status") or {}).get("waveName")) not in waves_seen:  # figures so far, per wave
                waves_seen.add(wave)
                ran = [(j.status.completion_time - j.status.start_time).total_seconds()
                       for j in cluster.batch.list_namespaced_job(ns).items
                       if j.status.start_time and j.status.completion_time
                       and j.status.start_time.timestamp() >= resumed - 1]
                print(f"  +{time.time() - resumed:.0f}s wave {wave}: {(obj.get('status') or {}).get('counts')}; "
                      f"{len(ran)} Jobs done, run times {sum(ran):.0f}s, / M {sum(ran) / m:.0f}s", flush=True)
            retried = (obj.get("status") or {}).get("retried") == "fixed"
            if retried and _condition(obj, c.STALLED).get("status") == "True":
                raise AssertionError(f"the set Stalled after the resume: {_condition(obj, c.STALLED)}")
            return _condition(obj, c.READY).get("status") == "True" or None

        wait_for(ready_set, 7200, "the set Ready")
        wall = time.time() - resumed
        operator_cpu = cpu_seconds(pid) - cpu0
        at_target = sum(1 for db in dbs.values() if _revision(db) == CHECK.id)
        durations = []
        for job in cluster.batch.list_namespaced_job(ns).items:
            start, end = job.status.start_time, job.status.completion_time
            if start and end and start.timestamp() >= resumed - 1:
                durations.append((end - start).total_seconds())
        best = sum(durations) / m
        load = os.getloadavg()
        print()
        print("| tenants (PG + MariaDB) | at the new revision | Jobs after resume | M | wall s (resume -> Ready) | "
              "Jobs' run time s (sum) | best possible s (sum / M) | ratio | load avg |")
        print("|---|---|---|---|---|---|---|---|---|")
        print(f"| {args.pg} + {args.mariadb} | {at_target} | {len(durations)} | {m} | {wall:.0f} | "
              f"{sum(durations):.0f} | {best:.0f} | {wall / best:.2f} | {load[0]:.2f} / {load[1]:.2f} |", flush=True)
        print(f"operator CPU from the resume to Ready: {operator_cpu:.1f}s "
              f"({100 * operator_cpu / wall:.1f} % of a core)", flush=True)
        timeline.report(resumed, m, wave_ends(parse_set_spec(spec), total, 2))
    finally:
        if timeline is not None:
            timeline.stop()
        if operator is not None:
            operator.stop()
        with contextlib.suppress(k8s.ApiException):
            for obj in custom.list_namespaced_custom_object(c.GROUP, c.VERSION, ns, c.PLURAL)["items"]:
                custom.patch_namespaced_custom_object(c.GROUP, c.VERSION, ns, c.PLURAL, obj["metadata"]["name"],
                                                      {"metadata": {"finalizers": None}})
            core.delete_namespace(ns, propagation_policy="Background")
        pg.destroy()
        my.destroy()


def _revision(db: Any) -> str | None:
    rows = db.query("SELECT version_num FROM alembic_version")
    return str(rows[0][0]) if rows else None


def idle(args: argparse.Namespace, bed: Bed, tmp: Path) -> None:
    pg = PostgresServer(tmp / "pg-idle")
    pg.start()
    api = bed.api_client()
    core, custom = k8s.CoreV1Api(api), k8s.CustomObjectsApi(api)
    ns = f"bench-fleet-idle-{uuid.uuid4().hex[:6]}"
    operator: OperatorProcess | None = None
    n, sets = args.idle, 4
    try:
        core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=ns)))
        cluster = Cluster(api, ns)
        db = pg.create_database("idle")
        db.query("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
        db.query(f"INSERT INTO alembic_version VALUES ('{REVISION}')")
        url = db.at(*bed.expose_host_port(pg.port, "bench-fleet-idle")).url if bed.node == "real" else db.url
        for i in range(n):
            cluster.labelled_secret(f"db-{i:04d}", {"url": url}, {LABEL: f"s{i % sets}"})
        operator = OperatorProcess(bed, [ns], tmp / "operator-idle.log", extra_args=["--no-webhook"]).start()
        t0 = time.monotonic()
        for s in range(sets):
            custom.create_namespaced_custom_object(c.GROUP, c.VERSION, ns, c.SET_PLURAL, _set_body(f"s{s}", {
                "template": {"migrations": {"image": "bench.local/app:1"}, "targetRevision": REVISION,
                             "backup": {"enabled": False}, "freshnessCheck": {"interval": args.freshness}},
                "targets": {"selector": {"matchLabels": {LABEL: f"s{s}"}}},
                "strategy": {"maxInFlight": 1000}}))

        def all_ready() -> bool | None:
            items = custom.list_namespaced_custom_object(c.GROUP, c.VERSION, ns, c.SET_PLURAL)["items"]
            ready = sum(_condition(o, c.READY).get("status") == "True" for o in items)
            return ready == sets or None

        wait_for(all_ready, 1800, f"{sets} sets Ready")
        print(f"{n} DatabaseMigrations owned by {sets} sets, all Ready in {time.monotonic() - t0:.0f}s", flush=True)
        time.sleep(10)
        pid = operator.proc.pid if operator.proc is not None else 0
        cpu0, w0, a0 = cpu_seconds(pid), time.monotonic(), api_counts(bed)
        time.sleep(args.window)
        cpu1, w1, a1 = cpu_seconds(pid), time.monotonic(), api_counts(bed)
        minutes = (w1 - w0) / 60
        load = os.getloadavg()
        print()
        print(f"Idle window {args.window:.0f}s; freshnessCheck.interval {args.freshness}")
        print("| idle DatabaseMigrations (sets) | operator CPU (% of a core) | RSS MiB | API requests/min "
              "(not watches, every client's) | load avg |")
        print("|---|---|---|---|---|")
        print(f"| {n} ({sets}) | {100 * (cpu1 - cpu0) / (w1 - w0):.2f} | {rss_mib(pid):.0f} | "
              f"{requests_between(a0, a1) / minutes:.1f} | {load[0]:.2f} / {load[1]:.2f} |", flush=True)
    finally:
        if operator is not None:
            operator.stop()
        with contextlib.suppress(k8s.ApiException):
            for obj in custom.list_namespaced_custom_object(c.GROUP, c.VERSION, ns, c.PLURAL)["items"]:
                custom.patch_namespaced_custom_object(c.GROUP, c.VERSION, ns, c.PLURAL, obj["metadata"]["name"],
                                                      {"metadata": {"finalizers": None}})
            core.delete_namespace(ns, propagation_policy="Background")
        pg.destroy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pg", type=int, default=200, help="PostgreSQL tenants (default %(default)s)")
    parser.add_argument("--mariadb", type=int, default=10, help="MariaDB tenants (default %(default)s)")
    parser.add_argument("--max-in-flight", type=int, default=20, help="the set's maxInFlight (default %(default)s)")
    parser.add_argument("--idle", type=int, default=1000, help="idle DatabaseMigrations owned by sets (0: none)")
    parser.add_argument("--window", type=float, default=180.0, help="idle window, seconds (default %(default)s)")
    parser.add_argument("--freshness", default="5m", help="the idle ones' spec.freshnessCheck.interval")
    parser.add_argument("--bed-dir", default=os.environ.get("BED_DIR"),
                        help="a running bed with a real node (default: $BED_DIR, else start a fresh one)")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    tmp.chmod(0o755)  # PostgreSQL runs as its own user under it
    own_bed = not (args.bed_dir and Bed(args.bed_dir).is_up())
    bed = Bed(tmp / "bed", node="real", daemon=False) if own_bed else Bed(args.bed_dir)
    if own_bed:
        print(f"starting a bed with a real node in {bed.dir} ...", flush=True)
        bed.start()
    try:
        proc = bed.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD), "-f", str(SET_CRD))
        assert proc.returncode == 0, proc.stderr
        print(f"logs in {tmp}", flush=True)
        if args.pg + args.mariadb:
            rollout(args, bed, tmp)
        if args.idle:
            idle(args, bed, tmp)
        return 0
    finally:
        if own_bed:
            bed.stop(purge=True)


if __name__ == "__main__":
    sys.exit(main())
