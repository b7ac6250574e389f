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

import asyncio
import contextlib
import contextvars
import ctypes
import dataclasses
import gc
import logging
import time
from collections.abc import Callable, Hashable
from datetime import UTC, datetime
from typing import Any, Literal, cast

import kopf

from . import audit, backupstores, events, freshness, jobparts, kube, metrics, plansql, reasons
from . import constants as c
from .api import (
    MAX_NAME_LENGTH,
    WRITING_STEPS,
    DatabaseMigrationStatus,
    RunStatus,
    duration_seconds,
    parse_spec,
    parse_status,
)
from .config import OperatorConfig
from .constants import Role
from .dbstate import DatabaseError, DatabaseTarget, decode_secret_value, parse_url, read_revision, sanitize
from .jobs import ROLES, Owner, build_job, dry_run_jobs, job_name, source_field
from .kept import KeptObjects, job_summary, resource_version
from .observation import DatabaseObservation, JobObservation, JobRefusal, Observation
from .podstate import failure_cause, never_ran, pod_progress, pod_waiting
from .reconcile import Decision, JobRequest, PlanSQLKept, decide
from .runner.lock import database_lock_key
from .runner.results import JobResult
from .schedule import Scheduler
from .status import condition_is, get_condition, merge_patch

Logger = logging.Logger | logging.LoggerAdapter[Any]
JobState = Literal["active", "succeeded", "failed"]
Ref = tuple[str, str]  # (namespace, DatabaseMigration name)

DRIFT_JOBS_KEPT = 2
_ANY_JOB = "*"  # sql_kept_for: read no plan's log
GENERATIONS_KEPT = 2  # the Jobs (and their pods' logs) of the newest runs stay for inspection
SECRET_CACHE_SECONDS = 30.0  # a Secret read serves the reconciles of this long (1,000 resources, one Secret)
WORKERS = 16  # reconciles at once
STARTING_SECONDS = 60.0  # a created Job counts against the cap until its watch event, at most this long
# Seconds after the last deletion of a burst: give the freed memory back to the system, once the API connections
# the burst opened have closed too (aiohttp keeps an idle one for 15 s).
TRIM_DELAY = 20.0
SWEEP_SECONDS = 600.0  # how often the indexes are checked against the cluster for what no watch event reported


