"""MySQL and MariaDB: the URL's connection parameters, mariadb-dump and the mariadb client, the GET_LOCK migration
lock, the revision read through SQLAlchemy, and the MySQL scanner (``sqlscan_mysql``).

What differs from PostgreSQL, and what it means here:

* **DDL is not transactional.** Every CREATE/ALTER/DROP commits the transaction it runs in. Alembic therefore
  commits each revision by itself (its version-table update included), so after a failure the version table says
  exactly which revisions committed; the revision that failed may have run some of its statements, which no
  ROLLBACK undoes (the runner reports them: ``partialRevision``). ``transactional_ddl = False`` tells the operator.
* **The lock** is a named lock, ``GET_LOCK('alembic-operator:<key>')`` (``runner.lock.mysql_lock_name``), held by a
  session; the runner's upgrade, downgrade and stamp take the same name. A timeout names the holder (processlist
  id, user, host, command, seconds, its statement without literals), as far as the migration's user may see it
  (another user's sessions need the PROCESS privilege).
* **Secrets**: the client tools read the password from a 0600 option file (``--defaults-extra-file``) that exists
  only while they run; it is never on a command line, in the environment or in a log. PyMySQL gets it as a keyword.

Backup: ``mariadb-dump --single-transaction`` dumps one consistent snapshot (``START TRANSACTION WITH CONSISTENT
SNAPSHOT``) of the tables, with routines, triggers and events, ``--add-drop-table`` and ``--hex-blob``. Its own
snapshot is not one another session can share, so the heads are read twice: before the dump (to name the file) and
from the dump itself as it streams by (``INSERT INTO `alembic_version```): if they differ the backup fails (the
database moved while it was dumped; retried) rather than record a revision the dump does not hold.

Restore is one pass of the ``mariadb`` client over one script: ``SET FOREIGN_KEY_CHECKS = 0``, a ``DROP ... IF
EXISTS`` for each table, view, sequence, routine and event the database has and the dump does not (they are
reported), then the dump, which drops and recreates each of its own objects. "All or nothing" cannot mean one
transaction here, because DDL commits: a restore that fails midway leaves some tables restored and others not.
What holds instead: the dump's checksum is verified before anything runs; the client stops at the first error;
and every statement of the script is idempotent (drop if exists, then create, then insert into the fresh table),
so running the same restore again converges to exactly what the dump holds (the operator retries a failed
restore Job, and a person can re-run it from the runbook).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

import pymysql
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from .. import reasons
from ..jobio import JobError, log, sanitize
from ..runner.blockers import describe_blockers, from_row
from ..runner.lock import database_lock_key, mysql_lock_name
from ..sqlrules import Catalog, ScannerModule
from .base import DatabaseTarget, Engine, Snapshot, observation, read_alembic_state, redact_urls, unreadable

if TYPE_CHECKING:
    from ..observation import DatabaseObservation

# A directory holding the client tools (optional), searched first: e.g. MySQL's own mysqldump and mysql for a MySQL
# server whose features mariadb-dump does not know.
MYSQL_BIN_ENV: Final = "ALEMBIC_OPERATOR_MYSQL_BIN"
OPERATOR_CONNECT_TIMEOUT: Final = 5
JOB_CONNECT_TIMEOUT: Final = 10
VERSION_TABLE: Final = "alembic_version"
_CHUNK: Final = 1 << 20
# URL query parameters (PyMySQL's names) the client tools understand, and their option-file names.
_SSL_OPTIONS: Final = {"ssl_ca": "ssl-ca", "ssl_cert": "ssl-cert", "ssl_key": "ssl-key", "ssl_capath": "ssl-capath",
                       "ssl_cipher": "ssl-cipher"}
_READ_OPTIONS: Final = frozenset({"unix_socket", "charset", *_SSL_OPTIONS})
# Error codes: 1044/1045 access denied, 1049 unknown database, 2002/2003/2005/2006/2013 cannot reach the server.
AUTH_ERRORS: Final = frozenset({1044, 1045, 1698})
UNKNOWN_DATABASE: Final = 1049


# --- the database -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Database:
    """PyMySQL's and the client tools' parameters from the SQLAlchemy URL; the password kept apart."""

    host: str
    port: int
    database: str
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    unix_socket: str | None = None
    ssl: dict[str, str] = field(default_factory=dict)
    charset: str = "utf8mb4"

    @property
    def where(self) -> str:
        return f"{self.unix_socket or self.host}:{self.port}/{self.database}"

    def describe(self) -> dict[str, str | int | None]:
        return {"host": self.host, "port": self.port, "database": self.database}

    def connect(self, **kwargs: Any) -> pymysql.connections.Connection[Any]:
        """A PyMySQL connection in autocommit; the job's error (reason named) when it cannot be had."""
        params: dict[str, Any] = {"host": self.host, "port": self.port, "user": self.user, "database": self.database,
                                  "charset": self.charset, "connect_timeout": JOB_CONNECT_TIMEOUT, "autocommit": True}
        if self.password is not None:
            params["password"] = self.password
        if self.unix_socket:
            params["unix_socket"] = self.unix_socket
        if self.ssl:
            params["ssl"] = {key.removeprefix("ssl_"): value for key, value in self.ssl.items()}
        try:
            return pymysql.connect(**{**params, **kwargs})
        except pymysql.MySQLError as err:
            raise _db_error(err, self) from None

    @contextlib.contextmanager
    def option_file(self) -> Iterator[Path]:
        """A 0600 option file with the connection (the password included) for ``--defaults-extra-file``, removed
        when the block ends."""
        lines = ["[client]", f"host={_quote(self.host)}", f"port={self.port}"]
        if self.user:
            lines.append(f"user={_quote(self.user)}")
        if self.password is not None:
            lines.append(f"password={_quote(self.password)}")
        if self.unix_socket:
            lines.append(f"socket={_quote(self.unix_socket)}")
        else:  # the clients take host=localhost for the socket; PyMySQL (and so the URL) means TCP
            lines.append("protocol=TCP")
        for key, value in self.ssl.items():
            lines.append(f"{_SSL_OPTIONS[key]}={_quote(value)}")
        lines.append(f"default-character-set={self.charset}")
        fd, name = tempfile.mkstemp(prefix="alembic-operator-", suffix=".cnf")  # mkstemp: 0600, this user's
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write("\n".join(lines) + "\n")
            yield Path(name)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(name)


