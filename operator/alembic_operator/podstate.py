"""How far a Job's pod got, read from the pod objects. Pure: pods (as dicts) in, a verdict out.

A Job whose pod cannot start looks "active" to the Job API for as long as its deadline (hours for a backup), so the
operator looks at the pod itself: whether it started, and whether it waits for something only a human can provide.
"""

from __future__ import annotations

import re
from typing import Any

from . import reasons

_MISSING_CLAIM = re.compile(r'persistentvolumeclaim "([^"]+)" not found', re.IGNORECASE)


def pod_progress(pods: list[dict[str, Any]]) -> tuple[bool, tuple[str, str] | None]:
    """(started, blocked) for the pods of one Job.

    started: some pod runs or ran a container (Pending with an init container running counts). blocked: (reason,
    message) when a pod waits for something a human must create or fix; the Job is kept and starts on its own
    once that exists (the scheduler and the kubelet keep trying).
    """
    started = False
    for pod in pods:
        status = pod.get("status") or {}
        if status.get("phase") in ("Running", "Succeeded", "Failed"):
            started = True
        statuses = list(status.get("initContainerStatuses") or []) + list(status.get("containerStatuses") or [])
        if any((cs.get("state") or {}).keys() & {"running", "terminated"} for cs in statuses):
            started = True
    if started:
        return True, None
    for pod in pods:
        if (blocked := _blocked(pod)) is not None:
            return False, blocked
    return False, None


def _blocked(pod: dict[str, Any]) -> tuple[str, str] | None:
    status = pod.get("status") or {}
    texts = [str(cond.get("message") or "") for cond in status.get("conditions") or []
             if cond.get("type") == "PodScheduled" and cond.get("status") == "False"]
    statuses = list(status.get("initContainerStatuses") or []) + list(status.get("containerStatuses") or [])
    texts += [str(((cs.get("state") or {}).get("waiting") or {}).get("message") or "") for cs in statuses]
    for text in texts:
        if match := _MISSING_CLAIM.search(text):
            claim = match.group(1)
            namespace = (pod.get("metadata") or {}).get("namespace", "")
            return (reasons.PERSISTENT_VOLUME_CLAIM_NOT_FOUND,
                    f'its pod cannot start: PersistentVolumeClaim {namespace}/{claim} does not exist (see '
                    "spec.backup.volume). Create it, or fix the claim name: the Job waits and continues on its own "
                    "once the claim exists")
    return None
