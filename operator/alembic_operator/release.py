"""Removing the scheduling gate from held pods the moment their requirement is met (decisions: :mod:`.gate`).

Three triggers, one path per DatabaseMigration (``Gatekeeper.sync``: list its labelled pods, release those whose
requirement is met, count the rest), so a restarted operator catches up by itself:

- every watch event of a DatabaseMigration (Kopf): a status write that makes it Ready releases its pods at once, no
  polling; Kopf's initial listing included (start-up);
- every watch event of a labelled pod (``PodWatch``: our own watch, with a server-side label selector, in each
  namespace that has a DatabaseMigration): a pod created gated, by the webhook or by its template, while its
  requirement was already met is released at once; a held pod gets its Event;
- a timer every ``RESYNC_SECONDS`` per DatabaseMigration (Kopf), in case a watch event was lost.

Pods are patched concurrently (aiohttp on Kopf's loop) with a strategic merge patch that deletes our gate and only
ours. The pod watch is not Kopf's: Kopf's per-event machinery, run for each of the hundred pod updates a release
causes, doubled the release time of a hundred pods (measured with ``make bench-gate``). ``status.heldPods`` is written
here with a merge patch on the status subresource (debounced): the reconcile loop keeps whatever it reads there.

Kubernetes calls made here (RBAC): list/watch/patch pods, get/list/watch databasemigrations, patch
databasemigrations/status, create events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import kopf
import kubernetes

from . import constants as c
from . import gate, reasons
from .api import MAX_NAME_LENGTH

log = logging.getLogger("alembic_operator.gate")

RESYNC_SECONDS = 30.0
COUNT_DELAY = 1.0  # heldPods is written at most this often per resource
CONNECTIONS = 32  # concurrent requests (pod patches)
REQUEST_TIMEOUT = 10.0
WATCH_SECONDS = 290  # server-side timeout of one pod watch request (then it is renewed)

Key = tuple[str, str]  # (namespace, DatabaseMigration name)


class KubeError(Exception):
    """An API call answered with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


