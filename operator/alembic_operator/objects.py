"""The Kubernetes objects the operator reads, as the API server sends them (camelCase JSON): the parts it reads.

`TypedDict`s, every key optional (``total=False``: the API server leaves out what is unset), so an object stays the
plain JSON it arrived as (the indexes keep it as compact JSON: kept.py) while every read of it is typed. The API server
validated each object against its schema; `job`, `pod` and `migration` say which shape a body from the API (Kopf's
watches, the client) is, at the one place it enters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypedDict, cast

from pydantic import JsonValue

from .api import JsonObject


class OwnerReference(TypedDict, total=False):
    kind: str
    name: str
    uid: str
    controller: bool


class ObjectMeta(TypedDict, total=False):
    name: str
    namespace: str
    uid: str
    generation: int
    resourceVersion: str
    labels: dict[str, str]
    annotations: dict[str, str]
    creationTimestamp: str
    deletionTimestamp: str
    managedFields: list[JsonValue]
    ownerReferences: list[OwnerReference]


class Said(TypedDict, total=False):
    """What Kubernetes says of a state: a CamelCase reason and a message (a waiting container's, a condition's)."""

    reason: str
    message: str


class Condition(Said, total=False):
    """A condition of a Job or a pod (not metav1.Condition: no observedGeneration)."""

    type: str
    status: str
    lastTransitionTime: str


class JobSpec(TypedDict, total=False):
    activeDeadlineSeconds: int
    template: JsonObject  # dropped from the index (kept.job_summary)


class JobStatus(TypedDict, total=False):
    conditions: list[Condition]
    startTime: str
    completionTime: str


class Job(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: ObjectMeta
    spec: JobSpec
    status: JobStatus


class Resources(TypedDict, total=False):
    limits: dict[str, str]
    requests: dict[str, str]


class Container(TypedDict, total=False):
    name: str
    image: str
    resources: Resources


class SchedulingGate(TypedDict):
    name: str


class PodSpec(TypedDict, total=False):
    nodeName: str
    initContainers: list[Container]
    containers: list[Container]
    schedulingGates: list[SchedulingGate]


class StateTerminated(Said, total=False):
    exitCode: int


class ContainerState(TypedDict, total=False):
    waiting: Said
    running: JsonObject
    terminated: StateTerminated


class ContainerStatus(TypedDict, total=False):
    name: str
    state: ContainerState
    lastState: ContainerState


class PodStatus(Said, total=False):
    phase: str
    conditions: list[Condition]
    initContainerStatuses: list[ContainerStatus]
    containerStatuses: list[ContainerStatus]


class Pod(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: ObjectMeta
    spec: PodSpec
    status: PodStatus


class WorkloadStatus(TypedDict, total=False):
    updateRevision: str  # a StatefulSet's current controller revision


class Workload(TypedDict, total=False):
    """A ReplicaSet, Deployment or StatefulSet: which revision of its template a pod comes from (expand/contract)."""

    apiVersion: str
    kind: str
    metadata: ObjectMeta
    status: WorkloadStatus


class Migration(TypedDict, total=False):
    """A DatabaseMigration: its spec and status are read through api.py's models (parse_spec, parse_status)."""

    apiVersion: str
    kind: str
    metadata: ObjectMeta
    spec: JsonObject
    status: JsonObject


def job(body: Mapping[str, object]) -> Job:
    """A Job's body from the API (a watch event, a list) read as what it is."""
    return cast(Job, body)


def pod(body: Mapping[str, object]) -> Pod:
    """A pod's body from the API read as what it is."""
    return cast(Pod, body)


def workload(body: Mapping[str, object]) -> Workload:
    """A ReplicaSet's, Deployment's or StatefulSet's body from the API read as what it is."""
    return cast(Workload, body)


def migration(body: Mapping[str, object]) -> Migration:
    """A DatabaseMigration's body from the API read as what it is."""
    return cast(Migration, body)


Object = Job | Pod | Migration
"""What the indexes keep."""
