"""The commands that run in the operator's image inside Jobs: ``alembic-operator job <command>``.

    alembic-operator job scan    --plan-dir DIR                      [--result-file F]
    alembic-operator job backup  --dir DIR --prefix P --retain N [--location-prefix S] [--result-file F]
    alembic-operator job restore --file PATH --sha256 sha256:HEX      [--result-file F]
    alembic-operator job current                                      [--result-file F]

Each command writes one compact JSON object (< 3500 bytes: a container's termination message holds 4096) to
``--result-file`` (default ``/dev/termination-log``) and as the last line of stdout, logs human lines to stderr,
and exits 0 when ``ok`` is true, 1 otherwise (``{"ok": false, "reason": "CamelCase", "message": "..."}``).

Secrets: the database URL arrives only in ``ALEMBIC_OPERATOR_DATABASE_URL``. It is never printed, never put on a
command line, and never part of a result or an exception: the password reaches libpq through ``PGPASSWORD`` (pg
tools) or a keyword argument (psycopg), the other parameters as a conninfo string without the password, and every
text that came from elsewhere (a tool's stderr, a driver's error) is scrubbed before it is logged or returned.

Backup and restore
------------------
``backup`` exports a snapshot (``pg_export_snapshot()``) in a REPEATABLE READ transaction, reads the Alembic
revision in that transaction and runs ``pg_dump -Fc --snapshot=...``: the revision recorded is exactly the one in
the dump. The dump is written to a hidden temporary name, fsynced, renamed, and the directory fsynced; its sha256 is
computed by reading the file back. A sidecar ``<dump>.json`` keeps the record next to the file. Owners are kept
in the dump; ``restore`` uses ``--no-owner`` (the restoring role owns what it recreates).

``restore`` verifies the checksum before touching anything (``BackupCorrupt``), then makes the database's schema
exactly what was dumped, all or nothing:

* The failed migration may have created objects the dump does not know (tables, views, sequences, types,
  functions, schemas, extensions, foreign keys from dumped tables). ``pg_restore --clean`` only drops what is in
  the dump, and a new foreign key or view pointing at a dumped table makes its DROP fail. Those extra objects
  are found by comparing the catalog with ``pg_restore -l`` and dropped first.
* With no extra objects: ``pg_restore --clean --if-exists --single-transaction --no-owner --exit-on-error -d``,
  exactly as the issue asks: one transaction, all or nothing.
* With extra objects, the drops must be in the SAME transaction as the restore, or a failing restore would leave
  them dropped (and ``DROP TYPE ... CASCADE`` can take a column of a dumped table with it). pg_restore cannot run
  extra SQL, so ``pg_restore --clean --if-exists --no-owner -f -`` renders the very statements it would send and
  ``psql --single-transaction -v ON_ERROR_STOP=1`` runs the drops and them as one transaction. The script is
  streamed through this process and psql's stdin is closed (which makes psql COMMIT) only after pg_restore
  exited 0; if pg_restore fails, psql is killed before it reads EOF, so the server rolls the transaction back.

Dropping an object that is in the dump by mistake is harmless (the restore recreates it in the same
transaction); missing one can only make the restore fail, which changes nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final, cast

import psycopg
from psycopg import pq
from psycopg.conninfo import make_conninfo
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from . import sqlscan
from .runner.redact import Redactor
from .runner.results import RESULT_LIMIT, BackupResult, CurrentResult, RestoreResult, ScanResult, fit_list, size
from .runner.results import write_result as write_results

URL_ENV: Final = "ALEMBIC_OPERATOR_DATABASE_URL"
PG_BIN_ENV: Final = "ALEMBIC_OPERATOR_PG_BIN"  # a directory holding pg_dump, pg_restore, psql (optional)
DEFAULT_RESULT_FILE: Final = "/dev/termination-log"
RESULT_MAX: Final = RESULT_LIMIT
CONNECT_TIMEOUT: Final = 10
LOCK_WAIT_TIMEOUT: Final = "120s"  # pg_dump waits at most this long for a table lock
APPLICATION_NAME: Final = "alembic-operator"
URL_EXAMPLE: Final = "postgresql+psycopg://user:password@host:5432/dbname"
SECRET_KEYWORDS: Final = frozenset({"password", "sslpassword", "oauth_client_secret", "scram_client_key",
                                    "scram_server_key"})
_CHUNK: Final = 1 << 20


class JobError(Exception):
    """A failure with a stable CamelCase reason and a message that says what to do. Never holds a secret."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


