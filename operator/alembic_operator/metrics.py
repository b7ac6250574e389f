"""Prometheus metrics of the operator (prometheus-client), behind a small typed API the handlers call.

    from . import metrics
    metrics.reconcile_finished(namespace, name, seconds, "progressing")
    metrics.job_finished(namespace, name, "migrate", seconds, succeeded=True)
    metrics.backup_size(namespace, name, 123456)
    metrics.rollback(namespace, name, "downgrade")
    metrics.held_pods(namespace, name, 3)
    metrics.drifted(namespace, name, True)
    metrics.current_revision(namespace, name, "3f2a9c1d0b7e")
    metrics.forget(namespace, name)            # the DatabaseMigration is gone: drop its series
    metrics.serve(metrics.options_from_env())  # at start-up: serve /metrics when ALEMBIC_OPERATOR_METRICS_PORT is set

Series (all prefixed ``alembic_operator_``; ``namespace``/``name`` are the DatabaseMigration's):

    reconcile_total{namespace,name,outcome}              counter   reconcile passes by outcome
    reconcile_duration_seconds{outcome}                  histogram one pass (observe, decide, act)
    jobs_total{namespace,name,role,result}               counter   finished Jobs: role plan|backup|migrate|downgrade|
                                                                   restore, result succeeded|failed
    job_duration_seconds{namespace,name,role}            histogram how long the Jobs ran (migration, backup...)
    backup_size_bytes{namespace,name}                    gauge     size of the newest backup
    rollbacks_total{namespace,name,mode}                 counter   rollbacks by mode (transaction|downgrade|restore)
    held_pods{namespace,name}                            gauge     pods held by the scheduling gate
    drifted{namespace,name}                              gauge     1 when the last drift check found differences
    current_revision_info{namespace,name,revision}       gauge     1 for the database's revision (one series per
                                                                   resource: the old revision's series is removed)
    build_info{version}                                  gauge     1

The reconcile histogram has no per-resource labels (cardinality); the rest have one series set per resource, which
`forget` removes. Every function is cheap, thread-safe and never raises on bad input (metrics never break a
reconcile). With a ServiceMonitor, keep ``honorLabels: true`` so ``namespace`` stays the resource's namespace.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.registry import REGISTRY

from . import __version__

log = logging.getLogger("alembic_operator.metrics")

PREFIX = "alembic_operator"
PORT_ENV = "ALEMBIC_OPERATOR_METRICS_PORT"
ADDR_ENV = "ALEMBIC_OPERATOR_METRICS_ADDR"
DEFAULT_ADDR = "0.0.0.0"

Outcome = Literal["ready", "progressing", "stalled", "error", "deleted"]
RollbackMode = Literal["transaction", "downgrade", "restore"]

RECONCILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Jobs: from a quick plan to a multi-hour backup or migration.
JOB_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 21600.0)


class Metrics:
    """The operator's metrics in one registry (tests use their own; the operator uses the default one)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self._lock = threading.Lock()
        # Label values per resource, so `forget` and `current_revision` can remove exactly theirs.
        self._seen: dict[tuple[str, str], set[tuple[str, tuple[str, ...]]]] = {}
        self._revision: dict[tuple[str, str], str] = {}
        self.reconcile_total = Counter(f"{PREFIX}_reconcile_total", "Reconcile passes of a DatabaseMigration.",
                                       ["namespace", "name", "outcome"], registry=registry)
        self.reconcile_duration = Histogram(f"{PREFIX}_reconcile_duration_seconds",
                                            "Duration of one reconcile pass (observe, decide, act).", ["outcome"],
                                            buckets=RECONCILE_BUCKETS, registry=registry)
        self.jobs_total = Counter(f"{PREFIX}_jobs_total", "Finished Jobs by role and result.",
                                  ["namespace", "name", "role", "result"], registry=registry)
        self.job_duration = Histogram(f"{PREFIX}_job_duration_seconds",
                                      "How long the Jobs ran (plan, backup, migrate, downgrade, restore).",
                                      ["namespace", "name", "role"], buckets=JOB_BUCKETS, registry=registry)
        self.backup_size_bytes = Gauge(f"{PREFIX}_backup_size_bytes", "Size of the newest backup.",
                                       ["namespace", "name"], registry=registry)
        self.rollbacks_total = Counter(f"{PREFIX}_rollbacks_total", "Rollbacks after a failed migration, by mode.",
                                       ["namespace", "name", "mode"], registry=registry)
        self.held_pods_gauge = Gauge(f"{PREFIX}_held_pods", "Pods held by the scheduling gate until the schema is "
                                     "ready.", ["namespace", "name"], registry=registry)
        self.drifted_gauge = Gauge(f"{PREFIX}_drifted", "1 when the last drift check found the live schema "
                                   "differing from the app's models and scripts.", ["namespace", "name"],
                                   registry=registry)
        self.revision_info = Gauge(f"{PREFIX}_current_revision_info", "The database's Alembic revision (value 1).",
                                   ["namespace", "name", "revision"], registry=registry)
        # spec.rehearsal (issue 25): the prediction and what happened, to compare over time
        self.rehearsal_duration = Gauge(f"{PREFIX}_rehearsal_duration_seconds", "The last rehearsal's plan wall "
                                        "time on a scratch copy of the database.", ["namespace", "name"],
                                        registry=registry)
        self.migration_duration = Gauge(f"{PREFIX}_migration_duration_seconds", "The last migration's wall time, "
                                        "when its plan was rehearsed (compare with the rehearsal's).",
                                        ["namespace", "name"], registry=registry)
        self.build_info = Gauge(f"{PREFIX}_build_info", "The operator's version (value 1).", ["version"],
                                registry=registry)
        self.build_info.labels(version=__version__).set(1)

    # --- recording ---------------------------------------------------------------------------------------------

    def _note(self, metric: str, labels: tuple[str, ...]) -> None:
        self._seen.setdefault((labels[0], labels[1]), set()).add((metric, labels))

    def reconcile_finished(self, namespace: str, name: str, seconds: float, outcome: Outcome | str) -> None:
        with self._lock:
            labels = (namespace, name, str(outcome))
            self.reconcile_total.labels(*labels).inc()
            self._note("reconcile_total", labels)
            self.reconcile_duration.labels(str(outcome)).observe(max(0.0, float(seconds)))

    def job_finished(self, namespace: str, name: str, role: str, seconds: float, succeeded: bool) -> None:
        with self._lock:
            counted = (namespace, name, role, "succeeded" if succeeded else "failed")
            self.jobs_total.labels(*counted).inc()
            self._note("jobs_total", counted)
            timed = (namespace, name, role)
            self.job_duration.labels(*timed).observe(max(0.0, float(seconds)))
            self._note("job_duration", timed)

    def backup_size(self, namespace: str, name: str, size_bytes: int | float) -> None:
        with self._lock:
            self.backup_size_bytes.labels(namespace, name).set(float(size_bytes))
            self._note("backup_size_bytes", (namespace, name))

    def rollback(self, namespace: str, name: str, mode: RollbackMode | str) -> None:
        with self._lock:
            labels = (namespace, name, str(mode).lower())
            self.rollbacks_total.labels(*labels).inc()
            self._note("rollbacks_total", labels)

    def held_pods(self, namespace: str, name: str, count: int) -> None:
        with self._lock:
            self.held_pods_gauge.labels(namespace, name).set(max(0, int(count)))
            self._note("held_pods_gauge", (namespace, name))

    def drifted(self, namespace: str, name: str, drifted: bool) -> None:
        with self._lock:
            self.drifted_gauge.labels(namespace, name).set(1 if drifted else 0)
            self._note("drifted_gauge", (namespace, name))

    def rehearsed(self, namespace: str, name: str, seconds: float | None, migration: float | None) -> None:
        with self._lock:
            for metric, value in (("rehearsal_duration", seconds), ("migration_duration", migration)):
                if value is not None:
                    getattr(self, metric).labels(namespace, name).set(max(0.0, float(value)))
                    self._note(metric, (namespace, name))

    def current_revision(self, namespace: str, name: str, revision: str | None) -> None:
        """One series per resource: the revision's label set replaces the previous one (None: the empty database,
        revision label "")."""
        rev = revision or ""
        key = (namespace, name)
        with self._lock:
            old = self._revision.get(key)
            if old is not None and old != rev:
                self._remove("revision_info", (namespace, name, old))
            self.revision_info.labels(namespace, name, rev).set(1)
            self._revision[key] = rev
            self._note("revision_info", (namespace, name, rev))

    def forget(self, namespace: str, name: str) -> None:
        """Remove every series of a DatabaseMigration (deleted, or no longer watched)."""
        with self._lock:
            for metric, labels in sorted(self._seen.pop((namespace, name), set())):
                self._remove(metric, labels)
            self._revision.pop((namespace, name), None)

    def _remove(self, metric: str, labels: tuple[str, ...]) -> None:
        collector = getattr(self, metric)
        with contextlib.suppress(KeyError):
            collector.remove(*labels)
        seen = self._seen.get((labels[0], labels[1]))
        if seen is not None:
            seen.discard((metric, labels))

    def resources(self) -> Iterable[tuple[str, str]]:
        """The DatabaseMigrations that have series (for tests and for pruning)."""
        with self._lock:
            return sorted(self._seen)


