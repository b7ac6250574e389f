"""The bed half of test_chart.py (a real node): see its docstring."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from alembic_operator import constants as c
from apps import Rev, make_project
from chart import CHART, CLUSTER_ONLY, NAMESPACED_ONLY, PKG, Rule, run_helm, used_by_the_code
from e2e import slow
from gating import Apps, held, running
from harness import wait_for

# One worker runs them one after the other (make test), with the CRD tests: the chart's cluster-scoped objects (its
# approver ClusterRole, the CRD it adopts) belong to one release at a time.
pytestmark = pytest.mark.xdist_group("cluster-scoped")


@pytest.fixture(scope="module")
def operator_ref(bed: Any) -> str:
    """The project's Dockerfile built with the bed's build arguments (cached by content), pushed to the bed's
    registry: ``127.0.0.1:5000/alembic-operator:dev@sha256:...``."""
    from bed import images

    return str(images.push(images.operator_image(), f"{bed.registry}/alembic-operator:dev", bed.netns_cmd()))


def image_values(ref: str) -> dict[str, str]:
    """The chart's image values for a pushed reference (repository + digest: the pods run exactly that image)."""
    name, _, digest = ref.partition("@")
    return {"repository": name.rsplit(":", 1)[0], "digest": digest}


def _operator_serves_the_webhook() -> bool:
    """The operator registers the webhook's Kopf handler and can leave the configuration to the chart."""
    from alembic_operator import app
    from alembic_operator.config import OperatorConfig

    registry, _operator = app.registry(OperatorConfig())  # what `alembic-operator run` registers
    return bool(registry._webhooks.get_all_handlers())


def _operator_serves_metrics() -> bool:
    return any("metrics.serve(" in p.read_text() for p in PKG.glob("*.py") if p.name != "metrics.py")


@pytest.fixture
def app_namespace(kube_api: Any) -> Iterator[str]:
    from kubernetes import client as k8s

    name = f"t-chart-app-{uuid.uuid4().hex[:6]}"
    core = k8s.CoreV1Api(kube_api)
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        with contextlib.suppress(k8s.ApiException):
            core.delete_namespace(name, propagation_policy="Background")


def _adopt_crd(kubectl: Any, release: str, namespace: str) -> None:
    """The CRDs applied with kubectl (the `crd` fixture, as the end-to-end tests on every worker do: the
    DatabaseMigration's and the DatabaseMigrationSet's) are adopted by the release, as a user would. The test asks
    for that fixture so both exist before adoption: another worker applying one between this check and `helm
    install` made the install refuse a CRD it did not own."""
    for plural in (c.PLURAL, c.SET_PLURAL):
        crd = f"customresourcedefinitions/{plural}.{c.GROUP}"
        if kubectl("get", crd).returncode != 0:
            continue
        kubectl("label", "--overwrite", crd, "app.kubernetes.io/managed-by=Helm", check=True)
        kubectl("annotate", "--overwrite", crd, f"meta.helm.sh/release-name={release}",
                f"meta.helm.sh/release-namespace={namespace}", check=True)


RELEASE = "ao"
FULLNAME = f"{RELEASE}-alembic-operator"  # the StatefulSet, its Services, its KopfPeering
PODS = (f"{FULLNAME}-0", f"{FULLNAME}-1")  # peering priorities 0 and 1: the highest ordinal leads
REV1, REV2, REV3 = "a1a1a1a1a101", "b2b2b2b2b202", "c3c3c3c3c303"
SLOW_SECONDS = 20  # how long each slow revision's migration sleeps (tests/e2e.py slow(): it also counts its runs)
CREATE_T = Rev(REV1, upgrade=['op.create_table("t", sa.Column("id", sa.Integer, primary_key=True))'],
               downgrade=['op.drop_table("t")'])


def _pod_log(kubectl: Any, namespace: str, pod: str, timestamps: bool = False) -> str:
    proc = kubectl("logs", "-n", namespace, pod, "--tail=-1", *(["--timestamps"] if timestamps else []))
    return str(proc.stdout or proc.stderr)


