"""Zero downtime on the bed's real node (issue 24): the served shop (examples/shop, 3 replicas of its HTTP API, as
examples/shop/deploy/shop.yaml deploys it) under a load generator that records every response (tests/loadgen.py),
rolled from one release to the next by changing the DatabaseMigration and the Deployment in one apply, as GitOps
does (tests/served.py).

The rename written the naive way (release 2.0-naive, one revision) fails requests of the release still serving:
the load generator sees them. The same rename and a column drop as expand then contract (releases 2.0 and 2.1),
with 0 failed requests, join this module with the operator's side of issue 24 (the contract part run after the
old release's pods are gone).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s

import loadgen
from alembic_operator import constants as c
from bed.controlplane import Bed
from bed.postgres import Database
from e2e import APPS_ROOT, E2E, backups_dir, revision
from gating import GateOperator, remove_webhook_configuration
from harness import Cluster, wait_for
from served import PodLog, Rollout, release, report, shop_ref, watch_pods
from shopapp import R_FIXED, R_NAIVE, release_tree, seed, upgrade

pytestmark = pytest.mark.bed


@pytest.fixture
def served(bed: Bed, crd: Path, kube_api: k8s.ApiClient, namespace: str, database: Database,
           postgres_in_bed: tuple[str, int], tmp_path: Path) -> Iterator[Rollout]:
    """The whole operator (webhook included) on the test's namespace, release 1.1 of the shop migrated and seeded
    in its database (as a team adopting the operator has it), and a watch recording when each pod goes."""
    cluster = Cluster(kube_api, namespace)
    cluster.secret("shop-db", {"url": database.at(*postgres_in_bed).url})
    tree = release_tree(tmp_path / "shop-1.1", "1.1")
    upgrade(tree, database.url, R_FIXED)
    seed(tree, database.url)
    operator = GateOperator(bed, namespace, tmp_path / "operator.log", core=True)
    APPS_ROOT.mkdir(parents=True, exist_ok=True)
    apps = Path(tempfile.mkdtemp(prefix="app-", dir=APPS_ROOT))
    env = E2E(bed=bed, cluster=cluster, db=database, operator=operator, tmp=tmp_path,
              backups=backups_dir(bed, namespace), apps=apps, pod_db=database.at(*postgres_in_bed))
    pods = PodLog()
    watcher = threading.Thread(target=watch_pods, args=(kube_api, namespace, pods), daemon=True)
    watcher.start()
    operator.start()
    try:
        yield Rollout(bed=bed, cluster=cluster, db=database, tmp=tmp_path, pods=pods)
        env.leak_check()
    finally:
        pods.stop.set()
        operator.stop()
        remove_webhook_configuration(kube_api, operator.config_name)
        shutil.rmtree(apps, ignore_errors=True)
        shutil.rmtree(env.backups, ignore_errors=True)
        for obj in cluster.custom.list_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.PLURAL)["items"]:
            cluster.patch(obj["metadata"]["name"], {"metadata": {"finalizers": None}})
        with contextlib.suppress(k8s.ApiException):
            k8s.AppsV1Api(kube_api).delete_collection_namespaced_deployment(namespace)


def test_the_naive_rename_fails_requests_of_the_running_release(served: Rollout) -> None:
    """Today's behaviour, and the proof that the load generator sees an outage: release 2.0-naive renames the column
    in one revision, applied while 1.1 serves; every query of 1.1 fails from its commit until 1.1 is gone."""
    s = served
    s.apply(release(s.ns, "shop", "1.1", shop_ref(s.bed, "1.1")))
    s.cluster.wait_condition("shop", c.READY, timeout=180)
    s.wait_rolled_out("shop", "1.1")
    with s.load("shop", "naive") as out:
        s.apply(release(s.ns, "shop", "2.0-naive", shop_ref(s.bed, "2.0-naive")))
        wait_for(lambda: any(not r.ok for r in loadgen.read(out)), 240, "a failed request", interval=0.5)
        assert revision(s.db) == R_NAIVE
    naive = report("naive rename (1.1 -> 2.0-naive), until the first failures", loadgen.read(out))
    assert naive.failed > 0 and naive.versions.get("1.1", 0) > 0
    assert all("column orders.status does not exist" in error for error in naive.errors), naive.errors
