"""Builders of the Jobs the operator runs. Pure functions: a spec in, a batch/v1 Job manifest out.

How a Job brings the app's scripts and our tools together
---------------------------------------------------------
The app's image holds alembic.ini, env.py, versions/ and the models (and the Python packages they import); only it
can render or run the migrations. The operator's image holds the database client tools
(pg_dump/pg_restore/psql, mariadb-dump/mariadb), the SQL scanners and the runner.
Every Job that needs the app's scripts starts with an init container in the OPERATOR's image that writes one
self-contained file (`runner.pyz`: the runner package, stdlib + alembic + sqlalchemy, as a zipapp) into a shared
`emptyDir`; the app's image then runs `python /alembic-operator/runner.pyz <command>` in its own working directory.
The plan Job adds a last container in the operator's image that scans the SQL the runner rendered (reading, read
only, the current types of the columns the plan alters, so that a type change is judged against them).

Results travel as JSON termination messages (a few KB at most); the database URL never appears in a Job: each
container reads it from the user's Secret through `secretKeyRef`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, TypeVar

from kubernetes.client.models.v1_affinity import V1Affinity
from kubernetes.client.models.v1_capabilities import V1Capabilities
from kubernetes.client.models.v1_container import V1Container
from kubernetes.client.models.v1_empty_dir_volume_source import V1EmptyDirVolumeSource
from kubernetes.client.models.v1_env_var import V1EnvVar
from kubernetes.client.models.v1_env_var_source import V1EnvVarSource
from kubernetes.client.models.v1_job import V1Job
from kubernetes.client.models.v1_job_spec import V1JobSpec
from kubernetes.client.models.v1_local_object_reference import V1LocalObjectReference
from kubernetes.client.models.v1_object_meta import V1ObjectMeta
from kubernetes.client.models.v1_owner_reference import V1OwnerReference
from kubernetes.client.models.v1_pod_security_context import V1PodSecurityContext
from kubernetes.client.models.v1_pod_spec import V1PodSpec
from kubernetes.client.models.v1_pod_template_spec import V1PodTemplateSpec
from kubernetes.client.models.v1_resource_requirements import V1ResourceRequirements
from kubernetes.client.models.v1_seccomp_profile import V1SeccompProfile
from kubernetes.client.models.v1_secret_key_selector import V1SecretKeySelector
from kubernetes.client.models.v1_security_context import V1SecurityContext
from kubernetes.client.models.v1_toleration import V1Toleration
from kubernetes.client.models.v1_volume import V1Volume
from kubernetes.client.models.v1_volume_mount import V1VolumeMount
from pydantic import BaseModel

from . import constants as c
from . import reasons
from .api import DatabaseMigrationSpec, duration_milliseconds
from .constants import URL_ENV, Phase, Role
from .jobparts import StoreWiring, typed
from .reasons import Reason
from .runner.lock import LOCK_WAIT_SECONDS

M = TypeVar("M", bound=BaseModel)

WORK_DIR = "/alembic-operator"
RUNNER = f"{WORK_DIR}/runner.pyz"  # the runner package as one zipapp (runner/build.py)
PLAN_DIR = f"{WORK_DIR}/plan"
OPERATOR_UID = 65532
INSTALLER = "runner"  # the init container that only writes the runner into the Job's volume
SHORT, LONG = 600, 6 * 3600  # default deadlines: a Job that never starts (image pull errors...) must still end


@dataclass(frozen=True)
class Owner:
    """The DatabaseMigration a Job belongs to."""

    name: str
    namespace: str
    uid: str
    generation: int


def job_name(owner_name: str, role: Role, generation: int, instance: str | None = None) -> str:
    """Deterministic, so a restarted operator finds the Job it created, and never creates it twice.

    `instance` tells apart Jobs of one role that repeat within a generation (drift checks: one per interval).
    Job names end up in the `job-name` label of their pods: at most 63 characters.
    """
    suffix = f"-{role}-g{generation}" + (f"-{instance}" if instance else "")
    if len(owner_name) + len(suffix) <= 63:
        return owner_name + suffix
    digest = hashlib.sha256(owner_name.encode()).hexdigest()[:8]
    keep = 63 - len(suffix) - len(digest) - 1
    return f"{owner_name[:keep].rstrip('-.')}-{digest}{suffix}"


_STORE = "<the backup store's field>"
# Where each part of a Job comes from in the DatabaseMigration: an API server message about the Job names the Job's
# field; the user needs to hear theirs. First match wins.
SOURCE_FIELDS: tuple[tuple[re.Pattern[str], str], ...] = tuple((re.compile(p), f) for p, f in (
    (r"containers\[\d+\]\.resources|quantit", "spec.jobTemplate.resources"),
    (r"containers\[\d+\]\.env|\.env\[", "spec.jobTemplate.env"),
    (r"containers\[\d+\]\.securityContext", "spec.jobTemplate.securityContext"),
    (r"spec\.template\.spec\.securityContext|SecurityContext", "spec.jobTemplate.podSecurityContext"),
    (r"template\.(metadata\.)?labels", "spec.jobTemplate.podLabels"),
    (r"template\.(metadata\.)?annotations", "spec.jobTemplate.podAnnotations"),
    (r"tolerations", "spec.jobTemplate.tolerations"),
    (r"affinity", "spec.jobTemplate.affinity"),
    (r"nodeSelector", "spec.jobTemplate.nodeSelector"),
    (r"serviceAccountName", "spec.jobTemplate.serviceAccountName"),
    (r"imagePullSecrets", "spec.jobTemplate.imagePullSecrets"),
    (r"activeDeadlineSeconds", "spec.jobTemplate.activeDeadlineSeconds"),
    (r"volumes\[", _STORE),
    (r"containers\[\d+\]\.image|imagePullPolicy", "spec.migrations"),
))


def source_field(message: str, store: StoreWiring | None = None) -> str | None:
    """The DatabaseMigration field behind a Job field named in an API server message (None: not ours to say); the
    volumes are the backup store's (the Job's own scratch volume is never refused), which names its field."""
    field = next((field for pattern, field in SOURCE_FIELDS if pattern.search(message)), None)
    return (store.spec_field if store else "spec.backup") if field == _STORE else field


def _env(spec: DatabaseMigrationSpec) -> list[V1EnvVar]:
    ref = spec.database.url_secret_ref
    return [
        V1EnvVar(name=URL_ENV, value_from=V1EnvVarSource(secret_key_ref=V1SecretKeySelector(name=ref.name,
                                                                                              key=ref.key))),
        V1EnvVar(name="PYTHONUNBUFFERED", value="1"),
        V1EnvVar(name="PYTHONDONTWRITEBYTECODE", value="1"),
        *(typed(V1EnvVar, e) for e in spec.job_template.env),
    ]


def _container_security(spec: DatabaseMigrationSpec, ours: bool) -> V1SecurityContext:
    sc = V1SecurityContext(
        allow_privilege_escalation=False,
        capabilities=V1Capabilities(drop=["ALL"]),
        run_as_non_root=True,
        seccomp_profile=V1SeccompProfile(type="RuntimeDefault"),
    )
    if ours:
        # Our image runs as this user; the app's image runs as its own (non-root) USER.
        sc = _over(sc, V1SecurityContext(run_as_user=OPERATOR_UID, run_as_group=OPERATOR_UID,
                                         read_only_root_filesystem=True))
    if spec.job_template.security_context:
        sc = _over(sc, typed(V1SecurityContext, spec.job_template.security_context))
    return sc


def _over(base: M, top: M) -> M:
    """`base` with every field `top` sets replaced by top's (a shallow merge: what the user sets wins as a whole)."""
    return base.model_copy(update={name: getattr(top, name) for name in top.model_fields_set})


