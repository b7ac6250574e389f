"""A local Kubernetes test bed: real etcd, kube-apiserver and kube-controller-manager on loopback, plus a node
agent (fake kubelet), kubectl and helm.

    PYTHONPATH=tests python -m bed up        # prints `export KUBECONFIG=...` last
    PYTHONPATH=tests python -m bed status
    PYTHONPATH=tests python -m bed down
    PYTHONPATH=tests python -m bed tools     # paths of kubectl and helm

In pytest, use the `bed`, `kube_api`, `namespace` and `kubectl` fixtures from tests/conftest.py.
"""

from bed.controlplane import DEFAULT_DIR, Bed, BedError

__all__ = ["DEFAULT_DIR", "Bed", "BedError"]
