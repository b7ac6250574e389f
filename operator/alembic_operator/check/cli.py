"""`alembic-operator check`: catch schema disasters in CI, before they reach the cluster.

    alembic-operator check [-c alembic.ini] [--scratch-url URL | --scratch sqlite] [--database-url URL]
                           [--steps N] [--allow RULE] [--skip CHECK] [--format human|json] [--junit FILE]
                           [--previous REF]

Checks: integrity (heads, duplicate ids, missing down_revisions, unreachable revisions), lint (destructive and
locking SQL in pending revisions), upgrade (base -> head on a scratch database), models (target_metadata vs the
schema the migrations build), roundtrip (head -> base or N steps back -> head), live (the live database's
revision and schema). Exit codes: 0 no failing finding, 1 findings at the failing severity, 2 usage or
configuration error (nothing was checked, or not everything could be). Database passwords are never printed.
See docs/check.md.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL, make_url

from ..runner.redact import RedactingStream, Redactor  # the Jobs' redactor: one set of rules for every secret printed
from . import report as output
from .model import EXIT_USAGE, CheckError, known_rule
from .run import Checker, Options

SCRATCH_URL_ENV = "ALEMBIC_OPERATOR_SCRATCH_URL"
DATABASE_URL_ENV = "DATABASE_URL"
SKIPPABLE = ("lint", "models", "roundtrip", "live")


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would exit: raise instead, main returns 2
        raise _UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="alembic-operator check", description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", default="alembic.ini", help="alembic.ini or pyproject.toml (default %(default)s)")
    p.add_argument("-n", "--name", default="alembic", help="the ini section (default %(default)s)")
    p.add_argument("--scratch-url", metavar="URL", help="a PostgreSQL, MySQL or MariaDB server (any database on it, "
                   "e.g. .../postgres) "
                   f"where a temporary database is created and dropped; env {SCRATCH_URL_ENV}")
    p.add_argument("--scratch", choices=("sqlite", "none"), help="sqlite: a temporary SQLite database instead; none: "
                   "no scratch checks")
    p.add_argument("--database-url", metavar="URL", help=f"the live database (read only); env {DATABASE_URL_ENV}")
    p.add_argument("--steps", type=int, metavar="N", help="round trip only the newest N revisions (default: to base)")
    p.add_argument("--allow", action="append", default=[], metavar="RULE", help="do not fail on RULE (repeatable, "
                   "comma-separated); one revision: `# alembic-operator: allow RULE` in its file")
    p.add_argument("--skip", action="append", default=[], metavar="CHECK",
                   help=f"skip checks (repeatable, comma-separated): {', '.join(SKIPPABLE)}")
    p.add_argument("--format", choices=("human", "json"), default="human", help="stdout format (default human)")
    p.add_argument("--junit", metavar="FILE", help="also write a JUnit XML report")
    p.add_argument("--fail-on", choices=("error", "warning"), default="error",
                   help="the lowest severity that fails the check (default error)")
    p.add_argument("--export-url-env", action="append", default=[], metavar="VAR",
                   help="also hand the URL to env.py as environment variable VAR (for env.py files or models that "
                        "read one; each database is then checked in a fresh process with VAR set before the app is "
                        "imported)")
    p.add_argument("--previous", metavar="REF", help="the previous release, still serving during the rollout: a git "
                   "ref of the scripts' repository, or the import path of its models (package.module[:attr]); "
                   "reports each new revision not marked phase = \"contract\" that drops or renames what it uses")
    p.add_argument("-v", "--verbose", action="store_true", help="keep env.py's and Alembic's log output")
    return p


def _split(values: Sequence[str]) -> frozenset[str]:
    return frozenset(v.strip() for item in values for v in item.split(",") if v.strip())


def _url(raw: str | None, what: str) -> URL | None:
    if not raw:
        return None
    try:
        return make_url(raw)
    except Exception:
        raise _UsageError(f"{what} is not a valid SQLAlchemy URL") from None


def options(args: argparse.Namespace, environ: dict[str, str]) -> Options:
    allow, skip = _split(args.allow), _split(args.skip)
    if unknown := sorted(r for r in allow if not known_rule(r)):
        raise _UsageError(f"--allow: unknown rule(s) {', '.join(unknown)} (see docs/check.md)")
    if unknown := sorted(skip - set(SKIPPABLE)):
        raise _UsageError(f"--skip: unknown check(s) {', '.join(unknown)} (choose from {', '.join(SKIPPABLE)})")
    if args.steps is not None and args.steps < 1:
        raise _UsageError("--steps must be at least 1")
    scratch_url = _url(args.scratch_url or (None if args.scratch else environ.get(SCRATCH_URL_ENV)), "--scratch-url")
    if args.scratch_url and args.scratch:
        raise _UsageError("give --scratch-url or --scratch, not both")
    scratch = "server" if scratch_url else (args.scratch if args.scratch == "sqlite" else None)
    return Options(config=args.config, section=args.name, scratch=scratch, scratch_url=scratch_url,
                   database_url=_url(args.database_url or environ.get(DATABASE_URL_ENV), "the database URL"),
                   steps=args.steps, allow=allow, skip=skip, export_env=tuple(args.export_url_env),
                   fail_on=args.fail_on, previous=args.previous)


def redactor(opts: Options | None, argv: Sequence[str], environ: dict[str, str]) -> Redactor:
    redact = Redactor(parameters=False)  # as the runner: rendered SQL may say password = ...
    urls = [opts.scratch_url, opts.database_url] if opts else []
    for url in urls:
        if url is not None:
            redact.add(url.password and str(url.password))
            redact.add(url.render_as_string(hide_password=False))
    for raw in (*argv, environ.get(SCRATCH_URL_ENV), environ.get(DATABASE_URL_ENV)):
        if raw and "://" in raw:
            with contextlib.suppress(Exception):
                password = make_url(raw).password
                redact.add(password and str(password))
    return redact


@contextlib.contextmanager
def _guarded_output(redact: Redactor, verbose: bool) -> Iterator[None]:
    """stdout/stderr redacted (env.py may print its URL), Alembic's INFO logging off unless verbose."""
    saved = sys.stdout, sys.stderr, logging.root.manager.disable
    sys.stdout = RedactingStream(sys.stdout, redact)
    sys.stderr = RedactingStream(sys.stderr, redact)
    if not verbose:
        logging.disable(logging.INFO)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved[0], saved[1]
        logging.disable(saved[2])