# --- secrets ------------------------------------------------------------------------------------------------------

REDACT: Final = Redactor()  # the one redactor (runner/redact.py); every secret value seen in this process


def _remember_secret(value: str | None) -> None:
    REDACT.add(value, min_length=3)


def sanitize(text: str) -> str:
    """Scrub secrets from free text: the known secret values, user:password@ in URLs, password=... in conninfos."""
    return REDACT(text)


def log(message: str) -> None:
    print(sanitize(message), file=sys.stderr, flush=True)


# --- the database -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Database:
    """libpq parameters from the SQLAlchemy URL; the password kept apart from everything that gets printed."""

    params: dict[str, str]  # libpq keywords, without the password
    password: str | None

    @property
    def conninfo(self) -> str:
        """For ``-d`` of the pg tools and for psycopg: no password in it."""
        return str(make_conninfo(**self.params))

    @property
    def where(self) -> str:
        return f"{self.params.get('host') or 'localhost'}:{self.params.get('port') or 5432}/{self.params.get('dbname')}"

    def describe(self) -> dict[str, Any]:
        port = self.params.get("port")
        return {"host": self.params.get("host") or "localhost",
                "port": int(port) if port and port.isdigit() else (port or 5432),
                "database": self.params.get("dbname")}

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop(URL_ENV, None)  # the tools do not need it
        if self.password is not None:
            env["PGPASSWORD"] = self.password
        return env

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        try:
            if self.password is not None:
                return psycopg.connect(self.conninfo, password=self.password, **kwargs)
            return psycopg.connect(self.conninfo, **kwargs)
        except psycopg.Error as err:
            raise _db_error(err, self) from None


def _db_error(err: BaseException, db: Database) -> JobError:
    text = sanitize(" ".join(str(err).split()))[:600]
    if "password authentication failed" in text or ("role" in text and "does not exist" in text):
        return JobError("DatabaseAuthenticationFailed", f"cannot log in to {db.where}: {text}; check the "
                        "credentials in the Secret")
    if isinstance(err, psycopg.OperationalError):
        return JobError("DatabaseUnreachable", f"cannot reach the database at {db.where}: {text}")
    return JobError("DatabaseError", f"database error on {db.where}: {text}")


def database_from_env(environ: dict[str, str] | None = None) -> Database:
    raw = (environ if environ is not None else dict(os.environ)).get(URL_ENV)
    if not raw or not raw.strip():
        raise JobError("InvalidDatabaseURL", f"the environment variable {URL_ENV} is not set (it comes from the "
                       "Secret named in spec.database.urlSecretRef)")
    _remember_secret(raw.strip())
    try:
        url = make_url(raw.strip())
    except (ArgumentError, ValueError):
        raise JobError("InvalidDatabaseURL", f"the database URL is not a valid SQLAlchemy URL such as "
                       f"{URL_EXAMPLE}") from None
    _remember_secret(url.password if isinstance(url.password, str) else None)
    if url.get_backend_name() != "postgresql":
        raise JobError("InvalidDatabaseURL", f"the database URL points at a {url.get_backend_name()} database; "
                       f"backups and restores need PostgreSQL ({URL_EXAMPLE})")
    if not url.database:
        raise JobError("InvalidDatabaseURL", f"the database URL names no database ({URL_EXAMPLE})")
    known = {d.keyword.decode() for d in pq.Conninfo.get_defaults()}
    params: dict[str, str] = {}
    hosts: list[str] = []
    ports: list[str] = []
    for key, value in url.query.items():
        values = [value] if isinstance(value, str) else list(value)
        if key == "host":
            for item in values:  # SQLAlchemy's multi-host form: ?host=h1:5432&host=h2:5433
                host, _, port = item.rpartition(":") if re.fullmatch(r".*:\d+", item) else (item, "", "")
                hosts.append(host)
                ports.append(port)
        elif key in known:
            params[key] = ",".join(values)
            if key in SECRET_KEYWORDS:
                for v in values:
                    _remember_secret(v)
        else:
            log(f"ignoring the URL query parameter {key!r}: not a libpq connection parameter")
    if url.host:
        params["host"] = url.host
    elif hosts:
        params["host"] = ",".join(hosts)
    if url.port:
        params["port"] = str(url.port)
    elif any(ports):
        params["port"] = ",".join(p or "5432" for p in ports)
    if url.username:
        params["user"] = url.username
    params["dbname"] = url.database
    params.setdefault("connect_timeout", str(CONNECT_TIMEOUT))
    params.setdefault("application_name", APPLICATION_NAME)
    password = params.pop("password", None) or (url.password if isinstance(url.password, str) else None)
    return Database(params=params, password=password)


