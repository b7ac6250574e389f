"""API objects the operator keeps in memory for long (its indexes of DatabaseMigrations and of their Jobs), kept as
compact JSON.

A parsed object is hundreds of small Python objects (about 8 KiB of dicts and strings for a DatabaseMigration with a
status). A thousand resources kept that way cost tens of MiB, and, once deleted, leave Python's small-object heap
fragmented: its arenas stay mapped as long as one object in them lives, so the process never shrinks back. Kept as
one compact JSON string each (a few KiB, one allocation the C library can give back), a thousand cost a few MiB.
Each read decodes a fresh copy, which the caller may change freely; the index's own logic (is it newer? is the Job
active?) reads only the fields kept beside the string.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

from .objects import Job, Migration, Object, ObjectMeta

K = TypeVar("K", bound=Hashable)
Obj = TypeVar("Obj", bound=Object)


def resource_version(obj: Object | None) -> int:
    """The resourceVersion as a number (the API server's are etcd revisions: they only grow); 0 when unknown."""
    rv = str(((obj or {}).get("metadata") or {}).get("resourceVersion") or "")
    return int(rv) if rv.isdigit() else 0


def by_resource_version(obj: Object) -> tuple[int, ...]:
    return (resource_version(obj),)


def without_managed_fields(obj: Migration) -> Migration:
    """Without metadata.managedFields: the API server's bookkeeping of who set which field, often bigger than the
    rest of the object; nothing here reads it. A shallow copy: `obj` is unchanged."""
    meta = obj.get("metadata")
    if meta is None or "managedFields" not in meta:
        return obj
    trimmed = obj.copy()
    trimmed["metadata"] = _without_managed(meta)
    return trimmed


def job_summary(job: Job) -> Job:
    """A Job without its pod template (most of its size) and managedFields: what the reconciler reads of our Jobs
    is their metadata, status and deadline."""
    trimmed = job.copy()
    if (meta := job.get("metadata")) is not None:
        trimmed["metadata"] = _without_managed(meta)
    if (spec := job.get("spec")) is not None and "template" in spec:
        trimmed["spec"] = spec.copy()
        del trimmed["spec"]["template"]
    return trimmed


def _without_managed(meta: ObjectMeta) -> ObjectMeta:
    kept = meta.copy()
    kept.pop("managedFields", None)
    return kept


class KeptObjects(Generic[K, Obj]):
    """A mapping of keys to API objects, each kept as compact JSON with its version beside it."""

    __slots__ = ("_items", "_trim", "_version")

    def __init__(self, trim: Callable[[Obj], Obj],
                 version: Callable[[Obj], tuple[int, ...]] = by_resource_version) -> None:
        self._items: dict[K, tuple[tuple[int, ...], str]] = {}
        self._trim = trim
        self._version = version

    def put(self, key: K, obj: Obj) -> None:
        self._items[key] = (self._version(obj), json.dumps(self._trim(obj), separators=(",", ":")))

    def put_if_newer(self, key: K, obj: Obj, or_same: bool = False) -> bool:
        """Keep `obj` unless the kept one is newer (or as new, unless `or_same`): never back in time. True: kept."""
        item = self._items.get(key)
        if item is not None and (self._version(obj) < item[0] if or_same else self._version(obj) <= item[0]):
            return False
        self.put(key, obj)
        return True

    def get(self, key: K) -> Obj | None:
        """A fresh copy of the object (None: not kept)."""
        item = self._items.get(key)
        if item is None:
            return None
        obj: Obj = json.loads(item[1])  # what put() wrote
        return obj

    def pop(self, key: K) -> None:
        self._items.pop(key, None)

    def values(self) -> Iterator[Obj]:
        """Fresh copies of every object (decoded one by one: for a rare scan, not for every pass)."""
        for key in list(self._items):
            if (obj := self.get(key)) is not None:
                yield obj

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __iter__(self) -> Iterator[K]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)
