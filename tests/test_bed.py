"""The bed's node agent (bed.nodeagent) runs pods like a kubelet would, as far as the operator can tell.

Everything goes through the API server; the only peeks at the host are PIDs (containerID ``bed://<pid>``), to prove
that processes are really gone.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from bed.controlplane import Bed
from harness import wait_for as eventually

pytestmark = pytest.mark.bed

JSON = dict[str, Any]
PY = "python"


# --- helpers ----------------------------------------------------------------------------------------------------




class Kube:
    """Thin dict-based helpers over the kubernetes client, for one namespace."""

    def __init__(self, api: k8s.ApiClient, namespace: str) -> None:
        self.api = api
        self.ns = namespace
        # Any: the manifests here are plain dicts, which the client accepts in place of its models
        self.core: Any = k8s.CoreV1Api(api)
        self.batch: Any = k8s.BatchV1Api(api)
        self.apps: Any = k8s.AppsV1Api(api)

    def to_dict(self, obj: Any) -> JSON:
        data = self.api.sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]
        assert isinstance(data, dict)
        return data

    def pod(self, name: str) -> JSON | None:
        try:
            return self.to_dict(self.core.read_namespaced_pod(name, self.ns))
        except k8s.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def pods(self, selector: str) -> list[JSON]:
        return [self.to_dict(p) for p in self.core.list_namespaced_pod(self.ns, label_selector=selector).items]

    def job_pod(self, job: str) -> JSON | None:
        pods = self.pods(f"job-name={job}")
        return pods[0] if pods else None

    def job_condition(self, job: str) -> str | None:
        """'Complete' or 'Failed' once the Job has finished."""
        status = self.to_dict(self.batch.read_namespaced_job(job, self.ns)).get("status") or {}
        for cond in status.get("conditions") or []:
            if cond["type"] in ("Complete", "Failed") and cond["status"] == "True":
                return str(cond["type"])
        return None

    def wait_job(self, job: str, timeout: float = 30) -> str:
        return eventually(lambda: self.job_condition(job), timeout, f"Job {job} to finish")

    def wait_phase(self, name: str, *phases: str, timeout: float = 30) -> JSON:
        def check() -> JSON | None:
            pod = self.pod(name)
            return pod if pod and (pod.get("status") or {}).get("phase") in phases else None

        return eventually(check, timeout, f"pod {name} to be {'/'.join(phases)}")


def container(name: str, script: str, **extra: Any) -> JSON:
    return {"name": name, "image": "python:3.11-slim", "command": [PY, "-c", script], **extra}


def job(name: str, containers: list[JSON], backoff_limit: int = 0, **pod_spec: Any) -> JSON:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": backoff_limit,
            "template": {"spec": {"restartPolicy": "Never", "containers": containers, **pod_spec}},
        },
    }


def pod_manifest(name: str, containers: list[JSON], **spec: Any) -> JSON:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "containers": containers, **spec},
    }


def terminated(pod: JSON, index: int = 0) -> JSON:
    state = pod["status"]["containerStatuses"][index]["state"]
    assert "terminated" in state, state
    return dict(state["terminated"])


def pid_of(pod: JSON, index: int = 0) -> int:
    cid = pod["status"]["containerStatuses"][index]["containerID"]
    assert cid.startswith("bed://"), cid
    return int(cid.removeprefix("bed://"))


def process_alive(pid: int, marker: str) -> bool:
    """True when `pid` is a live process whose command line holds `marker` (not a reused PID, not a zombie)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return marker.encode() in cmdline and state not in ("Z", "X")


SLEEPER = "import sys, time; time.sleep(3600)"


# --- fixtures ---------------------------------------------------------------------------------------------------


@pytest.fixture
def kube(bed: Bed, kube_api: k8s.ApiClient, namespace: str) -> Iterator[Kube]:
    """The test's namespace, once its default ServiceAccount exists (pods cannot be created before)."""
    if not bed.node_agent:
        pytest.skip("the bed runs without its node agent")
    helper = Kube(kube_api, namespace)

    def default_sa() -> bool:
        try:
            helper.core.read_namespaced_service_account("default", namespace)
        except k8s.ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    eventually(default_sa, what="the default ServiceAccount")
    yield helper


