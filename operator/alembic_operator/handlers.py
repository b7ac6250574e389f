"""The reconciler's Kopf handlers (registered in :mod:`.app`): observe, call `reconcile.decide`, act. No decisions
are made here.

Work is driven by watches, not by polling. Kopf's watches of DatabaseMigrations and of our Jobs feed in-memory
indexes (:class:`Runtime`: the resources as last seen, our Jobs by owner) and wake the resource concerned; one
:class:`~.schedule.Scheduler` runs the reconciles (a few at once, never two of one resource). A pass reads the
resource and its Jobs from the indexes, the Secret when it needs the database (briefly cached), the pods of its Jobs
while they matter, and writes the status with a merge patch (one writer per field, no conflicts). A resource whose
run is over *settles*: until something it watches changes, it only re-reads its database's revision every
``spec.freshnessCheck.interval`` (:mod:`.freshness`), and costs no API request. Every ten minutes, two names-only
lists find what no watch event reported (:func:`sweep`). Everything a run needs to continue is in the resource's
status and in its Jobs, so a restarted operator resumes every run where it was.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Hashable
from typing import cast

import kopf

from . import act, freshness, metrics, objects
from . import constants as c
from .api import (
    WRITING_STEPS,
    DatabaseMigrationStatus,
    RunStatus,
    SpecError,
    duration_seconds,
    parse_spec,
    parse_status,
)
from .indexes import Context, Logger, Ref, job_state, run_of
from .objects import Migration
from .observation import Observation
from .observe import jobs_of, observe
from .reconcile import Decision
from .schedule import Scheduler
from .status import condition_is, get_condition

WORKERS = 16  # reconciles at once


async def resume(ctx: Context) -> None:
    """At start-up: who is writing to which database, from the statuses (the lock survives a restart)."""
    for body in await ctx.kube.list_migrations(ctx.config.watched):
        obj = objects.migration(body)
        meta = obj["metadata"]
        ctx.runtime.note((meta["namespace"], meta["name"]), run_of(obj))


def start(ctx: Context, settings: kopf.OperatorSettings) -> Scheduler:
    """The scheduler of every reconcile, started once, from within a Kopf handler (the first watch event): its
    workers run in a copy of that context, where Kopf's Event poster is (``kopf.event``, warnings as Events)."""
    if ctx.runtime.scheduler is None:
        async def work(key: Hashable) -> float | None:
            namespace, name = cast(Ref, key)
            return await tick(ctx, namespace, name, _logger(ctx, settings, namespace, name))

        ctx.runtime.scheduler = Scheduler(work, workers=WORKERS)
        ctx.runtime.scheduler.start(contextvars.copy_context())
    return ctx.runtime.scheduler


def _logger(ctx: Context, settings: kopf.OperatorSettings, namespace: str, name: str) -> Logger:
    """Kopf's logger of the resource: its warnings become the resource's Events, as a handler's do."""
    meta = (ctx.runtime.migrations.get((namespace, name)) or {}).get("metadata") or {}
    body = {"apiVersion": c.API_VERSION, "kind": c.KIND,
            "metadata": {"namespace": namespace, "name": name, "uid": meta.get("uid")}}
    return kopf.ObjectLogger(body=kopf.Body(body), settings=settings)  # type: ignore[arg-type]


async def tick(ctx: Context, namespace: str, name: str, logger: Logger) -> float | None:
    """One turn of a resource: its freshness check when it is settled, else a reconcile; the delay to the next."""
    ref = (namespace, name)
    if ref not in ctx.runtime.migrations:
        return None  # deleted, or not seen yet by the watch (its first event wakes it)
    try:
        if (settled := ctx.runtime.settled.get(ref)) is not None:
            delay = await _freshness_check(ctx, ref, settled)
            if delay is not None:
                return delay
            ctx.runtime.settled.pop(ref, None)
        return await reconcile(ctx, namespace, name, logger)
    except Exception as err:  # API hiccups: retry soon, never die
        # Our own errors and the API's carry no database URL (dbstate redacts what comes from the driver).
        logger.warning("reconcile failed, retrying in 5s: %s: %s", type(err).__name__, str(err)[:500])
        logger.debug("reconcile failure", exc_info=True)
        return 5.0


