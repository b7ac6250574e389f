"""Lock timeouts, without a cluster: the Jobs carry spec.migrations' limits, a migration or downgrade that timed out
on a lock (nothing changed) is retried with backoff and says so (Reconciling, a Warning Event naming the blocker),
and after the retries it is Stalled with reason LockTimeout and the fix."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

import pytest
from test_reconcile import NOW, SPEC, _at_migrating, advance, cond, decide, done, observe, summary

from alembic_operator import constants as c
from alembic_operator.api import duration_milliseconds, parse_spec
from alembic_operator.jobparts import manifest
from alembic_operator.jobs import ROLES, Owner, build_job
from alembic_operator.observation import DatabaseObservation
from alembic_operator.reconcile import JOB_RETRIES, Decision

BLOCKED = ("revision r2 waited longer than the lock timeout (3000 ms, spec.migrations.lockTimeout) for a lock on "
           "orders, held by pid 4242 (user app, application 'nightly-report', client 10.0.0.7, idle in transaction, "
           "transaction open for 42s, query 'SELECT count(*) FROM orders WHERE code <> ?'): canceling statement due "
           "to lock timeout (SQLSTATE 55P03); the database is at r1 (nothing was committed)")
LOCKED: dict[str, Any] = {"ok": False, "reason": "LockTimeout", "message": BLOCKED, "from": "r1", "to": "r3",
                          "revision": "r1", "applied": [], "failedRevision": "r2",
                          "blockers": [{"pid": 4242, "application": "nightly-report"}]}


def container_args(role: str, migrations: dict[str, Any]) -> list[str]:
    spec = parse_spec({**SPEC, "migrations": {**SPEC["migrations"], **migrations}})
    args = {"from": "r1", "to": "r2", "lockKey": "42"}
    job = manifest(build_job(role, Owner("shop", "shop", "uid", 1), spec, operator_image="op:1", args=args))  # type: ignore[arg-type]
    return [str(a) for a in job["spec"]["template"]["spec"]["containers"][0]["command"]]


@pytest.mark.parametrize("role", ["migrate", "downgrade"])
def test_migrate_and_downgrade_jobs_carry_the_session_limits(role: str) -> None:
    default = container_args(role, {})
    assert default[default.index("--db-lock-timeout-ms") + 1] == "3000" and "--db-statement-timeout-ms" not in default
    both = container_args(role, {"lockTimeout": "500ms", "statementTimeout": "15m"})
    assert both[both.index("--db-lock-timeout-ms") + 1] == "500"
    assert both[both.index("--db-statement-timeout-ms") + 1] == "900000"
    off = container_args(role, {"lockTimeout": "0s"})
    assert off[off.index("--db-lock-timeout-ms") + 1] == "0"


def test_writers_that_do_not_migrate_get_no_session_limits() -> None:
    spec = parse_spec(SPEC)
    job = manifest(build_job("stamp", Owner("shop", "shop", "uid", 1), spec, operator_image="op:1",
                             args={"revision": "r1", "lockKey": "42"}))
    assert "--db-lock-timeout-ms" not in job["spec"]["template"]["spec"]["containers"][0]["command"]


@pytest.mark.parametrize(("text", "ms"), [("3s", 3000), ("500ms", 500), ("1m30s", 90000), ("1h", 3600000),
                                          ("2s5ms", 2005), ("0s", 0), (None, None)])
def test_durations_down_to_milliseconds(text: str | None, ms: int | None) -> None:
    assert duration_milliseconds(text) == ms


@pytest.mark.parametrize("bad", ["3", "3 s", "1.5s", "", "3sec", "-1s"])
def test_a_bad_lock_timeout_names_the_field(bad: str) -> None:
    with pytest.raises(ValueError, match=r"spec\.migrations\.lockTimeout"):
        parse_spec({**SPEC, "migrations": {**SPEC["migrations"], "lockTimeout": bad}})


def test_downgrades_are_retried_too() -> None:
    assert ROLES["migrate"].retries and ROLES["downgrade"].retries


def _timed_out(d: Decision, attempt: int, now: Any) -> Decision:
    return advance(d, jobs={"migrate": done("migrate", LOCKED, "failed", attempt)}, db=DatabaseObservation("r1"),
                   now=now)


def test_a_lock_timeout_is_retried_with_backoff_naming_the_blocker_then_stalls_with_its_own_reason() -> None:
    status = _at_migrating()
    d = decide(observe(status, jobs={"migrate": done("migrate", LOCKED, "failed")}, db=DatabaseObservation("r1")))
    assert d.jobs == [] and summary(d) == ("False", "True", "False") and d.requeue_after == 5
    reconciling = cond(d, c.RECONCILING)
    assert reconciling["reason"] == "LockTimeout" and d.status["phase"] == "Migrating"
    assert "application 'nightly-report'" in reconciling["message"] and "pid 4242" in reconciling["message"]
    assert "retrying in 5s (attempt 2 of 6)" in reconciling["message"]
    assert d.events == [("Warning", "LockTimeout", reconciling["message"])]  # the phase did not change: still said
    again = _timed_out(d, 0, NOW + timedelta(seconds=1))
    assert again.events == [] and again.jobs == []  # waiting for the backoff: nothing new to say
    assert cond(again, c.RECONCILING)["message"].endswith("nothing was changed; retrying in 4s (attempt 2 of 6)")
    assert "pid 4242" in cond(again, c.RECONCILING)["message"]
    now = NOW
    for attempt in range(1, JOB_RETRIES + 1):
        now += timedelta(seconds=61)
        d = _timed_out(d, attempt - 1, now)  # its time has come: the next Job
        assert [(j.role, j.args["instance"]) for j in d.jobs] == [("migrate", str(attempt))]
        assert "retrying the migrate Job" in cond(d, c.RECONCILING)["message"]
        d = _timed_out(d, attempt, now)  # it timed out again
        if attempt < JOB_RETRIES:
            assert [e[:2] for e in d.events] == [("Warning", "LockTimeout")] and d.jobs == []
    assert d.jobs == [] and d.status["phase"] == "Failed" and summary(d) == ("False", "False", "True")
    stalled = cond(d, c.STALLED)
    assert stalled["reason"] == "LockTimeout"
    assert "pid 4242" in stalled["message"]
    assert f"(attempt {JOB_RETRIES + 1} of {JOB_RETRIES + 1})" in stalled["message"]
    assert stalled["message"].endswith("End the sessions holding the lock (or wait until they are done), or raise "
                                       "spec.migrations.lockTimeout, then edit the resource to try again.")
    assert cond(d, c.ROLLED_BACK)["reason"] == "TransactionRolledBack"
    assert d.status["history"][-1]["reason"] == "LockTimeout"
    assert ("Warning", "LockTimeout") in [e[:2] for e in d.events]


def test_a_retried_migration_that_got_its_lock_succeeds() -> None:
    status = _at_migrating()
    d = decide(observe(status, jobs={"migrate": done("migrate", LOCKED, "failed")}, db=DatabaseObservation("r1")))
    now = NOW + timedelta(seconds=6)
    d = _timed_out(d, 0, now)
    assert [j.args["instance"] for j in d.jobs] == ["1"]
    d = advance(d, jobs={"migrate": done("migrate", {"ok": True, "applied": ["r2", "r3"]}, "succeeded", 1)},
                db=DatabaseObservation("r3"), now=now)
    assert summary(d) == ("True", "False", "False") and d.status["phase"] == "Succeeded"


def test_a_downgrade_that_timed_out_on_a_lock_is_retried_before_anything_else() -> None:
    status = _at_migrating()
    failed = {"migrate": done("migrate", {"ok": False, "reason": "MigrationFailed", "message": "boom", "from": "r1",
                                          "applied": ["r2"], "revision": "r2"}, "failed")}
    d = decide(observe(status, jobs=failed, db=DatabaseObservation("r2")))
    assert [j.role for j in d.jobs] == ["downgrade"]
    locked = {**LOCKED, "reverted": [], "revision": "r2"}
    d = advance(d, jobs={**failed, "downgrade": done("downgrade", locked, "failed")}, db=DatabaseObservation("r2"))
    assert d.jobs == [] and cond(d, c.RECONCILING)["reason"] == "LockTimeout" and d.status["phase"] == "RollingBack"
    d = advance(d, jobs={**failed, "downgrade": done("downgrade", locked, "failed")}, db=DatabaseObservation("r2"),
                now=NOW + timedelta(seconds=6))
    assert [(j.role, j.args["instance"]) for j in d.jobs] == [("downgrade", "1")]


@pytest.mark.parametrize(("backoff", "delays"), [(5, [5, 10, 20, 40, 60]), (1, [1, 2, 4, 8, 12])])
def test_retries_wait_the_configured_backoff_doubled_up_to_twelve_times_it(backoff: int, delays: list[int]) -> None:
    """--job-retry-backoff: the first retry's delay, doubled per attempt, capped at 12 times it (60 s by default)."""
    status = _at_migrating()
    now, seen = NOW, []
    obs = dataclasses.replace(observe(status, jobs={"migrate": done("migrate", LOCKED, "failed")},
                                      db=DatabaseObservation("r1")), job_retry_backoff=backoff)
    d = decide(obs)
    for attempt in range(1, JOB_RETRIES + 1):
        seen.append(d.requeue_after)
        assert f"retrying in {d.requeue_after}s (attempt {attempt + 1} of 6)" in cond(d, c.RECONCILING)["message"]
        now += timedelta(seconds=d.requeue_after or 0)
        retried = decide(dataclasses.replace(observe(d.status, jobs={"migrate": done("migrate", LOCKED, "failed",
                                                                                       attempt - 1)},
                                                     db=DatabaseObservation("r1"), now=now), job_retry_backoff=backoff))
        assert [j.role for j in retried.jobs] == ["migrate"]
        d = decide(dataclasses.replace(observe(retried.status, jobs={"migrate": done("migrate", LOCKED, "failed",
                                                                                       attempt)},
                                               db=DatabaseObservation("r1"), now=now), job_retry_backoff=backoff))
    assert seen == delays and d.status["phase"] == "Failed"
