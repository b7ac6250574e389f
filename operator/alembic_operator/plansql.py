"""The plan's SQL, readable after the plan Job: its wire format from the Job's log to a ConfigMap, and back.

The plan Job renders each revision's SQL into an emptyDir that dies with its pod, and a termination message holds
4 KiB. So the scan container (ours) also prints the SQL to its log, gzip-compressed and base64-encoded in marked
lines of at most `CHUNK` characters (a container runtime splits longer lines); the operator reads that log once,
keeps the compressed document in a ConfigMap owned by the resource, and `status.plan.sql` names it with the same
sha256 the plan hash covers. A reviewer reads exactly what the plan scanned (`kubectl dbm plan` checks the sha256).

The standard library and pydantic (which checks a document read back): the scan (programs), the operator and
`kubectl dbm` (entry) share it.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
from collections.abc import Iterable, Sequence
from typing import NotRequired

from pydantic import TypeAdapter
from typing_extensions import TypedDict  # pydantic reads only this one on Python < 3.12

MARKER = "alembic-operator:plan-sql"
CHUNK = 8000  # characters of base64 per log line (CRI runtimes split lines above 16 KiB)
KEPT_BYTES = 900_000  # compressed bytes a ConfigMap keeps (it holds 1 MiB in all, metadata included)
DATA_KEY = "plan.json.gz"
COMPONENT = "plan-sql"


class RevisionSql(TypedDict):
    """One revision's rendered SQL, as a reviewer reads it."""

    revision: str
    message: str
    sql: str


class PlanFinding(TypedDict):
    """One finding of the scan (sqlscan.Finding), with its statement."""

    rule: str
    severity: str
    revision: str | None
    operation: str
    statement: str


class WholePlan(TypedDict, total=False):
    """What the scan's result could not carry: every revision id, in order, and every finding."""

    revisions: list[str]
    destructiveRevisions: list[str]
    findings: list[PlanFinding]


class Document(TypedDict):
    """The document the log and the ConfigMap carry (gzip-compressed JSON)."""

    sqlSha256: str
    total: int
    revisions: list[RevisionSql]
    truncated: bool
    plan: NotRequired[WholePlan]


_DOCUMENT = TypeAdapter(Document)


def sql_sha256(sqls: Iterable[str]) -> str:
    """The digest of the rendered SQL, in plan order: the one the plan hash covers."""
    digest = hashlib.sha256()
    for sql in sqls:
        digest.update(sql.encode())
    return "sha256:" + digest.hexdigest()


def revisions_sha256(revisions: Iterable[str]) -> str:
    """The digest of the plan's revision ids, in order: a plan too long for a termination message carries this in
    its result and the ids themselves here, and the operator takes the ids only when they hash to it."""
    return "sha256:" + hashlib.sha256("\n".join(revisions).encode()).hexdigest()


def document(revisions: Sequence[RevisionSql], sha256: str, plan: WholePlan | None = None) -> Document:
    """{sqlSha256, total, revisions: [{revision, message, sql}], truncated, plan}.

    `plan` is what the scan's result could not carry (every revision id in order, every finding): it is never cut
    when the SQL is, so a plan of any length keeps its whole list and all its findings here."""
    doc: Document = {"sqlSha256": sha256, "total": len(revisions), "revisions": list(revisions), "truncated": False}
    if plan is not None:
        doc["plan"] = plan
    return doc


def planned_revisions(doc: Document, expected_sha256: str | None) -> list[str] | None:
    """Every revision id of the plan, from the document, when they hash to what the scan's result says."""
    ids = [str(x) for x in doc.get("plan", WholePlan()).get("revisions", [])]
    return ids if ids and expected_sha256 and revisions_sha256(ids) == expected_sha256 else None


def compress(doc: Document, limit: int = KEPT_BYTES) -> tuple[bytes, Document]:
    """The gzip of `doc`, cut (newest revisions dropped, `truncated` set) until it fits in `limit` bytes."""
    kept = doc.copy()
    while True:
        data = gzip.compress(json.dumps(kept, separators=(",", ":")).encode(), mtime=0)
        if len(data) <= limit or not kept["revisions"]:
            return data, kept
        keep = max(0, min(len(kept["revisions"]) - 1, int(len(kept["revisions"]) * limit / len(data) * 0.95)))
        kept = kept.copy()
        kept["revisions"], kept["truncated"] = kept["revisions"][:keep], True


def log_lines(data: bytes) -> list[str]:
    """The marked lines that carry `data` through a container log."""
    text = base64.b64encode(data).decode()
    chunks = [text[i:i + CHUNK] for i in range(0, len(text), CHUNK)] or [""]
    return [f"{MARKER} {n}/{len(chunks)} {chunk}" for n, chunk in enumerate(chunks, 1)]


def from_log(log: str) -> bytes | None:
    """The data `log_lines` carried, from a container's log (None when it is not there, or not whole)."""
    parts: dict[int, str] = {}
    total = 0
    for line in log.splitlines():
        if not line.startswith(MARKER + " "):
            continue
        try:
            _marker, position, chunk = line.split(" ", 2)
            number, of = (int(x) for x in position.split("/"))
        except ValueError:
            continue
        parts[number], total = chunk.strip(), of
    if not total or len(parts) != total:
        return None
    try:
        return base64.b64decode("".join(parts[n] for n in range(1, total + 1)), validate=True)
    except ValueError:
        return None


def read(data: bytes) -> Document:
    """The document `compress` wrote (ValueError, OSError, EOFError: not one)."""
    return _DOCUMENT.validate_json(gzip.decompress(data))


def verified(doc: Document) -> bool:
    """Does the SQL kept hash to the digest the plan hash covers? (Only a whole document can.)"""
    return not doc.get("truncated") and sql_sha256(r.get("sql", "") for r in doc.get("revisions") or []) == doc.get(
        "sqlSha256")
