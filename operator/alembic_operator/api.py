"""The DatabaseMigration API (v1alpha1) as pydantic models: the one source of truth for the CRD.

``crdgen`` turns these models into the CustomResourceDefinition (``crds/databasemigrations.yaml``) and the field
reference (``docs/crd-reference.md``); every field's description is what ``kubectl explain`` shows, so it is written
for the user. The operator reads objects with :func:`parse_spec` / :func:`parse_status` and writes status with
:func:`dump`.

Conventions:

* Python attributes are snake_case; the Kubernetes names are camelCase aliases (either is accepted on input).
* The spec is strict: unknown fields and wrong types (``"5"`` for an integer) are refused, as the API server does.
* Every optional section of the spec defaults to ``{}`` so its own defaults apply when it is omitted.
* Rules spanning several fields are declared once in :data:`SPEC_RULES`: the CRD gets them as CEL
  ``x-kubernetes-validations`` and :class:`DatabaseMigrationSpec` checks them in Python with the same message.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from kubernetes.client.models.v1_volume import V1Volume
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    JsonValue,
    PlainSerializer,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

from . import k8s_openapi
from .constants import WAIT_FOR_LABEL, Phase  # status.phase: its values are fixed by the contract
from .jobparts import typed

__all__ = [
    "DEFAULT_FRESHNESS_INTERVAL",
    "MAX_NAME_LENGTH",
    "MIN_DRIFT_INTERVAL",
    "MIN_FRESHNESS_INTERVAL",
    "NAME_RULE",
    "SPEC_RULES",
    "BackupSpec",
    "BackupStatus",
    "Condition",
    "CoreV1",
    "CrossFieldRule",
    "DatabaseMigrationSpec",
    "DatabaseMigrationStatus",
    "DatabaseSpec",
    "HistoryEntry",
    "JobTemplateSpec",
    "MigrationsSpec",
    "ObjectRule",
    "Phase",
    "PlanFinding",
    "PlanStatus",
    "RehearsalSpec",
    "RehearsalStatus",
    "RehearsedLock",
    "RehearsedRevision",
    "RollbackStrategy",
    "RunRecord",
    "RunStatus",
    "S3Spec",
    "SpecError",
    "Time",
    "dump",
    "name_problem",
    "parse_spec",
    "parse_status",
    "written",
]

# --- shared pieces ------------------------------------------------------------------------------------------------

JsonObject = dict[str, JsonValue]
"""A JSON object whose members are arbitrary JSON: a Kubernetes type passed through as it is, a JSON Schema."""


class _FreeForm:
    """Annotates a JsonObject field the CRD leaves free-form (with PRESERVE_UNKNOWN): its members' schema is not
    JsonValue's (which a structural schema cannot say) but any."""

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        out = handler(schema)
        out["additionalProperties"] = True
        return out


FreeObject = Annotated[JsonObject, _FreeForm()]


RollbackStrategy = Literal["Auto", "Downgrade", "Restore", "None"]
ImagePullPolicy = Literal["Always", "IfNotPresent", "Never"]
ConditionStatus = Literal["True", "False", "Unknown"]


def _rfc3339(value: datetime) -> str:
    """metav1.Time's form: UTC, whole seconds, "Z" (a naive datetime is taken as UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


Time = Annotated[datetime, PlainSerializer(_rfc3339, return_type=str, when_used="json")]
"""A timestamp in status: any RFC 3339 time is read; written (``dump``) as metav1.Time writes it."""

# RFC 1123 subdomain (Secret, ServiceAccount names) and a Secret data key, as Kubernetes validates them.
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SECRET_KEY = r"^[-._a-zA-Z0-9]+$"
# "head" or an Alembic revision id. Alembic's own ids are 12 hex digits, but `alembic revision --rev-id` accepts any
# word ("0001_initial" is common); alembic_version.version_num is VARCHAR(32). A "-" or "+" would make it relative
# ("head-1"), "@" a branch: neither is a fixed target, so both are refused.
REVISION_PATTERN = r"^[A-Za-z0-9_]+$"
REVISION_MAX_LENGTH = 32
# metav1.Condition's own constraints.
CONDITION_TYPE_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)
CONDITION_REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
# A label value, as Kubernetes validates it (pods' labels, node selectors).
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
LABEL_VALUE_MAX_LENGTH = 63
LabelValue = Annotated[str, StringConstraints(max_length=LABEL_VALUE_MAX_LENGTH, pattern=LABEL_VALUE_PATTERN)]
"""A label value: at most 63 characters, alphanumeric at both ends, ``-_.`` inside; the API server refuses others."""

MAX_NAME_LENGTH = LABEL_VALUE_MAX_LENGTH
"""Longest DatabaseMigration name: it is the value of the pods' ``wait-for`` label (a label value)."""
DURATION_MS_PATTERN = r"^([0-9]{1,6}h)?([0-9]{1,6}m)?([0-9]{1,6}s)?([0-9]{1,6}ms)?$"
"""A duration down to milliseconds ("3s", "500ms", "1m30s"): hours, minutes, seconds, milliseconds, in that order."""
DEFAULT_DB_LOCK_TIMEOUT = "3s"
"""spec.migrations.lockTimeout: a few seconds, the usual convention (every query on a table waits behind a schema
change that waits for a lock)."""
MIN_DRIFT_INTERVAL = 10
"""Seconds; the shortest spec.driftCheck.interval (a drift check is a Job: hourly is the sensible production value)."""
DEFAULT_FRESHNESS_INTERVAL = "5m"
"""spec.freshnessCheck.interval: how often a settled resource re-reads its database's revision by default."""
MIN_FRESHNESS_INTERVAL = 10
"""Seconds; the shortest spec.freshnessCheck.interval."""

PRESERVE_UNKNOWN: JsonObject = {"x-kubernetes-preserve-unknown-fields": True}
"""json_schema_extra for a free-form object (a Kubernetes type the operator passes through untouched)."""

EMPTY_DEFAULT: JsonObject = {"default": {}}
"""json_schema_extra for a spec section: the API server fills in ``{}`` and then the section's own defaults."""


class _SpecModel(BaseModel):
    """Spec models: camelCase aliases, unknown fields and loose types refused (as the API server does)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        strict=True,
        frozen=True,
    )


class _StatusModel(BaseModel):
    """Status models: camelCase aliases; unknown fields ignored so that an older operator can read a newer status."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


# --- spec -------------------------------------------------------------------------------------------------------


class SecretKeyRef(_SpecModel):
    """A key of a Secret in the DatabaseMigration's namespace."""

    name: str = Field(
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description=(
            "Name of the Secret, in the same namespace as this DatabaseMigration. Required. Example: shop-db. "
            "The operator and its Jobs read it; its value never appears in status, Events, logs or Job specs."
        ),
    )
    key: str = Field(
        min_length=1,
        max_length=253,
        pattern=SECRET_KEY,
        description="Key inside the Secret whose value is the database URL. Required. Example: url.",
    )


class DatabaseSpec(_SpecModel):
    """The database to migrate."""

    url_secret_ref: SecretKeyRef = Field(
        description=(
            "The Secret key holding the SQLAlchemy URL of the database, e.g. "
            "postgresql+psycopg://user:password@host:5432/shop or mysql+pymysql://user:password@host:3306/shop. "
            "Required. Use a role that may change the schema."
        ),
    )


class MigrationsSpec(_SpecModel):
    """Where the Alembic migration scripts are: the application's own image."""

    image: str = Field(
        min_length=1,
        max_length=1024,
        pattern=r"^\S+$",
        description=(
            "The application's container image, holding alembic.ini, env.py, the versions/ directory and the "
            "models env.py imports. Required. Pin a tag or digest that matches the app being deployed, "
            "e.g. ghcr.io/acme/shop:1.4.2. Plan, migrate and downgrade Jobs run in this image."
        ),
    )
    config: str = Field(
        default="alembic.ini",
        min_length=1,
        max_length=4096,
        description=(
            "Path of the Alembic configuration file inside the image, relative to workingDir or absolute. "
            'Default "alembic.ini". Example: /app/alembic.ini.'
        ),
    )
    working_dir: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description=(
            "Working directory of the migration Jobs' container (where alembic runs, and what relative paths in "
            "alembic.ini are resolved against). Default: the image's WORKDIR. Example: /app."
        ),
    )
    image_pull_policy: ImagePullPolicy | None = Field(
        default=None,
        description=(
            "Pull policy for the image: Always, IfNotPresent or Never. Default: Kubernetes' own "
            "(Always for :latest or no tag, otherwise IfNotPresent)."
        ),
    )
    lock_timeout: str = Field(
        default=DEFAULT_DB_LOCK_TIMEOUT,
        min_length=1,
        max_length=32,
        pattern=DURATION_MS_PATTERN,
        description=(
            "How long any statement of a migration or downgrade may wait for a lock, e.g. "
            f'"{DEFAULT_DB_LOCK_TIMEOUT}", "500ms", "1m" (PostgreSQL lock_timeout, set on the session env.py uses). '
            "Default "
            f'"{DEFAULT_DB_LOCK_TIMEOUT}". While a schema change waits for a lock, every query on that table queues '
            "behind it: a short wait keeps the app serving. A migration that times out changed nothing; it is "
            "retried with backoff (Reconciling, reason LockTimeout, naming the sessions that held the lock), then "
            'Stalled with reason LockTimeout. "0s": wait without limit (not recommended).'
        ),
    )
    statement_timeout: str | None = Field(
        default=None,
        min_length=1,
        max_length=32,
        pattern=DURATION_MS_PATTERN,
        description=(
            'How long any statement of a migration or downgrade may run, e.g. "5m" (PostgreSQL statement_timeout, '
            "set on the session env.py uses); a statement cancelled by it fails the migration, which is rolled back "
            "as usual. Default: unset, the session's own (the server's, the role's). A revision opts out for a "
            'long backfill with op.execute("SET LOCAL statement_timeout = 0") (until its transaction ends).'
        ),
    )


