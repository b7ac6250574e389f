"""`alembic-operator`: the operator (`run`), the commands its Jobs run (`job ...`), and tools (`crd`)."""

from __future__ import annotations

import argparse
import logging
import sys


def _run(args: argparse.Namespace) -> int:
    import kopf

    from . import handlers, release, webhook  # noqa: F401  (release frees held pods, webhook holds new ones)

    namespaces = [ns for item in args.namespace for ns in item.split(",") if ns]
    handlers.runtime.namespaces = namespaces or None
    webhook.options = webhook.options_from_args(args, namespaces)
    kopf.configure(verbose=args.verbose)
    # Alembic announces every connection it configures; the operator connects often to read the revision.
    logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)
    # The watch handlers that only wake a resource's loop would log "succeeded" for every Job and status event.
    logging.getLogger("kopf.objects").addFilter(_QuietWakeups())
    kopf.run(
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=args.liveness,
        standalone=args.standalone,
        peering_name=args.peering,
        priority=args.priority,
    )
    return 0


class _QuietWakeups(logging.Filter):
    WAKEUPS = ("Handler 'job_changed' succeeded.", "Handler 'migration_changed' succeeded.")

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() not in self.WAKEUPS


def install_runner(dest: str) -> int:
    """Write the runner (the package run by the app's image, as one zipapp) into the Job's shared volume."""
    from .runner import build

    target = build.build(dest)
    print(f"runner installed at {target}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["job"]:
        if argv[1:2] == ["install-runner"]:
            from .jobs import RUNNER

            return install_runner(argv[2] if len(argv) > 2 else RUNNER)
        from . import jobtools

        return jobtools.main(argv[1:])
    if argv[:1] == ["check"]:
        from .check.cli import main as check_main

        return check_main(argv[1:])
    if argv[:1] == ["crd"]:
        from . import crdgen

        return crdgen.main(argv[1:])

    parser = argparse.ArgumentParser(prog="alembic-operator", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the operator")
    run.add_argument("-n", "--namespace", action="append", default=[],
                     help="watch only these namespaces (repeat or comma-separate); default: all namespaces")
    run.add_argument("--liveness", default="http://0.0.0.0:8080/healthz",
                     help="liveness endpoint URL (default %(default)s)")
    run.add_argument("--peering", default=None, help="KopfPeering name: with several replicas, only one is active")
    run.add_argument("--standalone", action="store_true", help="no peering (a single replica)")
    run.add_argument("--priority", type=int, default=0, help="peering priority (give replicas distinct values)")
    run.add_argument("-v", "--verbose", action="store_true")
    from . import webhook

    webhook.add_arguments(run)
    sub.add_parser("job", help="commands run inside the operator's Jobs (scan, backup, restore, install-runner)")
    sub.add_parser("check", help="check an Alembic project in CI: integrity, models vs migrations, round trip, "
                   "lint, drift (docs/check.md)")
    sub.add_parser("crd", help="generate the CRD and its reference (--check to compare with the files)")
    args = parser.parse_args(argv)
    if args.command == "run":
        return _run(args)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
