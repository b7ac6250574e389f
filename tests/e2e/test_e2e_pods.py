"""On the bed's real node: a Job whose pod cannot start is reported within seconds, with the kubelet's words and the
fix, and the run continues once the cause is fixed (issue: pods that cannot start)."""

from __future__ import annotations

import re
import time
from datetime import datetime

import pytest

from alembic_operator import constants as c
from apps import Rev
from e2e import BASE_REVISIONS, E2E, R3, revision
from harness import wait_for

pytestmark = pytest.mark.bed


@pytest.mark.parametrize(("tag", "reason", "said"), [
    (":no-such-tag", "ImagePullFailed", "not found"),  # a typo in the tag: the registry has no such manifest
    (":v1:v2", "InvalidImageName", "invalid reference format"),  # not an image reference at all
])
def test_a_mistyped_image_stalls_within_seconds_then_the_fixed_spec_migrates(e2e: E2E, tag: str, reason: str,
                                                                              said: str) -> None:
    project = e2e.project(BASE_REVISIONS)
    spec = e2e.spec(project)
    good = spec["migrations"]["image"]
    repository = re.sub(r":[A-Za-z0-9_.-]+$", "", re.sub(r"@sha256:[0-9a-f]+$", "", good))
    bad = repository + tag
    spec["migrations"]["image"] = bad
    e2e.cluster.create("shop", spec)
    wait_for(lambda: e2e.cluster.jobs("shop") or None, timeout=30, what="the plan Job")
    created = time.monotonic()
    obj = e2e.cluster.wait_condition("shop", "Stalled", reason=reason, timeout=60)
    seconds = time.monotonic() - created
    print(f"\nplan Job created -> Stalled/{reason} in status: {seconds:.1f} s")
    assert seconds < 30
    message = obj["status"]["message"]
    assert bad in message and "spec.migrations.image" in message and said in message, message
    assert obj["status"]["phase"] == "Planning" and revision(e2e.db) is None
    time.sleep(10)  # several passes later: still one Event for it
    assert len([e for e in e2e.cluster.events("shop") if e.get("reason") == reason]) == 1

    e2e.cluster.patch("shop", {"spec": {"migrations": {"image": good}}})
    obj = e2e.cluster.wait_condition("shop", "Ready", timeout=180)
    assert obj["status"]["observedGeneration"] == 2 and revision(e2e.db) == R3
    # The first run's plan Job never ran a container of its own: deleted, not left to start later.
    wait_for(lambda: not [j for j in e2e.cluster.jobs("shop")
                          if j["metadata"]["labels"][c.GENERATION_LABEL] == "1"] or None,
             timeout=30, what="the first run's Job deleted")


# --- a Job stopped from outside after its runner started: the cause is the reason, today's rollback path runs -----

STRESS = "a7a7a7a7a707"
# Online only (the plan renders it offline): what the test's spec.jobTemplate.env asks for, inside the migration's
# transaction, after a row that must not survive the failure.
STRESSED = Rev(STRESS, upgrade=[
    'op.execute("CREATE TABLE IF NOT EXISTS runs (rev text)")',
    f'op.execute("INSERT INTO runs VALUES (\'{STRESS}\')")',
    "import os, time",
    "if not context.is_offline_mode():",
    "    blob = b'x' * (int(os.environ.get('ALLOCATE_MB', '0')) << 20)",
    "    with open('/tmp/fill', 'wb') as fill:",
    "        fill.write(b'x' * (int(os.environ.get('WRITE_MB', '0')) << 20))",
    "    time.sleep(float(os.environ.get('HOLD_SECONDS', '0')))",
], downgrade=['op.execute("DROP TABLE runs")'])


def _env(**values: str) -> list[dict[str, str]]:
    return [{"name": k, "value": v} for k, v in values.items()]


