"""Act on a decision: create its Jobs (within the operator-wide cap, under the database's lock for a writer), keep
its plans' SQL and its run records, write the status with a merge patch, post its Events. When acting cannot follow
the decision (the cap is reached, the API server refuses a Job), it decides again with that observed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time

import kopf
from sqlalchemy.engine import URL

from . import audit, backupstores, configmaps, events, jobparts, kube, metrics, plansql, reasons, scratchdb
from . import constants as c
from .api import DatabaseMigrationStatus, JsonObject, RunStatus
from .constants import Role
from .dbstate import DatabaseError, DatabaseTarget, decode_secret_value, sanitize
from .indexes import GENERATIONS_KEPT, Context, Logger
from .jobs import ROLES, Owner, build_job, dry_run_jobs, job_name, source_field
from .objects import Migration
from .observation import JobObservation, JobRefusal, Observation
from .reconcile import Decision, Event, JobRequest, PlanSQLKept, decide
from .runner.lock import database_lock_key
from .status import condition_is, get_condition, merge_patch


def decide_for(obs: Observation, deleting: bool) -> Decision:
    decision = decide(obs)
    if deleting:  # finish what was started (a rollback included), start nothing new
        decision.jobs = [j for j in decision.jobs if ROLES[j.role].during_deletion]
    return decision


async def decide_and_start(ctx: Context, obj: Migration, obs: Observation, deleting: bool, logger: Logger,
                           target: DatabaseTarget | None) -> tuple[Decision, RunStatus]:
    """Decide, and start the decision's Jobs; the decision as acted on, and its run with the Jobs it created."""
    ref = (obs.namespace, obs.name)
    decision = decide_for(obs, deleting)
    if any(ROLES[j.role].writes for j in decision.jobs) and target:
        # Starting a writer: decide again under the database's lock, so that two resources never both start
        # one (a reconcile that writes nothing never waits here).
        async with ctx.runtime.db_locks.setdefault(target.key, asyncio.Lock()):
            obs = dataclasses.replace(obs, busy_with=ctx.runtime.busy_with(target.key, ref))
            decision, created = await start_jobs(ctx, obj, obs, deleting, logger, target)
            run = finish_run(decision, created, target)
            ctx.runtime.note(ref, run)  # before the lock is let go: the next writer sees this one
    else:
        decision, created = await start_jobs(ctx, obj, obs, deleting, logger, target, decision)
        run = finish_run(decision, created, target)
    return decision, run


async def write(ctx: Context, obj: Migration, stored: JsonObject, decision: Decision,
                logger: Logger) -> bool:
    """Keep the decision's plan SQL and run records, then write its status (a merge patch against `stored`, the
    status as read), then post its Events. False: the resource is gone."""
    meta = obj["metadata"]
    if decision.scratch_drops:  # before the status that forgets their names: a failed drop keeps the name
        await drop_scratch(ctx, str(meta["namespace"]), decision, logger)
    if decision.config_maps:  # before the status that names them
        await keep_plan_sql(ctx, obj, decision.config_maps)
    if decision.records:  # before the status that ends the run: a crash in between loses no record
        await audit.write(ctx.kube, obj, [record.model_copy(update={"message": decision.state.message})
                                          for record in decision.records], ctx.config.run_records)
    if patch := merge_patch(*(_reconcilers(x) for x in (stored, decision.status))):
        try:
            ctx.runtime.remember(await ctx.kube.patch_status(meta["namespace"], meta["name"], patch))
        except kube.NotFound:
            return False
    for kind, reason, message in decision.events:
        events.post(kopf.Body(obj), kind, reason, message)  # type: ignore[arg-type]
        (logger.warning if kind == "Warning" else logger.info)("%s: %s", reason, message)
    return True


