"""Reading a Job's pods: started or not, and waiting for something only a human can provide."""

from __future__ import annotations

from typing import Any

from alembic_operator.podstate import failure_cause, never_ran, pod_progress, pod_waiting


def pod(phase: str = "Pending", conditions: list[dict[str, Any]] | None = None,
        waiting: dict[str, str] | None = None, running: bool = False) -> dict[str, Any]:
    state: dict[str, Any] = {"running": {}} if running else {"waiting": waiting} if waiting else {}
    return {"metadata": {"namespace": "shop", "name": "p"},
            "status": {"phase": phase, "conditions": conditions or [],
                       "containerStatuses": [{"name": "backup", "state": state}] if state else []}}


UNSCHEDULABLE = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                 "message": '0/1 nodes are available: persistentvolumeclaim "backups" not found. preemption: 0/1 '
                            "nodes are available: 1 Preemption is not helpful for scheduling."}


def test_no_pod_yet_is_neither_started_nor_blocked() -> None:
    assert pod_progress([]) == (False, None)
    assert pod_progress([pod()]) == (False, None)


def test_a_missing_claim_is_blocked_whoever_reports_it() -> None:
    for p in (pod(conditions=[UNSCHEDULABLE]),  # the scheduler
              pod(waiting={"reason": "CreateContainerConfigError",
                           "message": 'persistentvolumeclaim "backups" not found'})):  # a kubelet
        started, blocked = pod_progress([p])
        assert not started and blocked is not None
        assert blocked[0] == "PersistentVolumeClaimNotFound" and "shop/backups" in blocked[1]
        assert "spec.backup.volume" in blocked[1]


def test_a_running_pod_is_started_and_never_blocked() -> None:
    assert pod_progress([pod("Running", running=True)]) == (True, None)
    init_running = pod()
    init_running["status"]["initContainerStatuses"] = [{"name": "plan", "state": {"running": {}}}]
    assert pod_progress([init_running, pod(conditions=[UNSCHEDULABLE])]) == (True, None)


def waiting_on(container: str, image: str, reason: str, message: str, installed: bool = True) -> dict[str, Any]:
    """A plan pod: the runner installer (our image) done, the app's init container waiting."""
    p = pod()
    p["spec"] = {"initContainers": [{"name": "runner", "image": "op:1"}, {"name": container, "image": image}],
                 "containers": [{"name": "scan", "image": "op:1"}]}
    done = {"terminated": {"exitCode": 0}} if installed else {"waiting": {"reason": "PodInitializing"}}
    p["status"]["initContainerStatuses"] = [{"name": "runner", "state": done},
                                            {"name": container, "state": {"waiting": {"reason": reason,
                                                                                    "message": message}}}]
    return p


def test_the_runner_installer_alone_is_not_a_start() -> None:
    """Only the step's own containers count: a Job whose installer ran but whose app image cannot be pulled never
    ran anything of its step (it may be deleted), and it is blocked."""
    p = waiting_on("plan", "registry.local/shop:typo", "ImagePullBackOff", "Back-off pulling image")
    started, blocked = pod_progress([p])
    assert not started and blocked is not None and blocked[0] == "ImagePullFailed"
    assert never_ran([p])


def test_image_pull_errors_name_the_image_and_the_fix() -> None:
    not_found = waiting_on("plan", "registry.local/shop:typo", "ErrImagePull",
                           'failed to pull and unpack image "registry.local/shop:typo": not found')
    reason, message = pod_progress([not_found])[1] or ("", "")
    assert reason == "ImagePullFailed" and "registry.local/shop:typo" in message and "container plan" in message
    assert "spec.migrations.image" in message and "not found" in message
    denied = waiting_on("migrate", "private.example/shop:1", "ErrImagePull",
                        "failed to authorize: 401 Unauthorized")
    reason, message = pod_progress([denied])[1] or ("", "")
    assert reason == "ImagePullFailed" and "spec.jobTemplate.imagePullSecrets" in message
    ours = waiting_on("backup", "ghcr.io/alembic-operator/alembic-operator:typo", "ErrImagePull", "not found")
    assert "the operator's image" in (pod_progress([ours])[1] or ("", ""))[1]
    bad = waiting_on("plan", "Shop:1", "InvalidImageName", 'Failed to apply default image tag "Shop:1"')
    assert (pod_progress([bad])[1] or ("",))[0] == "InvalidImageName"


def test_a_root_image_under_run_as_non_root_says_how_to_fix_it() -> None:
    for said in ("container has runAsNonRoot and image will run as root (pod: p, container: migrate)",
                 "container has runAsNonRoot and image has non-numeric user (app), cannot verify user is non-root"):
        reason, message = pod_progress([waiting_on("migrate", "shop:1", "CreateContainerConfigError", said)])[1] \
            or ("", "")
        assert reason == "ImageRunsAsRoot" and "USER" in message
        assert "spec.jobTemplate.podSecurityContext.runAsUser" in message
        assert "securityContext.runAsUser (every container)" in message


