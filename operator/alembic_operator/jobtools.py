"""The commands that run in the operator's image inside Jobs: ``alembic-operator job <command>``.

    alembic-operator job scan    --plan-dir DIR                      [--result-file F]
    alembic-operator job backup  --store S --location L --prefix P --retain N [--location-prefix S] [--result-file F]
    alembic-operator job restore --store S --dump REF --sha256 sha256:HEX|recorded [--lock-key K|database]
                                                                                                [--result-file F]
    alembic-operator job current                                      [--result-file F]

Each command writes one compact JSON object (< 3500 bytes: a container's termination message holds 4096) to
``--result-file`` (default ``/dev/termination-log``) and as the last line of stdout, logs human lines to stderr,
and exits 0 when ``ok`` is true, 1 otherwise (``{"ok": false, "reason": "CamelCase", "message": "..."}``).

Secrets: the database URL arrives only in ``ALEMBIC_OPERATOR_DATABASE_URL``. It is never printed, never put on a
command line, and never part of a result or an exception; every text that came from elsewhere (a tool's stderr, a
driver's error) is scrubbed before it is logged or returned.

What depends on the database product (connecting, dumping, restoring, reading the revision, scanning SQL) is the
engine's, chosen by the URL's scheme (``engines/``; PostgreSQL in ``engines/postgresql.py``); where dumps are kept
is the backup store's (``backupstores/``; a mounted volume in ``backupstores/volume.py``). The commands here glue
them: ``backup`` has the engine dump a consistent snapshot into the store's atomic writer (the revision recorded
is exactly the one in the dump), keeps the record next to the dump and prunes beyond ``--retain``; ``restore``
has the store verify the checksum before anything is touched (``BackupCorrupt``), then the engine restores the
dump all or nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar, cast

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from . import backupstores, engines, reasons, scratchdb, sqlrules
from .jobio import REDACT, URL_ENV, JobError, log, sanitize
from .jobio import remember_secret as _remember_secret
from .runner.lock import LOCK_WAIT_SECONDS
from .runner.results import RESULT_LIMIT, BackupResult, CurrentResult, RestoreResult, ScanResult, fit_list, size
from .runner.results import write_result as write_results

DEFAULT_RESULT_FILE: Final = "/dev/termination-log"
RESULT_MAX: Final = RESULT_LIMIT
URL_EXAMPLE: Final = "postgresql+psycopg://user:password@host:5432/dbname"


# --- the database -------------------------------------------------------------------------------------------------


def database_from_env(environ: dict[str, str] | None = None) -> Any:
    """The engine's connection parameters (see ``engines/``) for the URL in URL_ENV; its secrets remembered."""
    return _engine_and_database(environ)[1]


def _engine_and_database(environ: dict[str, str] | None = None,
                         database: str | None = None) -> tuple[engines.Engine[Any], Any]:
    """The engine and the Job's connection parameters for the URL in URL_ENV; `database`: for that database on the
    URL's server instead (a rehearsal's scratch database)."""
    raw = (environ if environ is not None else dict(os.environ)).get(URL_ENV)
    if not raw or not raw.strip():
        raise JobError(reasons.INVALID_DATABASE_URL,
                       f"the environment variable {URL_ENV} is not set (it comes from the "
                       "Secret named in spec.database.urlSecretRef)")
    _remember_secret(raw.strip())
    try:
        url = make_url(raw.strip())
    except (ArgumentError, ValueError):
        raise JobError(reasons.INVALID_DATABASE_URL, f"the database URL is not a valid SQLAlchemy URL such as "
                       f"{URL_EXAMPLE}") from None
    _remember_secret(url.password if isinstance(url.password, str) else None)
    try:
        engine = engines.for_url(url)
    except engines.UnknownEngine as err:
        raise JobError(reasons.INVALID_DATABASE_URL, f"the database URL points at a {err.backend} database; "
                       f"{err.explain()} ({URL_EXAMPLE})") from None
    for secret in engine.secrets(url):
        _remember_secret(secret)
    if database is not None:
        url = url.set(database=database)
    problem = engine.problem(url)
    if problem:
        raise JobError(reasons.INVALID_DATABASE_URL, f"the database URL {problem} ({engine.url_example})")
    return engine, engine.connect(url)


