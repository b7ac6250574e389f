"""The bed's real node (kubelet, containerd, runc, kube-proxy, kube-scheduler) runs pods as a cluster does.

Everything goes through the API server, with images from the bed's registry (tiny busybox images, bed.testimages);
the only peeks at the host look for the containers' processes, to prove that they are really gone.
"""

from __future__ import annotations

import ipaddress
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from bed import testimages
from bed.controlplane import Bed
from bed.postgres import Database
from harness import wait_for as eventually

pytestmark = pytest.mark.bed

JSON = dict[str, Any]
POD_CIDR = ipaddress.ip_network("198.19.0.0/24")
BUSYBOX = ""  # set by the `kube` fixture: the image reference in the bed's registry


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


def container(name: str, script: str, *args: str, **extra: Any) -> JSON:
    """A busybox container running a shell script (``args`` become $0, $1...)."""
    return {"name": name, "image": BUSYBOX, "command": ["sh", "-c", script, *args], **extra}


def sleeper(name: str, marker: str, **extra: Any) -> JSON:
    """Sleeps until SIGTERM; ``marker`` is its $0, so the host can find its process."""
    return container(name, "trap 'exit 0' TERM; while :; do sleep 1; done", marker, **extra)


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


def processes_with(marker: str) -> list[int]:
    """PIDs of live processes (seen from the host) whose command line holds ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def waiting_reason(kube: Kube, pod_name: str, *reasons: str) -> JSON | None:
    pod = kube.pod(pod_name)
    statuses = ((pod or {}).get("status") or {}).get("containerStatuses") or []
    waiting = statuses[0]["state"].get("waiting") if statuses else None
    return waiting if waiting and waiting.get("reason") in reasons else None


# --- fixtures ---------------------------------------------------------------------------------------------------


@pytest.fixture
def kube(bed: Bed, kube_api: k8s.ApiClient) -> Iterator[Kube]:
    """A fresh namespace on the real bed, once its default ServiceAccount exists (pods cannot be created before)."""
    global BUSYBOX
    BUSYBOX = testimages.busybox(bed)
    helper = Kube(kube_api, f"t-{uuid.uuid4().hex[:8]}")
    helper.core.create_namespace({"metadata": {"name": helper.ns}})

    def default_sa() -> bool:
        try:
            helper.core.read_namespaced_service_account("default", helper.ns)
        except k8s.ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    eventually(default_sa, what="the default ServiceAccount")
    yield helper
    try:
        helper.core.delete_namespace(helper.ns, propagation_policy="Background")
    except k8s.ApiException as exc:
        if exc.status != 404:
            raise


# --- tests ------------------------------------------------------------------------------------------------------


def test_job_that_exits_0_completes(kube: Kube) -> None:
    kube.batch.create_namespaced_job(kube.ns, job("ok", [container("main", "echo hello from the bed")]))
    assert kube.wait_job("ok") == "Complete"
    pod = kube.job_pod("ok")
    assert pod is not None
    assert pod["status"]["phase"] == "Succeeded"
    assert pod["spec"]["nodeName"] == "bed-node"
    assert ipaddress.ip_address(pod["status"]["podIP"]) in POD_CIDR
    assert pod["status"]["containerStatuses"][0]["containerID"].startswith("containerd://")
    done = terminated(pod)
    assert done["exitCode"] == 0
    assert done["reason"] == "Completed"
    conditions = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
    assert conditions["PodScheduled"] == "True"
    assert conditions["Initialized"] == "True"
    assert conditions["Ready"] == "False"  # completed


def test_job_that_exits_3_fails_with_its_exit_code(kube: Kube) -> None:
    kube.batch.create_namespaced_job(kube.ns, job("bad", [container("main", "exit 3")]))
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
        {"name": "cfg", "configMap": {"name": "cfg", "items": [{"key": "greeting", "path": "g.txt"}]}},
    ]
    init = container(
        "init", "echo -n init-ran > /mnt/scratch/from-init",
        volumeMounts=[{"name": "scratch", "mountPath": "/mnt/scratch"}],
    )  # fmt: skip
    writer = container(
        "main",
        'test "$(cat /mnt/scratch/from-init)" = init-ran && test "$(cat /mnt/cfg/g.txt)" = hello'
        ' && echo -n "$PASSWORD:$POD" > /mnt/data/out.txt',
        env=[
            {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ],
        volumeMounts=[
            {"name": "data", "mountPath": "/mnt/data"},
            {"name": "scratch", "mountPath": "/mnt/scratch"},
            {"name": "cfg", "mountPath": "/mnt/cfg", "readOnly": True},
        ],
    )
    kube.batch.create_namespaced_job(kube.ns, job("write", [writer], initContainers=[init], volumes=volumes))
    assert kube.wait_job("write", timeout=60) == "Complete", kube.job_pod("write")
    writer_pod = kube.job_pod("write")
    assert writer_pod is not None
    assert writer_pod["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    claim = kube.to_dict(kube.core.read_namespaced_persistent_volume_claim("data", kube.ns))
    assert claim["status"]["phase"] == "Bound"
    volume = kube.to_dict(kube.core.read_persistent_volume(claim["spec"]["volumeName"]))
    assert volume["spec"]["hostPath"]["path"].startswith("/tmp/hostpath_pv/")  # the node's /tmp: the bed's dir

    reader = container(
        "main",
        'data=$(cat /mnt/data/out.txt); echo -n "${data#*:}" > /dev/termination-log; test "${data%%:*}" = "$EXPECTED"',
        env=[{"name": "EXPECTED", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}],
        volumeMounts=[{"name": "data", "mountPath": "/mnt/data", "readOnly": True}],
    )
    kube.batch.create_namespaced_job(kube.ns, job("read", [reader], volumes=volumes[:1]))
    assert kube.wait_job("read") == "Complete", kube.job_pod("read")
    reader_pod = kube.job_pod("read")
    assert reader_pod is not None
    assert terminated(reader_pod)["message"] == writer_pod["metadata"]["name"]


def test_termination_messages(kube: Kube) -> None:
    containers = [
        container("custom-path", "echo -n 'all done' > /mnt/msg", terminationMessagePath="/mnt/msg"),
        container("from-logs", "echo first line; echo it broke; exit 2",
                  terminationMessagePolicy="FallbackToLogsOnError"),
    ]
    kube.core.create_namespaced_pod(kube.ns, pod_manifest("msg", containers))
    pod = kube.wait_phase("msg", "Failed")
    assert terminated(pod, 0)["message"] == "all done"
    failed = terminated(pod, 1)
    assert failed["exitCode"] == 2
    assert failed["message"].strip().endswith("it broke")
    # the API server reads the logs from the kubelet (by the node's InternalIP)
    logs = kube.core.read_namespaced_pod_log("msg", kube.ns, container="from-logs")
    assert logs.splitlines() == ["first line", "it broke"]


def test_scheduling_gate_holds_the_pod_until_removed(kube: Kube) -> None:
    gated = pod_manifest("gated", [container("main", "echo released")])
    gated["spec"]["schedulingGates"] = [{"name": "example.com/hold"}]
    kube.core.create_namespaced_pod(kube.ns, gated)
    # An ungated pod created afterwards gets scheduled and runs: the scheduler has seen the gated one.
    kube.core.create_namespaced_pod(kube.ns, pod_manifest("free", [container("main", "echo free")]))
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
    main = sleeper("main", marker, readinessProbe={"exec": {"command": ["true"]}, "periodSeconds": 1})
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

    eventually(available, timeout=60, what="2 available replicas")
    pods = [p for p in kube.pods("app=sleeper") if p["status"]["phase"] == "Running"]
    assert len(pods) == 2
    assert all(p["status"]["containerStatuses"][0]["ready"] for p in pods)
    assert len(processes_with(marker)) == 2

    kube.apps.patch_namespaced_deployment_scale("sleeper", kube.ns, {"spec": {"replicas": 0}})
    eventually(lambda: not kube.pods("app=sleeper"), timeout=30, what="the pods to be deleted")
    eventually(lambda: not processes_with(marker), timeout=5, what="the processes to end")


def test_active_deadline_kills_a_sleeping_job(kube: Kube) -> None:
    marker = f"bed-deadline-{kube.ns}"
    kube.batch.create_namespaced_job(kube.ns, job("slow", [sleeper("main", marker)], activeDeadlineSeconds=3))
    eventually(
        lambda: (p := kube.job_pod("slow")) and p["status"].get("phase") == "Running" and p,
        what="the Job's pod running",
    )
    assert processes_with(marker)
    assert kube.wait_job("slow") == "Failed"
    pod = eventually(
        lambda: (p := kube.job_pod("slow")) and p["status"].get("phase") == "Failed" and p, what="the pod to fail"
    )
    assert pod["status"]["reason"] == "DeadlineExceeded"  # the pod's deadline: kubelet kills it
    eventually(lambda: not processes_with(marker), timeout=30, what="the process to end")


def test_namespace_deletion_removes_pods_and_processes(kube: Kube) -> None:
    marker = f"bed-ns-{kube.ns}"
    kube.core.create_namespaced_pod(
        kube.ns, pod_manifest("sleeper", [sleeper("main", marker)], terminationGracePeriodSeconds=2)
    )
    kube.wait_phase("sleeper", "Running")
    assert processes_with(marker)
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
    assert not processes_with(marker)


def test_missing_secret_is_a_create_container_config_error_until_it_exists(kube: Kube) -> None:
    main = container(
        "main", 'echo "${#TOKEN}"',
        env=[{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "later", "key": "token"}}}],
    )  # fmt: skip
    kube.core.create_namespaced_pod(kube.ns, pod_manifest("waits", [main]))
    waiting = eventually(lambda: waiting_reason(kube, "waits", "CreateContainerConfigError"),
                         what="CreateContainerConfigError")  # fmt: skip
    assert "later" in waiting["message"]
    pod = kube.pod("waits")
    assert pod is not None
    assert pod["status"]["phase"] == "Pending"
    kube.core.create_namespaced_secret(kube.ns, {"metadata": {"name": "later"}, "stringData": {"token": "x"}})
    assert kube.wait_phase("waits", "Succeeded", timeout=30)["status"]["phase"] == "Succeeded"


def test_pod_calls_the_api_server_with_its_service_account_token(bed: Bed, kube: Kube) -> None:
    """kubectl inside the pod: in-cluster config, i.e. the token, the CA and the `kubernetes` Service's
    ClusterIP (KUBERNETES_SERVICE_HOST), which kube-proxy routes to kube-apiserver on the node."""
    script = ('echo -n "$KUBERNETES_SERVICE_HOST " > /dev/termination-log; '
              "kubectl auth whoami -o 'jsonpath={.status.userInfo.username}' >> /dev/termination-log")  # fmt: skip
    main = container("main", script, image=testimages.kubectl(bed), env=[{"name": "HOME", "value": "/tmp"}])
    kube.core.create_namespaced_pod(kube.ns, pod_manifest("whoami", [main]))
    pod = kube.wait_phase("whoami", "Succeeded", "Failed", timeout=60)
    assert pod["status"]["phase"] == "Succeeded", terminated(pod)
    assert terminated(pod)["message"] == f"198.18.0.1 system:serviceaccount:{kube.ns}:default"


# --- only a real node passes these -------------------------------------------------------------------------------


def test_run_as_non_root_refuses_an_image_that_runs_as_root(kube: Kube) -> None:
    main = container("main", "id", securityContext={"runAsNonRoot": True})
    kube.core.create_namespaced_pod(kube.ns, pod_manifest("rootless", [main]))
    waiting = eventually(lambda: waiting_reason(kube, "rootless", "CreateContainerConfigError"),
                         what="CreateContainerConfigError")  # fmt: skip
    assert "runAsNonRoot and image will run as root" in waiting["message"]
    # the same image with a non-root user runs
    allowed = container("main", 'test "$(id -u)" = 65534',
                        securityContext={"runAsNonRoot": True, "runAsUser": 65534})  # fmt: skip
    kube.core.create_namespaced_pod(kube.ns, pod_manifest("nobody", [allowed]))
    assert kube.wait_phase("nobody", "Succeeded", "Failed")["status"]["phase"] == "Succeeded"


def test_missing_image_is_err_image_pull_then_back_off(bed: Bed, kube: Kube) -> None:
    main = container("main", "true", image=f"{bed.registry}/bed-test/no-such-image:1")
    kube.core.create_namespaced_pod(kube.ns, pod_manifest("typo", [main]))
    seen = eventually(lambda: waiting_reason(kube, "typo", "ErrImagePull", "ImagePullBackOff"), what="a pull error")
    assert "no-such-image" in seen["message"]
    eventually(lambda: waiting_reason(kube, "typo", "ImagePullBackOff"), timeout=30, what="ImagePullBackOff")


def test_read_only_root_filesystem_is_enforced(kube: Kube) -> None:
    script = ("if touch /written 2>/dev/null; then echo -n 'root fs writable' > /mnt/out/msg; exit 1; fi;"
              " touch /mnt/out/ok")  # fmt: skip
    main = container(
        "main", script, securityContext={"readOnlyRootFilesystem": True},
        terminationMessagePath="/mnt/out/msg", volumeMounts=[{"name": "out", "mountPath": "/mnt/out"}],
    )  # fmt: skip
    kube.core.create_namespaced_pod(kube.ns, pod_manifest("ro", [main], volumes=[{"name": "out", "emptyDir": {}}]))
    pod = kube.wait_phase("ro", "Succeeded", "Failed")
    assert pod["status"]["phase"] == "Succeeded", terminated(pod)


def test_pods_reach_a_host_port_the_bed_exposes(bed: Bed, kube: Kube) -> None:
    """How pods reach the test PostgreSQL on the host's loopback: a relay from the node IP (expose_host_port)."""
    server = socket.create_server(("127.0.0.1", 0))
    greeting = f"hello-{uuid.uuid4().hex[:6]}"

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.sendall(greeting.encode() + b"\n")

    threading.Thread(target=serve, daemon=True).start()
    host, port = bed.expose_host_port(server.getsockname()[1])
    assert host == bed.node_ip
    main = container("main", f"nc {host} {port} > /dev/termination-log")
    kube.core.create_namespaced_pod(kube.ns, pod_manifest("client", [main]))
    pod = kube.wait_phase("client", "Succeeded", "Failed")
    server.close()
    assert terminated(pod)["message"].strip() == greeting


