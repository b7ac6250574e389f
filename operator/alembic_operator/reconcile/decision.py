"""What decide() returns: the status to write and what to do about it (Jobs, Events, records, SQL to keep)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from ..api import (
    DatabaseMigrationSpec,
    DatabaseMigrationStatus,
    JsonObject,
    RunRecord,
    written,
)
from ..constants import Role
from ..reasons import Reason


@dataclass(frozen=True)
class JobRequest:
    role: Role
    generation: int
    spec: DatabaseMigrationSpec  # the spec of the run (not the live one: a queued edit must not leak into it)
    args: dict[str, str]


class Event(NamedTuple):
    """An Event to post on the resource (and to log)."""

    type: Literal["Normal", "Warning"]
    reason: Reason
    message: str


@dataclass(frozen=True)
class PlanSQLKept:
    """A plan's SQL to keep in a ConfigMap of this name (plansql: gzip JSON), named in status.plan.sql."""

    name: str
    generation: int
    data: bytes


@dataclass(frozen=True)
class ScratchDrop:
    """Rehearsals' scratch databases to drop (reconcile/rehearsal.py): `names`, and any other starting with `prefix`,
    on the server of the Secret key `secret` (name, key) in the resource's namespace."""

    secret: tuple[str, str]
    names: tuple[str, ...]
    prefix: str


@dataclass
class Decision:
    state: DatabaseMigrationStatus  # the status to write
    jobs: list[JobRequest] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None
    records: list[RunRecord] = field(default_factory=list)  # finished runs, for the durable audit trail
    config_maps: list[PlanSQLKept] = field(default_factory=list)  # the plans' SQL to keep (plansql)
    scratch_drops: list[ScratchDrop] = field(default_factory=list)  # spec.rehearsal: dropped before status is written

    @property
    def status(self) -> JsonObject:
        """The status as written (camelCase JSON): the target of the merge patch."""
        return written(self.state)
