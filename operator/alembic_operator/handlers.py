"""The reconciler's Kopf handlers (registered in :mod:`.app`): observe, call `reconcile.decide`, act. No decisions
are made here.

One daemon per DatabaseMigration loops observe -> decide -> act, and sleeps until a Job of its own changes (the Job
watch wakes it), the resource changes, or the decision's requeue time passes. Everything it needs to continue is
in the resource's status and in its Jobs, so a restarted operator resumes every run where it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from datetime import UTC, datetime
from typing import Any, Literal, cast

import kopf

from . import audit, kube, metrics, plansql, reasons
from . import constants as c
from .api import MAX_NAME_LENGTH, WRITING_STEPS, RunStatus, dump, parse_spec
from .config import OperatorConfig
from .dbstate import DatabaseError, DatabaseTarget, decode_secret_value, parse_url, read_revision, sanitize
from .jobs import ROLES, Owner, Role, build_job, job_name, source_field
from .podstate import failure_cause, never_ran, pod_progress, pod_waiting
from .reconcile import (
    DatabaseObservation,
    Decision,
    JobObservation,
    JobRefusal,
    JobRequest,
    Observation,
    decide,
)
from .runner.lock import database_lock_key
from .runner.results import JobResult

Logger = logging.Logger | logging.LoggerAdapter[Any]
JobState = Literal["active", "succeeded", "failed"]

DRIFT_JOBS_KEPT = 2
_ANY_JOB = "*"  # sql_kept_for: read no plan's log
GENERATIONS_KEPT = 2  # the Jobs (and their pods' logs) of the newest runs stay for inspection


class Runtime:
    """In-memory state of this operator process; rebuilt from the cluster at start-up."""

    def __init__(self) -> None:
        self.wakeups: dict[tuple[str, str], asyncio.Event] = {}
        self.writers: dict[str, set[tuple[str, str]]] = {}  # database key -> resources writing to it
        self.db_locks: dict[str, asyncio.Lock] = {}
        self.jobs_counted: set[str] = set()  # finished Jobs already in the metrics

    def wake(self, namespace: str, name: str) -> None:
        self.wakeups.setdefault((namespace, name), asyncio.Event()).set()

    def note(self, ref: tuple[str, str], run: RunStatus | None) -> None:
        """Who writes to which database (the run's database key, while its step may write)."""
        for holders in self.writers.values():
            holders.discard(ref)
        key = run.database_key if run else None
        if run and key and run.step in WRITING_STEPS:
            self.writers.setdefault(key, set()).add(ref)

    def busy_with(self, key: str, ref: tuple[str, str]) -> str | None:
        others = sorted(self.writers.get(key, set()) - {ref})
        return f"DatabaseMigration {others[0][0]}/{others[0][1]}" if others else None


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


async def run_migration(ctx: Context, namespace: str | None, name: str, stopped: kopf.DaemonStopped,
                        logger: Logger) -> None:
    assert namespace, "DatabaseMigration is namespaced"
    wake = ctx.runtime.wakeups.setdefault((namespace, name), asyncio.Event())
    backoff = 1.0
    while not stopped:
        wake.clear()
        try:
            delay = await reconcile(ctx, namespace, name, logger)
            backoff = 1.0
        except Exception as err:  # API hiccups: retry with backoff, never die
            # Our own errors and the API's carry no database URL (dbstate redacts what comes from the driver).
            logger.warning("reconcile failed, retrying in %.0fs: %s: %s", backoff, type(err).__name__, str(err)[:500])
            logger.debug("reconcile failure", exc_info=True)
            delay, backoff = backoff, min(backoff * 2, 60.0)
        if delay is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout=delay)


async def on_delete(ctx: Context, namespace: str | None, name: str, logger: Logger) -> None:
    """Never kill a running migration: hold the finalizer until the run has nothing writing to the database.

    The database and the backups are never touched by a deletion; a failed migration still gets its rollback.
    """
    assert namespace, "DatabaseMigration is namespaced"
    await reconcile(ctx, namespace, name, logger, deleting=True)
    obj = await ctx.kube.get_migration(namespace, name)
    run = _run_of(obj)
    jobs = await ctx.kube.list_jobs(namespace, name)
    active = [j["metadata"]["name"] for j in jobs if _job_state(j) == "active"]
    if active:
        raise kopf.TemporaryError(f"waiting for Job {', '.join(active)} to finish before deleting", delay=5)
    ctx.runtime.note((namespace, name), None)
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
    listed = await ctx.kube.list_jobs(namespace, name)
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
    return {role: await _observe_job(ctx, namespace, max(jobs, key=_instance), target, sql_kept_for)
            for role, jobs in by_role.items()}


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
    try:
        data = await ctx.kube.read_secret_data(namespace, ref.name)
        if data is None:
            raise DatabaseError(reasons.SECRET_NOT_FOUND,
                                f"Secret {namespace}/{ref.name} (spec.database.urlSecretRef.name) does not exist: "
                                "create it with the database URL under key " + ref.key)
        target = parse_url(decode_secret_value(data, f"{namespace}/{ref.name}", ref.key), ref.name, ref.key)
    except DatabaseError as err:
        return err.observation(), None
    return await asyncio.to_thread(read_revision, target), target