@dataclass(frozen=True)
class StoreField:
    """Marks a field of `BackupSpec` as a backup store's: the spec names one store through exactly one such field,
    and the store with that ``spec_field`` (``backupstores/``) wires the backup and restore Jobs."""

    hint: str
    """What to set it to, for the message when no store is set (``a volume source, e.g. ...``)."""


# --- the S3 backup store (backupstores/s3.py) -----------------------------------------------------------------------

S3_BUCKET_PATTERN = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
S3_PREFIX_PATTERN = r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$"
# No user information (user:password@) in an endpoint: credentials come from a Secret or the workload identity only.
S3_ENDPOINT_PATTERN = r"^https?://[A-Za-z0-9.\[\]:-]+(/)?$"
S3_REGION_PATTERN = r"^[a-z0-9-]{1,32}$"
IAM_ROLE_ARN_PATTERN = r"^arn:[a-z-]+:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]{1,512}$"


class S3SecretKeys(_SpecModel):
    """Static S3 keys, from a Secret in the DatabaseMigration's namespace."""

    name: str = Field(
        min_length=1, max_length=253, pattern=DNS_SUBDOMAIN,
        description=("Name of the Secret holding the keys, in the same namespace. Required. The Jobs read it "
                     "through secretKeyRef; no key appears in status, Events, logs or Job specs."),
    )
    access_key_id_key: str = Field(
        default="AWS_ACCESS_KEY_ID", min_length=1, max_length=253, pattern=SECRET_KEY,
        description="The Secret's key holding the access key id. Default AWS_ACCESS_KEY_ID.",
    )
    secret_access_key_key: str = Field(
        default="AWS_SECRET_ACCESS_KEY", min_length=1, max_length=253, pattern=SECRET_KEY,
        description="The Secret's key holding the secret access key. Default AWS_SECRET_ACCESS_KEY.",
    )
    session_token_key: str | None = Field(
        default=None, min_length=1, max_length=253, pattern=SECRET_KEY,
        description="The Secret's key holding a session token, for temporary keys. Default: none.",
    )


class S3WebIdentity(_SpecModel):
    """Credentials from the Jobs' ServiceAccount (IRSA and other OIDC web-identity federation): no static key."""

    role_arn: str = Field(
        min_length=1, max_length=600, pattern=IAM_ROLE_ARN_PATTERN,
        description=("The IAM role the Jobs assume with their ServiceAccount's token "
                     "(AssumeRoleWithWebIdentity), e.g. arn:aws:iam::123456789012:role/shop-backups. Required. Its "
                     "trust policy must name the cluster's OIDC issuer and the ServiceAccount of "
                     "spec.jobTemplate.serviceAccountName (default: the namespace's default)."),
    )
    audience: str = Field(
        default="sts.amazonaws.com", min_length=1, max_length=253,
        description="The audience of the projected ServiceAccount token. Default sts.amazonaws.com.",
    )
    expiration_seconds: int = Field(
        default=3600, ge=600, le=86400,
        description="Lifetime of the projected token, in seconds (the kubelet renews it). Default 3600.",
    )


class S3CABundle(_SpecModel):
    """A CA bundle (PEM) that signs the endpoint's certificate, from a Secret or a ConfigMap."""

    kind: Literal["Secret", "ConfigMap"] = Field(
        description="Where the bundle is: Secret or ConfigMap (in the DatabaseMigration's namespace). Required.",
    )
    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN,
                      description="Name of the Secret or ConfigMap. Required.")
    key: str = Field(default="ca.crt", min_length=1, max_length=253, pattern=SECRET_KEY,
                     description="The key holding the PEM bundle. Default ca.crt.")


class S3Encryption(_SpecModel):
    """Server-side encryption of the objects the Jobs write."""

    algorithm: Literal["AES256", "aws:kms", "aws:kms:dsse"] = Field(
        description="AES256 (keys managed by the store), aws:kms or aws:kms:dsse (a KMS key). Required.",
    )
    kms_key_id: str | None = Field(
        default=None, min_length=1, max_length=2048,
        description="With aws:kms: the KMS key id or ARN. Default: the bucket's (or the account's) default key.",
    )


class S3Spec(_SpecModel):
    """An S3 bucket (AWS S3 or any server speaking its API): dumps are streamed to it, never kept locally."""

    bucket: str = Field(
        min_length=3, max_length=63, pattern=S3_BUCKET_PATTERN,
        description="The bucket, e.g. shop-backups. Required. It must exist: the Jobs never create it.",
    )
    prefix: str | None = Field(
        default=None, min_length=1, max_length=512, pattern=S3_PREFIX_PATTERN,
        description=("A key prefix, e.g. prod/db (no leading or trailing slash). A resource's dumps are under "
                     "s3://<bucket>/<prefix>/<namespace>/<name>/. Default: none."),
    )
    endpoint: str | None = Field(
        default=None, min_length=1, max_length=512, pattern=S3_ENDPOINT_PATTERN,
        description=("The S3 API's URL for S3-compatible servers (MinIO, SeaweedFS, Ceph RGW, R2...), e.g. "
                     "https://s3.example.internal:9000 (scheme, host and port only; no credentials). Default: "
                     "AWS S3's endpoint of the region."),
    )
    region: str | None = Field(
        default=None, min_length=1, max_length=32, pattern=S3_REGION_PATTERN,
        description=("The bucket's region, e.g. eu-west-1 (requests are signed for it). Default us-east-1. A "
                     "wrong one fails the backup as BackupStoreWrongRegion, naming the bucket's region."),
    )
    force_path_style: bool | None = Field(
        default=None,
        description=("Address the bucket in the path (https://host/bucket/key) rather than as a host name "
                     "(https://bucket.host/key). Default: true when endpoint is set, false on AWS S3."),
    )
    ca_bundle: S3CABundle | None = Field(
        default=None,
        description=("The CA bundle that signs the endpoint's TLS certificate (a private CA): mounted into the "
                     "backup and restore Jobs. Default: the operator image's public CAs."),
    )
    credentials: S3SecretKeys | None = Field(
        default=None,
        description=("Static keys from a Secret. Set this or webIdentity; with neither, the Jobs use the AWS SDK's "
                     "default chain (e.g. the node's instance profile)."),
    )
    web_identity: S3WebIdentity | None = Field(
        default=None,
        description=("Credentials from the Jobs' ServiceAccount (IRSA-style web identity): the Jobs get a projected "
                     "ServiceAccount token and assume roleArn with it; no static key anywhere."),
    )
    server_side_encryption: S3Encryption | None = Field(
        default=None,
        description="Server-side encryption of the dumps and their records. Default: the bucket's default.",
    )


class BackupSpec(_SpecModel):
    """The backup taken before a migration runs, restored if the migration destroys data and fails."""

    enabled: bool = Field(
        default=True,
        description=(
            "Take a backup of the database before each migration. Default true. Needs volume or s3. Turn it off only "
            "for databases you can rebuild: without a backup, rollback can only downgrade."
        ),
    )
    volume: Annotated[
        FreeObject | None, StoreField("a volume source, e.g. {persistentVolumeClaim: {claimName: my-backups}}")
    ] = Field(
        default=None,
        min_length=1,
        max_length=1,
        description=(
            "Where backups are written: one Kubernetes volume source (the part of a pod volume after its name), "
            "e.g. {persistentVolumeClaim: {claimName: shop-backups}}; nfs, csi and others work too. Required when "
            "enabled is true. It must outlive the Jobs' pods: use a PersistentVolumeClaim in production "
            "(ReadWriteMany, or ReadWriteOnce if the Jobs can share a node), never emptyDir."
        ),
        json_schema_extra=PRESERVE_UNKNOWN,
    )
    s3: Annotated[S3Spec | None, StoreField("an S3 bucket, e.g. {bucket: shop-backups, region: eu-west-1}")] = Field(
        default=None,
        description=(
            "Where backups are written instead of a volume: an S3 bucket (AWS S3 or an S3-compatible server). Dumps "
            "are streamed to it as they are produced, with their sha256 and size, and count as backups only once "
            "complete and verified. Set volume or s3 when enabled is true."
        ),
    )
    retain: int = Field(
        default=5,
        ge=1,
        le=1000,
        description=(
            "How many backups of this DatabaseMigration to keep on the volume: the newest N are kept, older ones "
            "deleted after a successful backup. Default 5, minimum 1."
        ),
    )

    @field_validator("volume")
    @classmethod
    def _a_volume_source(cls, volume: JsonObject | None) -> JsonObject | None:
        """The CRD takes any object here (a volume source has dozens of kinds): what Kubernetes would not read as
        one (a misspelt kind, which the API server would drop and default to an emptyDir) is refused here."""
        if volume is not None:
            try:
                typed(V1Volume, {"name": "backups", **volume})
            except ValidationError as err:
                problem = err.errors()[0]
                where = ".".join(str(p) for p in problem["loc"])
                raise ValueError(f"not a Kubernetes volume source: {where}: {problem['msg']}") from None
        return volume

    def store(self) -> tuple[str, object] | None:
        """(field name, its value) of the store this spec names; None when it names none."""
        chosen = [(name, value) for name in store_fields() if (value := getattr(self, name)) is not None]
        return chosen[0] if chosen else None


