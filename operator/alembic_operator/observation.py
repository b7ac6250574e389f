"""What the operator observed of one DatabaseMigration, its Jobs and its database: the input of `reconcile.decide`.

Model layer, so the seams that read a database (`engines`, `dbstate`) build a `DatabaseObservation` without
depending on the decisions made from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Literal

from .api import DatabaseMigrationSpec, DatabaseMigrationStatus, JsonObject, SpecError, parse_spec
from .constants import JOB_RETRY_BACKOFF, Role
from .objects import Pod, Workload
from .reasons import Reason
from .runner.results import JobResult


@dataclass(frozen=True)
class JobObservation:
    name: str
    state: Literal["absent", "active", "succeeded", "failed"]
    result: JobResult | None = None  # the JSON termination message of the container that reported (runner/results)
    message: str = ""  # why a Job failed when no result says (DeadlineExceeded, pod evicted...)
    instance: str | None = None  # which Job of its role within the run (retries, replans) or drift interval bucket
    seconds: float | None = None  # how long a finished Job ran
    started: bool = True  # an active Job whose pod has begun running (False: still Pending)
    blocked: tuple[Reason, str] | None = None  # (reason, message): why its pod cannot start, when a human must act
    cause: tuple[Reason, str] | None = None  # (reason, message): a failed Job stopped from outside (OOMKilled...)
    waiting: str = ""  # what a pod that has not started yet waits for (the scheduler, an image pull...)
    plan_sql: bytes | None = None  # a finished plan Job's SQL (plansql: gzip JSON), read from its log


@dataclass(frozen=True)
class AppPods:
    """The pods that wait for this resource (label wait-for) and the workloads they come from: read while a contract
    part waits for the older version of the app (reconcile/contract.py)."""

    pods: tuple[Pod, ...] = ()
    replica_sets: tuple[Workload, ...] = ()
    deployments: tuple[Workload, ...] = ()
    stateful_sets: tuple[Workload, ...] = ()


@dataclass(frozen=True)
class JobRefusal:
    """The API server refused to create a Job of this run (HTTP 4xx): the spec, not the cluster's state, is at fault."""

    role: Role
    message: str  # the API server's own message; it names the field


@dataclass(frozen=True)
class DatabaseObservation:
    revision: str | None = None  # None: no revision (empty database, or alembic_version absent)
    versioned: bool | None = None  # whether the alembic_version table exists (None: not known)
    tables: int | None = None  # tables other than alembic_version (None: not known)
    error_reason: Reason | None = None  # SecretNotFound, InvalidDatabaseURL, DatabaseUnreachable...
    error_message: str = ""
    transient: bool = False  # worth retrying without a human

    @property
    def ok(self) -> bool:
        return self.error_reason is None


@dataclass(frozen=True)
class Observation:
    name: str
    namespace: str
    generation: int
    spec: JsonObject  # as stored: an invalid one is reported, not refused here
    annotations: dict[str, str]
    status: DatabaseMigrationStatus
    database: DatabaseObservation
    jobs: dict[str, JobObservation]  # by role, for the run's generation
    now: datetime
    busy_with: str | None = None  # another DatabaseMigration writing to the same database
    refused: JobRefusal | None = None  # set when acting on this observation's decision failed
    # Ancestors of the database's revision (itself included), when another DatabaseMigration's plan knows them, and
    # that resource: lets a resource whose target is contained in what another one migrated to stay Ready.
    database_lineage: tuple[str, ...] = ()
    database_moved_by: str | None = None
    rehearse_by_default: bool = False  # the chart's rehearsal.enabled: spec.rehearsal.enabled unset means this
    job_retry_backoff: int = JOB_RETRY_BACKOFF  # --job-retry-backoff
    job_queue: str | None = None  # set when the operator-wide Job cap is reached: why no Job may start now
    app_pods: AppPods | None = None  # read while a contract part waits for the older version (None: not read)
    # Plan hash -> who approved it for the whole DatabaseMigrationSet that owns this resource (fleet.approval).
    set_approvals: Mapping[str, str] = field(default_factory=dict)

    @cached_property
    def parsed(self) -> DatabaseMigrationSpec | SpecError:
        """The live spec through its model, parsed once per observation; or why it is invalid."""
        try:
            return parse_spec(self.spec)
        except SpecError as err:
            return err
