"""The Kubernetes calls the operator makes (every verb the chart's RBAC must grant is here), run off the event loop.

    list/watch/get/update(status)/patch databasemigrations   (Kopf watches; we replace status)
    get secrets                                               (the database URL)
    list/watch/create/delete jobs                             (the steps of a run)
    list pods                                                 (Job results: termination messages)
    create events                                             (Kopf's event poster)
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import kubernetes
import pydantic
from kubernetes.client import ApiException

from . import constants as c

_api: kubernetes.client.ApiClient | None = None


def configure() -> None:
    """Load credentials: in-cluster first (the chart's ServiceAccount), then $KUBECONFIG / ~/.kube/config."""
    global _api
    try:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
    _api = kubernetes.client.ApiClient()


def api() -> kubernetes.client.ApiClient:
    if _api is None:
        configure()
    assert _api is not None
    return _api


def _custom() -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(api())


def _core() -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(api())


def _batch() -> kubernetes.client.BatchV1Api:
    return kubernetes.client.BatchV1Api(api())


def _plain(obj: object) -> dict[str, Any]:
    """A client model as the API's JSON (camelCase dicts)."""
    return dict(api().sanitize_for_serialization(obj))  # type: ignore[no-untyped-call]


async def get_migration(namespace: str, name: str) -> dict[str, Any] | None:
    try:
        obj: Any = await asyncio.to_thread(_custom().get_namespaced_custom_object, c.GROUP, c.VERSION, namespace,
                                           c.PLURAL, name)
    except ApiException as err:
        if err.status == 404:
            return None
        raise
    return dict(obj)


async def list_migrations(namespaces: list[str] | None) -> list[dict[str, Any]]:
    if not namespaces:
        result: Any = await asyncio.to_thread(_custom().list_cluster_custom_object, c.GROUP, c.VERSION, c.PLURAL)
        return list(result.get("items", []))
    items: list[dict[str, Any]] = []
    for ns in namespaces:
        listed: Any = await asyncio.to_thread(_custom().list_namespaced_custom_object, c.GROUP, c.VERSION, ns,
                                              c.PLURAL)
        items.extend(listed.get("items", []))
    return items


async def replace_status(obj: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    """Write the whole status with optimistic concurrency (409 Conflict when the object moved on)."""
    meta = obj["metadata"]
    body = {"apiVersion": c.API_VERSION, "kind": c.KIND,
            "metadata": {"name": meta["name"], "namespace": meta["namespace"],
                         "resourceVersion": meta["resourceVersion"]},
            "status": status}
    result: Any = await asyncio.to_thread(_custom().replace_namespaced_custom_object_status, c.GROUP, c.VERSION,
                                     meta["namespace"], c.PLURAL, meta["name"], body)
    return dict(result)


async def read_secret_data(namespace: str, name: str) -> dict[str, str] | None:
    try:
        secret = await asyncio.to_thread(_core().read_namespaced_secret, name, namespace)
    except ApiException as err:
        if err.status == 404:
            return None
        raise
    return {str(k): str(v) for k, v in (secret.data or {}).items()}


async def list_jobs(namespace: str, owner: str) -> list[dict[str, Any]]:
    result = await asyncio.to_thread(_batch().list_namespaced_job, namespace,
                                     label_selector=f"{c.OWNER_LABEL}={owner},{c.MANAGED_BY_LABEL}={c.MANAGED_BY}")
    return [_plain(j) for j in result.items]


class Refused(Exception):
    """The API server refused an object for what it says (HTTP 4xx other than a conflict): retrying cannot help."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def refusal_message(err: ApiException) -> str:
    """The API server's own words (they name the field), from a Status body; the reason phrase otherwise."""
    try:
        body = json.loads(err.body or "")
    except ValueError:
        body = None
    message = body.get("message") if isinstance(body, dict) else None
    return str(message or f"HTTP {err.status} {err.reason}")


def validation_message(err: pydantic.ValidationError) -> str:
    """The client's own check of a Job, worded like the API server's: field path, then what is wrong."""
    parts = []
    for error in err.errors()[:5]:
        loc = [str(x) for x in error.get("loc", ())]
        if loc and loc[0].isdigit():  # the positional argument the body was passed as
            loc = loc[1:]
        path = "".join(f"[{x}]" if x.isdigit() else f".{x}" for x in loc).lstrip(".")
        parts.append(f"Job {path}: {error.get('msg')}")
    return "; ".join(parts) or str(err).splitlines()[0]


async def create_job(manifest: dict[str, Any], dry_run: bool = False) -> None:
    """Create a Job (or only validate it: `dry_run`, the API server's full admission without storing anything).

    One that exists already (a restarted operator, a lost response) is left as it is. A Job the API server refuses
    raises Refused; other errors (the API unreachable, 5xx) raise as they are, to be retried.
    """
    kwargs = {"dry_run": "All"} if dry_run else {}
    try:
        await asyncio.to_thread(_batch().create_namespaced_job, manifest["metadata"]["namespace"],
                                manifest, **kwargs)  # type: ignore[arg-type]  # the client takes plain dicts too
    except pydantic.ValidationError as err:  # the client checks the types before sending: the same verdict
        raise Refused(validation_message(err)) from None
    except ApiException as err:
        if err.status == 409:
            return
        if err.status is not None and 400 <= err.status < 500 and err.status not in (401, 408, 429):
            raise Refused(refusal_message(err)) from None
        raise


async def delete_job(namespace: str, name: str) -> None:
    try:
        await asyncio.to_thread(_batch().delete_namespaced_job, name, namespace, propagation_policy="Background")
    except ApiException as err:
        if err.status != 404:
            raise


async def job_pods(namespace: str, job_name: str) -> list[dict[str, Any]]:
    result = await asyncio.to_thread(_core().list_namespaced_pod, namespace,
                                     label_selector=f"batch.kubernetes.io/job-name={job_name}")
    return [_plain(p) for p in result.items]


def parse_result(message: str | None) -> dict[str, Any] | None:
    if not message:
        return None
    try:
        value = json.loads(message)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
