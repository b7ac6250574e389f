"""What `kubectl dbm` shows, from the objects it read: pure functions, objects (dicts) in, rows or text out.

Each view has a text form for a terminal and a plain-data form for `-o json`; the CLI only reads and prints.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TypedDict

from pydantic import JsonValue

from .. import constants as c
from ..objects import Condition, Pod, PodSpec
from ..objects import ObjectMeta as Metadata
from ..plansql import PlanFinding, RevisionSql

MESSAGE_CHARS = 100  # of a status message in a one-line listing


# --- what the views read: the fields of the objects the API server returns (JSON, as the kubernetes client reads it;
# the metadata, conditions and pods as objects.py declares them), a DatabaseMigration's status field by field


class PlanSqlRef(TypedDict, total=False):
    configMap: str
    job: str
    sha256: str


class PlanPart(TypedDict, total=False):
    revisions: list[str]
    fromRevision: str
    toRevision: str
    destructive: list[str]


class ContractStatus(TypedDict, total=False):
    state: str
    expandTo: str
    target: str
    expandedAt: str
    waitingSince: str
    deadline: str
    olderPods: list[str]
    olderPodCount: int
    oldVersionGoneAt: str
    contractStartedAt: str
    contractedAt: str


class PlanStatus(TypedDict, total=False):
    fromRevision: str | None
    toRevision: str
    revisions: list[str]
    destructive: list[str]
    warnings: list[str]
    destructiveCount: int
    hash: str
    sql: PlanSqlRef
    expand: PlanPart
    contract: PlanPart
    breaking: list[str]
    breakingCount: int


class RehearsedRevision(TypedDict, total=False):
    revision: str
    seconds: float
    rows: int
    locks: list[dict[str, JsonValue]]


class Rehearsal(TypedDict, total=False):
    """status.rehearsal (spec.rehearsal): the plan's run on a scratch copy of the database."""

    result: str
    planHash: str
    seconds: float
    revisions: list[RehearsedRevision]
    failedRevision: str
    message: str
    migrationSeconds: float


class Status(TypedDict, total=False):
    rehearsal: Rehearsal
    phase: str
    currentRevision: str
    targetRevision: str
    observedGeneration: int
    heldPods: int
    message: str
    conditions: list[Condition]
    plan: PlanStatus
    history: list[dict[str, JsonValue]]  # status.history's entries, shown as they are
    contract: ContractStatus


class Spec(TypedDict, total=False):
    targetRevision: str


class Migration(TypedDict, total=False):
    """A DatabaseMigration."""

    metadata: Metadata
    spec: Spec
    status: Status


class ConfigMap(TypedDict, total=False):
    metadata: Metadata
    data: dict[str, str]


# --- what they show (-o json prints these records) ---------------------------------------------------------------


class Summary(TypedDict):
    namespace: str | None
    name: str | None
    phase: str
    current: str
    target: str
    ready: bool
    reason: str
    message: str
    heldPods: int
    created: str | None


PlanRecord = TypedDict("PlanRecord", {
    "name": str | None, "phase": str | None, "from": str | None, "to": str | None, "revisions": list[str],
    "destructive": list[str], "warnings": list[str], "destructiveCount": int | None,
    "findings": list[PlanFinding] | None, "hash": str | None, "waitsForApproval": bool, "approvedHash": str | None,
    "approved": bool, "sql": list[RevisionSql] | None, "sqlNote": str, "expand": PlanPart | None,
    "contract": PlanPart | None, "breaking": list[str], "rehearsal": Rehearsal | None})


class HeldRecord(TypedDict):
    pod: str | None
    waitsFor: str
    revision: str
    why: str
    created: str | None


def condition(obj: Migration, type_: str) -> Condition:
    for cond in obj.get("status", Status()).get("conditions") or []:
        if cond.get("type") == type_:
            return cond.copy()
    return Condition()