def store_fields() -> dict[str, StoreField]:
    """The fields of `BackupSpec` that name a backup store, by (Python) name: one per kind of store."""
    return {name: marker for name, info in BackupSpec.model_fields.items()
            for marker in info.metadata if isinstance(marker, StoreField)}


def _store_rules() -> tuple[CrossFieldRule, ...]:
    """Backups need a store (and, when there are several kinds, exactly one): derived from the store fields, so a
    new kind of store is one new field."""
    fields = {to_camel(name): marker for name, marker in store_fields().items()}
    has = [f"has(self.backup.{field})" for field in fields]
    set_one = " or ".join(f"spec.backup.{field} to {marker.hint}" for field, marker in fields.items())
    named = ", ".join(f"spec.backup.{field}" for field in fields)
    rules = [CrossFieldRule(
        rule="!self.backup.enabled || " + " || ".join(has),
        message=(
            f"{named + ' is required' if len(fields) == 1 else 'spec.backup needs one of ' + named} when "
            f"spec.backup.enabled is true (the default): set {set_one}, or set spec.backup.enabled: false to migrate "
            "without backups"
        ),
        field_path=f".backup.{next(iter(fields))}" if len(fields) == 1 else ".backup",
        reason="FieldValueRequired",
        check=lambda spec: not spec.backup.enabled or spec.backup.store() is not None,
    )]
    if len(fields) > 1:
        rules.append(CrossFieldRule(
            rule=f"[{', '.join(has)}].filter(x, x).size() <= 1",
            message=f"spec.backup: set only one of {named}: backups go to one store",
            field_path=".backup",
            reason="FieldValueInvalid",
            check=lambda spec: sum(getattr(spec.backup, name) is not None for name in store_fields()) <= 1,
        ))
    return tuple(rules)


class RollbackSpec(_SpecModel):
    """What the operator does when a migration Job fails."""

    strategy: RollbackStrategy = Field(
        default="Auto",
        description=(
            "What to do when the migration fails. Default Auto. "
            "Auto: read the database; if it is still at the starting revision nothing more runs; if revisions "
            "were committed and none destroyed data, downgrade to the starting revision (keeps rows written since "
            "the backup); otherwise, or if the downgrade fails, restore the backup. "
            "Downgrade: only run alembic downgrade to the starting revision. "
            "Restore: only restore the backup (needs backup.enabled). "
            "None: do nothing but report. "
            "After a rollback the resource is Failed with condition RolledBack=True."
        ),
    )


class ApprovalSpec(_SpecModel):
    """Whether data-losing changes may run without a human."""

    allow_destructive: bool = Field(
        default=False,
        description=(
            "Let plans with data-losing operations (DROP TABLE, DROP COLUMN, TRUNCATE, column type changes...) run "
            "without approval. Default false: such a plan stops in AwaitingApproval until this is true or the "
            "resource is annotated migrations.alembic-operator.io/approve=<status.plan.hash> (approves exactly "
            "that plan)."
        ),
    )
    require_for_locking: bool = Field(
        default=False,
        description=(
            "Also hold plans with locking operations (CREATE INDEX without CONCURRENTLY, SET NOT NULL, a type "
            "change that rewrites the table, ADD FOREIGN KEY without NOT VALID, a rename... on an existing table: "
            "status.plan.locking) until the resource is annotated migrations.alembic-operator.io/approve="
            "<status.plan.hash>. Default false: they are reported and run. allowDestructive does not approve them."
        ),
    )
    require_rehearsal: bool = Field(
        default=False,
        description=(
            "A plan that needs approval is approved only once a rehearsal of exactly that plan (status.plan.hash) "
            "passed (spec.rehearsal): the run rehearses first, then waits in AwaitingApproval with the rehearsal's "
            "measures in status.rehearsal, and takes a fresh backup once approved. Default false."
        ),
    )
    require_different_user: bool | None = Field(
        default=None,
        description=(
            "The four-eyes rule: the user who approves a plan (the approve annotation) must not be the user who last "
            "changed the spec, as recorded by the operator's admission webhook. The chart's "
            "approval.requireDifferentUser turns it on for every resource (then false here does not turn it off). "
            "Approving at all needs the 'approve' verb on databasemigrations (the chart's ClusterRole "
            "alembic-operator-approver)."
        ),
    )


class LocalObjectReference(_SpecModel):
    """A reference to an object in the same namespace, by name."""

    name: str = Field(
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="Name of the object (here: a Secret of type kubernetes.io/dockerconfigjson). Example: ghcr-pull.",
    )


@dataclass(frozen=True)
class CoreV1:
    """Annotates a field as a core/v1 type: the CRD carries Kubernetes' own schema for it (vendored in
    :mod:`alembic_operator.k8s_openapi`), the model refuses what that schema refuses (so that an object stored before
    the schema was there is refused by the operator as the API server now would), and the field reference names the
    type instead of listing Kubernetes' fields."""

    name: str

    @property
    def schema(self) -> JsonObject:
        return k8s_openapi.definition(self.name)

    def check(self, value: JsonObject) -> JsonObject:
        if problems := k8s_openapi.validate(k8s_openapi.vendored()["definitions"][self.name], value):
            raise k8s_openapi.K8sSchemaError(problems)
        return value

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_after_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return self.schema


ResourceRequirements = Annotated[JsonObject, CoreV1("ResourceRequirements")]
Toleration = Annotated[JsonObject, CoreV1("Toleration")]
Affinity = Annotated[JsonObject, CoreV1("Affinity")]
EnvVar = Annotated[JsonObject, CoreV1("EnvVar")]
PodSecurityContext = Annotated[JsonObject, CoreV1("PodSecurityContext")]
SecurityContext = Annotated[JsonObject, CoreV1("SecurityContext")]


class JobTemplateSpec(_SpecModel):
    """Settings applied to the pod of every Job the operator runs (plan, backup, migrate, downgrade, restore)."""

    service_account_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description=(
            "ServiceAccount the Jobs' pods run as. Default: the namespace's default ServiceAccount. "
            "Example: shop-migrator. The Jobs need no Kubernetes API permissions."
        ),
    )
    resources: ResourceRequirements | None = Field(
        default=None,
        description=(
            "Compute resources of the Jobs' container (a core/v1 ResourceRequirements), "
            'e.g. {requests: {cpu: 100m, memory: 256Mi}, limits: {memory: 1Gi}}; quote fractions: cpu: "0.5". '
            "Default: none."
        ),
    )
    node_selector: dict[str, LabelValue] = Field(
        default_factory=dict,
        max_length=64,
        description=(
            "Node labels the Jobs' pods must run on, e.g. {kubernetes.io/arch: amd64}; values are label values. "
            "Default: any node."
        ),
    )
    tolerations: list[Toleration] = Field(
        default_factory=list,
        max_length=64,
        description=(
            "Tolerations of the Jobs' pods (core/v1 Toleration), "
            "e.g. [{key: dedicated, operator: Equal, value: batch, effect: NoSchedule}]. Default: none."
        ),
    )
    affinity: Affinity | None = Field(
        default=None,
        description="Affinity of the Jobs' pods (a core/v1 Affinity), e.g. to run next to the database. Default: none.",
    )
    image_pull_secrets: list[LocalObjectReference] = Field(
        default_factory=list,
        max_length=16,
        description="Secrets used to pull the image from a private registry, e.g. [{name: ghcr-pull}]. Default: none.",
    )
    active_deadline_seconds: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Longest time, in seconds, a Job may run before Kubernetes stops it (and the run counts as failed). "
            "Must be greater than 0. Default: no limit. Example: 900."
        ),
    )
    env: list[EnvVar] = Field(
        default_factory=list,
        max_length=128,
        description=(
            "Extra environment variables of the Jobs' container (core/v1 EnvVar), for settings that the "
            "application's env.py or models need at import time, e.g. [{name: APP_ENV, value: production}]. "
            "Default: none. The database URL is provided by the operator from database.urlSecretRef."
        ),
    )
    pod_labels: dict[str, LabelValue] = Field(
        default_factory=dict,
        max_length=64,
        description=(
            "Labels added to the Jobs' pods, e.g. for network policies: {app.kubernetes.io/part-of: shop}. "
            "Values are label values: at most 63 characters, letters, digits and -_. (alphanumeric at both ends). "
            "Default: none. The operator's own labels (migrations.alembic-operator.io/*) take precedence."
        ),
    )
    pod_annotations: dict[str, str] = Field(
        default_factory=dict,
        max_length=64,
        description=(
            'Annotations added to the Jobs\' pods, e.g. {sidecar.istio.io/inject: "false"} (a sidecar that never '
            "exits keeps a Job from finishing). Default: none."
        ),
    )
    pod_security_context: PodSecurityContext | None = Field(
        default=None,
        description=(
            "Security context of the Jobs' pods (a core/v1 PodSecurityContext), merged over the operator's: "
            "runAsNonRoot: true and seccompProfile RuntimeDefault on every Job, fsGroup: 65532 on the backup and "
            "restore Jobs (so the operator's user may write the backup volume on volume types that apply fsGroup: CSI,"
            " local, most; not hostPath or in-tree nfs, which need a directory writable by 65532). The app's "
            "containers run as the image's own USER, which must be a non-zero number (USER 10001): the operator never "
            "guesses a uid for your image. An image whose USER is root (or missing) or a name (USER app, which the "
            "kubelet cannot check) stops the run (Stalled, reason ImageRunsAsRoot) within 30 s of its Job's creation; "
            "without rebuilding it, set runAsUser here to a non-zero uid that can read the app's files (for USER app, "
            "the uid of app: id -u app in the image), and runAsGroup when that uid has no entry in the image's "
            "/etc/passwd (otherwise its group is 0). Set here, runAsUser applies to the app's containers only: the "
            "operator's own keep 65532. Default: the operator's settings above."
        ),
    )
    security_context: SecurityContext | None = Field(
        default=None,
        description=(
            "Security context of every container of the Jobs (a core/v1 SecurityContext), merged over the "
            "operator's: allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}, runAsNonRoot: true and "
            "seccompProfile RuntimeDefault (Pod Security 'restricted'), plus runAsUser/runAsGroup 65532 and "
            "readOnlyRootFilesystem on the operator's own containers (runner installer, scan, backup, restore). "
            "The app's containers get no runAsUser: they run as the image's numeric non-root USER (see "
            "podSecurityContext). A runAsUser set here applies to the operator's containers too (e.g. where the "
            "cluster assigns uids per namespace); to run only the app's containers as another user, set "
            "podSecurityContext.runAsUser. Default: the operator's settings above."
        ),
    )


