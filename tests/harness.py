"""Running the operator against the bed, and reading what it did, for the end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client as k8s

from alembic_operator import constants as c
from bed.controlplane import Bed

T = TypeVar("T")
VENV_BIN = Path(sys.executable).parent
OPERATOR_IMAGE = "bed.local/alembic-operator:dev"  # without a real node (unit-level runs): never pulled


def wait_for(check: Callable[[], T | None], timeout: float = 60, what: str = "condition",
             interval: float = 0.2) -> T:
    """Poll until `check` returns something truthy; fail with `what` (and the last value) after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


def free_port(bed: Bed | None = None) -> int:
    """A free port on 127.0.0.1: of the host, or of the bed's network namespace for a process run there (where the
    operators of other test sessions on the same bed listen, unseen from the host)."""
    if bed is not None and bed.node == "real":
        return bed.free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def operator_image(bed: Bed) -> str:
    """The operator's image, built from the project's Dockerfile (cached by content) and pushed to the bed's
    registry once per bed: what the Jobs' containers of our own run."""
    if bed.node != "real":
        return OPERATOR_IMAGE
    key = str(bed.dir)
    if key not in _OPERATOR_IMAGES:
        from bed import images

        _OPERATOR_IMAGES[key] = images.push(images.operator_image(), f"{bed.registry}/alembic-operator:dev",
                                            bed.netns_cmd())
    return _OPERATOR_IMAGES[key]


_OPERATOR_IMAGES: dict[str, str] = {}