def _container(
    name: str, image: str, command: list[str], spec: DatabaseMigrationSpec, *, ours: bool,
    mounts: list[V1VolumeMount], working_dir: str | None = None, pull_policy: str | None = None,
    store_env: list[V1EnvVar] | None = None,
) -> V1Container:
    env = _env(spec) if name != INSTALLER else []
    if name != INSTALLER:
        # Scratch space on the Job's emptyDir, not on /tmp: our containers have a read-only root filesystem, and
        # the app's image keeps its own /tmp as it is (its files, even its virtualenv, may live there).
        env += [V1EnvVar(name="HOME", value=WORK_DIR), V1EnvVar(name="TMPDIR", value=WORK_DIR), *(store_env or [])]
    resources = spec.job_template.resources
    return V1Container(
        name=name,
        image=image,
        command=command,
        env=env,
        volume_mounts=mounts if any(m.name == "work" for m in mounts) else [*mounts, WORK],
        security_context=_container_security(spec, ours),
        termination_message_path="/dev/termination-log",
        termination_message_policy="FallbackToLogsOnError",
        working_dir=working_dir or None,
        image_pull_policy=pull_policy or None,
        resources=typed(V1ResourceRequirements, resources) if resources else None,
    )


def build_job(
    role: Role,
    owner: Owner,
    spec: DatabaseMigrationSpec,
    *,
    operator_image: str,
    args: dict[str, str],
    store: StoreWiring | None = None,
) -> V1Job:
    """The Job for one step of a run. `args` carries the step's inputs (revisions, backup file...); `store` is the
    backup store's wiring (``backupstores.wiring_for``), which the roles that use the store need. The API server
    receives :func:`~alembic_operator.jobparts.manifest` of it."""
    instance = args.get("instance")
    name = job_name(owner.name, role, owner.generation, instance)
    labels = {
        c.OWNER_LABEL: owner.name,
        c.ROLE_LABEL: role,
        c.GENERATION_LABEL: str(owner.generation),
        c.MANAGED_BY_LABEL: c.MANAGED_BY,
    }
    if instance:
        labels[c.INSTANCE_LABEL] = instance
    if ROLES[role].uses_store and store is None:
        raise ValueError(f"the {role} Job needs the backup store's wiring: spec.backup names no store")
    store = store if ROLES[role].uses_store else None
    pods = ROLES[role].build(_Inputs(owner, spec, operator_image, args, store))
    tmpl = spec.job_template
    pod_security = V1PodSecurityContext(run_as_non_root=True, seccomp_profile=V1SeccompProfile(type="RuntimeDefault"))
    if store and store.fs_group:
        pod_security.fs_group = OPERATOR_UID  # so our non-root user can write to the store's volumes
    if tmpl.pod_security_context:
        pod_security = _over(pod_security, typed(V1PodSecurityContext, tmpl.pod_security_context))
    volumes = [V1Volume(name="work", empty_dir=V1EmptyDirVolumeSource()), *(store.volumes if store else ())]
    pod_spec = V1PodSpec(
        restart_policy="Never",
        automount_service_account_token=False,  # the Jobs never call the Kubernetes API
        security_context=pod_security,
        init_containers=pods.init,
        containers=pods.containers,
        volumes=volumes,
        service_account_name=tmpl.service_account_name or None,
        node_selector=dict(tmpl.node_selector) or None,
        tolerations=[typed(V1Toleration, t) for t in tmpl.tolerations] or None,
        affinity=typed(V1Affinity, tmpl.affinity) if tmpl.affinity else None,
        image_pull_secrets=[V1LocalObjectReference(name=s.name) for s in tmpl.image_pull_secrets] or None,
    )
    return V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=V1ObjectMeta(
            name=name,
            namespace=owner.namespace,
            labels=labels,
            owner_references=[V1OwnerReference(
                api_version=c.API_VERSION, kind=c.KIND, name=owner.name, uid=owner.uid,
                controller=True, block_owner_deletion=True,
            )],
        ),
        spec=V1JobSpec(
            # Kubernetes never retries a migration blindly: one pod, and a failure is a failure.
            backoff_limit=0,
            active_deadline_seconds=tmpl.active_deadline_seconds or ROLES[role].deadline,
            template=V1PodTemplateSpec(
                metadata=V1ObjectMeta(labels={**tmpl.pod_labels, **labels}, annotations=dict(tmpl.pod_annotations)),
                spec=pod_spec,
            ),
        ),
    )


