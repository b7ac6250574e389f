"""`alembic-operator`: the operator (`run`), the commands its Jobs run (`job ...`), and tools (`check`, `crd`).

One parser tree, built here. A command's arguments are declared next to its code (`config`, `jobtools`, `crdgen`,
`check.cli`), whose imports are slow (Kopf, SQLAlchemy, pydantic): the tree adds them only for the command being
run, so `job install-runner` (every Job's init container) and `--help` stay fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

PROG = "alembic-operator"
Handler = Callable[[argparse.Namespace], int]

# name, one line of help: the top level's listing, in this order
COMMANDS: tuple[tuple[str, str], ...] = (
    ("run", "run the operator"),
    ("job", "the commands the operator's Jobs run (scan, backup, restore, rehearsal-restore, current, "
             "install-runner)"),
    ("check", "check an Alembic project in CI: integrity, models vs migrations, round trip, lint, drift "
              "(docs/check.md)"),
    ("crd", "print the CRD (alembic-operator crd | kubectl apply -f -); --write/--check every generated file"),
)
INSTALL_RUNNER_HELP = "write the runner (one zipapp) where the app's container runs it"


def _run(args: argparse.Namespace) -> int:
    from . import app
    from .config import OperatorConfig

    return app.run(OperatorConfig.from_args(args))


def install_runner(args: argparse.Namespace) -> int:
    """Write the runner (the package run by the app's image, as one zipapp) into the Job's shared volume."""
    from .runner import build

    target = build.build(args.dest)
    print(f"runner installed at {target}", file=sys.stderr)
    return 0


def _add_run(parser: argparse.ArgumentParser) -> None:
    from . import config

    config.add_arguments(parser)
    parser.set_defaults(handler=_run)


def _add_job(parser: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    sub = parser.add_subparsers(dest="job_command", required=True, metavar="COMMAND")
    if argv[:1] != ["install-runner"]:  # every Job's init container runs it: it does not import jobtools (0.5 s)
        from . import jobtools

        jobtools.add_commands(sub)
    runner = sub.add_parser("install-runner", help=INSTALL_RUNNER_HELP, description=INSTALL_RUNNER_HELP + ".")
    runner.add_argument("dest", metavar="DEST", help="the zipapp's path, e.g. /alembic-operator/runner.pyz")
    runner.set_defaults(handler=install_runner)


def _add_crd(parser: argparse.ArgumentParser) -> None:
    from . import crdgen

    crdgen.add_arguments(parser)
    parser.set_defaults(handler=crdgen.run)


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The tree; the arguments of the command `argv` names (argv[0]) are added, the others only listed."""
    parser = argparse.ArgumentParser(prog=PROG, description="The operator (run), the commands its Jobs run (job), "
                                     "and tools (check, crd).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in COMMANDS:
        command = sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
        if argv[:1] != [name]:
            continue
        if name == "run":
            _add_run(command)
        elif name == "job":
            _add_job(command, argv[1:])
        elif name == "crd":
            _add_crd(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["check"]:  # its own parser (declared in check.cli): usage errors are redacted (URLs)
        from .check.cli import main as check_main

        return check_main(argv[1:])
    args = build_parser(argv).parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
