"""The ConfigMaps the operator writes beside a DatabaseMigration, built from the kubernetes client's typed models
(as jobs.py builds the Jobs): the run records (audit.py) and the plans' SQL (plansql). Both are owned by the resource
(they go with it), immutable, and labelled so that one label selector lists a resource's ConfigMaps of one kind."""

from __future__ import annotations

import base64

from kubernetes.client.models.v1_config_map import V1ConfigMap
from kubernetes.client.models.v1_object_meta import V1ObjectMeta
from kubernetes.client.models.v1_owner_reference import V1OwnerReference

from . import constants as c
from . import plansql
from .objects import Migration, ObjectMeta


def labels(meta: ObjectMeta, component: str) -> dict[str, str]:
    """The labels every ConfigMap of `component` of this resource carries: what `selector` selects."""
    return {c.OWNER_LABEL: meta["name"], "app.kubernetes.io/component": component, c.MANAGED_BY_LABEL: c.MANAGED_BY}


def selector(meta: ObjectMeta, component: str) -> str:
    return ",".join(f"{k}={v}" for k, v in labels(meta, component).items())


def run_record(obj: Migration, name: str, generation: int, result: str, key: str, text: str) -> V1ConfigMap:
    """One run's record (`text`, JSON) under `key`; its owner reference never blocks the resource's deletion."""
    meta = obj["metadata"]
    return V1ConfigMap(
        api_version="v1", kind="ConfigMap", immutable=True, data={key: text},
        metadata=V1ObjectMeta(
            name=name, namespace=meta["namespace"],
            labels={**labels(meta, c.RUN_RECORD_COMPONENT), c.GENERATION_LABEL: str(generation),
                    f"{c.GROUP}/result": result},
            owner_references=[V1OwnerReference(api_version=c.API_VERSION, kind=c.KIND, name=meta["name"],
                                               uid=meta["uid"], block_owner_deletion=False)]),
    )


def plan_sql(obj: Migration, name: str, generation: int, data: bytes) -> V1ConfigMap:
    """A plan's SQL (plansql's gzip JSON) under binaryData plansql.DATA_KEY."""
    meta = obj["metadata"]
    return V1ConfigMap(
        api_version="v1", kind="ConfigMap", immutable=True,
        binary_data={plansql.DATA_KEY: base64.b64encode(data).decode()},
        metadata=V1ObjectMeta(
            name=name, namespace=meta["namespace"],
            labels={**labels(meta, plansql.COMPONENT), c.GENERATION_LABEL: str(generation)},
            owner_references=[V1OwnerReference(api_version=c.API_VERSION, kind=c.KIND, name=meta["name"],
                                               uid=meta["uid"])]),
    )
