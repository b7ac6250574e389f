"""Read the database the way the operator sees it: the URL from the user's Secret, the revision from alembic_version.

The URL is a secret. It is never logged or returned; error messages name the Secret and the host, never the URL,
and `sanitize()` scrubs any text that came from elsewhere (a Job's log, a driver's error) before it reaches status
or an Event.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass

import sqlalchemy
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from .reconcile import DatabaseObservation
from .runner.redact import Redactor

URL_EXAMPLE = "postgresql+psycopg://user:password@host:5432/dbname"
CONNECT_TIMEOUT = 5


@dataclass(frozen=True)
class DatabaseTarget:
    url: URL
    key: str  # identifies the database (not the credentials): two resources on one database share it

    @property
    def where(self) -> str:
        return f"{self.url.host or 'localhost'}:{self.url.port or 5432}/{self.url.database or ''}"


class DatabaseError(Exception):
    def __init__(self, reason: str, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.transient = transient

    def observation(self) -> DatabaseObservation:
        return DatabaseObservation(error_reason=self.reason, error_message=self.message, transient=self.transient)


def database_key(url: URL) -> str:
    ident = f"{url.get_backend_name()}://{(url.host or 'localhost').lower()}:{url.port or 5432}/{url.database}"
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def parse_url(raw: str, secret: str, key: str) -> DatabaseTarget:
    """Turn the Secret's value into a URL, with an error that says what to fix and shows nothing of the value."""
    try:
        url = make_url(raw.strip())
        url.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError) as err:
        kind = "an unknown database driver" if isinstance(err, NoSuchModuleError) else "not a valid SQLAlchemy URL"
        raise DatabaseError(
            "InvalidDatabaseURL",
            f"Secret {secret} key {key} holds {kind}; it must be a SQLAlchemy URL such as {URL_EXAMPLE}",
        ) from None
    if url.get_backend_name() != "postgresql":
        raise DatabaseError(
            "InvalidDatabaseURL",
            f"Secret {secret} key {key} points at a {url.get_backend_name()} database; alembic-operator backs up "
            f"and restores PostgreSQL only ({URL_EXAMPLE})",
        )
    if not url.database:
        raise DatabaseError("InvalidDatabaseURL", f"Secret {secret} key {key}: the URL names no database "
                            f"({URL_EXAMPLE})")
    return DatabaseTarget(url=url, key=database_key(url))


def decode_secret_value(data: dict[str, str] | None, secret: str, key: str) -> str:
    if not data or key not in data:
        raise DatabaseError("SecretNotFound", f"Secret {secret} has no key {key}: add it, or fix "
                            "spec.database.urlSecretRef.key")
    try:
        return base64.b64decode(data[key]).decode()
    except (ValueError, UnicodeDecodeError):
        raise DatabaseError("InvalidDatabaseURL", f"Secret {secret} key {key} is not UTF-8 text") from None


def sanitize(text: str, *urls: URL | None) -> str:
    """Remove credentials from free text: the URLs' passwords, full URLs, any user:password@ pair, password=..."""
    redact = Redactor()  # the one redactor, the Jobs' rules (runner/redact.py)
    for url in urls:
        if url is not None:
            redact.add(url.render_as_string(hide_password=False), min_length=3)
            redact.add_password(str(url.password or ""), min_length=3)
    return redact(text)


def read_revision(target: DatabaseTarget) -> DatabaseObservation:
    """The database's current Alembic revision (None when it has none). Blocking: run it in a thread."""
    engine = sqlalchemy.create_engine(target.url, poolclass=NullPool,
                                      connect_args={"connect_timeout": CONNECT_TIMEOUT})
    try:
        with engine.connect() as conn:
            heads = MigrationContext.configure(conn).get_current_heads()
            names = sqlalchemy.inspect(conn).get_table_names()
    except DBAPIError as err:
        text = sanitize(str(getattr(err, "orig", err)).strip().splitlines()[0] if str(err).strip() else "", target.url)
        if re.search(r'database "[^"]*" does not exist', text):
            return DatabaseObservation(error_reason="DatabaseNotFound", transient=False,
                                       error_message=f"the database {target.url.database!r} does not exist on "
                                       f"{target.url.host or 'localhost'}:{target.url.port or 5432}: create it, or fix "
                                       "the database name in the Secret's URL (checked again every 15 s)")
        if "password authentication failed" in text or ("role" in text and "does not exist" in text):
            return DatabaseObservation(error_reason="DatabaseAuthenticationFailed", transient=False,
                                       error_message=f"cannot log in to {target.where}: {text}; check the "
                                       "credentials in the Secret")
        return DatabaseObservation(error_reason="DatabaseUnreachable", transient=True,
                                   error_message=f"cannot reach the database at {target.where}: {text}")
    except SQLAlchemyError as err:
        return DatabaseObservation(error_reason="DatabaseUnreachable", transient=True,
                                   error_message=f"cannot read {target.where}: {sanitize(str(err), target.url)}")
    finally:
        engine.dispose()
    if len(heads) > 1:
        return DatabaseObservation(error_reason="MultipleHeads", transient=False,
                                   error_message=f"the database's alembic_version holds several revisions "
                                   f"({', '.join(heads)}); merge them in the app (alembic merge) first")
    versioned = "alembic_version" in names
    return DatabaseObservation(revision=heads[0] if heads else None, versioned=versioned,
                               tables=len([n for n in names if n != "alembic_version"]))
