"""The DatabaseMigrationSet's Kopf side: observe a set, its DatabaseMigrations and its Secrets, call
:func:`.strategy.decide`, act. No decisions here.

Driven by watches: Kopf's watch of the sets and the reconciler's watch of DatabaseMigrations (an owned one that
changes wakes its set: :meth:`Fleet.migration_seen`) feed one :class:`~..schedule.Scheduler` of set passes. A pass
reads the set and its members from memory; a set with a label selector lists its namespace's Secrets (metadata
only) on each pass and, while idle, once a minute (that is how a new tenant's Secret is found). An idle set with
idle DatabaseMigrations makes no other request.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import random
import time
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypedDict, cast

import kopf
from pydantic import JsonValue

from .. import constants as c
from .. import events, metrics
from ..api import JsonObject, SpecError, dump
from ..indexes import Context
from ..kube import Conflict, NotFound
from ..objects import Migration, ObjectMeta
from ..schedule import Scheduler
from ..status import merge_patch
from . import approval, strategy
from .api import parse_set_spec, parse_set_status, template_json

log = logging.getLogger("alembic_operator.fleet")

Ref = tuple[str, str]


class SetObject(TypedDict, total=False):
    """A DatabaseMigrationSet as the API sends it (its spec and status read through fleet.api's models)."""

    metadata: ObjectMeta
    spec: JsonObject
    status: JsonObject

@dataclass(frozen=True)
class Seen:
    """What a set's pass reads of one of its DatabaseMigrations."""

    member: strategy.Member
    generation: int
    deleting: bool


WORKERS = 4
STARTS_AT_ONCE = 8  # DatabaseMigrations a pass creates (or updates) at once
# An idle set with a selector looks for new Secrets this often (the environment may say otherwise: the tests).
RESCAN_ENV = "ALEMBIC_OPERATOR_SET_RESCAN_SECONDS"


class Fleet:
    """The sets as last seen, which DatabaseMigrations each owns (by name), and the scheduler of set passes."""

    def __init__(self, governed: bool = False) -> None:
        self.governed = governed  # the approvals webhook runs: a set's approval counts only as it recorded it
        self.sets: dict[Ref, SetObject] = {}
        self.members: dict[Ref, set[str]] = {}  # set -> names of its DatabaseMigrations
        # DatabaseMigrations given the template (namespace, name) -> (template hash, generation written): under
        # way until the watch shows that generation (a pass before it must not count them as they were).
        self.given: dict[Ref, tuple[str, int, str]] = {}
        # Each DatabaseMigration a set owns, as its last watch event showed it: (resourceVersion, what its set reads
        # of it). A pass reuses it (no parsing of every member's status at every pass) and an event that changes
        # none of it wakes no set (a member's progress writes would otherwise run its set's pass again and again).
        self.observed: dict[Ref, tuple[str, Seen]] = {}
        self.scheduler: Scheduler | None = None
        self.ctx: Context | None = None
        self.rescan = float(os.environ.get(RESCAN_ENV) or 60.0)
        # The last listing of a namespace's Secrets, by selector: reused for half the rescan interval (a rollout
        # wakes its set at each change of a member: one listing a pass would be hundreds a minute).
        self.listed: dict[tuple[str, str | None], tuple[float, dict[str, dict[str, str]]]] = {}
        self.listed_members: set[str] = set()  # namespaces whose DatabaseMigrations were listed since the start

    def start(self, ctx: Context) -> None:
        """Start the scheduler from within a Kopf handler (its context carries Kopf's Event poster)."""
        self.ctx = ctx
        if self.scheduler is None:
            async def work(key: Hashable) -> float | None:
                return await self.tick(*cast(Ref, key))

            self.scheduler = Scheduler(work, workers=WORKERS)
            self.scheduler.start(contextvars.copy_context())

    async def stop(self) -> None:
        if self.scheduler is not None:
            await self.scheduler.stop()

    def wake(self, ref: Ref) -> None:
        if self.scheduler is not None:
            self.scheduler.now(ref)

    # --- inputs (the watches) -----------------------------------------------------------------------------------
    def set_seen(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        ref = (str(meta.get("namespace")), str(meta.get("name")))
        if event_type == "DELETED":
            self.sets.pop(ref, None)
            if self.ctx is not None:
                self.ctx.runtime.set_approvals.pop(ref, None)
                if ref not in self.ctx.runtime.migrations:  # its notifications' series (unless a
                    metrics.forget(*ref)                    # DatabaseMigration's share its name and labels)
            if self.scheduler is not None:
                self.scheduler.forget(ref)
            return
        old = self.sets.get(ref)
        if old is not None and _version(old) > _version(body):
            return  # our own status write, already kept
        self.sets[ref] = cast(SetObject, dict(body))
        self._keep_approvals(ref, None)
        if old is None or _what_matters(old) != _what_matters(body):
            self.wake(ref)  # not for the echo of our own status writes

    def migration_seen(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A DatabaseMigration changed: when a set owns it, index it and wake the set at once if what the set reads
        of it changed (its state, template, generation...): a slot it frees is filled without waiting."""
        ref = self._index(event_type, body)
        if ref is None:
            return
        key = (ref[0], str((body.get("metadata") or {}).get("name")))
        before = self.observed.get(key)
        if event_type == "DELETED":
            self.observed.pop(key, None)
            self.wake(ref)
        elif self._observe(key, cast(Migration, body)) != (before[1] if before is not None else None):
            self.wake(ref)

    def _observe(self, key: Ref, obj: Migration) -> Seen:
        """What the set reads of one of its DatabaseMigrations, from the cache when its resourceVersion is known."""
        meta = obj.get("metadata") or {}
        version = str(meta.get("resourceVersion") or "")
        kept = self.observed.get(key)
        if kept is not None and version and kept[0] == version:
            return kept[1]
        seen = Seen(strategy.member_of(obj), int(meta.get("generation") or 0), bool(meta.get("deletionTimestamp")))
        self.observed[key] = (version, seen)
        return seen

    def _index(self, event_type: str | None, body: Mapping[str, Any]) -> Ref | None:
        """Index a DatabaseMigration under the set that owns it; that set (None: no set's)."""
        meta = body.get("metadata") or {}
        owner = (meta.get("labels") or {}).get(c.SET_LABEL)
        if not owner:
            return None
        ref = (str(meta.get("namespace")), str(owner))
        names = self.members.setdefault(ref, set())
        if event_type == "DELETED":
            names.discard(str(meta.get("name")))
            self.given.pop((ref[0], str(meta.get("name"))), None)
            self.observed.pop((ref[0], str(meta.get("name"))), None)
        else:
            names.add(str(meta.get("name")))
        return ref

    async def _list_members(self, ctx: Context, namespace: str) -> None:
        """The namespace's DatabaseMigrations as the API server has them, once after a start: the watch may deliver
        a set before its members, and a pass that saw none of them under way would start more than maxInFlight."""
        if namespace in self.listed_members:
            return
        for obj in await ctx.kube.list_migrations([namespace]):
            self._index(None, obj)
            ctx.runtime.migration_seen(None, obj)
        self.listed_members.add(namespace)

    # --- a pass -------------------------------------------------------------------------------------------------
    async def tick(self, namespace: str, name: str) -> float | None:
        try:
            return await self.reconcile(namespace, name)
        except Exception as err:  # API hiccups: again soon
            log.warning("DatabaseMigrationSet %s/%s: pass failed, again in 5s: %s: %s", namespace, name,
                        type(err).__name__, str(err)[:500])
            return 5.0

    async def reconcile(self, namespace: str, name: str) -> float | None:
        ctx = self.ctx
        body = self.sets.get((namespace, name))
        if ctx is None or body is None:
            return None
        meta = body.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            return None  # the garbage collector deletes its DatabaseMigrations (never their databases)
        await self._list_members(ctx, namespace)
        generation = int(meta.get("generation") or 0)
        stored: JsonObject = dict(body.get("status") or {})
        previous = parse_set_status(stored)
        try:
            spec = parse_set_spec(body.get("spec") or {})
        except SpecError as err:
            log.warning("DatabaseMigrationSet %s/%s: %s", namespace, name, err)
            return None  # the API server validated it against the CRD: only an older object gets here
        template = template_json(spec)
        thash = strategy.template_hash(template)

        targets = [strategy.Target(r.name, r.key) for r in spec.targets.secrets]
        wants_labels = spec.targets.selector is not None or spec.strategy.canary.selector is not None
        if wants_labels:
            selector = None
            if spec.targets.selector is not None and spec.strategy.canary.selector is None:
                selector = ",".join(f"{k}={v}" for k, v in sorted(spec.targets.selector.match_labels.items()))
            labels = await self._secret_labels(ctx, namespace, selector)
            targets = [strategy.Target(t.secret, t.key, labels.get(t.secret, {})) for t in targets]
            if spec.targets.selector is not None:
                wanted = spec.targets.selector.match_labels
                listed = {t.secret for t in targets}
                targets += [strategy.Target(s, spec.targets.key, lab) for s, lab in sorted(labels.items())
                            if s not in listed and all(lab.get(k) == v for k, v in wanted.items())]

        self._keep_approvals((namespace, name), frozenset(t.secret for t in targets))
        owned: dict[str, Seen] = {}
        for member_name in sorted(self.members.get((namespace, name), ())):
            obj = ctx.runtime.migrations.get((namespace, member_name))
            if obj is not None and not (seen := self._observe((namespace, member_name), obj)).deleting:
                owned[member_name] = seen
        members = [self._member(namespace, member_name, seen) for member_name, seen in owned.items()]
        members += [strategy.Member(name=n, target=t, template_hash=h, state="migrating")
                    for (ns, n), (h, _g, t) in self.given.items()
                    if ns == namespace and n not in owned and n in self.members.get((namespace, name), ())]
        annotations = meta.get("annotations") or {}
        rollout = strategy.decide(strategy.Inputs(
            name=name, generation=generation, spec=spec, template_hash=thash, targets=targets, members=members,
            previous=previous, retry_token=annotations.get(c.RETRY_ANNOTATION), now=datetime.now(UTC)))

        owner = {"apiVersion": c.API_VERSION, "kind": c.SET_KIND, "name": name, "uid": str(meta.get("uid")),
                 "controller": True, "blockOwnerDeletion": True}
        for m in rollout.delete:
            log.info("DatabaseMigrationSet %s/%s: target %s is gone: deleting DatabaseMigration %s (its database "
                     "and backups stay)", namespace, name, m.target, m.name)
            await ctx.kube.delete_migration(namespace, m.name)
        by_target = {m.target: m for m in members}
        for m in rollout.retry:
            target = next((t for t in targets if t.secret == m.target), None)
            if target is not None:
                await self._give(ctx, namespace, m.name, template, thash, target,
                                 annotations.get(c.RETRY_ANNOTATION))
        starting = asyncio.Semaphore(STARTS_AT_ONCE)

        async def start(target: strategy.Target) -> None:
            async with starting:
                existing = by_target.get(target.secret)
                if existing is not None:
                    await self._give(ctx, namespace, existing.name, template, thash, target, None)
                    return
                member_name = strategy.migration_name(name, target.secret)
                manifest: JsonObject = {
                    "apiVersion": c.API_VERSION, "kind": c.KIND,
                    "metadata": {"name": member_name, "namespace": namespace,
                                 "labels": {c.SET_LABEL: name, c.MANAGED_BY_LABEL: c.MANAGED_BY},
                                 "annotations": {c.SET_TEMPLATE_ANNOTATION: thash, c.TARGET_ANNOTATION: target.secret},
                                 "ownerReferences": [cast(JsonValue, owner)],
                                 # Kopf's finalizer from the start: else Kopf patches each new member to add it, and
                                 # a wave of hundreds is hundreds of PATCHes on as many connections at once
                                 "finalizers": [c.FINALIZER]},
                    "spec": strategy.member_spec(template, target, None)}
                self.members.setdefault((namespace, name), set()).add(member_name)
                try:
                    created = await ctx.kube.create_migration(manifest)
                except Conflict:  # exists, not yet seen by the watch: the next pass gives it the template
                    return
                self.given[(namespace, member_name)] = (
                    thash, int((created.get("metadata") or {}).get("generation") or 1), target.secret)

        # A wave's start is up to maxInFlight creations: together, not one round trip after another.
        outcomes = await asyncio.gather(*(start(t) for t in rollout.start), return_exceptions=True)
        if failure := next((o for o in outcomes if isinstance(o, BaseException)), None):
            raise failure  # the others started; the next pass (in 5s) starts what this one could not

        kept = ctx.runtime.set_approvals.get((namespace, name))
        rollout.status.plans = approval.shown(rollout.status.plans, kept.approvals if kept is not None else {})
        # status.notifications is the notifier's: left out here, so this patch never removes it (nor sends it again)
        patch = merge_patch({k: v for k, v in stored.items() if k != "notifications"}, dump(rollout.status))
        written: JsonObject = {}
        if patch:
            written = await ctx.kube.patch_set_status(namespace, name, patch)
            if written and _version(written) > _version(body):
                self.sets[(namespace, name)] = cast(SetObject, written)
        if ctx.runtime.notifier is not None:  # a plan its members wait for is announced once, for the set
            ctx.runtime.notifier.offer_set(written or body)
        if rollout.events:
            posted = kopf.Body({"apiVersion": c.API_VERSION, "kind": c.SET_KIND,
                                "metadata": {"namespace": namespace, "name": name, "uid": meta.get("uid", "")}})
            for event in rollout.events:
                events.post(posted, event.type, event.reason, event.message)
        return self.rescan * random.uniform(0.9, 1.1) if wants_labels else None

    def _keep_approvals(self, ref: Ref, targets: frozenset[str] | None) -> None:
        """What the set's members count of its approvals (fleet.approval); a change wakes them (one may wait)."""
        body = self.sets.get(ref)
        if self.ctx is None or body is None:
            return
        try:
            spec = parse_set_spec(body.get("spec") or {})
        except SpecError:
            return
        before = self.ctx.runtime.set_approvals.get(ref)
        kept = approval.of_set(body.get("metadata") or {}, spec, self.governed,
                               targets if targets is not None else before.targets if before is not None else None)
        self.ctx.runtime.set_approvals[ref] = kept
        if before is None or before != kept:
            for member in sorted(self.members.get(ref, ())) if kept.approvals else ():
                obj = self.ctx.runtime.migrations.get((ref[0], member)) or {}
                if (obj.get("status") or {}).get("phase") == "AwaitingApproval":
                    self.ctx.runtime.wake(ref[0], member)

    async def _secret_labels(self, ctx: Context, namespace: str, selector: str | None) -> dict[str, dict[str, str]]:
        key = (namespace, selector)
        kept = self.listed.get(key)
        if kept is not None and time.monotonic() - kept[0] < self.rescan / 2:
            return kept[1]
        labels = await ctx.kube.secret_labels(namespace, selector)
        self.listed[key] = (time.monotonic(), labels)
        return labels

    async def _give(self, ctx: Context, namespace: str, member: str, template: JsonObject, thash: str,
                    target: strategy.Target, attempt: str | None) -> None:
        """Give an existing DatabaseMigration the template (a new rollout), or run it again (a retry)."""
        obj = ctx.runtime.migrations.get((namespace, member)) or {}
        pods = ((obj.get("spec") or {}).get("jobTemplate") or {})
        kept = ((pods.get("podAnnotations") if isinstance(pods, dict) else None) or {})
        previous = kept.get(c.SET_ATTEMPT_ANNOTATION) if isinstance(kept, dict) else None
        spec = strategy.member_spec(template, target, attempt or (str(previous) if previous else None))
        try:
            updated = await ctx.kube.replace_migration_spec(
                namespace, member, spec, {c.SET_TEMPLATE_ANNOTATION: thash, c.TARGET_ANNOTATION: target.secret})
        except NotFound:
            return
        self.given[(namespace, member)] = (
            thash, int((updated.get("metadata") or {}).get("generation") or 0), target.secret)

    def _member(self, namespace: str, name: str, seen: Seen) -> strategy.Member:
        """A member as observed; one just given the template counts as under way until the watch shows it."""
        member = seen.member
        given = self.given.get((namespace, name))
        if given is None:
            return member
        if seen.generation >= given[1]:
            del self.given[(namespace, name)]
            return member
        return strategy.Member(name=member.name, target=member.target, template_hash=given[0], state="migrating")


def _version(body: Mapping[str, Any]) -> int:
    rv = str((body.get("metadata") or {}).get("resourceVersion") or "")
    return int(rv) if rv.isdigit() else 0


def _what_matters(body: Mapping[str, Any]) -> tuple[object, ...]:
    """What a pass reads of the set besides its status: a change of any wakes it."""
    meta = body.get("metadata") or {}
    return (meta.get("generation"), meta.get("annotations"), meta.get("deletionTimestamp"), body.get("spec"))
