"""Every status transition, in one place.

The three summary conditions (Ready, Reconciling, Stalled) follow kstatus and always move together:

- progressing: Ready=False, Reconciling=True,  Stalled=False  (work for this generation is under way)
- ready:       Ready=True,  Reconciling=False, Stalled=False  (at the target, nothing left to do)
- stalled:     Ready=False, Reconciling=False, Stalled=True   (cannot progress without a human)

`summarize()` is the only function that writes them, together with `status.phase` and `status.message`, so no code
path can leave a Ready=True next to a Stalled=True. Step conditions (BackupSucceeded, Migrated, RolledBack,
ApprovalRequired) are set with `set_condition()`. All functions are pure: they take a status (the model of
`api.py`) and return a new one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from pydantic import JsonValue

from . import constants as c
from .api import Condition, ConditionStatus, DatabaseMigrationStatus, JsonObject
from .reasons import Reason

Kind = Literal["progressing", "ready", "stalled"]
Status = DatabaseMigrationStatus

CONDITION_ORDER = (
    c.READY,
    c.RECONCILING,
    c.STALLED,
    c.APPROVAL_REQUIRED,
    c.BACKUP_SUCCEEDED,
    c.MIGRATED,
    c.EXPANDED,
    c.CONTRACTED,
    c.ROLLED_BACK,
    c.DRIFTED,
)
# Kubernetes caps a condition message at 32768 characters; ours stay short enough to read in `kubectl get`.
MAX_MESSAGE = 1024


@dataclass(frozen=True)
class Outcome:
    """What the summary conditions should say: the kind, a stable CamelCase reason and a message for humans."""

    kind: Kind
    phase: c.Phase
    reason: Reason
    message: str


def get_condition(status: Status, type_: str) -> Condition | None:
    return next((x for x in status.conditions if x.type == type_), None)


def condition_is(status: Status, type_: str, value: ConditionStatus) -> bool:
    cond = get_condition(status, type_)
    return cond is not None and cond.status == value


def without_conditions(status: Status, *types: str) -> Status:
    """Return a copy of `status` without the conditions of these types."""
    return status.model_copy(update={"conditions": [x for x in status.conditions if x.type not in types]})


def set_condition(
    status: Status,
    type_: str,
    value: ConditionStatus,
    reason: Reason,
    message: str,
    generation: int,
    now: datetime | None = None,
) -> Status:
    """Return a copy of `status` with one condition set; lastTransitionTime moves only when the value changes."""
    old = get_condition(status, type_)
    transition = (now or datetime.now(UTC)).replace(microsecond=0)
    if old is not None and old.status == value:
        transition = old.last_transition_time
    cond = Condition(type=type_, status=value, observed_generation=generation, last_transition_time=transition,
                     reason=reason, message=message[:MAX_MESSAGE])
    order = {t: i for i, t in enumerate(CONDITION_ORDER)}
    conditions = sorted([*(x for x in status.conditions if x.type != type_), cond],
                        key=lambda x: order.get(x.type, len(order)))
    return status.model_copy(update={"conditions": conditions})


def summarize(status: Status, outcome: Outcome, generation: int, now: datetime | None = None) -> Status:
    """Set phase, message, observedGeneration and the kstatus triple from one outcome."""
    ready: ConditionStatus = "True" if outcome.kind == "ready" else "False"
    reconciling: ConditionStatus = "True" if outcome.kind == "progressing" else "False"
    stalled: ConditionStatus = "True" if outcome.kind == "stalled" else "False"
    new = status.model_copy(update={"phase": outcome.phase, "message": outcome.message[:MAX_MESSAGE],
                                    "observed_generation": generation})
    # The reason of a False condition is the reason the resource is in this state, so every condition explains.
    new = set_condition(new, c.READY, ready, outcome.reason, outcome.message, generation, now)
    new = set_condition(new, c.RECONCILING, reconciling, outcome.reason, outcome.message, generation, now)
    return set_condition(new, c.STALLED, stalled, outcome.reason, outcome.message, generation, now)


def progressing(phase: c.Phase, reason: Reason, message: str) -> Outcome:
    return Outcome("progressing", phase, reason, message)


def ready(reason: Reason, message: str) -> Outcome:
    return Outcome("ready", "Succeeded", reason, message)


def stalled(phase: c.Phase, reason: Reason, message: str) -> Outcome:
    return Outcome("stalled", phase, reason, message)


def merge_patch(old: Mapping[str, JsonValue], new: Mapping[str, JsonValue]) -> JsonObject:
    """The JSON merge patch (RFC 7386) that turns `old` into `new`: changed keys, nested objects diffed, removed keys
    null, lists whole. The reconciler writes its status with it: no resourceVersion, hence no conflict with the
    other writer of the status (the gate, which owns heldPods: a key the reconciler leaves as it read it)."""
    patch: JsonObject = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            if nested := merge_patch(before, value):
                patch[key] = nested
        elif key not in old or before != value:
            patch[key] = _without_nulls(value) if isinstance(value, Mapping) else value
    return patch


def _without_nulls(value: Mapping[str, JsonValue]) -> JsonObject:
    """A new object in a merge patch: its null members mean nothing (they would be removed), so leave them out."""
    return {k: _without_nulls(v) if isinstance(v, Mapping) else v for k, v in value.items() if v is not None}
