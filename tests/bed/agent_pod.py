"""One pod on the bed's node: volumes, environment, processes and status (part of ``bed.nodeagent``).

A :class:`PodWorker` is a thread that plays kubelet for one pod: it prepares the volumes, runs the init containers
in order and then the containers as local processes, each in a private mount namespace (``unshare -m``) where the
volumes are bind-mounted at their ``mountPath``, and reports the pod's status through the status subresource.
Processes run as the agent's user (root on the bed): ``securityContext`` (runAsUser, capabilities...) is ignored.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import logging
import math
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bed.agent_kube import STRATEGIC, ApiError, Kube, is_transient, now_iso

JSON = dict[str, Any]
log = logging.getLogger("nodeagent")

LOOPBACK = "127.0.0.1"
TERMINAL = ("Succeeded", "Failed")
MAX_TERMINATION_MESSAGE = 4096
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048
DEFAULT_TOKEN_SECONDS = 3600


class ConfigError(Exception):
    """A container's configuration cannot be resolved yet (missing Secret, ConfigMap, key...)."""


@dataclass
class NodeContext:
    """What every pod worker needs from the agent."""

    kube: Kube
    node_name: str
    state_dir: Path
    path_env: str
    api_port: int
    cpu: float
    memory: int
    emit_event: Callable[[JSON, str, str, str], None]
    unshare: str = field(default_factory=lambda: shutil.which("unshare") or "/usr/bin/unshare")
    nsenter: str = field(default_factory=lambda: shutil.which("nsenter") or "/usr/bin/nsenter")
    sh: str = field(default_factory=lambda: shutil.which("sh") or "/bin/sh")
    bash: str = field(default_factory=lambda: shutil.which("bash") or "/bin/bash")
    mount: str = field(default_factory=lambda: shutil.which("mount") or "/bin/mount")
    mkdir: str = field(default_factory=lambda: shutil.which("mkdir") or "/bin/mkdir")
    # setpriv --pdeathsig KILL: a container dies with its worker thread, so an agent killed hard leaves nothing
    setpriv: str | None = field(default_factory=lambda: shutil.which("setpriv"))
    stopping: threading.Event = field(default_factory=threading.Event)

    @property
    def procs_dir(self) -> Path:
        return self.state_dir / "procs"


# --------------------------------------------------------------------------------------------------------------
# small helpers


def proc_start_ticks(pid: int) -> int | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(raw[raw.rindex(")") + 2 :].split()[19])


def signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


_QUANTITY = re.compile(r"^([+-]?[0-9.]+)([eE][+-]?[0-9]+|[a-zA-Z]*)$")
_SUFFIX = {
    "": 1,
    "n": 1e-9,
    "u": 1e-6,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}