class Runtime:
    """In-memory state of this operator process, fed by the watches; rebuilt from the cluster at start-up.

    Everything kept per resource is dropped when it is deleted (:meth:`forget`)."""

    def __init__(self, max_running_jobs: int = 0) -> None:
        self.migrations: KeptObjects[Ref] = KeptObjects()  # the watch's copy, or our own write when newer
        self.jobs: dict[Ref, KeptObjects[str]] = {}  # our Jobs by owner, then by name (without their pod template)
        self.active_jobs: set[tuple[str, str]] = set()  # (namespace, name) of our Jobs still running
        self.writers: dict[str, set[Ref]] = {}  # database key -> resources writing to it
        self.db_locks: dict[str, asyncio.Lock] = {}
        self.jobs_counted: set[str] = set()  # finished Jobs already in the metrics
        self.settled: dict[Ref, freshness.Settled] = {}
        self.targets: dict[Ref, DatabaseTarget] = {}  # the database of a settled resource (its freshness check)
        self.secrets: dict[tuple[str, str], tuple[float, dict[str, str]]] = {}  # (ns, name) -> (read at, data)
        self.observed: dict[tuple[str, str], JobObservation] = {}  # finished Jobs: (name, resourceVersion) -> seen
        self.max_running_jobs = max_running_jobs  # 0: no cap
        self.starting: dict[str, float] = {}  # Jobs created, not seen by the watch yet (name -> when)
        self.jobs_listed: set[Ref] = set()  # resources whose Jobs were listed once (then the watch keeps them)
        self.queued: dict[Ref, None] = {}  # resources waiting for a Job slot, in order
        self.slots = asyncio.Lock()
        self.scheduler: Scheduler | None = None
        self.revisions: freshness.RevisionReader[DatabaseObservation] = freshness.RevisionReader(
            lambda target: read_revision(cast(DatabaseTarget, target)))
        self._trim: asyncio.TimerHandle | None = None

    # --- inputs (the watches) -----------------------------------------------------------------------------------
    def migration_seen(self, event_type: str | None, body: dict[str, Any]) -> bool:
        """Keep the watch's copy; True when it is news (not a copy of what we wrote, nor a re-listing)."""
        meta = body.get("metadata") or {}
        ref = (str(meta.get("namespace")), str(meta.get("name")))
        if event_type == "DELETED":
            self.forget(ref)
            return False
        return self.migrations.put_if_newer(ref, body)

    def remember(self, obj: dict[str, Any]) -> None:
        """An object the API server returned to us (our status write): kept when newer than the watch's copy."""
        meta = obj.get("metadata") or {}
        ref = (str(meta.get("namespace")), str(meta.get("name")))
        if ref in self.migrations:
            self.migrations.put_if_newer(ref, obj)

    def job_seen(self, event_type: str | None, body: dict[str, Any]) -> Ref | None:
        """Index a Job of ours by owner; the owner to wake (None: not ours, or nothing new)."""
        meta = body.get("metadata") or {}
        owner = (meta.get("labels") or {}).get(c.OWNER_LABEL)
        namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
        if not owner or not namespace:
            return None
        ref = (namespace, str(owner))
        jobs = self.jobs.setdefault(ref, KeptObjects(job_summary))
        self.starting.pop(name, None)
        was_active = (namespace, name) in self.active_jobs
        if event_type == "DELETED":
            jobs.pop(name)
            self.active_jobs.discard((namespace, name))
            for key in [k for k in self.observed if k[0] == name]:
                del self.observed[key]
            if not jobs:
                del self.jobs[ref]
        elif not jobs.put_if_newer(name, body):
            return None
        elif _job_state(body) == "active":
            self.active_jobs.add((namespace, name))
        else:
            self.active_jobs.discard((namespace, name))
        if was_active and (namespace, name) not in self.active_jobs:
            self.slot_freed()
        return ref

    def has_active_jobs(self, ref: Ref) -> bool:
        return any((ref[0], name) in self.active_jobs for name in self.jobs.get(ref, ()))

    # --- the Job cap --------------------------------------------------------------------------------------------
    def running_jobs(self) -> int:
        active = len(self.active_jobs)
        now = time.monotonic()
        for name in [n for n, t in self.starting.items() if now - t > STARTING_SECONDS]:
            del self.starting[name]  # its event was missed (or it was deleted at once): the watch is the truth
        return active + len(self.starting)

    def slot_freed(self) -> None:
        """A Job ended: wake the resource that has waited longest for a slot."""
        if self.queued and self.scheduler is not None:
            ref = next(iter(self.queued))
            del self.queued[ref]
            self.scheduler.now(ref)

    # --- per-resource state -------------------------------------------------------------------------------------
    def wake(self, namespace: str, name: str) -> None:
        ref = (namespace, name)
        self.settled.pop(ref, None)
        if self.scheduler is not None:
            self.scheduler.now(ref)

    def forget(self, ref: Ref) -> None:
        """The resource is gone: drop everything kept for it."""
        self.migrations.pop(ref)
        metrics.forget(*ref)
        self.settled.pop(ref, None)
        self.targets.pop(ref, None)
        self.queued.pop(ref, None)
        self.note(ref, None)
        if self.scheduler is not None:
            self.scheduler.forget(ref)
        self.jobs_listed.discard(ref)
        for name in self.jobs.pop(ref, ()):
            self.jobs_counted.discard(name)
            self.active_jobs.discard((ref[0], name))
            for key in [k for k in self.observed if k[0] == name]:
                del self.observed[key]
        self._trim_soon()

    def _trim_soon(self) -> None:
        """After a burst of deletions: collect and hand freed heap pages back to the system (glibc keeps them)."""
        if self._trim is not None:
            self._trim.cancel()
        with contextlib.suppress(RuntimeError):  # no loop (unit tests): nothing to trim later
            self._trim = asyncio.get_running_loop().call_later(TRIM_DELAY, _release_memory)

    def note(self, ref: Ref, run: RunStatus | None) -> None:
        """Who writes to which database (the run's database key, while its step may write)."""
        for old in [k for k, holders in self.writers.items() if ref in holders]:
            self.writers[old].discard(ref)
            if not self.writers[old]:
                del self.writers[old]
        key = run.database_key if run else None
        if run and key and run.step in WRITING_STEPS:
            self.writers.setdefault(key, set()).add(ref)

    def absent(self, migrations: list[kube.Present],
               jobs: list[kube.Present]) -> tuple[list[Ref], list[tuple[Ref, str]]]:
        """What the indexes hold that the lists lack, though it is older than them: deleted while a watch was down.
        (Resources, and Jobs as (owner, name).) Something created after a list is never taken for gone."""
        def missing(present: list[kube.Present], namespace: str, name: str, obj: dict[str, Any] | None) -> bool:
            for listed in present:
                if listed.namespace in (None, namespace):
                    return (namespace, name) not in listed.names and resource_version(obj) < listed.version
            return False

        gone = [ref for ref in self.migrations if missing(migrations, *ref, self.migrations.get(ref))]
        gone_jobs = [(ref, name) for ref, kept in self.jobs.items() for name in kept
                     if missing(jobs, ref[0], name, kept.get(name))]
        return gone, gone_jobs

    def busy_with(self, key: str, ref: Ref) -> str | None:
        others = sorted(self.writers.get(key, set()) - {ref})
        return f"DatabaseMigration {others[0][0]}/{others[0][1]}" if others else None