_default: Metrics | None = None
_default_lock = threading.Lock()


def default() -> Metrics:
    """The process-wide metrics, in prometheus-client's default registry (created on first use)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Metrics()
        return _default


def reconcile_finished(namespace: str, name: str, seconds: float, outcome: Outcome | str) -> None:
    _safely(default().reconcile_finished, namespace, name, seconds, outcome)


def job_finished(namespace: str, name: str, role: str, seconds: float, succeeded: bool) -> None:
    _safely(default().job_finished, namespace, name, role, seconds, succeeded)


def backup_size(namespace: str, name: str, size_bytes: int | float) -> None:
    _safely(default().backup_size, namespace, name, size_bytes)


def rollback(namespace: str, name: str, mode: RollbackMode | str) -> None:
    _safely(default().rollback, namespace, name, mode)


def held_pods(namespace: str, name: str, count: int) -> None:
    _safely(default().held_pods, namespace, name, count)


def drifted(namespace: str, name: str, drifted: bool) -> None:
    _safely(default().drifted, namespace, name, drifted)


def rehearsed(namespace: str, name: str, seconds: float | None, migration: float | None) -> None:
    _safely(default().rehearsed, namespace, name, seconds, migration)


def current_revision(namespace: str, name: str, revision: str | None) -> None:
    _safely(default().current_revision, namespace, name, revision)


def forget(namespace: str, name: str) -> None:
    _safely(default().forget, namespace, name)


def _safely(fn: Callable[..., None], *args: object) -> None:
    try:
        fn(*args)
    except Exception:  # a metric must never break a reconcile
        log.debug("metrics update failed", exc_info=True)


def start_server(port: int, addr: str = DEFAULT_ADDR,
                 registry: CollectorRegistry = REGISTRY) -> tuple[WSGIServer, threading.Thread]:
    """Serve /metrics (any path, in fact) on addr:port from a daemon thread; returns (server, thread) so that a
    caller can `server.shutdown()`. Raises OSError when the port is taken."""
    if registry is REGISTRY:
        default()  # the series exist (build_info at least) before the first scrape
    server, thread = start_http_server(port, addr, registry=registry)
    log.info("serving metrics on http://%s:%d/metrics", addr, port)
    return server, thread


@dataclass(frozen=True)
class MetricsOptions:
    """Where /metrics is served."""

    port: int
    addr: str = DEFAULT_ADDR


def options_from_env(environ: Mapping[str, str] | None = None) -> MetricsOptions | None:
    """ALEMBIC_OPERATOR_METRICS_PORT (the Helm chart sets it) and ALEMBIC_OPERATOR_METRICS_ADDR (default 0.0.0.0).
    Unset, empty or 0: no server (None); a value that is not a port number is logged, and means no server."""
    env = os.environ if environ is None else environ
    raw = (env.get(PORT_ENV) or "").strip()
    if not raw or raw == "0":
        return None
    try:
        port = int(raw)
    except ValueError:
        log.error("%s=%r is not a port number: metrics are not served", PORT_ENV, raw)
        return None
    return MetricsOptions(port, (env.get(ADDR_ENV) or "").strip() or DEFAULT_ADDR)


def serve(options: MetricsOptions | None) -> tuple[WSGIServer, threading.Thread] | None:
    """Serve the metrics as configured (None: not at all). A port that cannot be bound is logged, not raised: the
    operator runs on without metrics."""
    if options is None:
        return None
    try:
        return start_server(options.port, options.addr)
    except OSError as err:
        log.error("cannot serve metrics on %s:%d: %s", options.addr, options.port, err)
        return None
