"""Prometheus metrics of the operator (prometheus-client), behind a small typed API the handlers call.

    from . import metrics
    metrics.reconcile_finished(namespace, name, seconds, "progressing")
    metrics.job_finished(namespace, name, "migrate", seconds, succeeded=True)
    metrics.backup_size(namespace, name, 123456)
    metrics.rollback(namespace, name, "downgrade")
    metrics.held_pods(namespace, name, 3)
    metrics.drifted(namespace, name, True)
    metrics.current_revision(namespace, name, "3f2a9c1d0b7e")
    metrics.observe_status(namespace, name, status, backup_enabled=True)  # what the alert rules read
    metrics.queued(namespace, name, True)      # waiting for a Job slot under --max-running-jobs (False: not now)
    metrics.job_slots(running=3, cap=4, queued=2)
    metrics.lock_timeout(namespace, name)      # a migration or downgrade Job ended LockTimeout
    metrics.last_run_duration(namespace, name, "9d81aa02c4f5", 42.0)  # the migration Job that reached it
    metrics.notification(namespace, name, "operator", "Failed", "delivered")
    metrics.notifications_retrying(namespace, name, {("operator", "Failed"): 1})  # after each delivery round
    metrics.leading()                          # whether Kopf's peering has this replica active (the notifier asks)
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
    notifications_total{namespace,name,webhook,type,result}  counter notification attempts (notify/): webhook
                                                                   operator|resource, result delivered|failed|expired
    notifications_retrying{namespace,name,webhook,type}  gauge     deliveries that failed and wait for their next
                                                                   attempt (0 once delivered or given up)
    build_info{version}                                  gauge     1

What the alert rules and the dashboard read (charts/alembic-operator/templates/prometheusrule.yaml, dashboard.json):

    phase_info{namespace,name,phase,reason}              gauge     1 for the resource's phase and summary reason
                                                                   (Stalled's when stalled, else Reconciling's,
                                                                   else Ready's); one series per resource
    condition_transition_timestamp_seconds{namespace,name,condition,status,reason}
                                                         gauge     each condition's lastTransitionTime (Unix
                                                                   seconds): `time() - x` is how long it has held;
                                                                   one series per condition type
    backup_enabled{namespace,name}                       gauge     1 when spec.backup.enabled (it takes backups)
    backup_last_success_timestamp_seconds{namespace,name} gauge    when the newest backup completed
    lock_timeouts_total{namespace,name}                  counter   migration/downgrade Jobs that ended LockTimeout
                                                                   (0 from the first pass, so increase() sees the
                                                                   first one)
    queued_since_timestamp_seconds{namespace,name}       gauge     since when its next Job waits for a slot under
                                                                   --max-running-jobs (only while it waits)
    running_jobs, max_running_jobs, queued_runs          gauge     the operator's Job slots: running, the cap (0:
                                                                   none), runs waiting
    last_run_duration_seconds{namespace,name,revision}   gauge     how long the last successful migration Job ran,
                                                                   labelled with the revision it reached (one
                                                                   series per resource)
    leading                                              gauge     1 while this replica is the active one (Kopf
                                                                   peering; always 1 standalone), 0 while paused

Labels carry names, phases, condition types and reasons only (declared words, reasons.py): never a URL, a message
or a value from a Secret.

The reconcile histogram has no per-resource labels (cardinality); the rest have one series set per resource, which
`forget` removes. Every function is cheap, thread-safe and never raises on bad input (metrics never break a
reconcile). With a ServiceMonitor, keep ``honorLabels: true`` so ``namespace`` stays the resource's namespace.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Literal
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.registry import REGISTRY

from . import __version__
from . import constants as c
from .api import DatabaseMigrationStatus

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


@dataclass(frozen=True)
class ConditionSample:
    """One condition as the alert rules read it: since when it holds (its lastTransitionTime, Unix seconds)."""

    type: str
    status: str
    reason: str
    since: float


@dataclass(frozen=True)
class ResourceState:
    """What the alert rules and the dashboard read of one DatabaseMigration, derived from its status (state_of)."""

    phase: str
    reason: str
    conditions: tuple[ConditionSample, ...]
    backup_enabled: bool
    last_backup: float | None  # Unix seconds of the newest backup's completion, None: no backup yet


def _seconds(moment: datetime) -> float:
    return moment.timestamp()


def state_of(status: DatabaseMigrationStatus, *, backup_enabled: bool) -> ResourceState:
    """The state a status shows (pure): its phase, the summary reason (Stalled's when it is True, else
    Reconciling's, else Ready's), every condition with its transition time, and its newest backup."""
    by_type = {cond.type: cond for cond in status.conditions}
    reason = ""
    for summary in (c.STALLED, c.RECONCILING, c.READY):
        cond = by_type.get(summary)
        if cond is not None and (cond.status == "True" or summary == c.READY):
            reason = cond.reason
            break
    backup = status.backup
    return ResourceState(
        phase=str(status.phase or ""), reason=reason,
        conditions=tuple(ConditionSample(cond.type, cond.status, cond.reason, _seconds(cond.last_transition_time))
                         for cond in status.conditions),
        backup_enabled=backup_enabled,
        last_backup=_seconds(backup.completed_at) if backup is not None and backup.completed_at else None)


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
        self.notifications_total = Counter(f"{PREFIX}_notifications_total", "Attempts to deliver a notification "
                                           "to a webhook, by result (delivered, failed: retried, expired: given up).",
                                           ["namespace", "name", "webhook", "type", "result"], registry=registry)
        # notify/ (issue 26): what the dashboard's notification panels read besides notifications_total
        self.notifications_retrying_gauge = Gauge(
            f"{PREFIX}_notifications_retrying", "Deliveries of a notification that failed and wait for their next "
            "attempt (status.notifications: Pending after a failed attempt).", ["namespace", "name", "webhook", "type"],
            registry=registry)
        self.leading_now = True  # what the `leading` gauge says, for the notifier (a paused replica sends nothing)
        self.build_info = Gauge(f"{PREFIX}_build_info", "The operator's version (value 1).", ["version"],
                                registry=registry)
        self.build_info.labels(version=__version__).set(1)
        # What the alert rules read: series that keep one label set per resource (or per condition type) replace
        # the previous one (_exclusive), as current_revision_info does.
        self._current: dict[tuple[str, tuple[str, ...]], tuple[str, ...]] = {}
        self.phase_info = Gauge(f"{PREFIX}_phase_info", "The resource's phase and summary reason (value 1).",
                                ["namespace", "name", "phase", "reason"], registry=registry)
        self.condition_since = Gauge(f"{PREFIX}_condition_transition_timestamp_seconds",
                                     "When each condition last changed status (its lastTransitionTime, Unix seconds).",
                                     ["namespace", "name", "condition", "status", "reason"], registry=registry)
        self.backup_enabled_gauge = Gauge(f"{PREFIX}_backup_enabled", "1 when the resource takes backups "
                                          "(spec.backup.enabled).", ["namespace", "name"], registry=registry)
        self.backup_last_success = Gauge(f"{PREFIX}_backup_last_success_timestamp_seconds",
                                         "When the newest backup completed (Unix seconds).", ["namespace", "name"],
                                         registry=registry)
        self.lock_timeouts_total = Counter(f"{PREFIX}_lock_timeouts", "Migration and downgrade Jobs that waited "
                                           "longer than lockTimeout for a lock (reason LockTimeout).",
                                           ["namespace", "name"], registry=registry)
        self.queued_since = Gauge(f"{PREFIX}_queued_since_timestamp_seconds", "Since when the resource's next Job "
                                  "waits for a slot under --max-running-jobs (Unix seconds).", ["namespace", "name"],
                                  registry=registry)
        self.running_jobs = Gauge(f"{PREFIX}_running_jobs", "Jobs of the operator running now.", registry=registry)
        self.max_running_jobs = Gauge(f"{PREFIX}_max_running_jobs", "The cap on running Jobs (--max-running-jobs; "
                                      "0: none).", registry=registry)
        self.queued_runs = Gauge(f"{PREFIX}_queued_runs", "Runs waiting for a Job slot.", registry=registry)
        self.leading = Gauge(f"{PREFIX}_leading", "1 while this replica is the active one (Kopf peering), 0 while "
                             "it is paused in favour of another.", registry=registry)
        self.leading.set(1)
        self.last_run = Gauge(f"{PREFIX}_last_run_duration_seconds", "How long the last successful migration Job "
                              "ran, labelled with the revision it reached.", ["namespace", "name", "revision"],
                              registry=registry)

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

    def notification(self, namespace: str, name: str, webhook: str, type_: str, result: str) -> None:
        with self._lock:
            labels = (namespace, name, webhook, type_, result)
            self.notifications_total.labels(*labels).inc()
            self._note("notifications_total", labels)

    def notifications_retrying(self, namespace: str, name: str, counts: Mapping[tuple[str, str], int]) -> None:
        """The resource's deliveries waiting for a retry, per (webhook, type); a pair it had before and not in
        `counts` goes to 0 (the panel shows the retry ending)."""
        with self._lock:
            metric = "notifications_retrying_gauge"
            before = {(labels[2], labels[3]) for m, labels in self._seen.get((namespace, name), set()) if m == metric}
            for key in before | set(counts):
                labels = (namespace, name, *key)
                self.notifications_retrying_gauge.labels(*labels).set(max(0, int(counts.get(key, 0))))
                self._note(metric, labels)

    def set_leading(self, leading: bool) -> None:
        self.leading_now = leading
        self.leading.set(1 if leading else 0)

    def _exclusive(self, metric: str, key: tuple[str, ...], labels: tuple[str, ...], value: float) -> None:
        """Set the series `key + labels` of `metric`, removing the one this key had with other labels (under
        self._lock)."""
        old = self._current.get((metric, key))
        if old is not None and old != labels:
            self._remove(metric, key + old)
        getattr(self, metric).labels(*key, *labels).set(value)
        self._current[(metric, key)] = labels
        self._note(metric, key + labels)

    def resource_state(self, namespace: str, name: str, state: ResourceState) -> None:
        """The series the alert rules read, from one pass's status (see state_of)."""
        with self._lock:
            key = (namespace, name)
            self._exclusive("phase_info", key, (state.phase, state.reason), 1)
            present = set()
            for cond in state.conditions:
                present.add(cond.type)
                self._exclusive("condition_since", (namespace, name, cond.type), (cond.status, cond.reason),
                                cond.since)
            for (metric, ckey), labels in list(self._current.items()):
                if metric == "condition_since" and ckey[:2] == key and ckey[2] not in present:
                    self._remove(metric, ckey + labels)
                    del self._current[(metric, ckey)]
            self.backup_enabled_gauge.labels(namespace, name).set(1 if state.backup_enabled else 0)
            self._note("backup_enabled_gauge", key)
            if state.last_backup is not None:
                self.backup_last_success.labels(namespace, name).set(state.last_backup)
                self._note("backup_last_success", key)
            self.lock_timeouts_total.labels(namespace, name).inc(0)  # the series exists before its first increment
            self._note("lock_timeouts_total", key)

    def lock_timeout(self, namespace: str, name: str) -> None:
        with self._lock:
            self.lock_timeouts_total.labels(namespace, name).inc()
            self._note("lock_timeouts_total", (namespace, name))

    def queued(self, namespace: str, name: str, waiting: bool, now: float | None = None) -> None:
        """A resource's next Job waits for a slot (True: since the first time it was seen waiting) or not."""
        key = (namespace, name)
        with self._lock:
            if not waiting:
                if ("queued_since", key) in self._current:
                    del self._current[("queued_since", key)]
                    self._remove("queued_since", key)
                return
            if ("queued_since", key) not in self._current:
                self._exclusive("queued_since", key, (), time.time() if now is None else now)

    def job_slots(self, running: int, cap: int, queued: int) -> None:
        self.running_jobs.set(max(0, running))
        self.max_running_jobs.set(max(0, cap))
        self.queued_runs.set(max(0, queued))

    def last_run_duration(self, namespace: str, name: str, revision: str, seconds: float) -> None:
        with self._lock:
            self._exclusive("last_run", (namespace, name), (revision,), max(0.0, float(seconds)))

    def forget(self, namespace: str, name: str) -> None:
        """Remove every series of a DatabaseMigration (deleted, or no longer watched)."""
        with self._lock:
            for metric, labels in sorted(self._seen.pop((namespace, name), set())):
                self._remove(metric, labels)
            self._revision.pop((namespace, name), None)
            for current in [k for k in self._current if k[1][:2] == (namespace, name)]:
                del self._current[current]

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


