"""`alembic-operator`: the operator (`run`), the commands its Jobs run (`job ...`), and tools (`crd`)."""

from __future__ import annotations

import argparse
import sys


def _run(args: argparse.Namespace) -> int:
    from . import app
    from .config import OperatorConfig

    return app.run(OperatorConfig.from_args(args))


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
    from . import config

    config.add_arguments(run)
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