def _quote(value: str) -> str:
    """An option-file value: double-quoted, with the escapes the MariaDB/MySQL option parser reads."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


def _error_code(err: BaseException) -> int | None:
    args = getattr(err, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def _error_text(err: BaseException) -> str:
    args: tuple[Any, ...] = tuple(getattr(err, "args", ()))
    text = str(args[1]) if len(args) > 1 else str(err)
    return sanitize(" ".join(text.split()))[:600]


def _db_error(err: BaseException, db: Database) -> JobError:
    code, text = _error_code(err), _error_text(err)
    if code in AUTH_ERRORS:
        return JobError(reasons.DATABASE_AUTHENTICATION_FAILED, f"cannot log in to {db.where}: {text}; check the "
                        "credentials in the Secret")
    if code == UNKNOWN_DATABASE:
        return JobError(reasons.DATABASE_NOT_FOUND,
                        f"the database {db.database!r} does not exist on {db.host}:{db.port}")
    if isinstance(err, pymysql.OperationalError) and (code is None or code >= 2000):
        return JobError(reasons.DATABASE_UNREACHABLE, f"cannot reach the database at {db.where}: {text}")
    return JobError(reasons.DATABASE_ERROR, f"database error on {db.where}: {text}")


def database(url: URL) -> Database:
    """The connection parameters of a (validated) SQLAlchemy URL."""
    socket: str | None = None
    ssl: dict[str, str] = {}
    charset = "utf8mb4"
    for key, value in url.query.items():
        single = value if isinstance(value, str) else ",".join(value)
        if key == "unix_socket":
            socket = single
        elif key in _SSL_OPTIONS:
            ssl[key] = single
        elif key == "charset":
            charset = single
        else:
            log(f"ignoring the URL query parameter {key!r}: the Jobs do not use it")
    return Database(host=url.host or "localhost", port=url.port or MySQL.default_port, database=url.database or "",
                    user=url.username, password=url.password if isinstance(url.password, str) else None,
                    unix_socket=socket, ssl=ssl, charset=charset)


def read_heads(conn: pymysql.connections.Connection[Any], table: str = VERSION_TABLE) -> list[str]:
    """The revisions in the version table (empty when it does not exist: a database at base)."""
    with conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() "
                    "AND TABLE_NAME = %s", (table,))
        row = cur.fetchone()
        if not row or not row[0]:
            return []
        cur.execute(f"SELECT version_num FROM {_ident(table)} ORDER BY version_num")
        return [str(r[0]) for r in cur.fetchall()]


def _ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


# --- client tools -------------------------------------------------------------------------------------------------


def client_tool(*names: str) -> str:
    """MYSQL_BIN_ENV, else PATH: the first of `names` found (mariadb-dump before mysqldump)."""
    explicit = os.environ.get(MYSQL_BIN_ENV)
    for name in names if explicit else ():
        if (Path(explicit or "") / name).is_file():
            return str(Path(explicit or "") / name)
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise JobError(reasons.TOOL_NOT_FOUND, f"{names[0]} is not installed in the operator's image")


def _dump_tool() -> str:
    return client_tool("mariadb-dump", "mysqldump")


def _client_tool() -> str:
    return client_tool("mariadb", "mysql")


def _tail(stream: IO[bytes], lines: int = 8) -> str:
    stream.seek(0)
    kept = [sanitize(line) for line in stream.read().decode(errors="replace").splitlines() if line.strip()]
    for line in kept:
        log(f"  {line}")
    return " | ".join(kept[-lines:])[-800:]


# --- backup -------------------------------------------------------------------------------------------------------

DUMP_OPTIONS: Final = (
    "--single-transaction",  # one consistent snapshot, no table locks (InnoDB)
    "--routines", "--triggers", "--events",
    "--add-drop-table",  # each table is dropped before it is recreated: a restore replaces it
    "--hex-blob",  # binary columns as hex literals: exact whatever the client's character set
    "--skip-dump-date", "--no-tablespaces", "--skip-lock-tables",
    "--default-character-set=utf8mb4",
)
_VERSION_PREFIX: Final = b"INSERT INTO `" + VERSION_TABLE.encode() + b"` VALUES"
_STRING = re.compile(rb"'((?:[^'\\]|\\.)*)'")


class HeadsInDump:
    """Reads the version table's rows from a dump as it streams by, a line at a time (mariadb-dump writes
    ``INSERT INTO `alembic_version` VALUES`` and then one row per line up to the ``;``). Long lines of other tables
    are not kept."""

    def __init__(self) -> None:
        self.heads: list[str] = []
        self.seen_table = False
        self._partial = b""
        self._in_insert = False

    def feed(self, chunk: bytes) -> None:
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            self._line(line)
        keep = (self._in_insert or self._partial.startswith(_VERSION_PREFIX)
                or _VERSION_PREFIX.startswith(self._partial[: len(_VERSION_PREFIX)]))
        if not keep and len(self._partial) > len(_VERSION_PREFIX):
            self._partial = b"-"  # the rest of a line that is not the version table's: never a match

    def close(self) -> None:
        if self._partial:
            self._line(self._partial)
            self._partial = b""

    def _line(self, line: bytes) -> None:
        if line.startswith(b"CREATE TABLE `" + VERSION_TABLE.encode() + b"`"):
            self.seen_table = True
        if line.startswith(_VERSION_PREFIX):
            self._in_insert, line = True, line[len(_VERSION_PREFIX):]
        if self._in_insert:
            self.heads.extend(s.decode() for s in _STRING.findall(line))
            if line.rstrip().endswith(b";"):
                self._in_insert = False


class MySQLSnapshot(Snapshot):
    """The heads read before the dump; `dump` checks them against those in the dump."""

    def __init__(self, db: Database, heads: list[str]) -> None:
        self.db, self.heads = db, heads

    def dump(self, out: IO[bytes]) -> None:
        tool = _dump_tool()
        with self.db.option_file() as options, tempfile.TemporaryFile() as err:
            # MySQL's own mysqldump writes SET @@GLOBAL.GTID_PURGED on a GTID server: a restore must not run it.
            extra = ["--set-gtid-purged=OFF"] if Path(tool).name == "mysqldump" else []
            cmd = [tool, f"--defaults-extra-file={options}", *DUMP_OPTIONS, *extra, self.db.database]
            log(f"running {Path(tool).name} {' '.join([*DUMP_OPTIONS, *extra])} <database>")
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
            assert proc.stdout is not None
            found = HeadsInDump()
            try:
                while chunk := proc.stdout.read(_CHUNK):
                    out.write(chunk)
                    found.feed(chunk)
            except BaseException:  # e.g. the volume is full: stop the dump, the store discards what it got
                proc.kill()
                proc.wait()
                raise
            code = proc.wait()
            found.close()
            detail = _tail(err)
            if code != 0:
                raise JobError(reasons.BACKUP_FAILED,
                               f"{Path(tool).name} failed (exit {code}): {detail or 'no output'}")
        before, dumped = ",".join(sorted(self.heads)) or "base", ",".join(sorted(found.heads)) or "base"
        if before != dumped:
            raise JobError(reasons.BACKUP_FAILED, f"the database moved while it was dumped (revision {before} before, "
                           f"{dumped} in the dump): another migration ran; nothing was kept")


@contextlib.contextmanager
def _snapshot(db: Database) -> Iterator[MySQLSnapshot]:
    _dump_tool()  # before connecting: a missing tool is the first thing to say
    conn = db.connect()
    try:
        heads = read_heads(conn)
    except pymysql.MySQLError as err:
        raise _db_error(err, db) from None
    finally:
        conn.close()
    yield MySQLSnapshot(db, heads)


# --- restore ------------------------------------------------------------------------------------------------------

_DROP_IN_DUMP = re.compile(
    rb"DROP (TABLE|VIEW|SEQUENCE|PROCEDURE|FUNCTION|EVENT) IF EXISTS `((?:[^`]|``)+)`")


# The client tools' opening and closing comment lines: a dump of an empty database (revision base) has nothing else.
# The opening one is the first line, or the second after newer MariaDB's "enable the sandbox mode" line.
_DUMP_HEADERS: Final = (b"-- MariaDB dump ", b"-- MySQL dump ")
_HEADER_LINES: Final = 2
_DUMP_TRAILER: Final = b"-- Dump completed"


@dataclass
class DumpContents:
    """What a dump (re)creates, from its DROP ... IF EXISTS statements (mariadb-dump drops each object before it
    creates it), and whether it is a whole dump at all (the tool's header and its "Dump completed" line)."""

    tables: set[str] = field(default_factory=set)  # tables, views and sequences: one namespace in MySQL
    routines: set[tuple[str, str]] = field(default_factory=set)  # ("PROCEDURE" | "FUNCTION", name)
    events: set[str] = field(default_factory=set)
    whole: bool = False


def dump_contents(path: Path) -> DumpContents:
    out = DumpContents()
    headed = completed = False
    with open(path, "rb") as handle:
        for number, line in enumerate(handle):
            headed = headed or (number < _HEADER_LINES and line.startswith(_DUMP_HEADERS))
            completed = completed or line.startswith(_DUMP_TRAILER)
            for kind, raw in _DROP_IN_DUMP.findall(line):
                name = raw.replace(b"``", b"`").decode()
                word = kind.decode()
                if word in ("TABLE", "VIEW", "SEQUENCE"):
                    out.tables.add(name)
                elif word == "EVENT":
                    out.events.add(name)
                else:
                    out.routines.add((word, name))
    out.whole = headed and completed
    return out


def extra_objects(conn: pymysql.connections.Connection[Any], dump: DumpContents) -> list[tuple[str, str]]:
    """(description, DROP statement) for what the database has and the dump does not: views first, then tables
    and sequences, routines, events."""
    drops: list[tuple[str, str]] = []
    with conn.cursor() as cur:
        cur.execute("SELECT TABLE_NAME, TABLE_TYPE FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() "
                    "ORDER BY TABLE_TYPE <> 'VIEW', TABLE_NAME")
        for name, kind in cur.fetchall():
            if name not in dump.tables:
                word = {"VIEW": "VIEW", "SEQUENCE": "SEQUENCE"}.get(str(kind), "TABLE")
                drops.append((f"{word} {name}", f"DROP {word} IF EXISTS {_ident(name)}"))
        cur.execute("SELECT ROUTINE_TYPE, ROUTINE_NAME FROM information_schema.ROUTINES "
                    "WHERE ROUTINE_SCHEMA = DATABASE() ORDER BY ROUTINE_TYPE, ROUTINE_NAME")
        for kind, name in cur.fetchall():
            if (str(kind), name) not in dump.routines:
                drops.append((f"{kind} {name}", f"DROP {kind} IF EXISTS {_ident(name)}"))
        cur.execute("SELECT EVENT_NAME FROM information_schema.EVENTS WHERE EVENT_SCHEMA = DATABASE() "
                    "ORDER BY EVENT_NAME")
        for (name,) in cur.fetchall():
            if name not in dump.events:
                drops.append((f"EVENT {name}", f"DROP EVENT IF EXISTS {_ident(name)}"))
    return drops


def restore(db: Database, path: Path) -> list[str]:
    """Make the database what the dump at `path` holds (its checksum already verified), in one pass of the client;
    the extra objects dropped. A dump of an empty database (taken at revision base) is valid: restoring it drops
    everything, which is what rolling back a plan that started at base means. See the module's docstring for what
    "all or nothing" means on MySQL."""
    tool = _client_tool()
    dump = dump_contents(path)
    if not dump.whole:
        raise JobError(reasons.BACKUP_CORRUPT, f"{path.name} is not a whole mariadb-dump or mysqldump output (its "
                       "opening line names neither tool, or it lacks the closing 'Dump completed' line); nothing was "
                       "restored")
    conn = db.connect()
    try:
        drops = extra_objects(conn, dump)
    except pymysql.MySQLError as err:
        raise _db_error(err, db) from None
    finally:
        conn.close()
    for what, _ in drops:
        log(f"not in the backup, will be dropped: {what}")
    preamble = "".join(f"{sql};\n" for _, sql in [("", "SET FOREIGN_KEY_CHECKS = 0"), *drops]).encode()
    with db.option_file() as options, tempfile.TemporaryFile() as stderr, open(path, "rb") as source:
        cmd = [tool, f"--defaults-extra-file={options}", "--batch", "--silent", db.database]
        log(f"running {Path(tool).name} <database> < {path.name} (with {len(drops)} drop(s))")
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=stderr)
        assert proc.stdin is not None
        try:
            proc.stdin.write(preamble)
            while chunk := source.read(_CHUNK):
                proc.stdin.write(chunk)
            proc.stdin.write(b"\nSET FOREIGN_KEY_CHECKS = 1;\n")
        except BrokenPipeError:  # the client stopped at an error: its stderr says which
            pass
        finally:
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()
            code = proc.wait()
        detail = _tail(stderr)
    if code != 0:
        raise JobError(reasons.RESTORE_FAILED, f"restoring the backup failed ({Path(tool).name} exit {code}): "
                       f"{detail or 'no output'}. DDL is not transactional on MySQL/MariaDB: the database may be "
                       "partly restored; running the restore again from the same backup makes it whole")
    return [what for what, _ in drops]