def _spec_schema_extra(schema: JsonObject) -> None:
    """Attach the cross-field rules to the spec's JSON schema (as the CRD's CEL validations)."""
    schema["x-kubernetes-validations"] = [rule.cel() for rule in SPEC_RULES]


class DriftCheckSpec(_SpecModel):
    """How often the operator checks the live schema for drift."""

    interval: str | None = Field(
        default=None,
        pattern=r"^([0-9]{1,6}h)?([0-9]{1,6}m)?([0-9]{1,6}s)?$",  # 6 digits each: within what CEL duration() parses
        max_length=16,
        description=(
            f'How often to check, as a duration such as "30m", "1h" or "1h30m" (at least {MIN_DRIFT_INTERVAL}s). '
            "Unset or empty: no drift checks. Checks run only while the resource is Ready."
        ),
    )


class FreshnessCheckSpec(_SpecModel):
    """How often a settled resource re-reads its database's revision (to notice DatabaseChanged)."""

    interval: str = Field(
        default=DEFAULT_FRESHNESS_INTERVAL,
        pattern=r"^([0-9]{1,6}h)?([0-9]{1,6}m)?([0-9]{1,6}s)?$",
        min_length=2,
        max_length=16,
        description=(
            "How often the operator re-reads the revision of the database of a resource whose run is over (Ready, "
            f'or Failed), as a duration such as "5m" or "1h" (at least {MIN_FRESHNESS_INTERVAL}s; default '
            f"{DEFAULT_FRESHNESS_INTERVAL}). Each check waits the interval plus up to 10 % more (spread, so that "
            "many resources do not read at once); resources on one database share a read. A change made outside "
            "the operator (DatabaseChanged, TargetContained) shows within one interval (and 10 %). With "
            "spec.driftCheck on, a drift check also reads the revision. Nothing else makes a settled resource "
            "open a database session."
        ),
    )


def duration_milliseconds(text: str | None) -> int | None:
    """ "3s" -> 3000, "1m30s" -> 90000, "500ms" -> 500; None or "" -> None (spec.migrations' timeouts)."""
    if not text:
        return None
    match = re.fullmatch(DURATION_MS_PATTERN, text)
    if not match:
        raise ValueError(f"not a duration: {text!r}")
    hours, minutes, seconds, millis = (int((x or "0").rstrip("hms")) for x in match.groups())
    return ((hours * 60 + minutes) * 60 + seconds) * 1000 + millis


def duration_seconds(text: str | None) -> int | None:
    """ "1h30m" -> 5400; None or "" -> None."""
    if not text:
        return None
    match = re.fullmatch(r"(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?", text)
    if not match:
        raise ValueError(f"not a duration: {text!r}")
    hours, minutes, seconds = (int(x or 0) for x in match.groups())
    return hours * 3600 + minutes * 60 + seconds


# --- rehearsal (issue 25): the plan run first on a scratch copy of the backup -------------------------------------


class RehearsalSpec(_SpecModel):
    """Run the plan on a scratch copy of the database (restored from this run's backup) before production."""

    enabled: bool | None = Field(
        default=None,
        description=(
            "Rehearse every migration: after the backup, restore it into a scratch database, run the plan there "
            "with the same image, settings and timeouts, measure each revision, drop the scratch database; a "
            "rehearsal that fails stops the run before production is touched (Stalled, RehearsalFailed). Unset: "
            "the chart's rehearsal.enabled (default false). Needs spec.backup.enabled, and urlSecretRef or "
            "onProductionServer."
        ),
    )
    url_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description=(
            "A Secret key holding a SQLAlchemy URL of the server where scratch databases are created and dropped "
            "(any database on it: postgres, or none on MariaDB). Its role needs CREATEDB (PostgreSQL) or CREATE "
            "and DROP on alembic_rehearsal_% (MySQL/MariaDB), and the server room for one copy of the database "
            "(docs/rehearsal.md)."
        ),
    )
    on_production_server: bool = Field(
        default=False,
        description=(
            "Without urlSecretRef: create the scratch database on production's own server, with "
            "spec.database.urlSecretRef's credentials (which then need CREATEDB). Default false: it shares the "
            "server's disk, memory and I/O with production while it runs."
        ),
    )
    max_backup_bytes: int | None = Field(
        default=None,
        ge=0,
        description=(
            "The size guard: when the run's backup is larger than this many bytes, the rehearsal is skipped "
            "(overLimit Skip: the migration goes on, condition Rehearsed=False RehearsalSkipped) or the run stops "
            "(overLimit Refuse: Stalled, RehearsalTooLarge). Unset: no limit."
        ),
        json_schema_extra={"format": "int64"},
    )
    over_limit: Literal["Skip", "Refuse"] = Field(
        default="Skip", description="What a backup over maxBackupBytes does: Skip (default) or Refuse.")


class RehearsedLock(_StatusModel):
    """A lock the rehearsal's migration session held or waited for (sampled from the server while it ran)."""

    on: str = Field(description="What was locked: a table (schema.table) or another object.")
    mode: str = Field(description="The lock's mode as the server names it (AccessExclusiveLock, SHARED_UPGRADABLE...).")
    held_seconds: float | None = Field(default=None, description="How long it was held (from first to last seen).")
    waited_seconds: float | None = Field(default=None, description="How long it was waited for.")


class RehearsedRevision(_StatusModel):
    """What one revision did on the scratch copy."""

    revision: str = Field(description="The revision id.")
    seconds: float | None = Field(default=None, description="Its wall time on the scratch copy.")
    rows: int | None = Field(default=None, description="Rows its statements touched, where the server says so "
                             "(UPDATE/INSERT/DELETE; ALTER TABLE on MySQL/MariaDB).")
    locks: list[RehearsedLock] = Field(default_factory=list, description="The longest-held locks it took.")


class RehearsalStatus(_StatusModel):
    """The last rehearsal of this resource's plan (spec.rehearsal)."""

    result: Literal["Running", "Passed", "Failed", "Skipped"] | None = Field(
        default=None, description="Running, Passed, Failed (the run stopped before production) or Skipped.")
    plan_hash: str | None = Field(default=None, description="The plan it rehearsed (status.plan.hash).")
    generation: int | None = Field(default=None, description="The metadata.generation it ran for.")
    seconds: float | None = Field(default=None, description="The plan's wall time on the scratch copy.")
    revisions: list[RehearsedRevision] = Field(default_factory=list, description="Each revision's measures.")
    failed_revision: str | None = Field(default=None, description="The revision that failed.")
    message: str | None = Field(default=None, description="What happened (the database's error when it failed).")
    finished_at: Time | None = Field(default=None, description="When it ended (RFC 3339).")
    scratch_database: str | None = Field(
        default=None, description="The scratch database that may exist now; dropped once the rehearsal Job ends.")
    migration_seconds: float | None = Field(
        default=None, description="The real migration's duration afterwards, to compare with the rehearsal's.")
# --- expand/contract (issue 24) -------------------------------------------------------------------------------------
DEFAULT_OLD_VERSION_TIMEOUT = "30m"


