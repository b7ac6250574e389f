"""alembic-operator runner: runs Alembic inside the application's image, on behalf of the operator.

The operator copies this one file into a shared emptyDir and runs it with the app's own Python, Alembic,
SQLAlchemy, scripts and models:

    python /alembic-operator/runner.py [common options] <command> [command options]

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
         "renderable", "sha256" (of the file) or "error"}. hasDowngrade (best effort, null: cannot tell): its
        downgrade() does something, or its upgrade() does nothing either (a merge point).
        {"ok": true, "command": "plan", "current": "abc" | null, "currentHeads": [...], "versionTable": true,
         "tables": 3, "dialect": "postgresql", "targetRequested": "head", "heads": [...], "target": "<id>",
         "revisions": ["...", ...], "revisionCount": 2, "unrenderable": [{"revision": ..., "message": ...}],
         "transactionPerMigration": false, "transactionalDDL": true, "planFile": "DIR/plan.json"}
        Nothing to do: "revisions": []. A revision that cannot be rendered offline (it reads data) is listed in
        "unrenderable" and has no .sql file; the plan still succeeds. Refusals carry what was known (current,
        heads, target): MultipleHeads, UnknownRevision, UnknownTargetRevision, DowngradeNotSupported,
        TargetNotReachable.
    upgrade --from REV|base --to REV [--lock-key N] [--lock-timeout S]
        Under a PostgreSQL session advisory lock (other dialects: none). Already at --to: nothing runs. Not at
        --from: RevisionMoved, nothing runs ("revision" = where the database is).
        {"ok": true, "command": "upgrade", "from": "abc" | null, "to": "def", "durationSeconds": 1.2,
         "revision": "def", "applied": ["...", "def"], "alreadyAtTarget": false}
        On failure, reason MigrationFailed and the same fields: "revision" is read again after the failure
        (absent if it could not be read), "applied" lists the revisions committed between from and revision
        ([] when the transaction rolled everything back), "failedRevision" the one that was running, and
        "attempted" the revisions it started. Before the first revision and before each next one, the result file
        already holds reason Interrupted with "attempted" so far: a pod killed outright (SIGKILL, node lost) still
        reports which revisions it may have committed (any prefix of "attempted"), never more.
    downgrade --from REV --to REV|base [--lock-key N] [--lock-timeout S] [--allow-empty-downgrades]
        Like upgrade, with "reverted" (newest first) instead of "applied" and reason DowngradeFailed. Refuses
        (IrreversibleRevision, nothing runs) when a revision to undo has an empty downgrade(), unless
        --allow-empty-downgrades.
    stamp --revision REV [--lock-key N] [--lock-timeout S]
        {"ok": true, "command": "stamp", "to": "abc", "revision": "abc"}, only when the version table does not
        exist yet (adopting a database Alembic never managed); otherwise AlreadyVersioned ("revision" = current).
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
    5  transient problem, nothing was changed, a retry may succeed (DatabaseUnreachable, LockTimeout)
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import hashlib
import io
import json
import os
import re
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn, TextIO

URL_ENV = "ALEMBIC_OPERATOR_DATABASE_URL"
DEFAULT_LOCK_KEY = 0x616C656D62696300  # "alembic\0": session advisory lock key shared by all migrators
DEFAULT_LOCK_TIMEOUT = 600
RESULT_LIMIT = 3500
PREFIX = "[alembic-operator]"

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_REFUSED, EXIT_CONFIG, EXIT_RETRY = 0, 1, 2, 3, 4, 5
EXIT_CODES = {
    "InvalidArguments": EXIT_USAGE,
    "MultipleHeads": EXIT_REFUSED,
    "UnknownRevision": EXIT_REFUSED,
    "UnknownTargetRevision": EXIT_REFUSED,
    "TargetNotReachable": EXIT_REFUSED,
    "DowngradeNotSupported": EXIT_REFUSED,
    "RevisionMoved": EXIT_REFUSED,
    "AlreadyVersioned": EXIT_REFUSED,
    "IrreversibleRevision": EXIT_REFUSED,
    "MissingDatabaseURL": EXIT_CONFIG,
    "InvalidDatabaseURL": EXIT_CONFIG,
    "ConfigNotFound": EXIT_CONFIG,
    "ScriptError": EXIT_CONFIG,
    "DatabaseError": EXIT_CONFIG,
    "NoTargetMetadata": EXIT_CONFIG,
    "DatabaseUnreachable": EXIT_RETRY,
    "LockTimeout": EXIT_RETRY,
}


# --- secrets never leave this process ------------------------------------------------------------------------------

_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@]*:)[^\s@]+@")


class Redactor:
    """Replaces known secrets (the URL, its password in every spelling) and any URL's password with ***."""

    def __init__(self) -> None:
        self.secrets: list[str] = []

    def add(self, secret: str | None, min_length: int = 1) -> None:
        if secret and len(secret) >= min_length and secret not in self.secrets:
            self.secrets.append(secret)
            self.secrets.sort(key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return _URL_PASSWORD.sub(r"\1***@", text)


REDACT = Redactor()


class RedactingStream:
    """A text stream wrapper that redacts everything written through it (stdout/stderr, logging handlers)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(REDACT(text))
        return len(text)

    def writelines(self, lines: Sequence[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def log(message: str) -> None:
    sys.stderr.write(f"{PREFIX} {REDACT(message)}\n")
    sys.stderr.flush()


# --- results ---------------------------------------------------------------------------------------------------------


class Failure(Exception):
    """A reported failure: becomes {"ok": false, "reason": ..., "message": ..., **details}."""

    def __init__(self, reason: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.details = details


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise Failure("InvalidArguments", f"{self.prog}: {message}")


def fit(result: dict[str, Any], limit: int = RESULT_LIMIT) -> str:
    """Compact JSON under `limit` bytes: cut long messages, then long lists (flagged with <key>Truncated)."""

    def dump(value: dict[str, Any]) -> str:
        return json.dumps(value, separators=(",", ":"), sort_keys=False, default=str)

    text = dump(result)
    if len(text.encode()) <= limit:
        return text
    result = dict(result)
    for key, value in list(result.items()):
        if isinstance(value, str) and len(value) > 1000:
            result[key] = value[:997] + "..."
        if isinstance(value, list):
            result[key] = [
                {k: (v[:297] + "..." if isinstance(v, str) and len(v) > 300 else v) for k, v in item.items()}
                if isinstance(item, dict)
                else item
                for item in value
            ]
    while len(dump(result).encode()) > limit:
        lists = [(len(dump({"x": v})), k) for k, v in result.items() if isinstance(v, list) and v]
        if not lists:
            break
        _, key = max(lists)
        items = result[key]
        result[key] = items[: len(items) // 2]
        result[key + "Truncated"] = True
    text = dump(result)
    if len(text.encode()) > limit:  # pathological: keep the essentials
        keep = ("ok", "command", "reason", "revision", "current", "target")
        text = dump({**{k: result[k] for k in keep if k in result}, "message": str(result.get("message", ""))[:500]})
    return text


def write_result(path: str, result: dict[str, Any]) -> None:
    text = REDACT(fit(result))
    if path == "-":
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
        return
    try:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as exc:
        log(f"cannot write the result to {path}: {exc}; result: {text}")


def summary(result: dict[str, Any]) -> str:
    command = result.get("command", "?")
    if not result.get("ok"):
        return f"{command} failed ({result.get('reason')}): {result.get('message')}"
    if command == "plan":
        unrenderable = len(result.get("unrenderable", []))
        extra = f", {unrenderable} cannot be rendered offline" if unrenderable else ""
        return (f"plan: {result.get('revisionCount', 0)} revision(s) from {result.get('current') or 'base'} "
                f"to {result.get('target') or 'base'}{extra}")
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


# --- errors from the database and the scripts -----------------------------------------------------------------------


def first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def describe(exc: BaseException) -> str:
    """A one-line, sanitized description: a DB error's primary message (+ SQLSTATE), else the exception's line."""
    orig = getattr(exc, "orig", None)  # sqlalchemy.exc.DBAPIError wraps the driver's exception
    if isinstance(orig, BaseException):
        diag = getattr(orig, "diag", None)  # psycopg 3 and psycopg2
        primary = getattr(diag, "message_primary", None) if diag is not None else None
        sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
        text = str(primary) if primary else first_line(str(orig)) or type(orig).__name__
        if sqlstate:
            text += f" (SQLSTATE {sqlstate})"
        return REDACT(text)
    line = first_line(str(exc))
    return REDACT(f"{type(exc).__name__}: {line}" if line else type(exc).__name__)


def log_exception(what: str, exc: BaseException) -> None:
    details = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    log(f"{what}:\n{details.rstrip()}")


def is_connection_error(exc: BaseException) -> bool:
    from sqlalchemy import exc as sa_exc

    return isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError)) or bool(
        isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated
    )


def classify(exc: BaseException, what: str) -> Failure:
    """An error while reading the database through env.py, before anything was changed."""
    from sqlalchemy import exc as sa_exc

    log_exception(what, exc)
    if is_connection_error(exc):
        return Failure("DatabaseUnreachable", f"{what}: cannot reach the database: {describe(exc)}")
    if isinstance(exc, sa_exc.DBAPIError):
        return Failure("DatabaseError", f"{what}: the database refused a query: {describe(exc)}")
    return Failure("ScriptError", f"{what}: the app's env.py or migration scripts failed: {describe(exc)}")


# --- Alembic plumbing ------------------------------------------------------------------------------------------------


def heads_str(heads: Sequence[str]) -> str | None:
    """None for base, the id for one head, "a,b" (sorted) when the database has several heads."""
    return ",".join(sorted(heads)) if heads else None


def parse_revs(value: str | None) -> tuple[str, ...]:
    if value is None or value.strip() in ("", "base", "null", "None"):
        return ()
    return tuple(sorted(part.strip() for part in value.split(",") if part.strip()))


def _does_something(tree: ast.Module, name: str) -> bool | None:
    """Does the module's function `name` do anything (more than pass / ... / a docstring / raise)? None: absent."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            for statement in node.body:
                if isinstance(statement, ast.Pass):
                    continue
                if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
                    continue  # docstring or ...
                if isinstance(statement, ast.Raise):
                    continue  # raise NotImplementedError(...)
                return True
            return False
    return None


def has_downgrade(path: str | None) -> bool | None:
    """Best effort (None: cannot tell): can the revision's downgrade() undo it? True when downgrade() does
    something, or when upgrade() does nothing either (a merge point); False for an empty or missing downgrade()."""
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            tree = ast.parse(handle.read())
    except (OSError, SyntaxError, ValueError):
        return None
    if _does_something(tree, "downgrade"):
        return True
    return _does_something(tree, "upgrade") is False


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


class Runner:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.url = self._read_url()
        self.engine = self._make_engine()
        self._script: Any = None

    # configuration

    def _read_url(self) -> str:
        url = os.environ.get(URL_ENV, "").strip()
        if not url:
            raise Failure("MissingDatabaseURL", f"the environment variable {URL_ENV} is empty or not set")
        REDACT.add(url)
        from sqlalchemy.engine import make_url

        try:
            parsed = make_url(url)
        except Exception as exc:  # ArgumentError, ValueError: the message may quote the URL
            raise Failure("InvalidDatabaseURL", f"the database URL cannot be parsed: {describe(exc)}") from None
        password = parsed.password
        if password:
            from urllib.parse import quote, quote_plus

            for spelling in {str(password), quote(str(password), safe=""), quote_plus(str(password))}:
                REDACT.add(spelling, min_length=4)
        REDACT.add(parsed.render_as_string(hide_password=False))
        for name in self.args.export_url_env or ():
            os.environ[name] = url
        return url

    def _make_engine(self) -> Any:
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        try:
            return create_engine(self.url, poolclass=NullPool)
        except Exception as exc:  # NoSuchModuleError (unknown dialect), ImportError (driver not installed)
            raise Failure(
                "InvalidDatabaseURL",
                f"cannot use the database URL with this image (is the dialect/driver installed?): {describe(exc)}",
            ) from None

    def config(self, output_buffer: io.StringIO | None = None) -> Any:
        from alembic.config import Config

        path = self.args.config
        if not os.path.isfile(path):
            raise Failure(
                "ConfigNotFound",
                f"the Alembic config {path} does not exist (working directory {os.getcwd()}): "
                "set spec.migrations.config and spec.migrations.workingDir to where the image keeps alembic.ini",
            )
        if path.endswith(".toml"):
            try:
                cfg = Config(toml_file=path, ini_section=self.args.name, output_buffer=output_buffer)
            except TypeError:
                raise Failure("ConfigNotFound", f"{path}: pyproject.toml configuration needs alembic >= 1.16") from None
        else:
            cfg = Config(path, ini_section=self.args.name, output_buffer=output_buffer)
        cfg.set_main_option("sqlalchemy.url", self.url.replace("%", "%%"))
        return cfg

    @property
    def script(self) -> Any:
        if self._script is None:
            from alembic.script import ScriptDirectory

            cfg = self.config()
            try:
                script = ScriptDirectory.from_config(cfg)
                script.get_heads()  # loads and checks every revision file
            except Failure:
                raise
            except Exception as exc:
                log_exception("loading the migration scripts", exc)
                raise Failure("ScriptError", f"cannot load the migration scripts: {describe(exc)}") from None
            self._script = script
        return self._script

    def lookup(self, revision: str) -> Any:
        """The Script for an id (or unique prefix, or "head"), None if the scripts do not have it."""
        try:
            return self.script.get_revision(revision)
        except Exception:
            return None

    def check_connection(self) -> None:
        try:
            with self.engine.connect():
                pass
        except Exception as exc:
            log_exception("connecting to the database", exc)
            raise Failure("DatabaseUnreachable", f"cannot connect to the database: {describe(exc)}") from None

    # reading the database through the app's env.py (its version table, schema and connection settings)

    def read_state(self, what: str = "reading the database's revision") -> DbState:
        from alembic.runtime.environment import EnvironmentContext

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

        cfg = self.config()
        try:
            with EnvironmentContext(cfg, self.script, fn=fn, dont_mutate=True):
                self.script.run_env()
        except Failure:
            raise
        except Exception as exc:
            raise classify(exc, what) from None
        if not state.read:
            raise Failure("ScriptError", f"{what}: env.py did not call context.run_migrations() in online mode")
        return state

    def try_read_state(self) -> DbState | None:
        try:
            return self.read_state("reading the database's revision again")
        except Failure as failure:
            log(f"cannot read the database's revision: {failure.message}")
            return None

    def path(self, upper: Sequence[str], lower: Sequence[str]) -> list[str]:
        """Revision ids strictly above `lower` up to `upper` inclusive, in upgrade order."""
        if set(upper) == set(lower):
            return []
        upper_arg: Any = tuple(upper) if len(upper) != 1 else upper[0]
        lower_arg: Any = (tuple(lower) if len(lower) != 1 else lower[0]) if lower else "base"
        revisions = self.script.iterate_revisions(upper_arg, lower_arg, implicit_base=True)
        return [sc.revision for sc in reversed(list(revisions))]

    def ancestors(self, heads: Sequence[str]) -> set[str]:
        if not heads:
            return set()
        return {sc.revision for sc in self.script.iterate_revisions(tuple(heads), "base", implicit_base=True)}

    # the advisory lock

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        from sqlalchemy import text

        key, timeout = self.args.lock_key, self.args.lock_timeout
        if self.engine.dialect.name != "postgresql":
            log(f"dialect {self.engine.dialect.name}: no advisory lock")
            yield
            return
        try:
            conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        except Exception as exc:
            log_exception("connecting to the database", exc)
            raise Failure("DatabaseUnreachable", f"cannot connect to the database: {describe(exc)}") from None
        try:
            started = time.monotonic()
            last_report = -1e9
            while True:
                try:
                    got = conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar()
                except Exception as exc:
                    log_exception("taking the advisory lock", exc)
                    raise Failure("DatabaseUnreachable", f"cannot take the advisory lock: {describe(exc)}") from None
                if got:
                    break
                waited = time.monotonic() - started
                if waited >= timeout:
                    raise Failure(
                        "LockTimeout",
                        f"another session has held the migration lock (advisory lock {key}{self._holder(conn)}) "
                        f"for more than {timeout}s; nothing was run. Another migration may be running against "
                        "this database: wait for it, or end that session",
                    )
                if time.monotonic() - last_report >= 10:
                    log(f"waiting for the migration lock (advisory lock {key}{self._holder(conn)}), "
                        f"{int(waited)}s of {timeout}s")
                    last_report = time.monotonic()
                time.sleep(1)
            log(f"took the migration lock (advisory lock {key})")
            yield
        finally:
            with contextlib.suppress(Exception):
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
            with contextlib.suppress(Exception):
                conn.close()

    def _holder(self, conn: Any) -> str:
        from sqlalchemy import text

        key = self.args.lock_key & 0xFFFFFFFFFFFFFFFF
        try:
            row = conn.execute(
                text(
                    "SELECT l.pid, a.application_name FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
                    "AND l.classid = CAST(:hi AS bigint)::oid AND l.objid = CAST(:lo AS bigint)::oid LIMIT 1"
                ),
                {"hi": key >> 32, "lo": key & 0xFFFFFFFF},
            ).first()
        except Exception:
            return ""
        if row is None:
            return ""
        app = f", application {row[1]!r}" if row[1] else ""
        return f" held by backend pid {row[0]}{app}"

    # running migrations through the app's env.py, announcing each revision

    def migrate(self, direction: str, destination: str, progress: list[str],
                on_step: Callable[[], None] | None = None) -> None:
        """Run `alembic upgrade|downgrade <destination>`; appends each revision id to `progress` before it runs,
        then calls `on_step` (which records the progress where a killed pod still leaves it)."""
        from alembic.runtime.environment import EnvironmentContext

        script = self.script
        called: list[bool] = []

        def announce(steps: list[Any]) -> Iterator[Any]:
            total = len(steps)
            log(f"{direction}: {total} revision(s) to run")
            for number, step in enumerate(steps, 1):
                revision = step.revision.revision
                progress.append(revision)
                if on_step is not None:
                    on_step()
                doc = first_line(step.doc or "")
                before = ",".join(getattr(step, "from_revisions", ())) or "base"
                after = ",".join(getattr(step, "to_revisions", ())) or "base"
                log(f"running {direction} {before} -> {after} ({number}/{total}){': ' + doc if doc else ''}")
                started = time.monotonic()
                yield step
                log(f"revision {revision} done in {time.monotonic() - started:.1f}s")

        def fn(heads: Any, context: Any) -> Iterator[Any]:
            called.append(True)
            if direction == "upgrade":
                steps = script._upgrade_revs(destination, heads)
            else:
                steps = script._downgrade_revs(destination, heads)
            return announce(list(steps))

        cfg = self.config()
        with EnvironmentContext(cfg, script, fn=fn, as_sql=False, starting_rev=None, destination_rev=destination):
            script.run_env()
        if not called:
            raise RuntimeError("env.py did not call context.run_migrations() in online mode")

    def render_offline(self, revision: Any) -> str:
        """`alembic upgrade <down>:<rev> --sql` for one revision (a merge starts from all its parents)."""
        from alembic.runtime.environment import EnvironmentContext
        from alembic.runtime.migration import RevisionStep

        script = self.script
        buffer = io.StringIO()
        cfg = self.config(output_buffer=buffer)
        down = revision.down_revision
        starting: Any = None
        if isinstance(down, (tuple, list)):
            starting = tuple(down) or None
        elif down:
            starting = down

        def fn(heads: Any, context: Any) -> list[Any]:
            return [RevisionStep(script.revision_map, revision, True)]

        with EnvironmentContext(
            cfg, script, fn=fn, as_sql=True, starting_rev=starting, destination_rev=revision.revision
        ):
            script.run_env()
        return buffer.getvalue()


# --- commands --------------------------------------------------------------------------------------------------------


def cmd_current(runner: Runner) -> dict[str, Any]:
    runner.check_connection()
    state = runner.read_state()
    script = runner.script
    known = all(runner.lookup(head) is not None for head in state.heads)
    return {"ok": True, "command": "current", **state.facts(), "known": known, "heads": sorted(script.get_heads())}


LINEAGE_MAX = 50


def cmd_plan(runner: Runner) -> dict[str, Any]:
    args = runner.args
    runner.check_connection()
    script = runner.script
    state = runner.read_state()
    heads = sorted(script.get_heads())
    base: dict[str, Any] = {"command": "plan", **state.facts(), "targetRequested": args.target, "heads": heads}
    current = list(state.heads)

    def fail(reason: str, message: str, **details: Any) -> NoReturn:
        raise Failure(reason, message, **{**base, **details})

    requested = args.target.strip()
    if requested in ("head", "heads") and len(heads) != 1:
        fail(
            "MultipleHeads",
            f"the migration scripts have {len(heads)} heads ({', '.join(heads)}), so 'head' is ambiguous: "
            "run `alembic merge heads` in the app, release a new image, or set targetRevision to one revision",
        )
    unknown = [head for head in current if runner.lookup(head) is None]
    if unknown:
        fail(
            "UnknownRevision",
            f"the database is at {', '.join(unknown)}, which the image's migration scripts do not contain: deploy "
            "an image that contains it, or fix alembic_version with `alembic stamp` after checking the schema",
        )
    if requested == "base":
        target_ids: list[str] = []
    else:
        target_script = runner.lookup(heads[0] if requested in ("head", "heads") else requested)
        if target_script is None:
            fail(
                "UnknownTargetRevision",
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
            "DowngradeNotSupported",
            f"the target {heads_str(target_ids) or 'base'} is older than the database's revision "
            f"{heads_str(current)}: the operator only upgrades; set targetRevision to {heads_str(current)} or a "
            "later revision (a downgrade must be run by hand)",
        )
    try:
        revisions = runner.path(target_ids, current)
    except Exception as exc:
        fail(
            "TargetNotReachable",
            f"cannot upgrade from {heads_str(current) or 'base'} to {heads_str(target_ids)}: {describe(exc)}",
        )

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
    return {
        "ok": True,
        **base,
        "revisions": revisions,
        "revisionCount": len(revisions),
        "unrenderable": unrenderable,
        **{k: v for k, v in transaction.items() if v is not None},
        "planFile": plan_file,
    }


def _check_known(runner: Runner, revisions: Sequence[str], reason: str, what: str) -> None:
    unknown = [revision for revision in revisions if runner.lookup(revision) is None]
    if unknown:
        raise Failure(reason, f"{what} {', '.join(unknown)} is not in the image's migration scripts")


def cmd_migrate(runner: Runner, direction: str) -> dict[str, Any]:
    args = runner.args
    upgrade = direction == "upgrade"
    command = direction
    source = parse_revs(getattr(args, "from"))
    destination = args.to.strip()
    _check_known(runner, source, "UnknownRevision", "the starting revision")
    source = tuple(sorted(runner.script.get_revision(revision).revision for revision in source))
    if destination != "base":
        _check_known(runner, [destination], "UnknownTargetRevision", "the target revision")
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
                "IrreversibleRevision",
                f"revision(s) {', '.join(empty)} have an empty downgrade(): downgrading would move alembic_version "
                "without undoing the schema change; nothing was run (restore a backup instead)",
                **base,
            )

    with runner.lock():
        state = runner.read_state()
        current = state.heads
        if set(current) == set(target):
            log(f"the database is already at {heads_str(target) or 'base'}: nothing to run")
            return {"ok": True, **base, "revision": heads_str(current), done_key: [], "alreadyAtTarget": True}
        if set(current) != set(source):
            raise Failure(
                "RevisionMoved",
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
                    "ok": False, **base, "reason": "Interrupted", "attempted": list(progress),
                    "message": f"{direction} was killed before it could report (the pod or node went away); it had "
                               f"started {', '.join(progress) or 'no revision'}"})

        interim()
        try:
            runner.migrate(direction, destination, progress, interim)
        except (Exception, KeyboardInterrupt) as exc:  # KeyboardInterrupt: SIGTERM/SIGINT, see main()
            error = exc
            log_exception(f"{direction} failed", exc)
        after = runner.try_read_state()

    result: dict[str, Any] = {**base, "durationSeconds": round(time.monotonic() - started, 3)}
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
        return {"ok": True, **result, "alreadyAtTarget": False}

    reason = "MigrationFailed" if upgrade else "DowngradeFailed"
    if error is not None:
        failed = progress[-1] if progress else None  # the revision that was running when it failed
        if failed:
            result["failedRevision"] = failed
        where = f"revision {failed}" if failed else direction
        if isinstance(error, KeyboardInterrupt):
            message = f"{where} was interrupted ({str(error) or 'SIGINT'}: the Job's deadline, or the pod was deleted)"
        else:
            message = f"{where} failed: {describe(error)}"
    else:
        message = f"{direction} finished but the database is at {result.get('revision') or 'base'}"
    if after is None:
        message += "; the database's revision could not be read afterwards"
    else:
        message += f"; the database is at {heads_str(after.heads) or 'base'}"
        if set(after.heads) == set(source):
            message += " (nothing was committed)"
    raise Failure(reason, message, **result)


