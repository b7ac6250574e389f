"""The interface of a database engine: what the operator and its Jobs do that depends on the database product.

One `Engine` subclass per product (``engines/postgresql.py``, ...), registered by its ``name`` when the class is
defined. The operator picks the engine from the URL's SQLAlchemy backend name (``postgresql+psycopg`` ->
``postgresql``) and asks it, in the operator's process: is the URL usable, which database does it identify (the
key two resources on one database share), where is it (for messages), which advisory lock serialises runs on it,
and at which Alembic revision is it. In the Jobs (``alembic-operator job ...``): which values of the URL are
secrets, how to connect, how to dump a consistent snapshot into a stream, how to restore a dump all or nothing,
which revision the database is at, and what the SQL a plan rendered would do (the scanner, and its catalog reader).
In ``alembic-operator check`` (CI): the scanner too, the catalog read through any of its drivers, the synchronous and
async drivers of one family, a read-only session for the live database, and how a scratch database is dropped. No
other module branches on the database product: it asks its engine.

The secrets rules hold for every engine: the URL is never printed, put on a command line or put in a result;
every text that comes from elsewhere (a tool's stderr, a driver's error) is scrubbed before it is shown.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, ClassVar, Generic, Literal, Protocol, TypeVar

import sqlalchemy
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from .. import reasons
from ..plugins import Registry
from ..runner.redact import Redactor

if TYPE_CHECKING:
    from ..observation import DatabaseObservation
    from ..sqlrules import Catalog, Connection, Finding, Rule, Scanner, ScannerModule


class JobDatabase(Protocol):
    """An engine's connection parameters inside a Job (no secret in anything it prints)."""

    @property
    def where(self) -> str: ...

    def describe(self) -> dict[str, str | int | None]: ...  # what a backup's record says of the database


DB = TypeVar("DB", bound=JobDatabase)


class Snapshot(ABC):
    """A consistent view of the database held open while it is dumped: its Alembic heads, and the dump of it."""

    heads: list[str]

    @abstractmethod
    def dump(self, out: IO[bytes]) -> None:
        """Write the dump of this snapshot to `out` (a real file: it has a fileno)."""


@dataclass(frozen=True)
class DatabaseTarget:
    """A database the operator reads: its URL (a secret: never printed) and its key."""

    url: URL
    key: str  # identifies the database (not the credentials): two resources on one database share it

    @property
    def engine(self) -> Engine[Any]:
        return for_url(self.url)

    @property
    def where(self) -> str:
        return self.engine.where(self.url)


class UnknownEngine(LookupError):
    """No engine owns this SQLAlchemy backend name."""

    def __init__(self, backend: str) -> None:
        super().__init__(backend)
        self.backend = backend
        self.schemes = supported_schemes()

    def explain(self) -> str:
        return (f"alembic-operator does not support {self.backend} databases; spec.database.urlSecretRef must name "
                f"a URL with one of the schemes {', '.join(self.schemes)}")


