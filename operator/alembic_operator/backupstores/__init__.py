"""Backup stores: one module per kind of storage, each defining a `BackupStore` subclass that registers itself.

    wiring = backupstores.wiring_for(spec.backup, namespace, name)  # in the operator: what its Jobs need
    store = backupstores.open_store("volume", "/backups/shop/orders")  # in the Job (--store, --location)
    dump = store.write(name, engine_snapshot.dump); store.verify(name, sha256); with store.fetch(name) as path: ...

The interface and the dump naming are in ``base.py``; ``volume.py`` (a mounted volume) is the first store. Adding
one (S3, ...) means adding one module here (it is found and imported on the first lookup) and its field to
``api.BackupSpec``, plus tests and docs.
"""

from .base import (
    PREFIX,
    REGISTRY,
    SHA256,
    BackupStore,
    StoredDump,
    StoreError,
    dump_name,
    dump_pattern,
    newest_first,
    open_store,
    store_kind,
    to_prune,
    wiring_for,
)

__all__ = ["PREFIX", "REGISTRY", "SHA256", "BackupStore", "StoreError", "StoredDump", "dump_name", "dump_pattern",
           "newest_first", "open_store", "store_kind", "to_prune", "wiring_for"]