class ContractSpec(_SpecModel):
    """How a plan's contract part waits for the older version of the app (revisions marked phase = "contract")."""

    old_version_timeout: str = Field(
        default=DEFAULT_OLD_VERSION_TIMEOUT,
        pattern=r"^([0-9]{1,6}h)?([0-9]{1,6}m)?([0-9]{1,6}s)?$",
        min_length=2,
        max_length=16,
        description=(
            "How long the contract part may wait for the pods of the older version (pods labelled "
            "migrations.alembic-operator.io/wait-for with this resource whose revision the contract part would "
            "break, and pods of older ReplicaSets or StatefulSet revisions of the gated workloads) before the "
            f'resource turns Stalled (OldVersionStillRunning); it keeps waiting. A duration such as "30m" (default '
            f"{DEFAULT_OLD_VERSION_TIMEOUT}) or \"2h\"."
        ),
    )


# --- notifications (issue 26: webhook notifications, notify/) ----------------------------------------------------

NotificationFormat = Literal["Slack", "CloudEvents"]
NotificationType = Literal["AwaitingApproval", "Succeeded", "Failed", "DriftDetected"]
NOTIFICATION_TYPES: tuple[NotificationType, ...] = ("AwaitingApproval", "Succeeded", "Failed", "DriftDetected")
DeliveryState = Literal["Pending", "Delivered", "Expired"]


class NotificationsSpec(_SpecModel):
    """A webhook of this resource's own, told when the resource needs a human or a run ends (besides the chart's)."""

    url_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description=(
            "A key of a Secret in this namespace whose value is the webhook's URL (a Slack incoming webhook, or any "
            "HTTP(S) endpoint). Unset: only the operator-wide webhook (the chart's notifications.*), if any. The URL "
            "never appears in status, Events, logs or the notifications themselves."
        ),
    )
    token_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="A key of a Secret in this namespace whose value is sent as 'Authorization: Bearer <token>'.",
    )
    format: NotificationFormat = Field(
        default="CloudEvents",
        description=(
            "Slack (a Slack-compatible JSON message: text and blocks) or CloudEvents (a CloudEvents 1.0 event in "
            "structured mode, application/cloudevents+json). Default CloudEvents."
        ),
    )
    events: list[NotificationType] | None = Field(
        default=None,
        max_length=4,
        description=(
            "Which notifications this webhook gets: AwaitingApproval (a plan waits for approval), Succeeded, Failed "
            "(failed, and how it was rolled back), DriftDetected. Unset: all four."
        ),
    )


class PlanPart(_StatusModel):
    """One part of a plan split at its first contract revision (phase = "contract" in the revision file)."""

    revisions: list[str] = Field(default_factory=list, description="Its revisions, in the order they run.")
    from_revision: str | None = Field(default=None, description="Where it starts (base: an empty database).")
    to_revision: str | None = Field(default=None, description="Where it ends.")
    destructive: list[str] = Field(default_factory=list, description="Its data-losing operations (first ones).")


class PartRecord(_StatusModel):
    """One part of a finished run (history, run records): expand, then contract."""

    part: Literal["expand", "contract"] = Field(description="expand or contract.")
    from_: str | None = Field(default=None, alias="from", description="Where it started.")
    to: str | None = Field(default=None, description="Where it ended (or aimed).")
    started_at: Time | None = Field(default=None, description="When its Job was started.")
    finished_at: Time | None = Field(default=None, description="When it was applied.")


class ContractStatus(_StatusModel):
    """Where a plan split into expand and contract parts is (status.contract): the story of the run."""

    generation: int | None = Field(default=None, description="The metadata.generation of the run.")
    state: Literal["Expanding", "WaitingForOldVersion", "Contracting", "Contracted", "Failed"] = Field(
        description="Expanding (the expand part runs), WaitingForOldVersion (applied; the older version's pods "
                    "still run), Contracting, Contracted, or Failed.")
    from_revision: str | None = Field(default=None, description="Where the expand part started (empty: base).")
    expand_to: str | None = Field(default=None, description="The last expand revision: the new version's pods are "
                                  "released once the database is there.")
    target: str | None = Field(default=None, description="The end of the contract part (the run's target).")
    expand_started_at: Time | None = Field(default=None, description="When the expand part's Job was started.")
    expanded_at: Time | None = Field(default=None, description="When the expand part was applied.")
    waiting_since: Time | None = Field(default=None, description="Since when the contract part waits for the older "
                                       "version's pods.")
    deadline: Time | None = Field(default=None, description="When the wait turns Stalled (spec.contract."
                                  "oldVersionTimeout); it goes on waiting.")
    older_pods: list[str] = Field(default_factory=list, description="The older version's pods still there (first "
                                  "20), each as name (workload, the revision it needs).")
    older_pod_count: int | None = Field(default=None, ge=0, description="How many there are.")
    older_workloads: list[str] = Field(default_factory=list, description="Their workloads, e.g. Deployment/shop.")
    old_version_gone_at: Time | None = Field(default=None, description="When the last of them was seen gone.")
    contract_started_at: Time | None = Field(default=None, description="When the contract Job was started.")
    contracted_at: Time | None = Field(default=None, description="When the contract part was applied.")

    def parts(self) -> list[PartRecord]:
        """Both parts with their timestamps (the contract part once it started), for history and run records."""
        out = [PartRecord(part="expand", from_=self.from_revision or "base", to=self.expand_to or "base",
                          started_at=self.expand_started_at, finished_at=self.expanded_at)]
        if self.contract_started_at is not None or self.contracted_at is not None:
            out.append(PartRecord(part="contract", from_=self.expand_to or "base", to=self.target,
                                  started_at=self.contract_started_at, finished_at=self.contracted_at))
        return out


class NotificationDelivery(_StatusModel):
    """The delivery of one notification to one webhook."""

    state: DeliveryState = Field(description="Pending (to send, or to retry), Delivered, or Expired (given up).")
    attempts: int = Field(default=0, ge=0, description="Attempts so far.")
    next_attempt_at: Time | None = Field(default=None, description="When a Pending one is tried (again).")
    delivered_at: Time | None = Field(default=None, description="When the webhook accepted it (a 2xx).")
    error: str | None = Field(default=None, description="Why the last attempt failed (an HTTP status, an error "
                              "class: never the URL).")


class NotificationRecord(_StatusModel):
    """A notification due for this resource: what it says (kept here, so it is sent as first seen, exactly once per
    webhook, whatever happens to the operator meanwhile), and its delivery to each webhook."""

    type: NotificationType = Field(description="AwaitingApproval, Succeeded, Failed or DriftDetected.")
    occurred_at: Time = Field(description="When the condition began (RFC 3339).")
    generation: int | None = Field(default=None, description="The metadata.generation it concerns.")
    summary: str = Field(description="One line for humans.")
    from_: str | None = Field(default=None, alias="from", description="The revision the run started at.")
    to: str | None = Field(default=None, description="The revision the run aimed at.")
    duration_seconds: int | None = Field(default=None, description="How long the run took.")
    reason: str | None = Field(default=None, description="The CamelCase reason.")
    message: str | None = Field(default=None, description="The status message at the time (trimmed).")
    plan_hash: str | None = Field(default=None, description="The plan waiting for approval.")
    findings: list[str] = Field(default_factory=list, description="The plan's first findings, or the first "
                                "differences of a drift check.")
    rollback: str | None = Field(default=None, description="What was done about a failed run.")
    commands: list[str] = Field(default_factory=list, description="What to run next (kubectl dbm ...).")
    deliveries: dict[str, NotificationDelivery] = Field(
        default_factory=dict, description="By webhook: operator (the chart's) and resource (spec.notifications).")


