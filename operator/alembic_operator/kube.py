"""The operator's one Kubernetes client: asynchronous (aiohttp, on Kopf's event loop), with typed errors.

Every Kubernetes call the operator makes is a method of :class:`Client` (or Kopf's), so this is the list of what the
chart's RBAC must grant (charts/alembic-operator/templates/_helpers.tpl; tests/unit/test_chart.py derives it from
the code):

    get/list/watch/patch databasemigrations   (Kopf watches, patches its finalizer and annotations; fresh reads)
    patch databasemigrations/status           (merge patches: the reconciler its fields, the gate heldPods)
    update databasemigrations/finalizers      (the Jobs' ownerReferences set blockOwnerDeletion)
    get secrets                               (the database URL)
    list/watch/create/delete jobs             (the steps of a run; each validated first with dryRun=All)
    list/watch/patch pods                     (Job results: termination messages; held pods: watched, released)
    get pods/log                              (the plan Job's SQL, from its scan container's log, once per plan)
    create events                             (Kopf's event poster)
    create subjectaccessreviews               (the webhook: may this user approve? cluster-scoped, like cert-manager's)
    list/create/delete configmaps             (the audit trail: one record per finished run; never read back)
    get/create/update/delete mutatingwebhookconfigurations
                                              (only when the operator writes the webhook's configuration itself,
                                              and removes it on a clean stop: the chart ships it instead and grants
                                              none of these)

Errors are typed: :class:`NotFound` (404), :class:`Conflict` (409), :class:`Refused` (another 4xx: the API server
refused the request for what the object says; retrying cannot help), :class:`Unavailable` (401, 408, 429, 5xx, the
API unreachable, a timeout: try again). A hundred pod patches at once cost about half of what they cost through the
``kubernetes`` package's threads (model validation, urllib3, the GIL: measured with ``make bench-gate``); that package
only loads the credentials (in-cluster ServiceAccount first, then $KUBECONFIG / ~/.kube/config).
"""

from __future__ import annotations

import base64
import contextlib
import json
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

import aiohttp
import kubernetes
from pydantic import JsonValue

from . import constants as c
from . import gate, objects
from .api import JsonObject

CONNECTIONS = 32  # concurrent requests (pod patches)
REQUEST_TIMEOUT = 30.0
WATCH_SECONDS = 290  # server-side timeout of one watch request (then it is renewed)
METADATA_ONLY = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"  # a list of names, not objects


@dataclass(frozen=True)
class Present:
    """What one metadata-only list found: the namespace listed (None: all), the list's resourceVersion (objects
    created after it are not in it) and the (namespace, name) of every object."""

    namespace: str | None
    version: int
    names: set[tuple[str, str]]
WEBHOOK_CONFIGURATIONS = "admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
TRANSIENT = (401, 408, 429)  # 4xx worth retrying: an expired token, a timeout, throttling


class KubeError(Exception):
    """An API call failed; ``status`` is the HTTP status (0: no answer), ``message`` the API server's words."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status
        self.message = message


class NotFound(KubeError):
    """404: the object (or its namespace) does not exist."""


class Conflict(KubeError):
    """409: it exists already, or it moved on since it was read (optimistic concurrency)."""


class Refused(KubeError):
    """The API server refused the request for what the object says (HTTP 4xx other than 401, 404, 408, 409, 429):
    retrying cannot help. ``message`` is the API server's own, which names the field."""


class Unavailable(KubeError):
    """Transient: the API server unreachable or overloaded, a timeout, 5xx, 401, 408, 429. Retry."""


def refusal_message(status: int, reason: str | None, body: bytes | str | None) -> str:
    """The API server's own words (they name the field), from a Status body; the reason phrase otherwise."""
    try:
        parsed = json.loads(body or "")
    except ValueError:
        parsed = None
    message = parsed.get("message") if isinstance(parsed, dict) else None
    return str(message or f"HTTP {status} {reason}")