class Client:
    """Our own asynchronous API client (aiohttp, on Kopf's event loop), with the credentials the kubernetes package
    finds (in-cluster ServiceAccount first, then $KUBECONFIG). A hundred patches at once cost about half of what
    they cost through the kubernetes package's threads (model validation, urllib3, the GIL)."""

    def __init__(self, connections: int = CONNECTIONS) -> None:
        cfg = kubernetes.client.Configuration()
        try:
            kubernetes.config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        self.cfg = cfg
        self.connections = connections
        self.api = kubernetes.client.ApiClient(cfg)  # for the few blocking calls (the webhook configuration)
        self._session: aiohttp.ClientSession | None = None
        self._watch_session: aiohttp.ClientSession | None = None

    def _ssl(self) -> ssl.SSLContext | bool:
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

    def _headers(self, content_type: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "alembic-operator/gate"}
        if content_type:
            headers["Content-Type"] = content_type
        settings: dict[str, Any] = dict(self.cfg.auth_settings())  # refreshes an expiring token first
        for auth in settings.values():
            if auth.get("in") == "header" and auth.get("value"):
                headers[str(auth["key"])] = str(auth["value"])
        return headers

    async def request(self, method: str, path: str, body: Any = None, content_type: str | None = None,
                      params: dict[str, str] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body)
        async with self._session_now().request(method, f"{self.cfg.host}{path}", data=data, params=params,
                                               headers=self._headers(content_type)) as resp:
            raw = await resp.read()
            if resp.status >= 400:
                try:
                    message = str(json.loads(raw).get("message") or resp.reason)
                except ValueError:
                    message = str(resp.reason)
                raise KubeError(resp.status, message)
            return dict(json.loads(raw)) if raw else {}

    async def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        result = await self.request("GET", f"/api/v1/namespaces/{namespace}/pods", params={"labelSelector": selector})
        return list(result.get("items") or [])

    async def release(self, namespace: str, name: str) -> bool:
        """Remove our gate; False when the pod is gone."""
        try:
            await self.request("PATCH", f"/api/v1/namespaces/{namespace}/pods/{name}", gate.release_patch(),
                               "application/strategic-merge-patch+json")
        except KubeError as err:
            if err.status == 404:
                return False
            raise
        return True

    def _migration_path(self, namespace: str, name: str) -> str:
        return f"/apis/{c.GROUP}/{c.VERSION}/namespaces/{namespace}/{c.PLURAL}/{name}"

    async def get_migration(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.request("GET", self._migration_path(namespace, name))
        except KubeError as err:
            if err.status == 404:
                return None
            raise

    async def patch_held_pods(self, namespace: str, name: str, count: int) -> None:
        try:
            await self.request("PATCH", self._migration_path(namespace, name) + "/status",
                               {"status": {"heldPods": count}}, "application/merge-patch+json")
        except KubeError as err:
            if err.status != 404:
                raise

    async def watch(self, path: str, params: dict[str, str]) -> AsyncIterator[dict[str, Any]]:
        """Stream the events of a watch request (one JSON object per line) until the server ends it."""
        if self._watch_session is None or self._watch_session.closed:
            # Its own connections: a watch holds one for minutes, the patches must never wait for it.
            self._watch_session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self._ssl(), limit=0))
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=REQUEST_TIMEOUT, sock_read=WATCH_SECONDS + 30)
        query = {**params, "watch": "true", "allowWatchBookmarks": "true", "timeoutSeconds": str(WATCH_SECONDS)}
        async with self._watch_session.get(f"{self.cfg.host}{path}", params=query, timeout=timeout,
                                           headers=self._headers(None)) as resp:
            if resp.status >= 400:
                raise KubeError(resp.status, str(resp.reason))
            buffer = b""
            async for chunk in resp.content.iter_any():
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield dict(json.loads(line))

    async def close(self) -> None:
        for session in (self._session, self._watch_session):
            if session is not None:
                await session.close()
        self._session = self._watch_session = None
        with contextlib.suppress(Exception):
            self.api.close()  # type: ignore[no-untyped-call]


def _version(obj: dict[str, Any]) -> tuple[int, int]:
    """(generation, resourceVersion) to tell which of two reads of one object is newer.

    resourceVersion is opaque by contract, but the API server's are etcd revisions: integers that only grow.
    """
    meta = obj.get("metadata") or {}
    rv = str(meta.get("resourceVersion") or "")
    return int(meta.get("generation") or 0), int(rv) if rv.isdigit() else 0


def pod_ref(namespace: str, name: str, uid: str) -> kopf.Body:
    return kopf.Body({"apiVersion": "v1", "kind": "Pod",
                      "metadata": {"namespace": namespace, "name": name, "uid": uid}})


def migration_ref(dbm: dict[str, Any]) -> kopf.Body:
    meta = dbm.get("metadata") or {}
    return kopf.Body({"apiVersion": c.API_VERSION, "kind": c.KIND,
                      "metadata": {"namespace": str(meta.get("namespace")), "name": str(meta.get("name")),
                                   "uid": str(meta.get("uid"))}})


