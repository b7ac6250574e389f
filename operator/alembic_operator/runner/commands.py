"""The runner's commands (current, plan, upgrade/downgrade, stamp) and `Runner`: the env.py driver bound to the
database URL the Job gives it, with the runner's failures (`Failure`) for everything that can go wrong."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, cast

from . import reasons
from .blockers import LockWatch, describe_blockers, poll_interval
from .driver import ConfigError, Driver, has_downgrade, heads_str, parse_revs, phase_of
from .engine import make_engine
from .errors import REDACT, Failure, classify, describe, error_code, first_line, log, log_exception, lost_connection
from .lock import DIALECTS, DialectSQL, migration_lock, session_sql
from .reasons import Reason
from .results import Blocker, CurrentResult, MigrateResult, PartialRevision, PlanResult, StampResult, write_result
from .statements import STATEMENTS_KEPT, StatementLog

URL_ENV = "ALEMBIC_OPERATOR_DATABASE_URL"


class DbState:
    def __init__(self) -> None:
        self.read = False
        self.heads: tuple[str, ...] = ()
        self.version_table: bool | None = None
        self.tables: int | None = None
        self.dialect: str | None = None
        self.transaction_per_migration: bool | None = None
        self.transactional_ddl: bool | None = None

    def facts(self) -> dict[str, Any]:
        facts: dict[str, Any] = {"current": heads_str(self.heads), "currentHeads": sorted(self.heads)}
        if self.version_table is not None:
            facts["versionTable"] = self.version_table
        if self.tables is not None:
            facts["tables"] = self.tables
        if self.dialect:
            facts["dialect"] = self.dialect
        return facts


class Runner(Driver):
    """The driver bound to the Job's database (ALEMBIC_OPERATOR_DATABASE_URL) and command-line options."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        # The migration session's limits (upgrade and downgrade), in milliseconds; None: the session's default.
        self.lock_timeout_ms: int | None = getattr(args, "db_lock_timeout_ms", None)
        self.statement_timeout_ms: int | None = getattr(args, "db_statement_timeout_ms", None)
        self.watch: LockWatch | None = None
        self.session: DialectSQL | None = None  # the limits of the migration's session, once it is known
        self.ran = StatementLog()  # what the running revision executed (a half-applied revision reports it)
        self.observer: Any = None  # rehearse: measures each revision (rehearse.Measures)
        self.server_url: Any = None  # rehearse: the scratch server's URL, before the scratch database was set
        super().__init__(args.config, args.name, self._read_url(), log=log)
        self.engine = self._make_engine()

    # configuration

    def _read_url(self) -> str:
        url = os.environ.get(URL_ENV, "").strip()
        if not url:
            raise Failure(reasons.MISSING_DATABASE_URL, f"the environment variable {URL_ENV} is empty or not set")
        REDACT.add(url)
        from sqlalchemy.engine import make_url

        try:
            parsed = make_url(url)
        except Exception as exc:  # ArgumentError, ValueError: the message may quote the URL
            raise Failure(reasons.INVALID_DATABASE_URL, f"the database URL cannot be parsed: {describe(exc)}") from None
        REDACT.add_password(str(parsed.password) if parsed.password else None, min_length=4)
        REDACT.add(parsed.render_as_string(hide_password=False))
        scratch = getattr(self.args, "database", None)
        if scratch:  # rehearse: the URL names a scratch server; the migration runs in this database on it
            self.server_url = parsed
            parsed = parsed.set(database=scratch)
            url = parsed.render_as_string(hide_password=False)
            REDACT.add(url)
        url = self._with_limits(parsed) or url
        for name in self.args.export_url_env or ():
            os.environ[name] = url
        return url

    def _with_limits(self, parsed: Any) -> str | None:
        """The URL with the session's timeouts as connection options, when its driver takes them; else None (they
        are set on the migration's connection when it starts: `limit_session`)."""
        if self.lock_timeout_ms is None and self.statement_timeout_ms is None:
            return None
        sql = DIALECTS.get(parsed.get_backend_name())
        limited = sql.url_options(parsed, self.lock_timeout_ms, self.statement_timeout_ms) if sql and sql.url_options \
            else None
        if limited is None:
            log(f"the driver {parsed.get_driver_name() or parsed.get_backend_name()} takes no session options in "
                "the URL: the timeouts are set on the migration's connection")
            return None
        text = str(limited.render_as_string(hide_password=False))
        REDACT.add(text)
        return text

    def _make_engine(self) -> Any:
        try:
            return make_engine(str(self.url))
        except Exception as exc:  # NoSuchModuleError (unknown dialect), ImportError (driver not installed)
            raise Failure(
                reasons.INVALID_DATABASE_URL,
                f"cannot use the database URL with this image (is the dialect/driver installed?): {describe(exc)}",
            ) from None

    def config(self, url: str | None = None, output_buffer: Any = None) -> Any:
        path = self.config_path
        if not os.path.isfile(path):
            raise Failure(
                reasons.CONFIG_NOT_FOUND,
                f"the Alembic config {path} does not exist (working directory {os.getcwd()}): "
                "set spec.migrations.config and spec.migrations.workingDir to where the image keeps alembic.ini",
            )
        try:
            return super().config(url, output_buffer)
        except ConfigError as exc:
            raise Failure(reasons.CONFIG_NOT_FOUND, str(exc)) from None

    def load_script(self) -> Any:
        try:
            script = super().load_script()
            script.get_heads()  # loads and checks every revision file
        except Failure:
            raise
        except Exception as exc:
            log_exception("loading the migration scripts", exc)
            raise Failure(reasons.SCRIPT_ERROR, f"cannot load the migration scripts: {describe(exc)}") from None
        return script

    def check_connection(self) -> None:
        try:
            with self.engine.connect():
                pass
        except Exception as exc:
            log_exception("connecting to the database", exc)
            raise Failure(reasons.DATABASE_UNREACHABLE, f"cannot connect to the database: {describe(exc)}") from None

    # reading the database through the app's env.py (its version table, schema and connection settings)

    def read_state(self, what: str = "reading the database's revision") -> DbState:
        state = DbState()

        def fn(rev: Any, context: Any) -> list[Any]:
            state.heads = tuple(context.get_current_heads())
            state.read = True
            state.dialect = context.dialect.name
            opts = getattr(context, "opts", {}) or {}
            state.transaction_per_migration = bool(opts.get("transaction_per_migration", False))
            impl = getattr(context, "impl", None)
            if impl is not None:
                state.transactional_ddl = bool(getattr(impl, "transactional_ddl", False))
            with contextlib.suppress(Exception):
                from sqlalchemy import inspect

                inspector = inspect(context.connection)
                table, schema = context.version_table, context.version_table_schema
                state.version_table = bool(inspector.has_table(table, schema=schema))
                state.tables = len([t for t in inspector.get_table_names(schema=schema) if t != table])
            return []

        try:
            self.run_env(fn, dont_mutate=True)
        except Failure:
            raise
        except Exception as exc:
            raise classify(exc, what) from None
        if not state.read:
            raise Failure(reasons.SCRIPT_ERROR, f"{what}: env.py did not call context.run_migrations() in online mode")
        return state

    def try_read_state(self) -> DbState | None:
        try:
            return self.read_state("reading the database's revision again")
        except Failure as failure:
            log(f"cannot read the database's revision: {failure.message}")
            return None

    # the advisory lock

    def lock(self) -> contextlib.AbstractContextManager[None]:
        return migration_lock(self.engine, self.args.lock_key, self.args.lock_wait_seconds)

    # running migrations through the app's env.py, announcing each revision

    def run(self, direction: str, destination: str, progress: list[str],
            on_step: Callable[[], None] | None = None) -> None:
        """`alembic upgrade|downgrade <destination>` (see Driver.migrate), its session limited (`limit_session`)
        and watched for locks it waits for."""

        def doing() -> str:
            return f"revision {progress[-1]}" if progress else direction

        def step() -> None:
            self.ran.start(progress[-1])
            if self.observer is not None:
                self.observer.started(progress[-1])
            if on_step is not None:
                on_step()

        def prepare(context: Any) -> None:
            self.ran.attach(context.connection, getattr(context, "version_table", None))
            self.limit_session(context, doing)
            if self.observer is not None:
                self.observer.attach(context.connection)

        try:
            if not self.migrate(direction, destination, progress, on_step=step, check=prepare):
                raise RuntimeError("env.py did not call context.run_migrations() in online mode")
        finally:
            if self.watch is not None:
                self.watch.stop()

    def limit_session(self, context: Any, doing: Callable[[], str]) -> None:
        """On env.py's own connection, before the first revision: make sure the lock and statement timeouts hold
        (whatever env.py did: set them if the URL's options did not), and watch who blocks it."""
        sql = self.session = session_sql(context.dialect)
        if sql is None or sql.session is None:
            if self.lock_timeout_ms is not None or self.statement_timeout_ms is not None:
                log(f"dialect {context.dialect.name}: no lock or statement timeout")
            return
        conn = context.connection
        lock_ms, statement_ms, pid = conn.exec_driver_sql(sql.session).first()
        for name, wanted, have, statement in (
            ("lock_timeout", None if self.lock_timeout_ms is None else sql.lock_value(self.lock_timeout_ms), lock_ms,
             sql.set_lock_timeout),
            ("statement_timeout", self.statement_timeout_ms, statement_ms, sql.set_statement_timeout),
        ):
            if wanted is not None and statement and str(have) != str(wanted):
                log(f"{name} of the migration's session is {have} ms, not {wanted}: setting it")
                conn.exec_driver_sql(statement.format(int(wanted)))
        lock_ms, statement_ms, pid = conn.exec_driver_sql(sql.session).first()
        log(f"the migration's session (backend pid {pid}): lock_timeout {lock_ms} ms, statement_timeout "
            f"{statement_ms} ms (0: none)")
        if sql.blockers:
            if self.watch is not None:  # env.py ran migrations once more (a multi-database env.py): watch this one
                self.watch.stop()
            self.watch = LockWatch(self.engine, sql.blockers, poll_interval(self.lock_timeout_ms), log, doing,
                                   sql.double_quoted_strings)
            self.watch.start(int(pid))

    def blockers(self) -> list[Blocker]:
        """Who blocked the migration's session in its last wait (as it timed out)."""
        if self.watch is None:
            return []
        return self.watch.recent(within=(self.lock_timeout_ms or 0) / 1000 + 5)