async def _freshness_check(ctx: Context, ref: Ref, settled: freshness.Settled) -> float | None:
    """The database still at the revision the resource settled at: the delay to the next check; else None (a full
    reconcile now). Costs no API request; the revision read is shared with other resources on the database."""
    obj = ctx.runtime.migrations.get(ref)
    target = ctx.runtime.targets.get(ref)
    if obj is None or target is None or str(obj["metadata"].get("resourceVersion")) != settled.resource_version:
        return None
    if settled.due_full is not None and time.monotonic() >= settled.due_full:
        return None  # the drift check is due: the full reconcile reads the revision too
    seen = await ctx.runtime.revisions.revision(target.url.render_as_string(hide_password=False), target)
    if not seen.ok or seen.revision != settled.revision:
        return None
    return _next_check(obj, settled)


def _freshness_interval(obj: Migration) -> float:
    try:
        return float(duration_seconds(parse_spec(obj.get("spec") or {}).freshness_check.interval) or 300)
    except ValueError:
        return 300.0


def _next_check(obj: Migration, settled: freshness.Settled) -> float:
    delay = freshness.jittered(_freshness_interval(obj))
    if settled.due_full is not None:
        delay = min(delay, max(settled.due_full - time.monotonic(), 0.0))
    return delay


async def on_delete(ctx: Context, namespace: str | None, name: str, logger: Logger) -> None:
    """Never kill a running migration: hold the finalizer until the run has nothing writing to the database.

    The database and the backups are never touched by a deletion; a failed migration still gets its rollback.
    """
    assert namespace, "DatabaseMigration is namespaced"
    ref = (namespace, name)
    obj = ctx.runtime.migrations.get(ref)
    if obj is None or run_of(obj).step in WRITING_STEPS:
        await reconcile(ctx, namespace, name, logger, deleting=True)
    obj = ctx.runtime.migrations.get(ref) or obj
    run = run_of(obj)
    active = [j["metadata"]["name"] for j in await jobs_of(ctx, ref) if job_state(j) == "active"]
    if active:
        raise kopf.TemporaryError(f"waiting for Job {', '.join(sorted(active))} to finish before deleting", delay=5)
    ctx.runtime.note(ref, None)
    ctx.runtime.settled.pop(ref, None)
    if ctx.runtime.scheduler is not None:
        ctx.runtime.scheduler.forget(ref)
    metrics.forget(namespace, name)
    logger.info("deleted; the database and the backups were left as they are (run step %s)", run.step)


async def reconcile(ctx: Context, namespace: str, name: str, logger: Logger, deleting: bool = False) -> float | None:
    """Observe, decide, act once; return seconds until the next look (None: the resource is gone)."""
    started = time.monotonic()
    try:
        delay, status = await _reconcile(ctx, namespace, name, logger, deleting)
    except Exception:
        if (namespace, name) in ctx.runtime.migrations:
            metrics.reconcile_finished(namespace, name, time.monotonic() - started, "error")
        raise
    if (namespace, name) not in ctx.runtime.migrations:
        return delay  # deleted while this pass ran: its series are gone, and must stay gone
    if status is not None:
        outcome = ("ready" if condition_is(status, c.READY, "True") else
                   "stalled" if condition_is(status, c.STALLED, "True") else "progressing")
        metrics.reconcile_finished(namespace, name, time.monotonic() - started, outcome)
        metrics.current_revision(namespace, name, status.current_revision)
        metrics.held_pods(namespace, name, int(status.held_pods or 0))
        if (drift := get_condition(status, c.DRIFTED)) is not None and drift.status in ("True", "False"):
            metrics.drifted(namespace, name, drift.status == "True")
        if status.backup is not None and status.backup.size_bytes is not None:
            metrics.backup_size(namespace, name, status.backup.size_bytes)
        obj = ctx.runtime.migrations.get((namespace, name))
        metrics.observe_status(namespace, name, status, backup_enabled=_takes_backups(obj))
        if ctx.runtime.notifier is not None and (now := ctx.runtime.migrations.get((namespace, name))) is not None:
            ctx.runtime.notifier.offer(now)  # a task of its own: a webhook never holds up a run
    return delay


