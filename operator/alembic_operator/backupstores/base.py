"""The interface of a backup store: where the Jobs keep database dumps, and how they are named.

A store writes a dump from a stream (atomically: a reader never sees half a dump; durably; with its sha256 and
size), keeps a JSON record next to it, lists and prunes a resource's dumps (the newest N stay, and always the one
just written), and hands a dump back for a restore only after its checksum matched the one recorded when it was
taken. The engines (``engines/``) produce and consume the bytes; a store never looks inside them.

One `BackupStore` subclass per kind of storage (``volume.py``: a mounted volume), registered by its ``name`` when
the class is defined. It has two sides, both in its module:

- in the operator, :meth:`BackupStore.wiring` declares what the backup and restore Jobs need to reach the store
  (volumes, environment, credentials as Secret references, how a location is named in status, the Job command's
  arguments), from the store's field of ``spec.backup`` (``spec_field``): a `StoreWiring`;
- in the Job (``alembic-operator job backup|restore --store NAME``), an instance opened on a location does the I/O.

Adding a kind of storage means adding one module to this package and its field to ``api.BackupSpec``.

Dumps are named ``<prefix>-<YYYYmmddTHHMMSSZ>-<heads>.dump``: the prefix is the resource's, the timestamp orders
them, the heads say at which revision the database was.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, ClassVar, Final, Generic, TypedDict, TypeVar

from .. import reasons
from ..plugins import Registry
from ..reasons import Reason

if TYPE_CHECKING:  # the operator's side (the spec, the Jobs' wiring): a Job's start-up never imports them
    from pydantic import JsonValue

    from ..api import BackupSpec
    from ..jobparts import StoreWiring

Config = TypeVar("Config")

TIMESTAMP: Final = "%Y%m%dT%H%M%SZ"
SHA256: Final = re.compile(r"sha256:[0-9a-f]{64}")
PREFIX: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def dump_name(prefix: str, stamp: dt.datetime, heads: Sequence[str]) -> str:
    return f"{prefix}-{stamp.strftime(TIMESTAMP)}-{_safe_name('+'.join(heads) or 'base')}.dump"


def dump_pattern(prefix: str) -> re.Pattern[str]:
    """Matches the dumps of `prefix` (and not of a longer prefix); group 1 is the timestamp."""
    return re.compile(rf"^{re.escape(prefix)}-(\d{{8}}T\d{{6}}Z)-(.+)\.dump$")


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:64] or "_"


def newest_first(names: Sequence[str], prefix: str) -> list[str]:
    """The dumps of `prefix` among `names`, newest first."""
    pattern = dump_pattern(prefix)
    matched = [(m.group(1), name) for name in names if (m := pattern.match(name))]
    return [name for _stamp, name in sorted(matched, reverse=True)]


def to_prune(dumps: Sequence[str], retain: int, keep: str) -> list[str]:
    """Of `dumps` (newest first), those beyond the newest `retain`, never `keep` (it counts as one of them)."""
    kept = {keep, *[n for n in dumps if n != keep][: max(retain - 1, 0)]}
    return [name for name in dumps if name not in kept]


class StoreError(Exception):
    """A failure with a stable CamelCase reason (BackupFailed, BackupNotFound, BackupCorrupt) and no secret."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class DumpRecord(TypedDict):
    """The JSON record kept next to a dump (``<name>.json``), for people and tools reading the store directly."""

    revision: str | None
    sha256: str
    sizeBytes: int
    completedAt: str
    database: Mapping[str, JsonValue]  # where the dump came from, as the engine describes it (never a secret)
    file: str


@dataclass(frozen=True)
class StoredDump:
    name: str
    location: str  # its reference, `<store location>/<name>`: the Job result's `file`, `restore --dump` takes it
    sha256: str  # "sha256:<hex>"
    size: int


