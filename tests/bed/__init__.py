"""A local Kubernetes test bed: real etcd, kube-apiserver and kube-controller-manager, plus a real node
(kubelet, containerd, kube-proxy, kube-scheduler, CoreDNS and a registry in namespaces of the bed's own), kubectl and
helm.

    PYTHONPATH=tests python -m bed up --node real    # prints `export KUBECONFIG=...` last
    PYTHONPATH=tests python -m bed exec -- CMD       # CMD inside the real node's network namespace
    PYTHONPATH=tests python -m bed status
    PYTHONPATH=tests python -m bed down
    PYTHONPATH=tests python -m bed tools     # paths of kubectl and helm

In pytest, use the `bed`, `kube_api`, `namespace`, `kubectl` and `postgres_in_bed` fixtures from tests/conftest.py.
"""

from bed.controlplane import DEFAULT_DIR, Bed, BedError

__all__ = ["DEFAULT_DIR", "Bed", "BedError"]
