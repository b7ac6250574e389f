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

from . import configmaps, jobparts
from . import constants as c
from .api import JsonObject, RunRecord, dump
from .kube import Client, Conflict
from .objects import Migration

SCHEMA = "alembic-operator.io/run-record/v1"
COMPONENT = c.RUN_RECORD_COMPONENT
RECORD_KEY = c.RUN_RECORD_KEY
DEFAULT_KEEP = 100
log = logging.getLogger("alembic_operator.audit")


def record_name(migration: str, generation: int, sequence: int) -> str:
    """`<name>-run-<generation, 6 digits>-<n>`: in name order, runs come in the order they ran (a generation runs
    after the ones before it; n counts the records of one generation). Deterministic: a record is written once."""
    return f"{migration[:230]}-run-{generation:06d}-{sequence}"


def text(obj: Migration, record: RunRecord) -> str:
    """The record as kept: stable JSON with the schema and the resource it belongs to."""
    meta = obj["metadata"]
    body = {"schema": SCHEMA, "migration": {"namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"]},
            **dump(record)}
    return json.dumps(body, indent=2, sort_keys=True)


def manifest(obj: Migration, record: RunRecord) -> JsonObject:
    """The record's ConfigMap, as the API server receives it."""
    generation = int(record.generation or 0)
    return jobparts.manifest(configmaps.run_record(
        obj, record_name(obj["metadata"]["name"], generation, record.sequence), generation,
        str(record.result or "Unknown"), RECORD_KEY, text(obj, record)))


async def write(client: Client, obj: Migration, records: list[RunRecord], keep: int = DEFAULT_KEEP) -> None:
    """Write the decision's records (once: an existing one is kept), log each as JSON, and prune to `keep`."""
    if not records:
        return
    meta = obj["metadata"]
    for record in records:
        try:
            await client.create_config_map(manifest(obj, record))
        except Conflict:
            continue  # written by an earlier pass of the same decision
        log.info(text(obj, record).replace("\n", "").replace("  ", ""))
    names = sorted(await client.list_config_map_names(meta["namespace"], configmaps.selector(meta, COMPONENT)))
    for old in names[: max(0, len(names) - keep)]:
        await client.delete_config_map(meta["namespace"], old)
