"""Observe one DatabaseMigration for a pass: its database (through its Secret, briefly cached), its Jobs from the
index (and their pods while they matter, a finished plan's SQL from its log), and what another resource on the same
database planned. The result is an :class:`~.observation.Observation` for `reconcile.decide`; nothing is decided here
(old Jobs are pruned as they are listed).
"""

from __future__ import annotations

import contextlib
import time
from datetime import UTC, datetime
from typing import cast

from . import constants as c
from . import kube, objects, plansql, reasons
from .api import (
    MAX_NAME_LENGTH,
    WRITING_STEPS,
    DatabaseMigrationStatus,
    JsonObject,
    RunStatus,
    parse_spec,
    parse_status,
)
from .dbstate import DatabaseError, DatabaseTarget, decode_secret_value, parse_url, sanitize
from .fleet.approval import member_approvals
from .indexes import GENERATIONS_KEPT, Context, Ref, job_generation, job_instance, job_state
from .jobs import ROLES
from .objects import Job, Migration, Pod
from .observation import AppPods, DatabaseObservation, JobObservation, Observation
from .podstate import failure_cause, never_ran, pod_progress, pod_waiting
from .runner.results import JobResult

DRIFT_JOBS_KEPT = 2


ANY_JOB = "*"  # sql_kept_for: read no plan's log


SECRET_CACHE_SECONDS = 30.0  # a Secret read serves the reconciles of this long (1,000 resources, one Secret)


async def observe(ctx: Context, obj: Migration,
                  status: DatabaseMigrationStatus) -> tuple[Observation, DatabaseTarget | None]:
    """The resource as stored, its run's database and Jobs, now; and the database's target (None: unreadable)."""
    meta = obj["metadata"]
    namespace, name = str(meta["namespace"]), str(meta["name"])
    ref = (namespace, name)
    run = status.run or RunStatus()
    generation = int(meta.get("generation") or 1)
    writing = run.step in WRITING_STEPS
    run_generation = int(run.generation or generation) if writing else generation
    run_spec = run.spec if writing else obj.get("spec")

    database, target = await _observe_database(ctx, namespace, run_spec or {})
    # The plan's SQL is read from its Job's log while the run has not gone past its approval: once it is
    # kept (status.plan.sql names the Job), or once the run moved on, the log is never read again.
    kept = status.plan.sql.job if status.plan and status.plan.sql else None
    if run.step not in (None, "Planning", "AwaitingApproval") and run.generation == generation:
        kept = ANY_JOB
    jobs = await _observe_jobs(ctx, namespace, name, run_generation, target, kept)
    lineage, moved_by = await _database_lineage(ctx, ref, run, database, target)
    # A split plan's run reads its app's pods from the expand part's migration on, so that the turn that applies it
    # already names the older version's pods.
    waits = run.step == "WaitingForOldVersion" or (run.part == "expand" and run.step in ("AwaitingApproval",
                                                                                         "Migrating"))
    app_pods = await _app_pods(ctx, namespace, name) if waits else None
    obs = Observation(
        name=name, namespace=namespace, generation=generation, spec=dict(obj.get("spec") or {}),
        annotations=dict(meta.get("annotations") or {}), status=status, database=database, jobs=jobs,
        now=datetime.now(UTC), busy_with=ctx.runtime.busy_with(target.key, ref) if target else None,
        database_lineage=lineage, database_moved_by=moved_by, app_pods=app_pods,
        rehearse_by_default=ctx.config.rehearse_by_default, job_retry_backoff=ctx.config.job_retry_backoff,
        set_approvals=member_approvals(obj, ctx.runtime.set_approvals.get(
            (namespace, str((meta.get("labels") or {}).get(c.SET_LABEL) or "")))),
    )
    return obs, target


async def _app_pods(ctx: Context, namespace: str, name: str) -> AppPods | None:
    """The pods that wait for this resource, and (for those without a revision annotation that a controller made)
    the ReplicaSets, Deployments and StatefulSets of the namespace: which of them are the older version. None when
    the API could not answer (the wait looks again)."""
    try:
        pods = [objects.pod(p) for p in await ctx.kube.list_pods(namespace, f"{c.WAIT_FOR_LABEL}={name}")]
        unmarked = [p for p in pods if not ((p.get("metadata") or {}).get("annotations") or {}).get(
            c.REVISION_ANNOTATION) and (p.get("metadata") or {}).get("ownerReferences")]
        kinds = {str(ref.get("kind")) for p in unmarked
                 for ref in (p.get("metadata") or {}).get("ownerReferences") or []}
        replica_sets = await ctx.kube.list_workloads(namespace, "replicasets") if "ReplicaSet" in kinds else []
        deployments = await ctx.kube.list_workloads(namespace, "deployments") if "ReplicaSet" in kinds else []
        stateful_sets = await ctx.kube.list_workloads(namespace, "statefulsets") if "StatefulSet" in kinds else []
    except kube.KubeError:
        return None
    return AppPods(tuple(pods), tuple(replica_sets), tuple(deployments), tuple(stateful_sets))


