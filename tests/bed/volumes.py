"""PersistentVolumeClaims on the real node, writable by a non-root user.

The bed's default StorageClass (`standard`) is kube-controller-manager's hostpath provisioner: a claim binds at once
to a PersistentVolume whose hostPath is a fresh directory under the node's /tmp (the bed's ``fs/tmp``), owned by
root, mode 0750. Kubernetes never applies ``fsGroup`` to hostPath volumes, so a pod running as a non-root user (the
operator's Jobs run as 65532) cannot write there, where a CSI driver of a real cluster would have given the volume
to the pod's fsGroup. :func:`writable_claim` does what fsGroup would: it hands the bound directory to the user.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from bed.controlplane import Bed

OPERATOR_UID = 65532  # the operator image's user: its backup and restore Jobs write the backup volume


def claim_dir(bed: Bed, core: Any, namespace: str, claim: str) -> Path:
    """The host directory behind a bound claim of the hostpath provisioner (the node's /tmp is the bed's fs/tmp)."""
    pvc = core.read_namespaced_persistent_volume_claim(claim, namespace)
    path = Path(core.read_persistent_volume(pvc.spec.volume_name).spec.host_path.path)
    return bed.dir / "fs" / "tmp" / path.relative_to("/tmp") if path.is_relative_to("/tmp") else path


def writable_claim(bed: Bed, core: Any, namespace: str, name: str, uid: int = OPERATOR_UID, size: str = "100Mi",
                   timeout: float = 60) -> Path:
    """Create the claim `name` (ReadWriteOnce, default StorageClass), wait until it is bound, give its directory to
    `uid` (as fsGroup would on a real volume) and return the directory as the host sees it."""
    from kubernetes import client as k8s

    core.create_namespaced_persistent_volume_claim(namespace, k8s.V1PersistentVolumeClaim(
        metadata=k8s.V1ObjectMeta(name=name),
        spec=k8s.V1PersistentVolumeClaimSpec(access_modes=["ReadWriteOnce"],
                                             resources=k8s.V1VolumeResourceRequirements(requests={"storage": size}))))
    deadline = time.monotonic() + timeout
    while core.read_namespaced_persistent_volume_claim(name, namespace).status.phase != "Bound":
        if time.monotonic() > deadline:
            raise TimeoutError(f"PersistentVolumeClaim {namespace}/{name} not bound after {timeout:.0f}s")
        time.sleep(0.2)
    path = claim_dir(bed, core, namespace, name)
    os.chown(path, uid, uid)
    path.chmod(0o770)
    return path
