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

T = TypeVar("T")
VENV_BIN = Path(sys.executable).parent
OPERATOR_IMAGE = "bed.local/alembic-operator:dev"  # the node agent runs the host environment for every image


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OperatorProcess:
    """`alembic-operator run` as a child process, watching one namespace; killable at any moment."""

    def __init__(self, kubeconfig: Path, namespaces: list[str], log_path: Path, extra_args: list[str] | None = None
                 ) -> None:
        self.kubeconfig = kubeconfig
        self.namespaces = namespaces
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = free_port()
        self.metrics_port = free_port()
        self.starts = 0
        # The pod-gating webhook is off unless a test asks for it: its configuration is cluster-wide.
        self.extra_args = extra_args if extra_args is not None else ["--no-webhook"]

    def start(self) -> OperatorProcess:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "ALEMBIC_OPERATOR_IMAGE": OPERATOR_IMAGE,
               "PYTHONUNBUFFERED": "1", "ALEMBIC_OPERATOR_METRICS_PORT": str(self.metrics_port),
               "ALEMBIC_OPERATOR_METRICS_ADDR": "127.0.0.1"}
        args = [str(VENV_BIN / "alembic-operator"), "run", "--standalone",
                "--liveness", f"http://127.0.0.1:{self.port}/healthz"]
        for ns in self.namespaces:
            args += ["--namespace", ns]
        args += self.extra_args
        log = self.log_path.open("ab")
        log.write(f"--- start {self.starts}\n".encode())
        log.flush()
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.starts += 1
        wait_for(self.healthy, 60, "the operator's liveness endpoint")
        return self

    def healthy(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"the operator exited; log:\n{self.log()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def metrics(self) -> str:
        """The operator's /metrics text ("" while the endpoint does not answer yet)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
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
