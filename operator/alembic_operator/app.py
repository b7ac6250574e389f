"""The operator as Kopf runs it: every Kopf registration, and the one start-up, on a registry of its own.

:func:`registry` declares the handlers (they call the plain functions of :mod:`.handlers`, :mod:`.release` and
:mod:`.webhook`); :func:`run` runs Kopf with it. The start-up builds the runtime objects from the
:class:`~.config.OperatorConfig` (one Kubernetes client, the reconciler's state, the gatekeeper, the metrics server,
the webhook server); nothing is configured through module globals.

    reconciler (config.reconciler)   watch Jobs and DatabaseMigrations (the indexes, wake-ups), one scheduler of
                                     every reconcile (handlers.start), the delete handler (finalizer)
    gate                             DatabaseMigration events (release held pods; release.Gatekeeper resyncs those
                                     that hold pods)
    webhook (config.webhook.enabled) the mutating admission handler that holds labelled pods at creation
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import kopf

from . import approvals, events, handlers, indexes, metrics, release, webhook
from . import constants as c
from .config import OperatorConfig
from .events import EventType
from .fleet.handlers import Fleet
from .kube import Client, KubeError
from .notify.send import Notifier
from .objects import Migration
from .reasons import Reason

log = logging.getLogger("alembic_operator")

STARTUP_BACKOFF = 2.0  # seconds between attempts of the start-up


class QuietSuccess(logging.Filter):
    """Drop Kopf's "... succeeded." lines of the handlers that run for every event: the wake-ups, the gate's watch
    and timer, the webhook (one per pod created)."""

    QUIET = ("'job_changed'", "'migration_changed'", "'set_changed'", "'gate-migration'", "'gate-set'",
             f"'{webhook.HANDLER_ID}'", f"'{webhook.APPROVAL_HANDLER_ID}'", f"'{webhook.SET_APPROVAL_HANDLER_ID}'")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.endswith(" succeeded.") and any(q in message for q in self.QUIET))


class Operator:
    """The runtime objects of one operator process, built by the start-up handler."""

    def __init__(self, config: OperatorConfig) -> None:
        self.config = config
        self.keeper = release.Gatekeeper()
        self.fleet = Fleet(governed=config.webhook.enabled)  # DatabaseMigrationSets (with the reconciler)
        self._ctx: indexes.Context | None = None
        self.settings: kopf.OperatorSettings | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.identity: str | None = None  # the operator's own user name (the approvals webhook knows its requests)

    def reconciler(self) -> indexes.Runtime:
        """The reconciler's runtime, its scheduler started (from the first watch event's handler: Kopf's context)."""
        if self.ctx.runtime.scheduler is None and self.settings is not None:
            handlers.start(self.ctx, self.settings)
        if self.fleet.scheduler is None:
            self.fleet.start(self.ctx)
        return self.ctx.runtime

    @property
    def ctx(self) -> indexes.Context:
        if self._ctx is None:
            raise RuntimeError("the operator has not started")
        return self._ctx

    async def start(self, settings: kopf.OperatorSettings) -> None:
        """Idempotent: Kopf calls it again when it failed (the API server not ready yet)."""
        config = self.config
        settings.persistence.finalizer = c.FINALIZER
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=c.GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=c.GROUP)
        settings.posting.level = logging.WARNING  # our Events are explicit; handler logs stay logs
        settings.watching.server_timeout = 300
        settings.networking.request_timeout = 60
        if config.namespaces:
            # Roles only: Kopf must not try to list namespaces and CRDs cluster-wide (403s and a slow start).
            settings.scanning.disabled = True
        if self._ctx is None:
            client = Client()
            self._ctx = indexes.Context(config=config, kube=client,
                                         runtime=indexes.Runtime(max_running_jobs=config.max_running_jobs))
            self._ctx.runtime.notifier = Notifier(client, config.notify, resources=config.notify_resources,
                                                  post=_post_event)
            self.keeper.client = client
            metrics.serve(config.metrics)
        client = self._ctx.kube
        if config.reconciler:
            await handlers.resume(self.ctx)
            if self._sweeper is None:
                self._sweeper = asyncio.create_task(self._sweep_forever())
        self.settings = settings
        settings.admission.managed = None  # ours: see webhook's docstring
        if config.webhook.enabled:
            if self.identity is None:
                try:
                    self.identity = await client.whoami()
                except KubeError as err:  # before Kubernetes 1.28: members of a set cannot loosen spec.approval
                    log.warning("could not learn the operator's own user name (SelfSubjectReview): %s; a set whose "
                                "template loosens spec.approval cannot create its DatabaseMigrations", err)
            settings.admission.server = webhook.GateWebhookServer(config.webhook, client)
        else:
            log.warning("the pod gating webhook is disabled: labelled pods are not held at creation (held pods, "
                        "e.g. with the gate in their template, are still released)")

    async def _sweep_forever(self) -> None:
        """Every indexes.SWEEP_SECONDS: drop what was deleted while a watch was down (indexes.sweep)."""
        while True:
            await asyncio.sleep(indexes.SWEEP_SECONDS)
            try:
                if dropped := await indexes.sweep(self.ctx, lambda obj: self.keeper.migration_seen("DELETED", obj)):
                    log.info("dropped %d object(s) deleted while a watch was down", dropped)
            except KubeError as err:
                log.warning("could not check the indexes against the cluster (again in %.0fs): %s",
                            indexes.SWEEP_SECONDS, err)

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        self.keeper.stop()
        await self.fleet.stop()
        if self._ctx is not None and self._ctx.runtime.scheduler is not None:
            await self._ctx.runtime.scheduler.stop()
        if self._ctx is not None and self._ctx.runtime.notifier is not None:
            await self._ctx.runtime.notifier.stop()
        if self._ctx is not None:
            await self._ctx.kube.close()