async def sweep(ctx: Context, also_gone: Callable[[dict[str, Any]], None] = lambda _obj: None) -> int:
    """Drop from the indexes what was deleted while a watch was down (an API server restart, a cut connection):
    Kopf lists again when it reconnects, but reports no deletion for what that listing lacks. Left there, a
    resource would keep its freshness checks and a Job its slot of --max-running-jobs for ever. Two metadata-only
    lists per watched namespace; `also_gone` gets each gone resource too (the gatekeeper). How many were dropped."""
    watched = ctx.config.watched
    migrations, jobs = await ctx.kube.present(watched, "migrations"), await ctx.kube.present(watched, "jobs")
    gone, gone_jobs = ctx.runtime.absent(migrations, jobs)
    for namespace, name in gone:
        stub = {"metadata": {"namespace": namespace, "name": name}}
        ctx.runtime.migration_seen("DELETED", stub)
        also_gone(stub)
    for (namespace, owner), name in gone_jobs:
        job: dict[str, Any] = {"metadata": {"namespace": namespace, "name": name, "labels": {c.OWNER_LABEL: owner}}}
        if ctx.runtime.job_seen("DELETED", job) is not None and (namespace, owner) in ctx.runtime.migrations:
            ctx.runtime.wake(namespace, owner)
    return len(gone) + len(gone_jobs)


def _release_memory() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@dataclasses.dataclass(frozen=True)
class Context:
    """What the handlers work with: the configuration, the Kubernetes client, this process's runtime state."""

    config: OperatorConfig
    kube: kube.Client
    runtime: Runtime


async def resume(ctx: Context) -> None:
    """At start-up: who is writing to which database, from the statuses (the lock survives a restart)."""
    for obj in await ctx.kube.list_migrations(ctx.config.watched):
        meta = obj["metadata"]
        ctx.runtime.note((meta["namespace"], meta["name"]), _run_of(obj))


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


def _freshness_interval(obj: dict[str, Any]) -> float:
    try:
        return float(duration_seconds(parse_spec(obj.get("spec") or {}).freshness_check.interval) or 300)
    except ValueError:
        return 300.0


def _next_check(obj: dict[str, Any], settled: freshness.Settled) -> float:
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
    if obj is None or _run_of(obj).step in WRITING_STEPS:
        await reconcile(ctx, namespace, name, logger, deleting=True)
    obj = ctx.runtime.migrations.get(ref) or obj
    run = _run_of(obj)
    active = [j["metadata"]["name"] for j in await _jobs_of(ctx, ref) if _job_state(j) == "active"]
    if active:
        raise kopf.TemporaryError(f"waiting for Job {', '.join(sorted(active))} to finish before deleting", delay=5)
    ctx.runtime.note(ref, None)
    ctx.runtime.settled.pop(ref, None)
    if ctx.runtime.scheduler is not None:
        ctx.runtime.scheduler.forget(ref)
    metrics.forget(namespace, name)
    logger.info("deleted; the database and the backups were left as they are (run step %s)", run.step)


