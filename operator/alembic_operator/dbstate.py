"""Read the database the way the operator sees it: the URL from the user's Secret, the revision from alembic_version.

The URL is a secret. It is never logged or returned; error messages name the Secret and the host, never the URL,
and `sanitize()` scrubs any text that came from elsewhere (a Job's log, a driver's error) before it reaches status
or an Event.
"""

from __future__ import annotations

import base64

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from . import engines, reasons
from .engines import DatabaseTarget
from .observation import DatabaseObservation
from .reasons import Reason

__all__ = ["DatabaseError", "DatabaseTarget", "database_key", "decode_secret_value", "parse_url", "read_revision",
           "sanitize"]

URL_EXAMPLE = "postgresql+psycopg://user:password@host:5432/dbname"


class DatabaseError(Exception):
    def __init__(self, reason: Reason, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.transient = transient

    def observation(self) -> DatabaseObservation:
        return DatabaseObservation(error_reason=self.reason, error_message=self.message, transient=self.transient)


def database_key(url: URL) -> str:
    return engines.for_url(url).database_key(url)


def parse_url(raw: str, secret: str, key: str) -> DatabaseTarget:
    """Turn the Secret's value into a URL, with an error that says what to fix and shows nothing of the value."""
    try:
        url = make_url(raw.strip())
        url.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError) as err:
        kind = "an unknown database driver" if isinstance(err, NoSuchModuleError) else "not a valid SQLAlchemy URL"
        raise DatabaseError(
            reasons.INVALID_DATABASE_URL,
            f"Secret {secret} key {key} holds {kind}; it must be a SQLAlchemy URL such as {URL_EXAMPLE}",
        ) from None
    try:
        engine = engines.for_url(url)
    except engines.UnknownEngine as err:
        raise DatabaseError(
            reasons.INVALID_DATABASE_URL,
            f"Secret {secret} key {key} points at a {err.backend} database; {err.explain()} ({URL_EXAMPLE})",
        ) from None
    problem = engine.problem(url)
    if problem:
        raise DatabaseError(reasons.INVALID_DATABASE_URL, f"Secret {secret} key {key}: the URL {problem} "
                            f"({engine.url_example})")
    return DatabaseTarget(url=url, key=engine.database_key(url))


def decode_secret_value(data: dict[str, str] | None, secret: str, key: str) -> str:
    if not data or key not in data:
        raise DatabaseError(reasons.SECRET_NOT_FOUND, f"Secret {secret} has no key {key}: add it, or fix "
                            "spec.database.urlSecretRef.key")
    try:
        return base64.b64decode(data[key]).decode()
    except (ValueError, UnicodeDecodeError):
        raise DatabaseError(reasons.INVALID_DATABASE_URL, f"Secret {secret} key {key} is not UTF-8 text") from None


def sanitize(text: str, *urls: URL | None) -> str:
    """Remove credentials from free text: the URLs' passwords, full URLs, any user:password@ pair, password=..."""
    return engines.redact_urls(text, *urls)


def read_revision(target: DatabaseTarget) -> DatabaseObservation:
    """The database's current Alembic revision (None when it has none), by its engine. Blocking: run it in a thread."""
    return target.engine.read_revision(target)
