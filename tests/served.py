"""The served shop on the bed (tests/e2e/test_e2e_served.py, tests/bench_rollout.py): a release's objects as
examples/shop/deploy/shop.yaml has them, one apply per release, the load generator run inside the bed's network
namespace (where the Service's ClusterIP routes), and the pods' deletions as a watch saw them."""

from __future__ import annotations

import contextlib
import copy
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes import watch

import loadgen
from alembic_operator import constants as c
from bed import images
from bed.controlplane import Bed
from e2e import Database
from harness import Cluster, wait_for
from shopapp import HEADS

DEPLOY = Path(__file__).resolve().parents[2] / "examples" / "shop" / "deploy" / "shop.yaml"
LOADGEN = Path(loadgen.__file__).resolve()
VERSION_LABEL = "app.kubernetes.io/version"
RATE = 30  # requests per second, a third of them writes: what the issue measured today's outage under


def shop_ref(bed: Bed, version: str) -> str:
    """The shop's image of a release, in the bed's registry."""
    return images.push(images.shop_image(version=version), f"{bed.registry}/acme/shop:{version}", bed.netns_cmd())


def release(ns: str, name: str, version: str, image: str) -> list[dict[str, Any]]:
    """examples/shop/deploy/shop.yaml's DatabaseMigration, Deployment and Service for one release, renamed
    ``name`` in ``ns``: what a GitOps repository holds for it (backups off: the contract's DROP is approved up
    front, and a backup Job per run is not what this test measures)."""
    docs = {d["kind"]: d for d in yaml.safe_load_all(DEPLOY.read_text())}
    dbm, deploy, svc = (copy.deepcopy(docs[k]) for k in ("DatabaseMigration", "Deployment", "Service"))
    for doc in (dbm, deploy, svc):
        doc["metadata"] = {"name": name, "namespace": ns}
    dbm["spec"].update(database={"urlSecretRef": {"name": f"{name}-db", "key": "url"}}, backup={"enabled": False},
                       approval={"allowDestructive": True})
    dbm["spec"]["migrations"]["image"] = image
    del dbm["spec"]["driftCheck"], dbm["spec"]["jobTemplate"]
    spec = deploy["spec"]
    spec["selector"] = {"matchLabels": {"app": name}}
    tmpl = spec["template"]
    tmpl["metadata"]["labels"].update({"app": name, VERSION_LABEL: version, c.WAIT_FOR_LABEL: name})
    tmpl["metadata"]["annotations"][c.REVISION_ANNOTATION] = HEADS[version]
    container = tmpl["spec"]["containers"][0]
    container["image"] = image
    container["env"][0]["valueFrom"]["secretKeyRef"]["name"] = f"{name}-db"
    container["env"][1]["value"] = "3"  # drain: the bed's kube-proxy drops an endpoint within a second
    svc["spec"]["selector"] = {"app": name}
    return [dbm, deploy, svc]


@dataclass
class PodLog:
    """Every pod deletion the namespace's watch saw, with the local time (the contract must come after)."""

    gone: dict[str, tuple[float, str]] = field(default_factory=dict)  # pod -> (time, its release)
    stop: threading.Event = field(default_factory=threading.Event)

    def last_gone(self, app: str, version: str) -> float:
        times = [t for name, (t, v) in self.gone.items() if v == version and name.startswith(f"{app}-")]
        assert times, f"no pod of {app} {version} was seen going"
        return max(times)