def read_heads(conn: psycopg.Connection[Any], version_table: str = "alembic_version") -> list[str]:
    """The revisions in alembic_version (empty when the table does not exist: a database at base)."""
    row = conn.execute("SELECT to_regclass(%s)::text", (version_table,)).fetchone()
    if not row or row[0] is None:
        return []
    rows = conn.execute(f"SELECT version_num FROM {row[0]} ORDER BY version_num").fetchall()
    return [str(r[0]) for r in rows]


def _revision(heads: Sequence[str]) -> str | None:
    return ",".join(heads) if heads else None


# --- pg tools -----------------------------------------------------------------------------------------------------


def pg_bin(tool: str) -> str:
    """PG_BIN_ENV, else the newest /usr/lib/postgresql/*/bin, else PATH (pg_dump must be as new as the server)."""
    explicit = os.environ.get(PG_BIN_ENV)
    candidates = [Path(explicit)] if explicit else []
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                         key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0, reverse=True)
    for directory in candidates:
        if (directory / tool).is_file():
            return str(directory / tool)
    found = shutil.which(tool)
    if not found:
        raise JobError("ToolNotFound", f"{tool} is not installed in the operator's image")
    return found


def _tail(stream: IO[bytes] | None, lines: int = 8) -> str:
    if stream is None:
        return ""
    stream.seek(0)
    text = stream.read().decode(errors="replace")
    kept = [sanitize(line) for line in text.splitlines() if line.strip()]
    for line in kept:
        log(f"  {line}")
    return " | ".join(kept[-lines:])[-800:]


def _run(cmd: list[str], db: Database, what: str, reason: str) -> str:
    """Run a pg tool; its stderr is scrubbed and logged; a failure raises JobError(reason)."""
    log(f"running {Path(cmd[0]).name} {' '.join(_shown(cmd[1:]))}")
    with tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as out:
        proc = subprocess.run(cmd, env=db.env(), stdout=out, stderr=err, stdin=subprocess.DEVNULL, check=False)
        detail = _tail(err)
        if proc.returncode != 0:
            raise JobError(reason, f"{what} failed (exit {proc.returncode}): {detail or 'no output'}")
        out.seek(0)
        return out.read().decode(errors="replace")


def _shown(args: Sequence[str]) -> list[str]:
    """Arguments for a log line: the conninfo replaced by host:port/db."""
    shown, hide = [], False
    for arg in args:
        shown.append("<database>" if hide else arg)
        hide = arg in ("-d", "--dbname")
    return shown


# --- results ------------------------------------------------------------------------------------------------------


def write_result(path: str, result: Mapping[str, Any]) -> None:
    """The one result writer (runner/results.py): every string scrubbed, then serialized; also stdout's last line.
    A result that does not fit is replaced by ResultTooLarge (the commands trim their own lists first)."""
    write_results(path, result, REDACT, echo=True, cut=False, log=log)


# --- scan ---------------------------------------------------------------------------------------------------------


def _plan_file(plan_dir: Path, name: Any) -> Path:
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise JobError("PlanInvalid", f"plan.json names an invalid SQL file {name!r}")
    return plan_dir / name