# --- the lock -----------------------------------------------------------------------------------------------------

HOLDER_SQL: Final = ("SELECT ID, USER, NULL, HOST, COMMAND, TIME, INFO, NULL FROM information_schema.PROCESSLIST "
                     "WHERE ID = IS_USED_LOCK(%s)")


@contextlib.contextmanager
def advisory_lock(db: Database, key: int | None, timeout: float) -> Iterator[None]:
    if key is None:
        yield
        return
    name = mysql_lock_name(key)
    conn = db.connect()
    try:
        started = time.monotonic()
        with conn.cursor() as cur:
            while True:
                cur.execute("SELECT GET_LOCK(%s, 1)", (name,))
                row = cur.fetchone()
                if row and row[0] == 1:
                    break
                if time.monotonic() - started >= timeout:
                    cur.execute(HOLDER_SQL, (name,))
                    held = [from_row(r, double_quoted_strings=True) for r in cur.fetchall()]
                    who = f", held by {describe_blockers(held)}" if held else ""
                    raise JobError(reasons.LOCK_TIMEOUT,
                                   f"another session has held the migration lock ({name}{who}) for "
                                   f"more than {timeout:.0f}s; nothing was restored")
        log(f"took the migration lock ({name})")
        try:
            yield
        finally:
            with contextlib.suppress(pymysql.MySQLError), conn.cursor() as cur:
                cur.execute("SELECT RELEASE_LOCK(%s)", (name,))
    except pymysql.MySQLError as err:
        raise _db_error(err, db) from None
    finally:
        with contextlib.suppress(pymysql.MySQLError):
            conn.close()


