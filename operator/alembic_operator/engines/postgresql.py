"""PostgreSQL: the URL's libpq parameters, pg_dump/pg_restore/psql, the catalog queries of a restore, the pglast
scanner (``sqlscan``), the advisory lock key (``runner.lock.database_lock_key``) and the revision
read through SQLAlchemy.

Secrets: the password reaches libpq through ``PGPASSWORD`` (pg tools) or a keyword argument (psycopg), the other
parameters as a conninfo string without the password; every tool's stderr is scrubbed before it is logged.

Backup: a snapshot is exported (``pg_export_snapshot()``) in a REPEATABLE READ transaction, the Alembic revision
read in that transaction, and ``pg_dump -Fc --snapshot=...`` dumps it: the revision recorded is exactly the one in
the dump. Owners are kept in the dump; the restore uses ``--no-owner`` (the restoring role owns what it recreates).

Restore makes the database's schema exactly what was dumped, all or nothing:

* The failed migration may have created objects the dump does not know (tables, views, sequences, types,
  functions, schemas, extensions, foreign keys from dumped tables). ``pg_restore --clean`` only drops what is in
  the dump, and a new foreign key or view pointing at a dumped table makes its DROP fail. Those extra objects
  are found by comparing the catalog with ``pg_restore -l`` and dropped first.
* With no extra objects: ``pg_restore --clean --if-exists --single-transaction --no-owner --exit-on-error -d``:
  one transaction, all or nothing.
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

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

import psycopg
from psycopg import pq
from psycopg.conninfo import make_conninfo
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from .. import reasons
from ..jobio import URL_ENV, JobError, log, sanitize
from ..reasons import Reason
from ..runner.lock import database_lock_key
from ..sqlrules import Catalog, ScannerModule
from .base import DatabaseTarget, Engine, Snapshot, observation, read_alembic_state, redact_urls, unreadable

if TYPE_CHECKING:
    from ..observation import DatabaseObservation

PG_BIN_ENV: Final = "ALEMBIC_OPERATOR_PG_BIN"  # a directory holding pg_dump, pg_restore, psql (optional)
OPERATOR_CONNECT_TIMEOUT: Final = 5  # the operator reads the revision every few seconds
JOB_CONNECT_TIMEOUT: Final = 10
LOCK_WAIT_TIMEOUT: Final = "120s"  # pg_dump waits at most this long for a table lock
APPLICATION_NAME: Final = "alembic-operator"
SECRET_KEYWORDS: Final = frozenset({"password", "sslpassword", "oauth_client_secret", "scram_client_key",
                                    "scram_server_key"})
_CHUNK: Final = 1 << 20


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

    def describe(self) -> dict[str, str | int | None]:
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
        return JobError(reasons.DATABASE_AUTHENTICATION_FAILED, f"cannot log in to {db.where}: {text}; check the "
                        "credentials in the Secret")
    if isinstance(err, psycopg.OperationalError):
        return JobError(reasons.DATABASE_UNREACHABLE, f"cannot reach the database at {db.where}: {text}")
    return JobError(reasons.DATABASE_ERROR, f"database error on {db.where}: {text}")


def database(url: URL) -> Database:
    """The libpq parameters of a (validated) SQLAlchemy URL."""
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
    params["dbname"] = url.database or ""
    params.setdefault("connect_timeout", str(JOB_CONNECT_TIMEOUT))
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
        raise JobError(reasons.TOOL_NOT_FOUND, f"{tool} is not installed in the operator's image")
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


def _run(cmd: list[str], db: Database, what: str, reason: Reason, out: IO[bytes] | None = None) -> str:
    """Run a pg tool; its stderr is scrubbed and logged; a failure raises JobError(reason). Its stdout goes to
    `out` when given, else it is returned."""
    log(f"running {Path(cmd[0]).name} {' '.join(_shown(cmd[1:]))}")
    with tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as captured:
        stdout = out if out is not None else captured
        proc = subprocess.run(cmd, env=db.env(), stdout=stdout, stderr=err, stdin=subprocess.DEVNULL, check=False)
        detail = _tail(err)
        if proc.returncode != 0:
            raise JobError(reason, f"{what} failed (exit {proc.returncode}): {detail or 'no output'}")
        captured.seek(0)
        return captured.read().decode(errors="replace")


def _shown(args: Sequence[str]) -> list[str]:
    """Arguments for a log line: the conninfo replaced by host:port/db."""
    shown, hide = [], False
    for arg in args:
        shown.append("<database>" if hide else arg)
        hide = arg in ("-d", "--dbname")
    return shown


# --- backup -------------------------------------------------------------------------------------------------------


class PgSnapshot(Snapshot):
    """An exported snapshot (None: behind a pooler, no shared snapshot) of a REPEATABLE READ transaction."""

    def __init__(self, db: Database, snapshot: str | None, heads: list[str]) -> None:
        self.db, self.snapshot, self.heads = db, snapshot, heads

    def dump(self, out: IO[bytes]) -> None:
        cmd = [pg_bin("pg_dump"), "--format=custom", "--no-password", f"--lock-wait-timeout={LOCK_WAIT_TIMEOUT}"]
        if self.snapshot:
            cmd.append(f"--snapshot={self.snapshot}")
        _run([*cmd, "-d", self.db.conninfo], self.db, "pg_dump", reasons.BACKUP_FAILED, out=out)


@contextlib.contextmanager
def _snapshot(db: Database) -> Iterator[PgSnapshot]:
    """A REPEATABLE READ transaction held open while pg_dump runs."""
    pg_bin("pg_dump")  # before connecting: a missing tool is the first thing to say
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
        yield PgSnapshot(db, snapshot, heads)
    except psycopg.Error as err:
        raise _db_error(err, db) from None
    finally:
        with contextlib.suppress(psycopg.Error):
            conn.rollback()
        conn.close()


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
            raise JobError(reasons.RESTORE_FAILED, f"pg_restore could not read the backup (exit {produced}): "
                           f"{detail or 'no output'}; the database was not changed")
        with contextlib.suppress(BrokenPipeError):
            consumer.stdin.close()
        consumed = consumer.wait()
        _tail(restore_err)
        detail = _tail(psql_err)
        if consumed != 0:
            raise JobError(reasons.RESTORE_FAILED, f"restoring the backup failed (psql exit {consumed}): "
                           f"{detail or 'no output'}; the transaction was rolled back, the database was not changed")



def restore(db: Database, path: Path) -> list[str]:
    """Restore the dump at `path` (its checksum already verified), all or nothing; the extra objects dropped."""
    listing = _run([pg_bin("pg_restore"), "--list", str(path)], db, "pg_restore --list", reasons.BACKUP_CORRUPT)
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
             db, "pg_restore", reasons.RESTORE_FAILED)
    return [what for what, _ in drops]


@contextlib.contextmanager
def advisory_lock(db: Database, key: int | None, timeout: float) -> Iterator[None]:
    if key is None:
        yield
        return
    with db.connect(autocommit=True) as conn:
        started = time.monotonic()
        try:
            while not conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]:  # type: ignore[index]
                if time.monotonic() - started >= timeout:
                    raise JobError(reasons.LOCK_TIMEOUT,
                                   f"another session has held the migration lock (advisory lock {key}) "
                                   f"for more than {timeout:.0f}s; nothing was restored")
                time.sleep(1)
        except psycopg.Error as err:
            raise _db_error(err, db) from None
        log(f"took the migration lock (advisory lock {key})")
        try:
            yield
        finally:
            with contextlib.suppress(psycopg.Error):
                conn.execute("SELECT pg_advisory_unlock(%s)", (key,))


# --- the engine ---------------------------------------------------------------------------------------------------


class PostgreSQL(Engine[Database]):
    name = "postgresql"
    backends = ("postgresql",)
    schemes = ("postgresql", "postgresql+psycopg", "postgresql+psycopg2", "postgresql+asyncpg", "postgresql+pg8000")
    url_example = "postgresql+psycopg://user:password@host:5432/dbname"
    default_port = 5432

    def lock_key(self, database_key: str) -> int:
        return database_lock_key(database_key)  # the runner takes pg_advisory_lock(key)

    def read_revision(self, target: DatabaseTarget) -> DatabaseObservation:
        """Through psycopg, the driver the operator ships, whatever driver the URL names for the app (psycopg2,
        asyncpg, pg8000 are the app's: an async one cannot even be used synchronously), with the URL's libpq
        parameters (the other drivers' own options are the app's)."""
        url = target.url
        known = {d.keyword.decode() for d in pq.Conninfo.get_defaults()} | {"host"}
        read_url = url.set(drivername="postgresql+psycopg",
                           query={k: v for k, v in url.query.items() if k in known})
        try:
            heads, names = read_alembic_state(read_url, {"connect_timeout": OPERATOR_CONNECT_TIMEOUT})
        except DBAPIError as err:
            text = redact_urls(str(getattr(err, "orig", err)).strip().splitlines()[0] if str(err).strip()
                                    else "", target.url)
            if re.search(r'database "[^"]*" does not exist', text):
                return unreadable(target, "no-database", text,
                                  f"{target.url.host or 'localhost'}:{target.url.port or 5432}")
            if "password authentication failed" in text or ("role" in text and "does not exist" in text):
                return unreadable(target, "login", text)
            return unreadable(target, "unreachable", text)
        except SQLAlchemyError as err:
            return unreadable(target, "unreadable", redact_urls(str(err), target.url))
        return observation(heads, names)

    def secrets(self, url: URL) -> list[str]:
        values = [v for key, value in url.query.items() if key in SECRET_KEYWORDS
                  for v in ([value] if isinstance(value, str) else value)]
        return [*super().secrets(url), *values]

    # The Job side is this module's functions (documented on the base class).
    connect = staticmethod(database)
    snapshot = staticmethod(_snapshot)
    advisory_lock = staticmethod(advisory_lock)
    restore = staticmethod(restore)

    def heads(self, db: Database) -> list[str]:
        with db.connect(autocommit=True) as conn:
            try:
                return read_heads(conn)
            except psycopg.Error as err:
                raise _db_error(err, db) from None

    def read_catalog(self, db: Database, items: Sequence[tuple[str | None, str]]) -> Catalog | None:
        try:
            with db.connect() as conn:
                catalog = self.catalog(conn, items)
        except (JobError, psycopg.Error) as err:
            log(f"cannot read the current column types ({sanitize(str(err))[:300]}): type changes are classified "
                "without them")
            return None
        log(f"read the current types of {len(catalog.columns)} column(s) of {len(catalog.rows)} table(s) the plan "
            "alters")
        return catalog

    def scanning(self) -> ScannerModule:
        from .. import sqlscan  # the parser (pglast) is loaded where plans are scanned, never in the operator

        return sqlscan

    # --- check ----------------------------------------------------------------------------------------------------

    sync_drivers = {"asyncpg": "psycopg", "psycopg_async": "psycopg"}
    async_driver = "psycopg_async"  # psycopg ships with the operator

    def read_only_url(self, url: URL) -> URL:
        """libpq drivers (psycopg, psycopg2, psycopg's async driver): every transaction of the session is read only
        (a server option at connection start). asyncpg takes no server options in its URL: psycopg's async driver
        instead (same server, still async for an async env.py). pg8000 is left as it is."""
        if url.get_driver_name() == "asyncpg":
            url = url.set(drivername="postgresql+psycopg_async")
        if url.get_driver_name() not in ("psycopg", "psycopg2", "psycopg_async"):
            return url
        options = url.query.get("options", "")
        options = " ".join([*(options if isinstance(options, tuple) else [options]),
                            "-c default_transaction_read_only=on"])
        return url.update_query_dict({"options": options.strip()})

    def list_databases(self) -> str:
        return "SELECT datname FROM pg_database"

    def drop_database(self, quoted: str) -> list[str]:
        # WITH (FORCE) ends the sessions still on it (PostgreSQL 13 and later); the plain DROP for older servers
        return [f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)", f"DROP DATABASE IF EXISTS {quoted}"]