def cmd_scan(plan_dir: Path) -> ScanResult:
    path = plan_dir / "plan.json"
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise JobError("PlanNotFound", f"{path} does not exist: the plan step did not write it (see the plan "
                       "container's log)") from None
    except (OSError, ValueError) as err:
        raise JobError("PlanInvalid", f"{path} is not valid JSON: {err}") from None
    if not isinstance(plan, dict):
        raise JobError("PlanInvalid", f"{path} does not hold a JSON object")
    if plan.get("ok") is False:  # the runner reports its own failures; a plan.json that says so is forwarded
        raise JobError(str(plan.get("reason") or "PlanFailed"), str(plan.get("message") or "the plan step failed"))

    unrenderable = {str(u.get("revision")): str(u.get("message") or "")
                    for u in plan.get("unrenderable") or [] if isinstance(u, dict) and u.get("revision")}
    revisions: list[str] = []
    items: list[tuple[str, str]] = []
    digest = hashlib.sha256()
    for entry in plan.get("revisions") or []:
        if isinstance(entry, str):  # a bare id: nothing rendered for it
            entry = {"revision": entry}
        if not isinstance(entry, dict) or not entry.get("revision"):
            raise JobError("PlanInvalid", f"plan.json has a revision entry without an id: {str(entry)[:100]}")
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
            raise JobError("PlanInvalid", f"cannot read {sql_path.name}: {err.strerror or err}") from None
        digest.update(sql.encode())
        items.append((rev, sql))
    for rev in unrenderable:
        if rev not in revisions:
            revisions.append(rev)

    findings = sqlscan.scan_revisions(items)
    order = {rev: i for i, rev in enumerate(revisions)}
    for rev, message in unrenderable.items():
        findings.append(sqlscan.Finding(
            rule="unrenderable-revision", severity="destructive",
            operation=f"revision {rev} could not be rendered offline: review it",
            revision=rev, statement=message[: sqlscan.STATEMENT_MAX]))
    findings.sort(key=lambda f: order.get(f.revision or "", len(order)))  # stable: statement order per revision

    destructive = _unique(f.describe() for f in findings if f.severity == "destructive")
    warnings = _unique(f.describe() for f in findings if f.severity == "warning")
    destructive_revisions = _unique(f.revision for f in findings if f.severity == "destructive" and f.revision)
    for f in findings:
        log(f"{f.severity}: {f.describe()} [{f.rule}]" + (f"\n    {f.statement}" if f.statement else ""))
    log(f"plan {plan.get('current') or 'base'} -> {plan.get('target')}: {len(revisions)} revision(s), "
        f"{len(destructive)} destructive operation(s), {len(warnings)} warning(s)")

    result: dict[str, Any] = {
        "ok": True,
        "current": plan.get("current"),
        "target": plan.get("target"),
        "revisions": revisions,
        "destructiveRevisions": destructive_revisions,
        "destructive": destructive,
        "warnings": warnings,
        "destructiveCount": len(destructive),
        "warningCount": len(warnings),
        "findings": [f.to_dict() for f in findings],
        "sqlSha256": "sha256:" + digest.hexdigest(),
    }
    if isinstance(plan.get("lineage"), list):  # the pod gate needs it
        result["lineage"] = [str(x) for x in plan["lineage"]]
    for key in ("transactionPerMigration", "transactionalDDL"):  # the rollback logic needs them
        if isinstance(plan.get(key), bool):
            result[key] = plan[key]
    fit_list(result, "findings")
    fit_list(result, "lineage")
    fit_list(result, "warnings", lambda n: f"... and {n} more warning(s): see the plan Job's log")
    fit_list(result, "destructive", lambda n: f"... and {n} more destructive operation(s): see the plan Job's log")
    if size(result) > RESULT_MAX:
        raise JobError("PlanTooLarge", f"the plan has {len(revisions)} revisions, too many to report; set "
                       "spec.targetRevision to an intermediate revision and migrate in steps")
    return cast(ScanResult, result)


def _unique(items: Iterable[str | None]) -> list[str]:
    seen: dict[str, None] = {}
    for item in items:
        if item:
            seen.setdefault(item, None)
    return list(seen)


# --- backup -------------------------------------------------------------------------------------------------------

_TIMESTAMP: Final = "%Y%m%dT%H%M%SZ"


def _dump_pattern(prefix: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(prefix)}-(\d{{8}}T\d{{6}}Z)-(.+)\.dump$")


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def file_sha256(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return "sha256:" + digest.hexdigest(), size


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:64] or "_"


@contextlib.contextmanager
def _snapshot(db: Database) -> Iterator[tuple[str | None, list[str]]]:
    """A REPEATABLE READ transaction held open while pg_dump runs: (exported snapshot or None, heads in it)."""
    conn = db.connect(autocommit=False)
    try:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        snapshot: str | None = None
        try:
            row = conn.execute("SELECT pg_export_snapshot()").fetchone()
            snapshot = str(row[0]) if row else None
        except psycopg.Error as err:  # e.g. behind a pooler: dump without a shared snapshot
            log(f"cannot export a snapshot ({sanitize(str(err).strip())}); the revision is read just before the dump")
            conn.rollback()
        heads = read_heads(conn)
        yield snapshot, heads
    except psycopg.Error as err:
        raise _db_error(err, db) from None
    finally:
        with contextlib.suppress(psycopg.Error):
            conn.rollback()
        conn.close()