def cmd_stamp(runner: Runner) -> dict[str, Any]:
    args = runner.args
    requested = args.revision.strip()
    sc = runner.lookup(requested)
    if sc is None:
        raise Failure("UnknownTargetRevision", f"the revision {requested} is not in the image's migration scripts")
    revision = sc.revision
    base: dict[str, Any] = {"command": "stamp", "to": revision}
    runner.check_connection()
    with runner.lock():
        state = runner.read_state()
        if state.version_table is None:
            raise Failure("DatabaseError", "cannot tell whether the version table exists", **base)
        if state.version_table:
            raise Failure(
                "AlreadyVersioned",
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
            raise Failure("StampFailed", f"stamp failed: {describe(exc)}", **base, **extra) from None
        after = runner.try_read_state()
    if after is None or set(after.heads) != {revision}:
        got = "unknown" if after is None else heads_str(after.heads) or "base"
        raise Failure("StampFailed", f"stamp finished but the database is at {got}", **base)
    return {"ok": True, **base, "revision": revision}


# --- drift: the live database vs the scripts and the models ----------------------------------------------------------

DIFFERENCES_MAX = 60  # in the result (all of them go to the log); differenceCount has the full count
PENDING_MAX = 60  # in the result; pendingCount has the full count
DIFFERENCE_CHARS = 200


class _Compared(BaseException):
    """Raised from inside env.py's context.run_migrations() once the drift check has what it needs: it unwinds
    env.py (a BaseException, so that an env.py catching Exception does not swallow it), whose transaction then rolls
    back. Nothing env.py or the check ran is committed."""


def _qualified(schema: Any, name: Any) -> str:
    return f"{schema}.{name}" if schema else str(name)


def _type_text(type_: Any, dialect: Any) -> str:
    if type_ is None:
        return "?"
    try:
        return str(type_.compile(dialect=dialect))
    except Exception:
        return repr(type_)[:80]


def _default_text(value: Any) -> str:
    if value is None or value is False:
        return "none"
    arg = getattr(value, "arg", value)  # DefaultClause / server_default
    return str(getattr(arg, "text", arg))  # TextClause


def _column_names(items: Any) -> str:
    names = []
    for item in items:
        name = getattr(item, "name", None)
        names.append(str(name) if name else str(item))
    return ", ".join(names)


def _table_of(obj: Any) -> str:
    table = getattr(obj, "table", None)
    if table is None:
        table = getattr(obj, "parent", None)
    if table is None or not hasattr(table, "name"):
        return "?"
    return _qualified(getattr(table, "schema", None), table.name)


def _constraint_text(constraint: Any) -> str:
    kind = {"unique_constraint": "unique", "check_constraint": "check", "primary_key_constraint": "primary key",
            "foreign_key_constraint": "foreign key"}.get(getattr(constraint, "__visit_name__", ""), "constraint")
    name = getattr(constraint, "name", None) or "(unnamed)"
    if kind == "check":
        what = str(getattr(constraint, "sqltext", "?"))
    else:
        what = _column_names(getattr(constraint, "columns", ()))
    return f"{name} {kind} on {_table_of(constraint)} ({what})"


def _fk_text(fk: Any) -> str:
    name = getattr(fk, "name", None) or "(unnamed)"
    targets = [str(getattr(element, "target_fullname", "?")) for element in getattr(fk, "elements", ())]
    referred = targets[0].rsplit(".", 1)[0] if targets else "?"
    target_columns = ", ".join(target.rsplit(".", 1)[-1] for target in targets)
    return (f"{name} on {_table_of(fk)} ({_column_names(getattr(fk, 'columns', ()))}) -> "
            f"{referred} ({target_columns})")


def render_difference(diff: Any, dialect: Any) -> str:
    """One autogenerate difference (an op tuple from compare_metadata) as a short line: the op an autogenerated
    migration would apply to the database to match the models, e.g. "add_column orders.note (TEXT)",
    "remove_table legacy", "modify_type customers.name VARCHAR(50) -> VARCHAR(80)" (database -> models)."""
    op = str(diff[0])
    try:
        if op in ("add_table", "remove_table"):
            table = diff[1]
            text = f"{op} {_qualified(table.schema, table.name)}"
        elif op in ("add_column", "remove_column"):
            _, schema, table, column = diff[:4]
            nullability = "" if column.nullable else ", NOT NULL"
            text = f"{op} {_qualified(schema, table)}.{column.name} ({_type_text(column.type, dialect)}{nullability})"
        elif op.startswith("modify_") and len(diff) >= 7:
            _, schema, table, column, _existing, in_database, in_models = diff[:7]
            if op == "modify_type":
                before, after = _type_text(in_database, dialect), _type_text(in_models, dialect)
            elif op == "modify_nullable":
                before, after = ("NULL" if in_database else "NOT NULL"), ("NULL" if in_models else "NOT NULL")
            elif op == "modify_default":
                before, after = _default_text(in_database), _default_text(in_models)
            else:
                before, after = repr(in_database), repr(in_models)
            text = f"{op} {_qualified(schema, table)}.{column} {before} -> {after}"
        elif op in ("add_index", "remove_index"):
            index = diff[1]
            unique = " unique" if getattr(index, "unique", False) else ""
            columns = _column_names(getattr(index, "expressions", None) or getattr(index, "columns", ()))
            text = f"{op} {index.name or '(unnamed)'}{unique} on {_table_of(index)} ({columns})"
        elif op in ("add_constraint", "remove_constraint"):
            text = f"{op} {_constraint_text(diff[1])}"
        elif op in ("add_fk", "remove_fk"):
            text = f"{op} {_fk_text(diff[1])}"
        elif op in ("add_table_comment", "remove_table_comment"):
            table = diff[1]
            text = f"{op} {_qualified(table.schema, table.name)} {table.comment!r}"
        else:
            text = f"{op} {diff[1:]!r}"
    except Exception:  # an op shape this version does not know: still say something
        text = f"{op} {diff[1:]!r}"
    text = " ".join(text.split())
    return text if len(text) <= DIFFERENCE_CHARS else text[: DIFFERENCE_CHARS - 3] + "..."


def _about_table(diff: Any, table: str, schema: Any) -> bool:
    """Is the difference about this table (the version table: never reported)?"""
    op = str(diff[0])
    if op in ("add_table", "remove_table", "add_table_comment", "remove_table_comment"):
        return bool(diff[1].name == table and (diff[1].schema or None) == (schema or None))
    if op in ("add_column", "remove_column") or op.startswith("modify_"):
        return bool(diff[2] == table and (diff[1] or None) == (schema or None))
    owner = getattr(diff[1], "table", None) if len(diff) > 1 else None
    if owner is None and len(diff) > 1:
        owner = getattr(diff[1], "parent", None)
    return bool(getattr(owner, "name", None) == table and (getattr(owner, "schema", None) or None) == (schema or None))


def _flatten(diffs: Sequence[Any]) -> list[Any]:
    """compare_metadata groups a column's modify_* ops in a list: one tuple each."""
    flat: list[Any] = []
    for diff in diffs:
        if isinstance(diff, list):
            flat.extend(diff)
        else:
            flat.append(diff)
    return flat


def _alembic_before(*version: int) -> bool:
    import alembic

    found = tuple(int(part) for part in re.findall(r"\d+", str(getattr(alembic, "__version__", "")))[:2])
    return bool(found) and found < version


def cmd_drift(runner: Runner) -> dict[str, Any]:
    """Compare the live database with the scripts (current vs heads) and, at head, with the models. Read-only."""
    from alembic.runtime.environment import EnvironmentContext

    runner.check_connection()
    script = runner.script
    heads = sorted(script.get_heads())
    seen: dict[str, Any] = {}

    def fn(rev: Any, context: Any) -> list[Any]:
        connection = context.connection
        if connection is not None and context.dialect.name == "postgresql":
            # Belt and braces: this transaction (and any later one of the session, e.g. under AUTOCOMMIT) cannot
            # write. Allowed after the queries already run: only switching to read-write is restricted.
            connection.exec_driver_sql("SET TRANSACTION READ ONLY")
            connection.exec_driver_sql("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        current = tuple(context.get_current_heads())
        metadata = context.opts.get("target_metadata")
        seen.update(current=current, metadata=metadata, dialect=context.dialect,
                    version_table=(context.version_table, context.version_table_schema))
        with contextlib.suppress(Exception):
            from sqlalchemy import inspect

            seen["has_version_table"] = bool(
                inspect(connection).has_table(context.version_table, schema=context.version_table_schema)
            )
        no_models = metadata is None or (isinstance(metadata, (list, tuple)) and not metadata)
        if set(current) == set(heads) and not no_models and connection is not None:
            from alembic.autogenerate import compare_metadata

            # alembic < 1.12 compares column types only when env.py passes compare_type=True (and cannot tell an
            # explicit False from its default): compare them there too, as alembic >= 1.12 does by default.
            if _alembic_before(1, 12) and getattr(context, "_user_compare_type", None) is False:
                context._user_compare_type = True
            seen["diffs"] = list(compare_metadata(context, metadata))
        raise _Compared()

    try:
        with EnvironmentContext(runner.config(), script, fn=fn, dont_mutate=True):
            script.run_env()
    except _Compared:
        pass
    except Failure:
        raise
    except Exception as exc:
        raise classify(exc, "comparing the database with the scripts and the models") from None
    if "current" not in seen:
        raise Failure("ScriptError", "env.py did not call context.run_migrations() in online mode")

    current: tuple[str, ...] = seen["current"]
    base: dict[str, Any] = {"command": "drift", "current": heads_str(current), "currentHeads": sorted(current),
                            "heads": heads}
    if "has_version_table" in seen:
        base["versionTable"] = seen["has_version_table"]
    metadata = seen["metadata"]
    if metadata is None or (isinstance(metadata, (list, tuple)) and not metadata):
        raise Failure(
            "NoTargetMetadata",
            "env.py does not pass target_metadata to context.configure(), so the database cannot be compared with "
            "the models: set `target_metadata = Base.metadata` (the models' MetaData) in env.py and pass "
            "target_metadata=target_metadata to context.configure()",
            **base,
        )

    unknown = [revision for revision in current if runner.lookup(revision) is None]
    differences: list[str] = []
    pending: list[str] = []
    if unknown:
        differences = [f"the database is at {revision}, unknown to the scripts" for revision in unknown]
    else:
        done = runner.ancestors(current)
        pending = [revision for revision in runner.path(heads, []) if revision not in done]
        version_table, version_schema = seen["version_table"]
        diffs = [d for d in _flatten(seen.get("diffs", [])) if not _about_table(d, version_table, version_schema)]
        differences = [render_difference(diff, seen["dialect"]) for diff in diffs]
    comparable = "diffs" in seen
    for difference in differences[:500]:
        log(f"drift: {difference}")
    result: dict[str, Any] = {
        "ok": True,
        **base,
        "unknownRevision": bool(unknown),
        "behindHead": bool(pending),
        "pending": pending[:PENDING_MAX],
        "pendingCount": len(pending),
        "modelsComparable": comparable,
        "drifted": bool(differences),
        "differences": differences[:DIFFERENCES_MAX],
        "differenceCount": len(differences),
    }
    if len(pending) > PENDING_MAX:
        result["pendingTruncated"] = True
    if len(differences) > DIFFERENCES_MAX:
        result["differencesTruncated"] = True
    return result


COMMANDS: dict[str, Callable[[Runner], dict[str, Any]]] = {
    "current": cmd_current,
    "plan": cmd_plan,
    "upgrade": lambda runner: cmd_migrate(runner, "upgrade"),
    "downgrade": lambda runner: cmd_migrate(runner, "downgrade"),
    "stamp": cmd_stamp,
    "drift": cmd_drift,
}


# --- command line ----------------------------------------------------------------------------------------------------


def lock_key(value: str) -> int:
    key = int(value, 0)
    if not -(2**63) <= key < 2**64:
        raise argparse.ArgumentTypeError("must fit in 64 bits")
    return key - 2**64 if key >= 2**63 else key  # PostgreSQL's bigint is signed


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
        parser.add_argument("--lock-timeout", type=float, default=DEFAULT_LOCK_TIMEOUT, help="seconds to wait")

    parser = ArgumentParser(prog="runner.py", description="Run Alembic for alembic-operator.")
    common(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="command", parser_class=ArgumentParser)
    sub.required = True

    p = sub.add_parser("current", help="the database's revision")
    common(p, suppress=True)

    p = sub.add_parser("plan", help="the revisions an upgrade would run, with their offline SQL")
    common(p, suppress=True)
    p.add_argument("--target", required=True, help="head or a revision id")
    p.add_argument("--out", required=True, help="directory for plan.json and the NNN-<rev>.sql files")

    p = sub.add_parser("upgrade", help="upgrade from a planned revision to the target")
    common(p, suppress=True)
    p.add_argument("--from", required=True, help="the revision the plan started from (base for an empty database)")
    p.add_argument("--to", required=True, help="the target revision")
    locking(p)

    p = sub.add_parser("downgrade", help="downgrade from a revision to an earlier one")
    common(p, suppress=True)
    p.add_argument("--from", required=True, help="the revision the database should be at")
    p.add_argument("--to", required=True, help="the revision to go back to (or base)")
    p.add_argument("--allow-empty-downgrades", action="store_true",
                   help="also run revisions whose downgrade() is empty")
    locking(p)

    p = sub.add_parser("stamp", help="stamp a database that has no version table yet")
    common(p, suppress=True)
    p.add_argument("--revision", required=True)
    locking(p)

    p = sub.add_parser("drift", help="compare the database with the scripts and the models (read-only)")
    common(p, suppress=True)
    return parser


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"terminated by signal {signal.Signals(signum).name}")


def redact_values(value: Any) -> Any:
    if isinstance(value, str):
        return REDACT(value)
    if isinstance(value, dict):
        return {key: redact_values(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_values(item) for item in value]
    return value


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
        sys.stdout = RedactingStream(sys.stdout)
    if not isinstance(sys.stderr, RedactingStream):
        sys.stderr = RedactingStream(sys.stderr)
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
    result_file = _result_file_from(argv)
    try:
        args = build_parser().parse_args(argv)
        command, result_file = args.command, args.result_file
        log(f"{command}: alembic config {args.config}, working directory {os.getcwd()}")
        result = COMMANDS[command](Runner(args))
    except Failure as failure:
        result = {"ok": False, "command": command, **failure.details, "reason": failure.reason,
                  "message": REDACT(failure.message)}
    except KeyboardInterrupt as exc:
        result = {"ok": False, "command": command, "reason": "Interrupted",
                  "message": f"{command} was interrupted ({str(exc) or 'SIGINT'})"}
    except Exception as exc:
        log_exception("unexpected error", exc)
        result = {"ok": False, "command": command, "reason": "InternalError", "message": describe(exc)}
    result["command"] = command
    result = redact_values(result)
    write_result(result_file, result)
    log(summary(result))
    if result.get("ok"):
        return EXIT_OK
    return EXIT_CODES.get(str(result.get("reason")), EXIT_FAILED)


if __name__ == "__main__":
    sys.exit(main())
