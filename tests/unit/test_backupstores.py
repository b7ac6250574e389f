"""The backup store seam and the mounted-volume store, on real files."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
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