def cmd_backup(directory: Path, prefix: str, retain: int, location_prefix: str | None) -> BackupResult:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", prefix):
        raise JobError("InvalidArgument", f"--prefix {prefix!r}: use letters, digits, '-', '_' and '.'")
    db = database_from_env()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise JobError("BackupFailed", f"cannot create the backup directory {directory}: {err.strerror}") from None
    pg_dump = pg_bin("pg_dump")
    with _snapshot(db) as (snapshot, heads):
        revision = _revision(heads)
        while True:
            stamp = dt.datetime.now(dt.UTC)
            name = f"{prefix}-{stamp.strftime(_TIMESTAMP)}-{_safe_name('+'.join(heads) or 'base')}.dump"
            final = directory / name
            if not final.exists():
                break
            time.sleep(1)
        tmp = directory / f".{name}.partial"
        log(f"backing up {db.where} at revision {revision or 'base'} to {final}")
        cmd = [pg_dump, "--format=custom", "--no-password", f"--lock-wait-timeout={LOCK_WAIT_TIMEOUT}",
               f"--file={tmp}"]
        if snapshot:
            cmd.append(f"--snapshot={snapshot}")
        try:
            _run([*cmd, "-d", db.conninfo], db, "pg_dump", "BackupFailed")
        except JobError:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
    try:
        _fsync_file(tmp)
        os.replace(tmp, final)
        _fsync_dir(directory)
    except OSError as err:
        raise JobError("BackupFailed", f"cannot store the dump in {directory}: {err.strerror}") from None
    sha256, size = file_sha256(final)
    completed = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    record = {"revision": revision, "sha256": sha256, "sizeBytes": size, "completedAt": completed,
              "database": db.describe(), "file": name}
    _write_atomic(final.with_name(name + ".json"), json.dumps(record, indent=2) + "\n")
    _fsync_dir(directory)
    log(f"backup {name}: {size} bytes, {sha256}")
    pruned = prune(directory, prefix, max(retain, 1), keep=name)
    result: dict[str, Any] = {
        "ok": True,
        "location": f"{location_prefix.rstrip('/')}/{name}" if location_prefix else str(final),
        "file": str(final),
        "sizeBytes": size,
        "sha256": sha256,
        "revision": revision,
        "completedAt": completed,
        "pruned": pruned,
    }
    fit_list(result, "pruned", lambda n: f"... and {n} more")
    return cast(BackupResult, result)