# --- one constructor per role over the shared builder above -------------------------------------------------------


@dataclass(frozen=True)
class _Inputs:
    owner: Owner
    spec: DatabaseMigrationSpec
    operator_image: str
    args: dict[str, str]
    store: StoreWiring | None

    def ours(self, name: str, command: list[str], mounts: list[V1VolumeMount]) -> V1Container:
        """A container in the operator's image."""
        return _container(name, self.operator_image, command, self.spec, ours=True, mounts=mounts)

    @property
    def wiring(self) -> StoreWiring:
        if self.store is None:  # build_job refuses it first
            raise ValueError("this Job needs the backup store's wiring")
        return self.store

    def with_store(self, name: str, command: list[str]) -> V1Container:
        """A container in the operator's image that reaches the backup store: its mounts and environment."""
        return _container(name, self.operator_image, command, self.spec, ours=True, mounts=list(self.wiring.mounts),
                          store_env=self.wiring.env())

    def app(self, name: str, verb: str, *options: str) -> V1Container:
        """A container in the app's image, in its working directory, running our runner with the app's Python."""
        m = self.spec.migrations
        return _container(name, m.image, ["python", RUNNER, verb, "--config", m.config, *options], self.spec,
                          ours=False, mounts=[WORK], working_dir=m.working_dir, pull_policy=m.image_pull_policy)

    def install_runner(self) -> V1Container:
        return self.ours(INSTALLER, ["alembic-operator", "job", "install-runner", RUNNER], [WORK])

    def locking(self) -> list[str]:
        return ["--lock-key", self.args["lockKey"], "--lock-wait-seconds", str(LOCK_WAIT_SECONDS)]

    def limits(self) -> list[str]:
        """spec.migrations.lockTimeout and statementTimeout, in milliseconds, for the runner to set on env.py's
        session (the URL itself never appears in a Job)."""
        m = self.spec.migrations
        limits = [("--db-lock-timeout-ms", duration_milliseconds(m.lock_timeout)),
                  ("--db-statement-timeout-ms", duration_milliseconds(m.statement_timeout))]
        return [part for flag, ms in limits if ms is not None for part in (flag, str(ms))]