def _run_of(obj: dict[str, Any] | None) -> RunStatus:
    """status.run, read through the model (an absent or empty run: all fields unset)."""
    return RunStatus.model_validate(((obj or {}).get("status") or {}).get("run") or {})


# --- observe ----------------------------------------------------------------------------------------------------


def _job_state(job: dict[str, Any]) -> JobState:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") in ("Complete", "Failed"):
            return "succeeded" if cond["type"] == "Complete" else "failed"
    return "active"


def _generation(job: dict[str, Any]) -> int:
    return int((job["metadata"].get("labels") or {}).get(c.GENERATION_LABEL) or 0)


def _instance(job: dict[str, Any]) -> int:
    return int((job["metadata"].get("labels") or {}).get(c.INSTANCE_LABEL) or -1)


async def _observe_jobs(ctx: Context, namespace: str, name: str, generation: int,
                        target: DatabaseTarget | None, sql_kept_for: str | None = None) -> dict[str, JobObservation]:
    """The Jobs of one generation, by role; for repeating roles (drift checks) the newest, older ones deleted."""
    by_role: dict[str, list[dict[str, Any]]] = {}
    if len(name) > MAX_NAME_LENGTH:
        return {}  # not a valid label value: no Job of ours can carry it (decide() says so)
    listed = await _jobs_of(ctx, (namespace, name))
    generations = sorted({_generation(j) for j in listed})[-GENERATIONS_KEPT:]
    for job in listed:
        if _generation(job) not in generations and _job_state(job) != "active":
            await ctx.kube.delete_job(namespace, job["metadata"]["name"])  # older runs: history keeps the summary
            continue
        labels = job["metadata"].get("labels") or {}
        if (_generation(job) < generation and _job_state(job) == "active" and labels.get(c.ROLE_LABEL) != "drift"
                and never_ran(await ctx.kube.job_pods(namespace, job["metadata"]["name"]))):
            # A replaced run's Job that never got to run (its image could not be pulled, no node fit...): nothing of
            # it may start later, beside the new run.
            await ctx.kube.delete_job(namespace, job["metadata"]["name"])
            continue
        if labels.get(c.ROLE_LABEL) == "drift" or (labels.get(c.GENERATION_LABEL) == str(generation)
                                                   and labels.get(c.ROLE_LABEL) in ROLES):
            by_role.setdefault(labels[c.ROLE_LABEL], []).append(job)
    drift = sorted(by_role.get("drift", []), key=_instance)
    for old in drift[:-DRIFT_JOBS_KEPT]:
        if _job_state(old) != "active":
            await ctx.kube.delete_job(namespace, old["metadata"]["name"])
    return {role: await _observe_job_cached(ctx, namespace, max(jobs, key=_instance), target, sql_kept_for)
            for role, jobs in by_role.items()}


async def _jobs_of(ctx: Context, ref: Ref) -> list[dict[str, Any]]:
    """A resource's Jobs from the index; listed once per resource and process (the Job watch may not have
    delivered them yet right after a start), from the watch afterwards."""
    if ref not in ctx.runtime.jobs_listed:
        for job in await ctx.kube.list_jobs(*ref):
            ctx.runtime.job_seen(None, job)
        ctx.runtime.jobs_listed.add(ref)
    return list(ctx.runtime.jobs[ref].values()) if ref in ctx.runtime.jobs else []


async def _observe_job_cached(ctx: Context, namespace: str, job: dict[str, Any], target: DatabaseTarget | None,
                              sql_kept_for: str | None) -> JobObservation:
    """A finished Job (and its pods) does not change: observed once per version of the Job, unless its plan SQL
    is still to be read."""
    meta = job["metadata"]
    key = (str(meta["name"]), str(meta.get("resourceVersion")))
    if (seen := ctx.runtime.observed.get(key)) is not None:
        return seen
    observed = await _observe_job(ctx, namespace, job, target, sql_kept_for)
    is_plan = (meta.get("labels") or {}).get(c.ROLE_LABEL) == "plan"
    if observed.state != "active" and not (is_plan and sql_kept_for not in (observed.name, _ANY_JOB)):
        ctx.runtime.observed[key] = observed
    return observed


