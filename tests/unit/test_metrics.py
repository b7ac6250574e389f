"""alembic_operator.metrics: the series the operator exports, read back as Prometheus scrapes them."""

from __future__ import annotations

import socket
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from alembic_operator import metrics


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
    assert names(m) == {
        "alembic_operator_drifted",
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
    assert value(scrape(m), "alembic_operator_held_pods", namespace="ns", name="x") == 4
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
