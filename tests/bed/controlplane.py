"""A local Kubernetes control plane for tests: etcd, kube-apiserver and kube-controller-manager (real binaries,
built by build-control-plane.sh), plus a node: ``node="real"`` (the default: kubelet, containerd, kube-proxy,
kube-scheduler, CoreDNS and a registry in namespaces of the bed's own, see bed.realnode) or ``node="none"`` (the
control plane alone).

Without a node everything listens on 127.0.0.1 on free ports. With the real node everything runs inside the bed's
network namespace; the host reaches kube-apiserver through a relay on a free port of 127.0.0.1.

The components run in their own sessions and survive the process
that started them (``python -m bed up``); their PIDs (with their start times, to survive PID reuse) are kept in
``DIR/state.json`` so that ``python -m bed down`` (or :meth:`Bed.stop`) from any process can stop them.

Layout of DIR::

    kubeconfig           admin (CN=bed-admin, O=system:masters)
    state.json           ports and processes
    pki/                 certificates and keys (see bed.pki), kube-controller-manager.kubeconfig
    etcd/                etcd's data (removed on stop)
    logs/<component>.log
    bin/kubectl bin/helm
    kubeconfig-netns     real node: admin kubeconfig for processes inside the bed's network namespace
    node/ fs/            real node: configuration, containerd's and the registry's data; what the node sees as
                         /tmp, /var/lib, /var/log
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import http.client
import itertools
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from bed import pki, realnode, relay

if TYPE_CHECKING:
    from kubernetes.client import ApiClient, Configuration

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
DEFAULT_DIR = REPO_ROOT / ".bed"
BUILD_SCRIPT = HERE / "build-control-plane.sh"
DEFAULT_NODE_NAME = "bed-node"
SERVICE_CLUSTER_IP_RANGE = "198.18.0.0/24"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
# Ports for the tests' processes in the bed's namespace (Bed.free_port): below the ephemeral ports (32768-60999)
# and NodePorts (30000-32767), one block per pytest-xdist worker.
_PORTS, _PORT_BLOCKS = (20000, 30000), 8
_PORT_BLOCK = (_PORTS[1] - _PORTS[0]) // _PORT_BLOCKS
_PORT_TURN = itertools.count()

# What `stop(purge=True)` removes from DIR (nothing else: DIR may be a directory the user gave).
_OWNED_ENTRIES = ("state.json", "state.lock", "kubeconfig", "kubeconfig-netns", "pki", "etcd", "logs", "bin",
                  "node", "fs", "clients")
NODE_MODES = ("real", "none")
_STATE_VERSION = 1
_LOG_TAIL_LINES = 40


class BedError(RuntimeError):
    """The test bed could not be started (or is not in the state asked for)."""


# --------------------------------------------------------------------------------------------------------------
# processes


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of a process, or None when there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[19])


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(raw[raw.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def _descendants(pid: int) -> list[int]:
    children = _children_map()
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@dataclass
class Component:
    """A started process, identified by PID and start time (so a reused PID is never signalled)."""

    name: str
    pid: int
    start_ticks: int
    log: str

    def alive(self) -> bool:
        stat = _proc_stat(self.pid)
        return stat is not None and stat[1] == self.start_ticks and stat[0] not in ("Z", "X")

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        try:
            text = Path(self.log).read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def _set_parent_death_signal() -> None:
    """preexec_fn: SIGTERM this child when its parent dies (used when the bed is owned by a test session)."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)