# --- commands --------------------------------------------------------------------------------------------------------


def cmd_current(runner: Runner) -> CurrentResult:
    runner.check_connection()
    state = runner.read_state()
    script = runner.script
    known = all(runner.lookup(head) is not None for head in state.heads)
    return cast(CurrentResult, {"ok": True, "command": "current", **state.facts(), "known": known,
                                "heads": sorted(script.get_heads())})


LINEAGE_MAX = 50


def cmd_plan(runner: Runner) -> PlanResult:
    args = runner.args
    runner.check_connection()
    script = runner.script
    state = runner.read_state()
    heads = sorted(script.get_heads())
    base: dict[str, Any] = {"command": "plan", **state.facts(), "targetRequested": args.target, "heads": heads}
    current = list(state.heads)

    def fail(reason: Reason, message: str, **details: Any) -> NoReturn:
        raise Failure(reason, message, **{**base, **details})

    requested = args.target.strip()
    if requested in ("head", "heads") and len(heads) != 1:
        fail(
            reasons.MULTIPLE_HEADS,
            f"the migration scripts have {len(heads)} heads ({', '.join(heads)}), so 'head' is ambiguous: "
            "run `alembic merge heads` in the app, release a new image, or set targetRevision to one revision",
        )
    unknown = [head for head in current if runner.lookup(head) is None]
    if unknown:
        fail(
            reasons.UNKNOWN_REVISION,
            f"the database is at {', '.join(unknown)}, which the image's migration scripts do not contain: deploy "
            "an image that contains it, or fix alembic_version with `alembic stamp` after checking the schema",
        )
    if requested == "base":
        target_ids: list[str] = []
    else:
        target_script = runner.lookup(heads[0] if requested in ("head", "heads") else requested)
        if target_script is None:
            fail(
                reasons.UNKNOWN_TARGET_REVISION,
                f"the target revision {requested} is not in the image's migration scripts (heads: "
                f"{', '.join(heads) or 'none'}): fix targetRevision or deploy an image that contains it",
            )
        target_ids = [target_script.revision]
    base["target"] = heads_str(target_ids)
    # The target's newest ancestors (target first): lets the operator tell whether a revision a pod needs is
    # already contained in the database's revision (the pod gate).
    base["lineage"] = list(reversed(runner.path(target_ids, [])))[:LINEAGE_MAX] if target_ids else []

    ancestors = runner.ancestors(current)
    if set(target_ids) != set(current) and (not target_ids or set(target_ids) <= ancestors):
        fail(
            reasons.DOWNGRADE_NOT_SUPPORTED,
            f"the target {heads_str(target_ids) or 'base'} is older than the database's revision "
            f"{heads_str(current)}: the operator only upgrades; set targetRevision to {heads_str(current)} or a "
            "later revision (a downgrade must be run by hand)",
        )
    try:
        revisions = runner.path(target_ids, current)
    except Exception as exc:
        fail(
            reasons.TARGET_NOT_REACHABLE,
            f"cannot upgrade from {heads_str(current) or 'base'} to {heads_str(target_ids)}: {describe(exc)}",
        )

    # The contract revisions (phase = "contract") among the plan's and the lineage's: the operator splits the plan
    # at the first one, and the pod gate derives a pod's upper bound from them.
    contract: list[str] = []
    for revision_id in dict.fromkeys([*base["lineage"], *reversed(revisions)]):
        sc = runner.lookup(revision_id)
        try:
            if sc is not None and phase_of(sc) == "contract":
                contract.append(revision_id)
        except ValueError as exc:
            fail(reasons.SCRIPT_ERROR, str(exc))
    base["contract"] = contract

    out = args.out
    os.makedirs(out, exist_ok=True)
    for name in os.listdir(out):
        if re.match(r"^\d{3,}-.*\.sql$", name) or name == "plan.json":
            os.remove(os.path.join(out, name))
    width = max(3, len(str(len(revisions))))
    details: list[dict[str, Any]] = []
    unrenderable: list[dict[str, str]] = []
    for number, revision_id in enumerate(revisions, 1):
        sc = runner.script.get_revision(revision_id)
        down = sc.down_revision
        entry: dict[str, Any] = {
            "revision": revision_id,
            "downRevisions": list(down) if isinstance(down, (tuple, list)) else ([down] if down else []),
            "message": first_line(sc.doc or "")[:300],
            "hasDowngrade": has_downgrade(getattr(sc, "path", None)),
            "isMerge": isinstance(down, (tuple, list)) and len(down) > 1,
            "path": os.path.relpath(sc.path) if getattr(sc, "path", None) else None,
            "phase": "contract" if revision_id in contract else "expand",
        }
        log(f"rendering {revision_id} ({number}/{len(revisions)}) offline")
        try:
            sql = REDACT(runner.render_offline(sc))
        except Exception as exc:
            message = describe(exc)
            log(f"revision {revision_id} cannot be rendered offline: {message}")
            entry.update(file=None, renderable=False, error=message)
            unrenderable.append({"revision": revision_id, "message": message[:300]})
        else:
            name = f"{number:0{width}d}-{revision_id}.sql"
            with open(os.path.join(out, name), "w", encoding="utf-8") as handle:
                handle.write(sql)
            entry.update(file=name, renderable=True, sha256=hashlib.sha256(sql.encode()).hexdigest())
        details.append(entry)

    transaction = {
        "transactionPerMigration": state.transaction_per_migration,
        "transactionalDDL": state.transactional_ddl,
    }
    plan = {
        "version": 1,
        **base,
        **transaction,
        "revisions": details,
        "unrenderable": unrenderable,
    }
    plan_file = os.path.join(out, "plan.json")
    with open(plan_file, "w", encoding="utf-8") as handle:
        handle.write(REDACT(json.dumps(plan, indent=2)))
    return cast(PlanResult, {
        "ok": True,
        **base,
        "revisions": revisions,
        "revisionCount": len(revisions),
        "unrenderable": unrenderable,
        **{k: v for k, v in transaction.items() if v is not None},
        "planFile": plan_file,
    })