class Engine(ABC, Generic[DB]):
    name: ClassVar[str]  # the registry's name
    backends: ClassVar[tuple[str, ...]]  # SQLAlchemy backend names it owns (the URL scheme before "+driver")
    schemes: ClassVar[tuple[str, ...]]  # the URL schemes (with their drivers) to tell users about
    url_example: ClassVar[str]
    default_port: ClassVar[int]
    # Whether DDL runs inside a transaction (PostgreSQL) or commits implicitly (MySQL/MariaDB): on the latter a
    # failed revision may be half-applied, which the rollback choice must know.
    transactional_ddl: ClassVar[bool] = True
    # `check` gives an async env.py an async driver and its own connections a synchronous one, of one family:
    # async driver -> its synchronous sibling, and the async driver for a URL that has none (None: no async driver).
    sync_drivers: ClassVar[Mapping[str, str]] = {}
    async_driver: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            REGISTRY.add(cls.name, cls())

    # --- the operator --------------------------------------------------------------------------------------------

    def problem(self, url: URL) -> str | None:
        """What makes a parsed URL of this engine unusable (completes "the URL ..."), or None."""
        return None if url.database else "names no database"

    def host_port(self, url: URL) -> tuple[str, int]:
        return url.host or "localhost", url.port or self.default_port

    def where(self, url: URL) -> str:
        host, port = self.host_port(url)
        return f"{host}:{port}/{url.database or ''}"

    def database_key(self, url: URL) -> str:
        """Identifies the database, not the credentials or the driver: two resources on one database share it."""
        host, port = self.host_port(url)
        ident = f"{url.get_backend_name()}://{host.lower()}:{port}/{url.database}"
        return hashlib.sha256(ident.encode()).hexdigest()[:16]

    @abstractmethod
    def lock_key(self, database_key: str) -> int:
        """The advisory lock that serialises the runs on one database (the runner's ``--lock-key``)."""

    @abstractmethod
    def read_revision(self, target: DatabaseTarget) -> DatabaseObservation:
        """The database's current Alembic revision, or why it cannot be read. Blocking: run it in a thread."""

    # --- the Jobs ------------------------------------------------------------------------------------------------

    def secrets(self, url: URL) -> list[str]:
        """The values of the URL to scrub from all output, besides the URL itself."""
        return [url.password] if isinstance(url.password, str) else []

    @abstractmethod
    def connect(self, url: URL) -> DB:
        """The Job's connection parameters; raises the job's error (reason InvalidDatabaseURL) for a bad URL."""

    @abstractmethod
    def snapshot(self, db: DB) -> AbstractContextManager[Snapshot]:
        """A consistent view of the database for a backup: the heads recorded are exactly those in the dump."""

    @abstractmethod
    def advisory_lock(self, db: DB, key: int | None, timeout: float) -> AbstractContextManager[None]:
        """Hold the database's migration lock (the one the runner's upgrade, downgrade and stamp take) while a Job
        writes, so that no two writers run at once; raises the job's error (reason LockTimeout) after `timeout`
        seconds. `key` None: no lock (a hand-run command)."""

    @abstractmethod
    def restore(self, db: DB, path: Path) -> list[str]:
        """Make the database exactly what the dump at `path` holds, all or nothing; what was dropped besides."""

    @abstractmethod
    def heads(self, db: DB) -> list[str]:
        """The revisions in the Alembic version table (empty at base)."""

    @abstractmethod
    def read_catalog(self, db: DB, items: Sequence[tuple[str | None, str]]) -> Catalog | None:
        """The live catalog for `items` (read only, before anything runs), or None when it cannot be read (logged):
        type changes are then classified from the plan alone."""

    def scan(self, items: Iterable[tuple[str | None, str]], db: DB | None = None) -> list[Finding]:
        """Findings of the (revision, SQL) pairs a plan rendered offline, in the order they run; with `db` (the
        live database, read only) a type change is classified against the column's current type."""
        items = list(items)
        scanner = self.scanner(self.read_catalog(db, items) if db is not None else None)
        for revision, sql in items:
            scanner.scan(sql, revision)
        return scanner.findings

    # --- the SQL scanner, for the plan's scan Job and for `check` -----------------------------------------------

    @abstractmethod
    def scanning(self) -> ScannerModule:
        """Its scanner's module (imported here: the parser never loads in the operator), which registers its rules
        in sqlrules.RULESETS under this engine's name."""

    def rules(self) -> Mapping[str, Rule]:
        """Its scanner's rules by name."""
        return self.scanning().RULES

    def scanner(self, catalog: Catalog | None = None) -> Scanner:
        """A new scanner of SQL rendered for this database."""
        return self.scanning().scanner(catalog)

    def alters_columns(self, items: Sequence[tuple[str | None, str]]) -> bool:
        """Whether the SQL changes what the catalog says of a column (its type, NOT NULL): its findings then depend
        on the schema before it."""
        return self.scanning().alters_columns(items)

    def catalog(self, connection: Connection, items: Sequence[tuple[str | None, str]]) -> Catalog:
        """What a scan of `items` reads of the database, through a DB-API connection of any of its drivers, in a
        read-only transaction that is rolled back; the driver's errors are the caller's."""
        return self.scanning().read_catalog(connection, items)

    # --- `check` ---------------------------------------------------------------------------------------------------

    def read_only_url(self, url: URL) -> URL:
        """The URL for sessions that can never write, whatever the app's env.py does with them (unchanged when its
        driver offers no way)."""
        return url

    def drop_database(self, quoted: str) -> list[str]:
        """The statements that drop a scratch database (`quoted` name), tried in order until one succeeds."""
        return [f"DROP DATABASE IF EXISTS {quoted}"]

    def list_databases(self) -> str:
        """The query (one column: the name) of the server's databases, for its leftover scratch databases."""
        return "SELECT schema_name FROM information_schema.schemata"