@dataclass(frozen=True)
class _Pods:
    init: list[V1Container]
    containers: list[V1Container]


WORK = V1VolumeMount(name="work", mount_path=WORK_DIR)


def _plan(x: _Inputs) -> _Pods:
    render = x.app("plan", "plan", "--target", x.args["target"], "--out", PLAN_DIR)
    scan = x.ours("scan", ["alembic-operator", "job", "scan", "--plan-dir", PLAN_DIR], [WORK])
    return _Pods([x.install_runner(), render], [scan])


def _migrate(x: _Inputs) -> _Pods:
    return _Pods([x.install_runner()], [_runner_step(x, "migrate", "upgrade")])


def _contract(x: _Inputs) -> _Pods:
    """The plan's contract part (expand/contract): an upgrade like the migration's, its own Job and phase."""
    return _Pods([x.install_runner()], [_runner_step(x, "contract", "upgrade")])


def _downgrade(x: _Inputs) -> _Pods:
    return _Pods([x.install_runner()], [_runner_step(x, "downgrade", "downgrade")])


def _runner_step(x: _Inputs, name: str, verb: str) -> V1Container:
    return x.app(name, verb, "--from", x.args["from"], "--to", x.args["to"], *x.locking(), *x.limits())


def _stamp(x: _Inputs) -> _Pods:
    return _Pods([x.install_runner()], [x.app("stamp", "stamp", "--revision", x.args["revision"], *x.locking())])


def _drift(x: _Inputs) -> _Pods:
    return _Pods([x.install_runner()], [x.app("drift", "drift")])


def _backup(x: _Inputs) -> _Pods:
    return _Pods([], [x.with_store("backup", [
        "alembic-operator", "job", "backup", *x.wiring.backup_args(x.owner.name, x.spec.backup.retain)])])


def _restore(x: _Inputs) -> _Pods:
    return _Pods([], [x.with_store("restore", [
        "alembic-operator", "job", "restore", *x.wiring.restore_args(x.args["file"]), "--sha256", x.args["sha256"],
        *x.locking()])])


def scratch_server(spec: DatabaseMigrationSpec) -> tuple[str, str] | None:
    """The Secret (name, key) of the server a rehearsal's scratch database goes on; None: none is named."""
    rehearsal = spec.rehearsal
    if rehearsal.url_secret_ref is not None:
        return rehearsal.url_secret_ref.name, rehearsal.url_secret_ref.key
    if rehearsal.on_production_server:
        return spec.database.url_secret_ref.name, spec.database.url_secret_ref.key
    return None


def _on_scratch_server(x: _Inputs, container: V1Container) -> V1Container:
    """The container with the scratch server's URL in URL_ENV instead of production's: a rehearsal never gets
    production's URL (unless spec.rehearsal.onProductionServer makes them one server)."""
    server = scratch_server(x.spec)
    env = [e for e in container.env or [] if e.name != URL_ENV]
    if server is not None:  # else no URL at all: the Job fails (MissingDatabaseURL), production stays out of reach
        ref = V1EnvVarSource(secret_key_ref=V1SecretKeySelector(name=server[0], key=server[1]))
        env.insert(0, V1EnvVar(name=URL_ENV, value_from=ref))
    container.env = env
    return container


def _rehearse(x: _Inputs) -> _Pods:
    database = x.args["database"]
    restore = x.with_store("restore", [
        "alembic-operator", "job", "rehearsal-restore", *x.wiring.restore_args(x.args["file"]),
        "--sha256", x.args["sha256"], "--database", database])
    rehearse = x.app("rehearse", "rehearse", "--from", x.args["from"], "--to", x.args["to"], "--database", database,
                     *x.limits())
    return _Pods([x.install_runner(), _on_scratch_server(x, restore)], [_on_scratch_server(x, rehearse)])


