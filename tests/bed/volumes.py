"""PersistentVolumeClaims on the real node, writable by a non-root user.

The bed's default StorageClass (`standard`) is kube-controller-manager's hostpath provisioner: a claim binds at once
to a PersistentVolume whose hostPath is a fresh directory under the node's /tmp (the bed's ``fs/tmp``), owned by
root, mode 0750. Kubernetes never applies ``fsGroup`` to hostPath volumes, so a pod running as a non-root user (the
operator's Jobs run as 65532) cannot write there, where a CSI driver of a real cluster would have given the volume
to the pod's fsGroup. :func:`writable_claim` does what fsGroup would: it hands the bound directory to the user.

:func:`local_claim` binds a claim to a `local` PersistentVolume instead (a root-owned 0755 directory of the bed's,
nodeAffinity to its node). The kubelet's `local` plugin applies fsGroup as a CSI driver does, so a pod with the
right fsGroup writes there with no help: the test of the Jobs' own fsGroup.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
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


@dataclass
class LocalClaim:
    """A claim bound to a `local` PersistentVolume of its own (see :func:`local_claim`)."""

    core: Any
    namespace: str
    name: str
    volume: str  # the PersistentVolume's name (cluster-wide)
    path: Path  # its directory, as the host and the node see it

    def delete(self) -> None:
        """Delete the claim and the volume, and remove the directory (the volume's reclaim policy is Retain: nothing
        else would)."""
        from kubernetes import client as k8s

        for delete, args in ((self.core.delete_namespaced_persistent_volume_claim, (self.name, self.namespace)),
                             (self.core.delete_persistent_volume, (self.volume,))):
            try:
                delete(*args)
            except k8s.ApiException as exc:
                if exc.status != 404:
                    raise
        shutil.rmtree(self.path, ignore_errors=True)


def local_claim(bed: Bed, core: Any, namespace: str, name: str, size: str = "100Mi", timeout: float = 60) -> LocalClaim:
    """The claim `name`, bound to a `local` PersistentVolume (spec.local.path, nodeAffinity to the bed's node) on a
    fresh directory of the bed's own, owned by root with mode 0755, as a new disk is.

    Unlike hostPath, the kubelet's `local` volume plugin applies the pod's fsGroup (it gives the directory to the
    group, group-writable and setgid, before the pod starts), as CSI drivers do on a real cluster: nothing here
    makes the directory writable for a non-root user. No StorageClass: the claim names the volume
    (storageClassName "" on both keeps the default class's provisioner away)."""
    from kubernetes import client as k8s

    volume = f"{namespace}-{name}"[:253]
    path = bed.dir / "local-volumes" / volume
    path.parent.mkdir(parents=True, exist_ok=True)
    path.mkdir(mode=0o755)
    os.chown(path, 0, 0)
    path.chmod(0o755)  # whatever the umask
    [node] = core.list_node().items
    hostname = node.metadata.labels["kubernetes.io/hostname"]
    core.create_persistent_volume(k8s.V1PersistentVolume(
        metadata=k8s.V1ObjectMeta(name=volume),
        spec=k8s.V1PersistentVolumeSpec(
            capacity={"storage": size}, access_modes=["ReadWriteOnce"], storage_class_name="",
            persistent_volume_reclaim_policy="Retain", volume_mode="Filesystem",
            local=k8s.V1LocalVolumeSource(path=str(path)),
            node_affinity=k8s.V1VolumeNodeAffinity(required=k8s.V1NodeSelector(node_selector_terms=[
                k8s.V1NodeSelectorTerm(match_expressions=[k8s.V1NodeSelectorRequirement(
                    key="kubernetes.io/hostname", operator="In", values=[hostname])])])))))
    core.create_namespaced_persistent_volume_claim(namespace, k8s.V1PersistentVolumeClaim(
        metadata=k8s.V1ObjectMeta(name=name),
        spec=k8s.V1PersistentVolumeClaimSpec(access_modes=["ReadWriteOnce"], storage_class_name="", volume_name=volume,
                                             resources=k8s.V1VolumeResourceRequirements(requests={"storage": size}))))
    deadline = time.monotonic() + timeout
    while core.read_namespaced_persistent_volume_claim(name, namespace).status.phase != "Bound":
        if time.monotonic() > deadline:
            raise TimeoutError(f"PersistentVolumeClaim {namespace}/{name} not bound to {volume} after {timeout:.0f}s")
        time.sleep(0.2)
    return LocalClaim(core, namespace, name, volume, path)
