"""Reading a Job's pods: started or not, and waiting for something only a human can provide."""

from __future__ import annotations

from typing import Any

from alembic_operator.podstate import pod_progress


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
    init_running["status"]["initContainerStatuses"] = [{"name": "runner", "state": {"running": {}}}]
    assert pod_progress([init_running, pod(conditions=[UNSCHEDULABLE])]) == (True, None)