def _log_lines(kubectl: Any, namespace: str, pod: str) -> list[tuple[datetime, str]]:
    """The pod's log as (the kubelet's timestamp, line)."""
    out = []
    for line in _pod_log(kubectl, namespace, pod, timestamps=True).splitlines():
        stamp, _, text = line.partition(" ")
        with contextlib.suppress(ValueError):  # RFC 3339 with nanoseconds: keep the microseconds
            out.append((datetime.fromisoformat(stamp[:26] + "+00:00"), text))
    return out


def _peering_state(kubectl: Any, namespace: str, pod: str) -> str:
    """What Kopf last said about this replica's peering: "active" (resumed) or "paused" (a higher priority is up)."""
    said = [text for _, text in _log_lines(kubectl, namespace, pod)
            if "Resuming operations" in text or "Pausing operations" in text]
    return "active" if said and "Resuming operations" in said[-1] else "paused"


def _active_operator(custom: Any, namespace: str) -> str:
    """The replica Kopf lets act: the live peer of the highest priority in the KopfPeering (the others pause)."""
    status = custom.get_namespaced_custom_object("kopf.dev", "v1", namespace, "kopfpeerings", FULLNAME).get(
        "status") or {}
    now = datetime.now(UTC)
    live = {pod: peer for pod, peer in status.items()
            if datetime.fromisoformat(peer["lastseen"]) + timedelta(seconds=int(peer["lifetime"])) > now}
    assert live, f"no live peer in the KopfPeering: {status}"
    return max(live, key=lambda pod: int(live[pod]["priority"]))


def _ready_at(status: dict[str, Any], generation: int) -> bool:
    conds = {x["type"]: x for x in status.get("conditions") or []}
    return conds.get("Ready", {}).get("status") == "True" and status.get("observedGeneration") == generation


def _wait_ready(custom: Any, namespace: str, name: str, timeout: float, generation: int = 1,
                meanwhile: Callable[[], None] | None = None) -> dict[str, Any]:
    """The resource's status once Ready at `generation`; fails at once when it is Stalled (nothing would change any
    more). `meanwhile` is called before every look (to check what must hold until then)."""
    def settled() -> dict[str, Any] | None:
        if meanwhile is not None:
            meanwhile()
        obj = custom.get_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.PLURAL, name)
        status = obj.get("status") or {}
        stalled = any(x["type"] == "Stalled" and x["status"] == "True" for x in status.get("conditions") or [])
        return dict(status) if stalled or _ready_at(status, generation) else None

    return wait_for(settled, timeout, f"DatabaseMigration {namespace}/{name} Ready at generation {generation}")


def _jobs_by_role(kube_api: Any, namespace: str, name: str, generation: int) -> dict[str, list[str]]:
    """The Jobs the operator created for one generation of a DatabaseMigration, by role; each must have had one pod
    (Jobs never retry: backoffLimit 0)."""
    from kubernetes import client as k8s

    batch, core = k8s.BatchV1Api(kube_api), k8s.CoreV1Api(kube_api)
    jobs = batch.list_namespaced_job(namespace, label_selector=f"{c.OWNER_LABEL}={name},"
                                                               f"{c.GENERATION_LABEL}={generation}").items
    out: dict[str, list[str]] = {}
    for job in jobs:
        out.setdefault(job.metadata.labels[c.ROLE_LABEL], []).append(job.metadata.name)
        pods = core.list_namespaced_pod(namespace, label_selector=f"batch.kubernetes.io/job-name={job.metadata.name}")
        assert len(pods.items) == 1, f"Job {job.metadata.name} has {len(pods.items)} pods"
    return {role: sorted(names) for role, names in out.items()}


def _one_job_per_step(name: str, generation: int) -> dict[str, list[str]]:
    return {role: [f"{name}-{role}-g{generation}"] for role in ("plan", "backup", "migrate")}


def _sleeping_migrations(database: Any) -> int:
    """Sessions of the test's database running a slow revision's pg_sleep right now (a migrate Job mid-run)."""
    rows = database.query("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                          "AND query LIKE 'SELECT pg_sleep%%' AND pid <> pg_backend_pid()")
    return int(str(rows[0][0]))


def _runs(database: Any, rev: str) -> int:
    """How often a slow revision ran (committed): its rows in the runs table."""
    return int(str(database.query("SELECT count(*) FROM runs WHERE rev = %s", rev)[0][0]))


def _gated_deployment(name: str, migration: str, image: str) -> dict[str, Any]:
    """The app's new version: its pods wait for the DatabaseMigration to be Ready at its target."""
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name, c.WAIT_FOR_LABEL: migration}},
                                  "spec": {"terminationGracePeriodSeconds": 0, "containers": [
                                      {"name": "app", "image": image, "command": ["sleep", "3600"]}]}}}}