def summary(obj: Migration) -> Summary:
    """One resource in one record: where it is and why (the reason of whichever summary condition is true)."""
    st = obj.get("status") or Status()
    meta = obj.get("metadata") or Metadata()
    ready = condition(obj, "Ready")
    why = next((cond for cond in (condition(obj, t) for t in ("Stalled", "Reconciling"))
                if cond.get("status") == "True"), ready)
    current = st.get("observedGeneration") == meta.get("generation")
    return {
        "namespace": meta.get("namespace"), "name": meta.get("name"), "phase": st.get("phase") or "",
        "current": st.get("currentRevision") or "", "target": st.get("targetRevision")
        or (obj.get("spec") or Spec()).get("targetRevision") or "",
        "ready": ready.get("status") == "True" and current, "reason": why.get("reason") or "",
        "message": st.get("message") or why.get("message") or "", "heldPods": st.get("heldPods") or 0,
        "created": meta.get("creationTimestamp"),
    }


def table(rows: list[list[str]]) -> str:
    """Columns padded to their widest cell, like kubectl get."""
    if not rows:
        return ""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                     for row in rows) + "\n"


def age(timestamp: str | None, now: datetime) -> str:
    if not timestamp:
        return ""
    seconds = int((now - datetime.fromisoformat(timestamp.replace("Z", "+00:00"))).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def short(text: str, limit: int = MESSAGE_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def status_text(items: Sequence[Migration], now: datetime | None = None, all_namespaces: bool = False) -> str:
    now = now or datetime.now(UTC)
    head = (["NAMESPACE"] if all_namespaces else []) + ["NAME", "PHASE", "CURRENT", "TARGET", "READY", "REASON",
                                                         "HELD", "AGE", "MESSAGE"]
    rows = [head]
    for obj in items:
        s = summary(obj)
        rows.append(([s["namespace"] or ""] if all_namespaces else []) + [
            s["name"] or "", s["phase"], s["current"], s["target"], "True" if s["ready"] else "False", s["reason"],
            str(s["heldPods"]), age(s["created"], now), short(s["message"])])
    if not items:
        return "No DatabaseMigrations found.\n"
    split = [line for obj in items if (line := contract_line(obj))]
    return table(rows) + ("\nExpand/contract:\n" + "".join(f"  {line}\n" for line in split) if split else "")


def contract_line(obj: Migration) -> str:
    """Where a plan split into expand and contract parts is, in one line (status.contract); "" for other plans."""
    cs = (obj.get("status") or Status()).get("contract")
    if not cs:
        return ""
    name = (obj.get("metadata") or Metadata()).get("name")
    expand = f"expand -> {cs.get('expandTo') or 'base'}"
    contract = f"contract -> {cs.get('target')}"
    state = cs.get("state")
    if state == "Expanding":
        return f"dbm/{name}: {expand} running; {contract} after the older version's pods are gone"
    if state == "WaitingForOldVersion":
        pods = cs.get("olderPods") or []
        count = cs.get("olderPodCount") or len(pods)
        return (f"dbm/{name}: {expand} applied at {cs.get('expandedAt')}; {contract} waits for {count} pod(s) of "
                f"the older version (until {cs.get('deadline')}, then Stalled): {', '.join(pods[:5])}"
                + (f" and {count - 5} more" if count > 5 else ""))
    if state == "Contracting":
        return (f"dbm/{name}: {expand} applied at {cs.get('expandedAt')}; older version gone at "
                f"{cs.get('oldVersionGoneAt')}; {contract} started at {cs.get('contractStartedAt') or '(next)'}")
    if state == "Contracted":
        return (f"dbm/{name}: {expand} applied at {cs.get('expandedAt')}; older version gone at "
                f"{cs.get('oldVersionGoneAt')}; {contract} applied at {cs.get('contractedAt')}")
    return f"dbm/{name}: {state}: {expand}; {contract}"


def plan_record(obj: Migration, sql: list[RevisionSql] | None = None, sql_note: str = "",
                findings: list[PlanFinding] | None = None) -> PlanRecord:
    """The plan waiting (or last run): revisions, findings, hash, whether it waits for approval, and its SQL.
    `findings`: every finding, from the plan's ConfigMap (status keeps the first ones of a long plan)."""
    st = obj.get("status") or Status()
    plan = st.get("plan") or PlanStatus()
    approval = condition(obj, c.APPROVAL_REQUIRED)
    meta = obj.get("metadata") or Metadata()
    approved = (meta.get("annotations") or {}).get(c.APPROVE_ANNOTATION)
    return {
        "name": meta.get("name"), "phase": st.get("phase"),
        "from": plan.get("fromRevision"), "to": plan.get("toRevision"), "revisions": plan.get("revisions") or [],
        "destructive": plan.get("destructive") or [], "warnings": plan.get("warnings") or [],
        "destructiveCount": plan.get("destructiveCount"), "findings": findings,
        "hash": plan.get("hash"), "waitsForApproval": approval.get("status") == "True",
        "approvedHash": approved, "approved": bool(approved) and approved == plan.get("hash"),
        "sql": sql, "sqlNote": sql_note, "expand": plan.get("expand"), "contract": plan.get("contract"),
        "breaking": plan.get("breaking") or [],
        "rehearsal": st.get("rehearsal") if (st.get("rehearsal") or {}).get("planHash") == plan.get("hash") else None,
    }


def plan_text(record: PlanRecord) -> str:
    if not record["hash"]:
        return f"dbm/{record['name']} has no plan yet (phase {record['phase'] or 'unknown'}).\n"
    lines = [f"Plan of dbm/{record['name']}: {record['from'] or 'base'} -> {record['to']} "
             f"({len(record['revisions'])} revision(s))", f"hash: {record['hash']}"]
    if record["waitsForApproval"]:
        lines.append(f"waits for approval: kubectl dbm approve {record['name']} --hash {record['hash']}")
    elif record["approved"]:
        lines.append("approved (the annotation carries this hash)")
    if record["contract"] is not None:
        expand, contract = record["expand"] or PlanPart(), record["contract"]
        lines += ["", f"Expand part, before the new version's pods start ({len(expand.get('revisions') or [])}): "
                  f"{expand.get('fromRevision') or 'base'} -> {expand.get('toRevision')}",
                  *[f"  {rev}" for rev in expand.get("revisions") or []],
                  f"Contract part, once no pod of the older version runs ({len(contract.get('revisions') or [])}): "
                  f"{contract.get('fromRevision')} -> {contract.get('toRevision')}",
                  *[f"  {rev}" for rev in contract.get("revisions") or []]]
    else:
        lines += ["", "Revisions, in order:", *[f"  {rev}" for rev in record["revisions"]]]
    if record["breaking"]:
        lines += ["", f"Breaks the running version ({len(record['breaking'])}):",
                  *[f"  ! {b}" for b in record["breaking"]]]
    lines += rehearsal_lines(record["rehearsal"])
    if (findings := record["findings"]) is not None:  # all of them, from the ConfigMap
        for severity, title, mark in (("destructive", "Destructive", "!"), ("locking", "Locking", "-"),
                                      ("warning", "Warnings", "-"), ("note", "Notes", " ")):
            found = [f for f in findings if f.get("severity") == severity]
            if found:
                lines += ["", f"{title} ({len(found)}):"]
                lines += [f"  {mark} {_described(f)} [{f.get('rule')}]" for f in found]
    else:
        if record["destructive"]:
            count = record["destructiveCount"] or len(record["destructive"])
            lines += ["", f"Destructive ({count}):", *[f"  ! {d}" for d in record["destructive"]]]
        if record["warnings"]:
            lines += ["", f"Warnings ({len(record['warnings'])}):", *[f"  - {w}" for w in record["warnings"]]]
    if record["sqlNote"]:
        lines += ["", f"SQL: {record['sqlNote']}"]
    if record["sql"] is not None:
        lines += ["", "SQL (verified against the plan's hash):" if not record["sqlNote"] else "SQL:"]
        for part in record["sql"]:
            lines += ["", f"-- revision {part['revision']}" + (f": {part['message']}" if part.get("message") else ""),
                      part["sql"].rstrip()]
    return "\n".join(lines) + "\n"


def rehearsal_lines(rehearsal: Rehearsal | None) -> list[str]:
    """The rehearsal of this very plan (spec.rehearsal): its result, and each revision's time, rows and locks."""
    if not rehearsal:
        return []
    took = f" in {rehearsal['seconds']:.1f}s" if rehearsal.get("seconds") is not None else ""
    lines = ["", f"Rehearsal on a scratch copy: {rehearsal.get('result')}{took}"]
    if rehearsal.get("migrationSeconds") is not None:
        lines.append(f"  the real migration took {rehearsal['migrationSeconds']:.1f}s")
    for item in rehearsal.get("revisions") or []:
        parts = [f"{item['seconds']:.1f}s" if item.get("seconds") is not None else "?"]
        if item.get("rows") is not None:
            parts.append(f"{item['rows']} rows")
        for lock in item.get("locks") or []:
            parts.append(f"{lock.get('mode')} on {lock.get('on')} held {lock.get('heldSeconds', 0)}s")
        failed = "  <- failed" if item.get("revision") == rehearsal.get("failedRevision") else ""
        lines.append(f"  {item.get('revision')}: {', '.join(parts)}{failed}")
    if rehearsal.get("result") == "Failed" and rehearsal.get("message"):
        lines.append(f"  {rehearsal['message']}")
    return lines


def _described(finding: PlanFinding) -> str:
    """A finding as status.plan shows it (sqlscan.Finding.describe): the operation and its revision."""
    op, rev = str(finding.get("operation") or ""), finding.get("revision")
    return f"{op} (revision {rev})" if rev and f"revision {rev}" not in op else op


def history_records(obj: Migration) -> list[dict[str, JsonValue]]:
    return [dict(entry) for entry in obj.get("status", Status()).get("history") or []]


def history_text(obj: Migration, entries: Sequence[Mapping[str, JsonValue]] | None = None) -> str:
    """Finished runs, oldest first: status.history's (the newest 10), or `entries` (the run records)."""
    entries = history_records(obj) if entries is None else entries
    if not entries:
        return f"dbm/{obj.get('metadata', Metadata()).get('name')} has no history yet.\n"
    rows = [["GENERATION", "FROM", "TO", "RESULT", "REASON", "STARTED", "FINISHED", "REQUESTED BY", "APPROVED BY",
             "PLAN", "BACKUP"]]
    for e in entries:
        rows.append([str(e.get("generation", "")), str(e.get("from") or ""), str(e.get("to") or ""),
                     str(e.get("result") or ""), str(e.get("reason") or ""), str(e.get("startedAt") or ""),
                     str(e.get("finishedAt") or ""), str(e.get("requestedBy") or ""), str(e.get("approvedBy") or ""),
                     str(e.get("planHash") or "")[:19], str(e.get("backup") or "")])
    return table(rows)


def run_records(config_maps: Sequence[ConfigMap]) -> list[dict[str, JsonValue]]:
    """The durable run records (audit.py), in the order the runs ran (their names sort that way)."""
    out: list[dict[str, JsonValue]] = []
    for cm in sorted(config_maps, key=lambda m: str(m.get("metadata", Metadata()).get("name"))):
        try:
            record = json.loads((cm.get("data") or {}).get(c.RUN_RECORD_KEY) or "")
        except ValueError:
            continue  # not a record (edited by hand): shown by kubectl get, not here
        if isinstance(record, dict):
            out.append(record)
    return out


def held_records(pods: Sequence[Pod], migrations: Mapping[str, Migration]) -> list[HeldRecord]:
    """Pods that carry the operator's scheduling gate, each with the DatabaseMigration it waits for and why."""
    out: list[HeldRecord] = []
    for pod in pods:
        meta = pod.get("metadata") or Metadata()
        gates = [g.get("name") for g in pod.get("spec", PodSpec()).get("schedulingGates") or []]
        if c.SCHEDULING_GATE not in gates:
            continue
        waits_for = (meta.get("labels") or {}).get(c.WAIT_FOR_LABEL, "")
        dbm = migrations.get(waits_for)
        if dbm is None:
            why = f"dbm/{waits_for} does not exist"
        else:
            s = summary(dbm)
            why = f"{s['phase'] or 'pending'}" + (f" ({s['reason']})" if s["reason"] else "")
        out.append({"pod": meta.get("name"), "waitsFor": waits_for,
                    "revision": (meta.get("annotations") or {}).get(c.REVISION_ANNOTATION) or "target",
                    "why": why, "created": meta.get("creationTimestamp")})
    return out


def held_text(records: Sequence[HeldRecord], now: datetime | None = None) -> str:
    if not records:
        return "No pods are held.\n"
    now = now or datetime.now(UTC)
    rows = [["POD", "WAITS FOR", "REVISION", "AGE", "WHY"]]
    rows += [[r["pod"] or "", f"dbm/{r['waitsFor']}", r["revision"], age(r["created"], now), r["why"]] for r in records]
    return table(rows)