async def _observe_jobs(ctx: Context, namespace: str, name: str, generation: int,
                        target: DatabaseTarget | None, sql_kept_for: str | None = None) -> dict[str, JobObservation]:
    """The Jobs of one generation, by role; for repeating roles (drift checks) the newest, older ones deleted."""
    by_role: dict[str, list[Job]] = {}
    if len(name) > MAX_NAME_LENGTH:
        return {}  # not a valid label value: no Job of ours can carry it (decide() says so)
    listed = await jobs_of(ctx, (namespace, name))
    generations = sorted({job_generation(j) for j in listed})[-GENERATIONS_KEPT:]
    for job in listed:
        if job_generation(job) not in generations and job_state(job) != "active":
            await ctx.kube.delete_job(namespace, job["metadata"]["name"])  # older runs: history keeps the summary
            continue
        labels = job["metadata"].get("labels") or {}
        if (job_generation(job) < generation and job_state(job) == "active" and labels.get(c.ROLE_LABEL) != "drift"
                and never_ran(await _pods(ctx, namespace, job["metadata"]["name"]))):
            # A replaced run's Job that never got to run (its image could not be pulled, no node fit...): nothing of
            # it may start later, beside the new run.
            await ctx.kube.delete_job(namespace, job["metadata"]["name"])
            continue
        if labels.get(c.ROLE_LABEL) == "drift" or (labels.get(c.GENERATION_LABEL) == str(generation)
                                                   and labels.get(c.ROLE_LABEL) in ROLES):
            by_role.setdefault(labels[c.ROLE_LABEL], []).append(job)
    drift = sorted(by_role.get("drift", []), key=job_instance)
    for old in drift[:-DRIFT_JOBS_KEPT]:
        if job_state(old) != "active":
            await ctx.kube.delete_job(namespace, old["metadata"]["name"])
    return {role: await _observe_job_cached(ctx, namespace, max(jobs, key=job_instance), target, sql_kept_for)
            for role, jobs in by_role.items()}


async def jobs_of(ctx: Context, ref: Ref) -> list[Job]:
    """A resource's Jobs from the index; listed once per resource and process (the Job watch may not have
    delivered them yet right after a start), from the watch afterwards."""
    if ref not in ctx.runtime.jobs_listed:
        for job in await ctx.kube.list_jobs(*ref):
            ctx.runtime.job_seen(None, job)
        ctx.runtime.jobs_listed.add(ref)
    return list(ctx.runtime.jobs[ref].values()) if ref in ctx.runtime.jobs else []


async def _observe_job_cached(ctx: Context, namespace: str, job: Job, target: DatabaseTarget | None,
                              sql_kept_for: str | None) -> JobObservation:
    """A finished Job (and its pods) does not change: observed once per version of the Job, unless its plan SQL
    is still to be read."""
    meta = job["metadata"]
    key = (str(meta["name"]), str(meta.get("resourceVersion")))
    if (seen := ctx.runtime.observed.get(key)) is not None:
        return seen
    observed = await _observe_job(ctx, namespace, job, target, sql_kept_for)
    is_plan = (meta.get("labels") or {}).get(c.ROLE_LABEL) == "plan"
    if observed.state != "active" and not (is_plan and sql_kept_for not in (observed.name, ANY_JOB)):
        ctx.runtime.observed[key] = observed
    return observed


async def _observe_job(ctx: Context, namespace: str, job: Job,
                       target: DatabaseTarget | None, sql_kept_for: str | None = None) -> JobObservation:
    name = job["metadata"]["name"]
    state = job_state(job)
    if state == "active":
        pods = await _pods(ctx, namespace, name)
        started, blocked = pod_progress(pods)
        return JobObservation(name=name, state="active", started=started, blocked=blocked,
                              waiting="" if started or blocked else pod_waiting(pods),
                              instance=(job["metadata"].get("labels") or {}).get(c.INSTANCE_LABEL))
    results: list[JsonObject] = []
    notes: list[str] = []
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Failed" and cond.get("status") == "True":
            notes.append(f"{cond.get('reason')}: {cond.get('message')}")
    pods = await _pods(ctx, namespace, name)
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
            and sql_kept_for not in (name, ANY_JOB) and pods):  # once per plan, until status.plan.sql names it
        with contextlib.suppress(kube.KubeError):
            plan_sql = plansql.from_log(await ctx.kube.pod_log(namespace, pods[-1]["metadata"]["name"], "scan"))
    return JobObservation(name=name, state=state, result=cast("JobResult | None", result), message="; ".join(notes),
                          instance=instance, seconds=_duration(job), cause=cause, plan_sql=plan_sql)


async def _pods(ctx: Context, namespace: str, job_name: str) -> list[Pod]:
    return [objects.pod(body) for body in await ctx.kube.job_pods(namespace, job_name)]


def _duration(job: Job) -> float | None:
    st = job.get("status") or {}
    ended = st.get("completionTime") or next(
        (x.get("lastTransitionTime") for x in st.get("conditions") or [] if x.get("type") == "Failed"), None)
    if not st.get("startTime") or not ended:
        return None
    return (_parse_time(ended) - _parse_time(st["startTime"])).total_seconds()


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text)  # the client writes +00:00, the API Z: Python 3.11 reads both


async def _observe_database(ctx: Context, namespace: str,
                            spec: JsonObject) -> tuple[DatabaseObservation, DatabaseTarget | None]:
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


async def _database_lineage(ctx: Context, ref: tuple[str, str], run: RunStatus, database: DatabaseObservation,
                            target: DatabaseTarget | None) -> tuple[tuple[str, ...], str | None]:
    """When a finished run's database is no longer at its target: what another DatabaseMigration on the same database
    planned for the revision it is at now (its lineage), so that a target it contains is not reported as lost."""
    if (target is None or not database.ok or run.step != "Done"
            or run.result not in ("Succeeded", "UpToDate") or database.revision == run.target_revision):
        return (), None
    for other in ctx.runtime.migrations.values():
        meta, status = other["metadata"], parse_status(other.get("status"))
        plan, run_there = status.plan, status.run or RunStatus()
        if ((meta["namespace"], meta["name"]) != ref and run_there.database_key == target.key
                and database.revision and plan is not None and plan.to_revision == database.revision):
            return (database.revision, *plan.lineage), f"DatabaseMigration {meta['namespace']}/{meta['name']}"
    return (), None