class DatabaseMigrationSpec(_SpecModel):
    """The desired state: which database, which migration scripts, which revision, and how to do it safely."""

    model_config = ConfigDict(json_schema_extra=_spec_schema_extra)

    database: DatabaseSpec = Field(description="The database to migrate. Required.")
    migrations: MigrationsSpec = Field(
        description="The Alembic migration scripts: the application's image and where alembic.ini is. Required.",
    )
    target_revision: str = Field(
        min_length=1,
        max_length=REVISION_MAX_LENGTH,
        pattern=REVISION_PATTERN,
        description=(
            'The revision the database should be at: "head" (the newest revision in the image) or a revision id '
            "such as 9d81aa02c4f5 (letters, digits and underscores, at most 32). Required. It must be the "
            "database's revision or a newer one: an older one stalls with DowngradeNotSupported (the operator only "
            "upgrades; a failed upgrade is rolled back for you). Changing it (or the image) starts a new run."
        ),
    )
    suspend: bool = Field(
        default=False,
        description=(
            "Stop starting new work: while true, no new plan, backup or migration Job is started (one already "
            "running is finished). Default false. Useful during maintenance."
        ),
    )
    backup: BackupSpec = Field(
        default_factory=BackupSpec,
        description="The backup taken before each migration. Default: enabled, which needs backup.volume.",
        json_schema_extra=EMPTY_DEFAULT,
    )
    rollback: RollbackSpec = Field(
        default_factory=RollbackSpec,
        description="What happens when a migration fails. Default: strategy Auto.",
        json_schema_extra=EMPTY_DEFAULT,
    )
    approval: ApprovalSpec = Field(
        default_factory=ApprovalSpec,
        description="Approval of data-losing changes. Default: they wait for approval.",
        json_schema_extra=EMPTY_DEFAULT,
    )
    job_template: JobTemplateSpec = Field(
        default_factory=JobTemplateSpec,
        description="Pod settings for every Job the operator runs. Optional.",
        json_schema_extra=EMPTY_DEFAULT,
    )
    baseline: str | None = Field(
        default=None,
        min_length=1,
        max_length=REVISION_MAX_LENGTH,
        pattern=REVISION_PATTERN,
        description=(
            "Adopt a database that predates Alembic: when it has tables but no alembic_version table, stamp it at "
            "this revision (the one whose schema it already has) instead of running the migrations up to it; "
            "then migrate on to targetRevision as usual. Ignored once the database carries a revision. Recorded "
            "in status.history. Optional."
        ),
    )
    freshness_check: FreshnessCheckSpec = Field(
        default_factory=FreshnessCheckSpec,
        description=(
            "How often a resource whose run is over re-reads its database's revision. Default: every "
            f"{DEFAULT_FRESHNESS_INTERVAL}."
        ),
        json_schema_extra=EMPTY_DEFAULT,
    )
    rehearsal: RehearsalSpec = Field(
        default_factory=RehearsalSpec,
        description="Rehearse the plan on a scratch copy of the database first. Default: the chart's setting.",
        json_schema_extra=EMPTY_DEFAULT,
    )
    contract: ContractSpec = Field(
        default_factory=ContractSpec,
        description=(
            'Expand/contract: revisions marked phase = "contract" (a module attribute of the revision file) run '
            "only after the older version's pods are gone; this says how long that may take. Default: 30m."
        ),
        json_schema_extra=EMPTY_DEFAULT,
    )
    drift_check: DriftCheckSpec = Field(
        default_factory=DriftCheckSpec,
        description=(
            "Periodic comparison of the live database with the app's models and scripts (in the app's image). "
            "Differences set the Drifted condition, post an Event and a metric; the schema is never changed. "
            "A check that fails sets Drifted to Unknown (DriftCheckFailed) with a Warning Event. Default: off."
        ),
        json_schema_extra=EMPTY_DEFAULT,
    )
    notifications: NotificationsSpec = Field(
        default_factory=NotificationsSpec,
        description=(
            "A webhook of this resource's own for its notifications (a plan awaiting approval, a run that succeeded "
            "or failed, drift), besides the operator-wide one the chart configures. Default: none."
        ),
        json_schema_extra=EMPTY_DEFAULT,
    )

    @model_validator(mode="after")
    def _cross_field_rules(self) -> DatabaseMigrationSpec:
        for rule in SPEC_RULES:
            if not rule.check(self):
                raise ValueError(rule.message)
        return self


@dataclass(frozen=True)
class ObjectRule:
    """A CEL rule on the whole object (``self`` = the DatabaseMigration), for what the spec alone cannot say."""

    rule: str
    """CEL, evaluated with ``self`` = the object (or, for a `CrossFieldRule`, the spec after defaults)."""
    message: str
    """Names the field and the fix; shown by kubectl (and raised by :func:`parse_spec` for a spec rule)."""
    field_path: str
    """Where the API server reports the error."""
    reason: Literal["FieldValueInvalid", "FieldValueRequired", "FieldValueForbidden"]

    def cel(self) -> JsonObject:
        return {"rule": self.rule, "message": self.message, "fieldPath": self.field_path, "reason": self.reason}


@dataclass(frozen=True)
class CrossFieldRule(ObjectRule):
    """A rule over several spec fields: the CEL expression for the API server and the same check in Python."""

    check: Callable[[DatabaseMigrationSpec], bool]


SPEC_RULES: tuple[CrossFieldRule, ...] = (
    *_store_rules(),
    CrossFieldRule(  # the S3 store's credentials come from one place
        rule="!has(self.backup.s3) || !has(self.backup.s3.credentials) || !has(self.backup.s3.webIdentity)",
        message=("spec.backup.s3: set only one of credentials (static keys from a Secret) and webIdentity (the "
                 "ServiceAccount's identity)"),
        field_path=".backup.s3",
        reason="FieldValueInvalid",
        check=lambda spec: spec.backup.s3 is None or spec.backup.s3.credentials is None
        or spec.backup.s3.web_identity is None,
    ),
    CrossFieldRule(
        rule="self.rollback.strategy != 'Restore' || self.backup.enabled",
        message=(
            "spec.rollback.strategy Restore needs a backup: set spec.backup.enabled: true (with spec.backup.volume), "
            "or choose spec.rollback.strategy Auto, Downgrade or None"
        ),
        field_path=".rollback.strategy",
        reason="FieldValueInvalid",
        check=lambda spec: spec.rollback.strategy != "Restore" or spec.backup.enabled,
    ),
    CrossFieldRule(
        rule="!(self.targetRevision in ['heads', 'base'])",
        message=(
            'spec.targetRevision must be "head" or one revision id: "heads" is refused (merge the heads with '
            'alembic merge and target the merge revision) and so is "base" (it would remove the whole schema)'
        ),
        field_path=".targetRevision",
        reason="FieldValueInvalid",
        check=lambda spec: spec.target_revision not in ("heads", "base"),
    ),
    CrossFieldRule(
        # The pattern holds (CEL rules run after it), so duration() can parse the value.
        rule=(
            "!has(self.driftCheck.interval) || self.driftCheck.interval == '' || "
            f"duration(self.driftCheck.interval) >= duration('{MIN_DRIFT_INTERVAL}s')"
        ),
        message=(
            f"spec.driftCheck.interval must be at least {MIN_DRIFT_INTERVAL}s (each check runs a Job): "
            'use e.g. "30m" or "1h", or leave it unset for no drift checks'
        ),
        field_path=".driftCheck.interval",
        reason="FieldValueInvalid",
        check=lambda spec: (
            not spec.drift_check.interval or (duration_seconds(spec.drift_check.interval) or 0) >= MIN_DRIFT_INTERVAL
        ),
    ),
    CrossFieldRule(
        rule=("!has(self.freshnessCheck) || !has(self.freshnessCheck.interval) || "
              f"duration(self.freshnessCheck.interval) >= duration('{MIN_FRESHNESS_INTERVAL}s')"),
        message=(
            f"spec.freshnessCheck.interval must be at least {MIN_FRESHNESS_INTERVAL}s: "
            f'use e.g. "5m" (the default) or "1h"'
        ),
        field_path=".freshnessCheck.interval",
        reason="FieldValueInvalid",
        check=lambda spec: (duration_seconds(spec.freshness_check.interval) or 0) >= MIN_FRESHNESS_INTERVAL,
    ),
)

# spec.rehearsal (issue 25): a rehearsal restores the run's backup, on a server it is told about
SPEC_RULES = (
    *SPEC_RULES,
    CrossFieldRule(
        rule="!has(self.rehearsal) || !has(self.rehearsal.enabled) || !self.rehearsal.enabled || self.backup.enabled",
        message=("spec.rehearsal.enabled needs a backup to restore into the scratch database: set "
                 "spec.backup.enabled: true (with a backup store), or turn the rehearsal off"),
        field_path=".rehearsal.enabled",
        reason="FieldValueInvalid",
        check=lambda spec: not spec.rehearsal.enabled or spec.backup.enabled,
    ),
    CrossFieldRule(
        rule=("!has(self.rehearsal) || !has(self.rehearsal.enabled) || !self.rehearsal.enabled || "
              "has(self.rehearsal.urlSecretRef) || self.rehearsal.onProductionServer"),
        message=("spec.rehearsal.urlSecretRef is required by spec.rehearsal.enabled (a Secret key with the URL of "
                 "the server for its scratch databases), unless spec.rehearsal.onProductionServer is true"),
        field_path=".rehearsal.urlSecretRef",
        reason="FieldValueRequired",
        check=lambda spec: (not spec.rehearsal.enabled or spec.rehearsal.url_secret_ref is not None
                            or spec.rehearsal.on_production_server),
    ),
)


NAME_RULE = ObjectRule(
    rule=f"self.metadata.name.size() <= {MAX_NAME_LENGTH}",
    message=(
        f"metadata.name must be at most {MAX_NAME_LENGTH} characters: it is the value of the label "
        f"{WAIT_FOR_LABEL}=<name> that holds the application's pods, and label values are limited to "
        f"{MAX_NAME_LENGTH}; choose a shorter name"
    ),
    field_path=".metadata.name",
    reason="FieldValueInvalid",
)
"""Kubernetes allows 253 characters in a custom resource's name; the pod gate's label selector needs at most 63."""


def name_problem(name: str) -> str | None:
    """:data:`NAME_RULE` in Python, for objects stored before the CRD had it (the API server does not re-check them)."""
    return None if len(name) <= MAX_NAME_LENGTH else f"{NAME_RULE.message} ({len(name)} characters now)"


# --- status -----------------------------------------------------------------------------------------------------


