"""Kubernetes objects as typed models (the kubernetes client's ``V1*`` pydantic models), and the one place they
become JSON for the API server.

The operator builds its Jobs from these models (``jobs.py``), as CloudNativePG builds its Jobs from the Go types in
``pkg/specs``: a misspelt field or a wrong type fails where the object is built, not at the API server. What the user
passes through to the Jobs (``spec.jobTemplate``'s core/v1 objects, ``spec.backup.volume``) is already valid
core/v1 JSON (the CRD and :mod:`alembic_operator.api` check it): :func:`typed` reads it into the same models.
What a backup store adds to its Jobs is a :class:`StoreWiring`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

from kubernetes.client.models.v1_env_var import V1EnvVar
from kubernetes.client.models.v1_env_var_source import V1EnvVarSource
from kubernetes.client.models.v1_secret_key_selector import V1SecretKeySelector
from kubernetes.client.models.v1_volume import V1Volume
from kubernetes.client.models.v1_volume_mount import V1VolumeMount
from pydantic import BaseModel, JsonValue, ValidationError

M = TypeVar("M", bound=BaseModel)


def typed(model: type[M], data: Mapping[str, JsonValue]) -> M:
    """`data` (core/v1 JSON, camelCase) as `model`.

    A Quantity (``cpu: 1``, an emptyDir's ``sizeLimit: 1``) may be a JSON number in a spec; the client types every
    Quantity as a string, so a number where a string is expected is read as its decimal string: the same Quantity
    for the API server. Anything else the model refuses raises.
    """
    try:
        return model.model_validate(data)
    except ValidationError as err:
        numbers = [e["loc"] for e in err.errors() if e["type"] == "string_type"
                   and isinstance(e["input"], int | float) and not isinstance(e["input"], bool)]
        if not numbers:
            raise
    fixed: JsonValue = dict(data)
    for loc in numbers:
        fixed = _as_string(fixed, tuple(loc))
    return model.model_validate(fixed)


def _as_string(node: JsonValue, loc: tuple[int | str, ...]) -> JsonValue:
    """`node` with the number at `loc` replaced by its decimal string (copied along the path, never in place)."""
    if not loc:
        return str(node)
    key, rest = loc[0], loc[1:]
    if isinstance(node, dict) and isinstance(key, str) and key in node:
        return {**node, key: _as_string(node[key], rest)}
    if isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node):
        return [*node[:key], _as_string(node[key], rest), *node[key + 1:]]
    return node


def manifest(obj: BaseModel) -> dict[str, JsonValue]:
    """The JSON body the API server receives: wire names, and no field that was never set."""
    return obj.model_dump(mode="json", by_alias=True, exclude_none=True)


@dataclass(frozen=True)
class SecretEnv:
    """An environment variable the kubelet reads from a Secret's key: the Job names the Secret, never the value."""

    name: str
    secret: str
    key: str

    def var(self) -> V1EnvVar:
        return V1EnvVar(name=self.name, value_from=V1EnvVarSource(
            secret_key_ref=V1SecretKeySelector(name=self.secret, key=self.key)))


@dataclass(frozen=True)
class StoreWiring:
    """What a backup store adds to the backup and restore Jobs of one resource.

    A store (``backupstores/``) builds it from its field of ``spec.backup``; the Job builders (``jobs.py``) put it
    into the Jobs without knowing what kind of store it is, and the Job's ``alembic-operator job backup|restore``
    opens the store from the arguments it declares.
    """

    store: str
    """The store's registry name (``--store``)."""
    location: str
    """Where this resource's dumps live, as the Job opens the store (a directory, ``s3://bucket/prefix``). A dump's
    reference (``status`` keeps it, ``restore --dump`` takes it) is ``<location>/<dump name>``."""
    shown_as: str
    """How ``status.backup.location`` names that location, for humans (``pvc/shop-backups/shop/orders``)."""
    spec_field: str
    """The DatabaseMigration field that configures the store (``spec.backup.volume``)."""
    volumes: tuple[V1Volume, ...] = ()
    mounts: tuple[V1VolumeMount, ...] = ()
    settings: tuple[tuple[str, str], ...] = ()
    """Environment variables with plain values (endpoints, regions...): never a credential."""
    credentials: tuple[SecretEnv, ...] = ()
    """Environment variables from Secrets (``secretKeyRef``): the only way a credential reaches a Job."""
    fs_group: bool = False
    """The pod's fsGroup is the operator's uid, so that its non-root user may write the store's volumes (on volume
    types that apply fsGroup)."""

    def env(self) -> list[V1EnvVar]:
        return [V1EnvVar(name=n, value=v) for n, v in self.settings] + [c.var() for c in self.credentials]

    def backup_args(self, prefix: str, retain: int) -> list[str]:
        """``alembic-operator job backup``'s arguments: the store, then which dumps and how many to keep."""
        return ["--store", self.store, "--location", self.location, "--prefix", prefix, "--retain", str(retain),
                "--location-prefix", self.shown_as]

    def restore_args(self, dump: str) -> list[str]:
        """``alembic-operator job restore``'s: the store and the dump's reference."""
        return ["--store", self.store, "--dump", dump]

    def placeholder(self) -> str:
        """A dump reference for a server-side dry run of the restore Job (never read)."""
        return f"{self.location}/dry-run.dump"