async def _observe_job(ctx: Context, namespace: str, job: dict[str, Any],
                       target: DatabaseTarget | None, sql_kept_for: str | None = None) -> JobObservation:
    name = job["metadata"]["name"]
    state = _job_state(job)
    if state == "active":
        pods = await ctx.kube.job_pods(namespace, name)
        started, blocked = pod_progress(pods)
        return JobObservation(name=name, state="active", started=started, blocked=blocked,
                              waiting="" if started or blocked else pod_waiting(pods),
                              instance=(job["metadata"].get("labels") or {}).get(c.INSTANCE_LABEL))
    results: list[dict[str, Any]] = []
    notes: list[str] = []
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Failed" and cond.get("status") == "True":
            notes.append(f"{cond.get('reason')}: {cond.get('message')}")
    pods = await ctx.kube.job_pods(namespace, name)
    for pod in sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp") or ""):
        st = pod.get("status") or {}
        statuses = list(st.get("initContainerStatuses") or []) + list(st.get("containerStatuses") or [])
        for cs in statuses:
            term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated")
            if not term or (cs.get("name") == "runner" and term.get("exitCode") == 0):
                continue
            result = kube.parse_result(term.get("message"))
            if result is not None:
                result["container"] = cs.get("name")
                results.append(result)
            elif term.get("exitCode"):
                tail = sanitize((term.get("message") or "").strip()[-400:], target.url if target else None)
                notes.append(f"container {cs.get('name')} exited {term.get('exitCode')} ({term.get('reason')})"
                             + (f": {tail}" if tail else ""))
    failed = [r for r in results if not r.get("ok")]
    result = failed[0] if failed else (results[-1] if results else None)
    if result and target:
        result = {k: sanitize(v, target.url) if isinstance(v, str) else v for k, v in result.items()}
    instance = (job["metadata"].get("labels") or {}).get(c.INSTANCE_LABEL)
    cause = failure_cause(job, pods) if state == "failed" else None
    plan_sql = None
    if (state == "succeeded" and (job["metadata"].get("labels") or {}).get(c.ROLE_LABEL) == "plan"
            and sql_kept_for not in (name, _ANY_JOB) and pods):  # once per plan, until status.plan.sql names it
        with contextlib.suppress(kube.KubeError):
            plan_sql = plansql.from_log(await ctx.kube.pod_log(namespace, pods[-1]["metadata"]["name"], "scan"))
    return JobObservation(name=name, state=state, result=cast("JobResult | None", result), message="; ".join(notes),
                          instance=instance, seconds=_duration(job), cause=cause, plan_sql=plan_sql)


def _duration(job: dict[str, Any]) -> float | None:
    st = job.get("status") or {}
    ended = st.get("completionTime") or next(
        (x.get("lastTransitionTime") for x in st.get("conditions") or [] if x.get("type") == "Failed"), None)
    if not st.get("startTime") or not ended:
        return None
    return (_parse_time(ended) - _parse_time(st["startTime"])).total_seconds()


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text)  # the client writes +00:00, the API Z: Python 3.11 reads both


async def _observe_database(ctx: Context, namespace: str,
                            spec: dict[str, Any]) -> tuple[DatabaseObservation, DatabaseTarget | None]:
    try:
        ref = parse_spec(spec).database.url_secret_ref
    except ValueError as err:
        return DatabaseObservation(error_reason=reasons.INVALID_SPEC, error_message=str(err)), None
    secret = (namespace, ref.name)
    try:
        data = await _secret_data(ctx, secret)
        if data is None:
            raise DatabaseError(reasons.SECRET_NOT_FOUND,
                                f"Secret {namespace}/{ref.name} (spec.database.urlSecretRef.name) does not exist: "
                                "create it with the database URL under key " + ref.key)
        target = parse_url(decode_secret_value(data, f"{namespace}/{ref.name}", ref.key), ref.name, ref.key)
    except DatabaseError as err:
        ctx.runtime.secrets.pop(secret, None)  # read it again next time: the user may be fixing it
        return err.observation(), None
    database = await ctx.runtime.revisions.fresh(target.url.render_as_string(hide_password=False), target)
    if not database.ok:
        ctx.runtime.secrets.pop(secret, None)  # new credentials, perhaps
    return database, target