def observe_status(namespace: str, name: str, status: DatabaseMigrationStatus, backup_enabled: bool) -> None:
    """The series the alert rules read, from one pass's status (state_of); never raises."""
    _safely(lambda: default().resource_state(namespace, name, state_of(status, backup_enabled=backup_enabled)))


def notification(namespace: str, name: str, webhook: str, type_: str, result: str) -> None:
    _safely(default().notification, namespace, name, webhook, type_, result)


def notifications_retrying(namespace: str, name: str, counts: Mapping[tuple[str, str], int]) -> None:
    _safely(default().notifications_retrying, namespace, name, counts)


def leading() -> bool:
    """Whether this replica is the active one (Kopf peering; always standalone), as the `leading` gauge says."""
    return default().leading_now


def lock_timeout(namespace: str, name: str) -> None:
    _safely(default().lock_timeout, namespace, name)


def queued(namespace: str, name: str, waiting: bool) -> None:
    _safely(default().queued, namespace, name, waiting)


def job_slots(running: int, cap: int, queued: int) -> None:
    _safely(default().job_slots, running, cap, queued)


def last_run_duration(namespace: str, name: str, revision: str, seconds: float) -> None:
    _safely(default().last_run_duration, namespace, name, revision, seconds)


def forget(namespace: str, name: str) -> None:
    _safely(default().forget, namespace, name)


