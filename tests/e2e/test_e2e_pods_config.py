"""On the bed's real node: a Job whose pod cannot start for the way it is configured (no node fits, an image that runs
as root or as a user name under runAsNonRoot, a missing Secret or ConfigMap key in spec.jobTemplate.env) is Stalled
within seconds with the scheduler's or the kubelet's words and the fix, posts one Event, and recovers once the cause
is fixed; and the backup volume on a real PersistentVolume is writable by the backup Job through fsGroup alone, while
a hostPath directory it cannot write stalls the run with its own reason before any migration."""

from __future__ import annotations

import shutil
import stat
import time
from datetime import datetime
from typing import Any

import pytest
from kubernetes import client as k8s

from alembic_operator import constants as c
from apps import Rev
from bed import images
from bed.volumes import local_claim
from e2e import BASE_REVISIONS, E2E, R3, on_every_engine, revision, sha256_file
from harness import wait_for

pytestmark = pytest.mark.bed

# Records which user and group the migration ran as (the plan renders it too: same container, same identity).
WHOAMI = "a8a8a8a8a808"
RAN_AS = Rev(WHOAMI, upgrade=[
    "import os",
    'op.execute(f"CREATE TABLE ran_as AS SELECT {os.getuid()} AS uid, {os.getgid()} AS gid")',
], downgrade=['op.drop_table("ran_as")'])
APP_UID = 10001  # the app base's user (named "app")


def _stalls(e2e: E2E, spec: dict[str, Any], reason: str, said: list[str]) -> dict[str, Any]:
    """Create the resource; its plan Job's pod cannot start: Stalled with `reason` within 30 s of the Job's creation,
    every phrase of `said` in the message, nothing run, and one Event for it several passes later."""
    e2e.cluster.create("shop", spec)
    [job] = wait_for(lambda: e2e.cluster.jobs("shop") or None, timeout=60, what="the plan Job")
    created = time.monotonic()
    said_at: list[float] = []  # when the pod's status first carried the scheduler's or the kubelet's verdict

    def stalled() -> dict[str, Any] | None:
        if not said_at and any(_cannot_start(pod) for pod in e2e.cluster.pods()):
            said_at.append(time.monotonic())
        obj = e2e.cluster.get("shop")
        return obj if any(cond["type"] == "Stalled" and cond["status"] == "True" and cond["reason"] == reason
                          for cond in (obj.get("status") or {}).get("conditions") or []) else None

    obj = wait_for(stalled, timeout=60, what=f"Stalled/{reason}")
    seconds = time.monotonic() - created
    stalled_at = datetime.fromisoformat((e2e.cluster.condition("shop", "Stalled") or {})["lastTransitionTime"])
    api_seconds = (stalled_at - datetime.fromisoformat(job["metadata"]["creationTimestamp"])).total_seconds()
    print(f"\nplan Job created -> Stalled/{reason} in status: {seconds:.1f} s after the test saw the Job "
          f"({said_at[0] - created:.1f} s until the pod's status said why), {api_seconds:.0f} s by the API's clock "
          "(creationTimestamp -> lastTransitionTime, 1 s steps)")
    assert seconds < 30 and api_seconds < 30
    message = obj["status"]["message"]
    assert all(words in message for words in said), message
    assert obj["status"]["phase"] == "Planning" and revision(e2e.db) is None
    time.sleep(10)  # several passes later: still one Event for it
    events = [e for e in e2e.cluster.events("shop") if e.get("reason") == reason]
    assert len(events) == 1 and all(words in events[0]["message"] for words in said), events
    return obj


def _cannot_start(pod: dict[str, Any]) -> bool:
    status = pod.get("status") or {}
    waiting = [(cs.get("state") or {}).get("waiting") or {}
               for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or [])]
    return (any(w.get("reason") == "CreateContainerConfigError" for w in waiting)
            or any(cond.get("type") == "PodScheduled" and cond.get("reason") == "Unschedulable"
                   for cond in status.get("conditions") or []))


def _recovers_after_spec_fix(e2e: E2E, patch: dict[str, Any], target: str = R3) -> None:
    """The fixed spec (generation 2) migrates to `target`; the first run's Job, which never ran, is deleted."""
    e2e.cluster.patch("shop", {"spec": patch})
    obj = e2e.cluster.wait_condition("shop", "Ready", timeout=180)
    assert obj["status"]["observedGeneration"] == 2 and revision(e2e.db) == target
    wait_for(lambda: not [j for j in e2e.cluster.jobs("shop")
                          if j["metadata"]["labels"][c.GENERATION_LABEL] == "1"] or None,
             timeout=30, what="the first run's Job deleted")