def _check_known(runner: Runner, revisions: Sequence[str], reason: Reason, what: str) -> None:
    unknown = [revision for revision in revisions if runner.lookup(revision) is None]
    if unknown:
        raise Failure(reason, f"{what} {', '.join(unknown)} is not in the image's migration scripts")


def cmd_migrate(runner: Runner, direction: str) -> MigrateResult:
    args = runner.args
    upgrade = direction == "upgrade"
    command = direction
    source = parse_revs(getattr(args, "from"))
    destination = args.to.strip()
    _check_known(runner, source, reasons.UNKNOWN_REVISION, "the starting revision")
    source = tuple(sorted(runner.script.get_revision(revision).revision for revision in source))
    if destination != "base":
        _check_known(runner, [destination], reasons.UNKNOWN_TARGET_REVISION, "the target revision")
        destination = runner.script.get_revision(destination).revision
    target = parse_revs(destination)
    base: dict[str, Any] = {"command": command, "from": heads_str(source), "to": heads_str(target)}
    done_key = "applied" if upgrade else "reverted"
    runner.check_connection()

    if not upgrade and not args.allow_empty_downgrades:
        empty = []
        for revision in runner.path(source, target):
            if has_downgrade(getattr(runner.script.get_revision(revision), "path", None)) is False:
                empty.append(revision)
        if empty:
            raise Failure(
                reasons.IRREVERSIBLE_REVISION,
                f"revision(s) {', '.join(empty)} have an empty downgrade(): downgrading would move alembic_version "
                "without undoing the schema change; nothing was run (restore a backup instead)",
                **base,
            )

    with runner.lock():
        state = runner.read_state()
        current = state.heads
        if set(current) == set(target):
            log(f"the database is already at {heads_str(target) or 'base'}: nothing to run")
            return cast(MigrateResult, {"ok": True, **base, "revision": heads_str(current), done_key: [],
                                        "alreadyAtTarget": True})
        if set(current) != set(source):
            raise Failure(
                reasons.REVISION_MOVED,
                f"the database is at {heads_str(current) or 'base'}, not at {heads_str(source) or 'base'} as planned: "
                "someone else changed it; nothing was run (plan again)",
                **base,
                revision=heads_str(current),
            )
        log(f"{direction} from {heads_str(source) or 'base'} to {heads_str(target) or 'base'}")
        started = time.monotonic()
        progress: list[str] = []
        error: BaseException | None = None

        def interim() -> None:
            """The result a SIGKILLed pod leaves behind: which revisions may have been committed (any prefix)."""
            if args.result_file != "-":
                write_result(args.result_file, {
                    "ok": False, **base, "reason": reasons.INTERRUPTED, "attempted": list(progress),
                    "message": f"{direction} was killed before it could report (the pod or node went away); it had "
                               f"started {', '.join(progress) or 'no revision'}"}, REDACT, log=log)

        interim()
        try:
            runner.run(direction, destination, progress, interim)
        except (Exception, KeyboardInterrupt) as exc:  # KeyboardInterrupt: SIGTERM/SIGINT, see main()
            error = exc
            log_exception(f"{direction} failed", exc)
        after = runner.try_read_state()

    result: dict[str, Any] = {**base, "durationSeconds": round(time.monotonic() - started, 3)}
    if state.transactional_ddl is not None:
        result["transactionalDDL"] = state.transactional_ddl
    if after is not None:
        result["revision"] = heads_str(after.heads)
        with contextlib.suppress(Exception):
            if upgrade:
                result[done_key] = runner.path(after.heads, source)
            else:
                result[done_key] = list(reversed(runner.path(source, after.heads)))
    if done_key not in result:  # what it may have committed, since it cannot say what it did
        result["attempted"] = list(progress)
    if error is None and after is not None and set(after.heads) == set(target):
        return cast(MigrateResult, {"ok": True, **result, "alreadyAtTarget": False})

    reason = reasons.MIGRATION_FAILED if upgrade else reasons.DOWNGRADE_FAILED
    unchanged = after is not None and set(after.heads) == set(source)
    timeout = None
    partial: PartialRevision | None = None
    if error is not None:
        failed = progress[-1] if progress else None  # the revision that was running when it failed
        if failed:
            result["failedRevision"] = failed
        partial = half_applied(runner, state, failed, result.get(done_key))
        if partial is not None:
            result["partialRevision"] = partial
            unchanged = False
        where = f"revision {failed}" if failed else direction
        if isinstance(error, KeyboardInterrupt):
            message = f"{where} was interrupted ({str(error) or 'SIGINT'}: the Job's deadline, or the pod was deleted)"
        else:
            timeout = timed_out(runner, state.dialect, error, where, result)
            lost = not timeout and lost_connection(error)
            message = timeout or f"{where} {'lost its connection to the database' if lost else 'failed'}: " \
                f"{describe(error)}"
    else:
        message = f"{direction} finished but the database is at {result.get('revision') or 'base'}"
    if after is None:
        message += "; the database's revision could not be read afterwards"
    else:
        message += f"; the database is at {heads_str(after.heads) or 'base'}"
        if unchanged:
            message += " (nothing was committed)"
    if partial is not None:
        count = partial["statementCount"]
        message += (f"; revision {partial['revision']} is half-applied: {count} of its statement(s) committed before "
                    "it failed (DDL is not transactional on this database)")
    locked = bool(timeout) and "blockers" in result  # a lock timeout (a statement timeout is a real failure)
    if partial is None and (upgrade or unchanged) and (locked or (error is not None and lost_connection(error))):
        # The revision that stopped changed nothing (its transaction rolled back, or it had not committed a
        # statement yet) and those before it committed whole: the database is at a revision of the plan, and the
        # blockers may be gone (the server back) soon. A passing failure: the operator continues an upgrade from
        # there (a downgrade is retried from where it started: only when it changed nothing).
        reason = reasons.LOCK_TIMEOUT if locked else reasons.DATABASE_UNREACHABLE
    raise Failure(reason, message, **result)


