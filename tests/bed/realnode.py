"""The pieces of the real node (``Bed(node="real")``): namespaces, cgroups, configuration files, clean-up.

Everything the node does happens inside namespaces the bed creates, so the host never changes:

- one *holder* process (``unshare --net --mount ... sleep infinity``) owns a network namespace and a mount
  namespace; every component enters them with ``nsenter --target <holder>``. No named netns (no /run/netns file),
  no mount on the host: when the last process inside is gone, both namespaces (and every mount in them) are gone.
- network: lo plus a veth pair with both ends inside (this kernel has no ``dummy``), the node IP 198.19.255.254/32,
  pods on a CNI bridge in 198.19.0.0/24, Services in 198.18.0.0/24, and no default route: nothing can reach the
  host's resolver (whose address is in a private range) or anything else outside.
- mounts (inside the mount namespace only): a tmpfs on /run, and the bed's own directories over /tmp, /var/lib and
  /var/log (kubelet, containerd, the CNI plugins and the hostpath provisioner hard-code paths there), a resolv.conf
  saying 127.0.0.1, and files over the /proc/sys entries kubelet would otherwise set for the whole machine.
- cgroups: ``<this process's memory cgroup>/bed-<hash>`` in every v1 hierarchy (kubelet wants its cgroupRoot in
  each); the bed remembers which directories it created and removes exactly those (and what kubelet made in them).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from bed import oci

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build-node.sh"

NODE_IP = "198.19.255.254"
POD_CIDR = "198.19.0.0/24"
POD_GATEWAY = "198.19.0.1"
SERVICE_CIDR = "198.18.0.0/24"  # = controlplane.SERVICE_CLUSTER_IP_RANGE
REGISTRY = "127.0.0.1:5000"  # as containerd (in the bed's network namespace) and pushers (via netns_cmd) see it
API_PORT = 6443  # kube-apiserver inside the namespace; the host reaches it through a relay on a free port
PAUSE_TAG = "3.10-bed"
PAUSE_IMAGE = f"{REGISTRY}/bed/pause:{PAUSE_TAG}"
NODE_BINARIES = ("kubelet", "kube-scheduler", "kube-proxy", "containerd", "containerd-shim-runc-v2", "ctr", "pause",
                 "coredns")

CGROUP_FS = Path("/sys/fs/cgroup")

# kubelet (protectKernelDefaults: false) writes these machine-wide unless it already sees its values: inside the
# mount namespace it reads (and writes) these files instead.
KUBELET_SYSCTLS = {
    "vm/overcommit_memory": "1",
    "vm/panic_on_oom": "0",
    "kernel/panic": "10",
    "kernel/panic_on_oops": "1",
    "kernel/keys/root_maxkeys": "1000000",
    "kernel/keys/root_maxbytes": "25000000",
}


class NodeError(RuntimeError):
    """The real node could not be set up."""


def ensure_node_binaries() -> Path:
    """Run build-node.sh (a no-op when its cache is complete); return the directory of the binaries."""
    proc = subprocess.run(["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True, check=False)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise NodeError(f"{BUILD_SCRIPT} failed with exit code {proc.returncode} (its messages are above)")
    out = Path(lines[-1])
    missing = [n for n in NODE_BINARIES if not (out / n).is_file()]
    if missing:
        raise NodeError(f"{out}: missing {', '.join(missing)}; remove the directory and rebuild")
    for tool in ("runc", "skopeo", "docker-registry", "nsenter", "unshare", "ip", "iptables"):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            raise NodeError(f"{tool} is missing: run `make deps`")
    if not Path("/usr/lib/cni/bridge").exists():
        raise NodeError("the CNI plugins are missing (/usr/lib/cni/bridge): run `make deps`")
    return out


def bed_id(bed_dir: Path) -> str:
    """A short name unique to the bed directory (several beds run on one machine)."""
    return hashlib.sha256(str(bed_dir).encode()).hexdigest()[:10]


# --------------------------------------------------------------------------------------------------------------
# namespaces


def enter(holder: int, mount: bool = True) -> list[str]:
    """The command prefix that runs a program in the holder's network (and mount) namespace."""
    return ["nsenter", f"--target={holder}", "--net", *(["--mount"] if mount else []), "--"]


def ns_inode(pid: int, kind: str) -> int:
    return os.stat(f"/proc/{pid}/ns/{kind}").st_ino