# --- tests ------------------------------------------------------------------------------------------------------


def test_job_that_exits_0_completes(kube: Kube) -> None:
    kube.batch.create_namespaced_job(kube.ns, job("ok", [container("main", "print('hello from the bed')")]))
    assert kube.wait_job("ok") == "Complete"
    pod = kube.job_pod("ok")
    assert pod is not None
    assert pod["status"]["phase"] == "Succeeded"
    assert pod["spec"]["nodeName"] == "bed-node"
    assert pod["status"]["podIP"] == "127.0.0.1"
    done = terminated(pod)
    assert done["exitCode"] == 0
    assert done["reason"] == "Completed"
    conditions = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
    assert conditions["PodScheduled"] == "True"
    assert conditions["Initialized"] == "True"
    assert conditions["Ready"] == "False"  # completed


def test_job_that_exits_3_fails_with_its_exit_code(kube: Kube) -> None:
    kube.batch.create_namespaced_job(kube.ns, job("bad", [container("main", "raise SystemExit(3)")]))
    assert kube.wait_job("bad") == "Failed"
    pod = kube.job_pod("bad")
    assert pod is not None
    assert pod["status"]["phase"] == "Failed"
    done = terminated(pod)
    assert done["exitCode"] == 3
    assert done["reason"] == "Error"