def _pod_ready(core: Any, namespace: str, name: str, uid: str | None = None) -> bool:
    from kubernetes import client as k8s

    try:
        pod = core.read_namespaced_pod(name, namespace)
    except k8s.ApiException:
        return False
    return (uid is None or pod.metadata.uid != uid) and any(
        x.type == "Ready" and x.status == "True" for x in pod.status.conditions or [])


@pytest.mark.bed
def test_install_migrate_upgrade_uninstall(bed: Any, crd: Path, kube_api: Any, namespace: str, app_namespace: str,
                                           kubectl: Any, database: Any, postgres_in_bed: tuple[str, int],
                                           operator_ref: str, tmp_path: Path) -> None:
    """The chart on the real node, one release for the whole story: two replicas from the real image; a migration;
    /metrics through the pod and through the chart's Service; the webhook through its Service; the active replica
    killed during a migration (the standby finishes it, no Job twice) while a gated Deployment waits; `helm upgrade`
    to a new image tag during a migration; `helm uninstall` keeps the CRD, the resources' history and the backups."""
    from kubernetes import client as k8s

    from bed import images
    from bed.volumes import writable_claim

    kubeconfig = bed.kubeconfig
    webhook_on = _operator_serves_the_webhook()
    # The webhook through the chart's own Service: the API server reaches it via kube-proxy (endpoint routing).
    values = {
        "image": image_values(operator_ref),
        "replicaCount": 2,
        "watchNamespaces": [app_namespace],
        "startupProbe": {"periodSeconds": 1, "failureThreshold": 120},
        "readinessProbe": {"periodSeconds": 2},
        "webhook": {"enabled": webhook_on},
    }
    values_file = tmp_path / "values.json"
    values_file.write_text(json.dumps(values))
    _adopt_crd(kubectl, RELEASE, namespace)
    run_helm("install", RELEASE, str(CHART), "-n", namespace, "-f", str(values_file), "--wait", "--timeout", "180s",
             kubeconfig=kubeconfig)
    installed = True
    core = k8s.CoreV1Api(kube_api)
    apps = k8s.AppsV1Api(kube_api)
    custom = k8s.CustomObjectsApi(kube_api)
    try:
        # The operator pods: Ready through the probes, priority = their ordinal, both in the KopfPeering.
        for index, pod_name in enumerate(PODS):
            pod = core.read_namespaced_pod(pod_name, namespace)
            assert any(x.type == "Ready" and x.status == "True" for x in pod.status.conditions or [])
            assert pod.metadata.labels["apps.kubernetes.io/pod-index"] == str(index)
            assert pod.spec.service_account_name == FULLNAME
            assert pod.status.container_statuses[0].image_id.endswith(operator_ref.partition("@")[2])
            peer = wait_for(lambda name=pod_name: (custom.get_namespaced_custom_object(
                "kopf.dev", "v1", app_namespace, "kopfpeerings", FULLNAME).get("status") or {}).get(name),
                60, f"{pod_name} in the KopfPeering")
            assert (peer["priority"], peer["lifetime"]) == (index, 20)  # the chart's peering.lifetime reached Kopf
        # The highest priority acts, the other one pauses for it (Kopf's own account, in each log).
        wait_for(lambda: _peering_state(kubectl, namespace, PODS[0]) == "paused", 30, "the standby to pause")
        assert _active_operator(custom, app_namespace) == PODS[1]
        assert _peering_state(kubectl, namespace, PODS[1]) == "active"
        pod_name = PODS[0]
        # runc enforces the chart's securityContext: the image's user, a read-only root filesystem.
        probe = kubectl("exec", "-n", namespace, pod_name, "--", "sh", "-c",
                        "id -u; id -g; touch /opt/venv/x 2>&1; touch $TMPDIR/x && echo scratch-ok")
        assert probe.returncode == 0, probe.stderr
        uid, gid, *rest = probe.stdout.splitlines()
        assert (uid, gid) == ("65532", "65532")
        assert "Read-only file system" in "\n".join(rest) and rest[-1] == "scratch-ok", probe.stdout
        # ... and it runs this checkout's code (a stale image layer would not show anywhere else).
        script = ("import alembic_operator, hashlib, json, pathlib; d = pathlib.Path(alembic_operator.__file__).parent;"
                  " print(json.dumps({p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in d.glob('*.py')}))")
        code = kubectl("exec", "-n", namespace, pod_name, "--", "python", "-c", script)
        assert code.returncode == 0, code.stderr
        assert json.loads(code.stdout) == {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                                           for p in PKG.glob("*.py")}, "the operator image is stale"

        # A DatabaseMigration in the watched namespace goes Ready: the migrations in an app image, the database as
        # the pods see it, backups on a PersistentVolumeClaim.
        def app_image(name: str, revisions: list[Rev]) -> str:
            project = make_project(tmp_path / name, revisions)
            return images.app_image(project.parent, push_to=f"{bed.registry}/apps/chart", netns_cmd=bed.netns_cmd())

        app_ref = app_image("app", [CREATE_T])
        backups = writable_claim(bed, core, app_namespace, "backups")  # fsGroup does not apply to hostPath PVs
        url = database.at(*postgres_in_bed).url
        core.create_namespaced_secret(app_namespace, k8s.V1Secret(metadata=k8s.V1ObjectMeta(name="db"),
                                                                  string_data={"url": url}))
        spec = {"database": {"urlSecretRef": {"name": "db", "key": "url"}},
                "migrations": {"image": app_ref, "workingDir": images.APP_DIR},
                "targetRevision": "head",
                "backup": {"volume": {"persistentVolumeClaim": {"claimName": "backups"}}}}
        custom.create_namespaced_custom_object(c.GROUP, c.VERSION, app_namespace, c.PLURAL, {
            "apiVersion": c.API_VERSION, "kind": c.KIND, "metadata": {"name": "shop"}, "spec": spec})
        status = _wait_ready(custom, app_namespace, "shop", 240)
        assert status.get("currentRevision") == REV1, (
            f"{json.dumps(status)}\n{_pod_log(kubectl, namespace, PODS[1])[-3000:]}")
        assert list(backups.rglob("*.dump")), f"no backup was written in {backups}"

        for pod_name in PODS:
            log = _pod_log(kubectl, namespace, pod_name)
            # Kopf's scan of namespaces and CRDs is refused (Roles only, by design) and logged; nothing else may be.
            forbidden = [line for line in log.splitlines() if re.search(r"\b403\b|[Ff]orbidden", line)
                         and not re.search(r"GET \S+/(api/v1/namespaces|customresourcedefinitions) ->", line)]
            assert not forbidden, "\n".join(forbidden[:10])

        if _operator_serves_metrics():
            # Through the API server's pod proxy (the pod IP is inside the bed) ...
            for pod_name in PODS:
                scraped = kubectl("get", "--raw",
                                  f"/api/v1/namespaces/{namespace}/pods/{pod_name}:9090/proxy/metrics")
                assert "alembic_operator_build_info" in scraped.stdout, scraped.stderr
            # ... and through the chart's metrics Service (its named port), as a ServiceMonitor finds it: the
            # Service's endpoints are both replicas at that port.
            scraped = kubectl("get", "--raw",
                              f"/api/v1/namespaces/{namespace}/services/{FULLNAME}:http-metrics/proxy/metrics")
            assert scraped.returncode == 0, scraped.stderr
            assert "alembic_operator_build_info" in scraped.stdout, scraped.stdout[:2000]
            slices = k8s.DiscoveryV1Api(kube_api).list_namespaced_endpoint_slice(
                namespace, label_selector=f"kubernetes.io/service-name={FULLNAME}").items
            targets = {(e.target_ref.name, p.port) for s in slices for e in s.endpoints or []
                       for p in s.ports or [] if p.name == "http-metrics"}
            assert targets == {(pod_name, 9090) for pod_name in PODS}, targets

        if webhook_on:
            def make_pod(name: str, wait_for: str) -> k8s.V1Pod:
                return core.create_namespaced_pod(app_namespace, k8s.V1Pod(
                    metadata=k8s.V1ObjectMeta(name=name, labels={c.WAIT_FOR_LABEL: wait_for}),
                    spec=k8s.V1PodSpec(termination_grace_period_seconds=0, containers=[
                        k8s.V1Container(name="app", image=app_ref, command=["sleep", "300"])])))

            held_pod = make_pod("held", "not-there")  # the API server called the webhook via its Service, over TLS
            assert [g.name for g in held_pod.spec.scheduling_gates or []] == [c.SCHEDULING_GATE]
            free = make_pod("free", "shop")  # Ready at its target: not held
            assert not free.spec.scheduling_gates

        # A fresh DatabaseMigration in a namespace nobody watches reads InProgress (kstatus) at once: the CRD default.
        custom.create_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.PLURAL, {
            "apiVersion": c.API_VERSION, "kind": c.KIND, "metadata": {"name": "unwatched"}, "spec": spec})
        fresh = custom.get_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.PLURAL, "unwatched")
        assert fresh["status"]["observedGeneration"] == -1 != fresh["metadata"]["generation"]

        # --- Two replicas hand over during a migration, while the app's new version waits for it -----------------
        # Generation 2 adds a slow revision; the app's new version (a Deployment labelled wait-for) is applied with it.
        app2_ref = app_image("app2", [CREATE_T, slow(REV2, SLOW_SECONDS)])
        custom.patch_namespaced_custom_object(c.GROUP, c.VERSION, app_namespace, c.PLURAL, "shop",
                                              {"spec": {"migrations": {"image": app2_ref}}})
        apps.create_namespaced_deployment(app_namespace, _gated_deployment("web", "shop", app2_ref))
        web = wait_for(lambda: Apps(kube_api, app_namespace).pods("app=web"), 30, "the Deployment's pod")[0]
        if webhook_on:
            assert held(web), web["spec"]  # gated at creation, by the webhook behind the Service
        # The migration runs (its Job's session sleeps in the slow revision): now kill the active replica, with no
        # grace, and keep its replacement from starting (a ResourceQuota of one pod), as when its node is gone: the
        # standby must finish the run.
        wait_for(lambda: _sleeping_migrations(database), 120, "the migrate Job to be in the slow revision")
        active, standby = _active_operator(custom, app_namespace), PODS[0]
        assert active == PODS[1] and _peering_state(kubectl, namespace, standby) == "paused"
        assert _jobs_by_role(kube_api, app_namespace, "shop", 2) == _one_job_per_step("shop", 2)
        core.create_namespaced_resource_quota(namespace, k8s.V1ResourceQuota(
            metadata=k8s.V1ObjectMeta(name="no-replacement"), spec=k8s.V1ResourceQuotaSpec(hard={"pods": "1"})))
        wait_for(lambda: (core.read_namespaced_resource_quota("no-replacement", namespace).status.used or {})
                 .get("pods"), 30, "the quota to count the pods")
        resumed_before = len([t for _, t in _log_lines(kubectl, namespace, standby) if "Resuming operations" in t])
        killed_at = datetime.now(UTC)
        kill = kubectl("delete", "pod", "-n", namespace, active, "--grace-period=0", "--force")
        assert kill.returncode == 0, kill.stderr

        def standby_resumed() -> datetime | None:
            resumed = [at for at, t in _log_lines(kubectl, namespace, standby) if "Resuming operations" in t]
            return resumed[-1] if len(resumed) > resumed_before else None

        # Kopf's peering: the killed replica's record expires after its lifetime (the chart's peering.lifetime, 20 s)
        # unless it removed it in its last moment (the kubelet sends SIGTERM even then; it does not always make it).
        resumed_at = wait_for(standby_resumed, 60, "the standby to resume", interval=0.5)
        print(f"\nchart: handover: the standby resumed {(resumed_at - killed_at).total_seconds():.1f}s after the "
              f"active replica was deleted (grace period 0); the migration was "
              f"{'still' if _sleeping_migrations(database) else 'no longer'} running")

        def web_held_until_ready() -> None:
            """A pod seen released (or running) means the resource was Ready by then: it is, on a later read."""
            if webhook_on and not all(held(p) and not running(p) for p in Apps(kube_api, app_namespace).pods(
                    "app=web")):
                now = custom.get_namespaced_custom_object(c.GROUP, c.VERSION, app_namespace, c.PLURAL, "shop")
                assert _ready_at(now.get("status") or {}, 2), "a pod was released before Ready"

        status = _wait_ready(custom, app_namespace, "shop", 180, generation=2, meanwhile=web_held_until_ready)
        ready_at = datetime.now(UTC)
        assert status.get("currentRevision") == REV2, json.dumps(status)
        print(f"chart: handover: Ready at generation 2 {(ready_at - killed_at).total_seconds():.1f}s after the kill")
        # The standby finished it: its log has the run's end; the killed replica never came back meanwhile.
        after = [t for at, t in _log_lines(kubectl, namespace, standby) if at >= resumed_at]
        assert any(f"Succeeded: the database is at {REV2}" in t for t in after), "\n".join(after[-40:])
        assert [p.metadata.name for p in core.list_namespaced_pod(namespace).items] == [standby]
        # No step ran twice: one plan, one backup, one migrate Job (each one pod) for the generation; the slow
        # revision committed once.
        assert _jobs_by_role(kube_api, app_namespace, "shop", 2) == _one_job_per_step("shop", 2)
        assert _runs(database, REV2) == 1
        if webhook_on:  # the app's new version starts once the schema is there
            wait_for(lambda: all(not held(p) and running(p) for p in Apps(kube_api, app_namespace).pods("app=web"))
                     and Apps(kube_api, app_namespace).pods("app=web"), 60, "the Deployment's pod released, Running")
            print(f"chart: gate: the held pod was Running {(datetime.now(UTC) - ready_at).total_seconds():.1f}s "
                  "after Ready")
            released = [t for at, t in _log_lines(kubectl, namespace, standby) if at >= resumed_at]
            assert any(f"waiting for {app_namespace}/shop" in t for t in released), "\n".join(released[-40:])
        # The killed replica's replacement may start again: it leads again (the highest priority).
        core.delete_namespaced_resource_quota("no-replacement", namespace)
        back = time.monotonic()
        wait_for(lambda: _pod_ready(core, namespace, PODS[1]), 180, "the replacement replica", interval=1)
        wait_for(lambda: _peering_state(kubectl, namespace, standby) == "paused", 30, "the standby to pause again")
        assert _active_operator(custom, app_namespace) == PODS[1]
        print(f"chart: the replacement replica was Ready and leading {time.monotonic() - back:.1f}s after the quota "
              "went (the StatefulSet controller's back-off)")

        # --- helm upgrade to a new image tag during a migration ------------------------------------------------
        # The same image pushed under a new tag: a new pod template (image and ALEMBIC_OPERATOR_IMAGE) rolls both
        # replicas, the leader first, while generation 3's migration runs; the webhook certificate is kept (lookup).
        new_ref = images.push(images.operator_image(), f"{bed.registry}/alembic-operator:upgrade", bed.netns_cmd())
        new_image = new_ref.partition("@")[0]
        values["image"] = {"repository": new_image.rsplit(":", 1)[0], "tag": "upgrade", "digest": ""}
        values_file.write_text(json.dumps(values))
        secret_before = core.read_namespaced_secret(f"{FULLNAME}-webhook-tls", namespace).data if webhook_on else None
        uids = {p: core.read_namespaced_pod(p, namespace).metadata.uid for p in PODS}
        app3_ref = app_image("app3", [CREATE_T, slow(REV2, SLOW_SECONDS), slow(REV3, SLOW_SECONDS)])
        custom.patch_namespaced_custom_object(c.GROUP, c.VERSION, app_namespace, c.PLURAL, "shop",
                                              {"spec": {"migrations": {"image": app3_ref}}})
        wait_for(lambda: _sleeping_migrations(database), 120, "the migrate Job to be in the slow revision")
        started = time.monotonic()
        run_helm("upgrade", RELEASE, str(CHART), "-n", namespace, "-f", str(values_file), "--wait", "--timeout",
                 "180s", kubeconfig=kubeconfig)
        for pod_name in PODS:
            wait_for(lambda name=pod_name: _pod_ready(core, namespace, name, uids[name]), 120,
                     f"the upgraded {pod_name} to be Ready")
            pod = core.read_namespaced_pod(pod_name, namespace)
            assert pod.spec.containers[0].image == new_image
            assert pod.status.container_statuses[0].image_id.endswith(new_ref.partition("@")[2])
        print(f"chart: helm upgrade to {new_image} rolled both replicas in {time.monotonic() - started:.1f}s; the "
              f"migration was {'still' if _sleeping_migrations(database) else 'no longer'} running")
        if webhook_on:
            assert core.read_namespaced_secret(f"{FULLNAME}-webhook-tls", namespace).data == secret_before
        status = _wait_ready(custom, app_namespace, "shop", 180, generation=3)
        assert status.get("currentRevision") == REV3, json.dumps(status)
        print(f"chart: generation 3 Ready {time.monotonic() - started:.1f}s after the upgrade began")
        # A replica of the new pod template finished the run the old leader started.
        assert any(f"Succeeded: the database is at {REV3}" in _pod_log(kubectl, namespace, p) for p in PODS)
        assert _jobs_by_role(kube_api, app_namespace, "shop", 3) == _one_job_per_step("shop", 3)
        assert (_runs(database, REV2), _runs(database, REV3)) == (1, 1)
        dumps = sorted(backups.rglob("*.dump"))
        assert len(dumps) == 3, dumps  # one per generation (retain 5)

        # --- helm uninstall: the operator goes; the CRD, the DatabaseMigration and its history, the backups stay -
        run_helm("uninstall", RELEASE, "-n", namespace, "--wait", "--timeout", "120s", kubeconfig=kubeconfig)
        installed = False
        assert kubectl("get", f"crd/{c.PLURAL}.{c.GROUP}").returncode == 0
        kept = custom.get_namespaced_custom_object(c.GROUP, c.VERSION, app_namespace, c.PLURAL, "shop")["status"]
        assert [(h["generation"], h["result"], h["to"]) for h in kept["history"]] == [
            (1, "Succeeded", REV1), (2, "Succeeded", REV2), (3, "Succeeded", REV3)], kept["history"]
        assert sorted(backups.rglob("*.dump")) == dumps and all(d.stat().st_size > 0 for d in dumps)
        assert kubectl("get", "statefulset", "-n", namespace, "-o", "name").stdout.strip() == ""
        assert kubectl("get", "mutatingwebhookconfiguration", f"{namespace}-{FULLNAME}").returncode != 0
    finally:
        if installed:
            run_helm("uninstall", RELEASE, "-n", namespace, "--wait", "--timeout", "120s", check=False,
                     kubeconfig=kubeconfig)
        for ns in (app_namespace, namespace):  # nothing runs our finalizer any more: let the namespaces go
            items = kubectl("get", "dbm", "-n", ns, "-o", "name").stdout.split()
            for item in items:
                kubectl("patch", "-n", ns, item, "--type=merge", "-p", '{"metadata":{"finalizers":null}}')


