"""alembic_operator.metrics: the series the operator exports, read back as Prometheus scrapes them."""

from __future__ import annotations

import asyncio
import socket
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from alembic_operator import metrics
from alembic_operator.api import parse_status

# Unlabelled or pre-set series every registry has (the alert rules and the dashboard read them).
ALERT_SERIES = {"alembic_operator_running_jobs", "alembic_operator_max_running_jobs", "alembic_operator_queued_runs",
                "alembic_operator_leading", "alembic_operator_phase_info",
                "alembic_operator_condition_transition_timestamp_seconds", "alembic_operator_backup_enabled",
                "alembic_operator_backup_last_success_timestamp_seconds", "alembic_operator_lock_timeouts",
                "alembic_operator_queued_since_timestamp_seconds", "alembic_operator_last_run_duration_seconds"}


@pytest.fixture
def m() -> metrics.Metrics:
    return metrics.Metrics(CollectorRegistry())


def scrape(m: metrics.Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample as {(sample name, sorted labels): value}, parsed from the exposition text."""
    text = generate_latest(m.registry).decode()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], sample: str, /,
          **labels: str) -> float | None:
    return samples.get((sample, tuple(sorted(labels.items()))))


def names(m: metrics.Metrics) -> set[str]:
    text = generate_latest(m.registry).decode()
    return {f.name for f in text_string_to_metric_families(text) if not f.name.endswith("_created")}


def test_every_name_is_prefixed(m: metrics.Metrics) -> None:
    m.reconcile_finished("ns", "a", 0.1, "ready")
    m.job_finished("ns", "a", "migrate", 3, True)
    m.backup_size("ns", "a", 10)
    m.rollback("ns", "a", "restore")
    m.held_pods("ns", "a", 1)
    m.current_revision("ns", "a", "abc")
    m.drifted("ns", "a", True)
    m.notification("ns", "a", "operator", "Failed", "delivered")
    assert names(m) == ALERT_SERIES | {
        "alembic_operator_drifted", "alembic_operator_notifications", "alembic_operator_notifications_retrying",
        "alembic_operator_reconcile", "alembic_operator_reconcile_duration_seconds", "alembic_operator_jobs",
        "alembic_operator_job_duration_seconds", "alembic_operator_backup_size_bytes", "alembic_operator_rollbacks",
        "alembic_operator_held_pods", "alembic_operator_current_revision_info", "alembic_operator_build_info",
        "alembic_operator_rehearsal_duration_seconds", "alembic_operator_migration_duration_seconds",
    }


def test_reconcile_counts_and_durations(m: metrics.Metrics) -> None:
    m.reconcile_finished("shop", "db", 0.02, "progressing")
    m.reconcile_finished("shop", "db", 0.2, "progressing")
    m.reconcile_finished("shop", "db", 7, "ready")
    s = scrape(m)
    assert value(s, "alembic_operator_reconcile_total", namespace="shop", name="db", outcome="progressing") == 2
    assert value(s, "alembic_operator_reconcile_total", namespace="shop", name="db", outcome="ready") == 1
    assert value(s, "alembic_operator_reconcile_duration_seconds_count", outcome="progressing") == 2
    assert value(s, "alembic_operator_reconcile_duration_seconds_sum", outcome="progressing") == pytest.approx(0.22)
    assert value(s, "alembic_operator_reconcile_duration_seconds_bucket", outcome="ready", le="5.0") == 0
    assert value(s, "alembic_operator_reconcile_duration_seconds_bucket", outcome="ready", le="10.0") == 1


def test_jobs_by_role_and_result(m: metrics.Metrics) -> None:
    m.job_finished("shop", "db", "backup", 42, True)
    m.job_finished("shop", "db", "migrate", 600, False)
    m.job_finished("shop", "db", "migrate", 90, True)
    s = scrape(m)
    assert value(s, "alembic_operator_jobs_total", namespace="shop", name="db", role="migrate", result="failed") == 1
    assert value(s, "alembic_operator_jobs_total", namespace="shop", name="db", role="migrate",
                 result="succeeded") == 1
    assert value(s, "alembic_operator_job_duration_seconds_count", namespace="shop", name="db", role="migrate") == 2
    assert value(s, "alembic_operator_job_duration_seconds_sum", namespace="shop", name="db", role="backup") == 42
    assert value(s, "alembic_operator_job_duration_seconds_bucket", namespace="shop", name="db", role="backup",
                 le="60.0") == 1


def test_backup_size_rollbacks_held_pods(m: metrics.Metrics) -> None:
    m.backup_size("shop", "db", 1000)
    m.backup_size("shop", "db", 123456)
    m.rollback("shop", "db", "downgrade")
    m.rollback("shop", "db", "Restore")
    m.held_pods("shop", "db", 3)
    m.held_pods("shop", "db", -1)
    s = scrape(m)
    assert value(s, "alembic_operator_backup_size_bytes", namespace="shop", name="db") == 123456
    assert value(s, "alembic_operator_rollbacks_total", namespace="shop", name="db", mode="downgrade") == 1
    assert value(s, "alembic_operator_rollbacks_total", namespace="shop", name="db", mode="restore") == 1
    assert value(s, "alembic_operator_held_pods", namespace="shop", name="db") == 0


def test_rehearsal_and_real_durations_side_by_side(m: metrics.Metrics) -> None:
    m.rehearsed("shop", "db", 41.5, None)  # rehearsed, not migrated yet
    assert value(scrape(m), "alembic_operator_migration_duration_seconds", namespace="shop", name="db") is None
    m.rehearsed("shop", "db", 41.5, 44.0)
    s = scrape(m)
    assert value(s, "alembic_operator_rehearsal_duration_seconds", namespace="shop", name="db") == 41.5
    assert value(s, "alembic_operator_migration_duration_seconds", namespace="shop", name="db") == 44.0
    m.forget("shop", "db")
    assert value(scrape(m), "alembic_operator_rehearsal_duration_seconds", namespace="shop", name="db") is None


def test_current_revision_keeps_one_series_per_resource(m: metrics.Metrics) -> None:
    m.current_revision("shop", "db", None)
    m.current_revision("shop", "db", "3f2a9c1d0b7e")
    m.current_revision("shop", "db", "9d81aa02c4f5")
    m.current_revision("shop", "db", "9d81aa02c4f5")
    m.current_revision("other", "db", "3f2a9c1d0b7e")
    s = scrape(m)
    revs = {dict(labels)["revision"]: v for (name, labels), v in s.items()
            if name == "alembic_operator_current_revision_info" and dict(labels)["namespace"] == "shop"}
    assert revs == {"9d81aa02c4f5": 1}
    assert value(s, "alembic_operator_current_revision_info", namespace="other", name="db",
                 revision="3f2a9c1d0b7e") == 1


def test_forget_removes_every_series_of_one_resource(m: metrics.Metrics) -> None:
    for name in ("a", "b"):
        m.reconcile_finished("ns", name, 0.1, "ready")
        m.job_finished("ns", name, "plan", 2, True)
        m.backup_size("ns", name, 5)
        m.rollback("ns", name, "none")
        m.held_pods("ns", name, 2)
        m.current_revision("ns", name, "r1")
    m.forget("ns", "a")
    m.forget("ns", "never-seen")
    s = scrape(m)
    left = {dict(labels).get("name") for (_n, labels), _v in s.items() if "namespace" in dict(labels)}
    assert left == {"b"}
    assert list(m.resources()) == [("ns", "b")]
    # The shared histogram (no per-resource labels) keeps counting.
    assert value(s, "alembic_operator_reconcile_duration_seconds_count", outcome="ready") == 2
    m.current_revision("ns", "a", "r2")  # a resource that comes back starts afresh
    assert value(scrape(m), "alembic_operator_current_revision_info", namespace="ns", name="a", revision="r2") == 1


def test_build_info(m: metrics.Metrics) -> None:
    from alembic_operator import __version__

    assert value(scrape(m), "alembic_operator_build_info", version=__version__) == 1


def test_module_functions_never_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    m = metrics.Metrics(CollectorRegistry())
    monkeypatch.setattr(metrics, "_default", m)
    metrics.reconcile_finished("ns", "x", "not a number", "ready")  # type: ignore[arg-type]
    metrics.held_pods("ns", "x", 4)
    metrics.current_revision("ns", "x", "r")
    metrics.job_finished("ns", "x", "backup", 1.5, False)
    metrics.backup_size("ns", "x", 7)
    metrics.rollback("ns", "x", "restore")
    metrics.observe_status("ns", "x", None, True)  # type: ignore[arg-type]
    metrics.lock_timeout("ns", "x")
    metrics.queued("ns", "x", True)
    metrics.job_slots(1, 2, 3)
    metrics.last_run_duration("ns", "x", "r", "long")  # type: ignore[arg-type]
    assert value(scrape(m), "alembic_operator_held_pods", namespace="ns", name="x") == 4
    assert value(scrape(m), "alembic_operator_lock_timeouts_total", namespace="ns", name="x") == 1
    metrics.forget("ns", "x")
    assert list(m.resources()) == []


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_served_over_http() -> None:
    m = metrics.Metrics(CollectorRegistry())
    m.held_pods("shop", "db", 2)
    port = _free_port()
    server, _thread = metrics.start_server(port, "127.0.0.1", registry=m.registry)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            body = resp.read().decode()
        assert 'alembic_operator_held_pods{name="db",namespace="shop"} 2.0' in body
    finally:
        server.shutdown()
        server.server_close()


def test_serve_from_env() -> None:
    assert metrics.serve(metrics.options_from_env({})) is None
    assert metrics.serve(metrics.options_from_env({metrics.PORT_ENV: "0"})) is None
    assert metrics.serve(metrics.options_from_env({metrics.PORT_ENV: "http"})) is None
    with socket.socket() as busy:  # a port in use is logged, not raised
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        busy_env = {metrics.PORT_ENV: str(taken), metrics.ADDR_ENV: "127.0.0.1"}
        assert metrics.serve(metrics.options_from_env(busy_env)) is None
    port = _free_port()
    started = metrics.serve(metrics.options_from_env({metrics.PORT_ENV: str(port), metrics.ADDR_ENV: "127.0.0.1"}))
    assert started is not None
    server, _thread = started
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            assert "alembic_operator_build_info" in resp.read().decode()
    finally:
        server.shutdown()
        server.server_close()


def test_drifted_is_a_per_resource_flag_that_forget_removes(m: metrics.Metrics) -> None:
    m.drifted("shop", "db", True)
    assert value(scrape(m), "alembic_operator_drifted", namespace="shop", name="db") == 1.0
    m.drifted("shop", "db", False)
    assert value(scrape(m), "alembic_operator_drifted", namespace="shop", name="db") == 0.0
    m.forget("shop", "db")
    assert value(scrape(m), "alembic_operator_drifted", namespace="shop", name="db") is None


def test_notifications_count_by_webhook_type_and_result_and_forget_removes_them(m: metrics.Metrics) -> None:
    m.notification("shop", "db", "resource", "Failed", "failed")
    m.notification("shop", "db", "resource", "Failed", "delivered")
    assert value(scrape(m), "alembic_operator_notifications_total", namespace="shop", name="db", webhook="resource",
                 type="Failed", result="failed") == 1
    m.notifications_retrying("shop", "db", {("resource", "Failed"): 2})
    assert value(scrape(m), "alembic_operator_notifications_retrying", namespace="shop", name="db",
                 webhook="resource", type="Failed") == 2
    m.notifications_retrying("shop", "db", {})  # delivered: the series goes to 0, not away (the panel sees it end)
    assert value(scrape(m), "alembic_operator_notifications_retrying", namespace="shop", name="db",
                 webhook="resource", type="Failed") == 0
    m.forget("shop", "db")
    assert not [key for key in scrape(m) if key[0].startswith("alembic_operator_notifications")]


def _status(*conditions: tuple[str, str, str, str], phase: str = "Failed",
            backup_at: str | None = "2026-12-01T10:00:00Z") -> metrics.ResourceState:
    raw: dict[str, object] = {"phase": phase, "conditions": [
        {"type": t, "status": st, "reason": r, "message": "m", "lastTransitionTime": at}
        for t, st, r, at in conditions]}
    if backup_at:
        raw["backup"] = {"location": "/backups/x", "sizeBytes": 10, "completedAt": backup_at}
    return metrics.state_of(parse_status(raw), backup_enabled=True)


def test_state_of_reads_phase_summary_reason_conditions_and_backup() -> None:
    state = _status(("Ready", "False", "JobFailed", "2026-12-01T10:00:00Z"),
                    ("Stalled", "True", "JobFailed", "2026-12-01T10:05:00Z"),
                    ("Reconciling", "False", "JobFailed", "2026-12-01T10:05:00Z"),
                    ("RolledBack", "True", "TransactionRolledBack", "2026-12-01T10:05:00Z"))
    assert (state.phase, state.reason, state.backup_enabled) == ("Failed", "JobFailed", True)
    assert state.last_backup == 1796119200.0  # 2026-12-01T10:00:00Z
    assert [(x.type, x.status, x.reason, x.since) for x in state.conditions][1] == (
        "Stalled", "True", "JobFailed", 1796119500.0)
    progressing = _status(("Reconciling", "True", "JobQueued", "2026-12-01T10:00:00Z"),
                          ("Stalled", "False", "JobQueued", "2026-12-01T10:00:00Z"), phase="Planning", backup_at=None)
    assert (progressing.reason, progressing.last_backup) == ("JobQueued", None)
    assert metrics.state_of(parse_status({}), backup_enabled=False) == metrics.ResourceState("", "", (), False, None)


def test_resource_state_keeps_one_series_per_condition_and_per_phase(m: metrics.Metrics) -> None:
    m.resource_state("shop", "db", _status(("Stalled", "True", "ImagePullFailed", "2026-12-01T10:00:00Z"),
                                           ("ApprovalRequired", "True", "DestructiveChangesNotApproved",
                                            "2026-12-01T09:00:00Z"), phase="Planning"))
    m.resource_state("shop", "db", _status(("Stalled", "True", "JobFailed", "2026-12-01T11:00:00Z")))
    s = scrape(m)
    conds = {(d["condition"], d["status"], d["reason"]): v for (n, labels), v in s.items()
             if n == "alembic_operator_condition_transition_timestamp_seconds" for d in [dict(labels)]}
    assert conds == {("Stalled", "True", "JobFailed"): 1796122800.0}  # the approval's series went with it
    phases = {(d["phase"], d["reason"]) for (n, labels), _v in s.items() if n == "alembic_operator_phase_info"
              for d in [dict(labels)]}
    assert phases == {("Failed", "JobFailed")}
    assert value(s, "alembic_operator_backup_enabled", namespace="shop", name="db") == 1
    assert value(s, "alembic_operator_backup_last_success_timestamp_seconds", namespace="shop", name="db") == 1796119200
    # the counter exists from the first pass, so that increase() counts the first timeout
    assert value(s, "alembic_operator_lock_timeouts_total", namespace="shop", name="db") == 0
    m.lock_timeout("shop", "db")
    assert value(scrape(m), "alembic_operator_lock_timeouts_total", namespace="shop", name="db") == 1
    m.forget("shop", "db")
    assert not [k for k in scrape(m) if ("namespace", "shop") in k[1]]


def test_queue_slots_and_last_run(m: metrics.Metrics) -> None:
    m.queued("shop", "db", True, now=100.0)
    m.queued("shop", "db", True, now=200.0)  # still the first time it was seen waiting
    m.job_slots(running=4, cap=4, queued=1)
    m.last_run_duration("shop", "db", "r1", 12)
    m.last_run_duration("shop", "db", "r2", 30)
    s = scrape(m)
    assert value(s, "alembic_operator_queued_since_timestamp_seconds", namespace="shop", name="db") == 100
    assert (value(s, "alembic_operator_running_jobs"), value(s, "alembic_operator_max_running_jobs"),
            value(s, "alembic_operator_queued_runs")) == (4, 4, 1)
    runs = {dict(labels)["revision"]: v for (n, labels), v in s.items()
            if n == "alembic_operator_last_run_duration_seconds"}
    assert runs == {"r2": 30}
    m.queued("shop", "db", False)
    assert value(scrape(m), "alembic_operator_queued_since_timestamp_seconds", namespace="shop", name="db") is None
    m.queued("shop", "db", True, now=300.0)
    assert value(scrape(m), "alembic_operator_queued_since_timestamp_seconds", namespace="shop", name="db") == 300


def test_leading_follows_kopfs_own_peering() -> None:
    """Kopf's real peering code, with a live peer of higher priority, then without: the gauge follows it."""
    asyncio.run(_leading_follows_kopfs_own_peering())


async def _leading_follows_kopfs_own_peering() -> None:
    import datetime
    import logging

    from kopf._cogs.aiokits.aiotoggles import Toggle
    from kopf._cogs.configs.configuration import OperatorSettings
    from kopf._core.engines import peering

    m = metrics.Metrics(CollectorRegistry())
    handler = metrics.follow_peering(m, paused_at_start=True)  # --peering NAME: Kopf starts paused
    try:
        assert value(scrape(m), "alembic_operator_leading") == 0
        settings = OperatorSettings()
        settings.peering.name = "ops"
        settings.peering.priority = 0
        conflicts = Toggle(False)
        now = datetime.datetime.now(datetime.UTC).isoformat()
        for peers, leading in (({"other": {"priority": 10, "lifetime": 600, "lastseen": now}}, 0), ({}, 1)):
            event = {"type": "MODIFIED", "object": {"metadata": {"name": "ops"}, "status": peers}}
            await peering.process_peering_event(
                raw_event=event, namespace=None, resource=None, identity=peering.Identity("me"),  # type: ignore[arg-type]
                settings=settings, autoclean=False, conflicts_found=conflicts,
                stream_pressure=_set_event())
            assert value(scrape(m), "alembic_operator_leading") == leading
    finally:
        logging.getLogger(metrics.PEERING_LOGGER).removeHandler(handler)


def _set_event() -> asyncio.Event:
    event = asyncio.Event()
    event.set()  # Kopf waits for the peers' deadlines unless pressed: do not wait
    return event
