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
ratio. Idle (``--idle N``): N DatabaseMigrations owned by 4 sets over N Secrets whose database is already at the
target revision (Ready with no Job), then an idle window: the operator's CPU, RSS and API requests per minute (not
watches, every client's: bench_scale.py's measures). Prints figures only: nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from kubernetes import client as k8s

sys.path.insert(0, str(Path(__file__).resolve().parent))

from alembic_operator import constants as c
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


def rollout(args: argparse.Namespace, bed: Bed, tmp: Path) -> None:
    pg, my = PostgresServer(tmp / "pg"), MariaDBServer(Path(tempfile.mkdtemp(prefix="bench-fleet-mariadb-")))
    pg.start()
    my.start()
    api = bed.api_client()
    core, custom = k8s.CoreV1Api(api), k8s.CustomObjectsApi(api)
    ns = f"bench-fleet-{uuid.uuid4().hex[:6]}"
    operator: OperatorProcess | None = None
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
        m = args.max_in_flight
        spec = {"template": {"migrations": {"image": image, "workingDir": "/app"}, "targetRevision": "head",
                             "backup": {"enabled": False}},
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
        custom.patch_namespaced_custom_object(c.GROUP, c.VERSION, ns, c.SET_PLURAL, "tenants", {
            "metadata": {"annotations": {c.RETRY_ANNOTATION: "fixed"}}})
        wait_for(lambda: _condition(get(), c.READY).get("status") == "True" or None, 7200, "the set Ready")
        wall = time.time() - resumed
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
    finally:
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
