"""The DatabaseMigrationSet API (v1alpha1) as pydantic models: one migration, many databases, rolled out in waves.

A set is a template (a DatabaseMigration's spec without its database) and its targets (Secrets holding a database
URL: listed, or chosen by a label selector). It owns one DatabaseMigration per target, so everything a
DatabaseMigration does (plan, approval, backup, rollback, gate, drift, reasons) stays as it is; the set only decides
when each one gets the template (:mod:`.strategy`). ``crdgen`` turns these models into
``crds/databasemigrationsets.yaml``, like :mod:`..api` into the DatabaseMigration's CRD.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated

from pydantic import Field, ValidationError

from ..api import (
    EMPTY_DEFAULT,
    SECRET_KEY,
    Condition,
    DatabaseMigrationSpec,
    JsonObject,
    LabelValue,
    NotificationDelivery,
    NotificationRecord,
    SecretKeyRef,
    SpecError,
    Time,
    _problems,
    _SpecModel,
    _StatusModel,
)

__all__ = [
    "DatabaseMigrationSetSpec",
    "DatabaseMigrationSetStatus",
    "FailedTarget",
    "MigrationTemplate",
    "PlanGroup",
    "SetCounts",
    "SetNotificationRecord",
    "Strategy",
    "parse_set_spec",
    "parse_set_status",
]

WAVE_PATTERN = r"^([1-9][0-9]{0,5}|([1-9][0-9]?|100)%)$"
"""A wave's end: a number of targets ("20") or a share of them ("10%"), counted from the first target."""


def _template_body(body: dict[str, object]) -> None:
    """The class body of MigrationTemplate: every field of a DatabaseMigration's spec but its database, with its own
    description and default (written once there, so the two never drift apart)."""
    fields = {name: info for name, info in DatabaseMigrationSpec.model_fields.items() if name != "database"}
    body["__annotations__"] = {name: info.annotation for name, info in fields.items()}
    body["__doc__"] = ("What every DatabaseMigration of the set runs: a DatabaseMigration's spec without "
                       "spec.database (each target brings its own).")
    body["__module__"] = __name__
    body.update(fields)


if TYPE_CHECKING:
    class MigrationTemplate(_SpecModel):
        """Its fields are DatabaseMigrationSpec's but database (built below, at run time)."""
else:
    MigrationTemplate = types.new_class("MigrationTemplate", (_SpecModel,), exec_body=_template_body)


class LabelSelector(_SpecModel):
    """Secrets in the set's namespace whose labels match every pair."""

    match_labels: dict[str, LabelValue] = Field(
        min_length=1,
        description="Label pairs a Secret must all carry, e.g. {tenants.example.com/db: main}. Required.",
    )


class Targets(_SpecModel):
    """The databases of the set: Secrets holding a SQLAlchemy URL, listed, chosen by labels, or both."""

    secrets: list[SecretKeyRef] = Field(
        default_factory=list,
        max_length=5000,
        description="Secret keys, each holding one database's URL. Optional.",
    )
    selector: LabelSelector | None = Field(
        default=None,
        description=("Every Secret of the namespace with these labels is a target (its key `key`): a new tenant's "
                     "Secret labelled later is migrated by the set at once, without a new rollout. Optional."),
    )
    key: str = Field(
        default="url",
        min_length=1,
        max_length=253,
        pattern=SECRET_KEY,
        description='The key of the selected Secrets that holds the URL. Default "url".',
    )


class Canary(_SpecModel):
    """The first wave: a few targets migrated alone; nothing else starts until every one of them is Ready."""

    count: int = Field(
        default=0,
        ge=0,
        le=1000,
        description=("How many canaries: those whose Secret matches `selector` first, then the first targets by "
                     "Secret name. Default 0: no canary wave."),
    )
    selector: LabelSelector | None = Field(
        default=None, description="Secrets with these labels are the canaries (at most `count` of them). Optional.",
    )


class Strategy(_SpecModel):
    """How the set rolls a template out over its targets."""

    canary: Canary = Field(default_factory=Canary, description="The canary wave. Default: none.",
                           json_schema_extra=EMPTY_DEFAULT)
    waves: list[Annotated[str, Field(pattern=WAVE_PATTERN)]] = Field(
        default_factory=lambda: ["100%"],
        min_length=1,
        max_length=20,
        description=('Where each wave ends, counted from the first target (canaries included): a number of targets '
                     '("20") or a share of them ("10%"), increasing. A wave starts once every target before it is '
                     'Ready (or failed within the budget); the last wave always reaches every target. Default '
                     '["100%"].'),
        json_schema_extra={"default": ["100%"]},
    )
    max_in_flight: int = Field(
        default=10,
        ge=1,
        le=1000,
        description="At most this many targets migrating at once (planning, waiting for approval, running). "
                    "Default 10.",
    )
    failure_budget: int = Field(
        default=1,
        ge=1,
        le=100000,
        description=("Once this many targets have failed, no more target starts and the set is Stalled "
                     "(FailureBudgetSpent), naming them. Default 1."),
    )
    paused: bool = Field(
        default=False,
        description="While true, no target starts (those under way finish). Default false.",
    )


