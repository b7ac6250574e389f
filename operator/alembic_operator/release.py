"""Removing the scheduling gate from held pods the moment their requirement is met (decisions: :mod:`.gate`).

Three triggers, one path per DatabaseMigration (``Gatekeeper.sync``: list its labelled pods, release those whose
requirement is met, count the rest), so a restarted operator catches up by itself:

- every watch event of a DatabaseMigration (Kopf): a status write that makes it Ready releases its pods at once, no
  polling; Kopf's initial listing included (start-up);
- every watch event of a labelled pod (``PodWatch``: our own watch, with a server-side label selector, in each
  namespace that has a DatabaseMigration): a pod created gated, by the webhook or by its template, while its
  requirement was already met is released at once; a held pod gets its Event;
- every ``RESYNC_SECONDS``, the DatabaseMigrations that hold pods, in case a watch event was lost.

A DatabaseMigration's event costs nothing when it holds no pod and its namespace's pod watch is listed (the watch
shows every labelled pod: none is held for it); a thousand idle resources make no request here.

Pods are patched concurrently (:class:`kube.Client`: aiohttp on Kopf's loop) with a strategic merge patch that deletes
our gate and only ours. The pod watch is not Kopf's: Kopf's per-event machinery, run for each of the hundred pod
updates a release causes, doubled the release time of a hundred pods (measured with ``make bench-gate``).
``status.heldPods`` is written here with a merge patch on the status subresource (debounced): the reconcile loop keeps
whatever it reads there.

The Kopf registrations that feed it are in :mod:`.app`; its Kubernetes calls are :mod:`.kube`'s.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import cast

import kopf

from . import constants as c
from . import events, gate, objects, reasons
from .api import MAX_NAME_LENGTH
from .kept import KeptObjects, without_managed_fields
from .kube import Client, KubeError
from .objects import Migration, Pod

log = logging.getLogger("alembic_operator.gate")

RESYNC_SECONDS = 30.0
COUNT_DELAY = 1.0  # heldPods is written at most this often per resource

Key = tuple[str, str]  # (namespace, DatabaseMigration name)


def _version(obj: Migration) -> tuple[int, int]:
    """(generation, resourceVersion) to tell which of two reads of one object is newer.

    resourceVersion is opaque by contract, but the API server's are etcd revisions: integers that only grow.
    """
    meta = obj.get("metadata") or {}
    rv = str(meta.get("resourceVersion") or "")
    return int(meta.get("generation") or 0), int(rv) if rv.isdigit() else 0


def pod_ref(namespace: str, name: str, uid: str) -> kopf.Body:
    return kopf.Body({"apiVersion": "v1", "kind": "Pod",
                      "metadata": {"namespace": namespace, "name": name, "uid": uid}})


def migration_ref(dbm: Mapping[str, object]) -> kopf.Body:
    """The object an Event names: a DatabaseMigration, or the DatabaseMigrationSet pods wait for."""
    meta = cast(objects.ObjectMeta, dbm.get("metadata") or {})
    return kopf.Body({"apiVersion": c.API_VERSION, "kind": str(dbm.get("kind") or c.KIND),
                      "metadata": {"namespace": str(meta.get("namespace")), "name": str(meta.get("name")),
                                   "uid": str(meta.get("uid"))}})


@dataclass
class Gatekeeper:
    """In-memory view of DatabaseMigrations and held pods; rebuilt from the watches after a restart."""

    client: Client | None = None  # the operator's (given at start-up; it closes it)
    migrations: KeptObjects[Key, Migration] = field(
        default_factory=lambda: KeptObjects(without_managed_fields, version=_version))
    held: dict[Key, dict[str, gate.PodVerdict]] = field(default_factory=dict)  # by pod uid
    announced: set[str] = field(default_factory=set)  # pod uids whose Held event was posted
    releasing: set[str] = field(default_factory=set)
    reported: dict[Key, int] = field(default_factory=dict)  # held count last told in a DatabaseMigration Event
    tasks: dict[tuple[str, Key], asyncio.Task[None]] = field(default_factory=dict)
    dirty: set[Key] = field(default_factory=set)
    listed: set[str] = field(default_factory=set)  # namespaces whose pod watch has listed its pods
    touched: set[Key] = field(default_factory=set)  # resources whose pods this process held or released
    released_total: int = 0

    def stop(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        self.tasks.clear()

    @property
    def kube(self) -> Client:
        if self.client is None:
            raise RuntimeError("the Gatekeeper has no Kubernetes client (the operator's start-up gives it one)")
        return self.client

    # --- inputs -------------------------------------------------------------------------------------------------
    def migration_seen(self, event_type: str | None, raw: Mapping[str, object]) -> None:
        body = objects.migration(raw)
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace")), str(meta.get("name")))
        if event_type == "DELETED":
            self.migrations.pop(key)
            self.reported.pop(key, None)
            self.touched.discard(key)
            last = not any(ns == key[0] for ns, _ in self.migrations)
            if last and (task := self.tasks.pop(("watch", (key[0], "")), None)) is not None:
                task.cancel()
                self.listed.discard(key[0])
        else:
            self.remember(body)  # never back in time: a fresh read (webhook) may be ahead of the watch
            self.watch_pods(key[0])
        if self.held.get(key) or key[0] not in self.listed:
            self.kick(key)
        elif key in self.held:
            del self.held[key]
        owner = (meta.get("labels") or {}).get(c.SET_LABEL)
        if owner and self.held.get((key[0], owner)):
            self.kick((key[0], owner))  # a member changed: pods that wait for its whole set may go

    def set_seen(self, raw: Mapping[str, object]) -> None:
        """A DatabaseMigrationSet changed (its status: Ready): pods waiting for it are looked at again."""
        meta = cast(objects.ObjectMeta, raw.get("metadata") or {})
        key = (str(meta.get("namespace")), str(meta.get("name")))
        if self.held.get(key):
            self.kick(key)

    async def read_set(self, namespace: str, name: str) -> gate.SetView:
        """A set and its DatabaseMigrations, read fresh together (what a pod waiting for the set is decided on)."""
        found, members = await asyncio.gather(self.kube.get_set(namespace, name),
                                              self.kube.list_set_members(namespace, name))
        return gate.SetView(found, tuple(members))

    def _resync_soon(self) -> None:
        task = self.tasks.get(("resync", ("", "")))
        if task is None or task.done():
            self._spawn(("resync", ("", "")), self._resync_loop())

    async def _resync_loop(self) -> None:
        """Every RESYNC_SECONDS: sync the DatabaseMigrations that hold pods (a lost watch event, a failed patch)."""
        while self.migrations:
            await asyncio.sleep(RESYNC_SECONDS)
            for key in [k for k, pods in self.held.items() if pods]:
                self.kick(key)

    def watch_pods(self, namespace: str) -> None:
        """Watch the labelled pods of a namespace (once a DatabaseMigration is seen there)."""
        task = self.tasks.get(("watch", (namespace, "")))
        if task is None or task.done():
            self._spawn(("watch", (namespace, "")), self._watch_loop(namespace))
        self._resync_soon()

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
                    self.listed.add(namespace)
                async for event in self.kube.watch(path, {**selector, "resourceVersion": version}):
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        if obj.get("code") == 410:  # too old: list again
                            version = None
                            self.listed.discard(namespace)
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
                    self.listed.discard(namespace)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    def remember(self, dbm: Migration) -> None:
        """Keep an object read directly (not from the watch) when it is newer than what the watch showed."""
        meta = dbm.get("metadata") or {}
        key = (str(meta.get("namespace")), str(meta.get("name")))
        self.migrations.put_if_newer(key, dbm, or_same=True)

    async def read_migration(self, namespace: str, name: str) -> Migration | None:
        """A fresh read, remembered (the webhook decides on it: the watch may be a moment behind)."""
        body = await self.kube.get_migration(namespace, name)
        if body is None:
            return None
        dbm = objects.migration(body)
        self.remember(dbm)
        return dbm

    def pod_seen(self, event_type: str | None, raw: Mapping[str, object]) -> None:
        pod = objects.pod(raw)
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
        if requirement.kind == c.SET_KIND:
            self.kick(key)  # the sync reads the set and its members fresh
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

    def _spawn(self, tkey: tuple[str, Key], coro: Coroutine[object, object, None]) -> None:
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
        wanted = [gate.requirement_of(p.get("metadata")) for p in pods]
        view = await self.read_set(namespace, name) if any(
            r is not None and r.kind == c.SET_KIND for r in wanted) else None
        verdicts = gate.review_pods(pods, {key: dbm} if dbm is not None else {}, {key: view} if view else {})
        ready = [v for v in verdicts if v.verdict.met and v.uid not in self.releasing]
        held = [v for v in verdicts if not v.verdict.met]
        self.held[key] = {v.uid: v for v in held}
        if not held:
            del self.held[key]
        subject = dbm if dbm is not None else (view.set if view is not None else None)
        if ready and subject is not None:
            await self._release(key, subject, ready)
        if held:
            self._note_held(key, dbm, held)
        self._count_soon(key)

    async def _release_one(self, key: Key, pod: Pod) -> None:
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

    async def _release(self, key: Key, dbm: Mapping[str, object], pods: list[gate.PodVerdict]) -> None:
        started = time.monotonic()
        for p in pods:
            self.releasing.add(p.uid)
        try:
            results = await asyncio.gather(*(self.kube.release_pod(p.namespace, p.name) for p in pods),
                                           return_exceptions=True)
        finally:
            for p in pods:
                self.releasing.discard(p.uid)
        done = [p for p, r in zip(pods, results, strict=True) if r is True]
        failed = [(p, r) for p, r in zip(pods, results, strict=True) if isinstance(r, BaseException)]
        if done:
            self.touched.add(key)
        for p in done:
            self.held.get(key, {}).pop(p.uid, None)
            self.announced.discard(p.uid)
            events.post(pod_ref(p.namespace, p.name, p.uid), "Normal", reasons.RELEASED,
                        f"scheduling gate {c.SCHEDULING_GATE} removed: {p.verdict.message}")
        self.released_total += len(done)
        if done:
            elapsed = time.monotonic() - started
            log.info("released %d pod(s) waiting for %s/%s in %.3fs", len(done), *key, elapsed)
            names = sorted(p.name for p in done)
            listed = ", ".join(names[: gate.MAX_LISTED]) + (
                f" and {len(names) - gate.MAX_LISTED} more" if len(names) > gate.MAX_LISTED else "")
            events.post(migration_ref(dbm), "Normal", reasons.PODS_RELEASED,
                        f"released {len(done)} held pod(s) ({listed}): {done[0].verdict.message}")
            self._count_soon(key)
        if failed:
            log.warning("could not release %d pod(s) of %s/%s (retrying): %s", len(failed), *key, failed[0][1])
            self.dirty.add(key)
            raise RuntimeError(f"{len(failed)} pod(s) not released")

    # --- reporting ----------------------------------------------------------------------------------------------
    def _note_held(self, key: Key, dbm: Migration | None, held: list[gate.PodVerdict]) -> None:
        self.touched.add(key)
        pods = self.held.setdefault(key, {})
        for p in held:
            pods[p.uid] = p
            if p.uid not in self.announced:
                self.announced.add(p.uid)
                kind: events.EventType = (
                    "Warning" if p.verdict.reason in (gate.UNKNOWN_REVISION, gate.MIGRATION_NOT_FOUND,
                                                      gate.SCHEMA_CONTRACTED) else "Normal")
                events.post(pod_ref(p.namespace, p.name, p.uid), kind, reasons.HELD,
                            f"{p.verdict.reason}: scheduling gate {c.SCHEDULING_GATE} kept: {p.verdict.message}")
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
            events.post(migration_ref(dbm), kind, reason, message)
        self.reported[key] = count
        written = (dbm.get("status") or {}).get("heldPods")
        if written != count and (written is not None or count or key in self.touched):
            # A resource that never held a pod is left without the field (no write per resource at start-up).
            try:
                await self.kube.patch_held_pods(*key, count)
            except KubeError as err:
                log.warning("could not write status.heldPods of %s/%s: %s", *key, err)

    def held_pods(self, namespace: str, name: str) -> int:
        """Pods held for this DatabaseMigration, as last seen."""
        return len(self.held.get((namespace, name), {}))
