"""Throw-away images for the bed's own tests: Debian's static busybox in one layer, pushed to the bed's registry.

A stop-gap until bed.images (buildah on an mmdebstrap base) builds the project's real images; only the bed's
tests use it. The image runs as root (no USER), which the runAsNonRoot test relies on; /etc/passwd knows
``nobody`` (65534) for the tests that run as a non-root user.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from bed import oci
from bed.controlplane import Bed

BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static (make deps)
TAG = "1"


def busybox(bed: Bed) -> str:
    """Push the busybox image (once per bed) and return the reference pods should use."""
    ref = f"{bed.registry}/bed-test/busybox:{TAG}"
    marker = bed.dir / "node" / "testimages-busybox.pushed"
    if marker.exists():
        return ref
    applets = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, check=True).stdout.split()
    entries = [oci.Entry("bin", directory=True), oci.Entry("etc", directory=True),
               oci.Entry("tmp", 0o1777, directory=True), oci.Entry("bin/busybox", 0o755, source=BUSYBOX)]  # fmt: skip
    entries += [oci.Entry(f"bin/{name}", 0o777, target="busybox") for name in applets if name != "busybox"]
    entries += [
        oci.Entry("etc/passwd", 0o644, data=b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/tmp:/bin/sh\n"),
        oci.Entry("etc/group", 0o644, data=b"root:x:0:\nnogroup:x:65534:\n"),
    ]
    layout = oci.write_layout(bed.dir / "node" / "busybox-oci", TAG, entries,
                              {"Env": ["PATH=/bin"], "Cmd": ["sh"]})  # fmt: skip
    oci.push_layout(layout, TAG, ref, bed.netns_cmd())
    marker.touch()
    return ref