@dataclass
class Rollout:
    """The shop's releases rolled out in one namespace of the bed, and what the test or benchmark looks at."""

    bed: Bed
    cluster: Cluster
    db: Database  # the shop's database, as the host reaches it
    tmp: Path
    pods: PodLog

    @property
    def ns(self) -> str:
        return self.cluster.ns

    @property
    def core(self) -> k8s.CoreV1Api:
        return self.cluster.core

    @property
    def apps(self) -> k8s.AppsV1Api:
        return k8s.AppsV1Api(self.cluster.api)

    def apply(self, docs: list[dict[str, Any]]) -> None:
        """One `kubectl apply` of every object of a release."""
        proc = self.bed.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                                input=yaml.safe_dump_all(docs))
        assert proc.returncode == 0, proc.stderr

    def kubectl(self, *args: str) -> str:
        proc = self.bed.kubectl(*args, "-n", self.ns)
        assert proc.returncode == 0, proc.stderr
        return str(proc.stdout)

    def serving(self, app: str) -> dict[str, list[str]]:
        """The pods of ``app`` by release: {version: [pod, ...]}, deleted ones left out."""
        out: dict[str, list[str]] = {}
        for pod in self.core.list_namespaced_pod(self.ns, label_selector=f"app={app}").items:
            if not pod.metadata.deletion_timestamp:
                out.setdefault(pod.metadata.labels[VERSION_LABEL], []).append(pod.metadata.name)
        return out

    def rolled_out(self, app: str, version: str, replicas: int = 3) -> bool:
        dep = self.apps.read_namespaced_deployment(app, self.ns)
        st = dep.status
        pods = self.serving(app)
        return bool(dep.metadata.generation == st.observed_generation and st.updated_replicas == replicas
                    and st.ready_replicas == replicas and (st.replicas or 0) == replicas
                    and list(pods) == [version] and len(pods[version]) == replicas)

    def wait_rolled_out(self, app: str, version: str, timeout: float = 240) -> None:
        wait_for(lambda: self.rolled_out(app, version), timeout, f"{app} rolled out at {version}: "
                 f"{self.serving(app)}", interval=0.5)

    @contextlib.contextmanager
    def load(self, app: str, name: str) -> Iterator[Path]:
        """The load generator on ``app``'s Service, from inside the bed's network namespace, until the block ends."""
        ip = self.core.read_namespaced_service(app, self.ns).spec.cluster_ip
        out = self.tmp / f"{name}.jsonl"
        with (self.tmp / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen([*self.bed.netns_cmd(), sys.executable, str(LOADGEN), "--url", f"http://{ip}",
                                     "--out", str(out), "--rate", str(RATE)], stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: len(loadgen.read(out)) >= RATE, 60, f"the load on {app} answered")
            yield out
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)

    def contract_job(self, app: str, generation: int | None = None) -> dict[str, Any]:
        """The contract Job of ``app`` (of ``generation`` when given): the Job of role contract."""
        jobs = [j for j in self.cluster.jobs(app) if j["metadata"]["labels"][c.ROLE_LABEL] == "contract"
                and (generation is None or j["metadata"]["labels"][c.GENERATION_LABEL] == str(generation))]
        return jobs[-1] if jobs else {}


def watch_pods(api: k8s.ApiClient, ns: str, log: PodLog) -> None:
    core = k8s.CoreV1Api(api)
    while not log.stop.is_set():
        with contextlib.suppress(Exception):  # a watch that expires is started again
            for event in watch.Watch().stream(core.list_namespaced_pod, ns, timeout_seconds=5):
                pod = event["object"]
                if event["type"] == "DELETED":
                    log.gone[pod.metadata.name] = (time.time(), (pod.metadata.labels or {}).get(VERSION_LABEL, ""))
                if log.stop.is_set():
                    return


def _stamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%H:%M:%S.%f")[:-3]


def _api_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def report(name: str, responses: list[loadgen.Response]) -> loadgen.Summary:
    summary = loadgen.summarize(responses)
    print(f"\n{name}: {summary.line()}")
    for error, count in summary.errors.items():
        print(f"  {count:>5} x {error}")
    return summary


def contract_after_old_pods(s: Rollout, app: str, old: str, responses: list[loadgen.Response],
                            generation: int) -> None:
    """The contract Job of ``generation`` was created after the last pod of release ``old`` was gone, and no
    response of ``old`` came after it started; both times printed."""
    job = wait_for(lambda: s.contract_job(app, generation), 30, f"the contract Job of generation {generation}")
    created = _api_time(job["metadata"]["creationTimestamp"])
    started = _api_time(job["status"].get("startTime") or job["metadata"]["creationTimestamp"])
    last_gone = s.pods.last_gone(app, old)
    last_answer = max(r.t for r in responses if r.version == old)
    print(f"{app}: last response of {old} {_stamp(last_answer)}; last pod of {old} gone {_stamp(last_gone)}; "
          f"contract Job {job['metadata']['name']} created {_stamp(created)}, started {_stamp(started)} (API "
          "times, whole seconds)")
    assert created >= int(last_gone), "the contract Job was created before the last old pod was gone"
    assert started >= int(last_answer), "the old release answered after the contract Job started"
