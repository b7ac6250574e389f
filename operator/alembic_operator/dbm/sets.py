"""`kubectl dbm set`, `pause`, `resume`: a DatabaseMigrationSet's rollout at a glance, and its two human levers.

    kubectl dbm set                 every set of the namespace: wave, Ready/targets, migrating, failed, why
    kubectl dbm set NAME            one set: its progress, its failed targets with their reasons, plans waiting
    kubectl dbm pause NAME          spec.strategy.paused: true (nothing new starts)
    kubectl dbm resume NAME         paused false, and its failed targets run again (the retry annotation)
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypedDict

from pydantic import JsonValue

from .. import constants as c
from ..fleet.api import DatabaseMigrationSetStatus, parse_set_status
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


def detail_text(obj: SetObject) -> str:
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
        lines += ["", "Plans waiting for approval (one line per plan):"]
        rows = [["HASH", "TARGETS", "DATABASEMIGRATIONS"]]
        rows += [[p.hash, str(p.count), ", ".join(p.migrations) + (" ..." if p.count > len(p.migrations) else "")]
                 for p in st.plans]
        lines.append(views.table(rows).rstrip("\n"))
    return "\n".join(lines) + "\n"


def pause_patch(paused: bool) -> dict[str, Any]:
    return {"spec": {"strategy": {"paused": paused}}}


def resume_patch(token: str | None = None) -> dict[str, Any]:
    """Unpause, and run the failed targets again (a new value of the retry annotation)."""
    return {**pause_patch(False), "metadata": {"annotations": {c.RETRY_ANNOTATION: token or str(int(time.time()))}}}


def by_name(items: Sequence[Mapping[str, Any]]) -> list[SetObject]:
    return sorted((SetObject(**dict(i)) for i in items),  # type: ignore[typeddict-item]
                  key=lambda o: str((o.get("metadata") or {}).get("name")))