def test_secret_env_configmap_init_container_and_pvc_outlive_the_pod(kube: Kube) -> None:
    secret_value = f"s3cret-{uuid.uuid4().hex[:8]}"
    kube.core.create_namespaced_secret(
        kube.ns, {"metadata": {"name": "db"}, "stringData": {"password": secret_value}, "type": "Opaque"}
    )
    kube.core.create_namespaced_config_map(kube.ns, {"metadata": {"name": "cfg"}, "data": {"greeting": "hello"}})
    kube.core.create_namespaced_persistent_volume_claim(
        kube.ns,
        {
            "metadata": {"name": "data"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Mi"}}},
        },
    )
    volumes = [
        {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
        {"name": "scratch", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "cfg", "configMap": {"name": "cfg", "items": [{"key": "greeting", "path": "g.txt"}]}},
    ]
    init = container(
        "init",
        "open('/mnt/bed-test/scratch/from-init', 'w').write('init-ran')",
        volumeMounts=[{"name": "scratch", "mountPath": "/mnt/bed-test/scratch"}],
    )
    writer = container(
        "main",
        "import os; assert open('/mnt/bed-test/scratch/from-init').read() == 'init-ran';"
        "assert open('/mnt/bed-test/cfg/g.txt').read() == 'hello';"
        "assert os.listdir('/tmp') == [];"
        "open('/mnt/bed-test/data/out.txt', 'w').write(os.environ['PASSWORD'] + ':' + os.environ['POD'])",
        env=[
            {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ],
        volumeMounts=[
            {"name": "data", "mountPath": "/mnt/bed-test/data"},
            {"name": "scratch", "mountPath": "/mnt/bed-test/scratch"},
            {"name": "cfg", "mountPath": "/mnt/bed-test/cfg", "readOnly": True},
            # on /tmp, over the agent's state directory when that is under /tmp: the other sources stay reachable
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    )
    kube.batch.create_namespaced_job(kube.ns, job("write", [writer], initContainers=[init], volumes=volumes))
    assert kube.wait_job("write") == "Complete", kube.job_pod("write")
    writer_pod = kube.job_pod("write")
    assert writer_pod is not None
    assert writer_pod["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 0

    reader = container(
        "main",
        "import os, sys; data = open('/mnt/bed-test/data/out.txt').read();"
        "open('/dev/termination-log', 'w').write(data.split(':')[1]);"
        "sys.exit(0 if data.split(':')[0] == os.environ['EXPECTED'] else 1)",
        env=[{"name": "EXPECTED", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}],
        volumeMounts=[{"name": "data", "mountPath": "/mnt/bed-test/data", "readOnly": True}],
    )
    kube.batch.create_namespaced_job(kube.ns, job("read", [reader], volumes=volumes[:1]))
    assert kube.wait_job("read") == "Complete", kube.job_pod("read")
    reader_pod = kube.job_pod("read")
    assert reader_pod is not None
    assert terminated(reader_pod)["message"] == writer_pod["metadata"]["name"]


def test_termination_messages(kube: Kube) -> None:
    containers = [
        container(
            "custom-path",
            "open('/mnt/bed-test/msg', 'w').write('all done')",
            terminationMessagePath="/mnt/bed-test/msg",
        ),
        container(
            "from-logs",
            "print('first line'); print('it broke'); raise SystemExit(2)",
            terminationMessagePolicy="FallbackToLogsOnError",
        ),
    ]
    kube.core.create_namespaced_pod(kube.ns, pod_manifest("msg", containers))
    pod = kube.wait_phase("msg", "Failed")
    assert terminated(pod, 0)["message"] == "all done"
    failed = terminated(pod, 1)
    assert failed["exitCode"] == 2
    assert failed["message"].strip().endswith("it broke")
    # kubectl logs: the API server reads them from the agent's kubelet endpoint
    logs = kube.core.read_namespaced_pod_log("msg", kube.ns, container="from-logs")
    assert logs.splitlines() == ["first line", "it broke"]


def test_scheduling_gate_holds_the_pod_until_removed(kube: Kube) -> None:
    gated = pod_manifest("gated", [container("main", "print('released')")])
    gated["spec"]["schedulingGates"] = [{"name": "example.com/hold"}]
    kube.core.create_namespaced_pod(kube.ns, gated)
    # An ungated pod created afterwards gets bound and runs: the agent has seen the gated one and left it alone.
    kube.core.create_namespaced_pod(kube.ns, pod_manifest("free", [container("main", "print('free')")]))
    kube.wait_phase("free", "Succeeded")
    pod = kube.pod("gated")
    assert pod is not None
    assert not pod["spec"].get("nodeName")
    assert pod["status"]["phase"] == "Pending"
    scheduled = next(c for c in pod["status"]["conditions"] if c["type"] == "PodScheduled")
    assert (scheduled["status"], scheduled["reason"]) == ("False", "SchedulingGated")

    released = time.monotonic()
    kube.core.patch_namespaced_pod("gated", kube.ns, [{"op": "remove", "path": "/spec/schedulingGates"}])
    pod = kube.wait_phase("gated", "Running", "Succeeded", timeout=15)
    print(f"gate removed -> {pod['status']['phase']} in {time.monotonic() - released:.2f}s")
    assert pod["spec"]["nodeName"] == "bed-node"
    assert kube.wait_phase("gated", "Succeeded")["status"]["phase"] == "Succeeded"


def test_deployment_pods_run_ready_and_die_on_scale_down(kube: Kube) -> None:
    marker = f"bed-deploy-{kube.ns}"
    labels = {"app": "sleeper"}
    main = {
        "name": "main",
        "image": "python:3.11-slim",
        "command": [PY, "-c", SLEEPER, marker],
        "readinessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 1},
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "sleeper"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [main], "terminationGracePeriodSeconds": 5},
            },
        },
    }
    kube.apps.create_namespaced_deployment(kube.ns, deployment)

    def available() -> bool:
        status = kube.to_dict(kube.apps.read_namespaced_deployment("sleeper", kube.ns)).get("status") or {}
        return bool(status.get("availableReplicas") == 2)

    eventually(available, timeout=30, what="2 available replicas")
    pods = [p for p in kube.pods("app=sleeper") if p["status"]["phase"] == "Running"]
    assert len(pods) == 2
    pids = [pid_of(p) for p in pods]
    assert all(process_alive(pid, marker) for pid in pids), pids
    assert all(p["status"]["containerStatuses"][0]["ready"] for p in pods)

    kube.apps.patch_namespaced_deployment_scale("sleeper", kube.ns, {"spec": {"replicas": 0}})
    eventually(lambda: not kube.pods("app=sleeper"), timeout=30, what="the pods to be deleted")
    eventually(lambda: not any(process_alive(pid, marker) for pid in pids), timeout=5, what="the processes to end")


def test_active_deadline_kills_a_sleeping_job(kube: Kube) -> None:
    marker = f"bed-deadline-{kube.ns}"
    sleeper = {"name": "main", "image": "python:3.11-slim", "command": [PY, "-c", SLEEPER, marker]}
    kube.batch.create_namespaced_job(kube.ns, job("slow", [sleeper], activeDeadlineSeconds=2))
    pod = eventually(
        lambda: (p := kube.job_pod("slow")) and p["status"].get("phase") == "Running" and p,
        what="the Job's pod running",
    )
    pid = pid_of(pod)
    assert process_alive(pid, marker)
    assert kube.wait_job("slow") == "Failed"
    pod = eventually(
        lambda: (p := kube.job_pod("slow")) and p["status"].get("phase") == "Failed" and p, what="the pod to fail"
    )
    assert pod["status"]["reason"] == "DeadlineExceeded"
    assert not process_alive(pid, marker)


def test_namespace_deletion_removes_pods_and_processes(kube: Kube) -> None:
    marker = f"bed-ns-{kube.ns}"
    main = {"name": "main", "image": "python:3.11-slim", "command": [PY, "-c", SLEEPER, marker]}
    kube.core.create_namespaced_pod(kube.ns, pod_manifest("sleeper", [main], terminationGracePeriodSeconds=2))
    pid = pid_of(kube.wait_phase("sleeper", "Running"))
    assert process_alive(pid, marker)
    kube.core.delete_namespace(kube.ns)

    def namespace_gone() -> bool:
        try:
            kube.core.read_namespace(kube.ns)
        except k8s.ApiException as exc:
            if exc.status == 404:
                return True
            raise
        return False

    eventually(namespace_gone, timeout=60, what="the namespace to be deleted")
    assert not process_alive(pid, marker)


def test_missing_secret_is_a_create_container_config_error_until_it_exists(kube: Kube) -> None:
    main = container(
        "main",
        "import os; print(len(os.environ['TOKEN']))",
        env=[{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "later", "key": "token"}}}],
    )
    kube.core.create_namespaced_pod(kube.ns, pod_manifest("waits", [main]))

    def config_error() -> JSON | None:
        pod = kube.pod("waits")
        statuses = ((pod or {}).get("status") or {}).get("containerStatuses") or []
        waiting = statuses[0]["state"].get("waiting") if statuses else None
        return waiting if waiting and waiting.get("reason") == "CreateContainerConfigError" else None

    waiting = eventually(config_error, what="CreateContainerConfigError")
    assert "later" in waiting["message"]
    pod = kube.pod("waits")
    assert pod is not None
    assert pod["status"]["phase"] == "Pending"
    kube.core.create_namespaced_secret(kube.ns, {"metadata": {"name": "later"}, "stringData": {"token": "x"}})
    assert kube.wait_phase("waits", "Succeeded", timeout=20)["status"]["phase"] == "Succeeded"


