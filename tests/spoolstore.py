"""A second kind of backup store, defined in the tests and nowhere in the package, to show that a store is wired into
the Jobs, the status and the Job commands by its own module alone (jobs.py, jobtools.py and handlers.py never
change for one).

The spool store keeps dumps in a spool directory of the node (a hostPath mounted at /spool), one directory per
resource, and its Jobs must carry a token from a Secret (a stand-in for an object store's credentials): a Job
without it refuses to touch the spool.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kubernetes.client.models.v1_host_path_volume_source import V1HostPathVolumeSource
from kubernetes.client.models.v1_volume import V1Volume
from kubernetes.client.models.v1_volume_mount import V1VolumeMount

from alembic_operator import backupstores
from alembic_operator.backupstores import StoreError
from alembic_operator.backupstores.volume import VolumeStore
from alembic_operator.jobparts import SecretEnv, StoreWiring

SPOOL_MOUNT = "/spool"
ROOT_ENV, TOKEN_ENV = "SPOOL_ROOT", "SPOOL_TOKEN"


@contextmanager
def spool_store() -> Iterator[type[VolumeStore]]:
    """The store class, registered as `test-spool` for the time of the block."""

    class SpoolStore(VolumeStore):
        name = "test-spool"
        spec_field = "spool"  # a field it would add to api.BackupSpec: {node, path, tokenSecret}

        @classmethod
        def wiring(cls, config: Mapping[str, Any], namespace: str, name: str) -> StoreWiring:
            return StoreWiring(
                store=cls.name,
                location=f"spool://{namespace}/{name}",
                shown_as=f"spool {config['node']}:{config['path']}/{namespace}/{name}",
                spec_field="spec.backup.spool",
                volumes=(V1Volume(name="spool", host_path=V1HostPathVolumeSource(path=config["path"],
                                                                                 type="Directory")),),
                mounts=(V1VolumeMount(name="spool", mount_path=SPOOL_MOUNT),),
                settings=((ROOT_ENV, SPOOL_MOUNT),),
                credentials=(SecretEnv(TOKEN_ENV, config["tokenSecret"], "token"),),
            )

        def __init__(self, location: str) -> None:
            if not os.environ.get(TOKEN_ENV):
                raise StoreError("BackupFailed", f"{TOKEN_ENV} is not set: the spool is not touched without it")
            super().__init__(location)  # references stay spool://...; the files live under the spool's root
            self.directory = Path(os.environ[ROOT_ENV], location.removeprefix("spool://"))

    try:
        yield SpoolStore
    finally:
        backupstores.REGISTRY.remove(SpoolStore.name)