class DatabaseMigrationSetSpec(_SpecModel):
    """The desired state: one template, many databases, and how to roll it out."""

    template: MigrationTemplate = Field(
        description=("The spec of every DatabaseMigration of the set, without spec.database. Changing it starts a "
                     "new rollout, wave by wave. Required."),
    )
    targets: Targets = Field(description="The databases: Secrets holding their URLs. Required.")
    strategy: Strategy = Field(default_factory=Strategy, description="Canaries, waves, cap, failure budget, pause.",
                               json_schema_extra=EMPTY_DEFAULT)


# --- status -----------------------------------------------------------------------------------------------------


class SetCounts(_StatusModel):
    """How many targets are where."""

    total: int = Field(default=0, description="Targets of the set.")
    pending: int = Field(default=0, description="Not started on the current template.")
    migrating: int = Field(default=0, description="Planning, backing up, migrating or rolling back.")
    awaiting_approval: int = Field(default=0, description="Waiting for their plan's approval.")
    ready: int = Field(default=0, description="Ready at the current template.")
    failed: int = Field(default=0, description="Failed or Stalled on the current template.")


class FailedTarget(_StatusModel):
    """A target that failed: its DatabaseMigration says more (kubectl dbm status, kubectl describe dbm)."""

    target: str = Field(description="The target's Secret.")
    migration: str = Field(description="Its DatabaseMigration.")
    canary: bool = Field(default=False, description="Whether it is a canary.")
    reason: str = Field(description="Its Stalled reason, e.g. JobFailed.")
    message: str = Field(default="", description="Its message (first part).")


class PlanGroup(_StatusModel):
    """Targets waiting for approval of one plan: one approval (its hash) fits all of them."""

    hash: str = Field(description="The plan's hash: approve it once for the whole set with the annotation "
                      "migrations.alembic-operator.io/approve: <hash> on the set (several hashes: comma-separated; "
                      "kubectl dbm approve --set NAME), or on each DatabaseMigration.")
    count: int = Field(description="How many targets wait for this plan.")
    migrations: list[str] = Field(default_factory=list, description="Their DatabaseMigrations (the first few).")
    # --- one approval for the set (setapproval) ---
    approved_by: str | None = Field(default=None, description="Who approved this plan for the whole set (the "
                                    "webhook's record): its targets go on.")


class SetNotificationRecord(NotificationRecord):
    """A notification of the set (notify/), instead of one per DatabaseMigration: a plan its members wait for (one
    per plan hash), or the end of a rollout (Succeeded, or Failed naming the failed targets)."""

    waiting: int = Field(default=0, ge=0, description="AwaitingApproval: how many of the set's DatabaseMigrations "
                         "waited for this plan when it was recorded.")
    migrations: list[str] = Field(default_factory=list, description="The DatabaseMigrations it is about (the first "
                                  "few): those waiting for the plan, or those that failed.")
    deliveries: dict[str, NotificationDelivery] = Field(
        default_factory=dict, description="By webhook: operator (the chart's) and resource "
        "(spec.template.notifications, the members' own).")


class DatabaseMigrationSetStatus(_StatusModel):
    """The observed state of the rollout, written by the operator."""

    observed_generation: int = Field(default=-1, description="The metadata.generation the operator last acted on.")
    template_hash: str | None = Field(default=None, description="Hash of the template being rolled out.")
    wave: int | None = Field(default=None, description="The wave reached (0: the canaries, when there are any).")
    waves: int | None = Field(default=None, description="How many waves this rollout has.")
    wave_name: str | None = Field(default=None, description='The wave reached, for humans: "canary", "2/3".')
    counts: SetCounts = Field(default_factory=SetCounts, description="Targets per state.")
    failed: list[FailedTarget] = Field(default_factory=list, description="Failed targets (the first 50).")
    plans: list[PlanGroup] = Field(default_factory=list, description="Plans waiting for approval, one per hash.")
    retried: str | None = Field(default=None, description="The last retry annotation acted on.")
    message: str | None = Field(default=None, description="The rollout in one sentence.")
    updated_at: Time | None = Field(default=None, description="When the counts last changed.")
    notifications: dict[str, SetNotificationRecord] | None = Field(
        default=None,
        description=("The set's notifications due or sent (newest few), by id: a plan its DatabaseMigrations wait "
                     "for, and the end of a rollout, announced once for the set (they announce neither of their own; "
                     "their failures and drift are theirs). Written only by the notifier."),
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description=("kstatus conditions: Ready (every target Ready at the template), Reconciling (a rollout under "
                     "way), Stalled (the failure budget is spent, a canary failed, or every start waits for "
                     "approval; the message names the targets)."),
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


def parse_set_spec(spec: object) -> DatabaseMigrationSetSpec:
    """Validate a set's ``.spec`` (camelCase, as read from the API), raising :class:`~..api.SpecError`."""
    if not isinstance(spec, Mapping):
        raise SpecError([f"spec: must be an object, not {type(spec).__name__}"])
    try:
        return DatabaseMigrationSetSpec.model_validate(dict(spec))
    except ValidationError as err:
        raise SpecError(_problems(err, "spec")) from None


def parse_set_status(status: object) -> DatabaseMigrationSetStatus:
    return DatabaseMigrationSetStatus.model_validate(dict(status) if isinstance(status, Mapping) else {})


def template_json(spec: DatabaseMigrationSetSpec) -> JsonObject:
    """The template as Kubernetes JSON (defaults filled in): what each DatabaseMigration's spec is made of."""
    return spec.template.model_dump(mode="json", by_alias=True, exclude_none=True)