# --- no node fits ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("template", "said"), [
    ({"nodeSelector": {"disktype": "ssd"}}, ["didn't match Pod's node affinity/selector", "nodeSelector"]),
    ({"resources": {"requests": {"cpu": "64"}}}, ["Insufficient cpu", "spec.jobTemplate.resources"]),
], ids=["nodeSelector", "requests"])
def test_a_pod_no_node_fits_stalls_unschedulable_then_the_fixed_spec_migrates(e2e: E2E, template: dict[str, Any],
                                                                               said: list[str]) -> None:
    project = e2e.project(BASE_REVISIONS)
    _stalls(e2e, e2e.spec(project, jobTemplate=template), "Unschedulable", ["no node can run its pod", *said])
    _recovers_after_spec_fix(e2e, {"jobTemplate": None})


# --- an image whose USER is root or a name, under runAsNonRoot ----------------------------------------------------


@pytest.mark.parametrize(("user", "kubelet", "fix"), [
    # No USER line, or USER 0: the kubelet sees uid 0. Fixed for every container of the Jobs.
    ("0", "image will run as root", {"securityContext": {"runAsUser": APP_UID}}),
    # USER app: a name the kubelet cannot check. Fixed at the pod level: our containers keep their own user.
    ("app", "image has non-numeric user (app)", {"podSecurityContext": {"runAsUser": APP_UID}}),
], ids=["root", "name"])
def test_an_image_that_runs_as_root_or_a_name_stalls_then_run_as_user_migrates(e2e: E2E, user: str, kubelet: str,
                                                                                fix: dict[str, Any]) -> None:
    project = e2e.project([*BASE_REVISIONS, RAN_AS])
    image = images.app_image(project, push_to=f"{e2e.bed.registry}/apps/{project.name.lower()}-user",
                             netns_cmd=e2e.bed.netns_cmd(), user=user)
    spec = e2e.spec(project)
    spec["migrations"]["image"] = image
    _stalls(e2e, spec, "ImageRunsAsRoot",
            [image, "container plan", kubelet, "USER 10001", "spec.jobTemplate.podSecurityContext.runAsUser"])
    _recovers_after_spec_fix(e2e, {"jobTemplate": fix}, target=WHOAMI)
    uid, gid = e2e.db.query("SELECT uid, gid FROM ran_as")[0]
    print(f"the migration ran as uid {uid}, gid {gid} (image USER {user}, jobTemplate {fix})")
    assert uid == APP_UID
    # The image's /etc/passwd gives 10001 its group (without an entry, containerd would use gid 0: set runAsGroup).
    assert gid == APP_UID
    ours = {ctr["name"]: ctr["securityContext"].get("runAsUser")
            for job in e2e.cluster.jobs("shop") for ctr in job["spec"]["template"]["spec"]["containers"]
            + job["spec"]["template"]["spec"].get("initContainers", [])}
    expected_ours = APP_UID if "securityContext" in fix else 65532
    assert ours["backup"] == expected_ours and ours["runner"] == expected_ours, ours


# --- a missing Secret or ConfigMap key in spec.jobTemplate.env ------------------------------------------------------


def test_a_missing_secret_stalls_then_creating_it_lets_the_same_job_continue(e2e: E2E) -> None:
    project = e2e.project(BASE_REVISIONS)
    env = [{"name": "APP_TOKEN", "valueFrom": {"secretKeyRef": {"name": "app-secrets", "key": "token"}}}]
    _stalls(e2e, e2e.spec(project, jobTemplate={"env": env}), "ContainerConfigError",
            ['secret "app-secrets" not found', "spec.jobTemplate.env", "continues on its own"])
    [plan] = e2e.cluster.jobs("shop")
    e2e.cluster.secret("app-secrets", {"token": "s3cr3t-token-value"})
    obj = e2e.cluster.wait_condition("shop", "Ready", timeout=180)
    assert obj["status"]["observedGeneration"] == 1 and revision(e2e.db) == R3
    still = e2e.cluster.batch.read_namespaced_job(plan["metadata"]["name"], e2e.ns)
    assert still.metadata is not None and still.status is not None
    assert still.metadata.uid == plan["metadata"]["uid"] and still.status.succeeded == 1  # the same Job went on
    assert "s3cr3t-token-value" not in str(e2e.cluster.events()) + str(e2e.cluster.get("shop"))


def test_a_missing_configmap_key_stalls_then_the_fixed_reference_migrates(e2e: E2E) -> None:
    project = e2e.project(BASE_REVISIONS)
    e2e.cluster.core.create_namespaced_config_map(e2e.ns, k8s.V1ConfigMap(
        metadata=k8s.V1ObjectMeta(name="app-config"), data={"app-mode": "production"}))
    env: list[dict[str, Any]] = [
        {"name": "APP_MODE", "valueFrom": {"configMapKeyRef": {"name": "app-config", "key": "mode"}}}]
    _stalls(e2e, e2e.spec(project, jobTemplate={"env": env}), "ContainerConfigError",
            [f"couldn't find key mode in ConfigMap {e2e.ns}/app-config", "spec.jobTemplate.env"])
    env[0]["valueFrom"]["configMapKeyRef"]["key"] = "app-mode"
    _recovers_after_spec_fix(e2e, {"jobTemplate": {"env": env}})