async def drop_scratch(ctx: Context, namespace: str, decision: Decision, logger: Logger) -> None:
    """Drop the rehearsals' scratch databases the decision names (and any other of the resource's prefix); one that
    cannot be dropped goes back into status.rehearsal.scratchDatabase, to be tried again on the next pass."""
    for drop in decision.scratch_drops:
        name, key = drop.secret
        try:
            data = await ctx.kube.read_secret_data(namespace, name)
            if data is None:
                raise DatabaseError(reasons.SECRET_NOT_FOUND, f"Secret {namespace}/{name} does not exist")
            url = scratchdb.server_url(decode_secret_value(data, f"{namespace}/{name}", key))
            dropped = await asyncio.to_thread(_drop_scratch, url, drop.names, drop.prefix)
            logger.info("dropped the scratch database(s) %s", ", ".join(dropped) or "(none left)")
        except Exception as err:  # the database's or the Secret's: said without the URL
            message = sanitize(f"cannot drop the rehearsal's scratch database {', '.join(drop.names)} (Secret "
                               f"{namespace}/{name}): {type(err).__name__}: {err}; trying again")
            logger.warning("%s", message)
            decision.events.append(Event("Warning", reasons.SCRATCH_DATABASE_LEFT, message))
            if decision.state.rehearsal is not None:
                decision.state.rehearsal.scratch_database = drop.names[0]
            decision.requeue_after = min(decision.requeue_after or POLL_RETRY_DROP, POLL_RETRY_DROP)


POLL_RETRY_DROP = 30.0


def _drop_scratch(url: URL, names: tuple[str, ...], prefix: str) -> list[str]:
    """Blocking: drop `names`, then whatever else of `prefix` is on the server; what was there to drop."""
    found = scratchdb.listed(url, prefix)
    for name in sorted({*names, *found}):
        scratchdb.drop(url, name)
    return found
def _reconcilers(status: JsonObject) -> JsonObject:
    """The status without the fields other writers own (status.notifications: the notifier's)."""
    return {k: v for k, v in status.items() if k != "notifications"}


def count(ctx: Context, namespace: str, name: str, before: DatabaseMigrationStatus, decision: Decision,
           jobs: dict[str, JobObservation]) -> None:
    """Metrics of what this pass observed: finished Jobs (once each) and a rollback that just completed."""
    for role, job in jobs.items():
        if job.state in ("succeeded", "failed") and job.name not in ctx.runtime.jobs_counted:
            ctx.runtime.jobs_counted.add(job.name)
            metrics.job_finished(namespace, name, role, job.seconds or 0.0, job.state == "succeeded")
            result = job.result or {}
            if role in ("migrate", "downgrade") and reasons.parse(result.get("reason")) == reasons.LOCK_TIMEOUT:
                metrics.lock_timeout(namespace, name)
            if role == "migrate" and job.state == "succeeded":
                metrics.last_run_duration(namespace, name, str(result.get("to") or result.get("revision") or ""),
                                          job.seconds or 0.0)
    done = decision.state.rehearsal
    if done is not None and done.result == "Passed" and done != before.rehearsal:
        metrics.rehearsed(namespace, name, done.seconds, done.migration_seconds)
    rolled = get_condition(decision.state, c.ROLLED_BACK)
    if rolled is not None and rolled.status == "True" and not condition_is(before, c.ROLLED_BACK, "True"):
        mode = next((m for reason, m in reasons.ROLLBACK_MODES.items() if reason == rolled.reason), rolled.reason)
        metrics.rollback(namespace, name, mode)


async def start_jobs(ctx: Context, obj: Migration, obs: Observation, deleting: bool, logger: Logger,
                      target: DatabaseTarget | None,
                      decision: Decision | None = None) -> tuple[Decision, dict[str, str]]:
    """Decide (unless given) and create the decision's Jobs, within the operator-wide cap on running Jobs: when it
    is reached, decide again with the queue's reason (the resource is woken when a Job ends)."""
    decision = decision or decide_for(obs, deleting)
    if not decision.jobs:
        metrics.queued(obs.namespace, obs.name, False)
        return decision, {}
    ref = (obs.namespace, obs.name)
    async with ctx.runtime.slots:
        cap = ctx.runtime.max_running_jobs
        running = ctx.runtime.running_jobs()
        rollback = any(ROLES[j.role].during_deletion for j in decision.jobs)  # a rollback never waits in the queue
        if cap and running + len(decision.jobs) > cap and not rollback:
            queue = (f"{running} Jobs run now, the most the operator starts at once (--max-running-jobs {cap}); "
                     f"{len(ctx.runtime.queued) + (ref not in ctx.runtime.queued)} run(s) queued")
            decision = decide_for(dataclasses.replace(obs, job_queue=queue), deleting)
            decision.jobs = []  # a drift check, a retry: they too wait for a slot
            ctx.runtime.queued[ref] = None
            metrics.queued(*ref, True)
            ctx.runtime.report_slots()
            return decision, {}
        ctx.runtime.queued.pop(ref, None)
        metrics.queued(*ref, False)
        try:
            created = await _create_jobs(ctx, obj, decision, target)
        except _JobRefused as refused:  # tell the user now, in the status: retrying cannot help
            logger.warning("the API server refused the %s Job: %s", refused.role, refused.message)
            return decide_for(dataclasses.replace(obs, refused=JobRefusal(refused.role, refused.message)), deleting), {}
        for role, name in created.items():  # which Jobs a pass started: the log says, as the Jobs' Events do
            logger.info("started the %s Job %s", role, name)
        known = ctx.runtime.jobs.get(ref, ())
        ctx.runtime.starting.update({n: time.monotonic() for n in created.values() if n not in known})
        ctx.runtime.report_slots()
    return decision, created