# --- reconcile --------------------------------------------------------------------------------------------------


async def reconcile(ctx: Context, namespace: str, name: str, logger: Logger, deleting: bool = False) -> float | None:
    """Observe, decide, act once; return seconds until the next look (None: the resource is gone)."""
    started = time.monotonic()
    try:
        delay, status = await _reconcile(ctx, namespace, name, logger, deleting)
    except Exception:
        metrics.reconcile_finished(namespace, name, time.monotonic() - started, "error")
        raise
    if status is not None:
        outcome = ("ready" if _cond(status, c.READY) == "True" else
                   "stalled" if _cond(status, c.STALLED) == "True" else "progressing")
        metrics.reconcile_finished(namespace, name, time.monotonic() - started, outcome)
        metrics.current_revision(namespace, name, status.get("currentRevision"))
        metrics.held_pods(namespace, name, int(status.get("heldPods") or 0))
        if (drift := _cond(status, c.DRIFTED)) in ("True", "False"):
            metrics.drifted(namespace, name, drift == "True")
        if (size := (status.get("backup") or {}).get("sizeBytes")) is not None:
            metrics.backup_size(namespace, name, size)
    return delay


def _cond(status: dict[str, Any], type_: str) -> str | None:
    return next((x.get("status") for x in status.get("conditions") or [] if x.get("type") == type_), None)


def _count(ctx: Context, namespace: str, name: str, before: dict[str, Any], decision: Decision,
           jobs: dict[str, JobObservation]) -> None:
    """Metrics of what this pass observed: finished Jobs (once each) and a rollback that just completed."""
    for role, job in jobs.items():
        if job.state in ("succeeded", "failed") and job.name not in ctx.runtime.jobs_counted:
            ctx.runtime.jobs_counted.add(job.name)
            metrics.job_finished(namespace, name, role, job.seconds or 0.0, job.state == "succeeded")
    if _cond(decision.status, c.ROLLED_BACK) == "True" and _cond(before, c.ROLLED_BACK) != "True":
        reason = next(x["reason"] for x in decision.status["conditions"] if x["type"] == c.ROLLED_BACK)
        metrics.rollback(namespace, name, reasons.ROLLBACK_MODES.get(reason, reason))


async def _reconcile(ctx: Context, namespace: str, name: str, logger: Logger,
                     deleting: bool) -> tuple[float | None, dict[str, Any] | None]:
    for _attempt in range(5):
        obj = await ctx.kube.get_migration(namespace, name)
        if obj is None:
            ctx.runtime.note((namespace, name), None)
            return None, None
        meta = obj["metadata"]
        if meta.get("deletionTimestamp") and not deleting:
            return None, None  # the delete handler owns it now
        status = dict(obj.get("status") or {})
        run = _run_of(obj)
        generation = int(meta.get("generation") or 1)
        writing = run.step in WRITING_STEPS
        if deleting and not writing:
            return None, None
        run_generation = int(run.generation or generation) if writing else generation
        run_spec = run.spec if writing else obj.get("spec")

        database, target = await _observe_database(ctx, namespace, run_spec or {})
        async with ctx.runtime.db_locks.setdefault(target.key if target else "", asyncio.Lock()):
            # The plan's SQL is read from its Job's log while the run has not gone past its approval: once it is
            # kept (status.plan.sql names the Job), or once the run moved on, the log is never read again.
            kept = ((status.get("plan") or {}).get("sql") or {}).get("job")
            if run.step not in (None, "Planning", "AwaitingApproval") and run.generation == generation:
                kept = _ANY_JOB
            jobs = await _observe_jobs(ctx, namespace, name, run_generation, target, kept)
            ref = (namespace, name)
            lineage, moved_by = await _database_lineage(ctx, ref, run, database, target)
            obs = Observation(
                name=name, namespace=namespace, generation=generation, spec=dict(obj.get("spec") or {}),
                annotations=dict(meta.get("annotations") or {}), status=status, database=database, jobs=jobs,
                now=datetime.now(UTC), busy_with=ctx.runtime.busy_with(target.key, ref) if target else None,
                database_lineage=lineage, database_moved_by=moved_by,
            )
            decision = decide(obs)
            if deleting:  # finish what was started (a rollback included), start nothing new
                decision.jobs = [j for j in decision.jobs if ROLES[j.role].during_deletion]
            created: dict[str, str] = {}
            try:
                created = await _act(ctx, obj, decision, target)
            except _JobRefused as refused:  # tell the user now, in the status: retrying cannot help
                logger.warning("the API server refused the %s Job: %s", refused.role, refused.message)
                decision = decide(dataclasses.replace(obs, refused=JobRefusal(refused.role, refused.message)))
            run = _run_of({"status": decision.status})
            run.jobs = {**run.jobs, **created}
            if target:
                run.database_key = target.key
            decision.status["run"] = dump(run)
            if decision.config_maps:  # before the status that names them
                await _keep_plan_sql(ctx, obj, decision.config_maps)
            if decision.records:  # before the status that ends the run: a crash in between loses no record
                await audit.write(ctx.kube, obj, [{**record, "message": decision.status.get("message")}
                                                  for record in decision.records], ctx.config.run_records)
            try:
                if decision.status != status:
                    await ctx.kube.replace_status(obj, decision.status)
            except kube.Conflict:
                continue  # the object moved on: observe again
            ctx.runtime.note(ref, run)
            _count(ctx, namespace, name, status, decision, jobs)
        for kind, reason, message in decision.events:
            kopf.event(kopf.Body(obj),  # type: ignore[arg-type]
                       type=kind, reason=reason, message=message)
            (logger.warning if kind == "Warning" else logger.info)("%s: %s", reason, message)
        return decision.requeue_after, decision.status
    return 1.0, None


