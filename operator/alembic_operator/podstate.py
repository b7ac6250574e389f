"""How far a Job's pod got, and why it ended, read from the Job and pod objects. Pure: objects in, a verdict out.

A Job whose pod cannot start looks "active" to the Job API for as long as its deadline (hours for a backup), so the
operator looks at the pod itself: whether it started, and whether it waits for something only a human can provide
(an image that cannot be pulled, a security context the image cannot meet, a node that fits, a claim). The kubelet
and the scheduler keep trying, so a Job blocked this way continues on its own once the cause is gone.

A Job that failed without its runner saying why was stopped from outside: killed for memory, evicted by the node,
stopped at its deadline, or its pod deleted. `failure_cause` names which, from what Kubernetes recorded, so the user
reads the fix (a memory limit, a deadline) instead of "exited 137".
"""

from __future__ import annotations

import re

from . import reasons
from .jobs import INSTALLER
from .objects import ContainerStatus, Job, Pod
from .reasons import Reason

_MISSING_CLAIM = re.compile(r'persistentvolumeclaim "([^"]+)" not found', re.IGNORECASE)
_PULL_WAITING = {"ErrImagePull", "ImagePullBackOff"}
_NOT_FOUND = re.compile(r"not found|manifest unknown|no such|does not exist", re.IGNORECASE)
_DENIED = re.compile(r"unauthorized|authentication required|denied|forbidden|401|403", re.IGNORECASE)
_AS_ROOT = re.compile(r"runAsNonRoot and image (will run as root|has non-numeric user)", re.IGNORECASE)
MESSAGE_CHARS = 300  # of the kubelet's or the scheduler's own words, quoted


def pod_progress(pods: list[Pod]) -> tuple[bool, tuple[Reason, str] | None]:
    """(started, blocked) for the pods of one Job.

    started: one of the Job's own containers runs or ran (the init container that only installs the runner does not
    count: nothing of the step has run yet). blocked: (reason, message) when a pod waits for something a human must
    create or fix; the Job is kept, and starts on its own once that exists.
    """
    if any(_ran(pod) for pod in pods):
        return True, None
    for pod in pods:
        if (blocked := _blocked(pod)) is not None:
            return False, blocked
    return False, None


def pod_waiting(pods: list[Pod]) -> str:
    """What a pod that is only slow waits for, in words: the scheduler, or its node pulling an image and starting a
    container (the kubelet reports both as ContainerCreating / PodInitializing: a big image takes a while)."""
    if not pods:
        return "its pod is being created"
    pod = pods[-1]
    if not (pod.get("spec") or {}).get("nodeName"):
        return "its pod waits for the scheduler to pick a node"
    status = pod.get("status") or {}
    spec = pod.get("spec") or {}
    done = {str(cs.get("name")) for cs in status.get("initContainerStatuses") or []
            if ((cs.get("state") or {}).get("terminated") or {}).get("exitCode") == 0}
    containers = list(spec.get("initContainers") or []) + list(spec.get("containers") or [])
    order = [str(ctr.get("name")) for ctr in containers]
    current = next((name for name in order if name not in done), None)
    if current is None:
        return "its containers are starting"
    image = _image_of(pod, current)
    what = "the runner's installer" if current == INSTALLER else f"the container {current}"
    return f"its node pulls the image {image} (a big image takes a while) and starts {what}"


def never_ran(pods: list[Pod]) -> bool:
    """None of the Job's own containers ever started: deleting the Job cannot cut a step short."""
    return not any(_ran(pod) for pod in pods)


def _statuses(pod: Pod) -> list[ContainerStatus]:
    status = pod.get("status") or {}
    return list(status.get("initContainerStatuses") or []) + list(status.get("containerStatuses") or [])


def _ran(pod: Pod) -> bool:
    states = [cs.get("state") or {} for cs in _statuses(pod) if cs.get("name") != INSTALLER]
    last = [cs.get("lastState") or {} for cs in _statuses(pod) if cs.get("name") != INSTALLER]
    return any(s.keys() & {"running", "terminated"} for s in states + last)


def _image_of(pod: Pod, container: str) -> str:
    spec = pod.get("spec") or {}
    for ctr in list(spec.get("initContainers") or []) + list(spec.get("containers") or []):
        if ctr.get("name") == container:
            return str(ctr.get("image") or "?")
    return "?"