def _takes_backups(obj: Migration | None) -> bool:
    """spec.backup.enabled of a valid spec (an invalid one takes none)."""
    try:
        return obj is not None and parse_spec(obj.get("spec") or {}).backup.enabled
    except SpecError:
        return False


async def _reconcile(ctx: Context, namespace: str, name: str, logger: Logger,
                     deleting: bool) -> tuple[float | None, DatabaseMigrationStatus | None]:
    ref = (namespace, name)
    obj = ctx.runtime.migrations.get(ref)
    if obj is None and deleting and (body := await ctx.kube.get_migration(namespace, name)) is not None:
        obj = objects.migration(body)
    if obj is None:
        ctx.runtime.note(ref, None)
        return None, None
    if obj["metadata"].get("deletionTimestamp") and not deleting:
        return None, None  # the delete handler owns it now
    stored = dict(obj.get("status") or {})  # as the API has it: what the merge patch is computed against
    status = parse_status(stored)
    if deleting and (status.run or RunStatus()).step not in WRITING_STEPS:
        return None, None
    obs, target = await observe(ctx, obj, status)
    decision, run = await act.decide_and_start(ctx, obj, obs, deleting, logger, target)
    if not await act.write(ctx, obj, stored, decision, logger):
        return None, None
    checked = get_condition(decision.state, c.DRIFTED)
    if checked is not None and (decision.state.drift, checked) != (status.drift, get_condition(status, c.DRIFTED)):
        logger.info("drift check: %s (%s)", checked.reason, checked.message)  # a check's result, once each
    ctx.runtime.note(ref, run)
    act.count(ctx, namespace, name, status, decision, obs.jobs)
    delay = decision.requeue_after
    was_settled = ctx.runtime.settled.pop(ref, None) is not None
    current = ctx.runtime.migrations.get(ref) or obj
    if changed_meanwhile(obj, current):
        # An edit (a new spec, an approval) landed between this pass's read and its status write: the write's answer
        # carried it into the cache, so its own watch event will look old and wake nothing. Look again now.
        ctx.runtime.wake(namespace, name)
    elif _settles(run, obs, decision, ctx.runtime.has_active_jobs(ref)) and target is not None:
        drift_on = bool(_drift_interval(obs))
        settled = freshness.Settled(
            resource_version=str(current["metadata"].get("resourceVersion")), revision=obs.database.revision,
            due_full=time.monotonic() + (delay or 0.0) if drift_on and delay is not None else None)
        ctx.runtime.settled[ref] = settled
        ctx.runtime.targets[ref] = target
        delay = _next_check(current, settled)
        if not was_settled:  # a run's objects are garbage now: after a burst of them, give the heap back
            ctx.runtime.trim_soon()
    else:
        ctx.runtime.targets.pop(ref, None)
    return delay, decision.state


def changed_meanwhile(read: Migration, current: Migration) -> bool:
    """Whether someone else changed the resource since `read` (its spec's generation, its annotations, its
    deletion), as `current` (the cache after our own status write) shows it."""
    before, after = read.get("metadata") or {}, current.get("metadata") or {}
    return any(before.get(key) != after.get(key) for key in ("generation", "annotations", "deletionTimestamp"))


def _settles(run: RunStatus, obs: Observation, decision: Decision, jobs_running: bool) -> bool:
    """A run that is over, on a database that answered, with no Job to start or running: nothing to do until
    something changes (the watches) or the freshness check sees the database moved."""
    return (run.step == "Done" and run.generation == obs.generation and obs.database.ok and not decision.jobs
            and not jobs_running)


def _drift_interval(obs: Observation) -> int | None:
    if isinstance(obs.parsed, SpecError):
        return None
    try:
        return duration_seconds(obs.parsed.drift_check.interval)
    except ValueError:
        return None
