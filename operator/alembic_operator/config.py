"""The operator's configuration: one object, built once at start-up from the command line and the environment.

    alembic-operator run [--namespace NS ...] [--liveness URL] [--peering NAME | --standalone] [--priority N]
                         [--verbose] [webhook flags: see webhook.add_arguments]

Environment (the Helm chart sets these):

    ALEMBIC_OPERATOR_IMAGE            the image of the Jobs' operator containers (default: this version's release)
    ALEMBIC_OPERATOR_METRICS_PORT     serve /metrics on this port (unset, empty or 0: no metrics server)
    ALEMBIC_OPERATOR_METRICS_ADDR     ... on this address (default 0.0.0.0)
    ALEMBIC_OPERATOR_WEBHOOK_*        the webhook flags' defaults (:meth:`webhook.WebhookOptions.from_env`)
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from . import __version__, metrics, webhook
from . import constants as c
from .api import NOTIFICATION_TYPES, NotificationType
from .notify.send import Webhook

IMAGE_ENV = "ALEMBIC_OPERATOR_IMAGE"
DEFAULT_IMAGE = f"ghcr.io/alembic-operator/alembic-operator:{__version__}"


@dataclass(frozen=True)
class OperatorConfig:
    """Everything the operator is told; passed to what needs it (no module-level settings)."""

    namespaces: tuple[str, ...] = ()  # watched namespaces; empty: the whole cluster
    operator_image: str = DEFAULT_IMAGE  # the image of the Jobs' operator containers
    webhook: webhook.WebhookOptions = field(default_factory=webhook.WebhookOptions)
    metrics: metrics.MetricsOptions | None = None  # None: no metrics server
    liveness: str = "http://0.0.0.0:8080/healthz"
    standalone: bool = False
    peering: str | None = None
    priority: int = 0
    peering_lifetime: int | None = None  # seconds; None: Kopf's (60)
    run_records: int = 100  # audit records (ConfigMaps) kept per DatabaseMigration
    verbose: bool = False
    max_running_jobs: int = 0  # Jobs running at once operator-wide; 0: no cap
    job_retry_backoff: int = c.JOB_RETRY_BACKOFF
    reconciler: bool = True  # False: only the pod gating (the webhook and the release of held pods)
    rehearse_by_default: bool = False  # spec.rehearsal.enabled when a resource leaves it unset (the chart's)
    notify: Webhook | None = None  # the operator-wide notification webhook (--notify-secret)
    notify_resources: bool = True  # spec.notifications' webhooks are used (--no-resource-notifications: not)

    @property
    def watched(self) -> list[str] | None:
        """The watched namespaces, None for the whole cluster."""
        return list(self.namespaces) or None

    @classmethod
    def from_args(cls, args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> OperatorConfig:
        env = os.environ if environ is None else environ
        namespaces = tuple(ns for item in args.namespace for ns in item.split(",") if ns)
        return cls(
            namespaces=namespaces,
            operator_image=env.get(IMAGE_ENV) or DEFAULT_IMAGE,
            webhook=webhook.options_from_args(args, namespaces),
            metrics=metrics.options_from_env(env),
            liveness=args.liveness,
            standalone=args.standalone,
            peering=args.peering,
            priority=args.priority,
            peering_lifetime=args.peering_lifetime,
            run_records=args.run_records,
            max_running_jobs=args.max_running_jobs,
            job_retry_backoff=args.job_retry_backoff,
            verbose=args.verbose,
            reconciler=args.reconciler,
            rehearse_by_default=bool(getattr(args, "rehearse_by_default", False)),
            notify=_notify_webhook(args),
            notify_resources=args.notify_resources,
        )


def add_arguments(run: argparse.ArgumentParser) -> None:
    """The flags of ``alembic-operator run``."""
    run.add_argument("-n", "--namespace", action="append", default=[],
                     help="watch only these namespaces (repeat or comma-separate); default: all namespaces")
    run.add_argument("--liveness", default=OperatorConfig.liveness,
                     help="liveness endpoint URL (default %(default)s)")
    run.add_argument("--peering", default=None, help="KopfPeering name: with several replicas, only one is active")
    run.add_argument("--standalone", action="store_true", help="no peering (a single replica)")
    run.add_argument("--priority", type=int, default=0, help="peering priority (give replicas distinct values)")
    run.add_argument("--peering-lifetime", type=_peering_lifetime, default=None, metavar="SECONDS",
                     help="how long a replica counts as alive after its last keep-alive (Kopf's default: 60): a "
                          "standby takes over this long after the active replica dies without leaving the peering; "
                          "keep-alives are written 5-10 s before it ends")
    run.add_argument("--run-records", type=_positive, default=OperatorConfig.run_records, metavar="N",
                     help="audit records (one ConfigMap per finished run, owned by its DatabaseMigration) kept per "
                          "resource (default %(default)s); each is also logged once as JSON")
    run.add_argument("--max-running-jobs", type=_not_negative, default=OperatorConfig.max_running_jobs, metavar="N",
                     help="run at most N Jobs at once operator-wide (plans, backups, migrations, drift checks; a "
                          "rollback never waits); the others wait, their resource Reconciling with reason JobQueued, "
                          "and start in the order they queued (default %(default)s: no cap)")
    run.add_argument("--job-retry-backoff", type=_positive, default=OperatorConfig.job_retry_backoff,
                     metavar="SECONDS",
                     help="wait this long before retrying a Job that failed for a passing reason (a lock timeout, a "
                          "lost connection, an interrupted upload), twice as long before each later attempt, at most "
                          "12 times as long (default %(default)s: 5, 10, 20, 40, 60 s)")
    run.add_argument("--rehearse-by-default", action="store_true",
                     help="rehearse every migration whose spec.rehearsal.enabled is unset (the chart's "
                          "rehearsal.enabled): it still needs a scratch server in its spec.rehearsal")
    run.add_argument("-v", "--verbose", action="store_true")
    run.add_argument("--no-reconciler", dest="reconciler", action="store_false",
                     help="only the pod gating: serve the webhook and release held pods, run no migration "
                          "(tests, benchmarks)")
    webhook.add_arguments(run)
    notify = run.add_argument_group("notifications", "an operator-wide webhook told of plans awaiting approval, runs "
                                    "that succeeded or failed, drift (README, Notifications)")
    notify.add_argument("--notify-secret", type=_namespaced, default=None, metavar="NAMESPACE/NAME",
                        help="the Secret holding the webhook's URL (and token); unset: no operator-wide webhook")
    notify.add_argument("--notify-url-key", default="url", metavar="KEY", help="its key of the URL (default url)")
    notify.add_argument("--notify-token-key", default=None, metavar="KEY",
                        help="its key of a token sent as 'Authorization: Bearer' (default: none)")
    notify.add_argument("--notify-format", choices=["Slack", "CloudEvents"], default="CloudEvents",
                        help="Slack-compatible JSON or CloudEvents 1.0, structured (default %(default)s)")
    notify.add_argument("--notify-events", type=_notification_types, default=NOTIFICATION_TYPES,
                        metavar="TYPE,...", help="which notifications (default: " + ",".join(NOTIFICATION_TYPES) + ")")
    notify.add_argument("--no-resource-notifications", dest="notify_resources", action="store_false",
                        help="ignore spec.notifications: the operator then POSTs only to the operator-wide webhook "
                             "(a resource's webhook is a URL its namespace's users choose, called from the operator)")


def _notify_webhook(args: argparse.Namespace) -> Webhook | None:
    if args.notify_secret is None:
        return None
    namespace, name = args.notify_secret
    return Webhook(secret=name, url_key=args.notify_url_key, format=args.notify_format, events=args.notify_events,
                   namespace=namespace, token_secret=name if args.notify_token_key else None,
                   token_key=args.notify_token_key)


def _namespaced(text: str) -> tuple[str, str]:
    namespace, _, name = text.partition("/")
    if not namespace or not name or "/" in name:
        raise argparse.ArgumentTypeError(f"expected NAMESPACE/NAME, not {text!r}")
    return namespace, name


def _notification_types(text: str) -> tuple[NotificationType, ...]:
    chosen = [word.strip() for word in text.split(",") if word.strip()]
    unknown = [word for word in chosen if word not in NOTIFICATION_TYPES]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"expected some of {','.join(NOTIFICATION_TYPES)}, not {text!r}")
    return tuple(t for t in NOTIFICATION_TYPES if t in chosen)


def _peering_lifetime(text: str) -> int:
    value = int(text)
    if value < 11:  # Kopf writes a keep-alive 5-10 s before the lifetime ends: less would let a live leader expire
        raise argparse.ArgumentTypeError(f"must be at least 11 seconds, not {value}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _not_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (no cap) or more, not {value}")
    return value