CASES = {
    # Killed by the kernel in the container's memory cgroup: the revision allocates 400 MiB under a 200Mi limit.
    "OOMKilled": ({"env": _env(ALLOCATE_MB="400"), "resources": {"limits": {"memory": "200Mi"}}},
                  ["container migrate", "200Mi", "spec.jobTemplate.resources.limits.memory"]),
    # Evicted by the kubelet: 64 MiB written to the container's own filesystem under a 16Mi ephemeral-storage limit.
    "PodEvicted": ({"env": _env(WRITE_MB="64", HOLD_SECONDS="120"),
                    "resources": {"limits": {"ephemeral-storage": "16Mi"}}},
                   ["ephemeral", "16Mi"]),
    # Stopped by the Job controller: every Job gets 40 s, the migration holds for 300 s.
    "DeadlineExceeded": ({"env": _env(HOLD_SECONDS="300"), "activeDeadlineSeconds": 40},
                         ["deadline of 40 s", "spec.jobTemplate.activeDeadlineSeconds"]),
    # Deleted by a person while the migration runs.
    # (The pod object is gone with its statuses by the time the Job has failed: whether it ran is not knowable.)
    "PodDeleted": ({"env": _env(HOLD_SECONDS="300")}, ["was deleted before it finished", "Apply the resource again"]),
}


@pytest.mark.parametrize("reason", list(CASES))
def test_a_migration_stopped_from_outside_rolls_back_names_the_cause_then_the_fix_migrates(e2e: E2E,
                                                                                           reason: str) -> None:
    template, said = CASES[reason]
    project = e2e.project([*BASE_REVISIONS, STRESSED])
    e2e.upgrade_directly(project, R3)
    spec = e2e.spec(project, jobTemplate=template)
    e2e.cluster.create("shop", spec)
    job = wait_for(lambda: next((j for j in e2e.cluster.jobs("shop")
                                 if j["metadata"]["labels"][c.ROLE_LABEL] == "migrate"), None),
                   timeout=120, what="the migration Job")
    created = time.monotonic()
    if reason == "PodDeleted":
        name = job["metadata"]["name"]
        pod = wait_for(lambda: next((p for p in e2e.cluster.pods() if p["metadata"]["labels"].get("job-name") == name
                                     and any("running" in (s.get("state") or {})
                                             for s in p["status"].get("containerStatuses") or [])), None),
                       timeout=60, what="the migration's container running")
        # The runner is inside the revision's transaction: its row inserted, the session idle in it while it holds.
        wait_for(lambda: e2e.db.query("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                      "AND state = 'idle in transaction' AND query LIKE 'INSERT INTO runs%'")[0][0],
                 timeout=60, what="the runner inside the revision's transaction")
        e2e.cluster.core.delete_namespaced_pod(pod["metadata"]["name"], e2e.ns)
    obj = e2e.cluster.wait_condition("shop", "Stalled", reason=reason, timeout=180)
    seconds = time.monotonic() - created
    finished = e2e.cluster.batch.read_namespaced_job(job["metadata"]["name"], e2e.ns)
    failed_at = next(x.last_transition_time for x in finished.status.conditions or [] if x.type == "Failed")
    stalled_at = datetime.fromisoformat(e2e.cluster.condition("shop", "Stalled")["lastTransitionTime"])
    print(f"\nmigrate Job created -> Stalled/{reason} in status: {seconds:.1f} s; the Job failed "
          f"{(failed_at - finished.metadata.creation_timestamp).total_seconds():.0f} s after its creation, the "
          f"reason was in status {(stalled_at - failed_at).total_seconds():.0f} s later (API clock, 1 s steps)")
    assert (stalled_at - failed_at).total_seconds() < 30
    message = obj["status"]["message"]
    assert all(words in message for words in said), message
    assert "Fix the migration in a new image" not in message  # the migration is not at fault: the cause says the fix
    assert obj["status"]["phase"] == "Failed"
    rolled = e2e.cluster.condition("shop", "RolledBack") or {}
    assert rolled.get("status") == "True" and rolled.get("reason") == "TransactionRolledBack", rolled
    assert revision(e2e.db) == R3
    assert e2e.db.query("SELECT to_regclass('public.runs')")[0][0] is None  # the revision's row went with it
    time.sleep(5)
    assert len([e for e in e2e.cluster.events("shop") if e.get("reason") == reason]) == 1

    e2e.cluster.patch("shop", {"spec": {"jobTemplate": None}})  # the fix: no stress, no tight limits
    obj = e2e.cluster.wait_condition("shop", "Ready", timeout=240)
    assert obj["status"]["observedGeneration"] == 2 and revision(e2e.db) == STRESS
    assert e2e.db.query("SELECT count(*) FROM runs")[0][0] == 1
