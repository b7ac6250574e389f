"""The mounted-volume backup store: dumps are files in a directory of a volume mounted into the Job (a PVC, ...).

Its Jobs mount ``spec.backup.volume`` (any volume source) at ``/backups``, with the pod's fsGroup set to the
operator's uid so that its non-root user may write there (on volume types that apply fsGroup); a resource's dumps
are in ``/backups/<namespace>/<name>/``, shown in status as ``<volume>/<namespace>/<name>/<dump>`` (``pvc/shop-backups/
shop/orders/orders-20260101T000000Z-3f2a.dump``).

Writes are atomic and durable: the stream goes to a hidden ``.<name>.partial``, which is fsynced, renamed, and the
directory fsynced; the checksum is computed by reading the file back (what is on the disk is what is recorded).
The record ``<name>.json`` is written the same way. Pruning also removes the ``.partial`` leftovers of interrupted
backups of the prefix.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Final

from .. import reasons
from .base import BackupStore, DumpRecord, StoredDump, StoreError, newest_first, to_prune

if TYPE_CHECKING:  # the operator's side: a Job's start-up never imports pydantic or Kubernetes' models
    from pydantic import JsonValue

    from ..jobparts import StoreWiring

_CHUNK: Final = 1 << 20
_NOT_WRITABLE: Final = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
MOUNT: Final = "/backups"  # where the Jobs mount the volume


def describe_volume(volume: Mapping[str, JsonValue]) -> str:
    """A human name for the backup volume, used in status.backup.location (no secrets live in volume sources)."""
    for kind, field, prefix in (("persistentVolumeClaim", "claimName", "pvc/"), ("hostPath", "path", "hostPath:")):
        if kind in volume:
            source = volume[kind]
            return f"{prefix}{source.get(field, '?') if isinstance(source, dict) else '?'}"
    kind = next(iter(volume), "")
    return re.sub(r"[^A-Za-z0-9]", "", kind) or "volume"


def file_sha256(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return "sha256:" + digest.hexdigest(), size


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class VolumeStore(BackupStore["Mapping[str, JsonValue]"]):
    name = "volume"
    spec_field = "volume"  # a volume source, free-form JSON (api.BackupSpec.volume)

    @classmethod
    def wiring(cls, config: Mapping[str, JsonValue], namespace: str, name: str) -> StoreWiring:
        from kubernetes.client.models.v1_volume import V1Volume
        from kubernetes.client.models.v1_volume_mount import V1VolumeMount

        from ..jobparts import StoreWiring, typed

        return StoreWiring(
            store=cls.name,
            location=f"{MOUNT}/{namespace}/{name}",
            shown_as=f"{describe_volume(config)}/{namespace}/{name}",
            spec_field="spec.backup.volume",
            volumes=(typed(V1Volume, {"name": "backups", **config}),),
            mounts=(V1VolumeMount(name="backups", mount_path=MOUNT),),
            fs_group=True,
        )

    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.directory = Path(location)

    def _path(self, name: str) -> Path:
        if not name or "/" in name or name.startswith("."):
            raise StoreError(reasons.INVALID_ARGUMENT, f"{name!r} is not the name of a backup")
        return self.directory / name

    def exists(self, name: str) -> bool:
        return self._path(name).exists()

    def write(self, name: str, produce: Callable[[IO[bytes]], None]) -> StoredDump:
        final = self._path(name)
        tmp = self.directory / f".{name}.partial"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            out = open(tmp, "wb")  # noqa: SIM115 (closed by the with below, once we know we may write here)
        except OSError as err:
            if err.errno in _NOT_WRITABLE:
                raise self._not_writable() from None
            raise StoreError(reasons.BACKUP_FAILED, f"cannot write the backup directory {self.directory}: "
                             f"{err.strerror}") from None
        try:
            with out:
                produce(out)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        try:
            _fsync_file(tmp)
            os.replace(tmp, final)
            _fsync_dir(self.directory)
        except OSError as err:
            raise StoreError(reasons.BACKUP_FAILED,
                             f"cannot store the dump in {self.directory}: {err.strerror}") from None
        sha256, size = file_sha256(final)
        return StoredDump(name=name, location=self.reference(name), sha256=sha256, size=size)

    def _not_writable(self) -> StoreError:
        """BackupVolumeNotWritable, naming the directory that refused us, its owner and mode, and the fix."""
        refused = next((p for p in (self.directory, *self.directory.parents) if os.path.exists(p)), self.directory)
        try:
            st = refused.stat()
            owned = f"owned by uid {st.st_uid}, gid {st.st_gid}, mode {st.st_mode & 0o7777:04o}"
        except OSError as err:
            owned = f"unreadable: {err.strerror}"
        uid, gid = os.getuid(), os.getgid()
        return StoreError(reasons.BACKUP_VOLUME_NOT_WRITABLE, (
            f"the backup volume is not writable by the backup Job's user (uid {uid}, gid {gid}): {self.directory} "
            f"cannot be written ({refused} is {owned}). hostPath and NFS volumes ignore the pod's fsGroup: give the "
            f"directory to the Job's user on the node or the NFS server (chown -R {uid}:{gid} DIR), or use a volume "
            "type that applies fsGroup (a PersistentVolumeClaim of a CSI StorageClass, a local PersistentVolume)"))

    def write_record(self, name: str, record: DumpRecord) -> None:
        _write_atomic(self._path(f"{name}.json"), json.dumps(record, indent=2) + "\n")
        _fsync_dir(self.directory)

    def list_dumps(self, prefix: str) -> list[str]:
        return newest_first([p.name for p in self.directory.iterdir()], prefix)

    def prune(self, prefix: str, retain: int, keep: str) -> list[str]:
        pruned = to_prune(self.list_dumps(prefix), retain, keep)
        for name in pruned:
            for path in (self.directory / name, self.directory / f"{name}.json"):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        for path in self.directory.iterdir():
            if path.name.startswith(f".{prefix}-") and path.name.endswith(".partial") and keep not in path.name:
                with contextlib.suppress(OSError):
                    path.unlink()
        return pruned

    def checksum(self, name: str) -> tuple[str, int]:
        path = self._path(name)
        if not path.is_file():
            raise StoreError(reasons.BACKUP_NOT_FOUND, f"the backup file {path} does not exist (was it pruned, or "
                             "is the backup volume not the one it was written to?)")
        return file_sha256(path)

    @contextlib.contextmanager
    def fetch(self, name: str) -> Iterator[Path]:
        yield self._path(name)

    def read_record(self, name: str) -> bytes | None:
        try:
            return self._path(f"{name}.json").read_bytes()
        except FileNotFoundError:
            return None
        except OSError as err:
            raise StoreError(reasons.BACKUP_FAILED, f"cannot read the record of {name}: {err.strerror}") from None
