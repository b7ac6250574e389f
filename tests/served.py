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

DEPLOY = Path(__file__).resolve().parent.parent / "examples" / "shop" / "deploy" / "shop.yaml"
LOADGEN = Path(loadgen.__file__).resolve()
VERSION_LABEL = "app.kubernetes.io/version"
RATE = 10  # requests per second in the tests, a third of them writes (make bench-rollout: 30, as the issue measured)


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
    svc["spec"]["selector"] = {"app": name}
    return [dbm, deploy, svc]


@dataclass
class PodLog:
    """When each pod terminated (its phase turned Succeeded or Failed, or it was deleted, whichever the watch saw
    first) and when each Job was created, with the local time and etcd's revision of the event: etcd's order says
    which came first however late this process saw it."""

    gone: dict[str, tuple[float, int, str]] = field(default_factory=dict)  # pod -> (time, revision, its release)
    created: dict[str, tuple[float, int]] = field(default_factory=dict)  # Job -> (time, revision)
    stop: threading.Event = field(default_factory=threading.Event)

    def last_gone(self, app: str, version: str) -> tuple[float, int]:
        seen = [(t, rv) for name, (t, rv, v) in self.gone.items() if v == version and name.startswith(f"{app}-")]
        assert seen, f"no pod of {app} {version} was seen going"
        return max(seen, key=lambda x: x[1])


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
    def load(self, app: str, name: str, rate: float = RATE) -> Iterator[Path]:
        """The load generator on ``app``'s Service, from inside the bed's network namespace, until the block ends."""
        ip = self.core.read_namespaced_service(app, self.ns).spec.cluster_ip
        out = self.tmp / f"{name}.jsonl"
        with (self.tmp / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen([*self.bed.netns_cmd(), sys.executable, str(LOADGEN), "--url", f"http://{ip}",
                                     "--out", str(out), "--rate", str(rate)], stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: len(loadgen.read(out)) >= rate, 60, f"the load on {app} answered")
            yield out
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)  # the requests in flight answer or time out

    def contract_job(self, app: str, generation: int | None = None) -> dict[str, Any]:
        """The contract Job of ``app`` (of ``generation`` when given): the Job of role contract."""
        jobs = [j for j in self.cluster.jobs(app) if j["metadata"]["labels"][c.ROLE_LABEL] == "contract"
                and (generation is None or j["metadata"]["labels"][c.GENERATION_LABEL] == str(generation))]
        return jobs[-1] if jobs else {}


def watch_pods(api: k8s.ApiClient, ns: str, log: PodLog) -> None:
    """Feed ``log`` from watches of the namespace's pods and Jobs (two threads) until ``log.stop``."""
    core, batch = k8s.CoreV1Api(api), k8s.BatchV1Api(api)
    threading.Thread(target=_watch, args=(batch.list_namespaced_job, ns, log, _job_seen), daemon=True).start()
    _watch(core.list_namespaced_pod, ns, log, _pod_seen)


def _pod_seen(log: PodLog, kind: str, obj: Any) -> None:
    meta = obj.metadata
    if meta.name not in log.gone and (kind == "DELETED" or (obj.status and obj.status.phase in ("Succeeded",
                                                                                                  "Failed"))):
        log.gone[meta.name] = (time.time(), int(meta.resource_version), (meta.labels or {}).get(VERSION_LABEL, ""))


def _job_seen(log: PodLog, kind: str, obj: Any) -> None:
    if kind == "ADDED":
        log.created.setdefault(obj.metadata.name, (time.time(), int(obj.metadata.resource_version)))


def _watch(list_fn: Any, ns: str, log: PodLog, seen: Any) -> None:
    since = list_fn(ns).metadata.resource_version  # from now on, every event, across the watch's restarts
    while not log.stop.is_set():
        with contextlib.suppress(Exception):  # an expired watch is started again from the last revision seen
            for event in watch.Watch().stream(list_fn, ns, resource_version=since, timeout_seconds=5):
                since = event["object"].metadata.resource_version
                seen(log, event["type"], event["object"])
                if log.stop.is_set():
                    return


def _stamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%H:%M:%S.%f")[:-3]


def report(name: str, responses: list[loadgen.Response]) -> loadgen.Summary:
    summary = loadgen.summarize(responses)
    print(f"\n{name}: {summary.line()}")
    for error, count in summary.errors.items():
        print(f"  {count:>5} x {error}")
    return summary


@dataclass(frozen=True)
class Timeline:
    """When the old release stopped and the contract Job of the new one was created: local times (the bed shares
    this machine's clock) and etcd's revisions of the events, which order them exactly."""

    job: str
    created: float
    created_rv: int
    last_gone: float  # the last pod of the old release terminated (after its drain: a terminating pod still serves)
    last_gone_rv: int
    last_answer: float  # the last response the old release sent

    def line(self, app: str, old: str) -> str:
        return (f"{app}: last response of {old} {_stamp(self.last_answer)}; last pod of {old} terminated "
                f"{_stamp(self.last_gone)} (etcd revision {self.last_gone_rv}); contract Job {self.job} created "
                f"{_stamp(self.created)} (etcd revision {self.created_rv})")


def contract_timeline(s: Rollout, app: str, old: str, responses: list[loadgen.Response],
                      generation: int) -> Timeline:
    """The contract Job of ``generation`` next to the last pod and the last response of release ``old``."""
    job = wait_for(lambda: s.contract_job(app, generation), 30, f"the contract Job of generation {generation}")
    name = job["metadata"]["name"]
    created, created_rv = wait_for(lambda: s.pods.created.get(name), 30, f"the watch to see {name} created")
    last_gone, last_gone_rv = s.pods.last_gone(app, old)
    return Timeline(job=name, created=created, created_rv=created_rv, last_gone=last_gone, last_gone_rv=last_gone_rv,
                    last_answer=max(r.t for r in responses if r.version == old))