def start_holder(log: Path) -> subprocess.Popen[bytes]:
    """The process that owns the bed's namespaces; the namespaces live exactly as long as something is in them."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            ["unshare", "--net", "--mount", "--propagation=private", "--", "sleep", "infinity"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    own = os.stat("/proc/self/ns/net").st_ino
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            entered = os.stat(f"/proc/{proc.pid}/ns/net").st_ino != own
            if entered and Path(f"/proc/{proc.pid}/comm").read_text() == "sleep\n":
                return proc
        if proc.poll() is not None:
            raise NodeError(f"unshare exited with {proc.returncode}; see {log}")
        time.sleep(0.02)
    raise NodeError("the namespace holder did not start")


def _run(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise NodeError(f"`{' '.join(argv)}` failed ({proc.returncode}): {proc.stderr.strip()}")


def setup_namespaces(holder: int, bed_dir: Path) -> None:
    """Network and mounts inside the holder's namespaces (see the module docstring)."""
    fs = bed_dir / "fs"
    for sub in ("tmp", "var-lib", "var-log", "sysctl"):
        (fs / sub).mkdir(parents=True, exist_ok=True)
    (fs / "tmp").chmod(0o1777)
    (fs / "resolv.conf").write_text("nameserver 127.0.0.1\n")  # nothing in here may ask the host's resolver
    for key, value in KUBELET_SYSCTLS.items():
        (fs / "sysctl" / key.replace("/", ".")).write_text(value + "\n")

    net = [*enter(holder, mount=False), "ip"]
    for args in (["link", "set", "lo", "up"],
                 ["link", "add", "bed0", "type", "veth", "peer", "name", "bed1"],
                 ["link", "set", "bed1", "up"],
                 ["addr", "add", f"{NODE_IP}/32", "dev", "bed0"],
                 ["link", "set", "bed0", "up"],
                 # processes of the node itself reach ClusterIPs: a route must exist before kube-proxy's DNAT applies
                 ["route", "add", SERVICE_CIDR, "dev", "bed0", "src", NODE_IP]):  # fmt: skip
        _run([*net, *args])

    # D may itself be under /tmp (pytest): keep a handle on it in /run, cover the system paths, then put D back.
    staged = "/run/bed"
    steps = [
        ["mount", "-t", "tmpfs", "-o", "mode=755", "bed-run", "/run"],
        ["mkdir", "-p", staged],
        ["mount", "--bind", str(bed_dir), staged],
        ["mount", "--bind", f"{staged}/fs/tmp", "/tmp"],
        ["mount", "--bind", f"{staged}/fs/var-lib", "/var/lib"],
        ["mount", "--bind", f"{staged}/fs/var-log", "/var/log"],
        ["mount", "--bind", f"{staged}/fs/resolv.conf", "/etc/resolv.conf"],
        ["mkdir", "-p", str(bed_dir)],
        ["mount", "--bind", staged, str(bed_dir)],
    ]
    for key in KUBELET_SYSCTLS:
        if Path("/proc/sys", key).exists():
            steps.append(["mount", "--bind", f"{staged}/fs/sysctl/{key.replace('/', '.')}", f"/proc/sys/{key}"])
    steps.append(["mount", "--make-rshared", "/"])  # this namespace's copy only; kubelet wants shared propagation
    for step in steps:
        _run([*enter(holder), *step])


def exec_prefix(holder: int, bed_dir: Path) -> list[str]:
    """Run a command in the bed's network namespace with the host's files, except /etc/resolv.conf (127.0.0.1)."""
    resolv = bed_dir / "fs" / "resolv.conf"
    return ["nsenter", f"--net=/proc/{holder}/ns/net", "unshare", "--mount", "--propagation=private", "--",
            "sh", "-c", f'mount --bind "{resolv}" /etc/resolv.conf && exec "$@"', "bed-exec"]  # fmt: skip


# --------------------------------------------------------------------------------------------------------------
# cgroups


def own_memory_cgroup() -> str:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return path.rstrip("/")
    raise NodeError("no memory cgroup in /proc/self/cgroup (the bed needs cgroup v1)")


def hierarchies(unified: bool = False) -> list[Path]:
    """The mounted cgroup v1 hierarchies, and with ``unified`` also cgroup2's mostly empty one (kubelet does not
    need the root there, but it still creates its kubepods tree in it, which the bed must remove)."""
    return sorted(
        h for h in CGROUP_FS.iterdir()
        if (unified or h.name != "unified") and not h.is_symlink() and (h / "cgroup.procs").exists()
    )  # fmt: skip


def make_cgroup_root(name: str) -> tuple[str, list[str]]:
    """Create ``<memory cgroup>/<name>`` in every hierarchy; returns (cgroup root, directories created)."""
    root = f"{own_memory_cgroup()}/{name}"
    created: list[str] = []
    for hierarchy in hierarchies():
        current = hierarchy
        for part in root.strip("/").split("/"):
            parent, current = current, current / part
            if not current.exists():
                current.mkdir()
                created.append(str(current))
            if hierarchy.name == "cpuset":  # a cpuset without cpus and mems takes no task
                for knob in ("cpuset.cpus", "cpuset.mems"):
                    if not (current / knob).read_text().strip():
                        (current / knob).write_text((parent / knob).read_text())
    return root, created


