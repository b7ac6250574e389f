"""alembic-operator runner: runs Alembic inside the application's image, on behalf of the operator.

The operator writes the runner, this package packed into one zipapp (build.py), into a shared emptyDir and runs it
with the app's own Python, Alembic, SQLAlchemy, scripts and models:

    python /alembic-operator/runner.pyz [common options] <command> [command options]

It depends on the standard library, alembic (>= 1.9) and sqlalchemy (>= 1.4) only, and runs on Python 3.9+.

The database URL comes only from the environment variable ALEMBIC_OPERATOR_DATABASE_URL (the Job reads it from a
Secret). It is handed to the app's env.py as the `sqlalchemy.url` main option, the way `alembic -x`-less standard
env.py files expect it. The URL and its password never appear in anything this program writes: stdout and stderr
pass through a redacting filter, and every message in a result is sanitized.

Common options (accepted before or after the command):
    --config PATH        alembic.ini (or a pyproject.toml with [tool.alembic], alembic >= 1.16); default alembic.ini
    --name SECTION       the ini section, default "alembic"
    --result-file PATH   where the JSON result goes; default /dev/termination-log; "-" for stdout
    --export-url-env VAR also export the URL as environment variable VAR, for env.py files that read one
                         (repeatable)

Commands and their results. A result is compact JSON, always under 3500 bytes: long strings are cut, and a list
that had to be cut is followed by "<key>Truncated": true. Revisions are ids; null means base (no revision); a
database with several heads reads "a,b" (sorted) in single-revision fields and fully in the *Heads lists.

    current
        {"ok": true, "command": "current", "current": "abc" | null, "currentHeads": ["abc"],
         "versionTable": true, "tables": 3, "dialect": "postgresql", "known": true, "heads": ["def"]}
        known: the scripts contain the current revision(s); heads: the scripts' heads; tables: tables other than
        the version table in its schema (versionTable false and tables > 0: a database Alembic never managed).
    plan --target head|REV --out DIR
        Writes DIR/NNN-<rev>.sql, the offline SQL of each revision (`alembic upgrade <down>:<rev> --sql`) in
        upgrade order (NNN from 001), and DIR/plan.json: the result below plus "version": 1 and, per revision,
        {"revision", "downRevisions", "message", "hasDowngrade", "isMerge", "path", "file" (null if unrenderable),
         "renderable", "sha256" (of the file) or "error", "phase"}. hasDowngrade (best effort, null: cannot tell): its
        downgrade() does something, or its upgrade() does nothing either (a merge point). phase: the revision
        module's attribute `phase`, "expand" (the default) or "contract" (any other value: ScriptError).
        {"ok": true, "command": "plan", "current": "abc" | null, "currentHeads": [...], "versionTable": true,
         "tables": 3, "dialect": "postgresql", "targetRequested": "head", "heads": [...], "target": "<id>",
         "contract": ["<id>", ...] (contract revisions of the lineage and the plan, newest first),
         "revisions": ["...", ...], "revisionCount": 2, "unrenderable": [{"revision": ..., "message": ...}],
         "transactionPerMigration": false, "transactionalDDL": true, "planFile": "DIR/plan.json"}
        Nothing to do: "revisions": []. A revision that cannot be rendered offline (it reads data) is listed in
        "unrenderable" and has no .sql file; the plan still succeeds. Refusals carry what was known (current,
        heads, target): MultipleHeads, UnknownRevision, UnknownTargetRevision, DowngradeNotSupported,
        TargetNotReachable.
    upgrade --from REV|base --to REV [--lock-key N] [--lock-wait-seconds S] [--db-lock-timeout-ms N]
            [--db-statement-timeout-ms N]
        --lock-key and --lock-wait-seconds: the migration lock (one writer per database) and how long to wait for
        it; --db-*-ms: limits of the database session itself (milliseconds).
        Under a PostgreSQL session advisory lock (other dialects: none). Already at --to: nothing runs. Not at
        --from: RevisionMoved, nothing runs ("revision" = where the database is).
        --db-lock-timeout-ms and --db-statement-timeout-ms bound every statement of env.py's session (PostgreSQL's
        lock_timeout and statement_timeout): as libpq `options` in the URL handed to env.py (psycopg, psycopg2),
        checked on env.py's connection before the first revision and set there with SET when they do not hold
        (asyncpg, pg8000, an env.py that builds its own URL or changes them). While the session waits for a lock,
        a thread names the sessions it waits for in the log; a statement that gives up waiting (SQLSTATE 55P03)
        with nothing committed fails with reason LockTimeout (exit code 5) and "blockers": [{"pid", "user",
        "application", "client", "state", "transactionSeconds", "query" (its first 80 characters, literals
        replaced by ?), "relation"}]. A revision may opt out of the statement timeout for a long statement with
        op.execute("SET LOCAL statement_timeout = 0") (until its transaction ends).
        {"ok": true, "command": "upgrade", "from": "abc" | null, "to": "def", "durationSeconds": 1.2,
         "revision": "def", "applied": ["...", "def"], "alreadyAtTarget": false}
        On failure, reason MigrationFailed and the same fields: "revision" is read again after the failure
        (absent if it could not be read), "applied" lists the revisions committed between from and revision
        ([] when the transaction rolled everything back), "failedRevision" the one that was running, and
        "attempted" the revisions it started. Before the first revision and before each next one, the result file
        already holds reason Interrupted with "attempted" so far: a pod killed outright (SIGKILL, node lost) still
        reports which revisions it may have committed (any prefix of "attempted"), never more.
    downgrade --from REV --to REV|base [--lock-key N] [--lock-wait-seconds S] [--allow-empty-downgrades]
            [--db-lock-timeout-ms N] [--db-statement-timeout-ms N]
        Like upgrade, with "reverted" (newest first) instead of "applied" and reason DowngradeFailed. Refuses
        (IrreversibleRevision, nothing runs) when a revision to undo has an empty downgrade(), unless
        --allow-empty-downgrades.
    stamp --revision REV [--lock-key N] [--lock-wait-seconds S]
        {"ok": true, "command": "stamp", "to": "abc", "revision": "abc"}, only when the version table does not
        exist yet (adopting a database Alembic never managed); otherwise AlreadyVersioned ("revision" = current).
    rehearse --from REV --to REV --database alembic_rehearsal_... [upgrade's options]
        upgrade's result, on that scratch database of the URL's server (the rehearsal Job's URL is the scratch
        server's, never production's), plus {"database": ..., "rehearsalSeconds": 1.2, "revisions": [{"revision":
        "abc", "seconds": 0.4, "rows": 12, "locks": [{"on": "public.orders", "mode": "AccessExclusiveLock",
        "heldSeconds": 0.4}]}], "locksSampled": true}; the scratch database is dropped before it is written.

    drift
        Read-only: compares the live database with the scripts and with the app's models (env.py's target_metadata).
        {"ok": true, "command": "drift", "current": "abc" | null, "currentHeads": ["abc"], "heads": ["def"],
         "versionTable": true, "unknownRevision": false, "behindHead": true, "pending": ["def"], "pendingCount": 1,
         "modelsComparable": false, "drifted": false, "differences": [], "differenceCount": 0}
        pending: the revisions between the database and the heads, in upgrade order (behindHead: there are some).
        The models describe the schema at head, so they are compared only when the database is at the heads
        (modelsComparable true); behind head they are expected to differ, and that is pending work, not drift.
        differences: what an autogenerated migration would apply to the database to match the models (Alembic's
        compare_metadata, in env.py's context: its include_object, compare_type, ...; the version table is
        ignored; column types are compared on alembic < 1.12 too), one short line each:
        "add_column orders.note (TEXT)" (in the models, not in the database), "remove_table legacy" (in the
        database only), "modify_type customers.name VARCHAR(50) -> VARCHAR(80)" (database -> models),
        modify_nullable/modify_default/modify_comment, add_index/remove_index, add_constraint/remove_constraint,
        add_fk/remove_fk. A database at a revision the scripts do not contain has drifted too: unknownRevision
        true and the difference "the database is at X, unknown to the scripts".
        drifted: there is at least one difference (exit code 0 either way). At most 60 differences and 60 pending
        revisions are listed (<key>Truncated: true; the log has up to 500 differences); the *Count fields are exact.
        An env.py that does not pass target_metadata to context.configure(): NoTargetMetadata.
        Nothing is written: the comparison runs inside env.py's own context.run_migrations() (its connection and
        settings; dont_mutate: the version table is not created), on PostgreSQL in a READ ONLY transaction and
        session, and env.py is then unwound by an exception so that its transaction rolls back.

Every failure has "ok": false, "command", "reason" (CamelCase, stable) and "message" (what happened, what to do).
SIGTERM (the Job's activeDeadlineSeconds, a deleted pod) interrupts the running statement (psycopg 3; psycopg2
only once the statement ends): the transaction rolls back and the result is still written (MigrationFailed with
"interrupted" in the message).

Exit codes:
    0  success (including "already at target", "nothing to do" and a drift check that found drift)
    1  the migration/downgrade/stamp failed, was interrupted (SIGTERM: the Job's deadline) or something unexpected
       happened: the database may have changed; read "revision" (MigrationFailed, DowngradeFailed, StampFailed,
       Interrupted, InternalError)
    2  invalid arguments (InvalidArguments)
    3  refused by a check, nothing was changed (MultipleHeads, UnknownRevision, UnknownTargetRevision,
       TargetNotReachable, DowngradeNotSupported, RevisionMoved, AlreadyVersioned, IrreversibleRevision)
    4  configuration problem, nothing was changed (MissingDatabaseURL, InvalidDatabaseURL, ConfigNotFound,
       ScriptError, DatabaseError, NoTargetMetadata)
    5  transient problem, nothing was changed, a retry may succeed (DatabaseUnreachable, LockTimeout: the
       advisory lock, or a lock a revision waited for longer than --db-lock-timeout-ms)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

from . import reasons
from .commands import Runner, cmd_current, cmd_migrate, cmd_plan, cmd_stamp
from .drift import cmd_drift
from .errors import EXIT_CODES, EXIT_FAILED, EXIT_OK, REDACT, Failure, describe, log, log_exception
from .lock import DEFAULT_LOCK_KEY, LOCK_WAIT_SECONDS, lock_key
from .redact import RedactingStream
from .rehearse import cmd_rehearse
from .results import write_result


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise Failure(reasons.INVALID_ARGUMENTS, f"{self.prog}: {message}")


def summary(result: Mapping[str, Any]) -> str:
    command = result.get("command", "?")
    if not result.get("ok"):
        return f"{command} failed ({result.get('reason')}): {result.get('message')}"
    if command == "plan":
        unrenderable = len(result.get("unrenderable", []))
        extra = f", {unrenderable} cannot be rendered offline" if unrenderable else ""
        return (f"plan: {result.get('revisionCount', 0)} revision(s) from {result.get('current') or 'base'} "
                f"to {result.get('target') or 'base'}{extra}")
    if command == "rehearse":
        return (f"rehearse succeeded in {result.get('rehearsalSeconds')}s on a scratch copy: "
                f"{len(result.get('revisions') or [])} revision(s) measured")
    if command in ("upgrade", "downgrade"):
        if result.get("alreadyAtTarget"):
            return f"{command}: the database is already at {result.get('to') or 'base'}; nothing was run"
        return f"{command} succeeded: the database is at {result.get('revision') or 'base'}"
    if command == "current":
        return f"current: the database is at {result.get('current') or 'base'}"
    if command == "drift":
        at = f"drift: the database is at {result.get('current') or 'base'}"
        if result.get("unknownRevision"):
            return f"{at}, unknown to the scripts: drifted"
        if result.get("behindHead"):
            return f"{at}, {result.get('pendingCount')} revision(s) behind head; the models were not compared"
        if not result.get("drifted"):
            return f"{at} (head); the schema matches the models"
        return f"{at} (head); {result.get('differenceCount')} difference(s) from the models: drifted"
    return f"{command} succeeded"


COMMANDS: dict[str, Callable[[Runner], Mapping[str, Any]]] = {
    "current": cmd_current,
    "plan": cmd_plan,
    "upgrade": lambda runner: cmd_migrate(runner, "upgrade"),
    "downgrade": lambda runner: cmd_migrate(runner, "downgrade"),
    "stamp": cmd_stamp,
    "drift": cmd_drift,
    "rehearse": lambda runner: cmd_rehearse(runner, lambda r: cmd_migrate(r, "upgrade")),
}


# --- command line ----------------------------------------------------------------------------------------------------


def build_parser() -> ArgumentParser:
    def common(parser: argparse.ArgumentParser, suppress: bool) -> None:
        def default(value: Any) -> Any:
            return argparse.SUPPRESS if suppress else value

        parser.add_argument("--config", default=default("alembic.ini"), help="alembic.ini (default: alembic.ini)")
        parser.add_argument("--name", default=default("alembic"), help="ini section (default: alembic)")
        parser.add_argument("--result-file", default=default("/dev/termination-log"), help="JSON result; - = stdout")
        parser.add_argument("--export-url-env", action="append", default=default([]), metavar="VAR",
                            help="also export the database URL as this environment variable")

    def locking(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--lock-key", type=lock_key, default=DEFAULT_LOCK_KEY, help="advisory lock key (64 bits)")
        parser.add_argument("--lock-wait-seconds", type=float, default=LOCK_WAIT_SECONDS, metavar="S",
                            help="how long to wait for that lock, the migration lock (default %(default)s)")

    def limits(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--db-lock-timeout-ms", type=milliseconds, metavar="N",
                            help="the migration session's lock timeout (0: none; default: the session's)")
        parser.add_argument("--db-statement-timeout-ms", type=milliseconds, metavar="N",
                            help="the migration session's statement timeout (0: none; default: the session's)")

    parser = ArgumentParser(prog="runner.pyz", description="Run Alembic for alembic-operator.")
    common(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="command", parser_class=ArgumentParser)
    sub.required = True

    p = sub.add_parser("current", help="the database's revision")
    common(p, suppress=True)

    p = sub.add_parser("plan", help="the revisions an upgrade would run, with their offline SQL")
    common(p, suppress=True)
    p.add_argument("--target", required=True, help="head or a revision id")
    p.add_argument("--out", required=True, help="directory for plan.json and the NNN-<rev>.sql files")

    def migration(name: str, summary: str, start: str, target: str) -> argparse.ArgumentParser:
        """upgrade, downgrade, rehearse: from one revision to another, under the lock and the session's limits."""
        p = sub.add_parser(name, help=summary)
        common(p, suppress=True)
        p.add_argument("--from", required=True, help=start)
        p.add_argument("--to", required=True, help=target)
        locking(p)
        limits(p)
        return p

    migration("upgrade", "upgrade from a planned revision to the target",
              "the revision the plan started from (base for an empty database)", "the target revision")
    migration("downgrade", "downgrade from a revision to an earlier one", "the revision the database should be at",
              "the revision to go back to (or base)").add_argument(
        "--allow-empty-downgrades", action="store_true", help="also run revisions whose downgrade() is empty")
    migration("rehearse", "upgrade a scratch copy of the database, measured, then drop it",
              "the revision the plan starts from (base for an empty database)", "the target revision").add_argument(
        "--database", required=True, help="the scratch database on the URL's server (alembic_rehearsal_...)")

    p = sub.add_parser("stamp", help="stamp a database that has no version table yet")
    common(p, suppress=True)
    p.add_argument("--revision", required=True)
    locking(p)

    p = sub.add_parser("drift", help="compare the database with the scripts and the models (read-only)")
    common(p, suppress=True)
    return parser