PEERING_LOGGER = "kopf._core.engines.peering"


class LeadershipFromPeering(logging.Handler):
    """Kopf keeps to itself whether this replica is paused (a live peer of higher priority, or one of the same) and
    logs each change ("Pausing operations in favour of ...", "Resuming operations after the pause ..."): the
    `leading` gauge follows those records. tests/unit/test_metrics.py drives Kopf's own peering code, so a Kopf that
    words them differently fails there."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        super().__init__(logging.INFO)
        self.metrics = metrics

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is Kopf's, never ours to fail on
            return
        target = self.metrics or default()
        if message.startswith("Pausing"):
            target.set_leading(False)
        elif message.startswith("Resuming"):
            target.set_leading(True)


def follow_peering(metrics: Metrics | None = None, paused_at_start: bool = False) -> LeadershipFromPeering:
    """Keep the `leading` gauge in step with Kopf's peering (at start-up; returns the handler it installed). With a
    named peering (--peering) Kopf starts paused and logs "Resuming" once it finds no peer above it: the gauge starts
    at 0 then. With several watched namespaces (a peering in each) it follows the last change any of them logged."""
    handler = LeadershipFromPeering(metrics)
    (metrics or default()).set_leading(not paused_at_start)
    peering = logging.getLogger(PEERING_LOGGER)
    if peering.getEffectiveLevel() > logging.INFO:
        peering.setLevel(logging.INFO)
    peering.addHandler(handler)
    return handler


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