def _revision(heads: Sequence[str]) -> str | None:
    return ",".join(heads) if heads else None


# --- results ------------------------------------------------------------------------------------------------------


def write_result(path: str, result: Mapping[str, Any]) -> None:
    """The one result writer (runner/results.py): every string scrubbed, then serialized; also stdout's last line.
    A result that does not fit is replaced by ResultTooLarge (the commands trim their own lists first)."""
    write_results(path, result, REDACT, echo=True, cut=False, log=log)


R = TypeVar("R", ScanResult, BackupResult, RestoreResult)


def _fitted(result: R, key: str, more: Callable[[int], str] | None = None) -> R:
    """`result` with its list `key` shortened until it fits a termination message (runner/results.py's fit_list,
    which works on the result as a JSON object), `more(n_dropped)` appended when given."""
    whole = dict(result)
    fit_list(whole, key, more)
    return cast(R, whole)


# --- scan ---------------------------------------------------------------------------------------------------------


def _plan_file(plan_dir: Path, name: Any) -> Path:
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise JobError(reasons.PLAN_INVALID, f"plan.json names an invalid SQL file {name!r}")
    return plan_dir / name


def cmd_scan(plan_dir: Path) -> ScanResult:
    # only scan needs these (the decisions' package, pydantic): a backup Job's start-up does not import them
    from . import plansql
    from .reconcile import contract

    path = plan_dir / "plan.json"
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise JobError(reasons.PLAN_NOT_FOUND, f"{path} does not exist: the plan step did not write it (see the plan "
                       "container's log)") from None
    except (OSError, ValueError) as err:
        raise JobError(reasons.PLAN_INVALID, f"{path} is not valid JSON: {err}") from None
    if not isinstance(plan, dict):
        raise JobError(reasons.PLAN_INVALID, f"{path} does not hold a JSON object")
    if plan.get("ok") is False:  # the runner reports its own failures; a plan.json that says so is forwarded
        raise JobError(reasons.parse(plan.get("reason")) or reasons.PLAN_FAILED,
                       str(plan.get("message") or "the plan step failed"))

    unrenderable = {str(u.get("revision")): str(u.get("message") or "")
                    for u in plan.get("unrenderable") or [] if isinstance(u, dict) and u.get("revision")}
    revisions: list[str] = []
    items: list[tuple[str, str]] = []
    shown: list[plansql.RevisionSql] = []  # the SQL as reviewers read it (plansql: through the log to a ConfigMap)
    digest = hashlib.sha256()
    for entry in plan.get("revisions") or []:
        if isinstance(entry, str):  # a bare id: nothing rendered for it
            entry = {"revision": entry}
        if not isinstance(entry, dict) or not entry.get("revision"):
            raise JobError(reasons.PLAN_INVALID, f"plan.json has a revision entry without an id: {str(entry)[:100]}")
        rev = str(entry["revision"])
        revisions.append(rev)
        sql_name = entry.get("file") or entry.get("sqlFile")
        if rev in unrenderable or entry.get("renderable") is False or not sql_name:
            unrenderable.setdefault(rev, str(entry.get("error") or "no SQL was rendered for it"))
            continue
        sql_path = _plan_file(plan_dir, sql_name)
        try:
            sql = sql_path.read_text(encoding="utf-8")
        except OSError as err:
            raise JobError(reasons.PLAN_INVALID, f"cannot read {sql_path.name}: {err.strerror or err}") from None
        digest.update(sql.encode())
        items.append((rev, sql))
        shown.append({"revision": rev, "message": str(entry.get("message") or ""), "sql": sql})
    for rev in unrenderable:
        if rev not in revisions:
            revisions.append(rev)

    try:  # the runner names the dialect it rendered for
        engine = engines.for_backend(str(plan.get("dialect") or "postgresql"))
    except engines.UnknownEngine as err:
        raise JobError(reasons.PLAN_INVALID,
                       f"the plan was rendered for a {err.backend} database: {err.explain()}") from None
    findings = engine.scan(items, _live_database(engine))
    order = {rev: i for i, rev in enumerate(revisions)}
    for rev, message in unrenderable.items():
        findings.append(sqlrules.Finding(
            rule=sqlrules.UNRENDERABLE.name, severity=sqlrules.UNRENDERABLE.severity,
            operation=f"revision {rev} could not be rendered offline: review it",
            revision=rev, statement=message[: sqlrules.STATEMENT_MAX]))
    findings.sort(key=lambda f: order.get(f.revision or "", len(order)))  # stable: statement order per revision

    # Expand/contract: revisions before the first contract one run while the older version still serves.
    contract_marked = [str(x) for x in plan.get("contract") or []]
    parts = contract.split(revisions, set(contract_marked))
    breaking = [contract.breaking_message(f, plan.get("current"))
                for f in contract.breaking(findings, set(parts.expand), plan.get("current"))]
    destructive = _unique(f.describe() for f in findings if f.severity == "destructive")
    warnings = _unique(f.describe() for f in findings if f.severity in ("locking", "warning"))
    locking = _unique(f.describe() for f in findings if f.severity == "locking")
    notes = _unique(f.describe() for f in findings if f.severity == "note")
    destructive_revisions = _unique(f.revision for f in findings if f.severity == "destructive" and f.revision)
    for f in findings:
        log(f"{f.severity}: {f.describe()} [{f.rule}]" + (f"\n    {f.statement}" if f.statement else "")
            + (f"\n    safely: {sqlrules.rule_of(f).safely}" if f.severity == "locking" else ""))
    log(f"plan {plan.get('current') or 'base'} -> {plan.get('target')}: {len(revisions)} revision(s), "
        f"{len(destructive)} destructive operation(s), {len(locking)} locking, {len(warnings) - len(locking)} "
        f"other warning(s), {len(notes)} note(s)")

    whole = plansql.WholePlan(revisions=revisions, destructiveRevisions=destructive_revisions, findings=[
        plansql.PlanFinding(rule=f.rule, severity=f.severity, revision=f.revision, operation=f.operation,
                            statement=f.statement) for f in findings])
    data, _kept = plansql.compress(plansql.document(shown, "sha256:" + digest.hexdigest(), whole))
    for line in plansql.log_lines(data):  # raw: the runner redacted the SQL when it rendered it
        print(line, file=sys.stderr, flush=True)
    result: ScanResult = {
        "ok": True,
        "current": plan.get("current"),
        "target": plan.get("target"),
        "revisions": revisions,
        "revisionCount": len(revisions),
        "revisionsSha256": plansql.revisions_sha256(revisions),
        "destructiveRevisions": destructive_revisions,
        "destructive": destructive,
        "warnings": warnings,
        "destructiveCount": len(destructive),
        "warningCount": len(warnings),
        "lockingCount": len(locking),
        "noteCount": len(notes),
        "locking": [_with_rule(f) for f in _first_unique(findings, "locking")],
        "notes": notes,
        "findings": [f.to_dict() for f in findings],
        "sqlSha256": "sha256:" + digest.hexdigest(),
    }
    if isinstance(plan.get("lineage"), list):  # the pod gate needs it
        result["lineage"] = [str(x) for x in plan["lineage"]]
    if contract_marked:
        result["contract"] = contract_marked
    if breaking:
        result["breaking"] = _unique(breaking)[: contract.SHOWN_OPERATIONS]
        result["breakingCount"] = len(_unique(breaking))
    for line in breaking:
        log(f"breaks the running version: {line}")
    if isinstance(plan.get("transactionPerMigration"), bool):  # the rollback logic needs them
        result["transactionPerMigration"] = plan["transactionPerMigration"]
    if isinstance(plan.get("transactionalDDL"), bool):
        result["transactionalDDL"] = plan["transactionalDDL"]
    # A long plan (hundreds of revisions) keeps its ids and all its findings in the SQL document only (the log, then
    # the ConfigMap): the result keeps their count and digest, and the operator takes the ids from the document.
    # The ids go after the warnings (while they fit, the operator needs no log), before what status shows: the
    # locking operations, the pod gate's lineage, the first destructive operations.
    result = _fitted(result, "findings")
    result = _fitted(result, "notes", lambda n: f"... and {n} more note(s): see kubectl dbm plan")
    result = _fitted(result, "warnings", lambda n: f"... and {n} more warning(s): see kubectl dbm plan")

    def more_destructive(n: int) -> str:
        return f"... and {n} more destructive operation(s): see kubectl dbm plan"

    destructive_all = list(result["destructive"])
    if size(result) > RESULT_MAX and len(destructive_all) > DESTRUCTIVE_KEPT:  # the first ones, then the ids
        result["destructive"] = [*destructive_all[:DESTRUCTIVE_KEPT], more_destructive(
            len(destructive_all) - DESTRUCTIVE_KEPT)]
    locking_all = list(result["locking"])
    if size(result) > RESULT_MAX:
        result["locking"] = locking_all[:LOCKING_KEPT]
    result = _fitted(result, "revisions")
    result = _fitted(result, "destructiveRevisions")
    if size(result) > RESULT_MAX:
        result["locking"] = locking_all
    result = _fitted(result, "locking")  # lockingCount still counts them all
    result = _fitted(result, "lineage")
    if size(result) > RESULT_MAX:
        result["destructive"] = destructive_all
        result = _fitted(result, "destructive", more_destructive)
    if size(result) > RESULT_MAX:
        raise JobError(reasons.PLAN_TOO_LARGE, f"the plan's result does not fit a termination message even without its "
                       f"{len(revisions)} revision ids; set spec.targetRevision to an intermediate revision and "
                       "migrate in steps")
    return result


