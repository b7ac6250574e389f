"""Lint of pending revisions: render each one offline (`alembic upgrade <down>:<rev> --sql`) through the app's
env.py, with the dialect of the database it is checked against, and scan the SQL with the operator's own scanner
for that dialect (sqlscan for PostgreSQL, sqlscan_mysql for MySQL and MariaDB), rule names and all.

A type change is classified against the column's type before the revision, as the plan Job does: the live
database's (read only) for the revisions pending on it, else the scratch database's, read just before the revision
was applied; without either, the scanner follows the schema through the revisions it rendered."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from sqlalchemy import create_engine
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from .. import sqlscan, sqlscan_mysql
from .drivers import sync_url
from .model import LINT_SEVERITY, Finding
from .project import OFFLINE_URL, Project, describe


@dataclass
class Rendered:
    """The pending revisions' SQL, rendered once; scanned when the databases' column types are known."""

    items: list[tuple[str | None, str]] = field(default_factory=list)
    unrenderable: list[Finding] = field(default_factory=list)
    live: sqlscan.Catalog | None = None  # the live database before the first pending revision
    dialect: str = "postgresql"  # the SQL's: which scanner reads it

    @property
    def mysql(self) -> bool:
        return is_mysql(self.dialect)

    def altered(self, rev: str) -> bool:
        """Whether the revision changes a column's type or sets NOT NULL (its findings depend on the schema)."""
        mine = [item for item in self.items if item[0] == rev]
        return bool(sqlscan_mysql.altered_tables(mine) if self.mysql else sqlscan.altered_columns(mine))


def is_mysql(dialect: str) -> bool:
    return dialect in ("mysql", "mariadb")


def offline_url(database: URL | None) -> str:
    """The URL lint renders with: the dialect (and driver) of the database checked against, nothing else of it;
    PostgreSQL's when there is none."""
    if database is None or database.get_backend_name() == "sqlite":
        return OFFLINE_URL
    return sync_url(database).set(username="alembic-check", password=None, host="localhost", port=None,
                                  database="offline", query={}).render_as_string(hide_password=False)


def render(project: Project, revisions: Sequence[str], url: str = OFFLINE_URL) -> Rendered:
    """Render `revisions` (in upgrade order); `url` only gives the dialect (offline: nothing connects)."""
    out = Rendered(dialect=url.split("://", 1)[0].split("+", 1)[0])
    for rev in revisions:
        sc = project.revision(rev)
        if sc is None:
            continue
        try:
            out.items.append((rev, project.render_offline(sc, url)))
        except Exception as exc:
            out.unrenderable.append(_unrenderable(rev, describe(exc)))
    return out


def scan(rendered: Rendered, before: Mapping[str, sqlscan.Catalog] | None = None) -> list[Finding]:
    """Findings of the rendered revisions; `before[rev]` is the schema just before `rev` (the scratch database).

    Pending on a live database, the revisions run together at the next deployment, like a plan: a table created
    by one of them has no rows when the next one locks it. Without a live database every revision is taken as
    deployed on its own, after its predecessors have filled their tables."""
    scanner: sqlscan.Scanner | sqlscan_mysql.Scanner = sqlscan_mysql.Scanner(catalog=rendered.live) \
        if rendered.mysql else sqlscan.Scanner(catalog=rendered.live)
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


def read_catalog(url: URL, items: Iterable[tuple[str | None, str]]) -> sqlscan.Catalog | None:
    """The current types of the columns `items` alter, on a PostgreSQL, MySQL or MariaDB database (None
    elsewhere), read only."""
    if is_mysql(url.get_backend_name()):
        return _read_mysql_catalog(url, items)
    if url.get_backend_name() != "postgresql":
        return None
    tables = sorted({table for _schema, table in sqlscan.altered_columns(items)})
    if not tables:
        return sqlscan.Catalog()
    engine = create_engine(sync_url(url), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            columns = conn.exec_driver_sql(sqlscan.CATALOG_COLUMNS_SQL, {"tables": tables}).fetchall()
            checks = conn.exec_driver_sql(sqlscan.CATALOG_CHECKS_SQL, {"tables": tables}).fetchall()
            sizes = conn.exec_driver_sql(sqlscan.CATALOG_ROWS_SQL, {"tables": tables}).fetchall()
            conn.rollback()
    finally:
        engine.dispose()
    return sqlscan.catalog_from_rows(columns, checks, sizes)


def _read_mysql_catalog(url: URL, items: Iterable[tuple[str | None, str]]) -> sqlscan.Catalog:
    engine = create_engine(sync_url(url), poolclass=NullPool)
    try:
        conn = engine.raw_connection()  # the driver's own connection: sqlscan_mysql reads through DB-API
        try:
            return sqlscan_mysql.read_catalog(conn, items)
        finally:
            conn.close()
    finally:
        engine.dispose()


def _finding(found: sqlscan.Finding) -> Finding:
    rule = sqlscan.rule_of(found)
    return Finding(check="lint", rule=found.rule, severity=LINT_SEVERITY[found.severity],
                   message=f"{found.operation}: {rule.why}", revision=found.revision,
                   details=[f"SQL: {found.statement}", f"safely: {rule.safely}"])


def _unrenderable(rev: str, error: str) -> Finding:
    rule = sqlscan.RULES["unrenderable-revision"]
    return Finding(check="lint", rule=rule.name, severity=LINT_SEVERITY[rule.severity],
                   message=f"revision {rev} cannot be rendered offline ({error}), so its SQL cannot be checked",
                   revision=rev, details=[f"safely: {rule.safely}"])
