"""The notifier: records the notifications a resource's status makes due, and delivers them to their webhooks.

Exactly once per notification and webhook, across restarts and leader changes: intent and delivery live in the
resource's status (``status.notifications``, written only here, with merge patches the reconciler never touches).
Before sending, the resource is read afresh from the API server, so a new leader sees what the old one delivered.
One task per resource sends one request at a time; a webhook that is down is retried with backoff (due.backoff) by
that task, never by the reconcile: a migration never waits for a notification. A replica that Kopf's peering paused
sends nothing (the new leader does), and stopping lets the attempt in flight end and record its delivery first. What
remains is a process killed between a webhook's 2xx and the status write: the next leader sends that one again, the
same bytes with the same id (CloudEvents ``id`` and header ``Idempotency-Key``: payload.idempotency_key), so a receiver
that keeps ids drops it.

A DatabaseMigrationSet is served the same way, from its own status: one notification per plan hash its members wait
for (due.set_due), sent to the webhooks its members would use (the operator's, and spec.template.notifications:
theirs), while those members announce no plan of their own (fleet.approval.announced_by_set).

Secrets: the webhook's URL and token are read from their Secret for each attempt and go nowhere else; errors are
recorded and logged as an HTTP status or an exception's class, never its text (aiohttp's name the URL).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, cast

import aiohttp
from pydantic import JsonValue, ValidationError

from .. import constants as c
from .. import metrics, reasons
from ..api import (
    NOTIFICATION_TYPES,
    NotificationFormat,
    NotificationRecord,
    NotificationsSpec,
    NotificationType,
    parse_status,
)
from ..fleet.api import parse_set_status
from ..fleet.approval import announced_by_set
from ..kube import Client, KubeError
from ..objects import Migration
from . import due, payload

Poster = Callable[[Migration, Literal["Normal", "Warning"], reasons.Reason, str], None]
"""Posts an Event on the resource (the app passes events.post through Kopf's context; tests collect them)."""

log = logging.getLogger("alembic_operator.notify")

TIMEOUT = 10.0  # seconds for one request, connection included
OPERATOR = "operator"  # the chart's webhook
RESOURCE = "resource"  # spec.notifications (a set's: spec.template.notifications, its members' own)
Key = tuple[str, str, str]  # kind, namespace, name


@dataclass(frozen=True)
class Webhook:
    """Where a webhook's URL (and token) is: keys of Secrets; `namespace` None is the resource's own."""

    secret: str
    url_key: str
    format: NotificationFormat
    events: tuple[NotificationType, ...] = NOTIFICATION_TYPES
    namespace: str | None = None
    token_secret: str | None = None
    token_key: str | None = None


class DeliveryError(Exception):
    """Why an attempt failed, in words that name no secret."""


def resource_webhook(body: Migration) -> Webhook | None:
    """spec.notifications' webhook (None: unset or invalid). Read alone: a problem elsewhere in the spec (the
    reconciler reports it) must not silence the notification that the run failed."""
    return _own_webhook((body.get("spec") or {}).get("notifications"))


def set_webhook(body: Mapping[str, Any]) -> Webhook | None:
    """A set's own webhook: its template's spec.notifications, the one its members would be told through."""
    template = (body.get("spec") or {}).get("template")
    return _own_webhook(template.get("notifications") if isinstance(template, Mapping) else None)


def _own_webhook(raw: object) -> Webhook | None:
    try:
        spec = NotificationsSpec.model_validate(raw or {})
    except ValidationError:
        return None
    if spec.url_secret_ref is None:
        return None
    token = spec.token_secret_ref
    return Webhook(secret=spec.url_secret_ref.name, url_key=spec.url_secret_ref.key, format=spec.format,
                   events=tuple(spec.events or NOTIFICATION_TYPES), token_secret=token.name if token else None,
                   token_key=token.key if token else None)


class Notifier:
    """Delivers the notifications of every resource this process reconciles (the leader's: a standby reconciles
    nothing, so it sends nothing)."""

    def __init__(self, kube: Client, operator_webhook: Webhook | None = None, timeout: float = TIMEOUT,
                 resources: bool = True, post: Poster | None = None,
                 leading: Callable[[], bool] = metrics.leading) -> None:
        self.kube = kube
        self.operator_webhook = operator_webhook
        self.timeout = timeout
        self.resources = resources  # False (--no-resource-notifications): spec.notifications is ignored
        self.post = post
        self.leading = leading  # False: Kopf's peering paused this replica; another one sends
        self._stopping = False
        self._tasks: dict[Key, asyncio.Task[None]] = {}
        self._woken: dict[Key, asyncio.Event] = {}  # set: look again at once
        self._stale: dict[Key, frozenset[str]] = {}  # a set's plans found waiting for over a day: not read again
        self._session: aiohttp.ClientSession | None = None

    def webhooks(self, body: Migration) -> dict[str, Webhook]:
        return self._webhooks(resource_webhook(body))

    def set_webhooks(self, body: Mapping[str, Any]) -> dict[str, Webhook]:
        """A set's: the operator's and its template's (spec.template.notifications): where its members' plans
        waiting for approval would have been announced, one by one."""
        return self._webhooks(set_webhook(body))

    def _webhooks(self, own: Webhook | None) -> dict[str, Webhook]:
        out = {OPERATOR: self.operator_webhook} if self.operator_webhook is not None else {}
        if self.resources and own is not None:
            out[RESOURCE] = own
        return out

    def targets(self, body: Migration) -> list[due.Target]:
        return _targets(self.webhooks(body))

    def offer(self, body: Migration) -> None:
        """After a reconcile pass: start the resource's delivery task when its status (as cached) makes something
        due or has a delivery pending. Costs no request otherwise."""
        meta = body.get("metadata") or {}
        ref = (str(meta.get("namespace")), str(meta.get("name")))
        status = parse_status(body.get("status") or {})
        if (due.due(due.Ref(*ref), status, self.targets(body), datetime.now(UTC),
                    by_set=announced_by_set(body) is not None) or due.next_attempt(status) is not None):
            self._start((c.KIND, *ref))

    def offer_set(self, body: Mapping[str, Any]) -> None:
        """After a set's pass: start its delivery task when status.plans lists a plan not announced yet (it may
        still be settling: the task waits for it) or a delivery is pending. Costs no request otherwise."""
        meta = body.get("metadata") or {}
        key = (c.SET_KIND, str(meta.get("namespace")), str(meta.get("name")))
        status = parse_set_status(body.get("status") or {})
        targets = _targets(self.set_webhooks(body))
        if (due.set_plans_unannounced(status, targets, self._stale.get(key, frozenset()))
                or due.set_ended(due.Ref(key[1], key[2], kind=c.SET_KIND), status, targets, datetime.now(UTC))
                or due.next_attempt(status) is not None):
            self._start(key)

    def _start(self, key: Key) -> None:
        if self._stopping:
            return
        if (task := self._tasks.get(key)) is not None and not task.done():
            self._woken[key].set()
            return
        self._woken[key] = asyncio.Event()
        self._tasks[key] = asyncio.create_task(self._deliver(key), name=f"notify {key[0]} {key[1]}/{key[2]}")

    async def stop(self) -> None:
        """Let each task end its attempt in flight (its POST, then the status write that records it: cancelled in
        between, the next leader would send it again), bounded by the request's timeout; then cancel what is left."""
        self._stopping = True
        for woken in self._woken.values():
            woken.set()
        if tasks := [t for t in self._tasks.values() if not t.done()]:
            _done, late = await asyncio.wait(tasks, timeout=self.timeout + 5.0)
            for task in late:
                task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _deliver(self, key: Key) -> None:
        """Until nothing is pending: record what is due, send what is due now, sleep until the next retry."""
        woken = self._woken[key]
        kind, namespace, name = key
        rounds = self._round if kind == c.KIND else self._round_set
        while not self._stopping:
            woken.clear()
            try:
                wait = await rounds((namespace, name))
            except KubeError as err:  # the API server: try again soon
                log.warning("notifications of %s %s/%s: %s; again in 5s", kind, namespace, name, type(err).__name__)
                wait = 5.0
            if wait is None and not woken.is_set():
                return
            if wait is not None:
                with contextlib.suppress(TimeoutError):  # not wait_for: it may drop a cancellation (3.11)
                    async with asyncio.timeout(max(wait, 0.0)):
                        await woken.wait()

    async def _round(self, ref: tuple[str, str]) -> float | None:
        if not self.leading():  # paused: the leader's reconciles offer the resource there
            return None
        body = await self.kube.get_migration(*ref)  # afresh: what another process delivered is seen
        if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
            return None
        status = parse_status(body.get("status") or {})
        hooks = self.webhooks(body)
        new = due.due(due.Ref(*ref), status, _targets(hooks), datetime.now(UTC),
                      by_set=announced_by_set(body) is not None)

        async def patch(notifications: dict[str, JsonValue]) -> due.Notified:
            return parse_status((await self.kube.patch_status(*ref, {"notifications": notifications})).get("status")
                                or {})

        return await self._send(due.Ref(*ref), body, hooks, status, dict(new), patch, None)

    async def _round_set(self, ref: tuple[str, str]) -> float | None:
        """A set's round: its plans waiting for approval, each announced once (due.set_due) with one member's plan
        (read afresh: its findings), then delivered as a DatabaseMigration's notifications are."""
        if not self.leading():
            return None
        body: Mapping[str, Any] | None = await self.kube.get_set(*ref)
        if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
            return None
        status = parse_set_status(body.get("status") or {})
        hooks = self.set_webhooks(body)
        key = (c.SET_KIND, *ref)
        waiting: dict[str, due.Waiting] = {}
        for group in due.set_plans_unannounced(status, _targets(hooks), self._stale.get(key, frozenset())):
            for name in group.migrations:  # the first one still waiting for this plan
                member = await self.kube.get_migration(ref[0], name)
                seen = parse_status((member or {}).get("status") or {})
                if seen.phase == "AwaitingApproval" and seen.plan is not None and seen.plan.hash == group.hash:
                    waiting[group.hash] = due.Waiting(name, seen)
                    break
        found = due.set_due(due.Ref(*ref, kind=c.SET_KIND), status, waiting, _targets(hooks), datetime.now(UTC))
        if found.stale:
            self._stale[key] = self._stale.get(key, frozenset()) | found.stale

        async def patch(notifications: dict[str, JsonValue]) -> due.Notified:
            return parse_set_status((await self.kube.patch_set_status(*ref, {"notifications": notifications}))
                                    .get("status") or {})

        return await self._send(due.Ref(*ref, kind=c.SET_KIND), body, hooks, status, dict(found.records), patch,
                                found.settling)

    async def _send(self, ref: due.Ref, body: Mapping[str, Any], hooks: dict[str, Webhook], status: due.Notified,
                    new: dict[str, NotificationRecord],
                    patch: Callable[[dict[str, JsonValue]], Awaitable[due.Notified]],
                    settling: datetime | None) -> float | None:
        """Record what is due, send each delivery due now, record each outcome; seconds until the next look."""
        uid = str((body.get("metadata") or {}).get("uid") or "")
        names = (ref.namespace, ref.name)
        if new:
            status = await patch({k: v.model_dump(mode="json", by_alias=True, exclude_none=True)
                                  for k, v in new.items()})
            for ident, record in new.items():
                log.info("notification %s of %s %s/%s due (%s) for the %s webhook(s)", ident, ref.kind, *names,
                         record.type, ", ".join(sorted(record.deliveries)))
        for attempt in due.attempts_due(status, datetime.now(UTC)):
            if self._stopping or not self.leading():
                break
            record = attempt.record
            delivery = record.deliveries[attempt.target]
            error: str | None = None
            hook = hooks.get(attempt.target)
            try:
                if hook is None:
                    raise DeliveryError(f"the {attempt.target} webhook is no longer configured")
                await self._post(ref, uid, hook, attempt.ident, record)
            except DeliveryError as err:
                error = str(err)
            after = due.after_attempt(record, delivery, error, datetime.now(UTC))
            status = await patch({attempt.ident: {"deliveries": {
                attempt.target: after.model_dump(mode="json", by_alias=True)}}})
            result = "delivered" if error is None else "expired" if after.state == "Expired" else "failed"
            metrics.notification(*names, attempt.target, record.type, result)
            if error is None:
                log.info("notification %s of %s %s/%s delivered to the %s webhook", attempt.ident, ref.kind, *names,
                         attempt.target)
                continue
            retry = (f"again in {due.backoff(after.attempts):.0f}s" if after.state == "Pending" else
                     "given up (older than a day)")
            log.warning("notification %s of %s %s/%s not delivered to the %s webhook (attempt %d): %s; %s",
                        attempt.ident, ref.kind, *names, attempt.target, after.attempts, error, retry)
            if self.post is not None and (after.attempts == 1 or after.state == "Expired"):
                reason = reasons.NOTIFICATION_EXPIRED if after.state == "Expired" else reasons.NOTIFICATION_FAILED
                self.post(cast(Migration, body), "Warning", reason,  # the Event names the object: any kind
                          f"the {attempt.target} webhook did not take notification {attempt.ident} ({record.type}): "
                          f"{error}; {retry}")
        if drop := due.pruned(status):
            status = await patch(dict.fromkeys(drop))
        metrics.notifications_retrying(*names, due.retrying(status))
        times = [t for t in (due.next_attempt(status), settling) if t is not None]
        return (min(times) - datetime.now(UTC)).total_seconds() if times else None

    async def _secret_value(self, namespace: str, name: str, key: str) -> str:
        data = await self.kube.read_secret_data(namespace, name)
        if data is None:
            raise DeliveryError(f"Secret {namespace}/{name} not found")
        if key not in data:
            raise DeliveryError(f"Secret {namespace}/{name} has no key {key!r}")
        try:
            return base64.b64decode(data[key]).decode().strip()
        except (binascii.Error, UnicodeDecodeError):
            raise DeliveryError(f"Secret {namespace}/{name} key {key!r} is not text") from None

    async def _post(self, ref: due.Ref, uid: str, hook: Webhook, ident: str, record: NotificationRecord) -> None:
        namespace = hook.namespace or ref.namespace
        try:
            url = await self._secret_value(namespace, hook.secret, hook.url_key)
            token = (await self._secret_value(namespace, hook.token_secret, hook.token_key)
                     if hook.token_secret and hook.token_key else None)
        except KubeError as err:
            raise DeliveryError(f"reading Secret {namespace}/{hook.secret}: {type(err).__name__}") from None
        data, content_type = payload.render(hook.format, ref, uid, ident, record)
        headers = {"Content-Type": content_type, "Idempotency-Key": payload.idempotency_key(uid, ident),
                   "User-Agent": "alembic-operator"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        try:
            async with self._session.post(url, data=data, headers=headers, allow_redirects=False) as response:
                if not 200 <= response.status < 300:
                    raise DeliveryError(f"HTTP {response.status}")
        except DeliveryError:
            raise
        except TimeoutError:
            raise DeliveryError(f"no answer within {self.timeout:.0f}s") from None
        except (aiohttp.ClientError, ValueError) as err:  # their text may name the URL: the class only
            raise DeliveryError(type(err).__name__) from None


def _targets(hooks: Mapping[str, Webhook]) -> list[due.Target]:
    return [due.Target(name, hook.events) for name, hook in hooks.items()]
