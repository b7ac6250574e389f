"""Builders of the Jobs the operator runs. Pure functions: a spec in, a batch/v1 Job manifest out.

How a Job brings the app's scripts and our tools together
---------------------------------------------------------
The app's image holds alembic.ini, env.py, versions/ and the models (and the Python packages they import); only it
can render or run the migrations. The operator's image holds pg_dump/pg_restore, the SQL scanner and the runner.
Every Job that needs the app's scripts starts with an init container in the OPERATOR's image that writes one
self-contained file (`runner.pyz`: the runner package, stdlib + alembic + sqlalchemy, as a zipapp) into a shared
`emptyDir`; the app's image then runs `python /alembic-operator/runner.pyz <command>` in its own working directory.
The plan Job adds a last container in the operator's image that scans the SQL the runner rendered.

Results travel as JSON termination messages (a few KB at most); the database URL never appears in a Job: each
container reads it from the user's Secret through `secretKeyRef`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Literal

from . import constants as c
from .api import DatabaseMigrationSpec
from .runner.lock import database_lock_key

Role = Literal["plan", "backup", "migrate", "downgrade", "restore", "stamp", "drift"]
ROLES: tuple[Role, ...] = ("plan", "backup", "migrate", "downgrade", "restore", "stamp", "drift")

URL_ENV = "ALEMBIC_OPERATOR_DATABASE_URL"
WORK_DIR = "/alembic-operator"
RUNNER = f"{WORK_DIR}/runner.pyz"  # the runner package as one zipapp (runner/build.py)
PLAN_DIR = f"{WORK_DIR}/plan"
BACKUP_MOUNT = "/backups"
OPERATOR_UID = 65532
# A Job that never starts (image pull errors, unschedulable) must still end: defaults per role, in seconds.
DEFAULT_DEADLINES: dict[Role, int] = {"plan": 600, "backup": 6 * 3600, "migrate": 6 * 3600,
                                      "downgrade": 6 * 3600, "restore": 6 * 3600, "stamp": 600, "drift": 600}
LOCK_TIMEOUT_SECONDS = 600


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
    (r"volumes\[", "spec.backup.volume"),
    (r"containers\[\d+\]\.image|imagePullPolicy", "spec.migrations"),
))


def source_field(message: str) -> str | None:
    """The DatabaseMigration field behind a Job field named in an API server message (None: not ours to say)."""
    return next((field for pattern, field in SOURCE_FIELDS if pattern.search(message)), None)


def lock_key(database_key: str) -> int:
    """The PostgreSQL advisory lock key of a database: a signed 64-bit integer derived from its identity."""
    return database_lock_key(database_key)


def backup_dir(owner: Owner) -> str:
    return f"{BACKUP_MOUNT}/{owner.namespace}/{owner.name}"


def describe_volume(volume: dict[str, Any] | None) -> str:
    """A human name for the backup volume, used in status.backup.location (no secrets live in volume sources)."""
    if not volume:
        return "volume"
    if "persistentVolumeClaim" in volume:
        return f"pvc/{volume['persistentVolumeClaim'].get('claimName', '?')}"
    if "hostPath" in volume:
        return f"hostPath:{volume['hostPath'].get('path', '?')}"
    kind = next(iter(volume))
    return re.sub(r"[^A-Za-z0-9]", "", kind) or "volume"


def _env(spec: DatabaseMigrationSpec) -> list[dict[str, Any]]:
    ref = spec.database.url_secret_ref
    env: list[dict[str, Any]] = [
        {"name": URL_ENV, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
    ]
    return env + [dict(e) for e in spec.job_template.env]


def _container_security(spec: DatabaseMigrationSpec, ours: bool) -> dict[str, Any]:
    sc: dict[str, Any] = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if ours:
        # Our image runs as this user; the app's image runs as its own (non-root) USER.
        sc.update(runAsUser=OPERATOR_UID, runAsGroup=OPERATOR_UID, readOnlyRootFilesystem=True)
    if spec.job_template.security_context:
        sc.update(spec.job_template.security_context)
    return sc


def _container(
    name: str, image: str, command: list[str], spec: DatabaseMigrationSpec, *, ours: bool,
    mounts: list[dict[str, Any]], working_dir: str | None = None, pull_policy: str | None = None,
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": name,
        "image": image,
        "command": command,
        "env": _env(spec) if name != "runner" else [],
        "volumeMounts": mounts,
        "securityContext": _container_security(spec, ours),
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if name != "runner":
        # Scratch space on the Job's emptyDir, not on /tmp: our containers have a read-only root filesystem, and
        # the app's image keeps its own /tmp as it is (its files, even its virtualenv, may live there).
        container["env"] += [{"name": "HOME", "value": WORK_DIR}, {"name": "TMPDIR", "value": WORK_DIR}]
    if not any(m["name"] == "work" for m in mounts):
        container["volumeMounts"] = [*mounts, {"name": "work", "mountPath": WORK_DIR}]
    if working_dir:
        container["workingDir"] = working_dir
    if pull_policy:
        container["imagePullPolicy"] = pull_policy
    if spec.job_template.resources:
        container["resources"] = dict(spec.job_template.resources)
    return container


def build_job(
    role: Role,
    owner: Owner,
    spec: DatabaseMigrationSpec,
    *,
    operator_image: str,
    args: dict[str, str],
) -> dict[str, Any]:
    """The Job manifest for one step of a run. `args` carries the step's inputs (revisions, backup file...)."""
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
    work = {"name": "work", "mountPath": WORK_DIR}
    backups = {"name": "backups", "mountPath": BACKUP_MOUNT}
    app_image = spec.migrations.image
    app_dir = spec.migrations.working_dir
    pull = spec.migrations.image_pull_policy
    config = spec.migrations.config
    install = _container("runner", operator_image, ["alembic-operator", "job", "install-runner", RUNNER], spec,
                         ours=True, mounts=[work])
    init: list[dict[str, Any]] = []
    containers: list[dict[str, Any]]
    volumes: list[dict[str, Any]] = [{"name": "work", "emptyDir": {}}]

    if role == "plan":
        init = [install, _container(
            "plan", app_image,
            ["python", RUNNER, "plan", "--config", config, "--target", args["target"], "--out", PLAN_DIR],
            spec, ours=False, mounts=[work], working_dir=app_dir, pull_policy=pull)]
        containers = [_container("scan", operator_image, ["alembic-operator", "job", "scan", "--plan-dir", PLAN_DIR],
                                 spec, ours=True, mounts=[work])]
    elif role in ("migrate", "downgrade"):
        verb = "upgrade" if role == "migrate" else "downgrade"
        init = [install]
        containers = [_container(
            role, app_image,
            ["python", RUNNER, verb, "--config", config, "--from", args["from"], "--to", args["to"],
             "--lock-key", args["lockKey"], "--lock-timeout", str(LOCK_TIMEOUT_SECONDS)],
            spec, ours=False, mounts=[work], working_dir=app_dir, pull_policy=pull)]
    elif role in ("stamp", "drift"):
        command = ["python", RUNNER, role, "--config", config]
        if role == "stamp":
            command += ["--revision", args["revision"]]
        init = [install]
        containers = [_container(role, app_image, command, spec, ours=False, mounts=[work], working_dir=app_dir,
                                 pull_policy=pull)]
    elif role == "backup":
        volumes.append({"name": "backups", **(spec.backup.volume or {"emptyDir": {}})})
        containers = [_container(
            "backup", operator_image,
            ["alembic-operator", "job", "backup", "--dir", backup_dir(owner), "--prefix", owner.name,
             "--retain", str(spec.backup.retain),
             "--location-prefix", f"{describe_volume(spec.backup.volume)}/{owner.namespace}/{owner.name}"],
            spec, ours=True, mounts=[backups])]
    elif role == "restore":
        volumes.append({"name": "backups", **(spec.backup.volume or {"emptyDir": {}})})
        containers = [_container(
            "restore", operator_image,
            ["alembic-operator", "job", "restore", "--file", args["file"], "--sha256", args["sha256"]],
            spec, ours=True, mounts=[backups])]
    else:  # pragma: no cover - Role is a closed set
        raise ValueError(f"unknown job role {role!r}")

    tmpl = spec.job_template
    pod_security: dict[str, Any] = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    if role in ("backup", "restore"):
        pod_security["fsGroup"] = OPERATOR_UID  # so our non-root user can write to the backup volume
    if tmpl.pod_security_context:
        pod_security.update(tmpl.pod_security_context)
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,  # the Jobs never call the Kubernetes API
        "securityContext": pod_security,
        "initContainers": init,
        "containers": containers,
        "volumes": volumes,
    }
    if tmpl.service_account_name:
        pod_spec["serviceAccountName"] = tmpl.service_account_name
    if tmpl.node_selector:
        pod_spec["nodeSelector"] = dict(tmpl.node_selector)
    if tmpl.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in tmpl.tolerations]
    if tmpl.affinity:
        pod_spec["affinity"] = dict(tmpl.affinity)
    if tmpl.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s.name} for s in tmpl.image_pull_secrets]

    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": owner.namespace,
            "labels": labels,
            "ownerReferences": [{
                "apiVersion": c.API_VERSION, "kind": c.KIND, "name": owner.name, "uid": owner.uid,
                "controller": True, "blockOwnerDeletion": True,
            }],
        },
        "spec": {
            # Kubernetes never retries a migration blindly: one pod, and a failure is a failure.
            "backoffLimit": 0,
            "activeDeadlineSeconds": tmpl.active_deadline_seconds or DEFAULT_DEADLINES[role],
            "template": {
                "metadata": {"labels": {**tmpl.pod_labels, **labels}, "annotations": dict(tmpl.pod_annotations)},
                "spec": pod_spec,
            },
        },
    }