async def _secret_data(ctx: Context, secret: tuple[str, str]) -> dict[str, str] | None:
    """The Secret's data, read at most every SECRET_CACHE_SECONDS (resources sharing it share the read); only a
    reconcile that needs the database reads it. A Secret that does not exist is not remembered: the resource's
    retries (with backoff) notice it once created, without a watch of Secrets."""
    cached = ctx.runtime.secrets.get(secret)
    if cached is not None and time.monotonic() - cached[0] < SECRET_CACHE_SECONDS:
        return cached[1]
    data = await ctx.kube.read_secret_data(*secret)
    if data is None:
        ctx.runtime.secrets.pop(secret, None)
    else:
        ctx.runtime.secrets[secret] = (time.monotonic(), data)
        for key in [k for k, (t, _) in ctx.runtime.secrets.items() if time.monotonic() - t >= SECRET_CACHE_SECONDS]:
            del ctx.runtime.secrets[key]
    return data


# --- reconcile --------------------------------------------------------------------------------------------------


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
    return delay


def _count(ctx: Context, namespace: str, name: str, before: DatabaseMigrationStatus, decision: Decision,
           jobs: dict[str, JobObservation]) -> None:
    """Metrics of what this pass observed: finished Jobs (once each) and a rollback that just completed."""
    for role, job in jobs.items():
        if job.state in ("succeeded", "failed") and job.name not in ctx.runtime.jobs_counted:
            ctx.runtime.jobs_counted.add(job.name)
            metrics.job_finished(namespace, name, role, job.seconds or 0.0, job.state == "succeeded")
    rolled = get_condition(decision.state, c.ROLLED_BACK)
    if rolled is not None and rolled.status == "True" and not condition_is(before, c.ROLLED_BACK, "True"):
        mode = next((m for reason, m in reasons.ROLLBACK_MODES.items() if reason == rolled.reason), rolled.reason)
        metrics.rollback(namespace, name, mode)