def parse_quantity(text: str | int | float) -> float:
    m = _QUANTITY.match(str(text).strip())
    if not m:
        raise ValueError(f"bad quantity {text!r}")
    number, suffix = float(m.group(1)), m.group(2)
    if suffix[:1] in ("e", "E"):
        return number * float(10 ** int(suffix[1:]))
    return number * float(_SUFFIX[suffix])


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: $(NAME) when NAME is defined, $$ escapes a $, anything else is kept."""
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "$" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "(":
                end = text.find(")", i + 2)
                if end != -1:
                    name = text[i + 2 : end]
                    out.append(env[name] if name in env else text[i : end + 1])
                    i = end + 1
                    continue
        out.append(ch)
        i += 1
    return "".join(out)


def safe_relpath(rel: str) -> str:
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if rel.startswith("/") or ".." in parts or not parts:
        raise ConfigError(f"invalid path {rel!r}")
    return "/".join(parts)


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.chmod(mode)
    tmp.replace(path)


# --------------------------------------------------------------------------------------------------------------
# containers


@dataclass
class Ctr:
    """Runtime state of one (init) container."""

    spec: JSON
    init: bool
    state: str = "waiting"  # waiting | running | terminated
    reason: str = "ContainerCreating"
    message: str = ""
    proc: subprocess.Popen[bytes] | None = None
    pid: int = 0
    started_at: str = ""
    term: JSON | None = None  # the current run's `terminated` state
    last_term: JSON | None = None  # the previous run's
    restart_count: int = 0
    ran: bool = False
    ready: bool = False
    started: bool = False  # startupProbe passed (or none)
    retry_at: float | None = 0.0  # monotonic time of the next (re)start; None: never again
    config_failures: int = 0
    log_offset: int = 0
    runs: list[int] = field(default_factory=list)  # log file offset where each run began
    probe_stop: threading.Event | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @property
    def sidecar(self) -> bool:
        return self.init and self.spec.get("restartPolicy") == "Always"

    def waiting(self, reason: str, message: str = "") -> None:
        self.state, self.reason, self.message = "waiting", reason, message

    def status(self) -> JSON:
        image = str(self.spec.get("image") or "")
        st: JSON = {
            "name": self.name,
            "image": image,
            "imageID": f"bed://{image}" if self.ran else "",
            "ready": bool(self.ready and self.state == "running"),
            "restartCount": self.restart_count,
            "started": bool(self.started and self.state == "running"),
        }
        if self.state == "running":
            st["containerID"] = f"bed://{self.pid}"
            st["state"] = {"running": {"startedAt": self.started_at}}
        elif self.state == "terminated" and self.term is not None:
            st["containerID"] = f"bed://{self.pid}"
            st["state"] = {"terminated": self.term}
        else:
            waiting: JSON = {"reason": self.reason}
            if self.message:
                waiting["message"] = self.message
            st["state"] = {"waiting": waiting}
        st["lastState"] = {"terminated": self.last_term} if self.last_term else {}
        return st


# --------------------------------------------------------------------------------------------------------------
# the worker


class PodWorker(threading.Thread):
    def __init__(self, node: NodeContext, pod: JSON) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.node = node
        self.kube = node.kube
        self.pod = pod
        self.uid: str = meta["uid"]
        self.ns: str = meta["namespace"]
        self.pod_name: str = meta["name"]
        self.key = f"{self.ns}/{self.pod_name}"
        self.wake = threading.Event()
        self.vanished = False
        self.done = False
        spec = pod["spec"]
        self.policy: str = spec.get("restartPolicy") or "Always"
        self.inits = [Ctr(c, True, reason="PodInitializing") for c in spec.get("initContainers") or []]
        self.mains = [
            Ctr(c, False, reason="PodInitializing" if self.inits else "ContainerCreating")
            for c in spec.get("containers") or []
        ]
        if self.inits:
            self.inits[0].reason = "ContainerCreating"
        self.phase = "Pending"
        self.reason = ""
        self.message = ""
        self.start_time = now_iso()
        self.start_mono = time.monotonic()
        self.sandbox_ready = False
        self.initialized = not self.inits
        self.sidecars: list[Ctr] = []  # init containers with restartPolicy Always, once started
        self.volumes: dict[str, tuple[Path, bool]] = {}  # name -> (host path, read-only by nature)
        self.tokens: list[tuple[Path, JSON, str, float]] = []  # (file, TokenRequest body, SA, refresh at)
        self.cond_times: dict[str, tuple[str, str]] = {}
        for cond in (pod.get("status") or {}).get("conditions") or []:
            self.cond_times[cond["type"]] = (cond.get("status", ""), cond.get("lastTransitionTime") or now_iso())
        self.last_status: JSON | None = None
        self.objects: dict[tuple[str, str], JSON | None] = {}
        self.events_sent: set[str] = set()
        self.pod_dir = node.state_dir / "pods" / self.ns / self.pod_name
        self.vol_dir = node.state_dir / "volumes" / self.uid

    # --- called from the agent's threads --------------------------------------------------------------------------
    def update(self, pod: JSON) -> None:
        self.pod = pod
        self.wake.set()

    def vanish(self) -> None:
        self.vanished = True
        self.wake.set()

    def container(self, name: str) -> Ctr | None:
        return next((c for c in self.mains + self.inits if c.name == name), None)

    def kill_now(self) -> None:
        """The agent stops: kill every process of the pod (no status: like a node going down)."""
        for c in self.inits + self.mains:
            if c.proc is not None and c.proc.poll() is None:
                signal_group(c.pid, signal.SIGKILL)

    # --- main loop ------------------------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:
            log.exception("pod %s: worker failed", self.key)
            try:
                self._kill_all(grace=2)
                if not self.vanished:
                    self.phase, self.reason = "Failed", "NodeAgentError"
                    self.message = f"the bed's node agent failed to run the pod: {exc}"[:500]
                    self._report(final=True)
                    if self.deleting:
                        self._delete_pod()
            except Exception:
                log.exception("pod %s: could not report the failure", self.key)
        finally:
            self.done = True
            for c in self.inits + self.mains:
                if c.probe_stop is not None:
                    c.probe_stop.set()

    @property
    def deleting(self) -> bool:
        return bool(self.pod["metadata"].get("deletionTimestamp"))

    def _stopping(self) -> bool:
        return self.vanished or self.deleting

    def _sleep(self, timeout: float) -> None:
        self.wake.wait(max(0.0, min(timeout, 5.0)))
        self.wake.clear()

    def _deadline_at(self) -> float | None:
        seconds = self.pod["spec"].get("activeDeadlineSeconds")
        return None if seconds is None else self.start_mono + float(seconds)

    def _next_wake(self, ctrs: list[Ctr]) -> float:
        now = time.monotonic()
        times = [c.retry_at for c in ctrs if c.state != "running" and c.retry_at is not None]
        deadline = self._deadline_at()
        if deadline is not None:
            times.append(deadline)
        times.extend(t[3] for t in self.tokens)
        return min(times, default=now + 5.0) - now

    def _run(self) -> None:
        self._prepare_dirs()
        attempt = 0
        while True:
            if self._stopping():
                return self._stop()
            err = self._setup_volumes()
            if err is None:
                break
            for c in self.inits[:1] if self.inits else self.mains:
                c.waiting("ContainerCreating", err)
            self._event("Warning", "FailedMount", f"MountVolume.SetUp failed: {err}")
            self._report()
            self._sleep(min(10.0, 0.5 * 2**attempt))
            attempt += 1
        self.sandbox_ready = True
        for c in self.inits + self.mains:
            if c.reason == "ContainerCreating":
                c.message = ""

        for index, c in enumerate(self.inits):
            while True:
                if self._stopping():
                    return self._stop()
                if self._past_deadline():
                    return self._deadline_exceeded()
                self._refresh_tokens()
                self._tend(self.sidecars)
                if c.state == "running" and c.proc is not None and c.proc.poll() is not None:
                    self._reap(c)
                if c.sidecar and c.state == "running" and c.started:
                    self.sidecars.append(c)  # a sidecar counts as initialised once started
                    break
                if c.state == "terminated" and c.term is not None:
                    if c.term["exitCode"] == 0:
                        break
                    self.phase = "Failed"  # restartPolicy Never and an init container failed
                    for m in self.mains:
                        m.retry_at = None
                    self._finish()
                    return None
                if c.state != "running" and c.retry_at is not None and time.monotonic() >= c.retry_at:
                    self._start(c)
                self._report()
                if c.state == "running" and (
                    (c.started and c.sidecar) or (c.proc is not None and c.proc.poll() is not None)
                ):
                    continue
                self._sleep(self._next_wake([c, *self.sidecars]))
            if index + 1 < len(self.inits):
                self.inits[index + 1].reason = "ContainerCreating"
        if self.inits:
            self.initialized = True
            for m in self.mains:
                m.reason = "ContainerCreating"

        while True:
            if self._stopping():
                return self._stop()
            if self._past_deadline():
                return self._deadline_exceeded()
            self._refresh_tokens()
            self._tend(self.mains + self.sidecars)
            phase = self._main_phase()
            if phase in TERMINAL:
                self.phase = phase
                self._finish()
                return None
            self.phase = phase
            self._report()
            self._sleep(self._next_wake(self.mains + self.sidecars))

    def _tend(self, ctrs: list[Ctr]) -> None:
        """Reap the containers that exited, (re)start those that are due."""
        for c in ctrs:
            if c.state == "running" and c.proc is not None and c.proc.poll() is not None:
                self._reap(c)
        now = time.monotonic()
        for c in ctrs:
            if c.state != "running" and c.retry_at is not None and now >= c.retry_at:
                self._start(c)

    def _main_phase(self) -> str:
        waiting = running = stopped = succeeded = 0
        for c in self.mains:
            if c.state == "running":
                running += 1
            elif c.state == "terminated":
                stopped += 1
                if c.term is not None and c.term["exitCode"] == 0:
                    succeeded += 1
            elif c.last_term is not None:
                stopped += 1
            else:
                waiting += 1
        if waiting:
            return "Pending"
        if running:
            return "Running"
        if self.policy == "Always":
            return "Running"
        if self.policy == "OnFailure":
            return "Succeeded" if stopped == succeeded else "Running"
        return "Succeeded" if stopped == succeeded else "Failed"

    def _past_deadline(self) -> bool:
        deadline = self._deadline_at()
        return deadline is not None and time.monotonic() >= deadline

    # --- endings --------------------------------------------------------------------------------------------------
    def _grace(self) -> float:
        meta, spec = self.pod["metadata"], self.pod["spec"]
        grace = meta.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = spec.get("terminationGracePeriodSeconds")
        return float(30 if grace is None else grace)

    def _finish(self) -> None:
        """The pod reached a terminal phase: stop the sidecars, report it (retrying)."""
        grace = self.pod["spec"].get("terminationGracePeriodSeconds")
        self._kill_all(grace=float(30 if grace is None else grace))
        for c in self.inits + self.mains:
            if c.state != "running" and c.state != "terminated":
                c.retry_at = None
        self._report(final=True)
        log.info("pod %s: %s%s", self.key, self.phase, f" ({self.reason})" if self.reason else "")

    def _deadline_exceeded(self) -> None:
        log.info("pod %s: active deadline exceeded; killing", self.key)
        self._event("Normal", "DeadlineExceeded", "Pod was active on the node longer than the specified deadline")
        grace = self.pod["spec"].get("terminationGracePeriodSeconds")
        self._kill_all(grace=float(30 if grace is None else grace))
        self.phase = "Failed"
        self.reason = "DeadlineExceeded"
        self.message = "Pod was active on the node longer than the specified deadline"
        self._finish()

    def _stop(self) -> None:
        """Deletion (graceful) or disappearance of the pod: kill, report, finish the deletion, clean up."""
        if not self.vanished:
            running = [c.name for c in self.inits + self.mains if c.state == "running"]
            if running:
                self._event("Normal", "Killing", f"Stopping container {', '.join(running)}")
            self._kill_all(grace=self._grace())
        else:
            self._kill_all(grace=2)
        if not self.vanished:
            if self.phase not in TERMINAL:
                all_ok = all(c.state == "terminated" and c.term and c.term["exitCode"] == 0 for c in self.mains)
                self.phase = "Succeeded" if all_ok and self.initialized else "Failed"
            for c in self.inits + self.mains:
                c.retry_at = None
            self._report(final=True)
            self._delete_pod()
        self.cleanup()

    def _delete_pod(self) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": self.uid},
        }
        for attempt in range(10):
            try:
                self.kube.request("DELETE", f"/api/v1/namespaces/{self.ns}/pods/{self.pod_name}", body=body)
                log.info("pod %s: deleted", self.key)
                return
            except ApiError as exc:
                if exc.status in (404, 409):
                    return
                if not exc.transient:
                    log.warning("pod %s: delete failed: %s", self.key, exc)
                    return
            except Exception as exc:
                if not is_transient(exc):
                    raise
            if self.vanished:
                return
            time.sleep(min(2.0, 0.1 * 2**attempt))

    def cleanup(self) -> None:
        shutil.rmtree(self.vol_dir, ignore_errors=True)

    def _kill_all(self, grace: float) -> None:
        live = [c for c in self.inits + self.mains if c.state == "running" and c.proc is not None]
        for c in live:
            if c.probe_stop is not None:
                c.probe_stop.set()
            if c.proc is not None and c.proc.poll() is None:
                signal_group(c.pid, signal.SIGTERM if grace > 0 else signal.SIGKILL)
        started = time.monotonic()
        deadline = started + grace
        while any(c.proc is not None and c.proc.poll() is None for c in live):
            if self.deleting:  # a second delete may have shortened the grace period
                deadline = min(deadline, started + self._grace())
            if time.monotonic() >= deadline or (self.vanished and grace > 2):
                break
            time.sleep(0.05)
        for c in live:
            signal_group(c.pid, signal.SIGKILL)
            if c.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    c.proc.wait(timeout=10)
            self._reap(c, restart=False)

    # --- processes ------------------------------------------------------------------------------------------------
    def _prepare_dirs(self) -> None:
        uid_file = self.pod_dir / "uid"
        try:
            old = uid_file.read_text().strip()
        except OSError:
            old = ""
        if old != self.uid:
            shutil.rmtree(self.pod_dir, ignore_errors=True)
        self.pod_dir.mkdir(parents=True, exist_ok=True)
        uid_file.write_text(self.uid)
        (self.vol_dir / ".termination").mkdir(parents=True, exist_ok=True)

    def _start(self, c: Ctr) -> None:
        self.objects.clear()
        try:
            env = self._container_env(c.spec)
            argv = [expand(str(a), env) for a in (c.spec.get("command") or []) + (c.spec.get("args") or [])]
            if not argv:
                raise ConfigError("no command: the bed runs no images, so a container needs `command` (or `args`)")
            mounts = self._mounts(c, env)
        except (ConfigError, ApiError) as exc:
            c.config_failures += 1
            c.waiting("CreateContainerConfigError", str(exc))
            c.retry_at = time.monotonic() + min(10.0, 0.5 * 2 ** min(c.config_failures, 5))
            if c.config_failures == 1 or c.config_failures % 10 == 0:
                log.info("pod %s: container %s: %s", self.key, c.name, exc)
            self._event("Warning", "Failed", f"Error: {exc}")
            return
        except Exception as exc:
            if not is_transient(exc):
                raise
            c.retry_at = time.monotonic() + 1.0
            return
        c.config_failures = 0
        workdir = str(c.spec.get("workingDir") or "/")
        # Every source is opened first (a mount may hide the next one's path: an emptyDir on /tmp over a state
        # directory under /tmp), then mounted through /proc/self/fd (`-c`: no canonicalisation back to the path).
        lines = ["set -e"]
        fds: list[str] = []
        for i, (src, _dst, _is_dir, _ro) in enumerate(mounts):
            if os.path.isdir(src) or os.path.isfile(src):
                lines.append(f"exec {{f{i}}}<{shlex.quote(src)}")
                fds.append(f"{{f{i}}}<&-")
        for i, (src, dst, is_dir, ro) in enumerate(mounts):
            q_dst = shlex.quote(dst)
            source = f"/proc/self/fd/$f{i}" if os.path.isdir(src) or os.path.isfile(src) else shlex.quote(src)
            if is_dir:
                lines.append(f"{self.node.mkdir} -p {q_dst}")
            else:
                lines.append(f"{self.node.mkdir} -p {shlex.quote(os.path.dirname(dst) or '/')}")
                lines.append(f"[ -e {q_dst} ] || : > {q_dst}")
            lines.append(f"{self.node.mount} -c --bind {source} {q_dst}")
            if ro:
                lines.append(f"{self.node.mount} -c -o remount,bind,ro {q_dst}")
        if fds:
            lines.append("exec " + " ".join(fds))
        lines.append(f"{self.node.mkdir} -p {shlex.quote(workdir)}")
        lines.append(f"cd {shlex.quote(workdir)}")
        lines.append('exec "$@"')
        script = "\n".join(lines)
        log_path = self.pod_dir / f"{c.name}.log"
        prefix = [self.node.setpriv, "--pdeathsig", "KILL"] if self.node.setpriv else []
        prefix += [self.node.unshare, "-m", "--propagation", "private"]
        if self.node.stopping.is_set():
            return
        with log_path.open("ab") as out:
            c.log_offset = out.tell()
            c.runs.append(c.log_offset)
            proc = subprocess.Popen(
                [*prefix, self.node.bash, "-c", script, "bed", *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd="/",
                start_new_session=True,
                close_fds=True,
            )
        self._record_proc(proc.pid)
        if c.ran:
            c.restart_count += 1
            c.last_term = c.term
        c.ran = True
        c.proc, c.pid, c.env = proc, proc.pid, env
        c.state, c.reason, c.message, c.term = "running", "", "", None
        c.started_at = now_iso()
        c.retry_at = None
        probes = {k: c.spec[k] for k in ("startupProbe", "readinessProbe", "livenessProbe") if c.spec.get(k)}
        c.started = "startupProbe" not in probes
        c.ready = "readinessProbe" not in probes
        c.probe_stop = threading.Event()
        if probes:
            threading.Thread(
                target=self._probe_loop, args=(c, probes, c.probe_stop), daemon=True, name=f"probe-{self.key}/{c.name}"
            ).start()

        def waiter() -> None:
            proc.wait()
            self.wake.set()

        threading.Thread(target=waiter, daemon=True, name=f"wait-{proc.pid}").start()
        log.info("pod %s: started %scontainer %s (pid %d)", self.key, "init " if c.init else "", c.name, proc.pid)
        self._event("Normal", "Started", f"Started container {c.name}", once=False)

    def _record_proc(self, pid: int) -> None:
        ticks = proc_start_ticks(pid)
        with contextlib.suppress(OSError):
            self.node.procs_dir.mkdir(parents=True, exist_ok=True)
            (self.node.procs_dir / str(pid)).write_text(json.dumps({"pid": pid, "ticks": ticks, "uid": self.uid}))

    def _reap(self, c: Ctr, restart: bool = True) -> None:
        """The container's process exited: record how, and decide about a restart."""
        assert c.proc is not None
        rc = c.proc.poll()
        if rc is None:
            return
        code = 128 - rc if rc < 0 else rc
        signal_group(c.pid, signal.SIGKILL)  # whatever it left behind in its process group
        with contextlib.suppress(OSError):
            (self.node.procs_dir / str(c.pid)).unlink()
        if c.probe_stop is not None:
            c.probe_stop.set()
        term: JSON = {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": c.started_at,
            "finishedAt": now_iso(),
            "containerID": f"bed://{c.pid}",
        }
        message = self._termination_message(c, code)
        if message:
            term["message"] = message
        c.term, c.proc, c.ready = term, None, False
        log.info("pod %s: %scontainer %s exited with %d", self.key, "init " if c.init else "", c.name, code)
        always = c.sidecar or (self.policy == "Always" and not c.init)
        again = restart and (always or (self.policy != "Never" and code != 0))
        if again:
            delay = min(10.0, float(2 ** min(c.restart_count, 4)))
            c.last_term = term
            c.waiting(
                "CrashLoopBackOff",
                f"back-off {delay:.0f}s restarting failed container={c.name} pod={self.pod_name}_{self.ns}({self.uid})",
            )
            c.retry_at = time.monotonic() + delay
        else:
            c.state = "terminated"
            c.retry_at = None

    def _termination_message(self, c: Ctr, code: int) -> str:
        path = self.vol_dir / ".termination" / c.name
        data: bytes
        try:
            with path.open("rb") as f:
                data = f.read(MAX_TERMINATION_MESSAGE)
        except OSError:
            data = b""
        if not data and code != 0 and c.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            try:
                with (self.pod_dir / f"{c.name}.log").open("rb") as f:
                    f.seek(c.log_offset)
                    tail = f.read()[-64 * 1024 :]
                data = b"\n".join(tail.splitlines()[-FALLBACK_LOG_LINES:])[-FALLBACK_LOG_BYTES:]
            except OSError:
                data = b""
        return data.decode(errors="replace")

    # --- environment ----------------------------------------------------------------------------------------------
    def _get(self, kind: str, name: str) -> JSON | None:
        """A Secret or ConfigMap of the pod's namespace, or None when it does not exist (cached per attempt)."""
        key = (kind, name)
        if key in self.objects:
            return self.objects[key]
        plural = {"Secret": "secrets", "ConfigMap": "configmaps", "PersistentVolumeClaim": "persistentvolumeclaims"}
        path = f"/api/v1/namespaces/{self.ns}/{plural[kind]}/{name}"
        deadline = time.monotonic() + 5.0
        while True:
            try:
                obj: JSON | None = self.kube.get(path, timeout=10)
                break
            except ApiError as exc:
                if exc.status == 404:
                    obj = None
                    break
                # The node authorizer learns about a freshly bound pod's references asynchronously.
                if exc.status == 403 and time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                raise
        self.objects[key] = obj
        return obj

    def _key_value(self, kind: str, ref: JSON) -> str | None:
        name, key, optional = ref.get("name") or "", ref.get("key") or "", bool(ref.get("optional"))
        obj = self._get(kind, name)
        if obj is None:
            if optional:
                return None
            raise ConfigError(f'{kind.lower()} "{name}" not found')
        data = self._data(kind, obj)
        if key not in data:
            if optional:
                return None
            raise ConfigError(f"couldn't find key {key} in {kind} {self.ns}/{name}")
        return data[key].decode(errors="replace")

    @staticmethod
    def _data(kind: str, obj: JSON) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        if kind == "Secret":
            for k, v in (obj.get("data") or {}).items():
                out[k] = base64.b64decode(v or "")
            for k, v in (obj.get("stringData") or {}).items():
                out[k] = str(v).encode()
        else:
            for k, v in (obj.get("binaryData") or {}).items():
                out[k] = base64.b64decode(v or "")
            for k, v in (obj.get("data") or {}).items():
                out[k] = str(v).encode()
        return out

    def _field(self, path: str) -> str:
        meta, spec = self.pod["metadata"], self.pod["spec"]
        m = re.match(r"^metadata\.(labels|annotations)\['(.*)'\]$", path)
        if m:
            return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
        simple = {
            "metadata.name": meta.get("name"),
            "metadata.namespace": meta.get("namespace"),
            "metadata.uid": meta.get("uid"),
            "spec.nodeName": self.node.node_name,
            "spec.serviceAccountName": spec.get("serviceAccountName") or "default",
            "status.podIP": LOOPBACK,
            "status.hostIP": LOOPBACK,
            "status.podIPs": LOOPBACK,
            "status.hostIPs": LOOPBACK,
        }
        if path in simple:
            return str(simple[path] or "")
        if path in ("metadata.labels", "metadata.annotations"):
            items = meta.get(path.split(".")[1]) or {}
            return "\n".join(f'{k}="{v}"' for k, v in sorted(items.items()))
        raise ConfigError(f"unsupported fieldPath {path}")

    def _resource(self, ref: JSON, default_container: JSON | None) -> str:
        container = default_container
        if ref.get("containerName"):
            container = next(
                (c for c in self.pod["spec"].get("containers") or [] if c["name"] == ref["containerName"]), None
            )
        what = str(ref.get("resource") or "")
        kind, _, res = what.partition(".")
        resources = (container or {}).get("resources") or {}
        value = (resources.get(kind) or {}).get(res)
        if value is None and kind == "requests":
            value = (resources.get("limits") or {}).get(res)
        if value is None:
            value = {"cpu": self.node.cpu, "memory": self.node.memory}.get(res, 0) if kind == "limits" else 0
        divisor = parse_quantity(ref.get("divisor") or 1) or 1
        return str(math.ceil(parse_quantity(value) / divisor))

    def _container_env(self, spec: JSON) -> dict[str, str]:
        node = self.node
        env: dict[str, str] = {
            "PATH": node.path_env,
            "HOME": os.environ.get("HOME", "/root"),
            "HOSTNAME": str(self.pod["spec"].get("hostname") or self.pod_name),
            "KUBERNETES_SERVICE_HOST": LOOPBACK,
            "KUBERNETES_SERVICE_PORT": str(node.api_port),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(node.api_port),
            "KUBERNETES_PORT": f"tcp://{LOOPBACK}:{node.api_port}",
            "KUBERNETES_PORT_443_TCP": f"tcp://{LOOPBACK}:{node.api_port}",
            "KUBERNETES_PORT_443_TCP_PROTO": "tcp",
            "KUBERNETES_PORT_443_TCP_ADDR": LOOPBACK,
            "KUBERNETES_PORT_443_TCP_PORT": str(node.api_port),
        }
        for name in ("LANG", "LC_ALL", "TZ"):
            if name in os.environ:
                env[name] = os.environ[name]
        defined: dict[str, str] = {}
        for source in spec.get("envFrom") or []:
            prefix = source.get("prefix") or ""
            for kind, ref_key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                ref = source.get(ref_key)
                if not ref:
                    continue
                obj = self._get(kind, ref.get("name") or "")
                if obj is None:
                    if ref.get("optional"):
                        continue
                    raise ConfigError(f'{kind.lower()} "{ref.get("name")}" not found')
                for k, v in self._data(kind, obj).items():
                    defined[prefix + k] = v.decode(errors="replace")
        for item in spec.get("env") or []:
            name = item["name"]
            if "valueFrom" not in item or item.get("value"):
                defined[name] = expand(str(item.get("value") or ""), defined)
                continue
            source = item["valueFrom"]
            value: str | None
            if "secretKeyRef" in source:
                value = self._key_value("Secret", source["secretKeyRef"])
            elif "configMapKeyRef" in source:
                value = self._key_value("ConfigMap", source["configMapKeyRef"])
            elif "fieldRef" in source:
                value = self._field(source["fieldRef"]["fieldPath"])
            elif "resourceFieldRef" in source:
                value = self._resource(source["resourceFieldRef"], spec)
            else:
                raise ConfigError(f"env {name}: unsupported valueFrom")
            if value is not None:
                defined[name] = value
        env.update(defined)
        return env

    # --- volumes --------------------------------------------------------------------------------------------------
    def _setup_volumes(self) -> str | None:
        """Materialise every volume; an error message when one cannot be set up yet."""
        self.objects.clear()
        self.tokens.clear()
        try:
            for vol in self.pod["spec"].get("volumes") or []:
                self.volumes[vol["name"]] = self._volume(vol)
        except (ConfigError, ApiError) as exc:
            return str(exc)
        except Exception as exc:
            if is_transient(exc):
                return str(exc)
            raise
        return None

    def _volume(self, vol: JSON) -> tuple[Path, bool]:
        name = vol["name"]
        target = self.vol_dir / name
        if "emptyDir" in vol:
            target.mkdir(parents=True, exist_ok=True)
            return target, False
        if "hostPath" in vol:
            hp = vol["hostPath"]
            path = Path(hp["path"])
            kind = hp.get("type") or ""
            if kind == "DirectoryOrCreate":
                path.mkdir(parents=True, exist_ok=True)
            elif kind == "FileOrCreate" and not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
            elif kind == "Directory" and not path.is_dir():
                raise ConfigError(f"hostPath type check failed: {path} is not a directory")
            elif kind == "File" and not path.is_file():
                raise ConfigError(f"hostPath type check failed: {path} is not a file")
            elif kind and kind not in ("DirectoryOrCreate", "FileOrCreate", "Directory", "File") and not path.exists():
                raise ConfigError(f"hostPath type check failed: {path} does not exist")
            return path, False
        if "persistentVolumeClaim" in vol:
            claim = vol["persistentVolumeClaim"]["claimName"]
            if self._get("PersistentVolumeClaim", claim) is None:
                raise ConfigError(f'persistentvolumeclaim "{claim}" not found')
            path = self.node.state_dir / "pvc" / self.ns / claim
            path.mkdir(parents=True, exist_ok=True)
            return path, bool(vol["persistentVolumeClaim"].get("readOnly"))
        files: dict[str, tuple[bytes, int]] = {}
        if "configMap" in vol or "secret" in vol:
            kind = "ConfigMap" if "configMap" in vol else "Secret"
            src = vol["configMap"] if kind == "ConfigMap" else vol["secret"]
            default_mode = src.get("defaultMode", 0o644)
            obj_name = src.get("name") if kind == "ConfigMap" else src.get("secretName")
            self._projected_keys(kind, {**src, "name": obj_name}, default_mode, files)
        elif "downwardAPI" in vol:
            self._downward(vol["downwardAPI"], vol["downwardAPI"].get("defaultMode", 0o644), files)
        elif "projected" in vol:
            proj = vol["projected"]
            default_mode = proj.get("defaultMode", 0o644)
            for source in proj.get("sources") or []:
                if "configMap" in source:
                    self._projected_keys("ConfigMap", source["configMap"], default_mode, files)
                elif "secret" in source:
                    self._projected_keys("Secret", source["secret"], default_mode, files)
                elif "downwardAPI" in source:
                    self._downward(source["downwardAPI"], default_mode, files)
                elif "serviceAccountToken" in source:
                    self._token(source["serviceAccountToken"], target, default_mode, files)
                else:
                    raise ConfigError(f"volume {name}: unsupported projected source {sorted(source)}")
        else:
            kinds = sorted(k for k in vol if k != "name")
            raise ConfigError(f"volume {name}: unsupported volume type {kinds} on the bed")
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        for rel, (data, mode) in files.items():
            write_atomic(target / rel, data, mode)
        return target, True

    def _projected_keys(self, kind: str, src: JSON, default_mode: int, files: dict[str, tuple[bytes, int]]) -> None:
        name = src.get("name") or ""
        obj = self._get(kind, name)
        if obj is None:
            if src.get("optional"):
                return
            raise ConfigError(f'{kind.lower()} "{name}" not found')
        data = self._data(kind, obj)
        items = src.get("items")
        if not items:
            for k, v in data.items():
                files[safe_relpath(k)] = (v, default_mode)
            return
        for item in items:
            key = item["key"]
            if key not in data:
                if src.get("optional"):
                    continue
                raise ConfigError(f"{kind.lower()} {self.ns}/{name}: references non-existent key {key}")
            files[safe_relpath(item["path"])] = (data[key], item.get("mode", default_mode))

    def _downward(self, src: JSON, default_mode: int, files: dict[str, tuple[bytes, int]]) -> None:
        for item in src.get("items") or []:
            if "fieldRef" in item:
                value = self._field(item["fieldRef"]["fieldPath"])
            elif "resourceFieldRef" in item:
                value = self._resource(item["resourceFieldRef"], None)
            else:
                raise ConfigError(f"downwardAPI item {item.get('path')}: no fieldRef or resourceFieldRef")
            files[safe_relpath(item["path"])] = (value.encode(), item.get("mode", default_mode))

    def _token(self, src: JSON, target: Path, default_mode: int, files: dict[str, tuple[bytes, int]]) -> None:
        seconds = int(src.get("expirationSeconds") or DEFAULT_TOKEN_SECONDS)
        audience = src.get("audience")
        body: JSON = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [audience] if audience else [],
                "expirationSeconds": seconds,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": self.pod_name, "uid": self.uid},
            },
        }
        sa = self.pod["spec"].get("serviceAccountName") or "default"
        token = self._request_token(sa, body)
        rel = safe_relpath(src.get("path") or "token")
        files[rel] = (token.encode(), default_mode)
        self.tokens.append((target / rel, body, sa, time.monotonic() + seconds * 0.8))

    def _request_token(self, sa: str, body: JSON) -> str:
        path = f"/api/v1/namespaces/{self.ns}/serviceaccounts/{sa}/token"
        deadline = time.monotonic() + 5.0
        while True:
            try:
                return str(self.kube.request("POST", path, body=body, timeout=10)["status"]["token"])
            except ApiError as exc:
                if exc.status == 403 and time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                if exc.status == 404:
                    raise ConfigError(f'serviceaccount "{sa}" not found') from exc
                raise

    def _refresh_tokens(self) -> None:
        now = time.monotonic()
        for i, (path, body, sa, refresh_at) in enumerate(self.tokens):
            if now < refresh_at:
                continue
            try:
                token = self._request_token(sa, body)
            except Exception as exc:
                log.warning("pod %s: token refresh failed: %s", self.key, exc)
                self.tokens[i] = (path, body, sa, now + 10)
                continue
            write_atomic(path, token.encode(), path.stat().st_mode & 0o7777 if path.exists() else 0o644)
            self.tokens[i] = (path, body, sa, now + int(body["spec"]["expirationSeconds"]) * 0.8)

    def _mounts(self, c: Ctr, env: dict[str, str]) -> list[tuple[str, str, bool, bool]]:
        """(source, target, source is a directory, read-only) for each mount of a container, parents first."""
        out: list[tuple[str, str, bool, bool]] = []
        for vm in c.spec.get("volumeMounts") or []:
            if vm["name"] not in self.volumes:
                raise ConfigError(f"volumeMount {vm['name']}: no such volume")
            base, nature_ro = self.volumes[vm["name"]]
            src = base
            sub = vm.get("subPath") or (expand(vm["subPathExpr"], env) if vm.get("subPathExpr") else "")
            if sub:
                src = base / safe_relpath(sub)
                if not src.exists():
                    src.mkdir(parents=True, exist_ok=True)
            ro = bool(vm.get("readOnly")) or nature_ro
            out.append((str(src), os.path.normpath(str(vm["mountPath"])), src.is_dir(), ro))
        tl = self.vol_dir / ".termination" / c.name
        tl.write_bytes(b"")
        tl_path = str(c.spec.get("terminationMessagePath") or "/dev/termination-log")
        out.append((str(tl), os.path.normpath(tl_path), False, False))
        out.sort(key=lambda m: m[1].count("/"))
        return out

    # --- probes ---------------------------------------------------------------------------------------------------
    def _probe_loop(self, c: Ctr, probes: dict[str, JSON], stop: threading.Event) -> None:
        try:
            if "startupProbe" in probes:
                if not self._probe_until(c, probes["startupProbe"], stop, "startup"):
                    return
                c.started = True
                self.wake.set()
            threads = []
            for kind in ("readinessProbe", "livenessProbe"):
                if kind in probes:
                    t = threading.Thread(target=self._probe_until, args=(c, probes[kind], stop, kind[:-5]), daemon=True)
                    t.start()
                    threads.append(t)
            for t in threads:
                t.join()
        except Exception:
            log.exception("pod %s: probe of %s failed", self.key, c.name)

    def _probe_until(self, c: Ctr, probe: JSON, stop: threading.Event, kind: str) -> bool:
        """Run one probe until the container stops; the startup probe returns True on success."""
        period = float(probe.get("periodSeconds") or 10)
        timeout = float(probe.get("timeoutSeconds") or 1)
        success_needed = int(probe.get("successThreshold") or 1)
        failures_allowed = int(probe.get("failureThreshold") or 3)
        if stop.wait(float(probe.get("initialDelaySeconds") or 0)):
            return False
        successes = failures = 0
        while not stop.is_set():
            ok = self._probe_once(c, probe, timeout)
            if stop.is_set():
                return False
            if ok:
                successes, failures = successes + 1, 0
                if kind == "startup":
                    return True
                if kind == "readiness" and not c.ready and successes >= success_needed:
                    c.ready = True
                    self.wake.set()
            else:
                successes, failures = 0, failures + 1
                if kind == "readiness" and c.ready and failures >= failures_allowed:
                    c.ready = False
                    self.wake.set()
                if kind in ("liveness", "startup") and failures >= failures_allowed:
                    log.info("pod %s: %s probe of %s failed; killing it", self.key, kind, c.name)
                    self._event("Warning", "Unhealthy", f"{kind.capitalize()} probe failed", once=False)
                    grace = probe.get("terminationGracePeriodSeconds") or self.pod["spec"].get(
                        "terminationGracePeriodSeconds", 30
                    )
                    signal_group(c.pid, signal.SIGTERM)
                    if not stop.wait(float(grace)):
                        signal_group(c.pid, signal.SIGKILL)
                    return False
            if stop.wait(period):
                return False
        return False

    def _probe_once(self, c: Ctr, probe: JSON, timeout: float) -> bool:
        try:
            if "exec" in probe:
                cmd = [str(a) for a in probe["exec"].get("command") or []]
                workdir = str(c.spec.get("workingDir") or "/")
                argv = [
                    self.node.nsenter,
                    "-t",
                    str(c.pid),
                    "-m",
                    "--",
                    self.node.sh,
                    "-c",
                    f'cd {shlex.quote(workdir)} && exec "$@"',
                    "sh",
                    *cmd,
                ]
                res = subprocess.run(
                    argv,
                    env=c.env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    timeout=timeout,
                    check=False,
                )
                return res.returncode == 0
            if "httpGet" in probe or "tcpSocket" in probe:
                action = probe.get("httpGet") or probe.get("tcpSocket") or {}
                port = self._port(c, action.get("port"))
                if "tcpSocket" in probe:
                    with socket.create_connection((LOOPBACK, port), timeout=timeout):
                        return True
                conn: http.client.HTTPConnection
                if str(action.get("scheme") or "HTTP").upper() == "HTTPS":
                    ctx = ssl._create_unverified_context()
                    conn = http.client.HTTPSConnection(LOOPBACK, port, timeout=timeout, context=ctx)
                else:
                    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
                try:
                    headers = {h["name"]: h["value"] for h in action.get("httpHeaders") or []}
                    conn.request("GET", str(action.get("path") or "/"), headers=headers)
                    return 200 <= conn.getresponse().status < 400
                finally:
                    conn.close()
        except (OSError, subprocess.TimeoutExpired, http.client.HTTPException, ConfigError):
            return False
        return True  # grpc and unknown handlers: not probed on the bed

    @staticmethod
    def _port(c: Ctr, port: Any) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for p in c.spec.get("ports") or []:
            if p.get("name") == port:
                return int(p["containerPort"])
        raise ConfigError(f"no port named {port}")

    # --- status ---------------------------------------------------------------------------------------------------
    def _condition(self, ctype: str, ok: bool, reason: str = "", message: str = "") -> JSON:
        status = "True" if ok else "False"
        prev = self.cond_times.get(ctype)
        if prev is None or prev[0] != status:
            prev = (status, now_iso())
            self.cond_times[ctype] = prev
        # A strategic merge patch merges conditions by type: null removes a reason/message set before.
        return {
            "type": ctype,
            "status": status,
            "lastProbeTime": None,
            "lastTransitionTime": prev[1],
            "reason": reason if not ok and reason else None,
            "message": message if not ok and message else None,
        }

    def _status(self) -> JSON:
        terminal = self.phase in TERMINAL
        conds: list[JSON] = []
        existing = {c["type"]: c for c in (self.pod.get("status") or {}).get("conditions") or []}
        if existing.get("PodScheduled", {}).get("status") != "True":
            conds.append(self._condition("PodScheduled", True))
        conds.append(self._condition("PodReadyToStartContainers", self.sandbox_ready and not terminal))
        pending_inits = [
            c.name
            for c in self.inits
            if not (c.term and c.term["exitCode"] == 0 and c.state == "terminated") and c not in self.sidecars
        ]
        conds.append(
            self._condition(
                "Initialized",
                self.initialized,
                "ContainersNotInitialized",
                f"containers with incomplete status: [{' '.join(pending_inits)}]",
            )
        )
        unready = [c.name for c in self.sidecars + self.mains if not (c.ready and c.state == "running")]
        ready = not unready and not terminal
        reason = "PodCompleted" if terminal else "ContainersNotReady"
        message = "" if terminal else f"containers with unready status: [{' '.join(unready)}]"
        conds.append(self._condition("ContainersReady", ready, reason, message))
        gate_problems = []
        for gate in self.pod["spec"].get("readinessGates") or []:
            ctype = gate.get("conditionType")
            cond = existing.get(ctype)
            if cond is None:
                gate_problems.append(f'corresponding condition of pod readiness gate "{ctype}" does not exist.')
            elif cond.get("status") != "True":
                gate_problems.append(
                    f'the status of pod readiness gate "{ctype}" is not "True", but {cond.get("status")}'
                )
        if ready and gate_problems:
            conds.append(self._condition("Ready", False, "ReadinessGatesNotReady", ", ".join(gate_problems)))
        else:
            conds.append(self._condition("Ready", ready, reason, message))
        status: JSON = {
            "phase": self.phase,
            "conditions": conds,
            "hostIP": LOOPBACK,
            "hostIPs": [{"ip": LOOPBACK}],
            "startTime": self.start_time,
            "containerStatuses": [c.status() for c in self.mains],
        }
        if self.sandbox_ready:
            status["podIP"] = LOOPBACK
            status["podIPs"] = [{"ip": LOOPBACK}]
        if self.inits:
            status["initContainerStatuses"] = [c.status() for c in self.inits]
        status["reason"] = self.reason or None
        status["message"] = self.message or None
        generation = self.pod["metadata"].get("generation")
        if generation is not None:
            status["observedGeneration"] = generation
        return status

    def _report(self, final: bool = False) -> None:
        if self.node.stopping.is_set():
            return  # the agent exits: like a node going down, the pods keep their last status
        status = self._status()
        if status == self.last_status:
            return
        body = {"metadata": {"uid": self.uid}, "status": status}
        path = f"/api/v1/namespaces/{self.ns}/pods/{self.pod_name}/status"
        attempt = 0
        while True:
            try:
                self.kube.request("PATCH", path, body=body, content_type=STRATEGIC, timeout=15)
                self.last_status = status
                return
            except ApiError as exc:
                if exc.status in (404, 409):
                    log.info("pod %s: gone (%s)", self.key, exc.status)
                    self.vanished = True
                    return
                if not exc.transient:
                    log.warning("pod %s: status update rejected: %s", self.key, exc)
                    self.last_status = status
                    return
                err: Exception = exc
            except Exception as exc:
                if not is_transient(exc):
                    raise
                err = exc
            attempt += 1
            if not final or self.vanished or attempt > 60:
                log.warning("pod %s: status update failed: %s", self.key, err)
                return
            time.sleep(min(2.0, 0.1 * 2**attempt))

    def _event(self, etype: str, reason: str, message: str, once: bool = True) -> None:
        if once:
            if f"{reason}:{message}" in self.events_sent:
                return
            self.events_sent.add(f"{reason}:{message}")
        self.node.emit_event(self.pod, etype, reason, message)