def cgroup_pids(root: str, names: Iterable[str] | None = None) -> set[int]:
    """Every process in the bed's cgroup subtree (pods' processes), in any hierarchy; with `names`, only those of
    the cgroups so named (the kubelet's cgroupfs driver names a container's after its id)."""
    only = set(names) if names is not None else None
    pids: set[int] = set()
    for hierarchy in hierarchies(unified=True):
        base = hierarchy / root.strip("/")
        if not base.is_dir():
            continue
        for dirpath, _, files in os.walk(base):
            if "cgroup.procs" in files and (only is None or Path(dirpath).name in only):
                with contextlib.suppress(OSError):
                    pids.update(int(p) for p in (Path(dirpath) / "cgroup.procs").read_text().split())
    return pids


def remove_cgroups(root: str, created: Iterable[str], timeout: float = 10) -> list[str]:
    """Remove the bed's subtree (deepest first) and the directories the bed created; returns what is left."""
    created = list(created)
    deadline = time.monotonic() + timeout
    while True:
        left: list[str] = []
        for hierarchy in hierarchies(unified=True):
            base = hierarchy / root.strip("/")
            if base.is_dir():
                for dirpath, _, _ in sorted(os.walk(base), key=lambda w: -len(w[0])):
                    try:
                        os.rmdir(dirpath)
                    except OSError:
                        left.append(dirpath)
        for path in reversed(created):  # ancestors the bed made: only when empty (another bed may use them)
            with contextlib.suppress(FileNotFoundError, OSError):
                os.rmdir(path)
        left = [p for p in left if Path(p).exists()]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


# --------------------------------------------------------------------------------------------------------------
# processes


def pids_in_namespaces(net_inode: int, mnt_inode: int) -> set[int]:
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if (os.stat(entry / "ns/net").st_ino == net_inode or os.stat(entry / "ns/mnt").st_ino == mnt_inode):
                found.add(int(entry.name))
    return found


def kill_all(pids: set[int], timeout: float = 10) -> None:
    """SIGKILL processes the bed started (pods, shims, their children) and wait until they are gone."""
    pids.discard(os.getpid())
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while pids and time.monotonic() < deadline:
        pids = {p for p in pids if Path(f"/proc/{p}").exists() and _state(p) not in ("Z", "X", None)}
        time.sleep(0.05)


def _state(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2]


# --------------------------------------------------------------------------------------------------------------
# configuration files