DESTRUCTIVE_KEPT: Final = 10  # destructive operations a result keeps before it gives up its revision ids
LOCKING_KEPT: Final = 2  # ... and locking ones
LOCKING_SHOWN: Final = 5  # locking findings a plan's result carries with their safer pattern (all are counted)


def _first_unique(findings: Iterable[sqlrules.Finding], severity: str) -> list[sqlrules.Finding]:
    seen: dict[str, sqlrules.Finding] = {}
    for f in findings:
        if f.severity == severity:
            seen.setdefault(f.describe(), f)
    return list(seen.values())[:LOCKING_SHOWN]


def _with_rule(f: sqlrules.Finding) -> dict[str, str]:
    """A locking finding as status.plan shows it: what, which rule, and the safer pattern."""
    return {"operation": f.describe(), "rule": f.rule, "safely": sqlrules.rule_of(f).safely}


def _live_database(engine: engines.Engine[Any]) -> Any:
    """The live database for the scan (read only: the current column types), when the Job has its URL; None
    otherwise (the scan then classifies type changes from the plan alone)."""
    if not os.environ.get(URL_ENV):
        return None
    try:
        live_engine, db = _engine_and_database()
    except JobError as err:
        log(f"not reading the live database: {err.message}")
        return None
    return db if live_engine is engine else None