def _free_ports(count: int) -> list[int]:
    """Free TCP ports on 127.0.0.1 (all bound at once, so they are distinct)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _terminate(components: Sequence[Component], grace: float) -> None:
    """SIGTERM the components' process groups (and every descendant), then SIGKILL what is left after `grace`."""
    targets: list[Component] = [c for c in components if c.alive()]
    if not targets:
        return
    extra: list[Component] = []
    for comp in targets:
        for pid in _descendants(comp.pid):
            stat = _proc_stat(pid)
            if stat is not None:
                extra.append(Component(f"{comp.name}/child", pid, stat[1], comp.log))
    for comp in targets:
        _signal_group(comp.pid, signal.SIGTERM)
    for comp in extra:
        if comp.alive():
            _signal_group(comp.pid, signal.SIGTERM)
    everything = targets + extra
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(c.alive() for c in everything):
        time.sleep(0.05)
    for comp in everything:
        if comp.alive():
            _signal_group(comp.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(c.alive() for c in everything):
        time.sleep(0.05)


# --------------------------------------------------------------------------------------------------------------
# binaries


def ensure_binaries() -> Path:
    """Run build-control-plane.sh (a no-op when its cache is complete); return the directory of the binaries."""
    proc = subprocess.run(["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True, check=False)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise BedError(f"{BUILD_SCRIPT} failed with exit code {proc.returncode} (its messages are above)")
    out = Path(lines[-1])
    missing = [n for n in ("etcd", "kube-apiserver", "kube-controller-manager") if not (out / n).is_file()]
    if missing:
        raise BedError(f"{out}: missing {', '.join(missing)}; remove the directory and rebuild")
    return out


def _node_mode(node: str | None) -> str:
    """``node`` if given, else BED_NODE, else a real node."""
    mode = node or os.environ.get("BED_NODE") or "real"
    if mode not in NODE_MODES:
        raise BedError(f"node must be one of {', '.join(NODE_MODES)}, not {mode!r}")
    return mode


# --------------------------------------------------------------------------------------------------------------
# kubeconfig


def write_kubeconfig(path: Path, server: str, ca: Path, client: pki.KeyPair, user: str, context: str = "bed") -> None:
    """A kubeconfig with the certificates embedded (the file stands alone)."""

    def b64(p: Path) -> str:
        import base64

        return base64.b64encode(p.read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "bed", "cluster": {"server": server, "certificate-authority-data": b64(ca)}}],
        "users": [
            {"name": user, "user": {"client-certificate-data": b64(client.cert), "client-key-data": b64(client.key)}}
        ],
        "contexts": [{"name": context, "context": {"cluster": "bed", "user": user, "namespace": "default"}}],
        "current-context": context,
        "preferences": {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(config, sort_keys=False))
    tmp.chmod(0o600)
    tmp.replace(path)


# --------------------------------------------------------------------------------------------------------------
# the bed


class Bed:
    """A local control plane rooted at ``dir``.

    ``Bed(dir).start()`` starts it (or attaches to the one already running there), ``stop()`` stops it.
    ``daemon=True`` (the CLI) lets the processes outlive this Python process; ``daemon=False`` (pytest) makes
    them get SIGTERM if this process dies without calling ``stop()``.
    """

    def __init__(
        self,
        dir: Path | str = DEFAULT_DIR,
        *,
        node: str | None = None,
        node_name: str = DEFAULT_NODE_NAME,
        daemon: bool = True,
        start_timeout: float | None = None,
    ) -> None:
        self.dir = Path(dir).resolve()
        self.node_name = node_name
        self._node_arg = node
        self.daemon = daemon
        self.start_timeout = start_timeout or float(os.environ.get("BED_START_TIMEOUT", "120"))
        self.startup_seconds: float | None = None
        self._state: dict[str, Any] | None = None
        self._popen: dict[int, subprocess.Popen[bytes]] = {}

    # --- paths and addresses -----------------------------------------------------------------------------------
    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    @property
    def pki_dir(self) -> Path:
        return self.dir / "pki"

    @property
    def logs_dir(self) -> Path:
        return self.dir / "logs"

    @property
    def bin_dir(self) -> Path:
        return self.dir / "bin"

    @property
    def ca_file(self) -> Path:
        return self.pki_dir / "ca.crt"

    @property
    def ca_key_file(self) -> Path:
        return self.pki_dir / "ca.key"

    @property
    def certs(self) -> pki.BedPKI:
        """Paths of the bed's certificates and keys."""
        return pki.BedPKI.load(self.pki_dir, self.node_name if self.node != "none" else None)

    @property
    def state(self) -> dict[str, Any]:
        if self._state is None:
            self._state = self._read_state()
            if self._state is None:
                raise BedError(f"no bed in {self.dir} (no state.json); run `python -m bed up --dir {self.dir}`")
        return self._state

    @property
    def api_port(self) -> int:
        return int(self.state["api_port"])

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def node(self) -> str:
        """"real" or "none": the running bed's, else the one asked for."""
        if self._state is None and self.state_file.exists():
            self._state = self._read_state()
        if self._state is not None:
            return str(self._state.get("node") or "none")
        return _node_mode(self._node_arg)

    # --- the real node's namespace (node="real") -------------------------------------------------------------------
    registry = realnode.REGISTRY  # the registry as containerd sees it: image references are f"{bed.registry}/..."
    node_ip = realnode.NODE_IP  # where pods reach the bed's own services (see expose_host_port)

    @property
    def kubeconfig_in_netns(self) -> Path:
        """Admin kubeconfig for processes inside the network namespace (server https://127.0.0.1:6443)."""
        return self.dir / "kubeconfig-netns"

    def _holder(self) -> int:
        if self.node != "real":
            raise BedError(f"the bed in {self.dir} has no network namespace (node={self.node!r}, not 'real')")
        return int(self.state["holder"])

    def netns_cmd(self) -> list[str]:
        """Command prefix that runs a host program in the bed's network namespace (for pushing images)."""
        return ["nsenter", f"--net=/proc/{self._holder()}/ns/net"]

    def exec_cmd(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the network namespace, seeing the host's files but a resolv.conf of 127.0.0.1."""
        return [*realnode.exec_prefix(self._holder(), self.dir), *argv]

    def netns_env(self) -> dict[str, str]:
        """Environment for a process run with :meth:`exec_cmd` (kubectl, the operator): KUBECONFIG inside."""
        env = self.env()
        env["KUBECONFIG"] = str(self.kubeconfig_in_netns)
        return env

    def expose_host_port(self, port: int, name: str | None = None) -> tuple[str, int]:
        """Make the host's 127.0.0.1:``port`` reachable from pods at (node IP, port') through a relay the bed
        owns (stopped by ``stop()``); returns (node IP, port')."""
        sock = relay.listen_in_netns(Path(f"/proc/{self._holder()}/ns/net"), self.node_ip, 0)
        inner_port = int(sock.getsockname()[1])
        with self._state_lock():  # other processes (pytest-xdist workers) add relays to the same bed
            self._state = self._read_state()
            if self._state is None:
                raise BedError(f"no bed in {self.dir} (no state.json)")
            try:
                self._spawn(name or f"relay-{port}", [
                    sys.executable, "-m", "bed.relay", "--listen-fd", str(sock.fileno()),
                    "--connect", f"127.0.0.1:{port}",
                ], env=self._python_env(), pass_fds=(sock.fileno(),))  # fmt: skip
            finally:
                sock.close()
            self._state.setdefault("exposed", {})[str(port)] = inner_port
            self._write_state()
        return self.node_ip, inner_port

    def free_port(self) -> int:
        """A port free on 127.0.0.1 inside the bed's network namespace, for a process run there with
        :meth:`exec_cmd` (the host's free ports say nothing about the namespace's, where other sessions' operators
        listen). Taken from this test process's own block below the ephemeral range: a port the kernel picks
        (port 0) can go to another process's outgoing connection before the caller's process binds it (seen: an
        operator's webhook failing with "address already in use"), and a block per xdist worker keeps two
        sessions from being handed the same one."""
        worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:]
        first = _PORTS[0] + (int(worker) if worker.isdigit() else 0) % _PORT_BLOCKS * _PORT_BLOCK
        netns = Path(f"/proc/{self._holder()}/ns/net")
        for _ in range(_PORT_BLOCK):
            port = first + next(_PORT_TURN) % _PORT_BLOCK
            try:
                relay.listen_in_netns(netns, "127.0.0.1", port).close()
            except OSError:
                continue  # in use: the next one
            return port
        raise BedError(f"no free port in {first}-{first + _PORT_BLOCK - 1} inside the bed's network namespace")

    def _python_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), *filter(None, [env.get("PYTHONPATH")])])
        return env

    @property
    def components(self) -> list[Component]:
        return [Component(**c) for c in self.state.get("components", [])]

    def env(self) -> dict[str, str]:
        """A copy of os.environ with KUBECONFIG pointing at the bed and its bin/ first on PATH."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        return env

    # --- state -----------------------------------------------------------------------------------------------------
    def _read_state(self) -> dict[str, Any] | None:
        try:
            state = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return None
        except json.JSONDecodeError as exc:
            raise BedError(f"{self.state_file} is corrupt ({exc}); run `python -m bed down --dir {self.dir}`") from exc
        if state.get("version") != _STATE_VERSION:
            raise BedError(f"{self.state_file}: unknown state version; run `python -m bed down --dir {self.dir}`")
        return dict(state)

    @contextlib.contextmanager
    def _state_lock(self) -> Iterator[None]:
        """An exclusive lock on state.json's read-modify-write, across processes."""
        with (self.dir / "state.lock").open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _write_state(self) -> None:
        assert self._state is not None
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._state, indent=2))
        tmp.replace(self.state_file)

    # --- health ----------------------------------------------------------------------------------------------------
    def _ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        admin = self.certs.admin
        ctx.load_cert_chain(str(admin.cert), str(admin.key))
        return ctx

    def api_get(self, path: str, timeout: float = 5) -> tuple[int, bytes]:
        """GET ``path`` from kube-apiserver as the admin; (status, body). Raises OSError when unreachable."""
        conn = http.client.HTTPSConnection("127.0.0.1", self.api_port, context=self._ssl_context(), timeout=timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def api_request(self, method: str, path: str, body: object, timeout: float = 5) -> tuple[int, bytes]:
        """``method`` ``path`` with a JSON body, as the admin; (status, body)."""
        conn = http.client.HTTPSConnection("127.0.0.1", self.api_port, context=self._ssl_context(), timeout=timeout)
        try:
            conn.request(method, path, json.dumps(body), {"Content-Type": "application/json"})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def readyz(self) -> bool:
        try:
            status, _ = self.api_get("/readyz", timeout=2)
        except (OSError, http.client.HTTPException):
            return False
        return status == 200

    def is_up(self) -> bool:
        """True when a bed was started in ``dir``, all its processes live and kube-apiserver is ready."""
        try:
            state = self._read_state()
        except BedError:
            return False
        if state is None or not state.get("ready"):
            return False
        self._state = state
        return all(c.alive() for c in self.components) and self.readyz()

    # --- start -----------------------------------------------------------------------------------------------------
    def start(self) -> Bed:
        """Start the bed (or attach to a healthy one already running in ``dir``); returns self."""
        if self.is_up():
            return self
        if self._read_state_quietly() is not None:
            self.stop(purge=True)  # stale: processes died or a start-up failed half-way
        self._state = None
        started = time.monotonic()
        binaries = ensure_binaries()
        try:
            self._start(binaries)
        except BaseException:
            self._stop_processes()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def _read_state_quietly(self) -> dict[str, Any] | None:
        try:
            return self._read_state()
        except BedError:
            return {"broken": True}

    def _start(self, binaries: Path) -> None:
        mode = _node_mode(self._node_arg)
        if mode == "real":
            self._start_real(binaries, realnode.ensure_node_binaries())
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        etcd_client, etcd_peer, api_port, kcm_port = _free_ports(4)
        self._state = {
            "version": _STATE_VERSION,
            "ready": False,
            "api_port": api_port,
            "etcd_port": etcd_client,
            "kcm_port": kcm_port,
            "node": mode,
            "node_name": self.node_name,
            "binaries": str(binaries),
            "components": [],
        }
        self._write_state()

        certs = pki.make_pki(self.pki_dir, None)
        write_kubeconfig(self.kubeconfig, self.server, certs.ca.cert, certs.admin, "bed-admin")
        kcm_kubeconfig = self.pki_dir / "kube-controller-manager.kubeconfig"
        write_kubeconfig(kcm_kubeconfig, self.server, certs.ca.cert, certs.controller_manager,
                         "system:kube-controller-manager")  # fmt: skip
        with contextlib.suppress(Exception):  # kubectl/helm are a convenience; the tools module reports failures
            from bed.tools import link_tools

            link_tools(self.bin_dir)

        etcd_url = f"http://127.0.0.1:{etcd_client}"
        peer_url = f"http://127.0.0.1:{etcd_peer}"
        self._spawn("etcd", [
            str(binaries / "etcd"),
            "--name=bed",
            f"--data-dir={self.dir / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=bed={peer_url}",
            "--initial-cluster-state=new",
            "--unsafe-no-fsync",  # a throw-away test store: durability buys nothing, fsync costs start-up time
            "--log-level=warn",
        ])  # fmt: skip
        self._spawn("kube-apiserver", [
            str(binaries / "kube-apiserver"),
            f"--etcd-servers={etcd_url}",
            "--advertise-address=127.0.0.1",
            "--bind-address=127.0.0.1",
            f"--secure-port={api_port}",
            f"--cert-dir={self.pki_dir}",
            f"--tls-cert-file={certs.apiserver.cert}",
            f"--tls-private-key-file={certs.apiserver.key}",
            f"--client-ca-file={certs.ca.cert}",
            f"--kubelet-client-certificate={certs.kubelet_client.cert}",
            f"--kubelet-client-key={certs.kubelet_client.key}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",  # on top of the defaults (ServiceAccount among them)
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={certs.service_account.cert}",
            f"--service-account-signing-key-file={certs.service_account.key}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--allow-privileged=true",
            # Endpoints refuse loopback addresses: the `kubernetes` Service gets no endpoints rather than errors.
            "--endpoint-reconciler-type=none",
            "--profiling=false",
        ])  # fmt: skip
        self._wait("kube-apiserver /readyz", self.readyz)
        # Only now: it reads kube-system/extension-apiserver-authentication, allowed once RBAC is bootstrapped.
        self._spawn("kube-controller-manager", [
            str(binaries / "kube-controller-manager"),
            f"--kubeconfig={kcm_kubeconfig}",
            f"--authentication-kubeconfig={kcm_kubeconfig}",
            f"--authorization-kubeconfig={kcm_kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={kcm_port}",
            "--controllers=*",
            f"--root-ca-file={certs.ca.cert}",
            f"--service-account-private-key-file={certs.service_account.key}",
            "--use-service-account-credentials=true",
            f"--cluster-signing-cert-file={certs.ca.cert}",
            f"--cluster-signing-key-file={certs.ca.key}",
            "--cluster-name=bed",
            "--leader-elect=false",
            # client-side rate limits slow its start-up (a client and a token per controller): lift them
            "--kube-api-qps=500",
            "--kube-api-burst=1000",
            "--profiling=false",
        ])  # fmt: skip

        self._wait("ServiceAccount default/default", self._default_service_account_exists)
        self._state["ready"] = True
        self._write_state()

    def _start_real(self, binaries: Path, node_bins: Path) -> None:
        """The control plane and a real node, all inside namespaces of the bed's own (see bed.realnode)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        api_listener = relay.listen_on_host()  # the host's way in: bound now, so the port is ours
        api_port = int(api_listener.getsockname()[1])
        self._state = {
            "version": _STATE_VERSION, "ready": False, "node": "real", "node_name": self.node_name,
            "api_port": api_port, "binaries": str(binaries), "node_binaries": str(node_bins), "components": [],
        }  # fmt: skip
        self._write_state()

        certs = pki.make_pki(self.pki_dir, self.node_name)
        ca = certs.ca
        inner = f"https://127.0.0.1:{realnode.API_PORT}"
        write_kubeconfig(self.kubeconfig, self.server, ca.cert, certs.admin, "bed-admin")
        write_kubeconfig(self.kubeconfig_in_netns, inner, ca.cert, certs.admin, "bed-admin")
        kubeconfigs = {"kube-controller-manager": (certs.controller_manager, "system:kube-controller-manager")}
        for user, cn in (("kube-scheduler", "system:kube-scheduler"), ("kube-proxy", "system:kube-proxy"),
                         ("coredns", realnode.COREDNS_USER)):
            kubeconfigs[user] = (pki.issue_cert(ca, self.pki_dir, user, cn, client=True), cn)
        assert certs.node is not None
        kubeconfigs["kubelet"] = (certs.node, f"system:node:{self.node_name}")
        paths = {}
        for user, (pair, cn) in kubeconfigs.items():
            paths[user] = self.pki_dir / f"{user}.kubeconfig"
            write_kubeconfig(paths[user], inner, ca.cert, pair, cn)
        pki.issue_cert(ca, self.pki_dir, "kubelet-serving", f"system:node:{self.node_name}",
                       dns_names=[self.node_name], ip_addresses=[realnode.NODE_IP], server=True)  # fmt: skip
        with contextlib.suppress(Exception):
            from bed.tools import link_tools

            link_tools(self.bin_dir)

        holder = realnode.start_holder(self.logs_dir / "namespaces.log")
        self._popen[holder.pid] = holder
        stat = _proc_stat(holder.pid)
        self._state["components"].append(asdict(Component("namespaces", holder.pid, stat[1] if stat else -1,
                                                          str(self.logs_dir / "namespaces.log"))))  # fmt: skip
        self._state["holder"] = holder.pid
        self._state["ns_inodes"] = [realnode.ns_inode(holder.pid, "net"), realnode.ns_inode(holder.pid, "mnt")]
        self._write_state()
        cgroup_root, created = realnode.make_cgroup_root(f"bed-{realnode.bed_id(self.dir)}")
        self._state["cgroup_root"], self._state["cgroups_created"] = cgroup_root, created
        self._write_state()
        realnode.setup_namespaces(holder.pid, self.dir)
        configs = realnode.write_configs(self.dir, self.node_name, cgroup_root, self.pki_dir, paths)
        inside = realnode.enter(holder.pid)

        try:
            self._spawn("api-relay", [
                *realnode.enter(holder.pid, mount=False), sys.executable, "-m", "bed.relay",
                "--listen-fd", str(api_listener.fileno()), "--connect", f"127.0.0.1:{realnode.API_PORT}",
            ], env=self._python_env(), pass_fds=(api_listener.fileno(),))  # fmt: skip
        finally:
            api_listener.close()
        etcd_url, peer_url = "http://127.0.0.1:2379", "http://127.0.0.1:2380"
        self._spawn("etcd", [
            *inside, str(binaries / "etcd"), "--name=bed", f"--data-dir={self.dir / 'etcd'}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=bed={peer_url}", "--initial-cluster-state=new", "--unsafe-no-fsync", "--log-level=warn",
        ])  # fmt: skip
        self._spawn("registry", [*inside, "docker-registry", "serve", str(configs["registry"])])
        self._spawn("kube-apiserver", [
            *inside, str(binaries / "kube-apiserver"),
            f"--etcd-servers={etcd_url}",
            f"--advertise-address={realnode.NODE_IP}",  # the `kubernetes` Service's endpoint: pods reach it
            "--bind-address=0.0.0.0",  # of the bed's namespace
            f"--secure-port={realnode.API_PORT}",
            f"--cert-dir={self.pki_dir}",
            f"--tls-cert-file={certs.apiserver.cert}",
            f"--tls-private-key-file={certs.apiserver.key}",
            f"--client-ca-file={ca.cert}",
            f"--kubelet-client-certificate={certs.kubelet_client.cert}",
            f"--kubelet-client-key={certs.kubelet_client.key}",
            "--kubelet-preferred-address-types=InternalIP",  # never resolve the node's name
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={certs.service_account.cert}",
            f"--service-account-signing-key-file={certs.service_account.key}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--allow-privileged=true",
            "--enable-aggregator-routing=true",  # webhooks called by endpoint IP: no DNS needed
            "--profiling=false",
        ])  # fmt: skip
        self._wait("kube-apiserver /readyz", self.readyz)
        self._spawn("kube-controller-manager", [
            *inside, str(binaries / "kube-controller-manager"),
            f"--kubeconfig={paths['kube-controller-manager']}",
            f"--authentication-kubeconfig={paths['kube-controller-manager']}",
            f"--authorization-kubeconfig={paths['kube-controller-manager']}",
            "--bind-address=127.0.0.1", "--controllers=*", f"--root-ca-file={ca.cert}",
            f"--service-account-private-key-file={certs.service_account.key}",
            "--use-service-account-credentials=true",
            f"--cluster-signing-cert-file={ca.cert}", f"--cluster-signing-key-file={ca.key}",
            "--cluster-name=bed", "--leader-elect=false", "--kube-api-qps=500", "--kube-api-burst=1000",
            "--enable-hostpath-provisioner",  # PVCs bind to real PersistentVolumes (under the node's /tmp)
            "--profiling=false",
        ])  # fmt: skip
        self._spawn("kube-scheduler", [
            *inside, str(node_bins / "kube-scheduler"),
            f"--kubeconfig={paths['kube-scheduler']}",
            f"--authentication-kubeconfig={paths['kube-scheduler']}",
            f"--authorization-kubeconfig={paths['kube-scheduler']}",
            "--bind-address=127.0.0.1", "--leader-elect=false", "--profiling=false",
        ])  # fmt: skip
        self._wait("the registry", lambda: self._http_ok_inside(holder.pid, f"http://{self.registry}/v2/"))
        realnode.push_pause_image(node_bins, self.dir / "node", self.netns_cmd())
        self._spawn("containerd", [*inside, str(node_bins / "containerd"), f"--config={configs['containerd']}"])
        socket_path = Path(f"/proc/{holder.pid}/root/run/containerd/containerd.sock")
        self._wait("containerd's socket", socket_path.exists)
        self._spawn("kubelet", [
            *inside, str(node_bins / "kubelet"), f"--config={configs['kubelet']}",
            f"--kubeconfig={paths['kubelet']}", f"--hostname-override={self.node_name}",
            f"--node-ip={realnode.NODE_IP}", "--v=1",
        ])  # fmt: skip
        self._spawn("kube-proxy", [*inside, str(node_bins / "kube-proxy"), f"--config={configs['kube-proxy']}"])
        for path, body in realnode.COREDNS_RBAC:
            self._wait(f"POST {path}", functools.partial(self._created, path, body))
        self._spawn("coredns", [*inside, str(node_bins / "coredns"), "-conf", str(configs["coredns"])])
        self._wait("ServiceAccount default/default", self._default_service_account_exists)
        self._wait("the default StorageClass", self._ensure_storage_class)
        self._wait(f"Node {self.node_name} Ready", self._node_ready)
        self._wait("CoreDNS ready", lambda: self._http_ok_inside(holder.pid, "http://127.0.0.1:8181/ready"))
        self._state["ready"] = True
        self._write_state()

    def _http_ok_inside(self, holder: int, url: str) -> bool:
        probe = [*realnode.enter(holder, mount=False), "curl", "-fsS", "-o", "/dev/null", url]
        return subprocess.run(probe, capture_output=True, check=False).returncode == 0

    def _created(self, path: str, body: dict[str, Any]) -> bool:
        try:
            status, _ = self.api_request("POST", path, body)
        except (OSError, http.client.HTTPException):
            return False
        return status in (201, 409)

    def _ensure_storage_class(self) -> bool:
        path = "/apis/storage.k8s.io/v1/storageclasses"
        if self._get_json(f"{path}/standard") is not None:
            return True
        try:
            status, _ = self.api_request("POST", path, realnode.DEFAULT_STORAGE_CLASS)
        except (OSError, http.client.HTTPException):
            return False
        return status in (201, 409)

    def _spawn(
        self, name: str, argv: list[str], env: dict[str, str] | None = None, pass_fds: Sequence[int] = ()
    ) -> Component:
        assert self._state is not None
        log_path = self.logs_dir / f"{name}.log"
        with log_path.open("ab") as log:
            log.write(f"# {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(argv)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                env=env,
                start_new_session=True,
                pass_fds=pass_fds,
                preexec_fn=None if self.daemon else _set_parent_death_signal,
            )
        stat = _proc_stat(proc.pid)
        comp = Component(name, proc.pid, stat[1] if stat else -1, str(log_path))
        self._popen[proc.pid] = proc
        self._state["components"].append(asdict(comp))
        self._write_state()
        return comp

    def _wait(self, what: str, check: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            for comp in self.components:
                if not comp.alive():
                    code = self._popen[comp.pid].poll() if comp.pid in self._popen else None
                    status = f"exit code {code}" if code is not None else "it exited"
                    raise BedError(
                        f"{comp.name} died while waiting for {what} ({status}); last lines of {comp.log}:\n"
                        f"{comp.log_tail()}"
                    )
            if check():
                return
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {c.name} ({c.log}):\n{c.log_tail(15)}" for c in self.components)
                raise BedError(f"timed out after {self.start_timeout:.0f}s waiting for {what}\n{tails}")
            time.sleep(0.1)

    def _get_json(self, path: str) -> dict[str, Any] | None:
        try:
            status, body = self.api_get(path)
        except (OSError, http.client.HTTPException):
            return None
        if status != 200:
            return None
        data = json.loads(body)
        return data if isinstance(data, dict) else None

    def _default_service_account_exists(self) -> bool:
        return self._get_json("/api/v1/namespaces/default/serviceaccounts/default") is not None

    def _node_ready(self) -> bool:
        node = self._get_json(f"/api/v1/nodes/{self.node_name}")
        conditions: Iterable[dict[str, Any]] = (node or {}).get("status", {}).get("conditions") or []
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

    # --- stop ------------------------------------------------------------------------------------------------------
    def _stop_processes(self) -> None:
        if self.state_file.exists():  # what other processes added (relays) is on disk, not in this object
            with contextlib.suppress(BedError):
                self._state = self._read_state() or self._state
        try:
            comps = self.components if (self._state is not None or self.state_file.exists()) else []
        except BedError:
            comps = []
        state = self._state or self._read_state_quietly() or {}
        if state.get("node") == "real":
            self._stop_real(comps, state)
        else:
            _terminate([c for c in comps if c.name != "etcd"], grace=10)
            _terminate([c for c in comps if c.name == "etcd"], grace=10)
        for proc in self._popen.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1)
        self._popen.clear()

    @staticmethod
    def _stop_real(comps: list[Component], state: dict[str, Any]) -> None:
        """kubelet first (it does not stop pods), then the pods, the components, whatever else is in the
        namespaces (shims), the namespace holder; then the cgroups."""
        by_name = {c.name: c for c in comps}
        cgroup_root = state.get("cgroup_root")
        _terminate([c for c in comps if c.name == "kubelet"], grace=10)
        if cgroup_root:
            realnode.kill_all(realnode.cgroup_pids(cgroup_root))
        _terminate([c for c in comps if c.name not in ("etcd", "namespaces")], grace=10)
        _terminate([c for c in comps if c.name == "etcd"], grace=10)
        # Namespace inodes can be reused once a namespace is gone: sweep only while the holder keeps ours alive.
        holder = by_name.get("namespaces")
        net, mnt = state.get("ns_inodes") or (0, 0)
        if holder is not None and holder.alive() and net:
            # Again until none is left: a process started while the sweep ran (a shim's child) is not in its list.
            deadline = time.monotonic() + 15
            while (left := realnode.pids_in_namespaces(net, mnt) - {holder.pid}) and time.monotonic() < deadline:
                realnode.kill_all(left)
        _terminate([c for c in comps if c.name == "namespaces"], grace=5)
        if cgroup_root:
            left = realnode.remove_cgroups(cgroup_root, state.get("cgroups_created") or [])
            if left:
                print(f"bed: cgroups still busy, not removed: {left}", file=sys.stderr)

    def stop(self, purge: bool = True) -> None:
        """Stop every process of the bed. ``purge`` removes all the bed's files from ``dir``; without it the logs,
        certificates and kubeconfig stay (etcd's data goes either way)."""
        self._stop_processes()
        shutil.rmtree(self.dir / "etcd", ignore_errors=True)
        if purge:
            for entry in _OWNED_ENTRIES:
                path = self.dir / entry
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self.dir.rmdir()  # only when empty
        elif self._state is not None:
            self._state["ready"] = False
            self._state["components"] = []
            if self.dir.exists():
                self._write_state()
        self._state = None

    # --- clients ---------------------------------------------------------------------------------------------------
    def kubectl(
        self, *args: str, input: str | None = None, check: bool = False, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run the cached kubectl against the bed (``--kubeconfig`` given explicitly); output as text."""
        from bed.tools import ensure_tools

        kubectl = ensure_tools()["kubectl"]
        return subprocess.run(
            [str(kubectl), f"--kubeconfig={self.kubeconfig}", *args],
            input=input, capture_output=True, text=True, check=check, timeout=timeout,
        )  # fmt: skip

    def client_configuration(self) -> Configuration:
        """The admin kubeconfig as a kubernetes.client.Configuration (no global configuration is touched). The
        library writes the embedded certificate and key to files: here, under the bed's `clients/` (removed with
        the bed), not in /tmp, where a test process that ends without running atexit (an xdist worker, a kill)
        left the admin's private key behind."""
        from kubernetes import config
        from kubernetes.client import Configuration

        cfg = Configuration()
        clients = self.dir / "clients"
        clients.mkdir(mode=0o700, exist_ok=True)
        config.load_kube_config(str(self.kubeconfig), client_configuration=cfg,  # type: ignore[no-untyped-call]
                                temp_file_path=str(clients))
        return cfg

    def api_client(self) -> ApiClient:
        """A kubernetes.client.ApiClient for the admin kubeconfig."""
        from kubernetes.client import ApiClient

        return ApiClient(self.client_configuration())

    def status_lines(self) -> list[str]:
        state = self._read_state()
        if state is None:
            return [f"no bed in {self.dir}"]
        self._state = state
        lines = [f"dir:        {self.dir}", f"server:     {self.server}", f"kubeconfig: {self.kubeconfig}"]
        for comp in self.components:
            lines.append(f"{comp.name:24} pid {comp.pid:<8} {'running' if comp.alive() else 'DEAD'}  {comp.log}")
        lines.append(f"readyz:     {'ok' if self.readyz() else 'not ready'}")
        return lines