class NetnsPort:
    """A port of the bed's network namespace, reachable on the host's 127.0.0.1 (a relay this object owns)."""

    def __init__(self, bed: Bed, port: int) -> None:
        from bed import realnode, relay

        listener = relay.listen_on_host()
        self.port = int(listener.getsockname()[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent),
                                                            os.environ.get("PYTHONPATH", "")])}
        try:
            self.proc = subprocess.Popen(
                [*realnode.enter(int(bed.state["holder"]), mount=False), sys.executable, "-m", "bed.relay",
                 "--listen-fd", str(listener.fileno()), "--connect", f"127.0.0.1:{port}"],
                pass_fds=(listener.fileno(),), env=env, start_new_session=True,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        finally:
            listener.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class OperatorProcess:
    """`alembic-operator run` as a child process, watching one namespace; killable at any moment.

    Given a bed with a real node, it runs inside the bed's network namespace (where the API server, the pods and the
    database as pods see it are), as a developer runs an operator next to a cluster; its liveness and metrics ports
    are relayed to the host's loopback for the tests.
    """

    def __init__(self, target: Path | Bed, namespaces: list[str], log_path: Path,
                 extra_args: list[str] | None = None) -> None:
        self.bed = target if isinstance(target, Bed) and target.node == "real" else None
        self.kubeconfig = target.kubeconfig if isinstance(target, Bed) else target
        self.image = operator_image(target) if isinstance(target, Bed) else OPERATOR_IMAGE
        self.namespaces = namespaces
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = free_port(self.bed)
        self.metrics_port = free_port(self.bed)
        self.starts = 0
        self.relays: list[NetnsPort] = []
        self.host_port, self.host_metrics_port = self.port, self.metrics_port
        # The pod-gating webhook is off unless a test asks for it: its configuration is cluster-wide.
        self.extra_args = extra_args if extra_args is not None else ["--no-webhook"]

    def base_env(self) -> dict[str, str]:
        env = self.bed.netns_env() if self.bed else {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        # The kubernetes library writes the kubeconfig's embedded client key to a temporary file, removed at exit:
        # an operator a test SIGKILLs would leave it in /tmp. Here it goes with the bed (or the test's directory).
        tmp = self.bed.dir / "clients" if self.bed else self.log_path.parent
        tmp.mkdir(mode=0o700, exist_ok=True)
        return {**env, "ALEMBIC_OPERATOR_IMAGE": self.image, "PYTHONUNBUFFERED": "1", "TMPDIR": str(tmp)}

    def wrap(self, argv: list[str]) -> list[str]:
        return self.bed.exec_cmd(argv) if self.bed else argv

    def spawn(self, argv: list[str], env: dict[str, str], note: str = "") -> None:
        log = self.log_path.open("ab")
        log.write(f"--- start {self.starts}{note}\n".encode())
        log.flush()
        self.proc = subprocess.Popen(self.wrap(argv), stdout=log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        self.starts += 1
        if self.bed and not self.relays:
            self.relays = [NetnsPort(self.bed, self.port), NetnsPort(self.bed, self.metrics_port)]
            self.host_port, self.host_metrics_port = self.relays[0].port, self.relays[1].port

    def start(self) -> OperatorProcess:
        env = {**self.base_env(), "ALEMBIC_OPERATOR_METRICS_PORT": str(self.metrics_port),
               "ALEMBIC_OPERATOR_METRICS_ADDR": "127.0.0.1"}
        args = [str(VENV_BIN / "alembic-operator"), "run", "--standalone",
                "--liveness", f"http://127.0.0.1:{self.port}/healthz"]
        for ns in self.namespaces:
            args += ["--namespace", ns]
        # Retries 1, 2, 4, 8, 12 s apart instead of 5 to 60 s: the tests of retries wait for the same attempts sooner.
        args += ["--job-retry-backoff", "1", *self.extra_args]
        self.spawn(args, env)
        wait_for(self.healthy, 60, "the operator's liveness endpoint")
        return self

    def healthy(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"the operator exited; log:\n{self.log()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.host_port}/healthz", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def metrics(self) -> str:
        """The operator's /metrics text ("" while the endpoint does not answer yet)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.host_metrics_port}/metrics", timeout=5) as r:
                return str(r.read().decode())
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL: no cleanup, no chance to finish a status write."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        for relay in self.relays:
            relay.close()
        self.relays = []

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Cluster:
    """Thin helpers over the Python client for one namespace."""

    def __init__(self, api: k8s.ApiClient, namespace: str) -> None:
        self.api = api
        self.ns = namespace
        self.custom = k8s.CustomObjectsApi(api)
        self.core = k8s.CoreV1Api(api)
        self.batch = k8s.BatchV1Api(api)

    def secret(self, name: str, data: dict[str, str]) -> None:
        body = k8s.V1Secret(metadata=k8s.V1ObjectMeta(name=name), string_data=data)
        try:
            self.core.create_namespaced_secret(self.ns, body)
        except k8s.ApiException as err:
            if err.status != 409:
                raise
            self.core.replace_namespaced_secret(name, self.ns, body)

    def labelled_secret(self, name: str, data: dict[str, str], labels: dict[str, str]) -> None:
        """A Secret with these labels (and no others), created or replaced."""
        body = k8s.V1Secret(metadata=k8s.V1ObjectMeta(name=name, labels=labels), string_data=data)
        try:
            self.core.create_namespaced_secret(self.ns, body)
        except k8s.ApiException as err:
            if err.status != 409:
                raise
            self.core.replace_namespaced_secret(name, self.ns, body)

    def create(self, name: str, spec: dict[str, Any], annotations: dict[str, str] | None = None) -> dict[str, Any]:
        body = {"apiVersion": c.API_VERSION, "kind": c.KIND,
                "metadata": {"name": name, "annotations": annotations or {}}, "spec": spec}
        return dict(self.custom.create_namespaced_custom_object(c.GROUP, c.VERSION, self.ns, c.PLURAL, body))

    def get(self, name: str) -> dict[str, Any]:
        return dict(self.custom.get_namespaced_custom_object(c.GROUP, c.VERSION, self.ns, c.PLURAL, name))

    def exists(self, name: str) -> bool:
        try:
            self.get(name)
            return True
        except k8s.ApiException as err:
            if err.status == 404:
                return False
            raise

    def patch(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return dict(self.custom.patch_namespaced_custom_object(c.GROUP, c.VERSION, self.ns, c.PLURAL, name, patch))

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(c.GROUP, c.VERSION, self.ns, c.PLURAL, name)

    def condition(self, name: str, type_: str) -> dict[str, Any] | None:
        for cond in (self.get(name).get("status") or {}).get("conditions") or []:
            if cond.get("type") == type_:
                return dict(cond)
        return None

    def wait_phase(self, name: str, phase: str, timeout: float = 120) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            obj = self.get(name)
            st = obj.get("status") or {}
            if st.get("phase") == phase and st.get("observedGeneration") == obj["metadata"]["generation"]:
                return obj
            return None

        try:
            return wait_for(check, timeout, f"dbm/{name} phase {phase}")
        except AssertionError as err:
            st = self.get(name).get("status") or {}
            raise AssertionError(f"{err}\nstatus: {json.dumps({k: v for k, v in st.items() if k != 'run'})}"
                                 ) from None

    def wait_condition(self, name: str, type_: str, value: str = "True", reason: str | None = None,
                       timeout: float = 120) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            obj = self.get(name)
            for cond in (obj.get("status") or {}).get("conditions") or []:
                if (cond["type"] == type_ and cond["status"] == value and (reason is None or cond["reason"] == reason)
                        and cond.get("observedGeneration") == obj["metadata"]["generation"]):
                    return obj
            return None

        try:
            return wait_for(check, timeout, f"dbm/{name} {type_}={value} {reason or ''}")
        except AssertionError as err:
            st = self.get(name).get("status") or {}
            raise AssertionError(f"{err}\nstatus: {json.dumps({k: v for k, v in st.items() if k != 'run'})}"
                                 ) from None

    def jobs(self, owner: str) -> list[dict[str, Any]]:
        items = self.batch.list_namespaced_job(self.ns, label_selector=f"{c.OWNER_LABEL}={owner}").items
        return [self.api.sanitize_for_serialization(j) for j in items]

    def job_roles(self, owner: str) -> list[str]:
        return sorted(j["metadata"]["labels"][c.ROLE_LABEL] + "-g" + j["metadata"]["labels"][c.GENERATION_LABEL]
                      for j in self.jobs(owner))

    def pods(self) -> list[dict[str, Any]]:
        return [self.api.sanitize_for_serialization(p) for p in self.core.list_namespaced_pod(self.ns).items]

    def wait_event(self, name: str, reason: str, type_: str | None = None, timeout: float = 15) -> dict[str, Any]:
        """Events are posted after the status write they describe: wait for one rather than expect it at once."""
        def check() -> dict[str, Any] | None:
            return next((e for e in self.events(name)
                         if e["reason"] == reason and (type_ is None or e["type"] == type_)), None)

        return wait_for(check, timeout, f"a {reason} Event on {name}")

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        items = self.core.list_namespaced_event(self.ns).items
        out = [self.api.sanitize_for_serialization(e) for e in items]
        return [e for e in out if name is None or e["involvedObject"].get("name") == name]