def test_pod_calls_the_api_server_with_its_service_account_token(kube: Kube) -> None:
    script = """
import json, os, ssl, urllib.request
sa = '/var/run/secrets/kubernetes.io/serviceaccount'
token = open(sa + '/token').read()
namespace = open(sa + '/namespace').read()
ctx = ssl.create_default_context(cafile=sa + '/ca.crt')
url = 'https://%s:%s/apis/authentication.k8s.io/v1/selfsubjectreviews' % (
    os.environ['KUBERNETES_SERVICE_HOST'], os.environ['KUBERNETES_SERVICE_PORT'])
body = json.dumps({'apiVersion': 'authentication.k8s.io/v1', 'kind': 'SelfSubjectReview'}).encode()
req = urllib.request.Request(url, data=body, method='POST', headers={
    'Authorization': 'Bearer ' + token, 'Content-Type': 'application/json'})
review = json.load(urllib.request.urlopen(req, context=ctx, timeout=10))
open('/dev/termination-log', 'w').write(namespace + ' ' + review['status']['userInfo']['username'])
"""
    kube.core.create_namespaced_pod(kube.ns, pod_manifest("whoami", [container("main", script)]))
    pod = kube.wait_phase("whoami", "Succeeded", "Failed")
    assert pod["status"]["phase"] == "Succeeded", terminated(pod)
    assert terminated(pod)["message"] == f"{kube.ns} system:serviceaccount:{kube.ns}:default"