async def _reconcile(ctx: Context, namespace: str, name: str, logger: Logger,
                     deleting: bool) -> tuple[float | None, DatabaseMigrationStatus | None]:
    ref = (namespace, name)
    obj = ctx.runtime.migrations.get(ref)
    if obj is None:
        obj = await ctx.kube.get_migration(namespace, name) if deleting else None
        if obj is None:
            ctx.runtime.note(ref, None)
            return None, None
    meta = obj["metadata"]
    if meta.get("deletionTimestamp") and not deleting:
        return None, None  # the delete handler owns it now
    stored = dict(obj.get("status") or {})  # as the API has it: what the merge patch is computed against
    status = parse_status(stored)
    run = status.run or RunStatus()
    generation = int(meta.get("generation") or 1)
    writing = run.step in WRITING_STEPS
    if deleting and not writing:
        return None, None
    run_generation = int(run.generation or generation) if writing else generation
    run_spec = run.spec if writing else obj.get("spec")

    database, target = await _observe_database(ctx, namespace, run_spec or {})
    # The plan's SQL is read from its Job's log while the run has not gone past its approval: once it is
    # kept (status.plan.sql names the Job), or once the run moved on, the log is never read again.
    kept = status.plan.sql.job if status.plan and status.plan.sql else None
    if run.step not in (None, "Planning", "AwaitingApproval") and run.generation == generation:
        kept = _ANY_JOB
    jobs = await _observe_jobs(ctx, namespace, name, run_generation, target, kept)
    lineage, moved_by = await _database_lineage(ctx, ref, run, database, target)
    obs = Observation(
        name=name, namespace=namespace, generation=generation, spec=dict(obj.get("spec") or {}),
        annotations=dict(meta.get("annotations") or {}), status=status, database=database, jobs=jobs,
        now=datetime.now(UTC), busy_with=ctx.runtime.busy_with(target.key, ref) if target else None,
        database_lineage=lineage, database_moved_by=moved_by,
    )
    decision = _decide(obs, deleting)
    if any(ROLES[j.role].writes for j in decision.jobs) and target:
        # Starting a writer: decide again under the database's lock, so that two resources never both start
        # one (a reconcile that writes nothing never waits here).
        async with ctx.runtime.db_locks.setdefault(target.key, asyncio.Lock()):
            obs = dataclasses.replace(obs, busy_with=ctx.runtime.busy_with(target.key, ref))
            decision, created = await _act_capped(ctx, obj, obs, deleting, logger, target)
            run = _finish_run(decision, created, target)
            ctx.runtime.note(ref, run)  # before the lock is let go: the next writer sees this one
    else:
        decision, created = await _act_capped(ctx, obj, obs, deleting, logger, target, decision)
        run = _finish_run(decision, created, target)
    if decision.config_maps:  # before the status that names them
        await _keep_plan_sql(ctx, obj, decision.config_maps)
    if decision.records:  # before the status that ends the run: a crash in between loses no record
        await audit.write(ctx.kube, obj, [record.model_copy(update={"message": decision.state.message})
                                          for record in decision.records], ctx.config.run_records)
    if patch := merge_patch(stored, decision.status):
        try:
            ctx.runtime.remember(await ctx.kube.patch_status(namespace, name, patch))
        except kube.NotFound:
            return None, None
    ctx.runtime.note(ref, run)
    _count(ctx, namespace, name, status, decision, jobs)
    for kind, reason, message in decision.events:
        events.post(kopf.Body(obj), kind, reason, message)  # type: ignore[arg-type]
        (logger.warning if kind == "Warning" else logger.info)("%s: %s", reason, message)
    delay = decision.requeue_after
    ctx.runtime.settled.pop(ref, None)
    if _settles(run, obs, decision, ctx.runtime.has_active_jobs(ref)) and target is not None:
        current = ctx.runtime.migrations.get(ref) or obj
        drift_on = bool(_drift_interval(obj))
        settled = freshness.Settled(
            resource_version=str(current["metadata"].get("resourceVersion")), revision=database.revision,
            due_full=time.monotonic() + (delay or 0.0) if drift_on and delay is not None else None)
        ctx.runtime.settled[ref] = settled
        ctx.runtime.targets[ref] = target
        delay = _next_check(current, settled)
    else:
        ctx.runtime.targets.pop(ref, None)
    return delay, decision.state


def _decide(obs: Observation, deleting: bool) -> Decision:
    decision = decide(obs)
    if deleting:  # finish what was started (a rollback included), start nothing new
        decision.jobs = [j for j in decision.jobs if ROLES[j.role].during_deletion]
    return decision


async def _act_capped(ctx: Context, obj: dict[str, Any], obs: Observation, deleting: bool, logger: Logger,
                      target: DatabaseTarget | None,
                      decision: Decision | None = None) -> tuple[Decision, dict[str, str]]:
    """Decide (unless given) and create the decision's Jobs, within the operator-wide cap on running Jobs: when it
    is reached, decide again with the queue's reason (the resource is woken when a Job ends)."""
    decision = decision or _decide(obs, deleting)
    if not decision.jobs:
        return decision, {}
    ref = (obs.namespace, obs.name)
    async with ctx.runtime.slots:
        cap = ctx.runtime.max_running_jobs
        running = ctx.runtime.running_jobs()
        rollback = any(ROLES[j.role].during_deletion for j in decision.jobs)  # a rollback never waits in the queue
        if cap and running + len(decision.jobs) > cap and not rollback:
            queue = (f"{running} Jobs run now, the most the operator starts at once (--max-running-jobs {cap}); "
                     f"{len(ctx.runtime.queued) + (ref not in ctx.runtime.queued)} run(s) queued")
            decision = _decide(dataclasses.replace(obs, job_queue=queue), deleting)
            decision.jobs = []  # a drift check, a retry: they too wait for a slot
            ctx.runtime.queued[ref] = None
            return decision, {}
        ctx.runtime.queued.pop(ref, None)
        try:
            created = await _act(ctx, obj, decision, target)
        except _JobRefused as refused:  # tell the user now, in the status: retrying cannot help
            logger.warning("the API server refused the %s Job: %s", refused.role, refused.message)
            return _decide(dataclasses.replace(obs, refused=JobRefusal(refused.role, refused.message)), deleting), {}
        known = ctx.runtime.jobs.get(ref, ())
        ctx.runtime.starting.update({n: time.monotonic() for n in created.values() if n not in known})
    return decision, created