def half_applied(runner: Runner, state: DbState, failed: str | None, done: Any) -> PartialRevision | None:
    """The failed revision, with the statements of it that committed, when DDL is not transactional and some did
    (a revision the version table already counts as done is not half-applied); None otherwise."""
    if state.transactional_ddl is not False or not failed or runner.ran.revision != failed:
        return None
    if isinstance(done, list) and failed in done:
        return None
    statements = runner.ran.committed()
    if not statements:
        return None
    log(f"revision {failed} committed {len(statements)} statement(s) before it failed: "
        + "; ".join(statements))
    return {"revision": failed, "statements": statements[:STATEMENTS_KEPT], "statementCount": len(statements)}


def timed_out(runner: Runner, dialect: str | None, error: BaseException, where: str,
              result: dict[str, Any]) -> str | None:
    """The message for a statement that gave up waiting for a lock (its blockers named, and added to `result`) or
    was cancelled by the statement timeout; None for any other error."""
    sql = runner.session or DIALECTS.get(dialect or "")
    code = error_code(error)
    if sql is None or code is None:
        return None
    if code in sql.lock_timeout_codes:
        blockers = runner.blockers()
        result["blockers"] = blockers
        limit = f" ({runner.lock_timeout_ms} ms, spec.migrations.lockTimeout)" if runner.lock_timeout_ms else ""
        on = f" on {blockers[0]['relation']}" if blockers and blockers[0].get("relation") else ""
        held = (f", held by {describe_blockers(blockers)}" if blockers
                else " (the sessions holding it could not be named: they ended first, or the migration's user may "
                "not see them; on MySQL/MariaDB it needs the PROCESS privilege)")
        message = f"{where} waited longer than the lock timeout{limit} for a lock{on}{held}: {describe(error)}"
        log(message)
        return message
    if code in sql.statement_timeout_codes and runner.statement_timeout_ms:
        return (f"{where} ran longer than the statement timeout ({runner.statement_timeout_ms} ms, "
                "spec.migrations.statementTimeout) and was cancelled (or a person cancelled it): "
                f"{describe(error)}. Raise spec.migrations.statementTimeout, or let this revision opt out with "
                f"{sql.statement_opt_out} before its long statement")
    return None