def _can_i_list(kubectl: Any, sa: str, namespace: str) -> set[Rule]:
    """What `kubectl auth can-i --list` shows, as JSON: a SelfSubjectRulesReview made as the ServiceAccount."""
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview",
              "spec": {"namespace": namespace}}
    proc = kubectl("create", f"--as={sa}", "--validate=false", "-o", "json", "-f", "-", input=json.dumps(review))
    assert proc.returncode == 0, proc.stderr
    rules = json.loads(proc.stdout)["status"].get("resourceRules") or []
    out: set[Rule] = set()
    for rule in rules:
        for group in rule.get("apiGroups") or [""]:
            for resource in rule.get("resources") or []:
                for verb in rule.get("verbs") or []:
                    out.add((group, resource, verb))
    return out


def _can_i(kubectl: Any, sa: str, verb: str, group: str, resource: str, namespace: str | None) -> bool:
    """What `kubectl auth can-i` answers, as a SelfSubjectAccessReview made as the ServiceAccount with the group and
    resource spelled out: `kubectl auth can-i` maps a name through discovery first and, when a CRD's group is briefly
    missing from it (another test updating the CRD), asks about a resource that does not exist and answers no."""
    name, _, sub = resource.partition("/")
    attributes = {"verb": verb, "group": group, "resource": name, **({"subresource": sub} if sub else {}),
                  **({"namespace": namespace} if namespace else {})}
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
              "spec": {"resourceAttributes": attributes}}
    proc = kubectl("create", f"--as={sa}", "--validate=false", "-o", "json", "-f", "-", input=json.dumps(review))
    assert proc.returncode == 0, proc.stderr
    return bool(json.loads(proc.stdout)["status"].get("allowed"))