@dataclass
class Gatekeeper:
    """In-memory view of DatabaseMigrations and held pods; rebuilt from the watches after a restart."""

    client: Client | None = None
    migrations: dict[Key, dict[str, Any]] = field(default_factory=dict)
    held: dict[Key, dict[str, gate.PodVerdict]] = field(default_factory=dict)  # by pod uid
    announced: set[str] = field(default_factory=set)  # pod uids whose Held event was posted
    releasing: set[str] = field(default_factory=set)
    reported: dict[Key, int] = field(default_factory=dict)  # held count last told in a DatabaseMigration Event
    tasks: dict[tuple[str, Key], asyncio.Task[None]] = field(default_factory=dict)
    dirty: set[Key] = field(default_factory=set)
    released_total: int = 0

    def start(self) -> None:
        if self.client is None:
            self.client = Client()

    async def stop(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        self.tasks.clear()
        if self.client is not None:
            await self.client.close()
            self.client = None

    @property
    def kube(self) -> Client:
        self.start()
        assert self.client is not None
        return self.client

    # --- inputs -------------------------------------------------------------------------------------------------
    def migration_seen(self, event_type: str | None, body: dict[str, Any]) -> None:
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace")), str(meta.get("name")))
        if event_type == "DELETED":
            self.migrations.pop(key, None)
            last = not any(ns == key[0] for ns, _ in self.migrations)
            if last and (task := self.tasks.pop(("watch", (key[0], "")), None)) is not None:
                task.cancel()
        else:
            self.remember(body)  # never back in time: a fresh read (webhook) may be ahead of the watch
            self.watch_pods(key[0])
        self.kick(key)

    def watch_pods(self, namespace: str) -> None:
        """Watch the labelled pods of a namespace (once a DatabaseMigration is seen there)."""
        task = self.tasks.get(("watch", (namespace, "")))
        if task is None or task.done():
            self._spawn(("watch", (namespace, "")), self._watch_loop(namespace))

    async def _watch_loop(self, namespace: str) -> None:
        path = f"/api/v1/namespaces/{namespace}/pods"
        selector = {"labelSelector": c.WAIT_FOR_LABEL}
        version: str | None = None
        backoff = 1.0
        while True:
            try:
                if version is None:  # (re)list: everything there is, then watch from there
                    listing = await self.kube.request("GET", f"/api/v1/namespaces/{namespace}/pods", params=selector)
                    version = str((listing.get("metadata") or {}).get("resourceVersion") or "")
                    for pod in listing.get("items") or []:
                        self.pod_seen(None, pod)
                async for event in self.kube.watch(path, {**selector, "resourceVersion": version}):
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        if obj.get("code") == 410:  # too old: list again
                            version = None
                        else:
                            log.warning("pod watch in %s: %s", namespace, obj.get("message"))
                        break
                    version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                    if kind != "BOOKMARK":
                        self.pod_seen(str(kind), obj)
                backoff = 1.0
            except asyncio.CancelledError:
                raise
            except Exception as err:  # the API server restarted, a timeout: watch again, list if need be
                log.warning("pod watch in %s failed, again in %.0fs: %s", namespace, backoff, err)
                if isinstance(err, KubeError) and err.status == 410:
                    version = None
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    def remember(self, dbm: dict[str, Any]) -> None:
        """Keep an object read directly (not from the watch) when it is newer than what the watch showed."""
        meta = dbm.get("metadata") or {}
        key = (str(meta.get("namespace")), str(meta.get("name")))
        cached = self.migrations.get(key)
        if cached is None or _version(dbm) >= _version(cached):
            self.migrations[key] = dbm

    async def read_migration(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A fresh read, remembered (the webhook decides on it: the watch may be a moment behind)."""
        dbm = await self.kube.get_migration(namespace, name)
        if dbm is not None:
            self.remember(dbm)
        return dbm

    def pod_seen(self, event_type: str | None, pod: dict[str, Any]) -> None:
        meta = pod.get("metadata") or {}
        requirement = gate.requirement_of(meta)
        uid = str(meta.get("uid") or "")
        namespace = str(meta.get("namespace") or "")
        if requirement is None:
            self._forget_pod(uid)
            return
        key = (namespace, requirement.migration)
        if event_type == "DELETED" or not gate.has_gate(pod) or meta.get("deletionTimestamp"):
            self._forget_pod(uid)
            return
        dbm = self.migrations.get(key)
        if dbm is None:
            self.kick(key)  # not seen yet (start-up) or absent: the sync reads it and reports
            return
        (verdict,) = gate.review_pods([pod], {key: dbm})
        if verdict.verdict.met:
            tkey = ("pod", (namespace, str(meta.get("name"))))
            running = self.tasks.get(tkey)
            if uid not in self.releasing and (running is None or running.done()):
                self._spawn(tkey, self._release_one(key, pod))
            return
        self._note_held(key, dbm, [verdict])

    def _forget_pod(self, uid: str) -> None:
        for key, pods in self.held.items():
            if pods.pop(uid, None) is not None:
                self._count_soon(key)
        self.announced.discard(uid)

    # --- the sync -----------------------------------------------------------------------------------------------
    def kick(self, key: Key) -> None:
        """Sync this DatabaseMigration's pods now; calls while a sync runs coalesce into one more sync."""
        self.dirty.add(key)
        task = self.tasks.get(("sync", key))
        if task is None or task.done():
            self._spawn(("sync", key), self._sync_loop(key))

    def _spawn(self, tkey: tuple[str, Key], coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self.tasks[tkey] = task
        task.add_done_callback(lambda t: self.tasks.pop(tkey, None) if self.tasks.get(tkey) is t else None)

    async def _sync_loop(self, key: Key) -> None:
        backoff = 1.0
        while key in self.dirty:
            self.dirty.discard(key)
            try:
                await self.sync(key)
                backoff = 1.0
            except asyncio.CancelledError:
                raise
            except Exception as err:  # API hiccups: retry, the timer also resyncs
                log.warning("gate sync of %s/%s failed, retrying in %.0fs: %s", *key, backoff, err)
                self.dirty.add(key)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    async def sync(self, key: Key) -> None:
        namespace, name = key
        if len(name) > MAX_NAME_LENGTH:
            return  # no pod can carry it as a label value, so none waits for it (the resource's status says why)
        # Decide on a fresh read (taken while the pods are listed: no added latency), not on the watch's copy,
        # which may be behind when a new spec and the app's pods arrive together.
        fresh, pods = await asyncio.gather(self.read_migration(namespace, name),
                                           self.kube.list_pods(namespace, f"{c.WAIT_FOR_LABEL}={name}"))
        dbm = self.migrations.get(key) if fresh is not None else None
        verdicts = gate.review_pods(pods, {key: dbm} if dbm is not None else {})
        ready = [v for v in verdicts if v.verdict.met and v.uid not in self.releasing]
        held = [v for v in verdicts if not v.verdict.met]
        self.held[key] = {v.uid: v for v in held}
        if ready and dbm is not None:
            await self._release(key, dbm, ready)
        if held:
            self._note_held(key, dbm, held)
        self._count_soon(key)

    async def _release_one(self, key: Key, pod: dict[str, Any]) -> None:
        """A pod seen gated while the watch's copy says its requirement is met: confirm on a fresh read."""
        try:
            fresh = await self.read_migration(*key)
            dbm = self.migrations.get(key) if fresh is not None else None
            for verdict in gate.review_pods([pod], {key: dbm} if dbm is not None else {}):
                if verdict.verdict.met and dbm is not None:
                    await self._release(key, dbm, [verdict])
                else:
                    self._note_held(key, dbm, [verdict])
        except Exception as err:  # the sync retries with back-off
            log.warning("could not release a pod of %s/%s: %s", *key, err)
            self.kick(key)

    async def _release(self, key: Key, dbm: dict[str, Any], pods: list[gate.PodVerdict]) -> None:
        started = time.monotonic()
        for p in pods:
            self.releasing.add(p.uid)
        try:
            results = await asyncio.gather(*(self.kube.release(p.namespace, p.name) for p in pods),
                                           return_exceptions=True)
        finally:
            for p in pods:
                self.releasing.discard(p.uid)
        done = [p for p, r in zip(pods, results, strict=True) if r is True]
        failed = [(p, r) for p, r in zip(pods, results, strict=True) if isinstance(r, BaseException)]
        for p in done:
            self.held.get(key, {}).pop(p.uid, None)
            self.announced.discard(p.uid)
            kopf.event(pod_ref(p.namespace, p.name, p.uid), type="Normal", reason=reasons.RELEASED,
                       message=f"scheduling gate {c.SCHEDULING_GATE} removed: {p.verdict.message}")
        self.released_total += len(done)
        if done:
            elapsed = time.monotonic() - started
            log.info("released %d pod(s) waiting for %s/%s in %.3fs", len(done), *key, elapsed)
            names = sorted(p.name for p in done)
            listed = ", ".join(names[: gate.MAX_LISTED]) + (
                f" and {len(names) - gate.MAX_LISTED} more" if len(names) > gate.MAX_LISTED else "")
            kopf.event(migration_ref(dbm), type="Normal", reason=reasons.PODS_RELEASED,
                       message=f"released {len(done)} held pod(s) ({listed}): {done[0].verdict.message}")
            self._count_soon(key)
        if failed:
            log.warning("could not release %d pod(s) of %s/%s (retrying): %s", len(failed), *key, failed[0][1])
            self.dirty.add(key)
            raise RuntimeError(f"{len(failed)} pod(s) not released")

    # --- reporting ----------------------------------------------------------------------------------------------
    def _note_held(self, key: Key, dbm: dict[str, Any] | None, held: list[gate.PodVerdict]) -> None:
        pods = self.held.setdefault(key, {})
        for p in held:
            pods[p.uid] = p
            if p.uid not in self.announced:
                self.announced.add(p.uid)
                kind = "Warning" if p.verdict.reason in (gate.UNKNOWN_REVISION, gate.MIGRATION_NOT_FOUND) else "Normal"
                kopf.event(pod_ref(p.namespace, p.name, p.uid), type=kind, reason=reasons.HELD,
                           message=f"{p.verdict.reason}: scheduling gate {c.SCHEDULING_GATE} kept: "
                                   f"{p.verdict.message}")
        self._count_soon(key)

    def _count_soon(self, key: Key) -> None:
        task = self.tasks.get(("count", key))
        if task is None or task.done():
            self._spawn(("count", key), self._count_later(key))

    async def _count_later(self, key: Key) -> None:
        await asyncio.sleep(COUNT_DELAY)
        dbm = self.migrations.get(key)
        if dbm is None:
            return
        held = list(self.held.get(key, {}).values())
        count = len(held)
        if count > self.reported.get(key, 0):
            kind, reason, message = gate.summarize_held(key[1], held)
            kopf.event(migration_ref(dbm), type=kind, reason=reason, message=message)
        self.reported[key] = count
        if (dbm.get("status") or {}).get("heldPods") != count:
            try:
                await self.kube.patch_held_pods(*key, count)
            except (KubeError, aiohttp.ClientError, TimeoutError) as err:
                log.warning("could not write status.heldPods of %s/%s: %s", *key, err)

    def held_pods(self, namespace: str, name: str) -> int:
        """Pods held for this DatabaseMigration, as last seen."""
        return len(self.held.get((namespace, name), {}))


keeper = Gatekeeper()


class QuietSuccess(logging.Filter):
    """Drop Kopf's "... succeeded." lines of our webhook (one per pod created), watch and timer handlers."""

    QUIET = ("'gate-migration'", "'gate-resync'", "'hold-until-schema-ready'")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.endswith(" succeeded.") and any(q in message for q in self.QUIET))


@kopf.on.startup()
async def gate_startup(**_: Any) -> None:
    objects = logging.getLogger("kopf.objects")
    if not any(isinstance(f, QuietSuccess) for f in objects.filters):
        objects.addFilter(QuietSuccess())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # one line per admission request otherwise
    keeper.start()


@kopf.on.cleanup()
async def gate_cleanup(**_: Any) -> None:
    await keeper.stop()


@kopf.on.event(c.GROUP, c.VERSION, c.PLURAL, id="gate-migration")
async def gate_migration_changed(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
    keeper.migration_seen(event.get("type"), dict(body))


@kopf.timer(c.GROUP, c.VERSION, c.PLURAL, interval=RESYNC_SECONDS, id="gate-resync")
async def gate_resync(namespace: str | None, name: str, **_: Any) -> None:
    keeper.kick((namespace or "", name))