def _quote(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MESSAGE_CHARS else text[: MESSAGE_CHARS - 3] + "..."


def _blocked(pod: Pod) -> tuple[Reason, str] | None:
    status = pod.get("status") or {}
    namespace = (pod.get("metadata") or {}).get("namespace", "")
    unscheduled = [cond for cond in status.get("conditions") or []
                   if cond.get("type") == "PodScheduled" and cond.get("status") == "False"]
    waiting = [(str(cs.get("name")), (cs.get("state") or {}).get("waiting") or {}) for cs in _statuses(pod)]
    for text in [str(c.get("message") or "") for c in unscheduled] + [str(w.get("message") or "") for _n, w in waiting]:
        if match := _MISSING_CLAIM.search(text):
            return (reasons.PERSISTENT_VOLUME_CLAIM_NOT_FOUND,
                    f"its pod cannot start: PersistentVolumeClaim {namespace}/{match.group(1)} does not exist (see "
                    "spec.backup.volume). Create it, or fix the claim name: the Job waits and continues on its own "
                    "once the claim exists")
    for name, wait in waiting:
        reason, said = str(wait.get("reason") or ""), _quote(str(wait.get("message") or ""))
        image = _image_of(pod, name)
        field = "spec.migrations.image" if name not in ("scan", "backup", "restore", INSTALLER) else (
            "the operator's image (the chart's image.repository and image.tag)")
        if reason in _PULL_WAITING:
            fix = ("add a pull Secret for its registry to spec.jobTemplate.imagePullSecrets" if _DENIED.search(said)
                   else f"check the name and tag in {field}" if _NOT_FOUND.search(said)
                   else f"check {field} and that the node can reach its registry")
            return (reasons.IMAGE_PULL_FAILED,
                    f"its pod cannot pull the image {image} (container {name}): {said or reason}. To fix: {fix}. "
                    "The Job keeps trying and continues on its own once the image can be pulled; a new image in the "
                    "spec starts a new run")
        if reason == reasons.INVALID_IMAGE_NAME:  # the kubelet's word, reported as it is
            return (reasons.INVALID_IMAGE_NAME,
                    f"the image name {image} (container {name}) is not valid: {said or reason}. Fix {field}")
        if reason == "CreateContainerConfigError" and _AS_ROOT.search(said):
            return (reasons.IMAGE_RUNS_AS_ROOT,
                    f"the image {image} (container {name}) runs as root or as a user name, and the Jobs run with "
                    f"runAsNonRoot: {said}. To fix: set a numeric non-root USER in the image's Dockerfile (e.g. USER "
                    "10001), or set spec.jobTemplate.podSecurityContext.runAsUser (the app's containers) or "
                    "securityContext.runAsUser (every container) to a non-zero uid")
        if reason == "CreateContainerConfigError":
            return (reasons.CONTAINER_CONFIG_ERROR,
                    f"the container {name} cannot be created: {said or reason}. To fix: create what it refers to, or "
                    "fix the reference in spec.jobTemplate.env; the Job continues on its own once it exists")
    for cond in unscheduled:
        if cond.get("reason") == reasons.UNSCHEDULABLE:  # the scheduler's word, reported as it is
            return (reasons.UNSCHEDULABLE,
                    f"no node can run its pod: {_quote(str(cond.get('message') or ''))}. To fix: relax "
                    "spec.jobTemplate.nodeSelector, affinity or tolerations, or lower spec.jobTemplate.resources; "
                    "the Job is scheduled as soon as a node fits")
    return None


def failure_cause(job: Job, pods: list[Pod]) -> tuple[Reason, str] | None:
    """(reason, message) when a failed Job was stopped from outside rather than by its own error, else None.

    Checked in this order because one cause leads to the next: at its deadline the Job controller deletes the pod,
    and an evicted or deleted pod's containers end killed.
    """
    deadline = (job.get("spec") or {}).get("activeDeadlineSeconds")
    for cond in (job.get("status") or {}).get("conditions") or []:
        if (cond.get("type") == "Failed" and cond.get("status") == "True"
                and cond.get("reason") == reasons.DEADLINE_EXCEEDED):  # the Job controller's word, reported as it is
            return (reasons.DEADLINE_EXCEEDED,
                    f"it ran longer than its deadline of {deadline} s (activeDeadlineSeconds) and Kubernetes stopped "
                    "it. To fix: raise spec.jobTemplate.activeDeadlineSeconds (or find what made it slow, e.g. a lock "
                    "it waited for)")
    for pod in pods:
        for cs in _statuses(pod):
            term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated") or {}
            if term.get("reason") == reasons.OOM_KILLED:  # the kubelet's word, reported as it is
                name = str(cs.get("name"))
                limit = _memory_limit(pod, name)
                said = (f"its memory limit is {limit}" if limit else
                        "it has no memory limit of its own: the node or its namespace ran out of memory")
                return (reasons.OOM_KILLED,
                        f"the container {name} was killed for running out of memory (OOMKilled): {said}. To fix: "
                        "raise spec.jobTemplate.resources.limits.memory (and requests.memory), then apply the "
                        "resource again")
    for pod in pods:
        status = pod.get("status") or {}
        if status.get("reason") == "Evicted":
            return (reasons.POD_EVICTED,
                    f"the node evicted its pod: {_quote(str(status.get('message') or 'Evicted'))}. To fix: give "
                    "the Jobs what they use (spec.jobTemplate.resources: memory, ephemeral-storage) or free the "
                    "node, then apply the resource again")
        disrupted = [cond for cond in status.get("conditions") or []
                     if cond.get("type") == "DisruptionTarget" and cond.get("status") == "True"]
        if disrupted and disrupted[0].get("reason") == "EvictionByEvictionAPI":
            return (reasons.POD_EVICTED,
                    f"its pod was evicted through the Eviction API (a node drain?): "
                    f"{_quote(str(disrupted[0].get('message') or ''))}. Apply the resource again once the node is "
                    "back, or keep drains away from running migrations (a PodDisruptionBudget)")
    deleted = [pod for pod in pods if (pod.get("metadata") or {}).get("deletionTimestamp")]
    if not pods or deleted:
        how = " while its containers ran" if any(_ran(pod) for pod in pods) else ""
        return (reasons.POD_DELETED,
                f"its pod was deleted before it finished{how} (by a person, a controller or the node going away); "
                "the operator's Jobs never start a second pod by themselves. Apply the resource again (any change to "
                "its spec) to run it anew")
    return None


def _memory_limit(pod: Pod, container: str) -> str | None:
    spec = pod.get("spec") or {}
    for ctr in list(spec.get("initContainers") or []) + list(spec.get("containers") or []):
        if ctr.get("name") == container:
            return ((ctr.get("resources") or {}).get("limits") or {}).get("memory")
    return None