def _write(path: str, text: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text, encoding="utf-8")


def main(argv: list[str]) -> int:
    environ = dict(os.environ)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        opts = options(args, environ)
    except _UsageError as exc:
        print(f"{parser.prog}: error: {redactor(None, argv, environ)(str(exc))}", file=sys.stderr)
        print(parser.format_usage(), end="", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exc:  # --help
        return int(exc.code or 0) if isinstance(exc.code, int) or exc.code is None else EXIT_USAGE
    redact = redactor(opts, argv, environ)
    with _guarded_output(redact, args.verbose):
        return _check(opts, args, redact)


def _check(opts: Options, args: argparse.Namespace, redact: Redactor) -> int:
    try:
        report = Checker(opts).run()
    except CheckError as exc:
        return _error(str(exc), args, redact)
    except Exception as exc:  # a bug, or something env.py did that nobody expected
        if args.verbose:
            import traceback

            traceback.print_exc()
        return _error(f"unexpected error: {type(exc).__name__}: {exc} (run with -v for the traceback)", args, redact)
    text = output.as_json(report) if args.format == "json" else output.human(report)
    sys.stdout.write(redact(text))
    if args.junit:
        _write(args.junit, redact(output.junit(report)))
    return report.exit_code


def _error(message: str, args: argparse.Namespace, redact: Redactor) -> int:
    message = redact(message)
    print(f"alembic-operator check: error: {message}", file=sys.stderr)
    if args.format == "json":
        sys.stdout.write(output.error_json(message, EXIT_USAGE))
    if args.junit:
        _write(args.junit, output.junit_error(message))
    return EXIT_USAGE
