"""The durable audit trail: one record per finished run, beyond the newest entries status.history keeps.

Each record is a ConfigMap owned by the DatabaseMigration (so it goes with it), named so that `kubectl get` lists a
resource's runs in order, and labelled for selection:

    kubectl get configmaps -n shop -l migrations.alembic-operator.io/migration=shop,\\
        app.kubernetes.io/component=run-record -L migrations.alembic-operator.io/result

Why a ConfigMap: no second CRD to install and upgrade, readable by anyone who may read the namespace, and kept by
whatever backs up the namespace (Velero and the like). Its weakness, that whoever may edit ConfigMaps may edit a
record, is why every record is also written once to the operator's log as one JSON line with a stable schema
(logger ``alembic_operator.audit``, ``"schema": "alembic-operator.io/run-record/v1"``): ship the log to an
append-only store when the trail must be tamper-evident. `--run-records N` keeps the newest N per resource.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from . import constants as c
from .api import RunRecord, dump
from .kube import Client, Conflict

SCHEMA = "alembic-operator.io/run-record/v1"
COMPONENT = c.RUN_RECORD_COMPONENT
RECORD_KEY = c.RUN_RECORD_KEY
DEFAULT_KEEP = 100
log = logging.getLogger("alembic_operator.audit")


def record_name(migration: str, generation: int, sequence: int) -> str:
    """`<name>-run-<generation, 6 digits>-<n>`: in name order, runs come in the order they ran (a generation runs
    after the ones before it; n counts the records of one generation). Deterministic: a record is written once."""
    return f"{migration[:230]}-run-{generation:06d}-{sequence}"


def manifest(obj: dict[str, Any], record: RunRecord) -> dict[str, Any]:
    meta = obj["metadata"]
    body = {"schema": SCHEMA, "migration": {"namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"]},
            **dump(record)}
    return {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {
            "name": record_name(meta["name"], int(record.generation or 0), record.sequence),
            "namespace": meta["namespace"],
            "labels": {c.OWNER_LABEL: meta["name"], "app.kubernetes.io/component": COMPONENT,
                       c.MANAGED_BY_LABEL: c.MANAGED_BY, c.GENERATION_LABEL: str(record.generation or 0),
                       f"{c.GROUP}/result": str(record.result or "Unknown")},
            "ownerReferences": [{"apiVersion": c.API_VERSION, "kind": c.KIND, "name": meta["name"], "uid": meta["uid"],
                                 "blockOwnerDeletion": False}],
        },
        "data": {RECORD_KEY: json.dumps(body, indent=2, sort_keys=True)},
        "immutable": True,
    }


async def write(client: Client, obj: dict[str, Any], records: list[RunRecord], keep: int = DEFAULT_KEEP) -> None:
    """Write the decision's records (once: an existing one is kept), log each as JSON, and prune to `keep`."""
    if not records:
        return
    meta = obj["metadata"]
    for record in records:
        body = manifest(obj, record)
        try:
            await client.create_config_map(body)
        except Conflict:
            continue  # written by an earlier pass of the same decision
        log.info(body["data"][RECORD_KEY].replace("\n", "").replace("  ", ""))
    names = sorted(await client.list_config_map_names(
        meta["namespace"], f"{c.OWNER_LABEL}={meta['name']},app.kubernetes.io/component={COMPONENT}"))
    for old in names[: max(0, len(names) - keep)]:
        await client.delete_config_map(meta["namespace"], old)
