"""Find destructive and locking operations in the SQL Alembic renders offline for PostgreSQL.

``alembic upgrade a:b --sql`` prints the statements an upgrade would run: ``BEGIN;``, ``-- Running upgrade a -> b``
comments, the DDL/DML of each revision and the ``alembic_version`` bookkeeping, each statement ended by ``;``. This
module parses that text with **pglast**, which embeds PostgreSQL's own parser (libpg_query): it accepts exactly
what the server accepts (dollar quoting, ``USING`` clauses, multi-action ``ALTER TABLE``, PL/pgSQL bodies) and
gives the server's own parse tree (``AlterTableCmd.subtype == AT_DropColumn`` and so on), so no rule depends on
how a statement happens to be spelled. sqlglot is a multi-dialect transpiler: it parses PostgreSQL DDL into a
generic tree and falls back to opaque ``Command`` nodes for what it does not model, which is the wrong failure
mode for a safety gate.

    findings = scan_sql(sql, revision="9d81aa02c4f5")
    [f.describe() for f in findings if f.severity == "destructive"]
    # ['DROP COLUMN orders.legacy_code (revision 9d81aa02c4f5)']

Pure: no I/O, no database (the caller may hand over a ``Catalog``: the live column types it read before the plan).
The rules are listed in ``RULES`` (name, severity, why, how to do it safely; ``docs/locking.md`` is generated from
it); rule names are stable (docs, suppression comments and the CI lint refer to them).

Findings that are true: a column type change is judged against the column's type before it (the plan's own SQL
when the plan created or changed the column, else the catalog): a widening PostgreSQL does in the catalog is a
note, a lossless rewrite a locking finding, and only a narrowing, a lossy cast or an unknown type is destructive.

Conservative by design: SQL that does not parse is a destructive finding (``unparseable-sql``), and SQL that
cannot be analysed statically (dynamic ``EXECUTE`` in a ``DO`` block, a ``DO`` block in another language) is
a destructive finding too (``opaque-sql``): a human must look. Locking findings are not raised for tables
created earlier in the same plan (nobody else uses them yet); destructive rules always fire.

Not analysed: what a called function or procedure does (``SELECT f()``, ``CALL p()``), and the volatility of
user-defined functions used as column defaults (only well-known volatile built-ins are recognised).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import pglast
from pglast import ast, enums, parser
from pglast.stream import RawStream

from . import sqlrules
from .sqlrules import RULESETS, UNRENDERABLE, Catalog, Connection, Finding, Rule, Severity, rule_of

__all__ = [
    "CATALOG_CHECKS_SQL",
    "CATALOG_COLUMNS_SQL",
    "CATALOG_ROWS_SQL",
    "RULES",
    "RULESETS",
    "SEVERITIES",
    "Catalog",
    "ColumnType",
    "Finding",
    "Rule",
    "Scanner",
    "Severity",
    "altered_columns",
    "alters_columns",
    "catalog_from_rows",
    "classify_type_change",
    "parse_type",
    "read_catalog",
    "rule_of",
    "scan_revisions",
    "scan_sql",
    "scanner",
]

STATEMENT_MAX: Final = sqlrules.STATEMENT_MAX
DEFAULT_VERSION_TABLE: Final = sqlrules.DEFAULT_VERSION_TABLE
VERSION_COLUMN: Final = sqlrules.VERSION_COLUMN
SEVERITIES: Final = sqlrules.SEVERITIES
_rule = sqlrules.rule


RULES: Final[dict[str, Rule]] = dict(
    [
        # --- destructive: data is lost (or may be); needs approval -------------------------------------------------
        _rule("drop-table", "destructive", "DROP TABLE deletes the table and every row in it.",
              "Stop using the table in a release first; drop it in a later migration once nothing reads it, "
              "after a backup (approve the plan)."),
        _rule("drop-column", "destructive", "DROP COLUMN deletes the column's values in every row; the running "
              "(old) app version still selects the column and breaks.",
              "Expand/contract: release an app version that no longer uses the column, then drop it in a later "
              "migration (approve the plan)."),
        _rule("truncate", "destructive", "TRUNCATE deletes every row of the table.",
              "Delete only what must go, with a WHERE clause, or approve the plan."),
        _rule("alter-column-type", "destructive", "Changing a column's type to one that cannot hold every current "
              "value (a narrowing such as varchar(20) -> varchar(9), a lossy cast such as varchar -> integer, or a "
              "USING expression) truncates, rounds or refuses existing values, and rewrites the table under an "
              "ACCESS EXCLUSIVE lock; also raised when the column's current type is not known.",
              "Add a new column of the new type, backfill it in batches, switch the app, then drop the old column."),
        _rule("drop-schema", "destructive", "DROP SCHEMA deletes the schema (with CASCADE: every table in it).",
              "Move what must survive out of the schema first, or approve the plan."),
        _rule("drop-database", "destructive", "DROP DATABASE deletes a whole database.",
              "Do not drop databases from migrations; do it by hand."),
        _rule("drop-type", "destructive", "DROP TYPE/DOMAIN fails while columns use it; with CASCADE it deletes "
              "those columns and their values.",
              "Migrate the columns off the type first; drop it without CASCADE."),
        _rule("drop-sequence", "destructive", "DROP SEQUENCE loses the sequence's position; ids generated later "
              "may collide with existing ones.",
              "Keep the sequence, or approve the plan."),
        _rule("drop-cascade", "destructive", "DROP ... CASCADE also drops whatever depends on the object, which "
              "PostgreSQL decides at run time (columns using a type, generated columns using a function, ...); "
              "not raised for views and indexes, whose dependents hold no rows.",
              "Drop the dependents explicitly, then the object without CASCADE."),
        _rule("drop-owned", "destructive", "DROP OWNED BY drops every object the role owns, tables included.",
              "Drop the objects explicitly."),
        _rule("delete-without-where", "destructive", "DELETE without WHERE deletes every row of the table.",
              "Add a WHERE clause, or approve the plan."),
        _rule("update-without-where", "destructive", "UPDATE without WHERE overwrites the column(s) in every row; "
              "the previous values are lost.",
              "Add a WHERE clause, or copy the values to a new column first, or approve the plan."),
        _rule("unparseable-sql", "destructive", "The SQL does not parse as PostgreSQL, so it cannot be checked.",
              "Fix the SQL (it would fail on the server too), or review it and approve the plan."),
        _rule("opaque-sql", "destructive", "SQL built at run time (EXECUTE in a DO block) or code in a non-SQL "
              "language cannot be analysed statically.",
              "Write the statements out as plain SQL, or review the code and approve the plan."),
        (UNRENDERABLE.name, UNRENDERABLE),
        # --- locking: keeps the data, but blocks the running app on an existing table while it runs -----------------
        _rule("create-index-not-concurrently", "locking", "CREATE INDEX without CONCURRENTLY blocks writes to the "
              "table (SHARE lock) for as long as the build takes.",
              "CREATE INDEX CONCURRENTLY in an autocommit block: with op.get_context().autocommit_block(): "
              "op.create_index(..., postgresql_concurrently=True)."),
        _rule("drop-index", "locking", "DROP INDEX without CONCURRENTLY takes an ACCESS EXCLUSIVE lock on the "
              "table; queries that used the index may get slow.",
              "DROP INDEX CONCURRENTLY in an autocommit block (op.drop_index(..., postgresql_concurrently=True)), "
              "after checking nothing needs the index."),
        _rule("add-column-volatile-default", "locking", "A column added with a volatile DEFAULT (random(), "
              "gen_random_uuid(), clock_timestamp(), nextval()), a serial/identity type or a STORED generated "
              "expression rewrites the whole table under an ACCESS EXCLUSIVE lock (a constant or now() default "
              "does not, on PostgreSQL 11 and later).",
              "Add the column without the default, then SET DEFAULT for new rows and backfill old rows in batches."),
        _rule("set-not-null", "locking", "SET NOT NULL scans the whole table under an ACCESS EXCLUSIVE lock (unless "
              "a validated CHECK (col IS NOT NULL) constraint proves it); it fails if a row has NULL.",
              "ADD CONSTRAINT ... CHECK (col IS NOT NULL) NOT VALID, VALIDATE CONSTRAINT, then SET NOT NULL "
              "(PostgreSQL 12+ skips the scan) and drop the CHECK."),
        _rule("alter-column-type-rewrite", "locking", "This type change keeps every value (int -> bigint, "
              "timestamp -> timestamptz, a type -> text), but PostgreSQL rewrites the table and its indexes under "
              "an ACCESS EXCLUSIVE lock: reads and writes wait for the whole rewrite.",
              "Add a column of the new type, backfill it in batches (a trigger keeps it in sync), then swap the "
              "columns in a short migration."),
        _rule("add-foreign-key", "locking", "Adding a FOREIGN KEY validates every row while holding a SHARE ROW "
              "EXCLUSIVE lock on both tables (writes blocked).",
              "ADD CONSTRAINT ... FOREIGN KEY ... NOT VALID, then VALIDATE CONSTRAINT in a later revision."),
        _rule("add-check-constraint", "locking", "Adding a CHECK constraint scans the whole table under an ACCESS "
              "EXCLUSIVE lock.",
              "ADD CONSTRAINT ... CHECK (...) NOT VALID, then VALIDATE CONSTRAINT in a later revision."),
        _rule("add-unique-constraint", "locking", "Adding a PRIMARY KEY, UNIQUE or EXCLUDE constraint builds its "
              "index under an ACCESS EXCLUSIVE lock; it fails on duplicates.",
              "CREATE UNIQUE INDEX CONCURRENTLY (autocommit block), then ADD CONSTRAINT ... USING INDEX."),
        _rule("refresh-materialized-view", "locking", "REFRESH MATERIALIZED VIEW without CONCURRENTLY holds an "
              "ACCESS EXCLUSIVE lock on the view (its readers wait) for as long as the query runs.",
              "REFRESH MATERIALIZED VIEW CONCURRENTLY (needs a unique index on the view), or refresh outside "
              "migrations."),
        _rule("table-rewrite", "locking", "VACUUM FULL, CLUSTER, SET TABLESPACE and SET LOGGED/UNLOGGED rewrite "
              "the table under an ACCESS EXCLUSIVE lock.",
              "Run maintenance outside migrations (pg_repack), in a maintenance window."),
        _rule("exclusive-lock", "locking", "LOCK TABLE in a strong mode, or REINDEX without CONCURRENTLY, blocks "
              "the app for the rest of the transaction / the rebuild.",
              "Avoid explicit locks in migrations; use REINDEX CONCURRENTLY in an autocommit block."),
        _rule("rename-table", "locking", "Renaming a table (or view, or moving it to another schema) takes an ACCESS "
              "EXCLUSIVE lock and breaks the running (old) app version, which still uses the old name.",
              "Create the new table (or an updatable view under the new name), switch the app, drop the old name "
              "in a later release."),
        _rule("rename-column", "locking", "Renaming a column takes an ACCESS EXCLUSIVE lock and breaks the running "
              "(old) app version, which still uses the old name.",
              "Add the new column, write both, backfill, switch reads, drop the old column in a later release."),
        # --- warnings: worth a look, no lock held for long -----------------------------------------------------------
        _rule("rename-object", "warning", "Renaming a schema, type, enum value, sequence or function breaks the "
              "running (old) app version if it refers to the old name.",
              "Add the new name alongside the old one and remove the old one in a later release."),
        _rule("add-column-not-null-without-default", "warning", "ADD COLUMN ... NOT NULL without a DEFAULT fails "
              "on a table that has rows, and the old app's INSERTs fail once it exists.",
              "Add the column nullable (or with a constant DEFAULT), backfill, then set NOT NULL safely."),
        _rule("drop-view", "warning", "DROP VIEW / MATERIALIZED VIEW breaks readers of the view (a materialized "
              "view's rows are derived: REFRESH recomputes them).",
              "Stop using the view in a release first, then drop it."),
        _rule("delete-rows", "warning", "DELETE with a WHERE clause deletes rows: intended in a data migration, "
              "but the rows are gone unless the backup is restored.",
              "Check the WHERE clause; copy the rows aside first if they may be needed."),
        # --- notes: for the record ------------------------------------------------------------------------------------
        _rule("alter-column-type-widening", "note", "A type change PostgreSQL does in the catalog alone: the same "
              "type, varchar(n) -> varchar(m >= n) or text, numeric(p, s) -> numeric(q >= p, s), a finer timestamp "
              "precision. No value changes, no rewrite; the lock is brief.",
              "Nothing to do."),
        _rule("validate-constraint", "note", "VALIDATE CONSTRAINT scans the whole table under SHARE UPDATE "
              "EXCLUSIVE: reads and writes go on, but other DDL, VACUUM and ANALYZE of the table wait; on a huge "
              "table (a million rows or more, or of unknown size) it runs long.",
              "Validate in its own revision with transaction_per_migration, so that no stronger lock is held "
              "during the scan."),
    ]
)

RULESETS["postgresql"] = RULES


# Built-in functions that are VOLATILE: used as a column's DEFAULT on ADD COLUMN they force a table rewrite.
VOLATILE_FUNCTIONS: Final = frozenset({
    "random", "random_normal", "setseed", "gen_random_uuid", "uuidv4", "uuidv7", "uuid_generate_v1",
    "uuid_generate_v1mc", "uuid_generate_v4", "gen_random_bytes", "clock_timestamp", "timeofday", "nextval",
})
SERIAL_TYPES: Final = frozenset({"serial", "serial4", "bigserial", "serial8", "smallserial", "serial2"})
# A VALIDATE CONSTRAINT on a table of at least this many rows (as pg_class.reltuples estimates it) gets a note;
# of an unknown size, too.
HUGE_ROWS: Final = 1_000_000
# LOCK TABLE modes (lockdefs.h) that block the app's writes: SHARE (5) and stronger.
_STRONG_LOCK_MODE: Final = 5

_DELIMITER = re.compile(r";[ \t]*(?:\n|$)")  # Alembic's offline renderer ends every statement with ";\n\n"
_PLPGSQL_TAG: Final = "$alembic_operator_do$"
# Only views and constraints can depend on these: CASCADE loses no rows.
_CASCADE_HARMLESS: Final = frozenset({"drop-view", "drop-index"})


# --- statements ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Statement:
    start: int  # character offset in the scanned text
    text: str
    node: Any  # a pglast.ast.Node, or None when the text does not parse
    error: str | None = None


def _statements(sql: str) -> list[_Statement]:
    """Split and parse. Whole text first (PostgreSQL's own splitting); if some statement is broken, parse the
    statements one by one so that the broken one becomes a finding and the others are still checked."""
    try:
        return list(_parsed(sql, 0))
    except parser.ParseError:
        pass
    try:
        slices = list(parser.split(sql, with_parser=False, only_slices=True))
    except parser.ParseError:  # the scanner itself failed (an unterminated quote): use Alembic's delimiter
        slices, pos = [], 0
        for m in _DELIMITER.finditer(sql):
            slices.append(slice(pos, m.start()))
            pos = m.end()
        slices.append(slice(pos, len(sql)))
    out: list[_Statement] = []
    for piece in slices:
        text = sql[piece]
        if not _strip_comments(text):
            continue
        try:
            out.extend(_parsed(text, piece.start))
        except parser.ParseError as exc:
            out.append(_Statement(piece.start, text, None, str(exc.args[0]) if exc.args else str(exc)))
    return out


def _parsed(sql: str, offset: int) -> Iterator[_Statement]:
    for raw in parser.parse_sql(sql):
        start = raw.stmt_location or 0
        end = start + raw.stmt_len if raw.stmt_len else len(sql)
        yield _Statement(offset + start, sql[start:end], raw.stmt)


def _strip_comments(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if not line.lstrip().startswith("--")]
    return "\n".join(lines).strip()


def _trim(text: str) -> str:
    text = _strip_comments(text) or text.strip()
    return text if len(text) <= STATEMENT_MAX else text[: STATEMENT_MAX - 1] + "…"


# --- names --------------------------------------------------------------------------------------------------------


def _rel(rv: Any) -> str:
    """A RangeVar as written: 'schema.table' only when a schema is present."""
    if rv is None:
        return "?"
    return f"{rv.schemaname}.{rv.relname}" if getattr(rv, "schemaname", None) else str(rv.relname)


def _names(items: Any) -> str:
    """A qualified name given as a sequence of String nodes."""
    return ".".join(str(getattr(i, "sval", i)) for i in items or ())


def _object(obj: Any) -> str:
    if isinstance(obj, ast.String):
        return str(obj.sval)
    if isinstance(obj, ast.TypeName):
        return _names(obj.names)
    if isinstance(obj, ast.ObjectWithArgs):
        return _names(obj.objname)
    if isinstance(obj, (list, tuple)):
        return _names(obj)
    return _deparse(obj)


def _deparse(node: Any) -> str:
    try:
        return str(RawStream()(node))
    except Exception:  # deparsing is for display only
        return "?"


def _key(rel: str) -> str:
    return rel.rsplit(".", 1)[-1]


def _walk(node: Any) -> Iterator[Any]:
    """Every pglast node in the tree, the root included (for DML hidden in CTEs)."""
    if isinstance(node, (list, tuple)):
        for item in node:
            yield from _walk(item)
    elif isinstance(node, ast.Node):
        yield node
        for attr in getattr(type(node), "__slots__", ()):
            value = getattr(node, attr, None)
            if isinstance(value, (ast.Node, list, tuple)):
                yield from _walk(value)


def _touches_only_version_num(node: Any) -> bool:
    """Alembic's bookkeeping in a version table with a custom name: DML that only names the version_num column
    (INSERT INTO t (version_num) ..., UPDATE t SET version_num=... WHERE t.version_num = ..., DELETE ... WHERE
    t.version_num = ...)."""
    if isinstance(node, ast.InsertStmt):
        names = {str(c.name) for c in node.cols or ()}
    elif isinstance(node, ast.UpdateStmt):
        names = {str(t.name) for t in node.targetList or ()}
        if node.whereClause is None:
            return False
        names |= _column_names(node.whereClause)
    elif isinstance(node, ast.DeleteStmt):
        if node.whereClause is None:
            return False
        names = _column_names(node.whereClause)
    else:
        return False
    return names == {VERSION_COLUMN}


def _column_names(node: Any) -> set[str]:
    fields = [tuple(ref.fields or ()) for ref in _walk(node) if isinstance(ref, ast.ColumnRef)]
    return {str(getattr(f[-1], "sval", "*")) if f else "*" for f in fields}


def _is(value: Any, member: Any) -> bool:
    return bool(value == member)


def _plain_cast(expr: Any, column: str, target: ColumnType | None) -> bool:
    """USING col, or USING col::<the new type> (what Alembic's postgresql_using often is): the implicit conversion."""
    if isinstance(expr, ast.TypeCast):
        cast_to = column_type(expr.typeName)
        if cast_to is None or target is None or cast_to.name != target.name:
            return False
        expr = expr.arg
    return isinstance(expr, ast.ColumnRef) and [str(getattr(f, "sval", "")) for f in expr.fields or ()] == [column]


# --- column types: is a type change a widening, a rewrite or a loss? -----------------------------------------------


@dataclass(frozen=True)
class ColumnType:
    """A column's type as PostgreSQL's parser names it: ('int4', ()), ('varchar', (250,)), ('numeric', (10, 2))."""

    name: str  # without pg_catalog: int4, varchar, bpchar, numeric, timestamptz, text, or a user type (schema.name)
    mods: tuple[int, ...] = ()
    array: int = 0  # dimensions

    def __str__(self) -> str:
        mods = f"({', '.join(str(m) for m in self.mods)})" if self.mods else ""
        return f"{_SHOWN.get(self.name, self.name)}{mods}" + "[]" * self.array


_SHOWN: Final = {"int2": "smallint", "int4": "integer", "int8": "bigint", "float4": "real",
                 "float8": "double precision", "bpchar": "char", "bool": "boolean"}


SERIAL_ALIASES: Final = {"serial": "int4", "serial4": "int4", "bigserial": "int8", "serial8": "int8",
                         "smallserial": "int2", "serial2": "int2"}


def column_type(type_name: Any) -> ColumnType | None:
    """A pglast TypeName as a ColumnType; None for %TYPE references and modifiers that are not constants."""
    if type_name is None or getattr(type_name, "pct_type", False):
        return None
    names = [str(getattr(n, "sval", n)) for n in type_name.names or ()]
    if names[:1] == ["pg_catalog"]:
        names = names[1:]
    mods: list[int] = []
    for mod in type_name.typmods or ():
        value = getattr(getattr(mod, "val", None), "ival", None)
        if not isinstance(value, int):
            return None
        mods.append(value)
    name = ".".join(names).lower()
    return ColumnType(SERIAL_ALIASES.get(name, name), tuple(mods), len(type_name.arrayBounds or ()))


def parse_type(text: str) -> ColumnType | None:
    """A type as format_type() prints it ('character varying(250)', 'timestamp with time zone'); None if unparsable."""
    try:
        [raw] = parser.parse_sql(f"SELECT NULL::{text}")
        stmt: Any = raw.stmt
        return column_type(stmt.targetList[0].val.typeName)
    except Exception:
        return None


TypeVerdict = Literal["same", "widening", "rewrite", "lossy", "unknown"]

_STRINGS: Final = frozenset({"text", "varchar"})  # binary-compatible with each other
# Types whose every value has a text form that reads back as the same value.
_TEXT_OUT: Final = frozenset({"int2", "int4", "int8", "numeric", "float4", "float8", "bool", "uuid", "date",
                              "timestamp", "timestamptz", "time", "timetz", "interval", "bpchar", "json", "jsonb",
                              "inet", "cidr", "macaddr", "money"})
# Conversions that keep every value but rewrite the table (with the new type's modifiers checked below).
_LOSSLESS_REWRITES: Final = frozenset({
    ("int2", "int4"), ("int2", "int8"), ("int4", "int8"), ("int2", "numeric"), ("int4", "numeric"),
    ("int8", "numeric"), ("int2", "float4"), ("int2", "float8"), ("int4", "float8"), ("float4", "float8"),
    ("timestamp", "timestamptz"), ("timestamptz", "timestamp"), ("date", "timestamp"), ("date", "timestamptz"),
    ("varchar", "bpchar"),
})
_DIGITS: Final = {"int2": 5, "int4": 10, "int8": 19}  # integer digits a numeric needs to hold every value
_TIMES: Final = frozenset({"timestamp", "timestamptz", "time", "timetz", "interval"})


def classify_type_change(old: ColumnType | None, new: ColumnType | None, using: bool = False) -> TypeVerdict:
    """What ALTER COLUMN ... TYPE does to the values already there, given the column's current type.

    same / widening: PostgreSQL changes only the catalog (no rewrite, no value changes); rewrite: every value
    converts without loss but the table is rewritten under ACCESS EXCLUSIVE; lossy: values may be cut, rounded or
    refused (a narrowing, text -> integer, any USING expression); unknown: the current type is not known.
    """
    if old is None or new is None:
        return "unknown"
    if using or old.array != new.array:
        return "lossy"  # a USING expression can compute anything from the old value
    if old == new:
        return "same"
    a, b = old.name, new.name
    if a == b:
        return _same_name(a, old.mods, new.mods)
    if a in _STRINGS and b in _STRINGS:  # varchar(n) <-> text: catalog only, unless it gains a length limit
        return "lossy" if b == "varchar" and new.mods else "widening"
    if a == "cidr" and b == "inet":
        return "widening"
    if b in _STRINGS and a in _TEXT_OUT and not (b == "varchar" and new.mods):
        return "rewrite"  # every value has a text form (char(n) loses only its pad spaces)
    if (a, b) in _LOSSLESS_REWRITES:
        if b == "numeric" and new.mods:  # int -> numeric(p, s): lossless when p - s holds every digit
            precision, scale = (*new.mods, 0)[:2]
            return "rewrite" if precision - scale >= _DIGITS[a] else "lossy"
        if b == "bpchar":  # varchar(n) -> char(m >= n) pads; anything shorter cuts
            return "rewrite" if old.mods and new.mods and new.mods[0] >= old.mods[0] else "lossy"
        if b in _TIMES and _precision(new) < _precision(old):
            return "lossy"
        return "rewrite"
    return "lossy"


def _precision(t: ColumnType) -> int:
    return t.mods[0] if t.mods else 6


def _same_name(name: str, old: tuple[int, ...], new: tuple[int, ...]) -> TypeVerdict:
    if name in ("varchar", "varbit"):
        return "widening" if not new or (old and new[0] >= old[0]) else "lossy"
    if name == "bpchar":  # char(n) -> char(m > n) pads every value: a rewrite
        return "rewrite" if old and new and new[0] > old[0] else "lossy"
    if name == "numeric":
        if not new:
            return "widening"
        if not old:
            return "lossy"
        p1, s1 = (*old, 0)[:2]
        p2, s2 = (*new, 0)[:2]
        if s2 == s1 and p2 >= p1:
            return "widening"
        return "rewrite" if s2 >= s1 and p2 - s2 >= p1 - s1 else "lossy"
    if name in _TIMES:
        return "widening" if (new[0] if new else 6) >= (old[0] if old else 6) else "lossy"
    return "lossy"


_VERDICT_WORDS: Final = {
    "same": "the same type: nothing changes",
    "widening": "a widening PostgreSQL does without a rewrite",
    "rewrite": "every value is kept, but the table is rewritten",
    "lossy": "a narrowing or lossy cast",
    "unknown": "the current type is not known",
}


# --- the scanner --------------------------------------------------------------------------------------------------


@dataclass
class Scanner:
    """Scans one plan's SQL, revision after revision, remembering what the plan itself creates (no lock warnings
    for those: nothing else uses them yet)."""

    allowed: Collection[str] = frozenset()
    version_table: str = DEFAULT_VERSION_TABLE
    catalog: Catalog | None = None  # the live database before the plan, as far as it was read
    findings: list[Finding] = field(default_factory=list)
    _created_tables: set[str] = field(default_factory=set)
    _created_indexes: set[str] = field(default_factory=set)  # on tables this plan created
    # Column types as the plan leaves them so far (table, column) -> type (None: unknown), over the catalog's.
    _types: dict[tuple[str, str], ColumnType | None] = field(default_factory=dict)
    # CHECK (col IS NOT NULL) constraints the plan added: name -> ((table, column), validated).
    _not_null_checks: dict[str, tuple[tuple[str, str], bool]] = field(default_factory=dict)

    def column(self, table: str, column: str) -> ColumnType | None:
        """The column's type before the statement at hand: as the plan left it, else as the live database has it."""
        key = (_key(table), column)
        if key in self._types:
            return self._types[key]
        text = self.catalog.columns.get(key) if self.catalog is not None else None
        return parse_type(text) if text else None

    def deployed(self) -> None:
        """What the plan created so far is now in production, with rows: the next chunk (a revision deployed on
        its own, as check assumes without a live database) gets lock findings for it too."""
        self._created_tables.clear()
        self._created_indexes.clear()

    def at(self, catalog: Catalog) -> None:
        """The database as it really is before the next chunk (check's scratch database): its tables' columns
        replace what the plan tracked so far."""
        tables = {table for table, _column in catalog.columns}
        self._types = {key: value for key, value in self._types.items() if key[0] not in tables}
        self.catalog = catalog

    def _proven_not_null(self, table: str, column: str) -> bool:
        key = (_key(table), column)
        if any(k == key and ok for k, ok in self._not_null_checks.values()):
            return True
        return self.catalog is not None and key in self.catalog.not_null_checks

    def scan(self, sql: str, revision: str | None = None) -> list[Finding]:
        """Scan one chunk of SQL; return (and accumulate in ``findings``) what it found."""
        at = sqlrules.revision_at(sql, revision)
        new: list[Finding] = []
        for stmt in _statements(sql):
            new.extend(self._statement(stmt, at(stmt.start)))
        new = [f for f in new if f.rule not in self.allowed]
        self.findings.extend(new)
        return new

    # one statement -> findings

    def _statement(self, stmt: _Statement, rev: str | None, inner: bool = False) -> list[Finding]:
        out: list[Finding] = []
        text = _trim(stmt.text)

        def add(rule: str, operation: str) -> None:
            out.append(Finding(rule, RULES[rule].severity, operation, rev, text))

        node = stmt.node
        if node is None:
            if inner:
                add("opaque-sql", f"unparseable SQL in a DO block ({stmt.error})")
            else:
                add("unparseable-sql", f"unparseable SQL ({stmt.error})")
            return out
        if self._bookkeeping(node):
            return out

        handler = getattr(self, f"_on_{type(node).__name__}", None)
        if handler is not None:
            handler(node, add, rev)
        # DML anywhere in the tree (top level or in a data-modifying CTE)
        for sub in _walk(node):
            if isinstance(sub, ast.DeleteStmt) and not self._is_version(sub.relation):
                if sub.whereClause is None:
                    add("delete-without-where", f"DELETE FROM {_rel(sub.relation)} without WHERE")
                else:
                    add("delete-rows", f"DELETE FROM {_rel(sub.relation)} WHERE ...")
            elif (isinstance(sub, ast.UpdateStmt) and not self._is_version(sub.relation)
                  and sub.whereClause is None):
                cols = ", ".join(str(t.name) for t in sub.targetList or () if getattr(t, "name", None))
                add("update-without-where", f"UPDATE {_rel(sub.relation)} SET {cols} without WHERE")
        return out

    def _is_version(self, rv: Any) -> bool:
        return rv is not None and getattr(rv, "relname", None) == self.version_table

    def _bookkeeping(self, node: Any) -> bool:
        """Alembic's own alembic_version statements (and BEGIN/COMMIT) are not the migration."""
        if isinstance(node, ast.TransactionStmt):
            return True
        if isinstance(node, (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.CreateStmt, ast.AlterTableStmt)):
            return self._is_version(node.relation) or _touches_only_version_num(node)
        if isinstance(node, ast.DropStmt) and _is(node.removeType, enums.ObjectType.OBJECT_TABLE):
            return all(_key(_object(o)) == self.version_table for o in node.objects or ())
        if isinstance(node, ast.TruncateStmt):
            return all(self._is_version(r) for r in node.relations or ())
        return False

    def _new(self, rel: str) -> bool:
        return _key(rel) in self._created_tables

    # creations (remembered) ------------------------------------------------------------------------------------

    def _on_CreateStmt(self, node: Any, add: Any, rev: str | None) -> None:
        table = _key(_rel(node.relation))
        self._created_tables.add(table)
        for element in node.tableElts or ():
            if isinstance(element, ast.ColumnDef):
                self._types[(table, str(element.colname))] = column_type(element.typeName)

    def _on_CreateTableAsStmt(self, node: Any, add: Any, rev: str | None) -> None:
        if node.into is not None:
            self._created_tables.add(_key(_rel(node.into.rel)))

    def _on_IndexStmt(self, node: Any, add: Any, rev: str | None) -> None:
        rel = _rel(node.relation)
        if self._new(rel):
            if node.idxname:
                self._created_indexes.add(_key(str(node.idxname)))
        elif not node.concurrent:
            kind = "UNIQUE INDEX" if node.unique else "INDEX"
            add("create-index-not-concurrently", f"CREATE {kind} {node.idxname or ''} ON {rel}".replace("  ", " "))

    # drops -----------------------------------------------------------------------------------------------------

    def _on_DropStmt(self, node: Any, add: Any, rev: str | None) -> None:
        ot = enums.ObjectType
        kind = node.removeType
        cascade = _is(node.behavior, enums.DropBehavior.DROP_CASCADE)
        verbs = {ot.OBJECT_TABLE: ("drop-table", "DROP TABLE"), ot.OBJECT_SCHEMA: ("drop-schema", "DROP SCHEMA"),
                 ot.OBJECT_TYPE: ("drop-type", "DROP TYPE"), ot.OBJECT_DOMAIN: ("drop-type", "DROP DOMAIN"),
                 ot.OBJECT_SEQUENCE: ("drop-sequence", "DROP SEQUENCE"), ot.OBJECT_VIEW: ("drop-view", "DROP VIEW"),
                 ot.OBJECT_MATVIEW: ("drop-view", "DROP MATERIALIZED VIEW"),
                 ot.OBJECT_INDEX: ("drop-index", "DROP INDEX")}
        for obj in node.objects or ():
            name = _object(obj)
            rule, verb = verbs.get(kind, (None, f"DROP {_object_kind(kind)}"))
            if rule == "drop-table" and _key(name) == self.version_table:
                continue
            if rule == "drop-table":
                self._created_tables.discard(_key(name))
                for key in [k for k in self._types if k[0] == _key(name)]:
                    self._types[key] = None
            if rule == "drop-index" and (node.concurrent or _key(name) in self._created_indexes):
                rule = None
            if rule is not None:
                add(rule, f"{verb} {name}" + (" CASCADE" if cascade else ""))
            if cascade and rule not in _CASCADE_HARMLESS and (rule is None or RULES[rule].severity != "destructive"):
                add("drop-cascade", f"{verb} {name} CASCADE")

    def _on_DropdbStmt(self, node: Any, add: Any, rev: str | None) -> None:
        add("drop-database", f"DROP DATABASE {node.dbname}")

    def _on_DropOwnedStmt(self, node: Any, add: Any, rev: str | None) -> None:
        roles = ", ".join(str(getattr(r, "rolename", None) or "?") for r in node.roles or ())
        add("drop-owned", f"DROP OWNED BY {roles}")

    def _on_TruncateStmt(self, node: Any, add: Any, rev: str | None) -> None:
        for rv in node.relations or ():
            if not self._is_version(rv):
                add("truncate", f"TRUNCATE {_rel(rv)}")

    # ALTER TABLE: one finding per action ---------------------------------------------------------------------------

    def _on_AlterTableStmt(self, node: Any, add: Any, rev: str | None) -> None:
        at = enums.AlterTableType
        rel = _rel(node.relation)
        new = self._new(rel)
        for cmd in node.cmds or ():
            sub = cmd.subtype
            col = f"{rel}.{cmd.name}"
            if _is(sub, at.AT_DropColumn):
                add("drop-column", f"DROP COLUMN {col}")
                self._types[(_key(rel), str(cmd.name))] = None
            elif _is(sub, at.AT_AlterColumnType):
                self._alter_type(rel, str(cmd.name), cmd.def_, new, add)
            elif _is(sub, at.AT_AddColumn):
                self._types[(_key(rel), str(cmd.def_.colname))] = column_type(cmd.def_.typeName)
                if not new:
                    self._add_column(rel, cmd.def_, add)
            elif _is(sub, at.AT_AddConstraint):
                self._remember_check(rel, cmd.def_)
                if not new:
                    self._add_constraint(rel, cmd.def_, add)
            elif _is(sub, at.AT_ValidateConstraint):
                name = str(cmd.name)
                if name in self._not_null_checks:
                    self._not_null_checks[name] = (self._not_null_checks[name][0], True)
                rows = self.catalog.rows.get(_key(rel)) if self.catalog is not None else None
                if not new and (rows is None or rows >= HUGE_ROWS):
                    size = f" (~{rows} rows)" if rows is not None else ""
                    add("validate-constraint", f"VALIDATE CONSTRAINT {cmd.name} ON {rel}{size}")
            elif new:
                continue  # the rest are lock warnings: not for a table this plan created
            elif _is(sub, at.AT_SetNotNull):
                if not self._proven_not_null(rel, str(cmd.name)):
                    add("set-not-null", f"SET NOT NULL {col}")
            elif _is(sub, at.AT_SetTableSpace):
                add("table-rewrite", f"SET TABLESPACE {rel}")
            elif _is(sub, at.AT_SetLogged) or _is(sub, at.AT_SetUnLogged):
                add("table-rewrite", f"SET {'LOGGED' if _is(sub, at.AT_SetLogged) else 'UNLOGGED'} {rel}")

    def _alter_type(self, rel: str, column: str, coldef: Any, new_table: bool, add: Any) -> None:
        """Classify a type change against the column's type before it: the plan's own, else the live database's."""
        target = column_type(coldef.typeName) if coldef is not None else None
        using = coldef is not None and coldef.raw_default is not None \
            and not _plain_cast(coldef.raw_default, column, target)
        before = self.column(rel, column)
        verdict = classify_type_change(before, target, using)
        self._types[(_key(rel), column)] = target
        shown = _deparse(coldef.typeName) if coldef is not None else "?"
        what = f"ALTER COLUMN {rel}.{column} TYPE {shown}"
        why = (f"from {before}: " if before is not None else "") + _VERDICT_WORDS[verdict] \
            + (" (USING expression)" if using else "")
        if verdict in ("lossy", "unknown"):
            add("alter-column-type", f"{what} ({why})")
        elif verdict == "rewrite":
            if not new_table:
                add("alter-column-type-rewrite", f"{what} ({why})")
        else:
            add("alter-column-type-widening", f"{what} ({why})")

    def _remember_check(self, rel: str, con: Any) -> None:
        """A CHECK (col IS NOT NULL) constraint: once validated, SET NOT NULL on col needs no scan (PostgreSQL 12+)."""
        if con is None or not _is(con.contype, enums.ConstrType.CONSTR_CHECK) or not con.conname:
            return
        expr = con.raw_expr
        if isinstance(expr, ast.NullTest) and _is(expr.nulltesttype, enums.NullTestType.IS_NOT_NULL) \
                and isinstance(expr.arg, ast.ColumnRef) and expr.arg.fields:
            column = str(getattr(expr.arg.fields[-1], "sval", ""))
            self._not_null_checks[str(con.conname)] = ((_key(rel), column), not con.skip_validation)

    def _add_column(self, rel: str, coldef: Any, add: Any) -> None:
        ct = enums.ConstrType
        col = f"{rel}.{coldef.colname}"
        type_names = [str(getattr(n, "sval", "")) for n in (coldef.typeName.names if coldef.typeName else ())]
        not_null = bool(coldef.is_not_null)
        default = None
        rewrite = bool(type_names) and type_names[-1].lower() in SERIAL_TYPES
        for con in coldef.constraints or ():
            kind = con.contype
            if _is(kind, ct.CONSTR_NOTNULL) or _is(kind, ct.CONSTR_PRIMARY):
                not_null = True
            if _is(kind, ct.CONSTR_DEFAULT):
                default = con.raw_expr
            elif _is(kind, ct.CONSTR_IDENTITY) or _is(kind, ct.CONSTR_GENERATED):
                rewrite = True
            self._add_constraint(rel, con, add, column=str(coldef.colname))
        volatile = sorted({
            _names(f.funcname).rsplit(".", 1)[-1] for f in _walk(default) if isinstance(f, ast.FuncCall)
        } & VOLATILE_FUNCTIONS)
        if rewrite or volatile:
            what = f"volatile DEFAULT {', '.join(v + '()' for v in volatile)}" if volatile else "a computed value"
            add("add-column-volatile-default", f"ADD COLUMN {col} with {what}")
        elif not_null and default is None:
            add("add-column-not-null-without-default", f"ADD COLUMN {col} NOT NULL without DEFAULT")

    def _add_constraint(self, rel: str, con: Any, add: Any, column: str | None = None) -> None:
        ct = enums.ConstrType
        kind = con.contype
        name = f" {con.conname}" if con.conname else ""
        where = f"{rel}.{column}" if column else rel
        if _is(kind, ct.CONSTR_FOREIGN) and not con.skip_validation:
            add("add-foreign-key", f"ADD FOREIGN KEY{name} ON {where} REFERENCES {_rel(con.pktable)}")
        elif _is(kind, ct.CONSTR_CHECK) and not con.skip_validation:
            add("add-check-constraint", f"ADD CHECK{name} ON {where}")
        elif (_is(kind, ct.CONSTR_PRIMARY) or _is(kind, ct.CONSTR_UNIQUE) or _is(kind, ct.CONSTR_EXCLUSION)) \
                and not con.indexname:
            label = {ct.CONSTR_PRIMARY: "PRIMARY KEY", ct.CONSTR_UNIQUE: "UNIQUE"}.get(kind, "EXCLUDE")
            add("add-unique-constraint", f"ADD {label}{name} ON {where}")

    # renames -----------------------------------------------------------------------------------------------------

    def _on_RenameStmt(self, node: Any, add: Any, rev: str | None) -> None:
        ot = enums.ObjectType
        kind = node.renameType
        if kind in (ot.OBJECT_TABLE, ot.OBJECT_VIEW, ot.OBJECT_MATVIEW, ot.OBJECT_FOREIGN_TABLE):
            rel = _rel(node.relation)
            self._rename_columns(rel, str(node.newname))
            if self._new(rel):
                self._created_tables.add(str(node.newname))
            else:
                add("rename-table", f"RENAME {_object_kind(kind)} {rel} TO {node.newname}")
        elif _is(kind, ot.OBJECT_COLUMN):
            rel = _rel(node.relation)
            self._types[(_key(rel), str(node.newname))] = self.column(rel, str(node.subname))
            self._types[(_key(rel), str(node.subname))] = None
            if not self._new(rel):
                add("rename-column", f"RENAME COLUMN {rel}.{node.subname} TO {node.newname}")
        elif kind in (ot.OBJECT_SCHEMA, ot.OBJECT_TYPE, ot.OBJECT_DOMAIN, ot.OBJECT_SEQUENCE, ot.OBJECT_FUNCTION,
                      ot.OBJECT_PROCEDURE, ot.OBJECT_ATTRIBUTE):
            old = node.subname if _is(kind, ot.OBJECT_SCHEMA) else (
                _rel(node.relation) if node.relation is not None else _object(node.object))
            add("rename-object", f"RENAME {_object_kind(kind)} {old} TO {node.newname}")

    def _rename_columns(self, rel: str, newname: str) -> None:
        table = _key(rel)
        known = {c for t, c in self._types if t == table}
        if self.catalog is not None:
            known |= {c for t, c in self.catalog.columns if t == table}
        for column in known:
            self._types[(newname, column)] = self.column(rel, column)
            self._types[(table, column)] = None

    def _on_AlterEnumStmt(self, node: Any, add: Any, rev: str | None) -> None:
        if node.oldVal:
            add("rename-object", f"RENAME VALUE {_names(node.typeName)} '{node.oldVal}' TO '{node.newVal}'")

    def _on_AlterObjectSchemaStmt(self, node: Any, add: Any, rev: str | None) -> None:
        ot = enums.ObjectType
        if node.objectType in (ot.OBJECT_TABLE, ot.OBJECT_VIEW, ot.OBJECT_MATVIEW) and node.relation is not None:
            rel = _rel(node.relation)
            if not self._new(rel):
                add("rename-table", f"MOVE {_object_kind(node.objectType)} {rel} TO SCHEMA {node.newschema}")

    # maintenance and locks ---------------------------------------------------------------------------------------

    def _on_VacuumStmt(self, node: Any, add: Any, rev: str | None) -> None:
        if node.is_vacuumcmd and any(getattr(o, "defname", "") == "full" for o in node.options or ()):
            for vr in node.rels or ():
                if not self._new(_rel(vr.relation)):
                    add("table-rewrite", f"VACUUM FULL {_rel(vr.relation)}")
            if not node.rels:
                add("table-rewrite", "VACUUM FULL (every table)")

    def _on_ClusterStmt(self, node: Any, add: Any, rev: str | None) -> None:
        if node.relation is None or not self._new(_rel(node.relation)):
            add("table-rewrite", f"CLUSTER {_rel(node.relation) if node.relation is not None else '(every table)'}")

    def _on_RefreshMatViewStmt(self, node: Any, add: Any, rev: str | None) -> None:
        rel = _rel(node.relation)
        if not node.concurrent and not node.skipData and not self._new(rel):
            add("refresh-materialized-view", f"REFRESH MATERIALIZED VIEW {rel}")

    def _on_ReindexStmt(self, node: Any, add: Any, rev: str | None) -> None:
        if not any(getattr(p, "defname", "") == "concurrently" for p in node.params or ()):
            target = _rel(node.relation) if node.relation is not None else str(node.name or "")
            add("exclusive-lock", f"REINDEX {target}".strip())

    def _on_LockStmt(self, node: Any, add: Any, rev: str | None) -> None:
        if int(node.mode) >= _STRONG_LOCK_MODE:
            for rv in node.relations or ():
                if not self._new(_rel(rv)):
                    add("exclusive-lock", f"LOCK TABLE {_rel(rv)}")

    # DO blocks: scan the static SQL inside; dynamic SQL is opaque --------------------------------------------------

    def _on_DoStmt(self, node: Any, add: Any, rev: str | None) -> None:
        body, language = None, "plpgsql"
        for arg in node.args or ():
            if arg.defname == "as":
                body = str(arg.arg.sval)
            elif arg.defname == "language":
                language = str(arg.arg.sval).lower()
        if language != "plpgsql" or body is None:
            add("opaque-sql", f"DO block in {language}")
            return
        if _PLPGSQL_TAG in body:
            add("opaque-sql", "DO block")
            return
        try:
            tree = pglast.parse_plpgsql(
                "CREATE FUNCTION alembic_operator_do() RETURNS void LANGUAGE plpgsql AS "
                f"{_PLPGSQL_TAG}{body}{_PLPGSQL_TAG}"
            )
        except Exception as exc:
            add("opaque-sql", f"DO block that does not parse ({exc})")
            return
        for kind, query in _plpgsql_statements(tree):
            if kind == "dynamic":
                add("opaque-sql", "EXECUTE of SQL built at run time in a DO block")
                continue
            for inner in _inner_statements(query):
                # findings of the inner SQL, with the inner statement as their text
                for found in self._statement(inner, rev, inner=True):
                    add(found.rule, found.operation + " (in a DO block)")


def _inner_statements(query: str) -> list[_Statement]:
    try:
        return list(_parsed(query, 0))
    except parser.ParseError as exc:
        return [_Statement(0, query, None, str(exc.args[0]) if exc.args else str(exc))]


_DYNAMIC_KEYS: Final = frozenset({"PLpgSQL_stmt_dynexecute", "PLpgSQL_stmt_dynfors"})


def _plpgsql_statements(tree: Any) -> Iterator[tuple[str, str]]:
    """('static', query) for every SQL statement in a PL/pgSQL tree, ('dynamic', '') for every EXECUTE."""
    if isinstance(tree, list):
        for item in tree:
            yield from _plpgsql_statements(item)
    elif isinstance(tree, dict):
        for key, value in tree.items():
            if key in _DYNAMIC_KEYS or (key == "dynquery" and value):
                yield "dynamic", ""
            elif key == "PLpgSQL_stmt_execsql":
                query = value.get("sqlstmt", {}).get("PLpgSQL_expr", {}).get("query")
                if query:
                    yield "static", str(query)
            else:
                yield from _plpgsql_statements(value)


def _object_kind(kind: Any) -> str:
    name = getattr(kind, "name", str(kind))
    return str(name).removeprefix("OBJECT_").replace("_", " ").replace("MATVIEW", "MATERIALIZED VIEW")


# --- API ----------------------------------------------------------------------------------------------------------


def scan_sql(sql: str, revision: str | None = None, *, allowed: Collection[str] = frozenset(),
             version_table: str = DEFAULT_VERSION_TABLE, catalog: Catalog | None = None) -> list[Finding]:
    """Findings in one chunk of offline SQL, in statement order.

    ``revision`` labels every finding; when None, the ``-- Running upgrade a -> b`` comments Alembic writes do.
    ``allowed`` rule names are dropped (the caller's suppressions). ``version_table`` is Alembic's bookkeeping
    table, whose statements are ignored.
    """
    return Scanner(allowed=allowed, version_table=version_table, catalog=catalog).scan(sql, revision)


def scan_revisions(items: Iterable[tuple[str | None, str]], *, allowed: Collection[str] = frozenset(),
                   version_table: str = DEFAULT_VERSION_TABLE, catalog: Catalog | None = None) -> list[Finding]:
    """Findings of a plan: (revision, sql) pairs in the order they run (tables created by an earlier revision of
    the plan get no lock warnings). `catalog`: the live database before the plan (type changes are classified
    against it; without it, a column the plan did not create has an unknown type: a destructive finding)."""
    scanner = Scanner(allowed=allowed, version_table=version_table, catalog=catalog)
    for revision, sql in items:
        scanner.scan(sql, revision)
    return scanner.findings


def altered_columns(items: Iterable[tuple[str | None, str]]) -> set[tuple[str | None, str]]:
    """(schema or None, table) of every table whose column types the plan changes, that SET NOT NULL touches or
    whose constraint it validates: what the plan's scan reads of the live database (types, checks, size)."""
    tables: set[tuple[str | None, str]] = set()
    at = enums.AlterTableType
    read = (at.AT_AlterColumnType, at.AT_SetNotNull, at.AT_ValidateConstraint)
    for _rev, sql in items:
        for stmt in _statements(sql):
            if isinstance(stmt.node, ast.AlterTableStmt) and any(
                    any(_is(cmd.subtype, kind) for kind in read) for cmd in stmt.node.cmds or ()):
                rv: Any = stmt.node.relation
                tables.add((getattr(rv, "schemaname", None) or None, str(rv.relname)))
    return tables


# What the plan's scan reads of the live database (PostgreSQL, pyformat parameters: psycopg and psycopg2 alike):
# the columns of the tables the plan alters, visible ones last (they win), and their validated CHECK constraints.
CATALOG_COLUMNS_SQL: Final = (
    "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
    "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE c.relkind IN ('r', 'p', 'm', 'f') AND a.attnum > 0 AND NOT a.attisdropped "
    "AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND c.relname = ANY(%(tables)s) "
    "ORDER BY pg_table_is_visible(c.oid), c.relname, a.attnum")
CATALOG_ROWS_SQL: Final = (
    "SELECT c.relname, CASE WHEN c.reltuples < 0 AND c.relpages = 0 THEN 0 ELSE c.reltuples::bigint END "
    "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE c.relkind IN ('r', 'p', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
    "AND c.relname = ANY(%(tables)s) ORDER BY pg_table_is_visible(c.oid)")
CATALOG_CHECKS_SQL: Final = (
    "SELECT c.relname, pg_get_constraintdef(k.oid) FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid "
    "WHERE k.contype = 'c' AND k.convalidated AND c.relname = ANY(%(tables)s)")


def scanner(catalog: Catalog | None = None) -> Scanner:
    """A new scanner of one plan's SQL (the engine's `scanner`)."""
    return Scanner(catalog=catalog)


def alters_columns(items: Sequence[tuple[str | None, str]]) -> bool:
    """Whether the SQL changes a column's type, sets NOT NULL or validates a constraint (its findings then depend on
    the catalog)."""
    return bool(altered_columns(items))


def read_catalog(connection: Connection, items: Sequence[tuple[str | None, str]]) -> Catalog:
    """The types of the columns of the tables `items` alter, their validated NOT NULL checks and the tables' sizes,
    through a DB-API connection (pyformat parameters: psycopg and psycopg2 alike) in a READ ONLY transaction that is
    rolled back: it can never write."""
    tables = sorted({table for _schema, table in altered_columns(items)})
    if not tables:
        return Catalog()
    cur = connection.cursor()
    try:
        cur.execute("SET TRANSACTION READ ONLY")
        cur.execute(CATALOG_COLUMNS_SQL, {"tables": tables})
        columns = list(cur.fetchall())
        cur.execute(CATALOG_CHECKS_SQL, {"tables": tables})
        checks = list(cur.fetchall())
        cur.execute(CATALOG_ROWS_SQL, {"tables": tables})
        sizes = list(cur.fetchall())
    finally:
        connection.rollback()
        cur.close()
    return catalog_from_rows(columns, checks, sizes)


def catalog_from_rows(columns: Iterable[Sequence[Any]], checks: Iterable[Sequence[Any]],
                      sizes: Iterable[Sequence[Any]] = ()) -> Catalog:
    """The Catalog from the rows of CATALOG_COLUMNS_SQL, CATALOG_CHECKS_SQL and CATALOG_ROWS_SQL."""
    types = {(str(table), str(column)): str(shown) for table, column, shown in columns}
    proven: set[tuple[str, str]] = set()
    for table, definition in checks:
        text = str(definition)
        if not text.upper().startswith("CHECK "):
            continue
        try:
            [raw] = parser.parse_sql(f"SELECT 1 WHERE {text[6:]}")
        except Exception:
            continue
        stmt: Any = raw.stmt
        expr = stmt.whereClause
        if isinstance(expr, ast.NullTest) and _is(expr.nulltesttype, enums.NullTestType.IS_NOT_NULL) \
                and isinstance(expr.arg, ast.ColumnRef) and expr.arg.fields:
            proven.add((str(table), str(getattr(expr.arg.fields[-1], "sval", ""))))
    rows = {str(table): int(count) for table, count in sizes if count is not None and int(count) >= 0}
    return Catalog(columns=types, not_null_checks=frozenset(proven), rows=rows)


_SEVERITY_TEXT: Final = {
    "destructive": "Data is (or may be) lost: the plan waits for approval (`DestructiveChangesNotApproved`); "
                   "`check` reports an error.",
    "locking": "The data is kept, but the operation holds a strong lock on an existing table while it runs (or "
               "breaks the running app): reported in `status.plan.locking`; the plan waits for approval only with "
               "`spec.approval.requireForLocking: true` (`LockingChangesNotApproved`); `check` reports a warning.",
    "warning": "Worth a look: reported in `status.plan.warnings`; `check` reports a warning.",
    "note": "For the record: `status.plan.notes`; `check` reports a note (info).",
}


def markdown() -> str:
    """docs/locking.md: every rule of the scanner with its safer pattern, generated from RULES."""
    lines = [
        "# What the plan's scanner finds",
        "",
        "<!-- Generated by `make crd` (`alembic_operator.engines.locking_markdown()`): edit RULES "
        "in operator/alembic_operator/sqlscan.py and sqlscan_mysql.py instead. -->",
        "",
        "The plan Job renders each revision's SQL offline and scans it with PostgreSQL's own parser; "
        "`alembic-operator check` runs the same scanner (its `lint` check). Every finding names its rule, its "
        "revision and the operation; locking findings also say how to do it safely. Tables created earlier in the "
        "same plan are exempt from the locking rules (they hold no rows yet); destructive rules always apply. "
        "`check` treats the revisions pending on its live database as one plan; without a live database it takes "
        "each revision as deployed on its own, after the tables of the revisions before it have filled.",
        "",
        "**Column type changes** are classified against the column's current type: the plan's scan container reads "
        "it from the live database (read only, `format_type()` of the tables the plan alters), `check` from the live "
        "database for pending revisions or from its scratch database just before the revision; a column created "
        "earlier in the same plan is followed through the plan's SQL. A narrowing or lossy cast (or a `USING` "
        "expression) is `alter-column-type` (destructive); a lossless change that rewrites the table is "
        "`alter-column-type-rewrite` (locking); a widening PostgreSQL does in the catalog alone, or the same type, "
        "is `alter-column-type-widening` (a note). When the current type is not known, the change is destructive "
        "and the finding says so.",
        "",
        "**CREATE INDEX CONCURRENTLY** cannot run in a transaction: put it in an autocommit block "
        "(`with op.get_context().autocommit_block(): op.create_index(..., postgresql_concurrently=True)`), and drop "
        "the index the same way in `downgrade()`. When a project has such a block, the migration and downgrade Jobs "
        "run each revision in its own transaction (as Alembic recommends), so a later revision that fails leaves "
        "the index revision committed and recorded, and the rollback downgrades it. Keep the block alone in its "
        "revision: what ran before it in the same revision is committed too.",
        "",
    ]
    for severity in SEVERITIES:
        lines += [f"## {severity}", "", _SEVERITY_TEXT[severity], "", "| Rule | What goes wrong | Safely |",
                  "|---|---|---|"]
        for rule in RULES.values():
            if rule.severity == severity:
                lines.append(f"| `{rule.name}` | {rule.why} | {rule.safely} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    sys.stdout.write(markdown())
