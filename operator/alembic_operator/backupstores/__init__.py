"""Backup stores: one module per kind of storage, each defining a `BackupStore` subclass that registers itself.

    store = backupstores.open_store("volume", "/backups/shop/orders")
    dump = store.write(name, engine_snapshot.dump); store.verify(name, sha256); with store.fetch(name) as path: ...

The interface and the dump naming are in ``base.py``; ``volume.py`` (a mounted volume) is the first store. Adding
one (S3, ...) means adding one module here (it is found and imported on the first lookup), plus tests and docs.
"""

from .base import (
    PREFIX,
    REGISTRY,
    BackupStore,
    StoredDump,
    StoreError,
    dump_name,
    dump_pattern,
    newest_first,
    open_store,
    to_prune,
)

__all__ = ["PREFIX", "REGISTRY", "BackupStore", "StoreError", "StoredDump", "dump_name", "dump_pattern", "newest_first",
           "open_store", "to_prune"]