def test_postgres_is_reachable_inside_the_namespace(bed: Bed, postgres_in_bed: tuple[str, int],
                                                    database: Database) -> None:  # fmt: skip
    """The address pods and the in-namespace operator use for the test PostgreSQL (psql runs from the host's
    files, inside the namespace, where the host's loopback is out of reach)."""
    inside = database.at(*postgres_in_bed)
    assert inside.host == bed.node_ip
    proc = subprocess.run(bed.exec_cmd(["psql", inside.conninfo, "-tAc", "select current_database()"]),
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == database.name
    host_only = database.conninfo + " connect_timeout=2"
    unreachable = subprocess.run(bed.exec_cmd(["psql", host_only, "-c", "select 1"]),
                                 capture_output=True, text=True, check=False)  # fmt: skip
    assert unreachable.returncode != 0  # the host's 127.0.0.1 is not the namespace's


def test_a_service_routes_to_its_pod_from_pods_and_from_the_namespace(bed: Bed, kube: Kube) -> None:
    """kube-proxy: a ClusterIP reaches the pod behind it, from another pod and from a process on the node."""
    server = container("main", "mkdir -p /w && echo served > /w/index.html && exec httpd -f -p 8080 -h /w",
                       readinessProbe={"tcpSocket": {"port": 8080}, "periodSeconds": 1})  # fmt: skip
    web = pod_manifest("web", [server])
    web["metadata"]["labels"] = {"app": "web"}
    kube.core.create_namespaced_pod(kube.ns, web)
    service = {"metadata": {"name": "web"},
               "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}}  # fmt: skip
    cluster_ip = kube.to_dict(kube.core.create_namespaced_service(kube.ns, service))["spec"]["clusterIP"]
    assert ipaddress.ip_address(cluster_ip) in ipaddress.ip_network("198.18.0.0/24")
    fetch = f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {cluster_ip} 80 | tail -1"
    client = container("main", f"for i in $(seq 30); do out=$({fetch}); [ -n \"$out\" ] && break; sleep 1; done;"
                       ' echo -n "$out" > /dev/termination-log')  # fmt: skip
    kube.core.create_namespaced_pod(kube.ns, pod_manifest("client", [client]))
    assert terminated(kube.wait_phase("client", "Succeeded", timeout=60))["message"] == "served"
    inside = subprocess.run(bed.exec_cmd(["curl", "-sS", "-m", "5", f"http://{cluster_ip}/"]),
                            capture_output=True, text=True, check=False)  # fmt: skip
    assert inside.stdout == "served\n", inside.stderr


def test_cluster_dns_answers_for_services_and_nothing_else(kube: Kube) -> None:
    """CoreDNS on the node: Service names resolve; any other name fails at once (nothing is forwarded)."""
    script = ("nslookup kubernetes.default.svc.cluster.local > /tmp/in; in=$?;"
              " nslookup example.com > /tmp/out 2>&1; out=$?;"
              ' echo -n "$in $out $(grep -c 198.18.0.1 /tmp/in)" > /dev/termination-log')  # fmt: skip
    kube.core.create_namespaced_pod(kube.ns, pod_manifest("dns", [container("main", script)]))
    pod = kube.wait_phase("dns", "Succeeded", "Failed", timeout=60)
    assert pod["spec"]["dnsPolicy"] == "ClusterFirst"
    resolved, external, answers = terminated(pod)["message"].split()
    assert (resolved, answers) == ("0", "1")
    assert external != "0"