@pytest.mark.bed
@pytest.mark.parametrize("mode", ["namespaced", "cluster"])
def test_rbac_grants_exactly_what_the_operator_uses(bed: Any, namespace: str, app_namespace: str, kubectl: Any,
                                                    mode: str, tmp_path: Path) -> None:
    """`kubectl auth can-i` as the chart's ServiceAccount: every needed verb yes, and nothing else beyond what any
    ServiceAccount has (the namespace's `default` one is the baseline)."""
    release = f"rbac-{mode[:2]}"
    # Its own approver ClusterRole: a release that another one's failed uninstall left behind cannot block this one.
    values: dict[str, Any] = {"replicaCount": 0, "webhook": {"enabled": False}, "crds": {"install": False},
                              "approval": {"approverRole": {"name": f"{release}-approver"}}}
    if mode == "namespaced":
        values["watchNamespaces"] = [app_namespace]
    values_file = tmp_path / "values.json"
    values_file.write_text(json.dumps(values))
    run_helm("install", release, str(CHART), "-n", namespace, "-f", str(values_file), kubeconfig=bed.kubeconfig)
    try:
        sa = f"system:serviceaccount:{namespace}:{release}-alembic-operator"
        baseline = _can_i_list(kubectl, f"system:serviceaccount:{namespace}:default", app_namespace)
        expected = used_by_the_code() | (NAMESPACED_ONLY if mode == "namespaced" else CLUSTER_ONLY)
        extra = wait_for(lambda: (_can_i_list(kubectl, sa, app_namespace) - baseline) or None, 30, "the grants")
        # (what every ServiceAccount has, e.g. selfsubjectreviews through system:basic-user, the chart grants too,
        # so that the operator does not depend on that default: it is checked with the rest below)
        assert extra == expected - baseline
        for group, resource, verb in sorted(expected):
            cluster_scoped = resource in ("customresourcedefinitions", "clusterkopfpeerings")
            assert _can_i(kubectl, sa, verb, group, resource, None if cluster_scoped else app_namespace), \
                (verb, group, resource)
        # (a DatabaseMigrationSet creates and deletes its DatabaseMigrations and lists Secrets' metadata)
        for verb, group, resource in [("update", c.GROUP, c.PLURAL), ("update", c.GROUP, c.SET_PLURAL),
                                      ("delete", c.GROUP, c.SET_PLURAL), ("watch", "", "secrets"),
                                      ("create", "", "secrets"), ("update", "batch", "jobs"), ("get", "", "configmaps"),
                                      ("delete", "", "pods"), ("create", "", "pods"),
                                      # never an approver, of a DatabaseMigration or of a whole set
                                      ("approve", c.GROUP, c.PLURAL), ("approve", c.GROUP, c.SET_PLURAL)]:
            assert not _can_i(kubectl, sa, verb, group, resource, app_namespace), (verb, group, resource)
        assert not _can_i(kubectl, sa, "create", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", None)
        assert not _can_i(kubectl, sa, "list", "", "namespaces", None)
        if mode == "namespaced":
            assert not _can_i(kubectl, sa, "get", "", "secrets", namespace)  # not even in its own namespace
            assert not _can_i(kubectl, sa, "list", "apiextensions.k8s.io", "customresourcedefinitions", None)
            assert not _can_i(kubectl, sa, "list", c.GROUP, c.PLURAL, "default")
        else:
            assert _can_i(kubectl, sa, "get", "", "secrets", "default")
    finally:
        run_helm("uninstall", release, "-n", namespace, "--wait", check=False, kubeconfig=bed.kubeconfig)

