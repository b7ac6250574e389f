"""Throw-away images for the bed's own tests: Debian's static busybox in one layer, pushed to the bed's registry.

A stop-gap until bed.images (buildah on an mmdebstrap base) builds the project's real images; only the bed's
tests use it. The image runs as root (no USER), which the runAsNonRoot test relies on; /etc/passwd knows
``nobody`` (65534) for the tests that run as a non-root user.
"""

from __future__ import annotations

import fcntl
import subprocess
from pathlib import Path

from bed import oci
from bed.controlplane import Bed

BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static (make deps)
TAG = "1"


def busybox(bed: Bed) -> str:
    """The busybox image (pushed once per bed); returns the reference pods should use."""
    return _push(bed, "busybox", [])


def kubectl(bed: Bed) -> str:
    """busybox plus the bed's kubectl (a static binary) in /bin: an in-cluster API client for tests."""
    from bed.tools import ensure_tools

    return _push(bed, "kubectl", [oci.Entry("bin/kubectl", 0o755, source=ensure_tools()["kubectl"])])


def _push(bed: Bed, name: str, extra: list[oci.Entry]) -> str:
    ref = f"{bed.registry}/bed-test/{name}:{TAG}"
    marker = bed.dir / "node" / f"testimage-{name}.pushed"
    if marker.exists():
        return ref
    with (bed.dir / "node" / f"testimage-{name}.lock").open("a") as lock:  # other sessions on the same bed
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not marker.exists():
            _write_and_push(bed, name, extra, ref)
            marker.touch()
    return ref


def _write_and_push(bed: Bed, name: str, extra: list[oci.Entry], ref: str) -> None:
    applets = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, check=True).stdout.split()
    entries = [oci.Entry("bin", directory=True), oci.Entry("etc", directory=True),
               oci.Entry("tmp", 0o1777, directory=True), oci.Entry("bin/busybox", 0o755, source=BUSYBOX)]  # fmt: skip
    entries += [oci.Entry(f"bin/{applet}", 0o777, target="busybox") for applet in applets if applet != "busybox"]
    entries += [
        oci.Entry("etc/passwd", 0o644, data=b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/tmp:/bin/sh\n"),
        oci.Entry("etc/group", 0o644, data=b"root:x:0:\nnogroup:x:65534:\n"),
        *extra,
    ]
    layout = oci.write_layout(bed.dir / "node" / f"{name}-oci", TAG, entries, {"Env": ["PATH=/bin"], "Cmd": ["sh"]})
    oci.push_layout(layout, TAG, ref, bed.netns_cmd())