@dataclass(frozen=True)
class JobRole:
    """What the operator must know about one kind of Job; `ROLES` below declares them all.

    A role that writes to the database holds the database's advisory lock (its Job gets the lock key), so two of
    them never run at once against one database, and it is what may not be cut short.
    """

    name: Role
    image: Literal["operator", "app"]  # whose image runs its main container
    phase: Phase | None  # status.phase while it runs (None: not part of a run: drift checks run while Ready)
    reason: Reason  # the Reconciling reason while it runs
    writes: bool  # writes to the database: takes the advisory lock
    during_deletion: bool  # started even while the resource is being deleted (a rollback must finish)
    retries: bool  # retried with backoff when it failed for a transient reason and changed nothing
    deadline: int  # default activeDeadlineSeconds
    uses_store: bool  # reaches the backup store (its StoreWiring), which exists only when spec.backup.enabled
    build: Callable[[_Inputs], _Pods]
    # Placeholder inputs to validate, before a run starts, a Job the run may create later (server-side dry run).
    dry_run_args: Mapping[str, str] | None = None


def _declare(*roles: JobRole) -> dict[Role, JobRole]:
    return {r.name: r for r in roles}


ROLES: Mapping[Role, JobRole] = _declare(
    JobRole("plan", "app", "Planning", reasons.PLANNING, writes=False, during_deletion=False, retries=True,
            deadline=SHORT, uses_store=False, build=_plan),
    JobRole("stamp", "app", "Planning", reasons.BASELINING, writes=True, during_deletion=False, retries=True,
            deadline=SHORT, uses_store=False, build=_stamp),
    JobRole("backup", "operator", "BackingUp", reasons.BACKING_UP, writes=False, during_deletion=False,
            retries=True, deadline=LONG, uses_store=True, build=_backup, dry_run_args={}),
    JobRole("migrate", "app", "Migrating", reasons.MIGRATING, writes=True, during_deletion=False, retries=True,
            deadline=LONG, uses_store=False, build=_migrate, dry_run_args={"from": "base", "to": "head"}),
    JobRole("contract", "app", "Contracting", reasons.CONTRACTING, writes=True, during_deletion=False, retries=True,
            deadline=LONG, uses_store=False, build=_contract),
    JobRole("downgrade", "app", "RollingBack", reasons.ROLLING_BACK, writes=True, during_deletion=True,
            retries=True, deadline=LONG, uses_store=False, build=_downgrade,
            dry_run_args={"from": "head", "to": "base"}),
    JobRole("restore", "operator", "RollingBack", reasons.ROLLING_BACK, writes=True, during_deletion=True,
            retries=False, deadline=LONG, uses_store=True, build=_restore,
            dry_run_args={"sha256": "sha256:0"}),
    JobRole("drift", "app", None, reasons.PLANNING, writes=False, during_deletion=False, retries=False,
            deadline=SHORT, uses_store=False, build=_drift),
    # Writes only to its own scratch database (never production's: it gets the scratch server's URL), so it takes
    # no lock; dry-run validated only with spec.rehearsal on (dry_run_jobs).
    JobRole("rehearse", "app", "Rehearsing", reasons.REHEARSING, writes=False, during_deletion=False, retries=True,
            deadline=LONG, uses_store=True, build=_rehearse,
            dry_run_args={"from": "base", "to": "head", "sha256": "sha256:0",
                          "database": "alembic_rehearsal_0000000000_g0"}),
)


def dry_run_jobs(owner: Owner, spec: DatabaseMigrationSpec, *, operator_image: str,
                 store: StoreWiring | None) -> list[tuple[Role, V1Job]]:
    """The Jobs a run may create after its plan, with placeholder inputs, for the API server to validate before the
    run starts (server-side dry run); those that use the backup store only when there is one."""
    jobs: list[tuple[Role, V1Job]] = []
    for role in ROLES.values():
        if role.dry_run_args is None or (role.uses_store and store is None):
            continue
        if role.name == "rehearse" and scratch_server(spec) is None:
            continue  # no rehearsal without a scratch server
        args = {**role.dry_run_args, "lockKey": "0", "instance": "dry-run"}
        if store and role.uses_store:
            args.setdefault("file", store.placeholder())
        jobs.append((role.name, build_job(role.name, owner, spec, operator_image=operator_image, args=args,
                                          store=store)))
    return jobs