def _post_event(obj: Migration, kind: EventType, reason: Reason, message: str) -> None:
    """An Event from the notifier's task (a copy of the reconcile worker's context: Kopf's poster is there)."""
    try:
        events.post(kopf.Body(obj), kind, reason, message)  # type: ignore[arg-type]
    except LookupError:  # outside Kopf's context: the log has it
        log.debug("no Event poster for %s", reason)


def registry(config: OperatorConfig) -> tuple[kopf.OperatorRegistry, Operator]:
    """A Kopf registry with every handler of the operator so configured, and the operator object they share."""
    reg = kopf.OperatorRegistry()
    op = Operator(config)

    @kopf.on.login(id="login", registry=reg)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        """Kopf's own connection: the credentials our client loads too (in-cluster first, then kubeconfig)."""
        return kopf.login_via_client(**kwargs)

    # Retried soon (not after Kopf's default minute) when the API server is not ready yet (429, 5xx, unreachable).
    @kopf.on.startup(id="startup", backoff=STARTUP_BACKOFF, registry=reg)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        await op.start(settings)

    @kopf.on.cleanup(id="cleanup", registry=reg)
    async def cleanup(**_: Any) -> None:
        await op.stop()

    # --- the reconciler -----------------------------------------------------------------------------------------
    if config.reconciler:
        @kopf.on.event("batch", "v1", "jobs", labels={c.MANAGED_BY_LABEL: c.MANAGED_BY}, id="job_changed",
                       registry=reg)
        async def job_changed(event: kopf.RawEvent, **_: Any) -> None:
            runtime = op.reconciler()
            if (ref := runtime.job_seen(event.get("type"), dict(event.get("object") or {}))) is not None:
                runtime.wake(*ref)

        @kopf.on.event(c.GROUP, c.VERSION, c.PLURAL, id="migration_changed", registry=reg)
        async def migration_changed(event: kopf.RawEvent, namespace: str | None, name: str, **_: Any) -> None:
            runtime = op.reconciler()
            if runtime.migration_seen(event.get("type"), dict(event.get("object") or {})) and namespace:
                runtime.wake(namespace, name)
            op.fleet.migration_seen(event.get("type"), dict(event.get("object") or {}))

        @kopf.on.event(c.GROUP, c.VERSION, c.SET_PLURAL, id="set_changed", registry=reg)
        async def set_changed(event: kopf.RawEvent, **_: Any) -> None:
            op.reconciler()
            op.fleet.set_seen(event.get("type"), dict(event.get("object") or {}))

        @kopf.on.delete(c.GROUP, c.VERSION, c.PLURAL, id="on_delete", registry=reg)
        async def on_delete(namespace: str | None, name: str, logger: indexes.Logger, **_: Any) -> None:
            await handlers.on_delete(op.ctx, namespace, name, logger)

    # --- the gate: releasing held pods --------------------------------------------------------------------------
    @kopf.on.event(c.GROUP, c.VERSION, c.PLURAL, id="gate-migration", registry=reg)
    async def gate_migration_changed(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        op.keeper.migration_seen(event.get("type"), dict(body))

    @kopf.on.event(c.GROUP, c.VERSION, c.SET_PLURAL, id="gate-set", registry=reg)
    async def gate_set_changed(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        if event.get("type") != "DELETED":
            op.keeper.set_seen(dict(body))

    # --- the webhook: holding labelled pods at creation ---------------------------------------------------------
    if config.webhook.enabled:
        @kopf.on.mutate("v1", "pods", id=webhook.HANDLER_ID, operations=["CREATE"],
                        labels={c.WAIT_FOR_LABEL: kopf.PRESENT}, side_effects=False, registry=reg)
        async def hold_until_schema_ready(body: kopf.Body, patch: kopf.Patch, warnings: list[str],
                                          logger: indexes.Logger, **_: Any) -> None:
            await webhook.hold_until_schema_ready(op.keeper, config.webhook, body, patch, warnings, logger)

        # --- and governing approvals: who may approve, who changed the spec, who approved ---------------------
        for governed, handler_id in ((approvals.MIGRATION_APPROVALS, webhook.APPROVAL_HANDLER_ID),
                                     (approvals.SET_APPROVALS, webhook.SET_APPROVAL_HANDLER_ID)):
            kopf.on.mutate(c.GROUP, c.VERSION, governed.plural, id=handler_id, operations=["CREATE", "UPDATE"],
                           side_effects=False, registry=reg)(_governing(governed, op, config))

    return reg, op


def _governing(governed: approvals.Governed, op: Operator, config: OperatorConfig) -> Callable[..., Awaitable[None]]:
    """The admission handler of one kind's approvals (webhook.govern_approvals)."""
    async def govern_approvals(body: kopf.Body, userinfo: kopf.UserInfo, patch: kopf.Patch, logger: indexes.Logger,
                               **kwargs: Any) -> None:
        await webhook.govern_approvals(governed, op.ctx.kube, config.webhook, body, kwargs.get("old"), userinfo,
                                       patch, logger, operator=op.identity)

    return govern_approvals


def settings(config: OperatorConfig) -> kopf.OperatorSettings:
    """Kopf's settings that must hold before anything starts (the start-up handler sets the rest): the peering
    lifetime is written with the first keep-alive."""
    settings = kopf.OperatorSettings()
    if config.peering_lifetime is not None:
        settings.peering.lifetime = config.peering_lifetime
    return settings


def run(config: OperatorConfig) -> int:
    """Run the operator until it is stopped."""
    reg, _op = registry(config)
    kopf.configure(verbose=config.verbose)
    # Alembic announces every connection it configures; the operator connects often to read the revision.
    logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)
    logging.getLogger("kopf.objects").addFilter(QuietSuccess())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # one line per admission request otherwise
    metrics.follow_peering(paused_at_start=bool(config.peering) and not config.standalone)
    kopf.run(
        registry=reg,
        settings=settings(config),
        clusterwide=not config.namespaces,
        namespaces=list(config.namespaces),
        liveness_endpoint=config.liveness,
        standalone=config.standalone,
        peering_name=config.peering,
        priority=config.priority,
    )
    return 0