# --- the engine ---------------------------------------------------------------------------------------------------


class MySQL(Engine[Database]):
    name = "mysql"
    backends = ("mysql", "mariadb")
    schemes = ("mysql+pymysql", "mysql+mysqldb", "mysql+mariadbconnector", "mariadb+pymysql",
               "mariadb+mariadbconnector", "mariadb+mysqldb")
    url_example = "mysql+pymysql://user:password@host:3306/dbname"
    default_port = 3306
    transactional_ddl = False

    def database_key(self, url: URL) -> str:
        """mysql:// and mariadb:// name the same server: one key for both (two resources share its lock)."""
        return super().database_key(url.set(drivername="mysql"))

    def lock_key(self, database_key: str) -> int:
        return database_lock_key(database_key)  # the runner takes GET_LOCK(mysql_lock_name(key))

    def read_revision(self, target: DatabaseTarget) -> DatabaseObservation:
        """Through PyMySQL, the driver the operator ships, whatever driver the URL names for the app (mysqlclient,
        MariaDB Connector/C and the async drivers need not be in the operator's image), with the query parameters
        the Jobs use too (the other driver's own options are the app's)."""
        url = target.url
        kept = {key: value for key, value in url.query.items() if key in _READ_OPTIONS}
        try:
            heads, names = read_alembic_state(
                url.set(drivername=f"{url.get_backend_name()}+pymysql", query=kept),
                {"connect_timeout": OPERATOR_CONNECT_TIMEOUT})
        except DBAPIError as err:
            orig = getattr(err, "orig", err)
            code, text = _error_code(orig), redact_urls(_error_text(orig), url)
            if code == UNKNOWN_DATABASE:
                return unreadable(target, "no-database", text, self.where(url).rsplit("/", 1)[0])
            if code in AUTH_ERRORS:
                return unreadable(target, "login", text)
            return unreadable(target, "unreachable", text)
        except SQLAlchemyError as err:
            return unreadable(target, "unreadable", redact_urls(str(err), url))
        return observation(heads, names)

    # The Job side is this module's functions (documented on the base class).
    connect = staticmethod(database)
    snapshot = staticmethod(_snapshot)
    advisory_lock = staticmethod(advisory_lock)
    restore = staticmethod(restore)

    def heads(self, db: Database) -> list[str]:
        conn = db.connect()
        try:
            return read_heads(conn)
        except pymysql.MySQLError as err:
            raise _db_error(err, db) from None
        finally:
            conn.close()

    def read_catalog(self, db: Database, items: Sequence[tuple[str | None, str]]) -> Catalog | None:
        try:
            conn = db.connect(autocommit=False)
        except JobError as err:
            log(f"cannot read the current column types ({err.message[:300]}): type changes are classified without "
                "them")
            return None
        try:
            catalog = self.catalog(conn, items)
        except pymysql.MySQLError as err:
            log(f"cannot read the current column types ({_error_text(err)[:300]}): type changes are classified "
                "without them")
            return None
        finally:
            with contextlib.suppress(pymysql.MySQLError):
                conn.close()
        log(f"read the current types of {len(catalog.columns)} column(s) the plan alters")
        return catalog

    def scanning(self) -> ScannerModule:
        from .. import sqlscan_mysql  # the parser (sqlglot) is loaded where plans are scanned, never in the operator

        return sqlscan_mysql

    # --- check ----------------------------------------------------------------------------------------------------

    sync_drivers = {"aiomysql": "pymysql", "asyncmy": "pymysql"}
    async_driver = "aiomysql"

    def read_only_url(self, url: URL) -> URL:
        """PyMySQL, mysqlclient, aiomysql: the driver's init_command makes every session read only before env.py
        uses it (writes and DDL then fail with 1792); other drivers are left as they are."""
        if url.get_driver_name() in ("pymysql", "mysqldb", "aiomysql"):
            return url.update_query_dict({"init_command": "SET SESSION TRANSACTION READ ONLY"})
        return url