class BackupStore(ABC, Generic[Config]):
    name: ClassVar[str]  # the registry's name (`alembic-operator job backup --store NAME`)
    spec_field: ClassVar[str]  # its field of api.BackupSpec (Python name), whose value is its `Config`

    @classmethod
    @abstractmethod
    def wiring(cls, config: Config, namespace: str, name: str) -> StoreWiring:
        """What the backup and restore Jobs of resource `namespace`/`name` need to reach this store as `config`
        (the value of ``spec.backup.<spec_field>``) sets it up. Pure: runs in the operator."""

    @classmethod
    def open_dump(cls, dump: str) -> tuple[BackupStore[Config], str]:
        """The store holding dump reference `dump` (``<location>/<name>``), and the dump's name in it."""
        location, _, name = dump.rpartition("/")
        return cls(location), name

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            REGISTRY.add(cls.name, cls)

    def __init__(self, location: str) -> None:
        """`location`: where this store's dumps of one resource live (a directory, a bucket and a key prefix), as
        its `StoreWiring.location` names it."""
        self.location = location.rstrip("/") or location

    def reference(self, name: str) -> str:
        """What the Job's result, status and ``restore --dump`` call dump `name`: ``<location>/<name>``."""
        return f"{self.location}/{name}"

    @abstractmethod
    def exists(self, name: str) -> bool: ...

    @abstractmethod
    def write(self, name: str, produce: Callable[[IO[bytes]], None]) -> StoredDump:
        """Store what `produce` writes into the stream (a real file) as `name`, atomically and durably; nothing
        is left behind when `produce` raises."""

    @abstractmethod
    def write_record(self, name: str, record: DumpRecord) -> None:
        """Keep the JSON record of dump `name` next to it (``<name>.json``)."""

    @abstractmethod
    def list_dumps(self, prefix: str) -> list[str]:
        """The dumps of `prefix`, newest first."""

    @abstractmethod
    def prune(self, prefix: str, retain: int, keep: str) -> list[str]:
        """Delete the dumps of `prefix` beyond the newest `retain` (never `keep`) with their records, and what
        interrupted writes of `prefix` left; the names deleted."""

    @abstractmethod
    def checksum(self, name: str) -> tuple[str, int]:
        """("sha256:<hex>", size) of dump `name`, read back from the store; BackupNotFound when it is not there."""

    @abstractmethod
    def fetch(self, name: str) -> AbstractContextManager[Path]:
        """A local file holding dump `name` for the time of the block."""

    @abstractmethod
    def read_record(self, name: str) -> bytes | None:
        """The JSON record of dump `name` as written (``<name>.json``), None when there is none."""

    def recorded_sha256(self, name: str) -> str:
        """The checksum the record of dump `name` kept when it was taken: a restore by hand names a backup that
        status may no longer list, and still verifies the dump against what was recorded."""
        raw = self.read_record(name)
        if raw is None:
            raise StoreError(reasons.BACKUP_NOT_FOUND, f"the backup {self.reference(name)} has no record "
                             f"({name}.json): it is not a complete backup (an interrupted one, or not a backup at all)")
        try:
            sha = json.loads(raw).get("sha256")
        except (ValueError, AttributeError):
            sha = None
        if not isinstance(sha, str) or not SHA256.fullmatch(sha):
            raise StoreError(reasons.BACKUP_CORRUPT, f"the record of {self.reference(name)} holds no checksum "
                             "(sha256:<hex>): nothing was restored")
        return sha

    def verify(self, name: str, expected: str) -> tuple[str, int]:
        """The dump's (checksum, size) if its checksum is `expected`, else BackupCorrupt."""
        actual, size = self.checksum(name)
        if actual != expected:
            raise StoreError(reasons.BACKUP_CORRUPT, f"the backup {name} ({size} bytes) has checksum {actual}, not the "
                             f"{expected} recorded when it was taken; nothing was restored")
        return actual, size


REGISTRY: Registry[type[BackupStore[Any]]] = Registry("alembic_operator.backupstores")


def store_kind(kind: str) -> type[BackupStore[Any]]:
    store = REGISTRY.get(kind)
    if store is None:
        raise StoreError(reasons.INVALID_ARGUMENT, f"no backup store {kind!r}: one of {', '.join(REGISTRY.names())}")
    return store


def open_store(kind: str, location: str) -> BackupStore[Any]:
    return store_kind(kind)(location)


def wiring_for(backup: BackupSpec, namespace: str, name: str) -> StoreWiring | None:
    """The Job wiring of the store `backup` names, for resource `namespace`/`name`; None when backups are off."""
    chosen = backup.store() if backup.enabled else None
    if chosen is None:
        return None
    field, config = chosen
    store = next((s for s in REGISTRY if s.spec_field == field), None)
    if store is None:
        raise LookupError(f"no backup store declares spec.backup.{field}")
    return store.wiring(config, namespace, name)