def finish_run(decision: Decision, created: dict[str, str], target: DatabaseTarget | None) -> RunStatus:
    run = decision.state.run = decision.state.run or RunStatus()
    run.jobs = {**run.jobs, **created}
    if target:
        run.database_key = target.key
    return run


async def keep_plan_sql(ctx: Context, obj: Migration, kept: list[PlanSQLKept]) -> None:
    """Write the plans' SQL ConfigMaps (owned by the resource), then prune those of older generations, as their
    Jobs are (the newest GENERATIONS_KEPT generations stay)."""
    meta = obj["metadata"]
    for item in kept:
        with contextlib.suppress(kube.Conflict):  # written by an earlier pass
            await ctx.kube.create_config_map(jobparts.manifest(configmaps.plan_sql(obj, item.name, item.generation,
                                                                                   item.data)))
    listed = await ctx.kube.list_config_maps(meta["namespace"], configmaps.selector(meta, plansql.COMPONENT))
    generations = sorted({int((m.get("labels") or {}).get(c.GENERATION_LABEL) or 0) for m in listed})
    for old in listed:
        if int((old.get("labels") or {}).get(c.GENERATION_LABEL) or 0) not in generations[-GENERATIONS_KEPT:]:
            await ctx.kube.delete_config_map(meta["namespace"], str(old["name"]))

class _JobRefused(Exception):
    def __init__(self, role: Role, message: str) -> None:
        super().__init__(message)
        self.role = role
        self.message = message


async def _create_jobs(ctx: Context, obj: Migration, decision: Decision,
               target: DatabaseTarget | None) -> dict[str, str]:
    """Create the decision's Jobs; their names, by role (for status.run.jobs)."""
    meta = obj["metadata"]
    created: dict[str, str] = {}
    for req in decision.jobs:
        owner = Owner(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"], generation=req.generation)
        spec = req.spec
        if req.role == "plan":
            await _dry_run_later_jobs(ctx, owner, req)
        args = dict(req.args)
        if ROLES[req.role].writes:
            args["lockKey"] = str(target.engine.lock_key(target.key) if target else database_lock_key(meta["uid"]))
        store = backupstores.wiring_for(spec.backup, owner.namespace, owner.name)
        manifest = build_job(req.role, owner, spec, operator_image=ctx.config.operator_image, args=args, store=store)
        try:
            await ctx.kube.create_job(jobparts.manifest(manifest))
        except kube.Refused as err:
            raise _JobRefused(req.role, _with_source(err.message, store)) from None
        created[req.role] = job_name(owner.name, req.role, req.generation, args.get("instance"))
    return created


async def _dry_run_later_jobs(ctx: Context, owner: Owner, plan: JobRequest) -> None:
    """Before the first Job of a run: have the API server validate every Job the run may create later (server-side
    dry run), so a spec it refuses stops the run before anything is written, not halfway through it."""
    spec = plan.spec
    store = backupstores.wiring_for(spec.backup, owner.namespace, owner.name)
    for role, job in dry_run_jobs(owner, spec, operator_image=ctx.config.operator_image, store=store):
        try:
            await ctx.kube.create_job(jobparts.manifest(job), dry_run=True)
        except kube.Refused as err:
            raise _JobRefused(role, _with_source(err.message, store)) from None


def _with_source(message: str, store: jobparts.StoreWiring | None) -> str:
    field = source_field(message, store)
    return f"{field}: {message}" if field else message
