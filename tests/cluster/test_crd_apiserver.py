"""The generated CRD on a real kube-apiserver: installs, applies defaults, refuses invalid specs naming the field.

Uses the same cases as test_api.py, so the API server, the offline schema check and parse_spec are held to one list.
"""

from __future__ import annotations

import copy
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from alembic_operator import api, constants, crdgen, k8s_openapi
from api_cases import (
    INVALID,
    MINIMAL_SPEC,
    RICH_JOB_TEMPLATE,
    STATUS_SAMPLE,
    UNKNOWN_FIELDS,
    Invalid,
    apply_defaults,
    example_manifests,
    example_spec,
)

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

    from bed.controlplane import Bed

# One worker runs them all (make test), with the chart's tests: the module's CRD fixture is set up once, and its
# replace of the CRD (which drops labels) never lands between the chart test's adoption of the CRD and its install.
pytestmark = [pytest.mark.bed, pytest.mark.xdist_group("cluster-scoped")]

Kubectl = Callable[..., "subprocess.CompletedProcess[str]"]


def _wait(what: str, check: Callable[[], bool], timeout: float = 60, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def install_crd(kube_api: ApiClient) -> dict[str, Any]:
    """Create or update the generated CRD and wait until it is Established and served; returns it as stored."""
    from kubernetes import client as k8s

    ext: Any = k8s.ApiextensionsV1Api(kube_api)  # takes and returns plain dicts here; typed loosely

    def create_or_replace() -> bool:
        """False on a conflict: another session on the bed (a pytest-xdist worker) wrote the CRD meanwhile."""
        body = crdgen.crd()
        try:
            ext.create_custom_resource_definition(body)
        except k8s.ApiException as exc:
            if exc.status != 409:
                raise
            current = ext.read_custom_resource_definition(crdgen.CRD_NAME)
            body["metadata"]["resourceVersion"] = current.metadata.resource_version
            # A replace drops what it does not carry: keep the labels and annotations others set (the chart's test
            # adopts the CRD into its Helm release; without them its `helm install`/`upgrade` refuses the CRD).
            for key in ("labels", "annotations"):
                body["metadata"][key] = {**(getattr(current.metadata, key) or {}), **body["metadata"].get(key, {})}
            try:
                ext.replace_custom_resource_definition(crdgen.CRD_NAME, body)
            except k8s.ApiException as conflict:
                if conflict.status != 409:
                    raise
                return False
        return True

    _wait("the CRD to be written", create_or_replace)

    def established() -> bool:
        crd = ext.read_custom_resource_definition(crdgen.CRD_NAME)
        conditions = {c.type: c.status for c in (crd.status.conditions or [])}
        return conditions.get("Established") == "True" and conditions.get("NamesAccepted") == "True"

    _wait("the CRD to be Established", established)
    objects = k8s.CustomObjectsApi(kube_api)

    def served() -> bool:
        try:
            objects.list_cluster_custom_object(constants.GROUP, constants.VERSION, constants.PLURAL, limit=1)
        except k8s.ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    _wait("the resource to be served", served)
    client: Any = kube_api
    stored: dict[str, Any] = client.sanitize_for_serialization(ext.read_custom_resource_definition(crdgen.CRD_NAME))
    return stored


@pytest.fixture(scope="module")
def crd(kube_api: ApiClient) -> dict[str, Any]:
    return install_crd(kube_api)


@pytest.fixture
def objects(kube_api: ApiClient) -> Any:
    from kubernetes import client as k8s

    return k8s.CustomObjectsApi(kube_api)


def _manifest(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": constants.API_VERSION, "kind": constants.KIND, "metadata": {"name": name}, "spec": spec}


def _create(objects: Any, namespace: str, body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    created: dict[str, Any] = objects.create_namespaced_custom_object(
        constants.GROUP, constants.VERSION, namespace, constants.PLURAL, body, field_validation="Strict", **kwargs
    )
    return created


def _get(objects: Any, namespace: str, name: str) -> dict[str, Any]:
    got: dict[str, Any] = objects.get_namespaced_custom_object(
        constants.GROUP, constants.VERSION, namespace, constants.PLURAL, name
    )
    return got


def test_crd_is_established_as_generated(crd: dict[str, Any]) -> None:
    spec = crd["spec"]
    assert spec["names"]["shortNames"] == [constants.SHORT_NAME]
    assert spec["names"]["categories"] == [constants.CATEGORY]
    assert crd["status"]["acceptedNames"]["kind"] == constants.KIND
    # the API server kept the schema as generated: nothing of it was dropped or rewritten
    generated = crdgen.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert spec["versions"][0]["schema"]["openAPIV3Schema"] == generated


def test_api_md_example_is_accepted_and_read_back_with_defaults(
    crd: dict[str, Any], objects: Any, namespace: str
) -> None:
    _create(objects, namespace, _manifest("shop", example_spec()))
    stored = _get(objects, namespace, "shop")
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert stored["spec"] == apply_defaults(schema, example_spec())
    assert stored["spec"]["suspend"] is False
    assert api.parse_spec(stored["spec"]) == api.parse_spec(example_spec())


def test_minimal_spec_gets_every_default(crd: dict[str, Any], objects: Any, namespace: str) -> None:
    _create(objects, namespace, _manifest("minimal", copy.deepcopy(MINIMAL_SPEC)))
    spec = _get(objects, namespace, "minimal")["spec"]
    assert spec["backup"] == {
        "enabled": True,
        "retain": 5,
        "volume": {"persistentVolumeClaim": {"claimName": "shop-backups"}},
    }
    assert spec["rollback"] == {"strategy": "Auto"}
    assert spec["approval"] == {"allowDestructive": False, "requireForLocking": False, "requireRehearsal": False}
    assert spec["contract"] == {"oldVersionTimeout": "30m"}
    assert spec["rehearsal"] == {"onProductionServer": False, "overLimit": "Skip"}  # enabled: the chart's default
    assert spec["jobTemplate"] == {}
    assert spec["suspend"] is False
    assert spec["migrations"] == {"image": "ghcr.io/acme/shop:1.4.2", "config": "alembic.ini", "lockTimeout": "3s"}
    parsed = api.parse_spec(spec)
    assert parsed == api.parse_spec(MINIMAL_SPEC)


def test_new_object_reads_observed_generation_minus_one(crd: dict[str, Any], objects: Any, namespace: str) -> None:
    body = _manifest("fresh", copy.deepcopy(MINIMAL_SPEC))
    body["status"] = {"observedGeneration": 7, "phase": "Succeeded"}  # ignored on create: status is a subresource
    created = _create(objects, namespace, body)
    assert created["status"] == {"observedGeneration": -1}
    stored = _get(objects, namespace, "fresh")
    assert stored["metadata"]["generation"] == 1
    assert stored["status"] == {"observedGeneration": -1}
    assert api.parse_status(stored["status"]).observed_generation == -1


def test_status_written_by_the_operator_survives_pruning(
    crd: dict[str, Any], objects: Any, namespace: str, kubectl: Kubectl
) -> None:
    _create(objects, namespace, _manifest("done", copy.deepcopy(MINIMAL_SPEC)))
    status = copy.deepcopy(STATUS_SAMPLE)
    status["observedGeneration"] = 1
    status["conditions"][0]["observedGeneration"] = 1
    objects.patch_namespaced_custom_object_status(
        constants.GROUP, constants.VERSION, namespace, constants.PLURAL, "done", {"status": status}
    )
    assert _get(objects, namespace, "done")["status"] == status
    assert api.dump(api.parse_status(status)) == status

    # what users see
    out = kubectl("-n", namespace, "wait", "--for=condition=Ready", "dbm/done", "--timeout=10s")
    assert out.returncode == 0, out.stderr
    table = kubectl("-n", namespace, "get", "dbm", "done", "-o", "wide")
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()[:2]
    assert header.split()[:7] == ["NAME", "PHASE", "CURRENT", "TARGET", "READY", "AGE", "REASON"]
    assert row.split()[:5] == ["done", "Succeeded", "3f2a9c1d0b7e", "9d81aa02c4f5", "True"]
    by_category = kubectl("-n", namespace, "get", constants.CATEGORY, "-o", "name")
    assert f"{constants.SINGULAR}.{constants.GROUP}/done" in by_category.stdout


@pytest.mark.parametrize("case", INVALID + UNKNOWN_FIELDS, ids=lambda c: c.id)
def test_invalid_specs_are_refused_naming_the_field(
    crd: dict[str, Any], objects: Any, namespace: str, case: Invalid
) -> None:
    from kubernetes import client as k8s

    with pytest.raises(k8s.ApiException) as caught:
        _create(objects, namespace, _manifest("bad", copy.deepcopy(case.spec)), dry_run="All")
    assert caught.value.status in (400, 422), caught.value.body
    message = json.loads(caught.value.body or "{}")["message"]
    assert case.field in message, message
    if case.by == "cel":
        rule = next(r for r in api.SPEC_RULES if f"spec{r.field_path}" == case.field)
        assert rule.message in message


def test_cel_message_reads_well_in_kubectl(crd: dict[str, Any], namespace: str, kubectl: Kubectl) -> None:
    spec = example_spec()
    del spec["backup"]["volume"]
    manifest = yaml.safe_dump({**_manifest("shop", spec), "metadata": {"name": "shop", "namespace": namespace}})
    out = kubectl("apply", "--dry-run=server", "-f", "-", input=manifest)
    assert out.returncode != 0
    assert "spec.backup: Required value: spec.backup needs one of spec.backup.volume, spec.backup.s3" in out.stderr, \
        out.stderr


def _openapi_v3(bed: Bed) -> dict[str, Any]:
    status, body = bed.api_get(f"/openapi/v3/apis/{constants.GROUP}/{constants.VERSION}")
    assert status == 200, body[:500]
    doc: dict[str, Any] = json.loads(body)
    return doc


def test_openapi_publishes_the_descriptions(crd: dict[str, Any], bed: Bed, kubectl: Kubectl) -> None:
    """What `kubectl explain` shows: the descriptions, read from the API server's OpenAPI v3 document."""
    key = f"io.alembic-operator.migrations.{constants.VERSION}.{constants.KIND}"

    def published() -> bool:
        try:
            return key in _openapi_v3(bed).get("components", {}).get("schemas", {})
        except Exception:
            return False

    _wait("the CRD's OpenAPI v3 document", published)
    schema = _openapi_v3(bed)["components"]["schemas"][key]
    backup = schema["properties"]["spec"]["properties"]["backup"]
    for name in ("enabled", "volume", "retain"):
        assert backup["properties"][name]["description"], name
    assert backup["properties"]["retain"]["default"] == 5

    out = kubectl("explain", f"{constants.SHORT_NAME}.spec.backup", f"--api-version={constants.API_VERSION}")
    assert out.returncode == 0, out.stderr
    for field in ("enabled", "volume", "retain"):
        assert field in out.stdout
    assert "newest N are kept" in " ".join(out.stdout.split())


# --- issue 9: what used to fail only when the operator created a Job ----------------------------------------------


def _refusal(objects: Any, namespace: str, body: dict[str, Any]) -> str:
    from kubernetes import client as k8s

    with pytest.raises(k8s.ApiException) as caught:
        _create(objects, namespace, body, dry_run="All")
    assert caught.value.status == 422, caught.value.body
    message: str = json.loads(caught.value.body or "{}")["message"]
    return message


def test_vendored_core_v1_schemas_are_what_the_api_server_publishes(bed: Bed) -> None:
    """Upgrading Kubernetes is a regenerate (python -m alembic_operator.k8s_openapi), never a hand edit."""
    status, body = bed.api_get(k8s_openapi.SOURCE)
    assert status == 200, body[:500]
    status, version = bed.api_get("/version")
    assert status == 200, version[:500]
    expected = k8s_openapi.render(k8s_openapi.generate(json.loads(body), json.loads(version)["gitVersion"]))
    vendored = Path(k8s_openapi.__file__).with_name(k8s_openapi.VENDORED).read_text(encoding="utf-8")
    assert vendored == expected, f"out of date: KUBECONFIG={bed.kubeconfig} make k8s-openapi"


def test_name_longer_than_63_is_refused_naming_the_field(crd: dict[str, Any], objects: Any, namespace: str) -> None:
    message = _refusal(objects, namespace, _manifest("a" * 120, copy.deepcopy(MINIMAL_SPEC)))
    assert f"metadata.name: Invalid value: {api.NAME_RULE.message}" in message, message
    created = _create(objects, namespace, _manifest("a" * 63, copy.deepcopy(MINIMAL_SPEC)), dry_run="All")
    assert created["metadata"]["name"] == "a" * 63


def _rule(field_path: str) -> str:
    return next(r.message for r in api.SPEC_RULES if r.field_path == field_path)


def test_issue_9_bad_specs_read_well(crd: dict[str, Any], objects: Any, namespace: str) -> None:
    """The exact words users see for the five specs of issue 9 (field first, then why)."""
    cases = {
        "jobTemplate.env": ([{"value": "x"}], "spec.jobTemplate.env[0].name: Required value"),
        "jobTemplate.resources": (
            {"requests": {"cpu": "lots"}},
            'spec.jobTemplate.resources.requests.cpu: Invalid value: "lots": '
            "spec.jobTemplate.resources.requests.cpu in body should match",
        ),
        "jobTemplate.podLabels": (
            {"team": "a b"},
            'spec.jobTemplate.podLabels.team: Invalid value: "a b": spec.jobTemplate.podLabels.team in body should',
        ),
        "jobTemplate.securityContext": (
            {"runAsUser": "root"},
            'spec.jobTemplate.securityContext.runAsUser: Invalid value: "string": '
            "spec.jobTemplate.securityContext.runAsUser in body must be of type integer",
        ),
        "driftCheck.interval": ("5s", f"spec.driftCheck.interval: Invalid value: {_rule('.driftCheck.interval')}"),
    }
    for path, (value, expected) in cases.items():
        spec = example_spec()
        section, field = path.split(".")
        spec.setdefault(section, {})[field] = value
        message = _refusal(objects, namespace, _manifest("shop", spec))
        assert expected in message, message


def test_rich_job_template_is_accepted_and_stored_unchanged(crd: dict[str, Any], objects: Any, namespace: str) -> None:
    spec = {**copy.deepcopy(MINIMAL_SPEC), "jobTemplate": copy.deepcopy(RICH_JOB_TEMPLATE)}
    _create(objects, namespace, _manifest("rich", spec))
    stored = _get(objects, namespace, "rich")["spec"]
    assert stored["jobTemplate"] == RICH_JOB_TEMPLATE
    assert api.parse_spec(stored) == api.parse_spec(spec)


@pytest.mark.parametrize("manifest", example_manifests())
def test_examples_are_accepted(crd: dict[str, Any], objects: Any, namespace: str, manifest: dict[str, Any]) -> None:
    body = copy.deepcopy(manifest)
    body["metadata"].pop("namespace", None)
    created = _create(objects, namespace, body, dry_run="All")
    assert created["spec"] == apply_defaults(
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"], manifest["spec"]
    )