def error_for(status: int, reason: str | None, body: bytes | str | None) -> KubeError:
    """The typed error of an HTTP error status."""
    message = refusal_message(status, reason, body)
    if status == 404:
        return NotFound(status, message)
    if status == 409:
        return Conflict(status, message)
    if 400 <= status < 500 and status not in TRANSIENT:
        return Refused(status, message)
    return Unavailable(status, message)


def load_configuration() -> kubernetes.client.Configuration:
    """Credentials: in-cluster first (the chart's ServiceAccount), then $KUBECONFIG / ~/.kube/config."""
    cfg = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    return cfg


class Client:
    """The Kubernetes API for the reconciler, the gate and the webhook. Create and use it on one event loop."""

    def __init__(self, cfg: kubernetes.client.Configuration | None = None, connections: int = CONNECTIONS) -> None:
        self.cfg = cfg if cfg is not None else load_configuration()
        self.connections = connections
        self._session: aiohttp.ClientSession | None = None
        self._watch_session: aiohttp.ClientSession | None = None

    # --- transport ----------------------------------------------------------------------------------------------
    def _ssl(self) -> ssl.SSLContext | bool:
        if not str(self.cfg.host).startswith("https:"):
            return False
        if not self.cfg.verify_ssl:
            return False
        ctx = ssl.create_default_context(cafile=self.cfg.ssl_ca_cert)
        if self.cfg.cert_file:
            ctx.load_cert_chain(self.cfg.cert_file, self.cfg.key_file)
        return ctx

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self._ssl(), limit=self.connections)
            self._session = aiohttp.ClientSession(connector=connector,
                                                  timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT))
        return self._session

    def _headers(self, content_type: str | None, accept: str = "application/json") -> dict[str, str]:
        headers = {"Accept": accept, "User-Agent": "alembic-operator"}
        if content_type:
            headers["Content-Type"] = content_type
        for auth in self.cfg.auth_settings().values():  # refreshes an expiring token first
            if isinstance(auth, dict) and auth.get("in") == "header" and auth.get("value"):
                headers[str(auth["key"])] = str(auth["value"])
        return headers

    async def request(self, method: str, path: str, body: object = None, content_type: str = "application/json",
                      params: dict[str, str] | None = None, accept: str = "application/json") -> dict[str, Any]:
        """One call; the decoded JSON answer (an object: every answer of the API server is one), or a
        :class:`KubeError` subclass. The raw body at the edge: the typed methods below read it as what it is."""
        data = None if body is None else json.dumps(body)
        try:
            async with self._session_now().request(
                    method, f"{self.cfg.host}{path}", data=data, params=params,
                    headers=self._headers(content_type if body is not None else None, accept)) as resp:
                raw = await resp.read()
                if resp.status >= 400:
                    raise error_for(resp.status, resp.reason, raw)
                return _json_object(raw) if raw else {}
        except (aiohttp.ClientError, TimeoutError) as err:
            raise Unavailable(0, f"{method} {path}: {type(err).__name__}: {err}") from err

    async def watch(self, path: str, params: dict[str, str]) -> AsyncIterator[dict[str, Any]]:
        """Stream the events of a watch request (one JSON object per line) until the server ends it."""
        if self._watch_session is None or self._watch_session.closed:
            # Its own connections: a watch holds one for minutes, the other calls must never wait for it.
            self._watch_session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self._ssl(), limit=0))
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=REQUEST_TIMEOUT, sock_read=WATCH_SECONDS + 30)
        query = {**params, "watch": "true", "allowWatchBookmarks": "true", "timeoutSeconds": str(WATCH_SECONDS)}
        async with self._watch_session.get(f"{self.cfg.host}{path}", params=query, timeout=timeout,
                                           headers=self._headers(None)) as resp:
            if resp.status >= 400:
                raise error_for(resp.status, resp.reason, await resp.read())
            buffer = b""
            async for chunk in resp.content.iter_any():
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield _json_object(line)

    async def close(self) -> None:
        for session in (self._session, self._watch_session):
            if session is not None:
                await session.close()
        self._session = self._watch_session = None

    # --- DatabaseMigrations -------------------------------------------------------------------------------------
    @staticmethod
    def _migration_path(namespace: str, name: str) -> str:
        return f"/apis/{c.GROUP}/{c.VERSION}/namespaces/{namespace}/{c.PLURAL}/{name}"

    async def get_migration(self, namespace: str, name: str) -> objects.Migration | None:
        try:
            return objects.migration(await self.request("GET", self._migration_path(namespace, name)))
        except NotFound:
            return None

    async def list_migrations(self, namespaces: list[str] | None) -> list[objects.Migration]:
        if not namespaces:
            result = await self.request("GET", f"/apis/{c.GROUP}/{c.VERSION}/{c.PLURAL}")
            return [objects.migration(item) for item in _items(result)]
        items: list[objects.Migration] = []
        for ns in namespaces:
            listed = await self.request("GET", f"/apis/{c.GROUP}/{c.VERSION}/namespaces/{ns}/{c.PLURAL}")
            items.extend(objects.migration(item) for item in _items(listed))
        return items

    async def patch_status(self, namespace: str, name: str, patch: Mapping[str, JsonValue]) -> objects.Migration:
        """Merge-patch the status (no resourceVersion: the reconciler and the gate each own their fields); the
        object as stored after it."""
        return objects.migration(await self.request(
            "PATCH", self._migration_path(namespace, name) + "/status", {"status": patch},
            "application/merge-patch+json"))

    async def patch_held_pods(self, namespace: str, name: str, count: int) -> None:
        """status.heldPods, with a merge patch (the reconciler keeps whatever it reads there); gone: nothing."""
        with contextlib.suppress(NotFound):
            await self.request("PATCH", self._migration_path(namespace, name) + "/status",
                               {"status": {"heldPods": count}}, "application/merge-patch+json")

    # --- DatabaseMigrationSets and the DatabaseMigrations they own ---------------------------------------------
    @staticmethod
    def _set_path(namespace: str, name: str) -> str:
        return f"/apis/{c.GROUP}/{c.VERSION}/namespaces/{namespace}/{c.SET_PLURAL}/{name}"

    async def create_migration(self, body: Mapping[str, JsonValue]) -> objects.Migration:
        """A DatabaseMigration a set owns, created (Conflict: it exists already)."""
        namespace = _meta(body, "namespace")
        return objects.migration(await self.request(
            "POST", f"/apis/{c.GROUP}/{c.VERSION}/namespaces/{namespace}/{c.PLURAL}", body))

    async def replace_migration_spec(self, namespace: str, name: str, spec: Mapping[str, JsonValue],
                                     annotations: Mapping[str, str]) -> objects.Migration:
        """A set's DatabaseMigration gets a new spec (the whole of it: a JSON patch, so removed keys go) and the
        annotations saying which template it carries."""
        ops: list[JsonValue] = [{"op": "replace", "path": "/spec", "value": dict(spec)}]
        ops += [{"op": "add", "path": "/metadata/annotations/" + k.replace("~", "~0").replace("/", "~1"),
                 "value": v} for k, v in annotations.items()]
        return objects.migration(await self.request(
            "PATCH", self._migration_path(namespace, name), ops, "application/json-patch+json"))

    async def delete_migration(self, namespace: str, name: str) -> None:
        """A set's DatabaseMigration whose target is gone (its finalizer never touches the database)."""
        with contextlib.suppress(NotFound):
            await self.request("DELETE", self._migration_path(namespace, name))

    async def get_set(self, namespace: str, name: str) -> JsonObject | None:
        """A DatabaseMigrationSet, read fresh (a pod that waits for the whole set is decided on it)."""
        try:
            return await self.request("GET", self._set_path(namespace, name))
        except NotFound:
            return None

    async def list_set_members(self, namespace: str, name: str) -> list[objects.Migration]:
        """The DatabaseMigrations a set owns (its label), read fresh."""
        listed = await self.request("GET", f"/apis/{c.GROUP}/{c.VERSION}/namespaces/{namespace}/{c.PLURAL}",
                                    params={"labelSelector": f"{c.SET_LABEL}={name}"})
        return [objects.migration(item) for item in _items(listed)]

    async def patch_set_status(self, namespace: str, name: str, patch: Mapping[str, JsonValue]) -> JsonObject:
        with contextlib.suppress(NotFound):
            return await self.request("PATCH", self._set_path(namespace, name) + "/status", {"status": patch},
                                      "application/merge-patch+json")
        return {}

    async def secret_labels(self, namespace: str, selector: str | None) -> dict[str, dict[str, str]]:
        """The Secrets of a namespace (those matching `selector`), name -> labels: metadata only, never their data."""
        params = {"labelSelector": selector} if selector else None
        listed = await self.request("GET", f"/api/v1/namespaces/{namespace}/secrets", params=params,
                                    accept=METADATA_ONLY)
        return {str(m.get("name")): {str(k): str(v) for k, v in (m.get("labels") or {}).items()}
                for m in ((item.get("metadata") or {}) for item in listed.get("items") or [])}

    # --- Secrets ------------------------------------------------------------------------------------------------
    async def read_secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        """The Secret's data (base64 values, as the API gives them); None when it does not exist."""
        try:
            secret = await self.request("GET", f"/api/v1/namespaces/{namespace}/secrets/{name}")
        except NotFound:
            return None
        return {str(k): str(v) for k, v in (secret.get("data") or {}).items()}

    # --- Jobs ---------------------------------------------------------------------------------------------------
    async def present(self, namespaces: list[str] | None, kind: Literal["migrations", "jobs"]) -> list[Present]:
        """Which DatabaseMigrations (or Jobs of ours) exist, per namespace listed (None: cluster-wide), with the
        list's resourceVersion: metadata only (a few hundred bytes an object, whatever its size)."""
        base, params = ((f"/apis/{c.GROUP}/{c.VERSION}", None) if kind == "migrations" else
                        ("/apis/batch/v1", {"labelSelector": f"{c.MANAGED_BY_LABEL}={c.MANAGED_BY}"}))
        plural = c.PLURAL if kind == "migrations" else "jobs"
        out: list[Present] = []
        scopes: list[str | None] = list(namespaces) if namespaces else [None]
        for ns in scopes:
            path = f"{base}/{plural}" if ns is None else f"{base}/namespaces/{ns}/{plural}"
            listed = await self.request("GET", path, params=params, accept=METADATA_ONLY)
            rv = str((listed.get("metadata") or {}).get("resourceVersion") or "")
            names = {(str(m.get("namespace")), str(m.get("name")))
                     for m in ((item.get("metadata") or {}) for item in listed.get("items") or [])}
            out.append(Present(ns, int(rv) if rv.isdigit() else 0, names))
        return out

    async def list_jobs(self, namespace: str, owner: str) -> list[objects.Job]:
        result = await self.request("GET", f"/apis/batch/v1/namespaces/{namespace}/jobs", params={
            "labelSelector": f"{c.OWNER_LABEL}={owner},{c.MANAGED_BY_LABEL}={c.MANAGED_BY}"})
        return [objects.job(item) for item in _items(result)]

    async def create_job(self, manifest: Mapping[str, JsonValue], dry_run: bool = False) -> None:
        """Create a Job (or only validate it: `dry_run`, the API server's full admission without storing anything).

        One that exists already (a restarted operator, a lost response) is left as it is. A Job the API server
        refuses raises :class:`Refused` (its message names the field); other errors raise as they are, to be retried.
        """
        try:
            await self.request("POST", f"/apis/batch/v1/namespaces/{_meta(manifest, 'namespace')}/jobs",
                               manifest, params={"dryRun": "All"} if dry_run else None)
        except Conflict:
            return

    async def delete_job(self, namespace: str, name: str) -> None:
        with contextlib.suppress(NotFound):
            await self.request("DELETE", f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}",
                               {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"})

    # --- pods ---------------------------------------------------------------------------------------------------
    async def list_pods(self, namespace: str, selector: str) -> list[objects.Pod]:
        result = await self.request("GET", f"/api/v1/namespaces/{namespace}/pods", params={"labelSelector": selector})
        return [objects.pod(item) for item in _items(result)]

    async def list_workloads(self, namespace: str,
                             plural: Literal["replicasets", "deployments", "statefulsets"]) -> list[objects.Workload]:
        """A namespace's ReplicaSets, Deployments or StatefulSets (expand/contract: which pods are the older
        version's), read only while a contract part waits."""
        result = await self.request("GET", f"/apis/apps/v1/namespaces/{namespace}/{plural}")
        return [objects.workload(item) for item in _items(result)]

    async def job_pods(self, namespace: str, job_name: str) -> list[objects.Pod]:
        return await self.list_pods(namespace, f"batch.kubernetes.io/job-name={job_name}")

    async def pod_log(self, namespace: str, name: str, container: str) -> str:
        """A container's log (text); "" when the pod is gone."""
        log_path = f"/api/v1/namespaces/{namespace}/pods/{name}/log"  # text, not JSON: not through request()
        try:
            async with self._session_now().request("GET", f"{self.cfg.host}{log_path}", params={"container": container},
                                                   headers=self._headers(None)) as resp:
                raw = await resp.read()
                if resp.status == 404:
                    return ""
                if resp.status >= 400:
                    raise error_for(resp.status, resp.reason, raw)
                return raw.decode(errors="replace")
        except (aiohttp.ClientError, TimeoutError) as err:
            raise Unavailable(0, f"GET {log_path}: {type(err).__name__}: {err}") from err

    async def release_pod(self, namespace: str, name: str) -> bool:
        """Remove our scheduling gate, and only ours (strategic merge patch); False when the pod is gone."""
        try:
            await self.request("PATCH", f"/api/v1/namespaces/{namespace}/pods/{name}", gate.release_patch(),
                               "application/strategic-merge-patch+json")
        except NotFound:
            return False
        return True

    # --- ConfigMaps: the audit trail's records ----------------------------------------------------------------------
    async def create_config_map(self, body: Mapping[str, JsonValue]) -> None:
        await self.request("POST", f"/api/v1/namespaces/{_meta(body, 'namespace')}/configmaps", body)

    async def create_binary_config_map(self, namespace: str, name: str, labels: dict[str, str],
                                       owner: Mapping[str, JsonValue], key: str, data: bytes) -> None:
        """An immutable ConfigMap holding `data` under `key` (binaryData); one that exists already is kept."""
        body = {"apiVersion": "v1", "kind": "ConfigMap", "immutable": True,
                "metadata": {"name": name, "namespace": namespace, "labels": labels, "ownerReferences": [owner]},
                "binaryData": {key: base64.b64encode(data).decode()}}
        with contextlib.suppress(Conflict):
            await self.request("POST", f"/api/v1/namespaces/{namespace}/configmaps", body)

    async def list_config_maps(self, namespace: str, selector: str) -> list[objects.ObjectMeta]:
        """The ConfigMaps' metadata only (not their data: the operator never reads them back)."""
        result = await self.request("GET", f"/api/v1/namespaces/{namespace}/configmaps",
                                    params={"labelSelector": selector})
        return [cast(objects.ObjectMeta, item.get("metadata") or {}) for item in _items(result)]

    async def list_config_map_names(self, namespace: str, selector: str) -> list[str]:
        result = await self.request("GET", f"/api/v1/namespaces/{namespace}/configmaps",
                                    params={"labelSelector": selector})
        return [str(item["metadata"]["name"]) for item in result.get("items") or []]

    async def delete_config_map(self, namespace: str, name: str) -> None:
        with contextlib.suppress(NotFound):
            await self.request("DELETE", f"/api/v1/namespaces/{namespace}/configmaps/{name}")

    # --- authorization ------------------------------------------------------------------------------------------
    async def whoami(self) -> str:
        """This client's own user name, as the API server authenticates it (a SelfSubjectReview)."""
        review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
        result = await self.request("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", review)
        return str(((result.get("status") or {}).get("userInfo") or {}).get("username") or "")

    async def may(self, username: str, uid: str, groups: list[str], extra: dict[str, list[str]], verb: str,
                  namespace: str, name: str, resource: str = c.PLURAL) -> tuple[bool, str]:
        """(allowed, the authorizer's reason): a SubjectAccessReview of `verb` on one DatabaseMigration (or one
        DatabaseMigrationSet: `resource`) for a user."""
        review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": {
            "user": username, "uid": uid, "groups": groups, "extra": extra,
            "resourceAttributes": {"namespace": namespace, "verb": verb, "group": c.GROUP, "resource": resource,
                                   "name": name}}}
        result = await self.request("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", review)
        status = result.get("status") or {}
        return bool(status.get("allowed")), str(status.get("reason") or status.get("evaluationError") or "")

    # --- the webhook's configuration ----------------------------------------------------------------------------
    async def apply_webhook_configuration(self, body: Mapping[str, JsonValue]) -> None:
        """Create or replace a MutatingWebhookConfiguration (optimistic concurrency: read, then replace)."""
        name = _meta(body, "name")
        for _attempt in range(5):
            try:
                current = await self.request("GET", f"/apis/{WEBHOOK_CONFIGURATIONS}/{name}")
            except NotFound:
                try:
                    await self.request("POST", f"/apis/{WEBHOOK_CONFIGURATIONS}", body)
                    return
                except Conflict:
                    continue
            version = (current.get("metadata") or {}).get("resourceVersion")
            meta = body.get("metadata")
            replacement = {**body, "metadata": {**(meta if isinstance(meta, dict) else {}), "resourceVersion": version}}
            try:
                await self.request("PUT", f"/apis/{WEBHOOK_CONFIGURATIONS}/{name}", replacement)
                return
            except Conflict:
                continue
        raise RuntimeError(f"could not write MutatingWebhookConfiguration {name}: conflicts")

    async def remove_webhook_configuration(self, name: str, annotation: str, owner: str) -> bool:
        """Delete a MutatingWebhookConfiguration only while its `annotation` names `owner`; one rewritten since it
        was read (another writer) stays: the delete's preconditions are the uid and resourceVersion read. True when
        it is gone."""
        try:
            current = await self.request("GET", f"/apis/{WEBHOOK_CONFIGURATIONS}/{name}")
        except NotFound:
            return True
        meta = current.get("metadata") or {}
        if (meta.get("annotations") or {}).get(annotation) != owner:
            return False
        options = {"apiVersion": "v1", "kind": "DeleteOptions",
                   "preconditions": {"uid": meta.get("uid"), "resourceVersion": meta.get("resourceVersion")}}
        try:
            await self.request("DELETE", f"/apis/{WEBHOOK_CONFIGURATIONS}/{name}", options)
        except NotFound:
            return True
        except Conflict:
            return False
        return True


def _json_object(raw: bytes) -> JsonObject:
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise Unavailable(0, f"the API server answered something other than a JSON object: {raw[:200]!r}")
    return value


def _items(listed: JsonObject) -> list[JsonObject]:
    """The objects of a list answer."""
    items = listed.get("items")
    return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []


def _meta(body: Mapping[str, JsonValue], key: str) -> str:
    """metadata.<key> of an object the operator built (its name, its namespace)."""
    meta = body.get("metadata")
    value = meta.get(key) if isinstance(meta, dict) else None
    if not isinstance(value, str):
        raise ValueError(f"an object without metadata.{key}")
    return value


def parse_result(message: str | None) -> JsonObject | None:
    """A container's termination message as the JSON object a Job command writes (runner/results); None if not."""
    if not message:
        return None
    try:
        value = json.loads(message)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
