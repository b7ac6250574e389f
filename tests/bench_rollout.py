"""Benchmark: what a rollout with a schema change costs the requests being served, next to one without.

    make bench-rollout                     # or: PYTHONPATH=tests .venv/bin/python tests/bench_rollout.py
    python tests/bench_rollout.py --bed-dir .bed --rate 30

On a bed with a real node (--bed-dir / BED_DIR: reuse a running one; otherwise a fresh one is started and stopped)
and a PostgreSQL server of its own, the whole operator (webhook included) runs inside the bed's network namespace;
the served shop (examples/shop/deploy/shop.yaml: 3 replicas, readiness probe, one pod at a time) starts at release
1.1 under the load generator (tests/loadgen.py: ``--rate`` requests a second, a third of them writes, each on a new
connection through the Service), then is rolled, each time by one apply of the DatabaseMigration and the
Deployment together:

1. steady: no change at all, for ``--steady`` seconds (the load's own baseline);
2. no schema change: to release 1.2 (the same models; the plan has nothing to run);
3. rename as expand/contract: to release 2.0 (the expand revision, the rollout, then the contract revision);
4. (``--naive``, on a second namespace and database) the same rename as one revision, release 2.0-naive.

For each window (from the apply until the DatabaseMigration is Ready and the Deployment rolled out) it prints the
requests, requests per second, p50 and p99 latency and the failed requests, with their errors. Not a test: nothing
is asserted.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kubernetes import client as k8s

import loadgen
from alembic_operator import constants as c
from bed.controlplane import Bed
from bed.postgres import PostgresServer
from gating import GateOperator, remove_webhook_configuration
from harness import Cluster
from served import PodLog, Rollout, release, shop_ref, watch_pods
from shopapp import R_FIXED, release_tree, seed, upgrade

REPO = Path(__file__).resolve().parent.parent
CRD = REPO / "crds" / "databasemigrations.yaml"


class Namespace:
    """One namespace with the shop's database, its Secret, an operator and the pods' watch."""

    def __init__(self, bed: Bed, api: k8s.ApiClient, server: PostgresServer, tmp: Path, name: str) -> None:
        self.bed, self.api, self.name = bed, api, name
        self.core = k8s.CoreV1Api(api)
        self.core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
        self.db = server.create_database(name.replace("-", "_"))
        host, port = bed.expose_host_port(server.port, name=f"{name}-pg")
        self.cluster = Cluster(api, name)
        self.cluster.secret("shop-db", {"url": self.db.at(host, port).url})
        tree = release_tree(tmp / f"{name}-shop-1.1", "1.1")
        upgrade(tree, self.db.url, R_FIXED)
        seed(tree, self.db.url)
        self.operator = GateOperator(bed, name, tmp / f"{name}-operator.log", core=True).start()
        self.pods = PodLog()
        threading.Thread(target=watch_pods, args=(api, name, self.pods), daemon=True).start()
        self.rollout = Rollout(bed=bed, cluster=self.cluster, db=self.db, tmp=tmp, pods=self.pods)

    def roll(self, version: str) -> float:
        """Apply the release and wait until it is done; returns when the apply was sent."""
        generation = 0
        if self.cluster.exists("shop"):
            generation = int(self.cluster.get("shop")["metadata"]["generation"])
        applied = time.time()
        self.rollout.apply(release(self.name, "shop", version, shop_ref(self.bed, version)))
        if generation and int(self.cluster.get("shop")["metadata"]["generation"]) == generation:
            raise RuntimeError(f"the apply of {version} changed nothing")
        self.cluster.wait_condition("shop", c.READY, timeout=900)
        self.rollout.wait_rolled_out("shop", version, timeout=900)
        return applied

    def close(self) -> None:
        self.pods.stop.set()
        self.operator.stop()
        remove_webhook_configuration(self.api, self.operator.config_name)
        for obj in self.cluster.custom.list_namespaced_custom_object(c.GROUP, c.VERSION, self.name,
                                                                     c.PLURAL)["items"]:
            self.cluster.patch(obj["metadata"]["name"], {"metadata": {"finalizers": None}})
        self.core.delete_namespace(self.name, propagation_policy="Background")


def line(name: str, seconds: float, responses: list[loadgen.Response]) -> str:
    s = loadgen.summarize(responses)
    return (f"{name:<34} {seconds:>7.1f} {s.requests:>8} {s.requests / seconds if seconds else 0:>7.1f} "
            f"{s.p50_ms:>8.1f} {s.p99_ms:>8.1f} {s.failed:>7}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bed-dir", default=os.environ.get("BED_DIR"),
                        help="a running bed to use (default: $BED_DIR, else start a fresh one)")
    parser.add_argument("--rate", type=float, default=30, help="requests per second (default %(default)s)")
    parser.add_argument("--steady", type=float, default=30, help="seconds of load without change (default 30)")
    parser.add_argument("--naive", action=argparse.BooleanOptionalAction, default=True,
                        help="also roll the naive rename, on a namespace and database of its own (default: yes)")
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="bench-rollout-"))
    own_bed = not (args.bed_dir and Bed(args.bed_dir).is_up())
    bed = Bed(tmp / "bed", node="real", daemon=False) if own_bed else Bed(args.bed_dir)
    if own_bed:
        print(f"starting a bed with a real node in {bed.dir} ...", flush=True)
        bed.start()
    elif bed.node != "real":
        print(f"the bed in {bed.dir} has no real node (node={bed.node})", file=sys.stderr)
        return 1
    server = PostgresServer(Path(tempfile.mkdtemp(prefix="bench-rollout-pg-")))
    server.start()
    api = bed.api_client()
    spaces: list[Namespace] = []
    rows: list[str] = []
    errors: list[str] = []
    try:
        proc = bed.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
        assert proc.returncode == 0, proc.stderr
        print("building the shop's images (cached by content) ...", flush=True)
        for version in ("1.1", "1.2", "2.0", "2.0-naive"):
            shop_ref(bed, version)
        suffix = uuid.uuid4().hex[:6]
        shop = Namespace(bed, api, server, tmp, f"bench-rollout-{suffix}")
        spaces.append(shop)
        shop.roll("1.1")
        print(f"release 1.1 serving in {shop.name}; operator log {shop.operator.log_path}", flush=True)
        with shop.rollout.load("shop", "bench", args.rate) as out:
            start = time.time()
            time.sleep(args.steady)  # the baseline: the load with nothing changing
            windows = [("steady (no change)", start, time.time())]
            print(line(windows[0][0], windows[0][2] - start, loadgen.between(loadgen.read(out), start,
                                                                              windows[0][2])), flush=True)
            for version, name in (("1.2", "rollout, no schema change (1.2)"),
                                  ("2.0", "rollout, rename expand/contract (2.0)")):
                print(f"rolling to {version} ...", flush=True)
                applied = shop.roll(version)
                windows.append((name, applied, time.time()))
                print(line(name, time.time() - applied, loadgen.between(loadgen.read(out), applied, time.time())),
                      flush=True)
        responses = loadgen.read(out)
        for name, begin, end in windows:
            rows.append(line(name, end - begin, loadgen.between(responses, begin, end)))
            summary = loadgen.summarize(loadgen.between(responses, begin, end))
            errors += [f"{name}: {count} x {error}" for error, count in summary.errors.items()]
        if args.naive:
            naive = Namespace(bed, api, server, tmp, f"bench-naive-{suffix}")
            spaces.append(naive)
            naive.roll("1.1")
            with naive.rollout.load("shop", "bench-naive", args.rate) as out:
                print("rolling to 2.0-naive ...", flush=True)
                applied = naive.roll("2.0-naive")
                end = time.time()
            window = loadgen.between(loadgen.read(out), applied, end)
            rows.append(line("rollout, rename in one revision", end - applied, window))
            errors += [f"naive: {count} x {error}" for error, count in loadgen.summarize(window).errors.items()]
        print(f"\nthe served shop, 3 replicas, {args.rate:g} requests/s offered (a third of them writes); each "
              "window from the apply to Ready and rolled out")
        print(f"{'window':<34} {'seconds':>7} {'requests':>8} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'failed':>7}")
        for row in rows:
            print(row)
        for error in errors:
            print("  " + error)
        return 0
    finally:
        for space in spaces:
            space.close()
        server.destroy()
        api.close()  # type: ignore[no-untyped-call]
        if own_bed:
            bed.stop()


if __name__ == "__main__":
    sys.exit(main())
