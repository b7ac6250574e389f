"""What the SQL scanners share, whatever their parser: severities, rules, findings, the catalog a scan reads of the
live database, and the interface of a scanner.

Each engine's scanner (``sqlscan.py`` for PostgreSQL with pglast, ``sqlscan_mysql.py`` for MySQL/MariaDB with
sqlglot) imports this module and its own parser only, and registers its rules in `RULESETS` under its engine's name;
the engines (``engines/``), the Job tools and ``check`` speak this vocabulary. Pure: no parser, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol

from .runner.results import ScanFinding

__all__ = ["DEFAULT_VERSION_TABLE", "RULESETS", "SEVERITIES", "STATEMENT_MAX", "UNRENDERABLE", "VERSION_COLUMN",
           "Catalog", "Connection", "Finding", "Rule", "Scanner", "ScannerModule", "Severity", "revision_at", "rule",
           "rule_of"]

# destructive: data is (or may be) lost, approval needed; locking: keeps the data but holds a strong lock on an
# existing table for as long as it runs, or breaks the running app (approval with spec.approval.requireForLocking);
# warning: worth a look; note: for the record (a type change the database does in its catalog only).
Severity = Literal["destructive", "locking", "warning", "note"]
SEVERITIES: Final[tuple[Severity, ...]] = ("destructive", "locking", "warning", "note")

STATEMENT_MAX: Final = 300
DEFAULT_VERSION_TABLE: Final = "alembic_version"
VERSION_COLUMN: Final = "version_num"


@dataclass(frozen=True)
class Rule:
    name: str  # kebab-case, stable
    severity: Severity
    why: str  # what goes wrong
    safely: str  # how to do it without the problem


def rule(name: str, severity: Severity, why: str, safely: str) -> tuple[str, Rule]:
    """One entry of a scanner's RULES table."""
    return name, Rule(name, severity, why, safely)


@dataclass(frozen=True)
class Finding:
    rule: str
    severity: Severity
    operation: str  # human, e.g. "DROP COLUMN orders.legacy_code"
    revision: str | None
    statement: str  # the SQL statement, trimmed to STATEMENT_MAX characters
    engine: str = "postgresql"  # whose rules: RULESETS[engine][rule]

    def describe(self) -> str:
        """The contract's form in status.plan.destructive: 'DROP COLUMN orders.legacy_code (revision 9d81aa02c4f5)'."""
        if not self.revision or f"revision {self.revision}" in self.operation:
            return self.operation
        return f"{self.operation} (revision {self.revision})"

    def to_dict(self) -> ScanFinding:
        return {"rule": self.rule, "severity": self.severity, "revision": self.revision, "operation": self.operation}


@dataclass(frozen=True)
class Catalog:
    """What a scan read of the live database before the plan runs: (table, column) -> its type as the database
    prints it, the columns a validated CHECK (col IS NOT NULL) constraint covers, and the tables' estimated sizes
    (a VALIDATE CONSTRAINT is worth a note only on a huge table)."""

    columns: Mapping[tuple[str, str], str] = field(default_factory=dict)
    not_null_checks: frozenset[tuple[str, str]] = frozenset()
    rows: Mapping[str, int] = field(default_factory=dict)  # table -> estimated rows


class Cursor(Protocol):
    def execute(self, operation: str, parameters: Any = None, /) -> object: ...

    def fetchall(self) -> Sequence[Any]: ...

    def close(self) -> None: ...


class Connection(Protocol):
    """What a catalog read needs of a DB-API connection (PEP 249), whichever driver opened it."""

    def cursor(self) -> Cursor: ...

    def rollback(self) -> None: ...


class Scanner(Protocol):
    """Scans one plan's SQL, revision after revision (``check`` drives it chunk by chunk)."""

    findings: list[Finding]

    def scan(self, sql: str, revision: str | None = None) -> list[Finding]:
        """The findings of one chunk of rendered SQL (also appended to `findings`)."""

    def deployed(self) -> None:
        """What the plan created so far is in production now, with rows: lock findings apply to it from here."""

    def at(self, catalog: Catalog) -> None:
        """The database as it really is before the next chunk: its columns replace what the scan tracked."""


class ScannerModule(Protocol):
    """A scanner's module (``sqlscan``, ``sqlscan_mysql``), as its engine hands it over (``Engine.scanning``)."""

    @property
    def RULES(self) -> Mapping[str, Rule]: ...

    def scanner(self, catalog: Catalog | None = None) -> Scanner:
        """A new scanner of one plan's SQL; `catalog`: the database before it, as far as it was read."""

    def alters_columns(self, items: Sequence[tuple[str | None, str]]) -> bool:
        """Whether the SQL changes what the catalog says of a column (its type, NOT NULL)."""

    def read_catalog(self, connection: Connection, items: Sequence[tuple[str | None, str]]) -> Catalog:
        """What a scan of `items` reads of the database, through a DB-API connection, read only."""


_RUNNING: Final = re.compile(r"^--\s*Running (upgrade|downgrade)\s+(.*?)\s*->\s*(.*?)\s*$", re.MULTILINE)


def revision_at(sql: str, revision: str | None) -> Callable[[int], str | None]:
    """The revision a statement starting at an offset of `sql` belongs to: `revision`, else the one of the last
    ``-- Running upgrade a -> b`` comment Alembic wrote before it (b; a for a downgrade)."""
    markers = [(m.start(), m.group(3) if m.group(1) == "upgrade" else m.group(2)) for m in _RUNNING.finditer(sql)]

    def at(start: int) -> str | None:
        found = revision
        if found is None:
            for pos, marked in markers:
                if pos <= start:
                    found = marked or None
        return found

    return at


# A revision the plan Job or check could not render offline: whatever the engine, its SQL is unknown.
UNRENDERABLE: Final = Rule(
    "unrenderable-revision", "destructive", "The revision could not be rendered offline (it reads the database or "
    "fails in offline mode), so its SQL is unknown.",
    "Make the revision renderable offline (see context.is_offline_mode()), or review it and approve.")

# Each scanner's rules by engine name: a finding's rule (why, safely) is RULESETS[finding.engine][finding.rule].
RULESETS: Final[dict[str, Mapping[str, Rule]]] = {}


def rule_of(finding: Finding) -> Rule:
    """The rule a finding names, in its own engine's rules (UNRENDERABLE for every engine)."""
    if finding.rule == UNRENDERABLE.name:
        return UNRENDERABLE
    return RULESETS[finding.engine][finding.rule]