REGISTRY: Registry[Engine[Any]] = Registry("alembic_operator.engines")


def redact_urls(text: str, *urls: URL | None) -> str:
    """Remove credentials from free text: the URLs' passwords, full URLs, any user:password@ pair, password=..."""
    redact = Redactor()  # the one redactor, the Jobs' rules (runner/redact.py)
    for url in urls:
        if url is not None:
            redact.add(url.render_as_string(hide_password=False), min_length=3)
            redact.add_password(str(url.password or ""), min_length=3)
    return redact(text)


def supported_schemes() -> list[str]:
    return [scheme for engine in REGISTRY for scheme in engine.schemes]


def for_backend(backend: str) -> Engine[Any]:
    """The engine owning a SQLAlchemy backend name (``url.get_backend_name()``); UnknownEngine if none does."""
    for engine in REGISTRY:
        if backend in engine.backends:
            return engine
    raise UnknownEngine(backend)


def for_url(url: URL) -> Engine[Any]:
    return for_backend(url.get_backend_name())


def read_alembic_state(url: URL, connect_args: Mapping[str, object]) -> tuple[list[str], list[str]]:
    """(Alembic heads, table names) through SQLAlchemy; the driver's errors are the caller's to explain."""
    from alembic.runtime.migration import MigrationContext  # the operator's; a Job's start-up does without

    engine = sqlalchemy.create_engine(url, poolclass=NullPool, connect_args=dict(connect_args))
    try:
        with engine.connect() as conn:
            heads = list(MigrationContext.configure(conn).get_current_heads())
            names = sqlalchemy.inspect(conn).get_table_names()
    finally:
        engine.dispose()
    return heads, names


Unreadable = Literal["no-database", "login", "unreachable", "unreadable"]


def unreadable(target: DatabaseTarget, why: Unreadable, text: str, server: str = "") -> DatabaseObservation:
    """Why the revision read failed, in the same words on every engine (each engine tells which case its driver's
    error is; `text` is already scrubbed, `server` names where a missing database was looked for)."""
    from ..observation import DatabaseObservation  # the model (pydantic, api): the operator's, not a Job's

    if why == "no-database":
        return DatabaseObservation(error_reason=reasons.DATABASE_NOT_FOUND, transient=False,
                                   error_message=f"the database {target.url.database!r} does not exist on {server}: "
                                   "create it, or fix the database name in the Secret's URL (checked again every 15 s)")
    if why == "login":
        return DatabaseObservation(error_reason=reasons.DATABASE_AUTHENTICATION_FAILED, transient=False,
                                   error_message=f"cannot log in to {target.where}: {text}; check the credentials in "
                                   "the Secret")
    said = "cannot reach the database at" if why == "unreachable" else "cannot read"
    return DatabaseObservation(error_reason=reasons.DATABASE_UNREACHABLE, transient=True,
                               error_message=f"{said} {target.where}: {text}")


def observation(heads: list[str], names: list[str]) -> DatabaseObservation:
    from ..observation import DatabaseObservation  # the model (pydantic, api): the operator's, not a Job's

    if len(heads) > 1:
        return DatabaseObservation(error_reason=reasons.MULTIPLE_HEADS, transient=False,
                                   error_message=f"the database's alembic_version holds several revisions "
                                   f"({', '.join(heads)}); merge them in the app (alembic merge) first")
    versioned = "alembic_version" in names
    return DatabaseObservation(revision=heads[0] if heads else None, versioned=versioned,
                               tables=len([n for n in names if n != "alembic_version"]))


__all__ = ["DB", "REGISTRY", "DatabaseTarget", "Engine", "JobDatabase", "Snapshot", "UnknownEngine",
           "for_backend", "for_url", "observation", "read_alembic_state", "supported_schemes"]