def prune(directory: Path, prefix: str, retain: int, keep: str) -> list[str]:
    """Delete this prefix's dumps beyond the newest `retain` (never `keep`), with their sidecars; and leftovers of
    interrupted backups of this prefix."""
    pattern = _dump_pattern(prefix)
    dumps = sorted((p.name for p in directory.iterdir() if pattern.match(p.name)),
                   key=lambda n: (pattern.match(n).group(1), n), reverse=True)  # type: ignore[union-attr]
    keep_names = [keep, *[n for n in dumps if n != keep][: max(retain - 1, 0)]]
    pruned: list[str] = []
    for name in dumps:
        if name in keep_names:
            continue
        for path in (directory / name, directory / f"{name}.json"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        pruned.append(name)
        log(f"pruned {name}")
    for path in directory.iterdir():
        if path.name.startswith(f".{prefix}-") and path.name.endswith(".partial") and keep not in path.name:
            with contextlib.suppress(OSError):
                path.unlink()
    return pruned


# --- restore ------------------------------------------------------------------------------------------------------


@dataclass
class DumpContents:
    """What a custom-format archive creates, from its table of contents (``pg_restore -l``)."""

    schemas: set[str]
    extensions: set[str]
    relations: set[tuple[str, str]]  # tables, views, materialized views, sequences, foreign tables
    types: set[tuple[str, str]]  # types and domains
    functions: set[tuple[str, str]]  # (schema, "name(argtypes)")
    foreign_keys: set[tuple[str, str]]  # (schema, "table constraint")


_TOC_LINE = re.compile(r"^\d+;\s+\d+\s+\d+\s+(.*)$")
_TOC_KINDS: Final = (  # longest first: "TABLE DATA" is not "TABLE"
    "MATERIALIZED VIEW DATA", "SEQUENCE OWNED BY", "MATERIALIZED VIEW", "FOREIGN TABLE", "FK CONSTRAINT",
    "SEQUENCE SET", "TABLE ATTACH", "TABLE DATA", "PROCEDURE", "AGGREGATE", "EXTENSION", "FUNCTION", "SEQUENCE",
    "DOMAIN", "SCHEMA", "TABLE", "TYPE", "VIEW",
)


def parse_toc(listing: str) -> DumpContents:
    out = DumpContents(set(), set(), set(), set(), set(), set())
    for line in listing.splitlines():
        m = _TOC_LINE.match(line.strip())
        if not m:
            continue
        rest = m.group(1)
        kind = next((k for k in _TOC_KINDS if rest.startswith(k + " ")), None)
        if kind is None:
            continue
        parts = rest[len(kind) + 1:].split(" ", 1)
        if len(parts) < 2:
            continue
        namespace, tail = parts
        tag = tail.rsplit(" ", 1)[0] if " " in tail else tail  # the last word is the owner
        if namespace != "-":
            out.schemas.add(namespace)
        if kind == "SCHEMA":
            out.schemas.add(tag)
        elif kind == "EXTENSION":
            out.extensions.add(tag)
        elif kind in ("TABLE", "VIEW", "MATERIALIZED VIEW", "SEQUENCE", "FOREIGN TABLE"):
            out.relations.add((namespace, tag))
        elif kind in ("TYPE", "DOMAIN"):
            out.types.add((namespace, tag))
        elif kind in ("FUNCTION", "PROCEDURE", "AGGREGATE"):
            out.functions.add((namespace, tag))
        elif kind == "FK CONSTRAINT":
            out.foreign_keys.add((namespace, tag))
    return out


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


_SYSTEM_SCHEMA = "(n.nspname LIKE 'pg\\_%' OR n.nspname = 'information_schema')"
_NOT_MEMBER = ("NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = '{cat}'::regclass AND d.objid = {oid} "
               "AND d.deptype IN ({types}))")
_EXTRA_QUERIES: Final = {
    "extensions": "SELECT e.extname, n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace",
    "schemas": f"SELECT n.nspname FROM pg_namespace n WHERE NOT {_SYSTEM_SCHEMA} AND "
               + _NOT_MEMBER.format(cat="pg_namespace", oid="n.oid", types="'e'"),
    "relations": "SELECT n.nspname, c.relname, c.relkind::text FROM pg_class c JOIN pg_namespace n ON "
                 f"n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND NOT {_SYSTEM_SCHEMA} "
                 "AND " + _NOT_MEMBER.format(cat="pg_class", oid="c.oid", types="'e', 'i', 'a'"),
    "types": "SELECT n.nspname, t.typname, t.typtype::text FROM pg_type t JOIN pg_namespace n ON "
             f"n.oid = t.typnamespace WHERE t.typtype IN ('e', 'd', 'r', 'c') AND NOT {_SYSTEM_SCHEMA} AND "
             "(t.typtype <> 'c' OR (SELECT c.relkind FROM pg_class c WHERE c.oid = t.typrelid) = 'c') AND "
             + _NOT_MEMBER.format(cat="pg_type", oid="t.oid", types="'e', 'i'"),
    "functions": "SELECT n.nspname, p.proname, pg_catalog.oidvectortypes(p.proargtypes), p.prokind::text FROM "
                 f"pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE NOT {_SYSTEM_SCHEMA} AND "
                 + _NOT_MEMBER.format(cat="pg_proc", oid="p.oid", types="'e', 'i'"),
    "foreign_keys": "SELECT n.nspname, c.relname, k.conname FROM pg_constraint k JOIN pg_class c ON "
                    "c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE k.contype = 'f' AND "
                    f"NOT {_SYSTEM_SCHEMA}",
}
_REL_KIND: Final = {"r": "TABLE", "p": "TABLE", "f": "FOREIGN TABLE", "v": "VIEW", "m": "MATERIALIZED VIEW",
                    "S": "SEQUENCE"}


def extra_objects(conn: psycopg.Connection[Any], dump: DumpContents) -> list[tuple[str, str]]:
    """(description, DROP statement) for what the database has and the dump does not, in a safe drop order."""
    rows = {key: conn.execute(sql).fetchall() for key, sql in _EXTRA_QUERIES.items()}
    kept_schemas = dump.schemas | {"public"}
    extra_schemas = sorted(str(r[0]) for r in rows["schemas"] if str(r[0]) not in kept_schemas)
    in_kept = kept_schemas.__contains__
    drops: list[tuple[str, str]] = []
    for ns, table, con in rows["foreign_keys"]:
        if in_kept(ns) and (ns, table) in dump.relations and (ns, f"{table} {con}") not in dump.foreign_keys:
            drops.append((f"FOREIGN KEY {ns}.{table}.{con}", f"ALTER TABLE IF EXISTS ONLY {_ident(ns)}.{_ident(table)} "
                          f"DROP CONSTRAINT IF EXISTS {_ident(con)}"))
    by_kind = sorted(rows["relations"], key=lambda r: "vmfrpS".index(str(r[2])))
    for ns, name, kind in by_kind:
        if in_kept(ns) and (ns, name) not in dump.relations:
            word = _REL_KIND[str(kind)]
            drops.append((f"{word} {ns}.{name}", f"DROP {word} IF EXISTS {_ident(ns)}.{_ident(name)} CASCADE"))
    for ns, name, args, kind in rows["functions"]:
        if in_kept(ns) and (ns, f"{name}({args})") not in dump.functions:
            word = {"p": "PROCEDURE", "a": "AGGREGATE"}.get(str(kind), "FUNCTION")
            drops.append((f"{word} {ns}.{name}({args})",
                          f"DROP {word} IF EXISTS {_ident(ns)}.{_ident(name)}({args}) CASCADE"))
    for ns, name, kind in rows["types"]:
        if in_kept(ns) and (ns, name) not in dump.types:
            word = "DOMAIN" if kind == "d" else "TYPE"
            drops.append((f"{word} {ns}.{name}", f"DROP {word} IF EXISTS {_ident(ns)}.{_ident(name)} CASCADE"))
    for ns in extra_schemas:
        drops.append((f"SCHEMA {ns}", f"DROP SCHEMA IF EXISTS {_ident(ns)} CASCADE"))
    for name, ns in rows["extensions"]:
        if str(name) not in dump.extensions and ns != "pg_catalog":
            drops.append((f"EXTENSION {name}", f"DROP EXTENSION IF EXISTS {_ident(str(name))} CASCADE"))
    return drops


def _restore_with_drops(db: Database, path: Path, drops: list[str]) -> None:
    """pg_restore's statements and the drops in one psql transaction; psql's stdin is closed (COMMIT) only after
    pg_restore succeeded, else psql is killed and the server rolls back."""
    pg_restore = [pg_bin("pg_restore"), "--clean", "--if-exists", "--no-owner", "--file=-", str(path)]
    psql = [pg_bin("psql"), "--no-psqlrc", "--quiet", "--no-password", "--single-transaction",
            "--set=ON_ERROR_STOP=1", "--command=" + ";\n".join(drops) + ";", "--file=-", "-d", db.conninfo]
    log(f"running {' '.join(_shown(pg_restore))} | psql --single-transaction (with {len(drops)} drop(s))")
    with tempfile.TemporaryFile() as restore_err, tempfile.TemporaryFile() as psql_err:
        consumer = subprocess.Popen(psql, env=db.env(), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    stderr=psql_err)
        producer = subprocess.Popen(pg_restore, env=db.env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=restore_err)
        assert consumer.stdin is not None and producer.stdout is not None
        broken = False
        try:
            while chunk := producer.stdout.read(_CHUNK):
                try:
                    consumer.stdin.write(chunk)
                except BrokenPipeError:  # psql stopped on an error: its transaction is rolled back
                    broken = True
                    break
        finally:
            if broken:
                producer.kill()
            produced = producer.wait()
        if produced != 0 and not broken:
            consumer.send_signal(signal.SIGKILL)  # before EOF: psql never COMMITs
            consumer.wait()
            detail = _tail(restore_err)
            raise JobError("RestoreFailed", f"pg_restore could not read the backup (exit {produced}): "
                           f"{detail or 'no output'}; the database was not changed")
        with contextlib.suppress(BrokenPipeError):
            consumer.stdin.close()
        consumed = consumer.wait()
        _tail(restore_err)
        detail = _tail(psql_err)
        if consumed != 0:
            raise JobError("RestoreFailed", f"restoring the backup failed (psql exit {consumed}): "
                           f"{detail or 'no output'}; the transaction was rolled back, the database was not changed")


def cmd_restore(path: Path, expected: str) -> RestoreResult:
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", expected.strip().lower()):
        raise JobError("InvalidArgument", "--sha256 must be sha256:<64 hex digits>")
    expected = expected.strip().lower()
    if not path.is_file():
        raise JobError("BackupNotFound", f"the backup file {path} does not exist (was it pruned, or is the backup "
                       "volume not the one it was written to?)")
    actual, size = file_sha256(path)
    if actual != expected:
        raise JobError("BackupCorrupt", f"the backup {path.name} ({size} bytes) has checksum {actual}, not the "
                       f"{expected} recorded when it was taken; nothing was restored")
    log(f"checksum verified: {path.name} ({size} bytes)")
    db = database_from_env()
    listing = _run([pg_bin("pg_restore"), "--list", str(path)], db, "pg_restore --list", "BackupCorrupt")
    dump = parse_toc(listing)
    with db.connect(autocommit=True) as conn:
        try:
            drops = extra_objects(conn, dump)
        except psycopg.Error as err:
            raise _db_error(err, db) from None
    for what, _ in drops:
        log(f"not in the backup, will be dropped: {what}")
    if drops:
        _restore_with_drops(db, path, [sql for _, sql in drops])
    else:
        _run([pg_bin("pg_restore"), "--clean", "--if-exists", "--single-transaction", "--no-owner",
              "--exit-on-error", "--no-password", "-d", db.conninfo, str(path)],
             db, "pg_restore", "RestoreFailed")
    with db.connect(autocommit=True) as conn:
        try:
            heads = read_heads(conn)
        except psycopg.Error as err:
            raise _db_error(err, db) from None
    revision = _revision(heads)
    log(f"restored {path.name}: the database is at revision {revision or 'base'}")
    result: dict[str, Any] = {"ok": True, "revision": revision, "dropped": [what for what, _ in drops]}
    fit_list(result, "dropped", lambda n: f"... and {n} more")
    return cast(RestoreResult, result)


# --- current ------------------------------------------------------------------------------------------------------


def cmd_current() -> CurrentResult:
    db = database_from_env()
    with db.connect(autocommit=True) as conn:
        try:
            heads = read_heads(conn)
        except psycopg.Error as err:
            raise _db_error(err, db) from None
    if len(heads) > 1:
        raise JobError("MultipleHeads", f"the database's alembic_version holds several revisions ({', '.join(heads)}); "
                       "merge them in the app (alembic merge) first")
    return {"ok": True, "current": heads[0] if heads else None}


# --- CLI ----------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alembic-operator job",
                                     description="Commands run inside the operator's Jobs.")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--result-file", default=DEFAULT_RESULT_FILE, help="where to write the JSON result")
        return p

    p = command("scan", "scan the SQL a plan rendered for destructive and locking operations")
    p.add_argument("--plan-dir", required=True, type=Path)
    p = command("backup", "pg_dump the database to the backup volume")
    p.add_argument("--dir", required=True, type=Path)
    p.add_argument("--prefix", required=True)
    p.add_argument("--retain", required=True, type=int)
    p.add_argument("--location-prefix")
    p = command("restore", "restore a backup written by `backup`")
    p.add_argument("--file", required=True, type=Path)
    p.add_argument("--sha256", required=True)
    command("current", "print the database's current Alembic revision")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    result: Mapping[str, Any]
    try:
        if args.command == "scan":
            result = cmd_scan(args.plan_dir)
        elif args.command == "backup":
            result = cmd_backup(args.dir, args.prefix, args.retain, args.location_prefix)
        elif args.command == "restore":
            result = cmd_restore(args.file, args.sha256)
        else:
            result = cmd_current()
    except JobError as err:
        result = {"ok": False, "reason": err.reason, "message": sanitize(err.message)[:3000]}
    except Exception as err:  # never a traceback with who-knows-what in it: a sanitized one-liner
        result = {"ok": False, "reason": "InternalError",
                  "message": sanitize(f"{type(err).__name__}: {err}")[:3000]}
    if not result.get("ok"):
        log(f"failed: {result['reason']}: {result['message']}")
    write_result(args.result_file, result)
    return 0 if result.get("ok") else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
