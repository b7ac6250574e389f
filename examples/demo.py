"""`make demo`: the operator's whole job, end to end, on the local bed.

    migrate to revision 3 with data in the tables (Ready)
    -> a destructive plan (revision 4 drops orders.legacy_code) held for approval
    -> review its SQL and approve exactly that plan with kubectl dbm -> Ready
    -> a failing revision (5), rehearsed first on a scratch copy of production (spec.rehearsal): caught there,
       Stalled (RehearsalFailed), production's rows and schema untouched, no migrate or rollback Job against it
    -> ship the fixed image with a typo in its tag -> Stalled within seconds (ImagePullFailed), the kubelet quoted
    -> the right tag -> Ready at head, without deleting anything
    -> serve it (3 replicas of the shop's HTTP API) under a load generator, and roll out release 2.0 (a column
       renamed: expand, then contract) and release 2.1 (a column dropped, the same way), each by one apply of the
       DatabaseMigration and the Deployment: every request answered, the contract after the old release's last pod

Everything is real: kube-apiserver, kube-controller-manager and etcd, and a node with kubelet, containerd, runc and
kube-proxy (built from their Go modules), a registry. The operator's image is built from the project's Dockerfile,
the shop's from examples/shop/Dockerfile (and its fixed variant); both are pushed to the bed's registry. The
operator is installed with its Helm chart (restricted securityContext, read-only root filesystem, the webhook
behind its Service) and runs its plan, backup and migrate Jobs as pods; backups go to a PersistentVolumeClaim;
the database runs on the host (pods reach it through the bed's relay on the node IP). The bed keeps running
afterwards so you can look around (`make dev-cluster-down` stops it).

The database is PostgreSQL, or MariaDB with `--db mariadb` (`make demo DEMO_DB=mariadb`): the same steps and checks.
Without the rehearsal, revision 5 would fail on production itself: PostgreSQL's transaction would take it back, and on
MariaDB (DDL commits statement by statement) it would be half-applied and the operator would restore the backup
(tests/e2e cover both); with it, production is never touched. The rehearsal's scratch server is the demo's own.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from kubernetes import client as k8s  # noqa: E402

import loadgen  # noqa: E402
from alembic_operator import constants as c  # noqa: E402
from bed import images  # noqa: E402
from bed.controlplane import Bed  # noqa: E402
from bed.mariadb import MariaDBServer  # noqa: E402
from bed.postgres import PostgresServer  # noqa: E402
from bed.tools import ensure_tools  # noqa: E402
from bed.volumes import writable_claim  # noqa: E402
from harness import Cluster, wait_for  # noqa: E402
from served import PodLog, Rollout, contract_timeline, release, report, watch_pods  # noqa: E402
from shopapp import HEADS  # noqa: E402

SHOP = REPO / "examples" / "shop"
CHART = REPO / "charts" / "alembic-operator"
REV3, REV4, REV5 = "fc7b070a6d88", "382cd6ceb09e", "88d79e1b94a5"
NS = "shop"
OPERATOR_NS = "alembic-operator"
RELEASE = "alembic-operator"
BOLD, DIM, RESET = ("\033[1m", "\033[2m", "\033[0m") if sys.stdout.isatty() else ("", "", "")


def say(text: str) -> None:
    print(f"\n{BOLD}== {text}{RESET}", flush=True)


def show(bed: Bed, *args: str) -> None:
    print(f"{DIM}$ kubectl {' '.join(args)}{RESET}", flush=True)
    proc = bed.kubectl(*args)
    print((proc.stdout or proc.stderr).rstrip(), flush=True)


def dbm(bed: Bed, *args: str) -> None:
    """`kubectl dbm ...`: kubectl finds the plugin (kubectl-dbm, this virtualenv's console script) on PATH."""
    print(f"{DIM}$ kubectl dbm {' '.join(args)} -n {NS}{RESET}", flush=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    proc = subprocess.run([str(ensure_tools()["kubectl"]), "dbm", *args, "-n", NS, f"--kubeconfig={bed.kubeconfig}"],
                          capture_output=True, text=True, env=env, check=False, timeout=60)
    print((proc.stdout or proc.stderr).rstrip(), flush=True)
    if proc.returncode:
        raise SystemExit(f"kubectl dbm {args[0]} failed (exit {proc.returncode})")


def conditions(cluster: Cluster, name: str) -> None:
    st = cluster.get(name).get("status") or {}
    for cond in st.get("conditions") or []:
        print(f"  {cond['type']:<17} {cond['status']:<6} {cond['reason']:<32} {cond['message'][:110]}")


def rows(db: Any) -> list[tuple[Any, ...]]:
    return db.query("SELECT o.id, c.name, o.total FROM orders o JOIN customers c ON c.id = o.customer_id "
                    "ORDER BY o.id")


def schema(db: Any) -> str:
    """Every table's columns, indexes, foreign keys and CHECK constraints as the server describes them, in JSON (a
    reflected column's type is an object that compares by identity: its text is what counts)."""
    engine = sa.create_engine(db.url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            return json.dumps({table: (inspector.get_columns(table), inspector.get_indexes(table),
                                       inspector.get_foreign_keys(table), inspector.get_check_constraints(table))
                               for table in inspector.get_table_names()}, default=str, sort_keys=True)
    finally:
        engine.dispose()


def scratch_url(server: PostgresServer | MariaDBServer, in_bed: Any) -> str:
    """The rehearsal's scratch server as pods reach it: the demo's own server, its application user allowed to create
    and drop alembic_rehearsal_* databases (PostgreSQL: the role has CREATEDB; the URL names the postgres database.
    MariaDB: a grant on the prefix; the URL names none)."""
    url = sa.make_url(in_bed.url)
    if isinstance(server, MariaDBServer):
        with server.admin() as conn, conn.cursor() as cur:
            cur.execute(f"GRANT ALL PRIVILEGES ON `alembic\\_rehearsal\\_%`.* TO '{url.username}'@'%'")
        return url.set(database="").render_as_string(hide_password=False)
    return url.set(database="postgres").render_as_string(hide_password=False)


def start_database(kind: str) -> PostgresServer | MariaDBServer:
    server: PostgresServer | MariaDBServer
    if kind == "mariadb":
        server = MariaDBServer(Path(tempfile.mkdtemp(prefix="alembic-operator-demo-mariadb-")))
    else:
        server = PostgresServer(Path(tempfile.mkdtemp(prefix="alembic-operator-demo-pg-")))
    server.start()
    return server


def helm(bed: Bed, *args: str, check: bool = True) -> bool:
    cmd = [str(ensure_tools()["helm"]), *args, f"--kubeconfig={bed.kubeconfig}"]
    if check:
        print(f"{DIM}$ helm {' '.join(args)}{RESET}", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600)
    if proc.returncode != 0 and check:
        raise SystemExit(f"helm {args[0]} failed:\n{proc.stdout}\n{proc.stderr}")
    status = [line for line in proc.stdout.splitlines() if line.startswith(("STATUS:", "REVISION:"))]
    if check and status:
        print("  " + "  ".join(status), flush=True)
    return proc.returncode == 0


def pushed(bed: Bed, what: str, build: Any, dest: str) -> str:
    started = time.monotonic()
    ref = images.push(build(), f"{bed.registry}/{dest}", bed.netns_cmd())
    print(f"  {what:<28} {ref}  ({time.monotonic() - started:.0f}s)", flush=True)
    return str(ref)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bed-dir", type=Path, default=REPO / ".bed")
    parser.add_argument("--db", choices=("postgresql", "mariadb"), default="postgresql",
                        help="the database the shop runs on (make demo DEMO_DB=mariadb)")
    args = parser.parse_args()

    say("Starting the local Kubernetes bed (cached control plane + a real node)")
    bed = Bed(args.bed_dir, node="real", daemon=True).start()
    if bed.node != "real":
        print(f"the bed running in {bed.dir} has no real node (node={bed.node}): `make dev-cluster-down` first",
              file=sys.stderr)
        return 1
    print(f"API server {bed.server}; export KUBECONFIG={bed.kubeconfig}")
    show(bed, "get", "nodes", "-o", "wide")

    say("Building the images (cached by content) and pushing them to the bed's registry")
    operator_ref = pushed(bed, "operator (Dockerfile)", images.operator_image, "alembic-operator:dev")
    shop_ref = pushed(bed, "shop (examples/shop)", images.shop_image, "acme/shop:1.0")
    fixed_ref = pushed(bed, "shop, revision 5 fixed", lambda: images.shop_image(fixed=True), "acme/shop:1.1")
    rename_ref = pushed(bed, "shop 2.0 (rename)", lambda: images.shop_image(version="2.0"), "acme/shop:2.0")
    drop_ref = pushed(bed, "shop 2.1 (drop)", lambda: images.shop_image(version="2.1"), "acme/shop:2.1")

    product = "MariaDB" if args.db == "mariadb" else "PostgreSQL"
    say(f"Starting {product} on a loopback port")
    server = start_database(args.db)
    db = server.create_database("shop")
    in_bed = db.at(*bed.expose_host_port(server.port, name=f"demo-{args.db}-relay"))
    print(f"{product} database shop on 127.0.0.1:{server.port}; pods reach it at {in_bed.host}:{in_bed.port} "
          "(the URL lives only in a Secret)")

    try:
        cfg_api = bed.api_client()
        core = k8s.CoreV1Api(cfg_api)
        # A previous demo's operator goes first: with watchNamespaces its Role lives in `shop`, and a namespace
        # being deleted loses the Role before the operator can remove its finalizer from the DatabaseMigration.
        if helm(bed, "status", RELEASE, "--namespace", OPERATOR_NS, check=False):
            say("Uninstalling the previous demo's operator")
            helm(bed, "uninstall", RELEASE, "--namespace", OPERATOR_NS, "--wait", "--timeout", "120s")
        _fresh_namespace(core, bed)
        cluster = Cluster(cfg_api, NS)

        say("Installing the operator with its Helm chart (one replica, watching the namespace shop)")
        _adopt_crd(bed)
        name, _, digest = operator_ref.partition("@")
        helm(bed, "upgrade", "--install", RELEASE, str(CHART), "--namespace", OPERATOR_NS, "--create-namespace",
             "--set", f"image.repository={name.rsplit(':', 1)[0]}", "--set", f"image.digest={digest}",
             "--set", "replicaCount=1", "--set-json", f'watchNamespaces=["{NS}"]',
             "--set", "startupProbe.periodSeconds=1", "--wait", "--timeout", "300s")
        show(bed, "get", "pods", "-n", OPERATOR_NS, "-o", "wide")
        backups = writable_claim(bed, core, NS, "shop-backups")
        print(f"backups: PersistentVolumeClaim shop-backups (on the node: {backups})")
        cluster.secret("shop-db", {"url": in_bed.url})

        say(f"1. A DatabaseMigration to revision {REV3} (customers, orders, currency)")
        spec = {
            "database": {"urlSecretRef": {"name": "shop-db", "key": "url"}},
            "migrations": {"image": shop_ref, "workingDir": images.APP_DIR},
            "targetRevision": REV3,
            "backup": {"volume": {"persistentVolumeClaim": {"claimName": "shop-backups"}}, "retain": 5},
        }
        cluster.create("shop", spec)
        show(bed, "wait", "-n", NS, "--for=condition=Ready", "dbm/shop", "--timeout=300s")
        show(bed, "get", "dbm", "-n", NS)
        subprocess.run([sys.executable, str(SHOP / "seed.py")], check=True, env={**os.environ, "DATABASE_URL": db.url})
        before = rows(db)
        print("orders in the database:")
        for row in before:
            print("  ", row)

        say(f"2. Target revision {REV4}: it drops orders.legacy_code, so the plan waits for approval")
        cluster.patch("shop", {"spec": {"targetRevision": REV4}})
        obj = cluster.wait_condition("shop", "Stalled", reason="DestructiveChangesNotApproved", timeout=300)
        show(bed, "get", "dbm", "-n", NS)
        print("status.plan:", json.dumps(obj["status"]["plan"], indent=2))
        conditions(cluster, "shop")

        say("3. Review it with kubectl dbm (the SQL the plan scanned), then approve exactly that plan (by its hash)")
        plan_hash = obj["status"]["plan"]["hash"]
        dbm(bed, "plan", "shop", "--no-pager")
        dbm(bed, "approve", "shop", "--hash", plan_hash)
        show(bed, "wait", "-n", NS, "--for=condition=Ready", "dbm/shop", "--timeout=300s")
        show(bed, "get", "dbm", "-n", NS)

        say(f"4. Target head ({REV5}) with spec.rehearsal on: this revision fails on purpose over production's rows "
            "(CHECK total > 0, a free sample order); the rehearsal catches it on a scratch copy")
        cluster.secret("scratch-db", {"url": scratch_url(server, in_bed)})
        print("scratch server: Secret scratch-db (here the same server; its user may create alembic_rehearsal_* "
              "databases)")
        schema_before, jobs_before = schema(db), set(cluster.job_roles("shop"))
        cluster.patch("shop", {"spec": {"targetRevision": "head", "rehearsal": {
            "enabled": True, "urlSecretRef": {"name": "scratch-db", "key": "url"}}}})
        obj = cluster.wait_condition("shop", "Stalled", reason="RehearsalFailed", timeout=300)
        show(bed, "get", "dbm", "-n", NS)
        conditions(cluster, "shop")
        rehearsal = obj["status"]["rehearsal"]
        print(f"status.rehearsal: {rehearsal['result']} at revision {rehearsal.get('failedRevision')} after "
              f"{rehearsal.get('seconds')}s on the copy")
        print("message:", obj["status"]["message"])
        jobs = sorted(set(cluster.job_roles("shop")) - jobs_before)
        after = rows(db)
        version = db.query("SELECT version_num FROM alembic_version")[0][0]
        same_schema = schema(db) == schema_before
        print(f"\nJobs of this generation: {', '.join(jobs)} (no migrate, downgrade or restore Job ran against "
              "production)")
        print(f"production is at {version}; its orders are {'identical' if after == before else 'DIFFERENT'} "
              f"({len(after)} rows), its schema {'identical' if same_schema else 'DIFFERENT'}")
        touching = [j for j in jobs if not j.startswith(("plan-", "backup-", "rehearse-"))]
        if after != before or version != REV4 or not same_schema or touching:
            print("unexpected: production was touched", file=sys.stderr)
            return 1

        typo = f"{bed.registry}/acme/shop:1.l"  # 1.l, not 1.1: the tag a tired human types
        say(f"5. Ship the fixed image, with a typo in its tag ({typo.rsplit('/', 1)[1]})")
        cluster.patch("shop", {"spec": {"migrations": {"image": typo}}})
        asked = time.monotonic()
        obj = cluster.wait_condition("shop", "Stalled", reason="ImagePullFailed", timeout=120)
        print(f"Stalled/ImagePullFailed {time.monotonic() - asked:.0f}s after the edit (not after the plan Job's "
              "10-minute deadline):")
        show(bed, "get", "dbm", "-n", NS)
        print("message:", obj["status"]["message"])
        show(bed, "get", "pods", "-n", NS, "-l", f"{c.ROLE_LABEL}=plan")

        say(f"6. The right tag (shop:1.1: {REV5} corrected in place, CHECK total >= 0)")
        cluster.patch("shop", {"spec": {"migrations": {"image": fixed_ref}}})
        show(bed, "wait", "-n", NS, "--for=condition=Ready", "dbm/shop", "--timeout=300s")
        show(bed, "get", "dbm", "-n", NS)
        rehearsed = cluster.get("shop")["status"]["rehearsal"]
        print(f"rehearsal {rehearsed['result']} in {rehearsed['seconds']}s on the copy; the real migration took "
              f"{rehearsed.get('migrationSeconds')}s")
        version = db.query("SELECT version_num FROM alembic_version")[0][0]
        left = [j["metadata"]["name"] for j in cluster.jobs("shop") if j["spec"]["template"]["spec"].get(
            "initContainers") and any(ctr["image"] == typo for ctr in j["spec"]["template"]["spec"]["initContainers"]
                                      + j["spec"]["template"]["spec"]["containers"])]
        print(f"Jobs left with the mistyped image: {left or 'none (the one that never ran was deleted)'}")
        dumps = sorted(p.name for p in backups.rglob("*.dump"))
        print(f"the database is at {version}; {len(rows(db))} orders; backups on the claim: {len(dumps)}")
        for dump in dumps:
            print("  ", dump)
        if version != REV5:
            print("unexpected: the fixed revision did not apply", file=sys.stderr)
            return 1
        if not serve_and_roll(bed, cluster, db, {"1.1": fixed_ref, "2.0": rename_ref, "2.1": drop_ref}):
            return 1
        say("Done. The bed keeps running: export KUBECONFIG=" + str(bed.kubeconfig) + "; make dev-cluster-down")
        return 0
    finally:
        server.destroy()


def _release(version: str, ref: str) -> list[dict[str, Any]]:
    """examples/shop/deploy/shop.yaml for one release (its DatabaseMigration with this demo's backups)."""
    docs = release(NS, "shop", version, ref)
    docs[0]["spec"]["backup"] = {"volume": {"persistentVolumeClaim": {"claimName": "shop-backups"}}, "retain": 5}
    del docs[0]["spec"]["approval"]
    # Steps 4-6 showed the rehearsal; here it would add one more Job (and its restore) to each release's expand part.
    docs[0]["spec"]["rehearsal"] = {"enabled": False}
    return docs


def serve_and_roll(bed: Bed, cluster: Cluster, db: Any, refs: dict[str, str]) -> bool:
    """Steps 7-9: the shop served at 1.1 under load, then releases 2.0 and 2.1, each in one apply."""
    say("7. Serve the shop: its HTTP API, 3 replicas behind a Service (examples/shop/deploy/shop.yaml), under load")
    rollout = Rollout(bed=bed, cluster=cluster, db=db, tmp=Path(tempfile.mkdtemp(prefix="demo-shop-")),
                      pods=PodLog())
    threading.Thread(target=watch_pods, args=(cluster.api, NS, rollout.pods), daemon=True).start()
    rollout.apply(_release("1.1", refs["1.1"]))
    cluster.wait_condition("shop", "Ready", timeout=300)
    rollout.wait_rolled_out("shop", "1.1")
    show(bed, "get", "deploy,pods,svc", "-n", NS, "-l", "app=shop")
    ok = True
    with rollout.load("shop", "demo") as out:
        print("load generator: 30 requests/s through the Service (a third create orders), every response recorded")
        steps = (("2.0", "1.1", "8. Release 2.0 renames orders.status to state: 3c1f0e2a7b55 adds state and a sync "
                  "trigger (expand), 7d24b9c8e013 drops status (phase = \"contract\"); one apply"),
                 ("2.1", "2.0", "9. Release 2.1 drops orders.currency: a5e8d61f2c47 makes it optional (expand), "
                  "c90b3f4e1d28 drops it (contract); one apply"))
        for version, old, title in steps:
            say(title)
            started = time.time()
            rollout.apply(_release(version, refs[version]))
            generation = int(cluster.get("shop")["metadata"]["generation"])
            plan = planned(cluster, HEADS[version])
            dbm(bed, "plan", "shop", "--no-pager")
            # The contract part drops a column: approve exactly this plan now, so it runs as soon as it may.
            dbm(bed, "approve", "shop", "--hash", plan["hash"])
            cluster.wait_condition("shop", "Ready", timeout=600)
            rollout.wait_rolled_out("shop", version, timeout=600)
            responses = loadgen.between(loadgen.read(out), started, time.time())
            summary = report(f"requests during the rollout {old} -> {version}", responses)
            print(contract_timeline(rollout, "shop", old, responses, generation).line("shop", old))
            dbm(bed, "status")  # every DatabaseMigration of the namespace: the split shows in its row
            ok = ok and summary.failed == 0
    if not ok:
        print(f"unexpected: requests failed during an expand/contract rollout (every response: {rollout.tmp})",
              file=sys.stderr)
    else:
        shutil.rmtree(rollout.tmp, ignore_errors=True)
    return ok


def planned(cluster: Cluster, target: str) -> dict[str, Any]:
    """status.plan, once the plan Job has planned up to ``target``."""
    def check() -> dict[str, Any] | None:
        plan = (cluster.get("shop").get("status") or {}).get("plan") or {}
        return plan if plan.get("hash") and plan.get("toRevision") == target else None

    return wait_for(check, 300, f"the plan to {target}")


def _adopt_crd(bed: Bed) -> None:
    """A CRD applied with kubectl before (an older demo, the tests) becomes the release's, as a user would do it."""
    crd = f"customresourcedefinitions/{c.PLURAL}.{c.GROUP}"
    if bed.kubectl("get", crd).returncode != 0:
        return
    bed.kubectl("label", "--overwrite", crd, "app.kubernetes.io/managed-by=Helm")
    bed.kubectl("annotate", "--overwrite", crd, f"meta.helm.sh/release-name={RELEASE}",
                f"meta.helm.sh/release-namespace={OPERATOR_NS}")


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
