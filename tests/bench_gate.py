"""Benchmark: from a DatabaseMigration turning Ready to the last held pod losing its scheduling gate.

    make bench-gate                      # or: PYTHONPATH=tests .venv/bin/python tests/bench_gate.py
    python tests/bench_gate.py --pods 1 10 100 --rounds 20 --bed-dir .bed

On a bed with a real node (BED_DIR / --bed-dir: reuse a running one; otherwise a fresh one is started and
stopped), with the operator's gating part running as its own process inside the bed's network namespace (webhook
included, on its 127.0.0.1, where the API server calls it): each round creates N labelled pods while the resource
is migrating (the webhook holds them), waits until all are held, then writes a Ready status and watches the pods;
the figure is the time from the status write to the watch showing the last pod without the gate. The pods use a
real image (the bed's busybox) but name a scheduler that does not exist, so kube-scheduler and the kubelet leave
them alone after the release: the benchmark times the operator, not the node's pod start-up. Prints median, p99
and max per N. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes import watch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from alembic_operator import constants as c
from bed import testimages
from bed.controlplane import Bed
from gating import GateOperator, Migration, held, remove_webhook_configuration
from harness import Cluster, wait_for

REPO = Path(__file__).resolve().parent.parent
CRD = REPO / "crds" / "databasemigrations.yaml"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


class NetnsGateOperator(GateOperator):
    """GateOperator run inside the real bed's network namespace (the API server calls its webhook there); its
    liveness endpoint is probed from inside too."""

    def __init__(self, bed: Bed, namespace: str, log_path: Path) -> None:
        super().__init__(bed.kubeconfig_in_netns, namespace, log_path)
        self.bed = bed

    def start(self) -> NetnsGateOperator:
        log = self.log_path.open("ab")
        log.write(f"--- start {self.starts}: {' '.join(self.command())}\n".encode())
        log.flush()
        env = {**self.environment(), "PATH": self.bed.netns_env()["PATH"]}
        self.proc = subprocess.Popen(self.bed.exec_cmd(self.command()), stdout=log, stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True)
        self.starts += 1
        wait_for(self.healthy, 60, "the operator's liveness endpoint")
        wait_for(lambda: f"{self.config_name} points at" in self.log(), 30, "the webhook configuration")
        return self

    def healthy(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"the operator exited; log:\n{self.log()[-3000:]}")
        probe = subprocess.run(self.bed.exec_cmd(["curl", "-sf", "-m", "1", f"http://127.0.0.1:{self.port}/healthz"]),
                               capture_output=True, check=False, timeout=10)
        return probe.returncode == 0


def pod_body(i: int, rnd: int, image: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"p{rnd}-{i}", "labels": {c.WAIT_FOR_LABEL: "bench", "bench": str(rnd)},
                         "annotations": {c.REVISION_ANNOTATION: f"r{rnd}"}},
            "spec": {"schedulerName": "bench-no-scheduler", "terminationGracePeriodSeconds": 0,
                     "containers": [{"name": "app", "image": image, "command": ["sleep", "3600"]}]}}


class Watcher(threading.Thread):
    """Records when each pod of a round is first seen without our gate."""

    def __init__(self, core: k8s.CoreV1Api, ns: str, rnd: int, names: set[str], resource_version: str) -> None:
        super().__init__(daemon=True)
        self.core, self.ns, self.rnd, self.rv = core, ns, rnd, resource_version
        self.pending = set(names)
        self.released: dict[str, float] = {}
        self.done = threading.Event()
        self.started_watch = threading.Event()
        self.w = watch.Watch()

    def run(self) -> None:
        stream = self.w.stream(self.core.list_namespaced_pod, self.ns, label_selector=f"bench={self.rnd}",
                               resource_version=self.rv, timeout_seconds=120)
        self.started_watch.set()
        for event in stream:
            obj = event["raw_object"] if "raw_object" in event else event["object"]
            obj = obj if isinstance(obj, dict) else self.core.api_client.sanitize_for_serialization(obj)
            name = obj["metadata"]["name"]
            if name in self.pending and not held(obj):
                self.released[name] = time.monotonic()
                self.pending.discard(name)
                if not self.pending:
                    self.done.set()
                    self.w.stop()
                    return


def run_round(cluster: Cluster, core: k8s.CoreV1Api, m: Migration, n: int, rnd: int, image: str) -> float:
    ns = cluster.ns
    revision = f"r{rnd}"
    previous = f"r{rnd - 1}"
    lineage = [f"r{i}" for i in range(rnd, -1, -1)]
    m.retarget(revision)
    m.simulate("migrating", previous, revision, lineage=lineage, revisions=[revision], start=previous)
    names = {f"p{rnd}-{i}" for i in range(n)}
    for i in range(n):
        core.create_namespaced_pod(ns, pod_body(i, rnd, image))

    def all_held() -> str | None:
        resp = core.list_namespaced_pod(ns, label_selector=f"bench={rnd}", _preload_content=False)
        data = json.loads(resp.data)
        pods = data["items"]
        ok = len(pods) == n and all(held(p) for p in pods)
        return str(data["metadata"]["resourceVersion"]) if ok else None

    rv = wait_for(all_held, 120, f"{n} pods held")
    watcher = Watcher(core, ns, rnd, names, rv)
    watcher.start()
    watcher.started_watch.wait(10)
    time.sleep(0.3)  # the watch request is on the wire
    t0 = time.monotonic()
    m.simulate("ready", revision, revision, lineage=lineage, revisions=[revision], start=previous)
    if not watcher.done.wait(60):
        raise RuntimeError(f"round {rnd}: {len(watcher.pending)} pod(s) still held after 60s")
    elapsed = max(watcher.released.values()) - t0
    core.delete_collection_namespaced_pod(ns, label_selector=f"bench={rnd}", grace_period_seconds=0)
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--rounds", type=int, default=20, help="rounds per pod count (default %(default)s)")
    parser.add_argument("--bed-dir", default=os.environ.get("BED_DIR"),
                        help="a running bed to use (default: $BED_DIR, else start a fresh one)")
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="bench-gate-"))
    own_bed = not (args.bed_dir and Bed(args.bed_dir).is_up())
    bed = Bed(tmp / "bed", node="real", daemon=False) if own_bed else Bed(args.bed_dir)
    if own_bed:
        print(f"starting a bed with a real node in {bed.dir} ...", flush=True)
        bed.start()
    elif bed.node != "real":
        print(f"the bed in {bed.dir} has no real node (node={bed.node})", file=sys.stderr)
        return 1
    image = testimages.busybox(bed)
    api = bed.api_client()
    core = k8s.CoreV1Api(api)
    ns = f"bench-gate-{uuid.uuid4().hex[:6]}"
    operator: GateOperator | None = None
    try:
        proc = bed.kubectl("apply", "--server-side", "-f", str(CRD),
                             "-f", str(CRD.with_name("databasemigrationsets.yaml")))
        assert proc.returncode == 0, proc.stderr
        core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=ns)))
        cluster = Cluster(api, ns)
        operator = NetnsGateOperator(bed, ns, tmp / "operator.log").start()
        print(f"operator log: {operator.log_path}", flush=True)
        m = Migration(cluster, name="bench", target="r0")
        m.simulate("ready", "r0", "r0", lineage=["r0"], revisions=["r0"], start="base")
        rnd = 0
        results: dict[int, list[float]] = {}
        for n in args.pods:
            rnd += 1
            run_round(cluster, core, m, n, rnd, image)  # warm-up, not counted
            samples = []
            for _ in range(args.rounds):
                rnd += 1
                samples.append(run_round(cluster, core, m, n, rnd, image))
            results[n] = samples
            print(f"{n:>4} held pods: median {statistics.median(samples) * 1000:7.1f} ms   "
                  f"p99 {percentile(samples, 0.99) * 1000:7.1f} ms   max {max(samples) * 1000:7.1f} ms   "
                  f"({len(samples)} rounds)", flush=True)
        print("\nReady -> last gate removed (status write on the client to the watch event of the last pod)")
        print(f"{'pods':>6} {'rounds':>7} {'median ms':>10} {'p99 ms':>8} {'max ms':>8}")
        for n, samples in results.items():
            print(f"{n:>6} {len(samples):>7} {statistics.median(samples) * 1000:>10.1f} "
                  f"{percentile(samples, 0.99) * 1000:>8.1f} {max(samples) * 1000:>8.1f}")
        return 0
    finally:
        if operator is not None:
            operator.stop()
            remove_webhook_configuration(api, operator.config_name)
        try:
            cluster_obj = Cluster(api, ns)
            for obj in cluster_obj.custom.list_namespaced_custom_object(c.GROUP, c.VERSION, ns, c.PLURAL)["items"]:
                cluster_obj.patch(obj["metadata"]["name"], {"metadata": {"finalizers": None}})
            core.delete_namespace(ns, propagation_policy="Background")
        except k8s.ApiException:
            pass
        api.close()  # type: ignore[no-untyped-call]
        if own_bed:
            bed.stop(purge=True)


if __name__ == "__main__":
    sys.exit(main())
