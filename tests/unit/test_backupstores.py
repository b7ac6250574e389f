"""The backup store seam and the mounted-volume store, on real files."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO

import pytest

from alembic_operator import backupstores
from alembic_operator.backupstores import StoreError, dump_name, open_store
from alembic_operator.backupstores.volume import VolumeStore


def write(store: backupstores.BackupStore, name: str, data: bytes) -> backupstores.StoredDump:
    def produce(out: IO[bytes]) -> None:
        out.write(data)

    return store.write(name, produce)


def test_the_volume_store_is_registered_by_name(tmp_path: Path) -> None:
    store = open_store("volume", str(tmp_path))
    assert isinstance(store, VolumeStore) and "volume" in backupstores.REGISTRY.names()
    with pytest.raises(StoreError) as err:
        open_store("tape", str(tmp_path))
    assert err.value.reason == "InvalidArgument" and "volume" in err.value.message


def test_a_write_is_atomic_with_its_checksum_and_size(tmp_path: Path) -> None:
    store = VolumeStore(str(tmp_path / "deep" / "dir"))  # created on the first write
    data = b"dump bytes" * 1000
    dump = write(store, "shop-20240101T000000Z-a1.dump", data)
    path = tmp_path / "deep" / "dir" / "shop-20240101T000000Z-a1.dump"
    assert dump.location == str(path) and path.read_bytes() == data
    assert (dump.sha256, dump.size) == ("sha256:" + hashlib.sha256(data).hexdigest(), len(data))
    store.write_record(dump.name, {"sha256": dump.sha256})
    assert json.loads(Path(f"{path}.json").read_text()) == {"sha256": dump.sha256}
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, f"{path.name}.json"]  # nothing hidden left

    def fails(out: IO[bytes]) -> None:
        out.write(b"half a dump")
        raise RuntimeError("the dump tool failed")

    with pytest.raises(RuntimeError):
        store.write("shop-20240102T000000Z-a2.dump", fails)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, f"{path.name}.json"]
    assert not store.exists("shop-20240102T000000Z-a2.dump") and store.exists(dump.name)


def test_list_and_prune_keep_the_newest_and_the_current(tmp_path: Path) -> None:
    store = VolumeStore(str(tmp_path))
    names = [dump_name("shop", dt.datetime(2024, 1, day, tzinfo=dt.UTC), ["a", "b"]) for day in range(1, 6)]
    assert names[0] == "shop-20240101T000000Z-a_b.dump"
    for name in names:
        write(store, name, name.encode())
        store.write_record(name, {})
    write(store, "shop-eu-20240109T000000Z-a.dump", b"another resource's prefix")
    (tmp_path / ".shop-20240106T000000Z-a.dump.partial").write_bytes(b"interrupted")
    assert store.list_dumps("shop") == names[::-1]

    pruned = store.prune("shop", retain=2, keep=names[1])  # the current one is kept even when it is old
    assert sorted(pruned) == sorted([names[0], names[2], names[3]])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [names[1], f"{names[1]}.json", names[4], f"{names[4]}.json", "shop-eu-20240109T000000Z-a.dump"])
    assert store.prune("shop", retain=0, keep=names[4]) == [names[1]]
    assert store.list_dumps("shop") == [names[4]] and store.list_dumps("shop-eu") == [
        "shop-eu-20240109T000000Z-a.dump"]


def test_verify_refuses_a_bad_checksum_and_a_missing_dump(tmp_path: Path) -> None:
    store = VolumeStore(str(tmp_path))
    dump = write(store, "x-20240101T000000Z-base.dump", b"0123456789")
    assert store.verify(dump.name, dump.sha256) == (dump.sha256, 10)
    with store.fetch(dump.name) as local:
        assert local.read_bytes() == b"0123456789"
    (tmp_path / dump.name).write_bytes(b"0123456788")  # one byte changed
    with pytest.raises(StoreError) as err:
        store.verify(dump.name, dump.sha256)
    assert err.value.reason == "BackupCorrupt" and dump.sha256 in err.value.message
    with pytest.raises(StoreError) as err:
        store.verify("x-20240102T000000Z-base.dump", dump.sha256)
    assert err.value.reason == "BackupNotFound"
    with pytest.raises(StoreError):
        store.verify("../escape.dump", dump.sha256)


def test_a_second_store_registers_itself(tmp_path: Path) -> None:
    class Elsewhere(VolumeStore):  # stands for S3 & co: a class with a name is all it takes
        name = "test-elsewhere"

    try:
        store = open_store("test-elsewhere", str(tmp_path))
        assert isinstance(store, Elsewhere)
        assert write(store, "a-20240101T000000Z-base.dump", b"x").size == 1
    finally:
        backupstores.REGISTRY.remove("test-elsewhere")


def _write_as_the_jobs_user(directory: Path) -> dict[str, str]:
    """VolumeStore.write into `directory` in a forked child running as the Job's user (65532) when the tests run
    as root: the StoreError it raised, as {reason, message}."""
    read, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read)
            if os.getuid() == 0:
                os.setgroups([])
                os.setgid(65532)
                os.setuid(65532)
            try:
                VolumeStore(str(directory)).write("shop-20240101T000000Z-a1.dump", lambda out: out.write(b"dump"))
                said = {"reason": "", "message": "written"}
            except StoreError as err:
                said = {"reason": err.reason, "message": err.message}
            os.write(write_end, json.dumps(said).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read) as pipe:
        text = pipe.read()
    os.waitpid(pid, 0)
    return dict(json.loads(text))


@pytest.mark.parametrize("existing", [False, True])
def test_a_directory_the_jobs_user_cannot_write_is_backup_volume_not_writable(existing: bool) -> None:
    """A hostPath or NFS directory owned by root, 0755 (fsGroup does not apply to them): the Job's user (65532 when
    the tests run as root; the test's own user in a directory it made read-only otherwise) gets its own reason, the
    directory's owner and mode and the fix, never a raw PermissionError; nothing is left behind."""
    with tempfile.TemporaryDirectory() as top:
        Path(top).chmod(0o755)
        volume = Path(top) / "backups"
        (volume / "shop" / "orders" if existing else volume).mkdir(parents=True)
        for d in (volume, volume / "shop", volume / "shop" / "orders"):
            if d.exists():
                d.chmod(0o755 if os.getuid() == 0 else 0o555)
        target = volume / "shop" / "orders"
        try:
            err = _write_as_the_jobs_user(target)
        finally:
            for d in (volume, volume / "shop", volume / "shop" / "orders"):
                if d.exists():
                    d.chmod(0o755)
        assert err["reason"] == "BackupVolumeNotWritable", err
        refused = target if existing else volume
        mode = "0755" if os.getuid() == 0 else "0555"
        assert f"{target} cannot be written ({refused} is owned by uid {os.getuid()}" in err["message"]
        assert f"mode {mode}" in err["message"] and "chown -R" in err["message"] and "fsGroup" in err["message"]
        assert not list(target.glob(".*")) if target.exists() else not (volume / "shop").exists()
