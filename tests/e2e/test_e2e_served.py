"""Zero downtime on the bed's real node (issue 24): the served shop (examples/shop, 3 replicas of its HTTP API, as
examples/shop/deploy/shop.yaml deploys it) under a load generator that records every response (tests/loadgen.py),
rolled from one release to the next by changing the DatabaseMigration and the Deployment in one apply, as GitOps
does (tests/served.py). Two scenarios, one shop image per release (built once, cached by content), each with its
own operator (webhook included), namespace and database:

- the rename written the naive way (release 2.0-naive, one revision) fails requests of the release still serving:
  the load generator sees them, so the zeros of the other scenario mean something;
- the same rename as expand then contract (release 2.0): 0 failed requests; ``kubectl rollout undo`` once the
  expand part is in and the new release serves: 0 failed, nothing held, the contract waits; rolled forward, the
  contract Job is created only after the last pod of 1.1 is gone (both times printed); afterwards a new pod of 1.1
  is held with a reason naming the revisions; then a column drop as expand then contract (release 2.1): 0 failed
  requests, the contract after the last pod of 2.0.
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
from gating import GateOperator, held, remove_webhook_configuration
from harness import Cluster, wait_for
from served import VERSION_LABEL, PodLog, Rollout, contract_timeline, release, report, shop_ref, watch_pods
from shopapp import (
    R_CURRENCY_CONTRACT,
    R_FIXED,
    R_NAIVE,
    R_STATE_CONTRACT,
    R_STATE_EXPAND,
    release_tree,
    seed,
    upgrade,
)

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
    assert naive.versions.get("1.1", 0) > 0
    assert any("column orders.status does not exist" in error for error in naive.errors), naive.errors


@pytest.mark.timeout(1800)  # seven Jobs and sixteen pod starts: on a loaded 2-core machine, well over 10 minutes
def test_a_rename_and_a_drop_as_expand_contract_fail_no_request(served: Rollout) -> None:
    """Releases 2.0 (rename) and 2.1 (drop), each applied in one go under load: 0 failed requests, a rollout undo
    mid-expand included; each contract after the last pod of the release before it; 1.1 held after the contract."""
    s = served
    refs = {v: shop_ref(s.bed, v) for v in ("1.1", "2.0", "2.1")}
    s.apply(release(s.ns, "shop", "1.1", refs["1.1"]))
    s.cluster.wait_condition("shop", c.READY, timeout=180)
    s.wait_rolled_out("shop", "1.1")

    # --- the rename as expand/contract, with a rollout undo in the middle ---------------------------------------
    with s.load("shop", "rename") as out:
        s.apply(release(s.ns, "shop", "2.0", refs["2.0"]))
        wait_for(lambda: revision(s.db) == R_STATE_EXPAND
                 and any(r.version == "2.0" and r.ok for r in loadgen.read(out)), 600,
                 "the expand part in, and release 2.0 answering", interval=0.5)
        s.kubectl("rollout", "undo", "deployment/shop")  # back to 1.1 while the rollout is under way
        s.wait_rolled_out("shop", "1.1")
        assert revision(s.db) == R_STATE_EXPAND, "the contract ran while release 1.1 served"
        assert not [p for p in s.core.list_namespaced_pod(s.ns, label_selector="app=shop").items
                    if held(s.cluster.api.sanitize_for_serialization(p))], "a pod of 1.1 was held mid-expand"
        waiting = wait_for(lambda: (st := (s.cluster.get("shop").get("status") or {}).get("contract") or {})
                           .get("state") == "WaitingForOldVersion" and st.get("olderPods") and st, 60,
                           "status.contract naming the pods of 1.1 it waits for")
        print(f"waiting for the older version: {waiting.get('olderPods')} ({waiting.get('olderWorkloads')})")
        undone = report("rename, expand in, rollout undo to 1.1", loadgen.read(out))
        assert undone.failed == 0 and undone.versions.get("2.0", 0) > 0

        s.kubectl("rollout", "undo", "deployment/shop")  # forward again: 2.0
        s.cluster.wait_condition("shop", c.READY, timeout=600)
        s.wait_rolled_out("shop", "2.0")
        assert revision(s.db) == R_STATE_CONTRACT
        generation = int(s.cluster.get("shop")["metadata"]["generation"])
    responses = loadgen.read(out)
    rename = report("rename as expand/contract (1.1 -> 2.0, undo, 2.0 again)", responses)
    timeline = contract_timeline(s, "shop", "1.1", responses, generation)
    print(timeline.line("shop", "1.1"))
    assert timeline.created_rv > timeline.last_gone_rv, "the contract Job was created before the last 1.1 pod went"
    assert rename.failed == 0, rename.errors
    assert set(rename.versions) == {"1.1", "2.0"}
    assert s.db.query("SELECT count(*) FROM orders WHERE state IS NULL")[0][0] == 0

    # --- after the contract, a pod of 1.1 is held, naming the revision ------------------------------------------
    with s.load("shop", "held") as out:
        s.kubectl("rollout", "undo", "deployment/shop")  # to 1.1 again: its new pod cannot use this schema
        pod = wait_for(lambda: next((p for p in s.core.list_namespaced_pod(s.ns, label_selector="app=shop").items
                                     if p.metadata.labels[VERSION_LABEL] == "1.1"), None), 60, "a pod of 1.1")
        name = pod.metadata.name
        event = wait_for(lambda: next((e for e in s.cluster.events(name) if e["reason"] == "Held"), None), 30,
                         f"the Held Event of {name}")
        print(f"{name} held: {event['message']}")
        assert R_FIXED in event["message"] and R_STATE_CONTRACT in event["message"], event["message"]
        assert held(s.cluster.api.sanitize_for_serialization(s.core.read_namespaced_pod(name, s.ns)))
        s.kubectl("rollout", "undo", "deployment/shop")  # and forward again
        s.wait_rolled_out("shop", "2.0")
    kept = report("rollout undo to 1.1 after the contract (held), then 2.0 again", loadgen.read(out))
    assert kept.failed == 0 and set(kept.versions) == {"2.0"}

    # --- a column drop as expand/contract (2.0 -> 2.1) ----------------------------------------------------------
    with s.load("shop", "drop") as out:
        s.apply(release(s.ns, "shop", "2.1", refs["2.1"]))
        s.cluster.wait_condition("shop", c.READY, timeout=600)
        s.wait_rolled_out("shop", "2.1")
        generation = int(s.cluster.get("shop")["metadata"]["generation"])
    responses = loadgen.read(out)
    drop = report("drop as expand/contract (2.0 -> 2.1)", responses)
    timeline = contract_timeline(s, "shop", "2.0", responses, generation)
    print(timeline.line("shop", "2.0"))
    assert timeline.created_rv > timeline.last_gone_rv, "the contract Job was created before the last 2.0 pod went"
    assert drop.failed == 0, drop.errors
    assert revision(s.db) == R_CURRENCY_CONTRACT and set(drop.versions) == {"2.0", "2.1"}