class Condition(_StatusModel):
    """A metav1.Condition: one aspect of the resource's state, as kstatus, Flux, Argo CD and kubectl wait read it."""

    type: str = Field(
        max_length=316,
        pattern=CONDITION_TYPE_PATTERN,
        description=(
            "Kind of condition: Ready, Reconciling, Stalled, BackupSucceeded, Migrated, RolledBack or ApprovalRequired."
        ),
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    observed_generation: int | None = Field(
        default=None,
        ge=0,
        description="The metadata.generation this condition was set for; older means it is out of date.",
    )
    last_transition_time: Time = Field(
        description="When status last changed (RFC 3339).",
    )
    reason: str = Field(
        min_length=1,
        max_length=1024,
        pattern=CONDITION_REASON_PATTERN,
        description="Why, as a stable CamelCase word, e.g. Succeeded, JobFailed, DestructiveChangesNotApproved.",
    )
    message: str = Field(
        max_length=32768,
        description="What happened and what to do, for humans. Never holds database URLs or passwords.",
    )


class PlanSQL(_StatusModel):
    """Where the plan's rendered SQL is kept for reviewers (kubectl dbm plan shows it)."""

    config_map: str = Field(description="The ConfigMap (owned by this resource) holding the SQL, gzip JSON under "
                                        "binaryData plan.json.gz, one entry per revision in plan order.")
    job: str | None = Field(default=None, description="The plan Job whose log it came from.")
    sha256: str | None = Field(default=None, description="sha256 of the SQL as the plan scanned it: the plan hash "
                                                          "covers it, kubectl dbm plan checks it.")
    revisions: int | None = Field(default=None, ge=0, description="Revisions whose SQL is kept.")
    total: int | None = Field(default=None, ge=0, description="Revisions the plan rendered.")
    truncated: bool | None = Field(default=None, description="True when the SQL did not fit in a ConfigMap and only "
                                                             "the first revisions' is kept (the plan Job's log has it "
                                                             "all while the Job is kept).")


class PlanFinding(_StatusModel):
    """One locking operation of a plan."""

    operation: str = Field(description='What and where, e.g. "CREATE INDEX ix_orders_code ON orders (revision '
                           '9d81aa02c4f5)".')
    rule: str = Field(description="The scanner's rule, e.g. create-index-not-concurrently (docs/locking.md).")
    safely: str | None = Field(default=None, description="The safer way to do it.")


class PlanStatus(_StatusModel):
    """What a run does (or did): computed from the scripts in the image before anything runs."""

    revisions: list[str] = Field(
        default_factory=list,
        description="Revisions that run, in order (for a downgrade: the ones undone, newest first); all of them, "
                    "however long the plan.",
    )
    destructive: list[str] = Field(
        default_factory=list,
        description=(
            "Data-losing operations found in the SQL the plan emits, e.g. "
            '"DROP COLUMN orders.legacy_code (revision 9d81aa02c4f5)". Empty when there are none.'
        ),
    )
    warnings: list[str] = Field(
        default_factory=list,
        description=(
            "Operations that keep the data but may lock tables or break the running application, e.g. an index "
            "built without CONCURRENTLY, or a revision that could not be rendered offline. They need no approval."
        ),
    )
    locking: list[PlanFinding] | None = Field(
        default=None,
        description=(
            "The first locking operations (up to 5; lockingCount counts them all): each holds a strong lock on an "
            "existing table while it runs, or breaks the running app (a rename), with the safer pattern. Approval "
            "is needed only with spec.approval.requireForLocking."
        ),
    )
    locking_count: int | None = Field(default=None, ge=0, description="How many locking operations the plan has.")
    destructive_count: int | None = Field(
        default=None, ge=0,
        description="How many data-losing operations the plan has (destructive lists the first ones when a long "
                    "plan has more than status can hold; kubectl dbm plan lists them all).")
    warning_count: int | None = Field(default=None, ge=0, description="How many warnings the plan has.")
    notes: list[str] | None = Field(
        default=None,
        description=(
            "For the record, e.g. a column type change PostgreSQL does without a rewrite (varchar(250) -> text) "
            "or a VALIDATE CONSTRAINT that scans a table under a weak lock."
        ),
    )
    lineage: list[str] = Field(
        default_factory=list,
        description=(
            "The target revision and its newest ancestors (up to 50, newest first). A pod that waits for a revision "
            "(annotation migrations.alembic-operator.io/revision) is released once the database's revision is that "
            "one or a descendant of it."
        ),
    )
    hash: str | None = Field(
        default=None,
        description=(
            "Identity of this plan (sha256:<hex>): annotate the resource with "
            "migrations.alembic-operator.io/approve=<hash> to approve exactly this plan."
        ),
    )
    from_revision: str | None = Field(
        default=None,
        description="The database's revision the plan starts from (empty: an empty database).",
    )
    to_revision: str | None = Field(default=None, description="The revision the plan ends at.")
    generation: int | None = Field(default=None, description="The metadata.generation the plan was made for.")
    sql: PlanSQL | None = Field(default=None, description="The rendered SQL, kept for review.")
    contract_revisions: list[str] | None = Field(
        default=None, description='The revisions marked phase = "contract" among the plan\'s and the lineage\'s, '
        "newest first: a pod built for an older revision is held once the database is past one of them (pod gate).")
    expand: PlanPart | None = Field(default=None, description="The part that runs before the new version's pods are "
                                    "released: every revision before the first contract revision.")
    contract: PlanPart | None = Field(default=None, description="The part that runs once no pod of the older version "
                                      "runs: from the first contract revision on.")
    breaking: list[str] | None = Field(
        default=None, description="Operations of revisions not marked contract that drop or rename a table or "
        "column the running version uses (first ones): the plan waits for approval, like a destructive one.")
    breaking_count: int | None = Field(default=None, ge=0, description="How many such operations the plan has.")


class DriftStatus(_StatusModel):
    """The last drift check."""

    checked_at: Time | None = Field(default=None, description="When the last check finished (RFC 3339).")
    drifted: bool | None = Field(default=None, description="Whether the live database differs.")
    differences: list[str] = Field(
        default_factory=list,
        description="What differs (trimmed), e.g. 'add_column orders.note (TEXT)' or 'behind head: 2 pending'.",
    )


class BackupStatus(_StatusModel):
    """The newest backup taken for this resource."""

    location: str | None = Field(default=None, description="Where the backup is, a path on backup.volume.")
    size_bytes: int | None = Field(
        default=None,
        ge=0,
        description="Size of the backup file in bytes.",
        json_schema_extra={"format": "int64"},
    )
    sha256: str | None = Field(default=None, description="SHA-256 of the backup file, in hex.")
    revision: str | None = Field(default=None, description="The database's revision when the backup was taken.")
    completed_at: Time | None = Field(default=None, description="When the backup finished (RFC 3339).")


class HistoryEntry(_StatusModel):
    """One finished run."""

    generation: int | None = Field(default=None, description="The metadata.generation the run was for.")
    from_: str | None = Field(default=None, alias="from", description="The revision the database was at before.")
    to: str | None = Field(default=None, description="The revision the run aimed at.")
    result: str | None = Field(
        default=None,
        description="How it ended: Succeeded, Failed or RolledBack (the reason tells more).",
    )
    reason: str | None = Field(default=None, description="A CamelCase reason, as in the conditions.")
    started_at: Time | None = Field(default=None, description="When the run started (RFC 3339).")
    finished_at: Time | None = Field(default=None, description="When the run ended (RFC 3339).")
    backup: str | None = Field(default=None, description="Location of the backup taken for this run, if any.")
    plan_hash: str | None = Field(default=None, description="The hash of the plan the run carried out.")
    sql_config_map: str | None = Field(default=None, description="The ConfigMap that kept the SQL of that plan "
                                       "(status.plan.sql; pruned with the run's Jobs once two newer runs exist: the "
                                       "run's record keeps its sha256).")
    requested_by: str | None = Field(default=None, description="The user who last changed the spec before the run "
                                     "(recorded by the admission webhook).")
    approved_by: str | None = Field(default=None, description="Who approved its plan: a user (recorded by the "
                                    "webhook), spec.approval.allowDestructive, or the annotation when the webhook did "
                                    "not record a user.")
    parts: list[PartRecord] | None = Field(default=None, description="A plan split into expand and contract: each "
                                           "part, with its timestamps.")


class RunRecord(HistoryEntry):
    """The durable record of one finished run (audit.py): its history entry, and what the entry has no room for."""

    sequence: int = Field(default=1, description="Which run of its generation (1 first): names the record.")
    revisions: list[str] | None = Field(default=None, description="The revisions the run's plan ran, in order.")
    sql_sha256: str | None = Field(default=None, description="sha256 of the plan's SQL (its ConfigMap is pruned).")
    destructive: int | None = Field(default=None, description="How many data-losing operations the plan had.")
    image: str | None = Field(default=None, description="The migrations image the run used.")
    message: str | None = Field(default=None, description="The status message the run ended with.")
    rehearsal: RehearsalStatus | None = Field(default=None, description="The rehearsal of its plan, if any.")


RunStep = Literal["Planning", "AwaitingApproval", "BackingUp", "Rehearsing", "Migrating", "WaitingForOldVersion",
                  "RollingBack", "Done"]
"""Where a run is. From BackingUp to RollingBack it may write to the database (WRITING_STEPS): a new generation waits
for it to end; before that, a new generation replaces the run."""
WRITING_STEPS: frozenset[str] = frozenset({"BackingUp", "Rehearsing", "Migrating", "RollingBack"})
RunResult = Literal["Succeeded", "UpToDate", "Failed", "RolledBack"]


class RunBackup(_StatusModel):
    """The backup this run took: what a restore needs."""

    location: str | None = Field(default=None, description="Where it is, for humans (as in status.backup).")
    file: str | None = Field(default=None, description="Its path inside the backup volume, for the restore Job.")
    sha256: str | None = Field(default=None, description="Its checksum (sha256:<hex>), verified before a restore.")
    revision: str | None = Field(default=None, description="The database's revision when it was taken.")


class RunRollback(_StatusModel):
    """How a failed run is being undone."""

    mode: Literal["Downgrade", "Restore"] = Field(description="Downgrade (keeps newer rows) or Restore (the backup).")
    from_: str | None = Field(default=None, alias="from", description="Where the failed migration left the database.")
    committed: list[str] = Field(default_factory=list, description="Revisions this run committed: what is undone.")
    destroyed: list[str] = Field(default_factory=list, description="Those of them that destroy data.")
    downgrade_failure: str | None = Field(default=None, description="Why a downgrade failed (Auto then restores).")
    half_applied: str | None = Field(
        default=None, description="The revision the failed migration left half-applied: some of its statements "
        "committed (DDL is not transactional on MySQL/MariaDB) while the version table does not count it.")
    because: str | None = Field(default=None, description="Why this mode (Auto's choice, in words).")


class RunStatus(_StatusModel):
    """The operator's bookkeeping for the run under way, so that a restarted operator picks it up where it was.

    Every key is declared; unknown ones (a newer operator's) are kept as they are.
    """

    model_config = ConfigDict(extra="allow")

    generation: int | None = Field(default=None, description="The metadata.generation being worked on.")
    step: RunStep | None = Field(default=None, description="Where the run is (Done: finished, see result).")
    result: RunResult | None = Field(default=None, description="How a finished run ended.")
    spec: FreeObject | None = Field(
        default=None, description="The spec the run carries out (a later edit waits for the next run).",
        json_schema_extra=PRESERVE_UNKNOWN,
    )
    started_at: Time | None = Field(default=None, description="When the run started (RFC 3339).")
    start_revision: str | None = Field(
        default=None,
        description="The database's revision when the run started: where a rollback returns to.",
    )
    target_revision: str | None = Field(default=None, description="The resolved revision the run aims at.")
    revisions: list[str] | None = Field(default=None, description="The revisions the plan runs, in order.")
    destructive_revisions: list[str] | None = Field(
        default=None, description="Those that destroy data: committing one makes Auto restore rather than downgrade."
    )
    image: str | None = Field(default=None, description="The migrations image the run uses.")
    transactional_ddl: bool | None = Field(
        default=None, alias="transactionalDDL", description="Whether the database runs DDL in transactions (the "
        "plan says; false on MySQL/MariaDB, where a failed revision may be half-applied).")
    plan_hash: str | None = Field(default=None, description="Hash of the plan being carried out.")
    backup: RunBackup | None = Field(default=None, description="The backup this run took.")
    rollback: RunRollback | None = Field(default=None, description="How the failed run is being undone.")
    failure: str | None = Field(default=None, description="Why the migration failed (kept through the rollback).")
    requested_by: str | None = Field(default=None, description="The user who last changed the spec when the run "
                                     "started (recorded by the webhook).")
    approved_by: str | None = Field(default=None, description="Who approved the plan: a user (recorded by the "
                                    "webhook), or spec.approval.allowDestructive.")
    failure_reason: str | None = Field(default=None, description="What stopped the migration Job from outside "
                                       "(OOMKilled, PodDeleted...): the Stalled reason once the rollback is over.")
    instances: dict[str, int] | None = Field(
        default=None, description="Which Job of each role the run is on (0 first; one more per retry or re-plan)."
    )
    attempts: dict[str, int] | None = Field(default=None, description="Transient-failure retries so far, by role.")
    replans: int | None = Field(default=None, description="How often the run planned again (the database moved).")
    retry_at: Time | None = Field(default=None, description="When a Job that failed transiently starts again.")
    transient_since: Time | None = Field(default=None, description="Since when the database has been unreadable.")
    transient_retries: int | None = Field(default=None, description="Reads of an unreadable database so far.")
    baselined: bool | None = Field(default=None, description="spec.baseline was stamped in this run.")
    part: Literal["expand", "contract"] | None = Field(
        default=None, description="A plan split at its first contract revision: the part under way (its Jobs: "
        "migrate, then contract; revisions, start and target revision are the part's).")
    drift_job: str | None = Field(default=None, description="The last drift Job whose result was recorded.")
    database_key: str | None = Field(
        default=None, description="The database's identity (no secrets): runs on the same database queue."
    )
    jobs: dict[str, str] = Field(
        default_factory=dict,
        description="Names of the Jobs started for this run, by role (plan, backup, migrate, downgrade, restore).",
    )


class DatabaseMigrationStatus(_StatusModel):
    """The observed state, written by the operator."""

    observed_generation: int = Field(
        default=-1,
        description=(
            "The metadata.generation the operator last acted on; -1 until it has seen the resource. "
            "While it differs from metadata.generation, the resource is still being processed."
        ),
    )
    phase: Phase | None = Field(
        default=None,
        description=(
            "Where the current run is: Pending, Planning, AwaitingApproval, BackingUp, Migrating, RollingBack, "
            "Succeeded or Failed. Read the conditions for automation."
        ),
    )
    message: str | None = Field(
        default=None,
        description="What is happening or went wrong, and what to do, in one sentence.",
    )
    current_revision: str | None = Field(
        default=None,
        description="The revision in the database's alembic_version table, read by the operator (empty: none).",
    )
    target_revision: str | None = Field(
        default=None,
        description='The resolved target: spec.targetRevision with "head" resolved to a revision id.',
    )
    plan: PlanStatus | None = Field(default=None, description="What the current or last run does.")
    backup: BackupStatus | None = Field(default=None, description="The newest backup of this resource.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description=(
            "Standard conditions: Ready (at targetRevision for this generation), Reconciling (work under way), "
            "Stalled (needs a human; reason says why), BackupSucceeded, Migrated, RolledBack, ApprovalRequired."
        ),
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    history: list[HistoryEntry] = Field(
        default_factory=list,
        description="Finished runs, newest last (the operator keeps the last few).",
    )
    held_pods: int | None = Field(
        default=None,
        ge=0,
        description="Pods waiting for this migration (label migrations.alembic-operator.io/wait-for), still gated.",
    )
    drift: DriftStatus | None = Field(default=None, description="The last drift check (spec.driftCheck).")
    rehearsal: RehearsalStatus | None = Field(default=None, description="The last rehearsal (spec.rehearsal).")
    contract: ContractStatus | None = Field(default=None, description="A plan split into expand and contract parts "
                                            "(revisions marked phase = \"contract\"): where it is.")
    notifications: dict[str, NotificationRecord] | None = Field(
        default=None,
        description=(
            "Notifications due or sent (newest few), by id: what each says and its delivery to each webhook. "
            "Written only by the notifier, so a restarted operator or a new leader sends each exactly once."
        ),
    )
    run: RunStatus | None = Field(
        default=None,
        description="The operator's bookkeeping for the run under way. Not for users; may change between versions.",
        json_schema_extra=PRESERVE_UNKNOWN,
    )


# --- helpers ----------------------------------------------------------------------------------------------------


class SpecError(ValueError):
    """An invalid DatabaseMigration spec; ``problems`` holds one line per problem, each naming its field path."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid DatabaseMigration spec: " + "; ".join(problems))


def _path(loc: tuple[int | str, ...], root: str) -> str:
    out = root
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _problems(err: ValidationError, root: str) -> list[str]:
    problems = []
    for e in err.errors():
        if isinstance(e.get("ctx", {}).get("error"), k8s_openapi.K8sSchemaError):  # paths relative to the field
            problems += [_path(e["loc"], root) + p for p in e["ctx"]["error"].problems]
            continue
        if e["type"] == "value_error" and "error" in e.get("ctx", {}):
            msg = str(e["ctx"]["error"])  # our own rule messages name the field themselves
            problems.append(msg if not e["loc"] else f"{_path(e['loc'], root)}: {msg}")
            continue
        msg = {"extra_forbidden": "unknown field", "missing": "required field is missing"}.get(e["type"], e["msg"])
        problems.append(f"{_path(e['loc'], root)}: {msg}")
    return problems


def parse_spec(spec: object) -> DatabaseMigrationSpec:
    """Validate ``.spec`` of a DatabaseMigration (as read from the API: camelCase), raising :class:`SpecError`."""
    if not isinstance(spec, Mapping):  # kopf hands over a Mapping view (kopf.Spec), not a dict
        raise SpecError([f"spec: must be an object, not {type(spec).__name__}"])
    try:
        return DatabaseMigrationSpec.model_validate(dict(spec))
    except ValidationError as err:
        raise SpecError(_problems(err, "spec")) from None


def parse_status(status: object) -> DatabaseMigrationStatus:
    """Read ``.status`` (missing or empty gives the defaults); fields this version does not know are ignored."""
    return DatabaseMigrationStatus.model_validate(dict(status) if isinstance(status, Mapping) else {})


def dump(model: BaseModel) -> JsonObject:
    """A model as Kubernetes JSON: camelCase keys, RFC 3339 times, unset optional fields left out.

    In a merge patch a left-out key keeps its old value: to clear a status field, send it as ``None`` explicitly.
    """
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def written(status: DatabaseMigrationStatus) -> JsonObject:
    """The status as the operator writes it: what was read or set since, as :func:`dump` writes it. A default that
    was never set is not written (the merge patch would add it to every resource); a field set to ``None`` is left
    out, so the merge patch removes it."""
    return status.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_unset=True)
