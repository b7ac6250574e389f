"""What every Job role reports, and the one writer of those reports.

A Job's result is one compact JSON object in its container's termination message (the kubelet keeps 4096 bytes):
the runner (plan, upgrade/downgrade, stamp, drift, current: in the app's image) and ``alembic-operator job`` (scan,
backup, restore, current: in the operator's image) both write it through `write_result`, and the operator reads it
back (``kube.parse_result``). The shapes below are that contract: `TypedDict`s, standard library only, every key
optional (``total=False``) because a failure carries what was known when it happened.

Every result has ``ok``; a failure has ``reason`` (CamelCase, stable) and ``message`` (what happened, what to do).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from typing import TypedDict, Union

from . import reasons
from .redact import Redactor

RESULT_LIMIT = 3500  # bytes: a container's termination message holds 4096


# --- the results ------------------------------------------------------------------------------------------------


class Outcome(TypedDict, total=False):
    """The keys every result may have; a failure is an Outcome with ok false, reason and message."""

    ok: bool
    command: str  # the runner's results name their command; the operator image's do not
    reason: str
    message: str
    container: str  # added by the operator when it reads a result: the container that wrote it


FailureResult = Outcome
TOO_LARGE: Outcome = {"ok": False, "reason": reasons.RESULT_TOO_LARGE,
                      "message": "the result did not fit in a termination message; see the Job's logs"}


class Blocker(TypedDict, total=False):
    """A session holding a lock a migration waited for (runner/blockers.py): never its query's values."""

    pid: int
    user: str
    application: str  # application_name
    client: str  # client address; absent: a local socket (or hidden from the migration's role)
    state: str  # active, idle in transaction...
    transactionSeconds: float  # how long its transaction has been open
    query: str  # its query's first characters, every literal replaced by ?
    relation: str  # the table the migration waited for


class Unrenderable(TypedDict, total=False):
    revision: str
    message: str


class CurrentResult(Outcome, total=False):
    """`runner current` (and `job current`: ok and current only)."""

    current: str | None  # the database's revision(s): None for base, "a,b" for several heads
    currentHeads: list[str]
    versionTable: bool
    tables: int
    dialect: str
    known: bool
    heads: list[str]  # the scripts' heads


class PlanResult(Outcome, total=False):
    """`runner plan`: the revisions an upgrade would run; plan.json holds the same plus each revision's details."""

    current: str | None
    currentHeads: list[str]
    versionTable: bool
    tables: int
    dialect: str
    targetRequested: str
    heads: list[str]
    target: str | None
    lineage: list[str]  # the target's newest ancestors, target first
    contract: list[str]  # the contract revisions (phase = "contract") among the lineage's and the plan's, newest first
    revisions: list[str]
    revisionCount: int
    unrenderable: list[Unrenderable]
    transactionPerMigration: bool
    transactionalDDL: bool
    planFile: str


class ScanFinding(TypedDict, total=False):
    """One finding of the SQL scan, as a scan's result carries it (sqlrules.Finding.to_dict)."""

    rule: str
    severity: str
    revision: str | None
    operation: str


class ScanResult(Outcome, total=False):
    """`job scan`: the plan's SQL read by the scanner."""

    current: str | None
    target: str | None
    revisions: list[str]  # all of them, or the first ones when revisionCount says more (the SQL document has all)
    revisionCount: int
    revisionsSha256: str  # plansql.revisions_sha256 of every revision id, in order
    destructiveRevisions: list[str]
    destructive: list[str]
    warnings: list[str]
    destructiveCount: int
    warningCount: int  # locking findings and other warnings
    lockingCount: int
    noteCount: int
    locking: list[dict[str, str]]  # the first few: operation, rule, safely (the safer pattern)
    notes: list[str]
    findings: list[ScanFinding]
    sqlSha256: str
    lineage: list[str]
    contract: list[str]  # contract revisions among the lineage's and the plan's (the runner's plan), newest first
    breaking: list[str]  # operations of expand revisions that break the running version (contract.breaking)
    breakingRevisions: list[str]
    breakingCount: int
    transactionPerMigration: bool
    transactionalDDL: bool


class BackupResult(Outcome, total=False):
    """`job backup`."""

    location: str
    file: str
    sizeBytes: int
    sha256: str
    revision: str | None
    completedAt: str
    pruned: list[str]


class RestoreResult(Outcome, total=False):
    """`job restore`."""

    revision: str | None
    dropped: list[str]


# "from" is a keyword: the functional syntax. String types: nothing is evaluated at run time (Python 3.9).
_Migration = TypedDict("_Migration", {"from": "str | None"}, total=False)


class PartialRevision(TypedDict, total=False):
    """A revision that failed after some of its statements committed (DDL commits implicitly on MySQL/MariaDB): the
    version table does not say so, the database holds part of it. `statements`: those that committed, in order, their
    literals removed; `statementCount`: how many (the list may be cut)."""

    revision: str
    statements: list[str]
    statementCount: int


class MigrateResult(_Migration, Outcome, total=False):
    """`runner upgrade` and `runner downgrade`. "applied" (upgrade) / "reverted" (downgrade): what the database
    committed, read back; "attempted": the revisions it started, when it could not read back (a SIGKILLed pod leaves
    reason Interrupted with "attempted"). The operator may cut those lists (<key>Truncated)."""

    to: str | None
    durationSeconds: float
    revision: str | None
    applied: list[str]
    reverted: list[str]
    attempted: list[str]
    appliedTruncated: bool
    revertedTruncated: bool
    attemptedTruncated: bool
    alreadyAtTarget: bool
    failedRevision: str
    blockers: list[Blocker]  # LockTimeout: the sessions holding the lock it waited for
    transactionalDDL: bool  # False (MySQL/MariaDB): each DDL statement commits; a failed revision may be half-applied
    partialRevision: PartialRevision  # the failed revision committed some of its statements (non-transactional DDL)