def _unique(items: Iterable[str | None]) -> list[str]:
    seen: dict[str, None] = {}
    for item in items:
        if item:
            seen.setdefault(item, None)
    return list(seen)


# --- backup -------------------------------------------------------------------------------------------------------


def cmd_backup(store_kind: str, location: str, prefix: str, retain: int, location_prefix: str | None) -> BackupResult:
    """The engine dumps a consistent snapshot into the store; the store keeps it (atomically, with its checksum).
    `location`: where the store keeps this resource's dumps; `location_prefix`: how status names it."""
    if not backupstores.PREFIX.fullmatch(prefix):
        raise JobError(reasons.INVALID_ARGUMENT, f"--prefix {prefix!r}: use letters, digits, '-', '_' and '.'")
    engine, db = _engine_and_database()
    store = backupstores.open_store(store_kind, location)
    with engine.snapshot(db) as snapshot:
        revision = _revision(snapshot.heads)
        while True:
            stamp = dt.datetime.now(dt.UTC)
            name = backupstores.dump_name(prefix, stamp, snapshot.heads)
            if not store.exists(name):
                break
            time.sleep(1)
        log(f"backing up {db.where} at revision {revision or 'base'} to {location.rstrip('/')}/{name}")
        dump = store.write(name, snapshot.dump)
    completed = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    store.write_record(name, {"revision": revision, "sha256": dump.sha256, "sizeBytes": dump.size,
                              "completedAt": completed, "database": db.describe(), "file": name})
    log(f"backup {name}: {dump.size} bytes, {dump.sha256}")
    pruned = store.prune(prefix, max(retain, 1), keep=name)
    for gone in pruned:
        log(f"pruned {gone}")
    result: BackupResult = {
        "ok": True,
        "location": f"{location_prefix.rstrip('/')}/{name}" if location_prefix else dump.location,
        "file": dump.location,
        "sizeBytes": dump.size,
        "sha256": dump.sha256,
        "revision": revision,
        "completedAt": completed,
        "pruned": pruned,
    }
    return _fitted(result, "pruned", lambda n: f"... and {n} more")


