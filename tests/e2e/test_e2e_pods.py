"""On the bed's real node: a Job whose pod cannot start is reported within seconds, with the kubelet's words and the
fix, and the run continues once the cause is fixed (issue: pods that cannot start)."""

from __future__ import annotations

import re
import time

import pytest

from alembic_operator import constants as c
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
