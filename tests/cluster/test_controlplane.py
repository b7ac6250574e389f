"""The local control plane behaves like a real cluster where the operator relies on it."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from kubernetes import client as k8s

from bed.controlplane import HERE, SERVICE_ACCOUNT_ISSUER, Bed
from harness import wait_for as eventually

pytestmark = pytest.mark.bed



def request_token(core: k8s.CoreV1Api, namespace: str, name: str, audiences: list[str] | None = None) -> str:
    spec = k8s.V1TokenRequestSpec(audiences=audiences or [], expiration_seconds=600)
    result = core.create_namespaced_service_account_token(name, namespace, k8s.AuthenticationV1TokenRequest(spec=spec))
    assert result.status is not None and result.status.token
    return result.status.token


def jwt_claims(token: str) -> dict[str, object]:
    payload = token.split(".")[1]
    claims: dict[str, object] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return claims


def client_for_token(bed: Bed, token: str) -> k8s.ApiClient:
    config = k8s.Configuration()
    config.host = bed.server
    config.ssl_ca_cert = str(bed.ca_file)
    config.api_key = {"authorization": f"Bearer {token}"}
    return k8s.ApiClient(config)


def test_version(kube_api: k8s.ApiClient, bed: Bed) -> None:
    info = k8s.VersionApi(kube_api).get_code()
    assert info.git_version == "v1.36.3"
    assert bed.server == f"https://127.0.0.1:{bed.api_port}"


def test_kubectl_talks_to_the_bed(kubectl: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    proc = kubectl("get", "namespace", "default", "-o", "jsonpath={.metadata.name}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "default"


def test_token_request(kube_api: k8s.ApiClient, namespace: str) -> None:
    core = k8s.CoreV1Api(kube_api)
    core.create_namespaced_service_account(namespace, k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name="runner")))
    token = request_token(core, namespace, "runner", audiences=["alembic-operator"])
    claims = jwt_claims(token)
    assert claims["iss"] == SERVICE_ACCOUNT_ISSUER
    assert claims["sub"] == f"system:serviceaccount:{namespace}:runner"
    assert claims["aud"] == ["alembic-operator"]
    # the API server accepts what it signed
    review = k8s.AuthenticationV1Api(kube_api).create_token_review(
        k8s.V1TokenReview(spec=k8s.V1TokenReviewSpec(token=token, audiences=["alembic-operator"]))
    )
    assert review.status is not None
    assert review.status.authenticated, review.status.error
    assert review.status.user is not None
    assert review.status.user.username == f"system:serviceaccount:{namespace}:runner"


def test_rbac_is_enforced(bed: Bed, kube_api: k8s.ApiClient, namespace: str) -> None:
    core = k8s.CoreV1Api(kube_api)
    core.create_namespaced_service_account(namespace, k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name="reader")))
    with client_for_token(bed, request_token(core, namespace, "reader")) as api:
        as_reader = k8s.CoreV1Api(api)
        with pytest.raises(k8s.ApiException) as refused:
            as_reader.list_namespaced_config_map(namespace)
        assert refused.value.status == 403

        rbac = k8s.RbacAuthorizationV1Api(kube_api)
        rule = k8s.V1PolicyRule(api_groups=[""], resources=["configmaps"], verbs=["get", "list"])
        rbac.create_namespaced_role(namespace, k8s.V1Role(metadata=k8s.V1ObjectMeta(name="reader"), rules=[rule]))
        rbac.create_namespaced_role_binding(
            namespace,
            k8s.V1RoleBinding(
                metadata=k8s.V1ObjectMeta(name="reader"),
                role_ref=k8s.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="reader"),
                subjects=[k8s.RbacV1Subject(kind="ServiceAccount", name="reader", namespace=namespace)],
            ),
        )

        def allowed() -> bool:
            try:
                as_reader.list_namespaced_config_map(namespace)
            except k8s.ApiException as exc:
                if exc.status != 403:
                    raise
                return False
            return True

        eventually(allowed, timeout=10, what="the RoleBinding to take effect")
        with pytest.raises(k8s.ApiException) as still_refused:  # only what the Role grants
            as_reader.list_namespaced_secret(namespace)
        assert still_refused.value.status == 403


def test_root_ca_configmap_published(bed: Bed, kube_api: k8s.ApiClient, namespace: str) -> None:
    core = k8s.CoreV1Api(kube_api)

    def root_ca() -> str | None:
        try:
            data = core.read_namespaced_config_map("kube-root-ca.crt", namespace).data or {}
        except k8s.ApiException as exc:
            if exc.status != 404:
                raise
            return None
        return data["ca.crt"]

    assert eventually(root_ca, what="kube-root-ca.crt").strip() == bed.ca_file.read_text().strip()
    eventually(lambda: _exists(lambda: core.read_namespaced_service_account("default", namespace)), what="default SA")


def _exists(read: Callable[[], object]) -> bool:
    try:
        read()
    except k8s.ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def test_garbage_collection(kube_api: k8s.ApiClient, namespace: str) -> None:
    core = k8s.CoreV1Api(kube_api)
    owner = core.create_namespaced_config_map(namespace, k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name="owner")))
    assert owner.metadata is not None
    ref = k8s.V1OwnerReference(api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid)
    core.create_namespaced_config_map(
        namespace, k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name="dependent", owner_references=[ref]))
    )
    core.delete_namespaced_config_map("owner", namespace)
    eventually(
        lambda: not _exists(lambda: core.read_namespaced_config_map("dependent", namespace)),
        what="the dependent ConfigMap to be collected",
    )


def test_job_controller_makes_pods_with_service_account_tokens(kube_api: k8s.ApiClient, namespace: str) -> None:
    """Job controller runs, and the ServiceAccount admission plugin is on (it mounts the token volume)."""
    batch = k8s.BatchV1Api(kube_api)
    core = k8s.CoreV1Api(kube_api)
    eventually(lambda: _exists(lambda: core.read_namespaced_service_account("default", namespace)), what="default SA")
    container = k8s.V1Container(name="main", image="busybox", command=["true"])
    pod_spec = k8s.V1PodSpec(restart_policy="Never", containers=[container])
    job = k8s.V1Job(
        metadata=k8s.V1ObjectMeta(name="probe"),
        spec=k8s.V1JobSpec(backoff_limit=0, template=k8s.V1PodTemplateSpec(spec=pod_spec)),
    )
    batch.create_namespaced_job(namespace, job)
    pod = eventually(
        lambda: next(iter(core.list_namespaced_pod(namespace, label_selector="job-name=probe").items), None),
        what="the Job's pod",
    )
    assert pod.spec is not None
    assert pod.spec.service_account_name == "default"
    assert any(v.name.startswith("kube-api-access-") for v in pod.spec.volumes or [])


def test_cli_status_of_missing_bed(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bed", "status", "--dir", str(tmp_path / "nothing")],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(HERE.parent), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert proc.returncode == 1
    assert "no bed in" in proc.stdout


def test_cli_exec_runs_inside_the_namespace(bed: Bed) -> None:
    """`python -m bed exec` runs host programs in the bed's network namespace, with an in-namespace kubeconfig."""
    proc = subprocess.run(
        [sys.executable, "-m", "bed", "exec", "--dir", str(bed.dir), "--",
         "sh", "-c", "kubectl get namespace default -o jsonpath={.metadata.name} && echo && ip -4 -o addr show bed0"],
        capture_output=True, text=True, env={"PYTHONPATH": str(HERE.parent), "PATH": "/usr/bin:/bin:/usr/sbin"},
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    name, addr = proc.stdout.splitlines()
    assert name == "default"
    assert f"{bed.node_ip}/32" in addr


def test_cli_image_build_pushes_to_the_registry(bed: Bed, tmp_path: Path) -> None:
    """`python -m bed image build` (bed.images builds, the bed pushes): the printed reference is in the registry."""
    (tmp_path / "hello.txt").write_text("hello\n")
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY hello.txt /hello.txt\n")
    proc = subprocess.run(
        [sys.executable, "-m", "bed", "image", "build", "--dir", str(bed.dir), "--context", str(tmp_path),
         "--tag", "bed-test/hello:1"],
        capture_output=True, text=True, env={**bed.env(), "PYTHONPATH": str(HERE.parent)}, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    ref = proc.stdout.strip().splitlines()[-1]
    assert ref.startswith(f"{bed.registry}/bed-test/hello:1@sha256:")  # pinned by digest, as pods should use it
    from bed import images

    pinned = f"{bed.registry}/bed-test/hello@{ref.split('@', 1)[1]}"  # skopeo takes a tag or a digest, not both
    inspect = subprocess.run([*bed.netns_cmd(), *images.in_cache_ns(["skopeo", "inspect", "--tls-verify=false",
                                                                     f"docker://{pinned}"])],
                             capture_output=True, text=True, check=False, env=images.tool_env())  # fmt: skip
    assert inspect.returncode == 0, inspect.stderr
