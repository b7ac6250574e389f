"""`kubectl dbm set`, `pause`, `resume`: a DatabaseMigrationSet's rollout at a glance, and its two human levers.

    kubectl dbm set                 every set of the namespace: wave, Ready/targets, migrating, failed, why
    kubectl dbm set NAME            one set: its progress, its failed targets with their reasons, plans waiting
    kubectl dbm pause NAME          spec.strategy.paused: true (nothing new starts)
    kubectl dbm resume NAME         paused false, and its failed targets run again (the retry annotation)
    kubectl dbm approve --set NAME  one plan hash approved for every target whose plan has it (fleet.approval)
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TypedDict, cast

from pydantic import JsonValue

from .. import approvals
from .. import constants as c
from ..fleet.api import DatabaseMigrationSetStatus, PlanGroup, parse_set_status
from ..objects import ObjectMeta
from . import views


class SetObject(TypedDict, total=False):
    metadata: ObjectMeta
    spec: dict[str, JsonValue]
    status: dict[str, JsonValue]


def _status(obj: SetObject) -> DatabaseMigrationSetStatus:
    return parse_set_status(obj.get("status") or {})


def _ready(status: DatabaseMigrationSetStatus) -> tuple[str, str]:
    cond = next((x for x in status.conditions if x.type == c.READY), None)
    return (cond.status, cond.reason) if cond is not None else ("Unknown", "")


def summary(obj: SetObject) -> dict[str, JsonValue]:
    """One set as plain data (-o json)."""
    st = _status(obj)
    meta = obj.get("metadata") or {}
    return {"namespace": meta.get("namespace", ""), "name": meta.get("name", ""), "wave": st.wave_name,
            "counts": st.counts.model_dump(by_alias=True), "ready": _ready(st)[0], "reason": _ready(st)[1],
            "message": st.message, "failed": [f.model_dump(by_alias=True) for f in st.failed],
            "plans": [p.model_dump(by_alias=True) for p in st.plans]}


def list_text(items: Sequence[SetObject], now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    rows = [["NAME", "WAVE", "READY", "MIGRATING", "APPROVAL", "FAILED", "PENDING", "STATUS", "AGE"]]
    for obj in items:
        st, meta = _status(obj), obj.get("metadata") or {}
        n = st.counts
        rows.append([meta.get("name", ""), st.wave_name or "-", f"{n.ready}/{n.total}", str(n.migrating),
                     str(n.awaiting_approval), str(n.failed), str(n.pending), _ready(st)[1] or "-",
                     views.age(meta.get("creationTimestamp"), now)])
    return views.table(rows) if items else "No DatabaseMigrationSets found.\n"


def detail_text(obj: SetObject, waiting: Mapping[str, list[str]] | None = None) -> str:
    """One set; `waiting`: every member waiting for approval, by plan hash (read from the members), when known."""
    st, meta = _status(obj), obj.get("metadata") or {}
    n = st.counts
    lines = [f"Set:        {meta.get('name', '')}  (template {st.template_hash or '-'})",
             f"Wave:       {st.wave_name or '-'} ({(st.wave or 0) + 1 if st.wave_name != 'done' else st.waves} of "
             f"{st.waves or 0})",
             f"Targets:    {n.total}: {n.ready} Ready, {n.migrating} migrating, {n.awaiting_approval} awaiting "
             f"approval, {n.failed} failed, {n.pending} pending",
             f"Status:     {_ready(st)[1] or '-'}: {st.message or ''}"]
    if st.failed:
        lines += ["", "Failed targets:"]
        rows = [["TARGET", "DATABASEMIGRATION", "CANARY", "REASON", "MESSAGE"]]
        rows += [[f.target, f.migration, "yes" if f.canary else "", f.reason, views.short(f.message, 80)]
                 for f in st.failed]
        lines.append(views.table(rows).rstrip("\n"))
        lines.append(f"Fix them, then: kubectl dbm resume {meta.get('name', '')}")
    if st.plans:
        name = meta.get("name", "")
        lines += ["", "Plans waiting for approval (one line per plan; targets whose plans differ wait apart):"]
        rows = [["HASH", "TARGETS", "APPROVED BY", "DATABASEMIGRATIONS"]]
        for p in st.plans:
            names = (waiting or {}).get(p.hash) or p.migrations
            more = " ..." if p.count > len(names) else ""
            rows.append([p.hash, str(p.count), p.approved_by or "-", ", ".join(names) + more])
        lines.append(views.table(rows).rstrip("\n"))
        todo = [p for p in st.plans if not p.approved_by]
        if todo:
            first = todo[0].migrations[0] if todo[0].migrations else "NAME"
            lines.append(f"Review one target's plan (kubectl dbm plan {first}), then approve it for the whole set: "
                         f"kubectl dbm approve --set {name} --hash {todo[0].hash}")
    return "\n".join(lines) + "\n"


def waiting_by_plan(members: Sequence[Mapping[str, object]]) -> dict[str, list[str]]:
    """The set's DatabaseMigrations waiting for approval, by their plan's hash (names sorted)."""
    out: dict[str, list[str]] = {}
    for obj in members:
        meta, status = obj.get("metadata"), obj.get("status")
        if not isinstance(meta, Mapping) or not isinstance(status, Mapping):
            continue
        if status.get("phase") != "AwaitingApproval":
            continue
        plan = status.get("plan")
        digest = plan.get("hash") if isinstance(plan, Mapping) else None
        if isinstance(digest, str):
            out.setdefault(digest, []).append(str(meta.get("name")))
    return {h: sorted(names) for h, names in out.items()}


def approval_choice(obj: SetObject, wanted: str | None) -> tuple[PlanGroup | None, str]:
    """The plan to approve for the whole set: the one named (it must be one its targets wait for), else the only one
    waiting; (None, why) when there is none to approve, it is approved already, or several wait (name one)."""
    st, name = _status(obj), (obj.get("metadata") or {}).get("name", "")
    named = set(approvals.set_hashes(((obj.get("metadata") or {}).get("annotations") or {}).get(
        c.APPROVE_ANNOTATION)))
    if wanted:
        group = next((p for p in st.plans if p.hash == wanted), None)
        if group is None:
            shown = ", ".join(p.hash for p in st.plans) or "none"
            return None, (f"no target of dbms/{name} waits for plan {wanted} (waiting: {shown}). Review again: "
                          f"kubectl dbm set {name}")
        return group, "already approved" if wanted in named else ""
    todo = [p for p in st.plans if p.hash not in named]
    if not todo:
        return None, f"dbms/{name}: no plan waits for approval" + (" (every plan shown is approved)" if st.plans
                                                                      else "")
    if len(todo) > 1:
        return None, (f"the targets of dbms/{name} wait for {len(todo)} different plans: "
                      f"{', '.join(f'{p.hash} ({p.count})' for p in todo)}; review each (kubectl dbm plan "
                      "<one of its DatabaseMigrations>) and approve it with --hash")
    return todo[0], ""


def approve_patch(obj: SetObject, plan_hash: str) -> dict[str, JsonValue]:
    """Add a plan hash to the set's approve annotation, on the version read (a change in between: refused, 409)."""
    meta = obj.get("metadata") or {}
    hashes = approvals.set_hashes((meta.get("annotations") or {}).get(c.APPROVE_ANNOTATION))
    value = ",".join([*hashes, plan_hash] if plan_hash not in hashes else hashes)
    return {"metadata": {"resourceVersion": meta.get("resourceVersion", ""),
                         "annotations": {c.APPROVE_ANNOTATION: value}}}


def pause_patch(paused: bool) -> dict[str, JsonValue]:
    return {"spec": {"strategy": {"paused": paused}}}


def resume_patch(token: str | None = None) -> dict[str, JsonValue]:
    """Unpause, and run the failed targets again (a new value of the retry annotation)."""
    return {**pause_patch(False), "metadata": {"annotations": {c.RETRY_ANNOTATION: token or str(int(time.time()))}}}


def by_name(items: Sequence[Mapping[str, object]]) -> list[SetObject]:
    """Sets as the API lists them, by name."""
    return sorted((cast(SetObject, dict(i)) for i in items), key=lambda o: str((o.get("metadata") or {}).get("name")))