def write_configs(
    bed_dir: Path, node_name: str, cgroup_root: str, pki_dir: Path, kubeconfigs: dict[str, Path]
) -> dict[str, Path]:
    """containerd, CNI, kubelet, kube-proxy and registry configuration; returns their paths by component."""
    node = bed_dir / "node"
    node.mkdir(parents=True, exist_ok=True)
    ctrd = node / "containerd"
    certs_d = ctrd / "certs.d" / REGISTRY
    certs_d.mkdir(parents=True, exist_ok=True)
    (certs_d / "hosts.toml").write_text(
        f'server = "http://{REGISTRY}"\n\n[host."http://{REGISTRY}"]\n  capabilities = ["pull", "resolve"]\n'
    )
    cni_conf = node / "cni" / "net.d"
    cni_conf.mkdir(parents=True, exist_ok=True)
    (cni_conf / "10-bed.conflist").write_text(json.dumps({
        "cniVersion": "1.0.0",
        "name": "bed",
        "plugins": [{
            "type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False, "hairpinMode": True,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_CIDR, "gateway": POD_GATEWAY}]],
                     "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(node / "cni" / "ipam")},
        }],
    }, indent=2))  # fmt: skip
    ctrd_config = ctrd / "config.toml"
    cri_runtime = "plugins.'io.containerd.cri.v1.runtime'"
    ctrd_config.write_text(f"""\
version = 3
root = "{ctrd / 'root'}"
state = "/run/containerd"
oom_score = 0

[grpc]
  address = "/run/containerd/containerd.sock"

[plugins.'io.containerd.nri.v1.nri']
  disable = true
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{PAUSE_IMAGE}"
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = "{ctrd / 'certs.d'}"
[{cri_runtime}]
  restrict_oom_score_adj = true   # no CAP_SYS_RESOURCE: pods cannot go below containerd's own score
  tolerate_missing_hugetlb_controller = true
  disable_apparmor = true
  [{cri_runtime}.containerd]
    default_runtime_name = "runc"
    [{cri_runtime}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri_runtime}.containerd.runtimes.runc.options]
        BinaryName = "{shutil.which('runc') or '/usr/sbin/runc'}"
        SystemdCgroup = false
  [{cri_runtime}.cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "{cni_conf}"
[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
""")
    kubelet_config = node / "kubelet.yaml"
    kubelet_config.write_text(yaml.safe_dump({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "failCgroupV1": False,  # the hosts are cgroup v1; kubelet >= 1.35 refuses it unless told
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": cgroup_root,
        "cgroupsPerQOS": True,
        "enforceNodeAllocatable": ["pods"],
        "containerRuntimeEndpoint": "unix:///run/containerd/containerd.sock",
        "address": NODE_IP,
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "tlsCertFile": str(pki_dir / "kubelet-serving.crt"),
        "tlsPrivateKeyFile": str(pki_dir / "kubelet-serving.key"),
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(pki_dir / "ca.crt")}},
        "authorization": {"mode": "Webhook"},
        "clusterDomain": "cluster.local",
        "clusterDNS": [NODE_IP],  # CoreDNS, on the node (see COREFILE)
        "resolvConf": str(bed_dir / "fs" / "resolv.conf"),
        "failSwapOn": False,
        "protectKernelDefaults": False,  # it sees the files bind-mounted over /proc/sys (setup_namespaces)
        "oomScoreAdj": 0,  # no CAP_SYS_RESOURCE here
        "serializeImagePulls": False,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                         "nodefs.inodesFree": "1%"},
        "imageGCHighThresholdPercent": 99,
        "imageGCLowThresholdPercent": 98,
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "nodeStatusUpdateFrequency": "5s",
        "syncFrequency": "10s",
        "maxPods": 110,
    }, sort_keys=False))  # fmt: skip
    proxy_config = node / "kube-proxy.yaml"
    proxy_config.write_text(yaml.safe_dump({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfigs["kube-proxy"])},
        "mode": "iptables",
        "clusterCIDR": POD_CIDR,
        "hostnameOverride": node_name,
        "bindAddress": NODE_IP,
        "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        "nodePortAddresses": [f"{NODE_IP}/32"],  # not loopback: no route_localnet
        # 0 = leave the conntrack sysctls alone
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
    }, sort_keys=False))  # fmt: skip
    registry_config = node / "registry.yml"
    registry_config.write_text(yaml.safe_dump({
        "version": 0.1,
        "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(node / "registry")}, "delete": {"enabled": True}},
        "http": {"addr": REGISTRY},
    }))  # fmt: skip
    corefile = node / "Corefile"
    corefile.write_text(COREFILE.format(node_ip=NODE_IP, kubeconfig=kubeconfigs["coredns"]))
    return {"containerd": ctrd_config, "kubelet": kubelet_config, "kube-proxy": proxy_config,
            "registry": registry_config, "coredns": corefile}  # fmt: skip


def push_pause_image(node_bins: Path, work: Path, netns_cmd: list[str]) -> str:
    layout = oci.write_layout(
        work / "pause-oci", PAUSE_TAG,
        [oci.Entry("pause", 0o755, source=node_bins / "pause")],
        {"Entrypoint": ["/pause"], "User": "65535:65535"},
    )  # fmt: skip
    return oci.push_layout(layout, PAUSE_TAG, PAUSE_IMAGE, netns_cmd)


DEFAULT_STORAGE_CLASS: dict[str, Any] = {
    "apiVersion": "storage.k8s.io/v1",
    "kind": "StorageClass",
    "metadata": {"name": "standard", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
    "provisioner": "kubernetes.io/host-path",  # kube-controller-manager --enable-hostpath-provisioner
    "reclaimPolicy": "Delete",
    "volumeBindingMode": "Immediate",
}


# Cluster DNS: CoreDNS runs on the node (a process in the namespace, like kube-proxy) and answers for
# cluster.local from the API; every other name gets SERVFAIL at once: nothing is forwarded, so no query ever
# leaves the namespace.
COREFILE = """\
cluster.local:53 in-addr.arpa:53 {{
    bind {node_ip}
    errors
    ready 127.0.0.1:8181
    kubernetes cluster.local in-addr.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
    }}
    cache 5
}}
.:53 {{
    bind {node_ip}
    errors
}}
"""
COREDNS_USER = "bed:coredns"
COREDNS_RBAC: list[tuple[str, dict[str, Any]]] = [
    ("/apis/rbac.authorization.k8s.io/v1/clusterroles", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": COREDNS_USER},
        "rules": [
            {"apiGroups": [""], "resources": ["services", "endpoints", "pods", "namespaces"],
             "verbs": ["list", "watch"]},
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
        ],
    }),
    ("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": COREDNS_USER},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": COREDNS_USER},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": COREDNS_USER}],
    }),
]  # fmt: skip