def cmd_stamp(runner: Runner) -> StampResult:
    args = runner.args
    requested = args.revision.strip()
    sc = runner.lookup(requested)
    if sc is None:
        raise Failure(reasons.UNKNOWN_TARGET_REVISION,
                      f"the revision {requested} is not in the image's migration scripts")
    revision = sc.revision
    base: dict[str, Any] = {"command": "stamp", "to": revision}
    runner.check_connection()
    with runner.lock():
        state = runner.read_state()
        if state.version_table is None:
            raise Failure(reasons.DATABASE_ERROR, "cannot tell whether the version table exists", **base)
        if state.version_table:
            raise Failure(
                reasons.ALREADY_VERSIONED,
                f"the database already has a version table (at {heads_str(state.heads) or 'base'}): stamping is "
                "only for adopting a database that Alembic never managed; nothing was changed",
                **base,
                revision=heads_str(state.heads),
            )
        from alembic import command

        log(f"stamping the database at {revision}")
        try:
            command.stamp(runner.config(), revision)
        except Exception as exc:
            log_exception("stamp failed", exc)
            after = runner.try_read_state()
            extra = {"revision": heads_str(after.heads)} if after else {}
            raise Failure(reasons.STAMP_FAILED, f"stamp failed: {describe(exc)}", **base, **extra) from None
        after = runner.try_read_state()
    if after is None or set(after.heads) != {revision}:
        got = "unknown" if after is None else heads_str(after.heads) or "base"
        raise Failure(reasons.STAMP_FAILED, f"stamp finished but the database is at {got}", **base)
    return cast(StampResult, {"ok": True, **base, "revision": revision})
