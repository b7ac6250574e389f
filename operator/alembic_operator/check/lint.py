"""Lint of pending revisions: render each one offline (`alembic upgrade <down>:<rev> --sql`) through the app's
env.py, with the dialect of the database it is checked against, and scan the SQL with that database's engine's
scanner (the one the plan Job runs), rule names and all.

A type change is classified against the column's type before the revision, as the plan Job does: the live
database's (read only) for the revisions pending on it, else the scratch database's, read just before the revision
was applied; without either, the scanner follows the schema through the revisions it rendered."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from .. import engines, sqlrules
from .drivers import sync_url
from .model import LINT_SEVERITY, Finding
from .project import OFFLINE_URL, Project, describe


@dataclass
class Rendered:
    """The pending revisions' SQL, rendered once; scanned when the databases' column types are known."""

    engine: engines.Engine[Any]  # the SQL's database: whose scanner reads it
    items: list[tuple[str | None, str]] = field(default_factory=list)
    unrenderable: list[Finding] = field(default_factory=list)
    live: sqlrules.Catalog | None = None  # the live database before the first pending revision

    def altered(self, rev: str) -> bool:
        """Whether the revision changes a column's type or sets NOT NULL (its findings depend on the schema)."""
        return self.engine.alters_columns([item for item in self.items if item[0] == rev])


def engine_of(url: URL | None) -> engines.Engine[Any] | None:
    """The engine of a database check connects to; None for one no engine owns (SQLite: check's scratch)."""
    try:
        return engines.for_url(url) if url is not None else None
    except engines.UnknownEngine:
        return None


def offline_url(database: URL | None) -> str:
    """The URL lint renders with: the dialect (and driver) of the database checked against, nothing else of it;
    PostgreSQL's when there is none, or when no engine owns it."""
    if database is None or engine_of(database) is None:
        return OFFLINE_URL
    # A new URL, not database.set(password=None, ...): set() takes None as "unchanged" and kept the password.
    return URL.create(sync_url(database).drivername, username="alembic-check", host="localhost",
                      database="offline").render_as_string(hide_password=False)


def render(project: Project, revisions: Sequence[str], url: str = OFFLINE_URL) -> Rendered:
    """Render `revisions` (in upgrade order); `url` only gives the dialect (offline: nothing connects)."""
    out = Rendered(engines.for_backend(url.split("://", 1)[0].split("+", 1)[0]))
    for rev in revisions:
        sc = project.revision(rev)
        if sc is None:
            continue
        try:
            out.items.append((rev, project.render_offline(sc, url)))
        except Exception as exc:
            out.unrenderable.append(_unrenderable(rev, describe(exc)))
    return out


def scan(rendered: Rendered, before: Mapping[str, sqlrules.Catalog] | None = None) -> list[Finding]:
    """Findings of the rendered revisions; `before[rev]` is the schema just before `rev` (the scratch database).

    Pending on a live database, the revisions run together at the next deployment, like a plan: a table created
    by one of them has no rows when the next one locks it. Without a live database every revision is taken as
    deployed on its own, after its predecessors have filled their tables."""
    scanner = rendered.engine.scanner(rendered.live)
    for number, (rev, sql) in enumerate(rendered.items):
        if number and rendered.live is None:
            scanner.deployed()
        if before and rev is not None and rev in before:
            scanner.at(before[rev])
        scanner.scan(sql, rev)
    return [*(_finding(f) for f in scanner.findings), *rendered.unrenderable]


def lint(project: Project, revisions: Sequence[str], url: str = OFFLINE_URL) -> list[Finding]:
    """Findings for `revisions` (in upgrade order) from their SQL alone."""
    return scan(render(project, revisions, url))


def read_catalog(url: URL, items: Iterable[tuple[str | None, str]]) -> sqlrules.Catalog | None:
    """The current types of the columns `items` alter, read only by the database's engine through the URL's own
    (synchronous) driver; None for a database no engine owns."""
    engine = engine_of(url)
    if engine is None:
        return None
    connections = create_engine(sync_url(url), poolclass=NullPool)
    try:
        conn = connections.raw_connection()  # the driver's own connection: the engine reads through DB-API
        try:
            return engine.catalog(conn, list(items))
        finally:
            conn.close()
    finally:
        connections.dispose()


def _finding(found: sqlrules.Finding) -> Finding:
    rule = sqlrules.rule_of(found)
    return Finding(check="lint", rule=found.rule, severity=LINT_SEVERITY[found.severity],
                   message=f"{found.operation}: {rule.why}", revision=found.revision,
                   details=[f"SQL: {found.statement}", f"safely: {rule.safely}"])


def _unrenderable(rev: str, error: str) -> Finding:
    rule = sqlrules.UNRENDERABLE
    return Finding(check="lint", rule=rule.name, severity=LINT_SEVERITY[rule.severity],
                   message=f"revision {rev} cannot be rendered offline ({error}), so its SQL cannot be checked",
                   revision=rev, details=[f"safely: {rule.safely}"])