def _finish_run(decision: Decision, created: dict[str, str], target: DatabaseTarget | None) -> RunStatus:
    run = decision.state.run = decision.state.run or RunStatus()
    run.jobs = {**run.jobs, **created}
    if target:
        run.database_key = target.key
    return run


def _settles(run: RunStatus, obs: Observation, decision: Decision, jobs_running: bool) -> bool:
    """A run that is over, on a database that answered, with no Job to start or running: nothing to do until
    something changes (the watches) or the freshness check sees the database moved."""
    return (run.step == "Done" and run.generation == obs.generation and obs.database.ok and not decision.jobs
            and not jobs_running)


def _drift_interval(obj: dict[str, Any]) -> int | None:
    try:
        return duration_seconds(parse_spec(obj.get("spec") or {}).drift_check.interval)
    except ValueError:
        return None


async def _keep_plan_sql(ctx: Context, obj: dict[str, Any], kept: list[PlanSQLKept]) -> None:
    """Write the plans' SQL ConfigMaps (owned by the resource), then prune those of older generations, as their
    Jobs are (the newest GENERATIONS_KEPT generations stay)."""
    meta = obj["metadata"]
    labels = {c.OWNER_LABEL: meta["name"], "app.kubernetes.io/component": plansql.COMPONENT,
              c.MANAGED_BY_LABEL: c.MANAGED_BY}
    owner = {"apiVersion": c.API_VERSION, "kind": c.KIND, "name": meta["name"], "uid": meta["uid"]}
    for item in kept:
        await ctx.kube.create_binary_config_map(meta["namespace"], item.name,
                                                {**labels, c.GENERATION_LABEL: str(item.generation)}, owner,
                                                plansql.DATA_KEY, item.data)
    listed = await ctx.kube.list_config_maps(meta["namespace"], ",".join(f"{k}={v}" for k, v in labels.items()))
    generations = sorted({int((m.get("labels") or {}).get(c.GENERATION_LABEL) or 0) for m in listed})
    for old in listed:
        if int((old.get("labels") or {}).get(c.GENERATION_LABEL) or 0) not in generations[-GENERATIONS_KEPT:]:
            await ctx.kube.delete_config_map(meta["namespace"], str(old["name"]))


class _JobRefused(Exception):
    def __init__(self, role: Role, message: str) -> None:
        super().__init__(message)
        self.role = role
        self.message = message


async def _act(ctx: Context, obj: dict[str, Any], decision: Decision,
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


async def _database_lineage(ctx: Context, ref: tuple[str, str], run: RunStatus, database: DatabaseObservation,
                            target: DatabaseTarget | None) -> tuple[tuple[str, ...], str | None]:
    """When a finished run's database is no longer at its target: what another DatabaseMigration on the same database
    planned for the revision it is at now (its lineage), so that a target it contains is not reported as lost."""
    if (target is None or not database.ok or run.step != "Done"
            or run.result not in ("Succeeded", "UpToDate") or database.revision == run.target_revision):
        return (), None
    for other in ctx.runtime.migrations.values():
        meta, st = other["metadata"], other.get("status") or {}
        plan = st.get("plan") or {}
        if ((meta["namespace"], meta["name"]) != ref and _run_of(other).database_key == target.key
                and database.revision and plan.get("toRevision") == database.revision):
            lineage = [str(x) for x in plan.get("lineage") or []]
            return (database.revision, *lineage), f"DatabaseMigration {meta['namespace']}/{meta['name']}"
    return (), None
