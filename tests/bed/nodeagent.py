"""The bed's node agent: kubelet and scheduler for one Node, with local processes in place of containers.

    python -m bed.nodeagent --kubeconfig K --state-dir D --node-name bed-node [--python-bin-dir DIR]
                            [--scheduler-kubeconfig K2] [--client-ca-file CA]

What it does:

* registers the Node (Ready, capacity, address 127.0.0.1, no taints), renews its Lease in kube-node-lease every
  10 s and its Ready condition every 30 s, so kube-controller-manager keeps it Ready;
* scheduler: watches unscheduled pods (``spec.nodeName=``) and binds (pods/binding) each one without
  schedulingGates and with the default scheduler the moment the watch shows it (no filtering: one node);
* kubelet: watches the pods bound to the node and runs them (``bed.agent_pod``): init containers (sidecars with
  restartPolicy Always too) then containers, as host processes (no image is pulled: ``command`` + ``args``, or
  ``args`` alone, run with ``--python-bin-dir`` first on PATH, default this interpreter's directory), in a private
  mount namespace where the volumes are bind-mounted; status through pods/status; restarts with a 1-10 s back-off;
  exec/httpGet/tcpSocket readiness, liveness and startup probes; activeDeadlineSeconds; graceful deletion;
* serves ``kubectl logs`` (``bed.agent_logs``) on a loopback HTTPS port published in the Node's daemonEndpoints;
* on start it adopts nothing: processes left by an earlier run are killed and the pods that had started are marked
  Failed (like a node reboot); on SIGTERM it kills every pod process and exits (the pods keep their last status).
  Container processes also get SIGKILL if the agent dies (``setpriv --pdeathsig``).

Credentials: the Node identity (``system:node:<name>``: Node authorizer + NodeRestriction) may only watch its own
pods and cannot bind, so the scheduler side uses ``--scheduler-kubeconfig`` (default: ``$BED_DIR/kubeconfig`` when
it exists, else ``--kubeconfig``).

Not like a kubelet: processes run as the agent's user (root on the bed): securityContext (runAsUser, runAsNonRoot,
capabilities...), resources and hostNetwork are ignored and every pod shares the host's loopback (podIP 127.0.0.1).
A missing Secret/ConfigMap/key in env is CreateContainerConfigError (retried); in a volume, the container waits as
ContainerCreating with the message (and a FailedMount event), as a kubelet does. Mount points that do not exist on
the host (``/var/run/secrets/kubernetes.io/serviceaccount``, ``/dev/termination-log``...) are created on the host
and left there. No exec, attach or port-forward. PersistentVolumeClaims must exist but are never bound.

State directory: ``pods/<ns>/<pod>/<container>.log`` (stdout+stderr of every run), ``volumes/<pod uid>/`` (emptyDir,
secret, configMap, projected...: removed with the pod), ``pvc/<ns>/<claim>/`` (outlives pods), ``procs/`` (PIDs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import queue
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bed.agent_kube import MERGE, STRATEGIC, ApiError, Kube, is_transient, now_iso, now_micro
from bed.agent_logs import LogServer
from bed.agent_pod import TERMINAL, NodeContext, PodWorker, proc_start_ticks

JSON = dict[str, Any]
log = logging.getLogger("nodeagent")

LEASE_NAMESPACE = "kube-node-lease"
LEASE_SECONDS = 40
LEASE_RENEW_SECONDS = 10
NODE_STATUS_SECONDS = 30
WATCH_SECONDS = 290
DEFAULT_SCHEDULER = "default-scheduler"


def _meminfo_kib() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 4 * 1024 * 1024


class Agent:
    def __init__(
        self,
        kube: Kube,
        scheduler: Kube,
        node_name: str,
        state_dir: Path,
        python_bin_dir: str | None,
        client_ca: str | None = None,
    ) -> None:
        self.kube = kube
        self.scheduler = scheduler
        self.node_name = node_name
        self.state_dir = state_dir
        self.workers: dict[str, PodWorker] = {}
        self.ignored: set[str] = set()
        self.binding: set[str] = set()
        self.lock = threading.Lock()
        self.bind_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="bind")
        self.events: queue.Queue[JSON] = queue.Queue(maxsize=1000)
        self.started = now_iso()
        self.cpu = os.cpu_count() or 1
        self.memory_kib = _meminfo_kib()
        path = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")
        if python_bin_dir:
            path = f"{python_bin_dir}{os.pathsep}{path}"
        self.ctx = NodeContext(
            kube=kube,
            node_name=node_name,
            state_dir=state_dir,
            path_env=path,
            api_port=kube.port,
            cpu=float(self.cpu),
            memory=self.memory_kib * 1024,
            emit_event=self.emit_event,
        )
        self.node_uid = ""
        self.client_ca = client_ca
        self.kubelet_port = 0
        self.version = "v0.0.0"

    # --- start-up -------------------------------------------------------------------------------------------------
    def kill_leftovers(self) -> None:
        """Kill the processes an earlier run of the agent left behind (identified by PID and start time)."""
        procs = self.ctx.procs_dir
        if not procs.is_dir():
            return
        for entry in procs.iterdir():
            with contextlib.suppress(OSError, ValueError, KeyError):
                record = json.loads(entry.read_text())
                pid = int(record["pid"])
                if record.get("ticks") is not None and proc_start_ticks(pid) == record["ticks"]:
                    log.info("killing process %d left by an earlier run", pid)
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(pid, signal.SIGKILL)
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                entry.unlink()

    def node_status(self) -> JSON:
        now = now_iso()
        disk = os.statvfs(self.state_dir)
        resources = {
            "cpu": str(self.cpu),
            "memory": f"{self.memory_kib}Ki",
            "pods": "110",
            "ephemeral-storage": f"{disk.f_blocks * disk.f_frsize // 1024}Ki",
        }

        def cond(ctype: str, status: str, reason: str, message: str) -> JSON:
            return {
                "type": ctype,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": now,
                "lastTransitionTime": self.started,
            }

        try:
            boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        except OSError:
            boot_id = ""
        try:
            machine_id = Path("/etc/machine-id").read_text().strip()
        except OSError:
            machine_id = ""
        return {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                cond("Ready", "True", "KubeletReady", "kubelet is posting ready status (bed node agent)"),
            ],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.kubelet_port}},
            "nodeInfo": {
                "machineID": machine_id,
                "systemUUID": machine_id,
                "bootID": boot_id,
                "kernelVersion": platform.release(),
                "osImage": "alembic-operator bed (host processes)",
                "containerRuntimeVersion": "bed://0.1.0",
                "kubeletVersion": self.version,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64" if platform.machine() in ("x86_64", "amd64") else platform.machine(),
            },
        }

    def register_node(self) -> None:
        try:
            self.version = str(self.kube.get("/version").get("gitVersion") or "v0.0.0")
        except Exception:
            self.version = "v0.0.0"
        labels = {
            "kubernetes.io/hostname": self.node_name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "beta.kubernetes.io/os": "linux",
            "beta.kubernetes.io/arch": "amd64",
        }
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.node_name, "labels": labels},
            "spec": {},
            "status": self.node_status(),
        }
        while True:
            try:
                try:
                    node = self.kube.request("POST", "/api/v1/nodes", body=body)
                    log.info("registered node %s", self.node_name)
                except ApiError as exc:
                    if exc.status != 409:
                        raise
                    node = self.kube.get(f"/api/v1/nodes/{self.node_name}")
                    log.info("node %s already registered", self.node_name)
                self.node_uid = node["metadata"]["uid"]
                self.patch_node_status()
                self.renew_lease()
                return
            except Exception as exc:
                log.warning("node registration failed (%s); retrying", exc)
                time.sleep(1)

    def patch_node_status(self) -> None:
        self.kube.request(
            "PATCH",
            f"/api/v1/nodes/{self.node_name}/status",
            body={"status": self.node_status()},
            content_type=STRATEGIC,
            timeout=10,
        )

    def renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases/{self.node_name}"
        spec = {"holderIdentity": self.node_name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": now_micro()}
        try:
            self.kube.request("PATCH", path, body={"spec": spec}, content_type=MERGE, timeout=10)
        except ApiError as exc:
            if exc.status != 404:
                raise
            owner = [{"apiVersion": "v1", "kind": "Node", "name": self.node_name, "uid": self.node_uid}]
            lease = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.node_name, "namespace": LEASE_NAMESPACE, "ownerReferences": owner},
                "spec": spec,
            }
            self.kube.request(
                "POST", f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases", body=lease, timeout=10
            )

    def heartbeat_loop(self) -> None:
        last_status = time.monotonic()
        failures = 0
        while True:
            time.sleep(LEASE_RENEW_SECONDS)
            try:
                self.renew_lease()
                if time.monotonic() - last_status >= NODE_STATUS_SECONDS:
                    self.patch_node_status()
                    last_status = time.monotonic()
                failures = 0
            except Exception as exc:
                failures += 1
                if failures <= 3 or failures % 30 == 0:
                    log.warning("heartbeat failed: %s", exc)

    # --- events ---------------------------------------------------------------------------------------------------
    def emit_event(self, pod: JSON, etype: str, reason: str, message: str, component: str = "kubelet") -> None:
        meta = pod["metadata"]
        now = now_iso()
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
            },
            "reason": reason,
            "message": message[:1024],
            "type": etype,
            "source": {"component": component, "host": self.node_name},
            "reportingComponent": component,
            "reportingInstance": self.node_name,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        with contextlib.suppress(queue.Full):
            self.events.put_nowait(event)

    def event_loop(self) -> None:
        while True:
            event = self.events.get()
            ns = event["metadata"]["namespace"]
            try:
                self.kube.request("POST", f"/api/v1/namespaces/{ns}/events", body=event, timeout=10)
            except Exception as exc:
                log.debug("event %s/%s not recorded: %s", ns, event["reason"], exc)

    # --- pods -----------------------------------------------------------------------------------------------------
    def bind(self, pod: JSON) -> None:
        meta = pod["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name, "namespace": ns, "uid": uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name},
        }
        try:
            for attempt in range(20):
                try:
                    self.scheduler.request("POST", f"/api/v1/namespaces/{ns}/pods/{name}/binding", body=body)
                    log.info("bound pod %s/%s", ns, name)
                    self.emit_event(
                        pod,
                        "Normal",
                        "Scheduled",
                        f"Successfully assigned {ns}/{name} to {self.node_name}",
                        DEFAULT_SCHEDULER,
                    )
                    return
                except Exception as exc:
                    if isinstance(exc, ApiError) and exc.status in (404, 409):
                        return  # gone, or bound meanwhile
                    if not is_transient(exc):
                        log.warning("binding pod %s/%s failed: %s", ns, name, exc)
                        return
                    time.sleep(min(2.0, 0.05 * 2**attempt))
        finally:
            with self.lock:
                self.binding.discard(uid)

    def on_pod(self, pod: JSON, startup: bool = False) -> None:
        meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
        uid = meta["uid"]
        phase = status.get("phase")
        node = spec.get("nodeName")
        if not node:
            if spec.get("schedulingGates") or meta.get("deletionTimestamp") or phase in TERMINAL:
                return
            if (spec.get("schedulerName") or DEFAULT_SCHEDULER) != DEFAULT_SCHEDULER:
                return
            with self.lock:
                if uid in self.binding:
                    return
                self.binding.add(uid)
            self.bind_pool.submit(self.bind, pod)
            return
        if node != self.node_name:
            return
        with self.lock:
            worker = self.workers.get(uid)
            if worker is not None:
                worker.update(pod)
                return
            if uid in self.ignored or phase in TERMINAL:
                return
            if startup and status.get("startTime"):
                self.ignored.add(uid)
                threading.Thread(target=self.fail_orphan, args=(pod,), daemon=True).start()
                return
            worker = PodWorker(self.ctx, pod)
            self.workers[uid] = worker
        worker.start()

    def on_deleted(self, pod: JSON) -> None:
        uid = pod["metadata"]["uid"]
        with self.lock:
            worker = self.workers.pop(uid, None)
            self.ignored.discard(uid)
        if worker is None:
            return
        if worker.done:
            worker.cleanup()
            return
        if not worker.deleting:
            log.info("pod %s vanished; killing its processes", worker.key)
        worker.vanish()

    def fail_orphan(self, pod: JSON) -> None:
        """A pod this node ran before the agent restarted: its processes are gone, so it failed."""
        meta, spec = pod["metadata"], pod["spec"]
        ns, name = meta["namespace"], meta["name"]
        now = now_iso()
        lost = {
            "terminated": {
                "exitCode": 137,
                "reason": "ContainerStatusUnknown",
                "finishedAt": now,
                "message": "The container could not be located when the pod was terminated",
            }
        }

        def statuses(key: str, old: list[JSON]) -> list[JSON]:
            by_name = {s.get("name"): s for s in old}
            out = []
            for c in spec.get(key) or []:
                prev = by_name.get(c["name"], {})
                state = prev.get("state") or {}
                out.append(
                    {
                        **prev,
                        "name": c["name"],
                        "image": c.get("image") or "",
                        "imageID": prev.get("imageID", ""),
                        "ready": False,
                        "started": False,
                        "restartCount": prev.get("restartCount", 0),
                        "state": state if "terminated" in state else lost,
                    }
                )
            return out

        old = pod.get("status") or {}
        status: JSON = {
            "phase": "Failed",
            "reason": "NodeAgentRestarted",
            "message": "The node agent restarted; it does not adopt the processes of an earlier run",
            "conditions": [
                {"type": "Ready", "status": "False", "reason": "PodFailed", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": "False", "reason": "PodFailed", "lastTransitionTime": now},
            ],
            "containerStatuses": statuses("containers", old.get("containerStatuses") or []),
        }
        if spec.get("initContainers"):
            status["initContainerStatuses"] = statuses("initContainers", old.get("initContainerStatuses") or [])
        try:
            self.kube.request(
                "PATCH",
                f"/api/v1/namespaces/{ns}/pods/{name}/status",
                content_type=STRATEGIC,
                body={"metadata": {"uid": meta["uid"]}, "status": status},
            )
            log.info("pod %s/%s: marked Failed (it ran before the agent restarted)", ns, name)
            if meta.get("deletionTimestamp"):
                body = {"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}}
                self.kube.request("DELETE", f"/api/v1/namespaces/{ns}/pods/{name}", body=body)
        except Exception as exc:
            log.warning("pod %s/%s: could not mark it Failed: %s", ns, name, exc)

    @staticmethod
    def list_pods(kube: Kube, selector: str) -> tuple[list[JSON], str]:
        items: list[JSON] = []
        cont = None
        while True:
            query = {"limit": 500, "continue": cont, "fieldSelector": selector}
            page = kube.get("/api/v1/pods", query=query, timeout=60)
            items.extend(page.get("items") or [])
            cont = page.get("metadata", {}).get("continue")
            if not cont:
                return items, str(page["metadata"]["resourceVersion"])

    def sync(self, pods: list[JSON], startup: bool) -> None:
        seen = set()
        for pod in pods:
            seen.add(pod["metadata"]["uid"])
            self.on_pod(pod, startup=startup)
        with self.lock:
            gone = [w for uid, w in self.workers.items() if uid not in seen]
        for worker in gone:
            self.on_deleted(worker.pod)

    def watch_pods(
        self,
        kube: Kube,
        selector: str,
        on_list: Callable[[list[JSON]], None],
        on_event: Callable[[str, JSON], None],
    ) -> None:
        """List then watch the pods matching a field selector, forever (relisting after 410 Gone)."""
        rv: str | None = None
        failures = 0
        while True:
            if rv is None:
                try:
                    pods, rv = self.list_pods(kube, selector)
                except Exception as exc:
                    failures += 1
                    if failures <= 3 or failures % 60 == 0:
                        log.warning("listing pods (%s) failed: %s", selector, exc)
                    time.sleep(1)
                    continue
                failures = 0
                on_list(pods)
            try:
                query = {"resourceVersion": rv, "fieldSelector": selector}
                for event in kube.watch("/api/v1/pods", query, WATCH_SECONDS):
                    etype, obj = str(event.get("type")), event.get("object") or {}
                    if etype == "ERROR":
                        if obj.get("code") != 410:
                            log.warning("pod watch (%s) error: %s", selector, obj.get("message"))
                        rv = None
                        break
                    rv = obj.get("metadata", {}).get("resourceVersion") or rv
                    if etype != "BOOKMARK":
                        on_event(etype, obj)
            except ApiError as exc:
                if exc.status != 410:
                    log.warning("pod watch (%s) failed: %s", selector, exc)
                    time.sleep(0.5)
                rv = None
            except Exception as exc:
                if not is_transient(exc):
                    log.exception("pod watch (%s) failed", selector)
                else:
                    log.warning("pod watch (%s) interrupted: %s", selector, exc)
                time.sleep(0.5)

    def watch_unscheduled(self) -> None:
        def on_list(pods: list[JSON]) -> None:
            for pod in pods:
                self.on_pod(pod)

        def on_event(etype: str, pod: JSON) -> None:
            if etype != "DELETED":  # DELETED here also means "bound": no longer matches the selector
                self.on_pod(pod)

        self.watch_pods(self.scheduler, "spec.nodeName=", on_list, on_event)

    def watch_node(self) -> None:
        startup = [True]

        def on_list(pods: list[JSON]) -> None:
            self.sync(pods, startup[0])
            startup[0] = False

        def on_event(etype: str, pod: JSON) -> None:
            if etype == "DELETED":
                self.on_deleted(pod)
            else:
                self.on_pod(pod)

        self.watch_pods(self.kube, f"spec.nodeName={self.node_name}", on_list, on_event)

    def find_worker(self, namespace: str, name: str) -> PodWorker | None:
        with self.lock:
            found = [w for w in self.workers.values() if w.ns == namespace and w.pod_name == name]
        return next((w for w in found if not w.done), found[-1] if found else None)

    def start_log_server(self) -> None:
        try:
            server = LogServer(self.state_dir, self.node_name, self.find_worker, self.client_ca)
        except Exception as exc:
            log.warning("no kubelet endpoint (kubectl logs will not work): %s", exc)
            return
        server.start()
        self.kubelet_port = server.port

    def shutdown(self) -> None:
        self.ctx.stopping.set()
        with self.lock:
            workers = list(self.workers.values())
        for worker in workers:
            worker.kill_now()

    def run(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.kill_leftovers()
        self.start_log_server()
        self.register_node()
        threading.Thread(target=self.heartbeat_loop, name="heartbeat", daemon=True).start()
        threading.Thread(target=self.event_loop, name="events", daemon=True).start()
        log.info("node %s ready; watching pods", self.node_name)
        threading.Thread(target=self.watch_unscheduled, name="scheduler", daemon=True).start()
        self.watch_node()


def _raise_exit(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one is enough (`bed down` signals the group and the process)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bed.nodeagent", description=__doc__.split("\n\n")[0])
    parser.add_argument("--kubeconfig", required=True, help="the node's credentials")
    parser.add_argument("--scheduler-kubeconfig", help="credentials for pods/binding (default: see the docstring)")
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--node-name", default="bed-node")
    parser.add_argument(
        "--python-bin-dir",
        default=str(Path(sys.executable).parent),
        help="put first on the PATH of containers (default: this interpreter's directory)",
    )
    parser.add_argument(
        "--client-ca-file",
        help="CA of kube-apiserver's kubelet client certificate, for the "
        "kubectl-logs endpoint (default: $BED_DIR/pki/ca.crt when it exists; else no client check)",
    )
    parser.add_argument("--log-level", default=os.environ.get("BED_NODEAGENT_LOG", "INFO"))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s nodeagent %(levelname)s %(message)s"
    )
    logging.getLogger("urllib3").setLevel(logging.ERROR)

    sched_config = args.scheduler_kubeconfig
    if not sched_config:
        bed_dir = os.environ.get("BED_DIR")
        candidate = Path(bed_dir) / "kubeconfig" if bed_dir else None
        sched_config = str(candidate) if candidate is not None and candidate.is_file() else args.kubeconfig
    kube = Kube(args.kubeconfig)
    scheduler = kube if sched_config == args.kubeconfig else Kube(sched_config, pool_size=4)
    client_ca = args.client_ca_file
    if not client_ca and os.environ.get("BED_DIR"):
        candidate = Path(os.environ["BED_DIR"]) / "pki" / "ca.crt"
        client_ca = str(candidate) if candidate.is_file() else None
    agent = Agent(kube, scheduler, args.node_name, args.state_dir.resolve(), args.python_bin_dir, client_ca)
    signal.signal(signal.SIGTERM, _raise_exit)
    signal.signal(signal.SIGINT, _raise_exit)
    try:
        agent.run()
    except SystemExit:
        log.info("stopping: killing pod processes")
    finally:
        agent.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
