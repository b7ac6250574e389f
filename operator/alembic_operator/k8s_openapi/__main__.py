"""``python -m alembic_operator.k8s_openapi``: regenerate the vendored core/v1 schemas from an API server (a tool:
the only part of the package that talks to a cluster)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from . import SOURCE, VENDORED, Schema, generate, render


def _from_cluster() -> tuple[Schema, str]:
    """The published document and the server's gitVersion, from the cluster of the current kubeconfig."""
    import kubernetes

    kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
    with kubernetes.client.ApiClient() as client:
        request = client.param_serialize(method="GET", resource_path=SOURCE, auth_settings=["BearerToken"])
        response = client.call_api(*request)
        response.read()
        version = kubernetes.client.VersionApi(client).get_code().git_version
        return json.loads(response.data), str(version)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m alembic_operator.k8s_openapi",
                                     description="Regenerate the vendored core/v1 schemas from an API server.")
    parser.add_argument(
        "openapi",
        type=Path,
        nargs="?",
        help=f"a saved {SOURCE} document (kubectl get --raw {SOURCE}); default: read it from the current kubeconfig's "
        "cluster, with its version",
    )
    parser.add_argument("--version", help="the API server's gitVersion, e.g. v1.36.3 (with a saved document)")
    args = parser.parse_args(argv)
    if args.openapi is None:
        openapi, version = _from_cluster()
    elif args.version:
        openapi, version = json.loads(args.openapi.read_text(encoding="utf-8")), args.version
    else:
        parser.error("--version is needed with a saved document")
    target = Path(__file__).with_name(VENDORED)
    target.write_text(render(generate(openapi, version)), encoding="utf-8")
    print(f"wrote {target} from kube-apiserver {version}; now run `make crd`")
    return 0




if __name__ == "__main__":
    sys.exit(main())