# --- the backup volume on a real PersistentVolume, through fsGroup ------------------------------------------------


def test_the_backup_job_writes_to_a_local_persistent_volume_through_fsgroup_alone(e2e: E2E) -> None:
    """A `local` PersistentVolume (a root-owned directory, mode 0755: nobody but root may write) is a volume type
    whose kubelet plugin applies the pod's fsGroup, as CSI drivers do. The backup Job (uid 65532, fsGroup 65532 by
    default) writes its dump there with no chmod or chown by anyone but the kubelet."""
    project = e2e.project(BASE_REVISIONS)
    claim = local_claim(e2e.bed, e2e.cluster.core, e2e.ns, "backups")
    try:
        before = claim.path.stat()
        assert (before.st_uid, before.st_gid, stat.S_IMODE(before.st_mode)) == (0, 0, 0o755)
        spec = e2e.spec(project, backup={"volume": {"persistentVolumeClaim": {"claimName": "backups"}}})
        e2e.cluster.create("shop", spec)
        obj = e2e.cluster.wait_condition("shop", "Ready", timeout=180)
        assert revision(e2e.db) == R3
        backup = obj["status"]["backup"]
        dumps = list(claim.path.glob(f"{e2e.ns}/shop/*.dump"))
        assert len(dumps) == 1 and backup["location"] == f"pvc/backups/{e2e.ns}/shop/{dumps[0].name}", backup
        assert sha256_file(dumps[0]) == backup["sha256"]
        # The kubelet gave the volume to the fsGroup (group-owned, group-writable, setgid), the dump is 65532's.
        after = claim.path.stat()
        assert (after.st_uid, after.st_gid) == (0, 65532) and after.st_mode & 0o2070 == 0o2070, oct(after.st_mode)
        dump = dumps[0].stat()
        assert (dump.st_uid, dump.st_gid) == (65532, 65532), (dump.st_uid, dump.st_gid)
        print(f"\nthe local PV's directory: {oct(stat.S_IMODE(before.st_mode))} root:root before, "
              f"{oct(stat.S_IMODE(after.st_mode))} root:{after.st_gid} after; the dump {dumps[0].name} is "
              f"{dump.st_uid}:{dump.st_gid}")
    finally:
        claim.delete()
    assert not claim.path.exists()


@on_every_engine
def test_a_backup_directory_the_job_cannot_write_stalls_with_its_own_reason_before_any_migration(e2e: E2E) -> None:
    """A hostPath backup directory owned by root, mode 0755 (as a node's or an NFS server's directory is): hostPath
    ignores the pod's fsGroup, so the backup Job (uid 65532) cannot write there. The resource is Stalled as
    BackupVolumeNotWritable, naming the directory's owner and mode and the fix, and no migration Job was created."""
    project = e2e.project(BASE_REVISIONS)
    root_owned = e2e.bed.dir / "backups-root" / e2e.ns
    root_owned.mkdir(parents=True)
    try:
        root_owned.parent.chmod(0o755)
        root_owned.chmod(0o755)
        assert (root_owned.stat().st_uid, stat.S_IMODE(root_owned.stat().st_mode)) == (0, 0o755)
        e2e.cluster.create("shop", e2e.spec(project, backup={"volume": {"hostPath": {"path": str(root_owned),
                                                                                        "type": "Directory"}}}))
        obj = e2e.cluster.wait_condition("shop", "Stalled", reason="BackupVolumeNotWritable", timeout=180)
        stalled = next(x for x in obj["status"]["conditions"] if x["type"] == "Stalled")
        backup = next(x for x in obj["status"]["conditions"] if x["type"] == "BackupSucceeded")
        assert (backup["status"], backup["reason"]) == ("False", "BackupVolumeNotWritable"), backup
        assert obj["status"]["phase"] == "Failed"
        message = stalled["message"]
        assert "uid 65532" in message and "owned by uid 0, gid 0, mode 0755" in message, message
        assert "chown -R 65532:65532" in message and "fsGroup" in message, message
        assert "PermissionError" not in message and "InternalError" not in str(obj["status"]), message
        assert [r for r in e2e.cluster.job_roles("shop") if not r.startswith(("plan-", "backup-"))] == []
        assert revision(e2e.db) is None  # nothing migrated
        assert list(root_owned.iterdir()) == []  # and nothing written
        print(f"\nStalled/BackupVolumeNotWritable: {message}")
    finally:
        shutil.rmtree(root_owned)