# --- restore ------------------------------------------------------------------------------------------------------


RECORDED: Final = "recorded"  # --sha256: the one the dump's record kept (a restore by hand of an older backup)
DATABASE_LOCK: Final = "database"  # --lock-key: the database's migration lock, from the URL this Job got


def cmd_restore(store_kind: str, dump: str, expected: str, lock_key: int | str | None = None,
                lock_wait: float = LOCK_WAIT_SECONDS) -> RestoreResult:
    """The store hands the dump over once its checksum matched; the engine restores it all or nothing, holding the
    database's migration lock (restore writes, like migrate, downgrade and stamp).

    `expected` ``recorded``: the checksum of the dump's record (kubectl dbm restore of a backup status no longer
    lists); `lock_key` ``database``: the lock the operator's writers take on this database, derived here from the
    URL (a restore by hand is created by a person, who never reads the Secret)."""
    expected = expected.strip().lower()
    if expected != RECORDED and not backupstores.SHA256.fullmatch(expected):
        raise JobError(reasons.INVALID_ARGUMENT, f"--sha256 must be sha256:<64 hex digits> or {RECORDED}")
    store, name = backupstores.store_kind(store_kind).open_dump(dump)
    if expected == RECORDED:
        expected = store.recorded_sha256(name)
        log(f"checksum recorded with {name}: {expected}")
    _actual, size = store.verify(name, expected)
    log(f"checksum verified: {name} ({size} bytes)")
    engine, db = _engine_and_database()
    if lock_key == DATABASE_LOCK:
        url = make_url(os.environ[URL_ENV].strip())  # _engine_and_database checked it
        lock_key = engine.lock_key(engine.database_key(url))
    with store.fetch(name) as local, engine.advisory_lock(db, _int_or_none(lock_key), lock_wait):
        dropped = engine.restore(db, local)
    revision = _revision(engine.heads(db))
    log(f"restored {name}: the database is at revision {revision or 'base'}")
    return _fitted(RestoreResult(ok=True, revision=revision, dropped=dropped), "dropped", lambda n: f"... and {n} more")


def _int_or_none(value: int | str | None) -> int | None:
    return None if value is None else int(value)


def _lock_key(text: str) -> int | str:
    """--lock-key: a number, or ``database``."""
    if text == DATABASE_LOCK:
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a number nor {DATABASE_LOCK!r}") from None


# --- rehearsal: the backup restored into a scratch database -------------------------------------------------------


def cmd_rehearsal_restore(store_kind: str, dump: str, expected: str, database: str) -> RestoreResult:
    """Create the scratch database `database` on the server of the URL this Job got (spec.rehearsal's Secret, never
    production's) and restore the run's backup into it, checksum verified, for `runner rehearse`."""
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", expected.strip().lower()):
        raise JobError(reasons.INVALID_ARGUMENT, "--sha256 must be sha256:<64 hex digits>")
    if not scratchdb.NAME.fullmatch(database):
        raise JobError(reasons.INVALID_ARGUMENT, f"--database {database!r} is not a rehearsal's scratch database")
    store, name = backupstores.store_kind(store_kind).open_dump(dump)
    _actual, size = store.verify(name, expected.strip().lower())
    log(f"checksum verified: {name} ({size} bytes)")
    engine, db = _engine_and_database(database=database)  # checks the URL, remembers its secrets
    url = make_url(os.environ[URL_ENV].strip())
    try:
        scratchdb.create(url, database)
    except Exception as err:
        raise JobError(reasons.DATABASE_ERROR, f"cannot create the scratch database {database} on "
                       f"{engine.where(url)} (spec.rehearsal's server; its user needs CREATEDB on PostgreSQL, "
                       f"CREATE and DROP on {scratchdb.PREFIX}% on MySQL/MariaDB): {type(err).__name__}: {err}"
                       ) from None
    started = time.monotonic()
    with store.fetch(name) as local:
        dropped = engine.restore(db, local)
    revision = _revision(engine.heads(db))
    log(f"restored {name} into {database} in {time.monotonic() - started:.1f}s: at revision {revision or 'base'}")
    return _fitted(RestoreResult(ok=True, revision=revision, dropped=dropped), "dropped", lambda n: f"... and {n} more")


