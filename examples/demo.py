"""`make demo`: the operator's whole job, end to end, on the local bed.

    migrate to revision 3 with data in the tables (Ready)
    -> a destructive plan (revision 4 drops orders.legacy_code) held for approval
    -> approve exactly that plan -> Ready
    -> a failing revision (5) -> automatic rollback, the data intact

Everything is real: kube-apiserver, kube-controller-manager and etcd built from Go modules, a node agent running
each Job's containers as local processes (the host environment stands in for every image), PostgreSQL, Alembic,
pg_dump. The bed keeps running afterwards so you can look around (`make dev-cluster-down` stops it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from kubernetes import client as k8s  # noqa: E402
from kubernetes import config as k8s_config  # noqa: E402

from alembic_operator import constants as c  # noqa: E402
from bed.controlplane import Bed  # noqa: E402
from bed.postgres import PostgresServer  # noqa: E402
from harness import Cluster, OperatorProcess, wait_for  # noqa: E402

SHOP = REPO / "examples" / "shop"
REV3, REV4, REV5 = "fc7b070a6d88", "382cd6ceb09e", "88d79e1b94a5"
NS = "shop"
BOLD, DIM, RESET = ("\033[1m", "\033[2m", "\033[0m") if sys.stdout.isatty() else ("", "", "")


def say(text: str) -> None:
    print(f"\n{BOLD}== {text}{RESET}", flush=True)


def show(bed: Bed, *args: str) -> None:
    print(f"{DIM}$ kubectl {' '.join(args)}{RESET}", flush=True)
    proc = bed.kubectl(*args)
    print((proc.stdout or proc.stderr).rstrip(), flush=True)


def conditions(cluster: Cluster, name: str) -> None:
    st = cluster.get(name).get("status") or {}
    for cond in st.get("conditions") or []:
        print(f"  {cond['type']:<17} {cond['status']:<6} {cond['reason']:<32} {cond['message'][:110]}")


def rows(pg_url_db: Any) -> list[tuple[Any, ...]]:
    return pg_url_db.query("SELECT o.id, c.name, o.total FROM orders o JOIN customers c ON c.id = o.customer_id "
                           "ORDER BY o.id")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bed-dir", type=Path, default=REPO / ".bed")
    args = parser.parse_args()

    say("Starting the local Kubernetes bed (cached control plane + node agent)")
    bed = Bed(args.bed_dir, daemon=True).start()
    print(f"API server {bed.server}; export KUBECONFIG={bed.kubeconfig}")
    show(bed, "get", "nodes")

    say("Starting PostgreSQL on a loopback port")
    pg = PostgresServer(Path(tempfile.mkdtemp(prefix="alembic-operator-demo-pg-")))
    pg.start()
    db = pg.create_database("shop")
    print(f"database shop on 127.0.0.1:{pg.port} (the URL lives only in a Secret)")

    operator: OperatorProcess | None = None
    try:
        say("Installing the CRD and starting the operator")
        proc = bed.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
        print(proc.stdout.strip() or proc.stderr.strip())
        cfg = k8s.Configuration()
        k8s_config.load_kube_config(str(bed.kubeconfig), client_configuration=cfg)
        api = k8s.ApiClient(cfg)
        core = k8s.CoreV1Api(api)
        _fresh_namespace(core, bed)
        cluster = Cluster(api, NS)
        log = Path(tempfile.mkdtemp(prefix="alembic-operator-demo-")) / "operator.log"
        operator = OperatorProcess(bed.kubeconfig, [NS], log).start()
        print(f"operator running (log: {log})")
        backups = Path(tempfile.mkdtemp(prefix="alembic-operator-demo-backups-"))
        backups.chmod(0o755)
        cluster.secret("shop-db", {"url": db.url})

        say(f"1. A DatabaseMigration to revision {REV3} (customers, orders, currency)")
        spec = {
            "database": {"urlSecretRef": {"name": "shop-db", "key": "url"}},
            "migrations": {"image": "ghcr.io/acme/shop:1.4.2", "workingDir": str(SHOP)},
            "targetRevision": REV3,
            "backup": {"volume": {"hostPath": {"path": str(backups), "type": "DirectoryOrCreate"}}, "retain": 5},
        }
        cluster.create("shop", spec)
        show(bed, "wait", "-n", NS, "--for=condition=Ready", "dbm/shop", "--timeout=180s")
        show(bed, "get", "dbm", "-n", NS)
        subprocess.run([sys.executable, str(SHOP / "seed.py")], check=True, env={**os.environ, "DATABASE_URL": db.url})
        before = rows(db)
        print("orders in the database:")
        for row in before:
            print("  ", row)

        say(f"2. Target revision {REV4}: it drops orders.legacy_code, so the plan waits for approval")
        cluster.patch("shop", {"spec": {"targetRevision": REV4}})
        obj = cluster.wait_condition("shop", "Stalled", reason="DestructiveChangesNotApproved", timeout=180)
        show(bed, "get", "dbm", "-n", NS)
        print("status.plan:", json.dumps(obj["status"]["plan"], indent=2))
        conditions(cluster, "shop")

        say("3. Approve exactly that plan (by its hash)")
        plan_hash = obj["status"]["plan"]["hash"]
        show(bed, "annotate", "-n", NS, "dbm/shop", f"{c.APPROVE_ANNOTATION}={plan_hash}")
        show(bed, "wait", "-n", NS, "--for=condition=Ready", "dbm/shop", "--timeout=180s")
        show(bed, "get", "dbm", "-n", NS)

        say(f"4. Target head ({REV5}): this revision fails on purpose (CHECK total > 0, a free sample order)")
        cluster.patch("shop", {"spec": {"targetRevision": "head"}})
        cluster.wait_condition("shop", "RolledBack", timeout=240)
        obj = cluster.wait_condition("shop", "Stalled", timeout=60)
        show(bed, "get", "dbm", "-n", NS, "-o", "wide")
        conditions(cluster, "shop")
        print("history:", json.dumps(obj["status"]["history"], indent=2))
        show(bed, "get", "events", "-n", NS, "--field-selector", "involvedObject.kind=DatabaseMigration",
             "--sort-by=.lastTimestamp")
        after = rows(db)
        version = db.query("SELECT version_num FROM alembic_version")[0][0]
        print(f"\nthe database is at {version}; orders before and after the failed migration are "
              f"{'identical' if after == before else 'DIFFERENT'} ({len(after)} rows)")
        shipments = db.query("SELECT to_regclass('public.shipments')")[0][0]
        print(f"half-created table shipments present: {shipments is not None}")
        if after != before or version != REV4:
            print("unexpected: the rollback did not keep the data", file=sys.stderr)
            return 1
        say("Done. The bed keeps running: export KUBECONFIG=" + str(bed.kubeconfig) + "; make dev-cluster-down")
        return 0
    finally:
        if operator:
            operator.stop()
        pg.destroy()


def _fresh_namespace(core: k8s.CoreV1Api, bed: Bed) -> None:
    """A clean `shop` namespace (a previous demo's is deleted first, finalizers included)."""
    try:
        core.read_namespace(NS)
    except k8s.ApiException as err:
        if err.status != 404:
            raise
    else:
        print("removing the previous demo's namespace")
        bed.kubectl("patch", "dbm", "shop", "-n", NS, "--type=merge", "-p", '{"metadata":{"finalizers":null}}')
        core.delete_namespace(NS)

        def gone() -> bool:
            try:
                core.read_namespace(NS)
                return False
            except k8s.ApiException as err:
                return err.status == 404

        wait_for(gone, 120, "the old namespace to go")
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=NS)))
    time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main())