class RehearsedLockResult(TypedDict, total=False):
    """A lock the rehearsal's migration session held or waited for (runner/rehearse.py)."""

    on: str
    mode: str
    heldSeconds: float
    waitedSeconds: float


class RehearsedRevisionResult(TypedDict, total=False):
    revision: str
    seconds: float
    rows: int
    locks: list[RehearsedLockResult]


class RehearseResult(MigrateResult, total=False):
    """`runner rehearse`: the upgrade's result on the scratch database, with each revision's measures."""

    database: str  # the scratch database (dropped before the result is written)
    rehearsalSeconds: float
    revisions: list[RehearsedRevisionResult]  # the slowest 20 when there are more, in plan order
    locksSampled: bool  # False: the server would not say which locks the session held
    settleSeconds: float  # PostgreSQL: the copy vacuumed (and checkpointed) before the plan was timed
    checkpointed: bool  # False: the scratch user may not CHECKPOINT (pg_checkpoint), the restore still being written


class StampResult(Outcome, total=False):
    """`runner stamp`."""

    to: str
    revision: str | None


class DriftResult(Outcome, total=False):
    """`runner drift`: the live database against the scripts and the models. Read-only."""

    current: str | None
    currentHeads: list[str]
    heads: list[str]
    versionTable: bool
    unknownRevision: bool
    behindHead: bool
    pending: list[str]
    pendingCount: int
    pendingTruncated: bool
    modelsComparable: bool
    drifted: bool
    differences: list[str]
    differenceCount: int
    differencesTruncated: bool


# Union, not X | Y: this line runs, on Python 3.9 too.
JobResult = Union[  # noqa: UP007
    CurrentResult, PlanResult, ScanResult, BackupResult, RestoreResult, MigrateResult, StampResult, DriftResult,
    RehearseResult,
]


# --- the writer -------------------------------------------------------------------------------------------------


def dump(result: Mapping[str, object]) -> str:
    """Compact JSON, ASCII only (its size in bytes is its length)."""
    return json.dumps(result, separators=(",", ":"), default=str)


def size(result: Mapping[str, object]) -> int:
    return len(dump(result).encode())


def fit(result: Mapping[str, object], limit: int = RESULT_LIMIT) -> str:
    """Compact JSON under `limit` bytes: cut long messages, then long lists (flagged with <key>Truncated)."""
    text = dump(result)
    if len(text.encode()) <= limit:
        return text
    cut = dict(result)
    for key, value in list(cut.items()):
        if isinstance(value, str) and len(value) > 1000:
            cut[key] = value[:997] + "..."
        if isinstance(value, list):
            cut[key] = [
                {k: (v[:297] + "..." if isinstance(v, str) and len(v) > 300 else v) for k, v in item.items()}
                if isinstance(item, dict)
                else item
                for item in value
            ]
    while len(dump(cut).encode()) > limit:
        lists = [(len(dump({"x": v})), k) for k, v in cut.items() if isinstance(v, list) and v]
        if not lists:
            break
        _, key = max(lists)
        items = cut[key]
        assert isinstance(items, list)  # one of `lists`
        cut[key] = items[: len(items) // 2]
        cut[key + "Truncated"] = True
    text = dump(cut)
    if len(text.encode()) > limit:  # pathological: keep the essentials
        keep = ("ok", "command", "reason", "revision", "current", "target")
        text = dump({**{k: cut[k] for k in keep if k in cut}, "message": str(cut.get("message", ""))[:500]})
    return text


def fit_list(result: dict[str, object], key: str, more: Callable[[int], object] | None = None,
             limit: int = RESULT_LIMIT) -> None:
    """Shorten the list result[key] until the result fits, appending more(n_dropped) when given (a command trims its
    own lists before writing, and says how)."""
    value = result.get(key)
    items = list(value) if isinstance(value, list) else []
    if size(result) <= limit or not items:
        return
    kept = len(items)
    while kept > 0:
        kept -= 1
        result[key] = items[:kept] + ([more(len(items) - kept)] if more else [])
        if size(result) <= limit:
            return


def render(result: Mapping[str, object], redact: Redactor, *, cut: bool = True, limit: int = RESULT_LIMIT) -> str:
    """The result as written: every string redacted, then serialized (the JSON stays valid); too large, it is cut
    (`fit`) or, with cut false, replaced by ResultTooLarge (a reader must not take a cut list for the whole)."""
    clean = redact.values(dict(result))
    text = dump(clean)
    if len(text.encode()) <= limit:
        return text
    return fit(clean, limit) if cut else dump(TOO_LARGE)


def write_result(path: str, result: Mapping[str, object], redact: Redactor, *, echo: bool = False, cut: bool = True,
                 log: Callable[[str], None] | None = None) -> str:
    """Write the result to `path` ("-": stdout only); `echo` also prints it as stdout's last line."""
    text = render(result, redact, cut=cut)
    if path != "-":
        try:
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(text)
        except OSError as exc:
            message = f"cannot write the result to {path}: {exc}" + ("" if echo else f"; result: {text}")
            if log is not None:
                log(message)
            else:
                sys.stderr.write(redact(message) + "\n")
        if not echo:
            return text
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
    return text
