"""The real node never changes the host: /proc/sys values stay, and `down` leaves no process, mount, cgroup,
network namespace or file behind. One bed of its own (not the session's), started and stopped in the test."""

from __future__ import annotations

import ipaddress
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bed import realnode, testimages
from bed.controlplane import Bed
from harness import wait_for as eventually

pytestmark = pytest.mark.bed

# What kubelet, kube-proxy, containerd and the CNI plugins would like to set machine-wide.
SYSCTLS = [
    "vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops", "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes", "net/ipv4/ip_forward", "net/ipv4/conf/all/route_localnet",
    "net/ipv4/conf/all/forwarding", "net/bridge/bridge-nf-call-iptables", "net/netfilter/nf_conntrack_max",
    "net/netfilter/nf_conntrack_tcp_timeout_established", "net/netfilter/nf_conntrack_tcp_timeout_close_wait",
    "fs/inotify/max_user_watches", "fs/inotify/max_user_instances", "kernel/pid_max", "vm/max_map_count",
    "net/ipv4/ip_unprivileged_port_start", "net/core/somaxconn",
]  # fmt: skip
# Host places where a node writes unless kept in its own mount namespace (hard-coded paths of kubelet & co).
WATCHED_DIRS = [Path(p) for p in ("/run", "/var/run", "/var/lib", "/var/log", "/etc", "/etc/cni", "/opt")]
ALLOWED_NETS = [ipaddress.ip_network(n) for n in ("127.0.0.0/8", "198.18.0.0/15")]


def sysctls() -> dict[str, str]:
    return {key: Path("/proc/sys", key).read_text() for key in SYSCTLS if Path("/proc/sys", key).exists()}


def listing() -> dict[str, set[str]]:
    return {str(d): set(os.listdir(d)) for d in WATCHED_DIRS if d.is_dir()}


def mounts() -> set[str]:
    return {" ".join(line.split()[3:5]) for line in Path("/proc/self/mountinfo").read_text().splitlines()}


def pids_in(net: int, mnt: int) -> set[int]:
    return realnode.pids_in_namespaces(net, mnt)


def cgroup_dirs(name: str) -> list[str]:
    return [str(p) for h in realnode.hierarchies(unified=True) for p in h.rglob(name)]


@pytest.fixture
def own_bed(tmp_path: Path) -> Iterator[Bed]:
    bed = Bed(tmp_path / "bed", node="real", daemon=False)
    try:
        yield bed
    finally:
        bed.stop(purge=True)


def test_the_node_leaves_the_host_as_it_was(own_bed: Bed) -> None:
    before_sysctls, before_files, before_mounts = sysctls(), listing(), mounts()
    own_bed.start()
    state = own_bed.state
    holder = int(state["holder"])
    net, mnt = state["ns_inodes"]
    cgroup_name = state["cgroup_root"].rsplit("/", 1)[-1]
    assert state["cgroup_root"].startswith(realnode.own_memory_cgroup() + "/")

    # a pod runs (CNI, overlay mounts, a shim, cgroups), and stays running while the bed goes down
    image = testimages.busybox(own_bed)
    own_bed.kubectl("run", "sleeper", f"--image={image}", "--restart=Never", "--", "sleep", "3600", check=True)
    eventually(lambda: own_bed.kubectl("get", "pod", "sleeper", "-o", "jsonpath={.status.phase}").stdout == "Running",
               timeout=60, what="the pod running")  # fmt: skip
    assert cgroup_dirs(cgroup_name)

    # inside: only loopback and 198.18.0.0/15, no default route, a resolver of 127.0.0.1
    inside = subprocess.run(own_bed.exec_cmd(["sh", "-c", "ip -4 -o addr; echo --; ip -4 route; echo --; "
                                                         "cat /etc/resolv.conf"]),
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    addrs, routes, resolv = inside.split("--\n")
    for line in addrs.splitlines():
        address = ipaddress.ip_interface(line.split()[3]).ip
        assert any(address in allowed for allowed in ALLOWED_NETS), line
    assert "default" not in routes
    assert resolv.split() == ["nameserver", "127.0.0.1"]
    assert sysctls() == before_sysctls  # while the node runs, too

    # The kernel reuses a freed namespace's inode number at once (another worker's new pod gets it): this test's
    # handles keep the numbers ours until the check is done, and are all that keeps the namespaces alive after it.
    handles = [os.open(f"/proc/{holder}/ns/{kind}", os.O_RDONLY) for kind in ("net", "mnt")]
    try:
        own_bed.stop(purge=True)

        assert sysctls() == before_sysctls
        assert not pids_in(net, mnt), "processes left in the bed's namespaces"
        assert not [m for m in mounts() if m.split()[0] in (f"net:[{net}]", f"mnt:[{mnt}]")], "a namespace bound"
    finally:
        for handle in handles:
            os.close(handle)
    assert not cgroup_dirs(cgroup_name)
    assert not [m for m in mounts() - before_mounts if str(own_bed.dir) in m or m.split()[1].startswith(
        ("/run", "/var/", "/proc/sys", "/etc", "/tmp/hostpath_pv"))]  # fmt: skip
    assert listing() == before_files
    assert not Path("/tmp/hostpath_pv").exists()
    assert not own_bed.dir.exists()
    leftovers = [p for p in _pids() if str(own_bed.dir).encode() in _cmdline(p)]
    assert not leftovers


def _pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                os.stat(entry / "ns/net")
            except OSError:
                continue
            pids.append(int(entry.name))
    return pids


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
