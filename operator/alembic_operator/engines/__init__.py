"""Database engines: one module per database product, each defining an `Engine` subclass that registers itself.

    engine = engines.for_url(make_url(raw))   # by the URL's backend name; UnknownEngine when none owns it
    engine.read_revision(target), engine.connect(url), engine.snapshot(db), engine.restore(db, path), ...

The interface is in ``base.py``; ``postgresql.py`` is the first engine. Adding a database means adding one module
here (it is found and imported on the first lookup), plus its tests and docs.
"""

from .base import (
    REGISTRY,
    DatabaseTarget,
    Engine,
    JobDatabase,
    Snapshot,
    UnknownEngine,
    for_backend,
    for_url,
    redact_urls,
    supported_schemes,
)

__all__ = [
    "REGISTRY",
    "DatabaseTarget",
    "Engine",
    "JobDatabase",
    "Snapshot",
    "UnknownEngine",
    "for_backend",
    "for_url",
    "locking_markdown",
    "redact_urls",
    "supported_schemes",
]


def locking_markdown() -> str:
    """docs/locking.md (make crd): PostgreSQL's scanner rules (with the document's introduction), then MySQL's."""
    from .. import sqlscan, sqlscan_mysql  # the parsers load here, for the docs only; neither scanner imports the other

    return sqlscan.markdown() + "\n" + sqlscan_mysql.markdown()