async def _keep_plan_sql(ctx: Context, obj: dict[str, Any], kept: list[dict[str, Any]]) -> None:
    """Write the plans' SQL ConfigMaps (owned by the resource), then prune those of older generations, as their
    Jobs are (the newest GENERATIONS_KEPT generations stay)."""
    meta = obj["metadata"]
    labels = {c.OWNER_LABEL: meta["name"], "app.kubernetes.io/component": plansql.COMPONENT,
              c.MANAGED_BY_LABEL: c.MANAGED_BY}
    owner = {"apiVersion": c.API_VERSION, "kind": c.KIND, "name": meta["name"], "uid": meta["uid"]}
    for item in kept:
        await ctx.kube.create_binary_config_map(meta["namespace"], item["name"],
                                                {**labels, c.GENERATION_LABEL: str(item["generation"])}, owner,
                                                plansql.DATA_KEY, item["data"])
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
        spec = parse_spec(req.spec)
        if req.role == "plan":
            await _dry_run_later_jobs(ctx, owner, req)
        args = dict(req.args)
        if ROLES[req.role].writes:
            args["lockKey"] = str(target.engine.lock_key(target.key) if target else database_lock_key(meta["uid"]))
        manifest = build_job(req.role, owner, spec, operator_image=ctx.config.operator_image, args=args)
        try:
            await ctx.kube.create_job(manifest)
        except kube.Refused as err:
            raise _JobRefused(req.role, _with_source(err.message)) from None
        created[req.role] = job_name(owner.name, req.role, req.generation, args.get("instance"))
    return created


async def _dry_run_later_jobs(ctx: Context, owner: Owner, plan: JobRequest) -> None:
    """Before the first Job of a run: have the API server validate every Job the run may create later (server-side
    dry run), so a spec it refuses stops the run before anything is written, not halfway through it."""
    spec = parse_spec(plan.spec)
    for role in ROLES.values():
        if role.dry_run_args is None or (role.backups and not spec.backup.enabled):
            continue
        manifest = build_job(role.name, owner, spec, operator_image=ctx.config.operator_image,
                             args={**role.dry_run_args, "lockKey": "0", "instance": "dry-run"})
        try:
            await ctx.kube.create_job(manifest, dry_run=True)
        except kube.Refused as err:
            raise _JobRefused(role.name, _with_source(err.message)) from None


def _with_source(message: str) -> str:
    field = source_field(message)
    return f"{field}: {message}" if field else message


async def _database_lineage(ctx: Context, ref: tuple[str, str], run: RunStatus, database: DatabaseObservation,
                            target: DatabaseTarget | None) -> tuple[tuple[str, ...], str | None]:
    """When a finished run's database is no longer at its target: what another DatabaseMigration on the same database
    planned for the revision it is at now (its lineage), so that a target it contains is not reported as lost."""
    if (target is None or not database.ok or run.step != "Done"
            or run.result not in ("Succeeded", "UpToDate") or database.revision == run.target_revision):
        return (), None
    for other in await ctx.kube.list_migrations(ctx.config.watched):
        meta, st = other["metadata"], other.get("status") or {}
        plan = st.get("plan") or {}
        if ((meta["namespace"], meta["name"]) != ref and _run_of(other).database_key == target.key
                and database.revision and plan.get("toRevision") == database.revision):
            lineage = [str(x) for x in plan.get("lineage") or []]
            return (database.revision, *lineage), f"DatabaseMigration {meta['namespace']}/{meta['name']}"
    return (), None