def test_a_missing_config_key_and_no_fitting_node() -> None:
    missing = waiting_on("plan", "shop:1", "CreateContainerConfigError",
                         'couldn\'t find key APP_ENV in ConfigMap shop/settings')
    reason, message = pod_progress([missing])[1] or ("", "")
    assert reason == "ContainerConfigError" and "shop/settings" in message and "spec.jobTemplate.env" in message
    nowhere = pod(conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                               "message": "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/"
                                          "selector."}])
    reason, message = pod_progress([nowhere])[1] or ("", "")
    assert reason == "Unschedulable" and "node affinity" in message and "spec.jobTemplate.nodeSelector" in message


def test_a_slow_start_is_not_blocked() -> None:
    """Pulling a big image, creating the container: only slow, not a human's problem."""
    for reason in ("ContainerCreating", "PodInitializing"):
        assert pod_progress([waiting_on("plan", "shop:1", reason, "")]) == (False, None)


def test_a_slow_start_says_what_it_waits_for() -> None:
    assert pod_waiting([]) == "its pod is being created"
    assert "scheduler" in pod_waiting([pod()])  # no node yet
    pulling = waiting_on("plan", "registry.local/shop:big", "PodInitializing", "")
    pulling["spec"]["nodeName"] = "node-1"
    assert pod_waiting([pulling]) == ("its node pulls the image registry.local/shop:big (a big image takes a while) "
                                      "and starts the container plan")
    installing = waiting_on("plan", "shop:1", "PodInitializing", "", installed=False)
    installing["spec"]["nodeName"] = "node-1"
    assert "the image op:1" in pod_waiting([installing]) and "runner's installer" in pod_waiting([installing])


# --- a failed Job: stopped from outside, or not --------------------------------------------------------------------

def failed_job(reason: str = "BackoffLimitExceeded", deadline: int = 600) -> dict[str, Any]:
    return {"spec": {"activeDeadlineSeconds": deadline},
            "status": {"conditions": [{"type": "Failed", "status": "True", "reason": reason, "message": "..."}]}}


def ended(container: str, reason: str, exit_code: int, memory: str | None = None) -> dict[str, Any]:
    """A migrate pod whose container ended with `reason` (the runner installer done)."""
    resources = {"limits": {"memory": memory}} if memory else {}
    return {"metadata": {"namespace": "shop", "name": "p"},
            "spec": {"initContainers": [{"name": "runner", "image": "op:1"}],
                     "containers": [{"name": container, "image": "shop:1", "resources": resources}]},
            "status": {"phase": "Failed",
                       "initContainerStatuses": [{"name": "runner", "state": {"terminated": {"exitCode": 0}}}],
                       "containerStatuses": [{"name": container, "state": {
                           "terminated": {"exitCode": exit_code, "reason": reason}}}]}}


def test_a_job_that_failed_by_itself_has_no_outside_cause() -> None:
    """The runner's own error (exit 1, its result in the termination message) is the migration's, not the node's."""
    assert failure_cause(failed_job(), [ended("migrate", "Error", 1)]) is None


def test_oom_killed_names_the_container_and_its_limit() -> None:
    reason, message = failure_cause(failed_job(), [ended("migrate", "OOMKilled", 137, memory="128Mi")]) or ("", "")
    assert reason == "OOMKilled"
    assert "container migrate" in message and "128Mi" in message
    assert "spec.jobTemplate.resources.limits.memory" in message
    _, message = failure_cause(failed_job(), [ended("migrate", "OOMKilled", 137)]) or ("", "")
    assert "no memory limit of its own" in message


def test_evicted_by_the_kubelet_or_the_eviction_api() -> None:
    kubelet = ended("migrate", "ContainerStatusUnknown", 137)
    kubelet["status"].update(reason="Evicted", message="Pod ephemeral local storage usage exceeds the total limit "
                                                       "of containers 10Mi.")
    reason, message = failure_cause(failed_job(), [kubelet]) or ("", "")
    assert reason == "PodEvicted" and "ephemeral local storage usage exceeds" in message
    assert "ephemeral-storage" in message
    drained = ended("migrate", "Error", 143)
    drained["status"]["conditions"] = [{"type": "DisruptionTarget", "status": "True",
                                        "reason": "EvictionByEvictionAPI", "message": "Eviction API: evicting"}]
    reason, message = failure_cause(failed_job(), [drained]) or ("", "")
    assert reason == "PodEvicted" and "Eviction API" in message and "drain" in message


def test_deadline_exceeded_wins_over_the_kill_it_caused() -> None:
    """At its deadline the Job controller deletes the pod: the deadline is the cause, not the deletion."""
    killed = ended("migrate", "Error", 143)
    killed["metadata"]["deletionTimestamp"] = "2026-11-27T01:00:00Z"
    for pods in ([killed], []):
        reason, message = failure_cause(failed_job("DeadlineExceeded", deadline=30), pods) or ("", "")
        assert reason == "DeadlineExceeded" and "30 s" in message
        assert "spec.jobTemplate.activeDeadlineSeconds" in message


def test_a_pod_deleted_from_under_the_job() -> None:
    """The pod is gone (or going) and the Job failed: someone or something deleted it; say whether it had run."""
    reason, message = failure_cause(failed_job(), []) or ("", "")
    assert reason == "PodDeleted" and "while its containers ran" not in message
    going = ended("migrate", "Error", 143)
    going["metadata"]["deletionTimestamp"] = "2026-11-27T01:00:00Z"
    reason, message = failure_cause(failed_job(), [going]) or ("", "")
    assert reason == "PodDeleted" and "while its containers ran" in message