def milliseconds(value: str) -> int:
    """--db-lock-timeout-ms, --db-statement-timeout-ms: a whole number of milliseconds, 0 or more."""
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"not a whole number of milliseconds: {value!r}")
    return int(value)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"terminated by signal {signal.Signals(signum).name}")


def _result_file_from(argv: Sequence[str]) -> str:
    path = "/dev/termination-log"
    for index, arg in enumerate(argv):
        if arg == "--result-file" and index + 1 < len(argv):
            path = argv[index + 1]
        elif arg.startswith("--result-file="):
            path = arg.split("=", 1)[1]
    return path


def main(argv: Sequence[str] | None = None) -> int:
    if not isinstance(sys.stdout, RedactingStream):
        sys.stdout = RedactingStream(sys.stdout, REDACT)
    if not isinstance(sys.stderr, RedactingStream):
        sys.stderr = RedactingStream(sys.stderr, REDACT)
    argv = list(sys.argv[1:] if argv is None else argv)
    # Like `python -m alembic`: the working directory (the app's) is importable, for env.py's `import app.models`.
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())

    # Kubernetes stops a pod with SIGTERM (activeDeadlineSeconds, deletion): turn it into KeyboardInterrupt, which
    # the drivers answer by cancelling the running statement, so the transaction rolls back and a result is written
    # within the grace period.
    with contextlib.suppress(ValueError):  # not in the main thread
        signal.signal(signal.SIGTERM, _interrupt)

    command = "?"
    result: dict[str, object]  # the command's result (runner/results.py), or the failure it ended with
    result_file = _result_file_from(argv)
    try:
        args = build_parser().parse_args(argv)
        command, result_file = args.command, args.result_file
        log(f"{command}: alembic config {args.config}, working directory {os.getcwd()}")
        result = dict(COMMANDS[command](Runner(args)))
    except Failure as failure:
        result = {"ok": False, "command": command, **failure.details, "reason": failure.reason,
                  "message": REDACT(failure.message)}
    except KeyboardInterrupt as exc:
        result = {"ok": False, "command": command, "reason": reasons.INTERRUPTED,
                  "message": f"{command} was interrupted ({str(exc) or 'SIGINT'})"}
    except Exception as exc:
        log_exception("unexpected error", exc)
        result = {"ok": False, "command": command, "reason": reasons.INTERNAL_ERROR, "message": describe(exc)}
    result["command"] = command
    result = REDACT.values(result)
    write_result(result_file, result, REDACT, log=log)
    log(summary(result))
    if result.get("ok"):
        return EXIT_OK
    return EXIT_CODES.get(str(result.get("reason")), EXIT_FAILED)


if __name__ == "__main__":
    sys.exit(main())