# --- current ------------------------------------------------------------------------------------------------------


def cmd_current() -> CurrentResult:
    engine, db = _engine_and_database()
    heads = engine.heads(db)
    if len(heads) > 1:
        raise JobError(reasons.MULTIPLE_HEADS,
                       f"the database's alembic_version holds several revisions ({', '.join(heads)}); "
                       "merge them in the app (alembic merge) first")
    return {"ok": True, "current": heads[0] if heads else None}


# --- CLI ----------------------------------------------------------------------------------------------------------


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The commands of ``alembic-operator job`` (cli.py builds the tree; ``install-runner`` is cli's own)."""

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
        p.add_argument("--result-file", default=DEFAULT_RESULT_FILE, help="where to write the JSON result")
        p.set_defaults(handler=run)
        return p

    p = command("scan", "scan the SQL a plan rendered for destructive and locking operations")
    p.add_argument("--plan-dir", required=True, type=Path)
    p = command("backup", "dump the database (pg_dump, mariadb-dump) to the backup store")
    p.add_argument("--store", required=True, help="the backup store (backupstores/): volume, ...")
    p.add_argument("--location", required=True, help="where the store keeps this resource's dumps (a directory, ...)")
    p.add_argument("--prefix", required=True)
    p.add_argument("--retain", required=True, type=int)
    p.add_argument("--location-prefix", help="how status names --location (default: the dump's reference)")
    p = command("restore", "restore a backup written by `backup`")
    p.add_argument("--store", required=True, help="the backup store that holds --dump")
    p.add_argument("--dump", required=True, help="the dump's reference, as `backup` returned it in `file`")
    p.add_argument("--sha256", required=True, help=f"the checksum recorded when it was taken (sha256:HEX), or "
                   f"{RECORDED!r}: the one its record in the store kept")
    p.add_argument("--lock-key", type=_lock_key, help="hold this advisory lock (the database's migration lock) while "
                   f"restoring; {DATABASE_LOCK!r}: the database's own, derived from its URL")
    p.add_argument("--lock-wait-seconds", type=float, default=LOCK_WAIT_SECONDS, metavar="S",
                   help="how long to wait for that lock (default %(default)s)")
    p = command("rehearsal-restore", "create a rehearsal's scratch database and restore a backup into it")
    p.add_argument("--store", required=True, help="the backup store that holds --dump")
    p.add_argument("--dump", required=True, help="the dump's reference, as `backup` returned it in `file`")
    p.add_argument("--sha256", required=True)
    p.add_argument("--database", required=True, help="the scratch database (alembic_rehearsal_...)")
    command("current", "print the database's current Alembic revision")


def run(args: argparse.Namespace) -> int:
    """Run the parsed command; its result to ``--result-file`` and stdout; 0 when ``ok``."""
    result: Mapping[str, Any]
    try:
        if args.job_command == "scan":
            result = cmd_scan(args.plan_dir)
        elif args.job_command == "backup":
            result = cmd_backup(args.store, args.location, args.prefix, args.retain, args.location_prefix)
        elif args.job_command == "restore":
            result = cmd_restore(args.store, args.dump, args.sha256, args.lock_key, args.lock_wait_seconds)
        elif args.job_command == "rehearsal-restore":
            result = cmd_rehearsal_restore(args.store, args.dump, args.sha256, args.database)
        else:
            result = cmd_current()
    except (JobError, backupstores.StoreError) as err:
        result = {"ok": False, "reason": err.reason, "message": sanitize(err.message)[:3000]}
    except Exception as err:  # never a traceback with who-knows-what in it: a sanitized one-liner
        result = {"ok": False, "reason": reasons.INTERNAL_ERROR,
                  "message": sanitize(f"{type(err).__name__}: {err}")[:3000]}
    if not result.get("ok"):
        log(f"failed: {result['reason']}: {result['message']}")
    write_result(args.result_file, result)
    return 0 if result.get("ok") else 1
