"""Find destructive and locking operations in the SQL Alembic renders offline for MySQL and MariaDB.

The PostgreSQL scanner (``sqlscan``) reads PostgreSQL's own parse tree; no MySQL parser embeds the server's, so
this one parses with **sqlglot**'s MySQL dialect, statement by statement (sqlglot's tokenizer splits the text, so
quotes and comments never split a statement). The findings, their fields and the rule families are PostgreSQL's
(``sqlrules.Finding``, ``Rule``, ``Catalog``), with MySQL's truths about what blocks: InnoDB's online DDL makes
``CREATE INDEX``, ``DROP INDEX``, ``ADD COLUMN`` and ``RENAME`` metadata-only or online (``LOCK=NONE``), while a
table copy (``ALGORITHM=COPY``: most type changes, a foreign key checked against every row, a CHECK constraint,
``CONVERT TO CHARACTER SET``, an AUTO_INCREMENT or STORED column) blocks every write for as long as it runs.
The facts hold for MariaDB 10.4 and later (10.11 tested) and MySQL 8.0.29 and later; where the two differ, the
finding says so and takes the slower one.

    findings = scan([("9d81aa02c4f5", "ALTER TABLE orders DROP COLUMN legacy_code;")])
    [f.describe() for f in findings]   # ['DROP COLUMN orders.legacy_code (revision 9d81aa02c4f5)']

Pure: no I/O. A type change (``MODIFY``, ``CHANGE``, ``ALTER COLUMN ... TYPE``) is classified against the column's
type before it: the plan's own SQL when the plan created or changed it, else the ``Catalog`` the caller read from
the live (or scratch) database with ``read_catalog`` (``COLUMN_TYPE``, its character set and NOT NULL, as
``catalog_text`` writes them). A statement sqlglot cannot parse is a note naming it (``unparsed-sql``): never a
crash, never passed in silence. Tables created earlier in the plan are exempt from all but the destructive rules.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.tokenizer_core import Token, TokenType

from . import sqlrules
from .sqlrules import Catalog, Connection, Finding, Rule

__all__ = [
    "ENGINE",
    "RULES",
    "MyType",
    "altered_tables",
    "alters_columns",
    "catalog_from_rows",
    "catalog_text",
    "classify",
    "markdown",
    "parse_type",
    "read_catalog",
    "scan",
    "scanner",
]

ENGINE: Final = "mysql"
DEFAULT_VERSION_TABLE: Final = sqlrules.DEFAULT_VERSION_TABLE
_rule = sqlrules.rule


_PT_OSC: Final = ("an online schema change tool (pt-online-schema-change, gh-ost) copies the table in the "
                  "background and swaps it in a moment")

RULES: Final[dict[str, Rule]] = dict(
    [
        # --- destructive ------------------------------------------------------------------------------------------
        _rule("drop-table", "destructive", "DROP TABLE deletes the table and every row in it (MySQL's DDL is not "
              "transactional: a later failure in the revision does not bring it back).",
              "Stop using the table in a release first; drop it in a later migration, after a backup (approve)."),
        _rule("drop-column", "destructive", "DROP COLUMN deletes the column's values in every row (instantly on "
              "MariaDB 10.4+ and MySQL 8.0.29+); the running (old) app version still selects it and breaks.",
              "Expand/contract: release an app version that no longer uses the column, then drop it in a later "
              "migration (approve the plan)."),
        _rule("truncate", "destructive", "TRUNCATE deletes every row of the table (it commits: no rollback).",
              "Delete only what must go, with a WHERE clause, or approve the plan."),
        _rule("alter-column-type", "destructive", "MODIFY / CHANGE COLUMN to a type that cannot hold every current "
              "value (a narrowing such as VARCHAR(20) -> VARCHAR(9), signed -> unsigned, removing or reordering "
              "ENUM values, a lossy character set) truncates or refuses values (in non-strict mode it silently "
              "truncates them), and copies the table; also raised when the column's current type is not known.",
              "Add a new column of the new type, backfill it in batches, switch the app, then drop the old one."),
        _rule("drop-database", "destructive", "DROP DATABASE / DROP SCHEMA deletes a whole database.",
              "Do not drop databases from migrations; do it by hand."),
        _rule("delete-without-where", "destructive", "DELETE without WHERE deletes every row of the table.",
              "Add a WHERE clause, or approve the plan."),
        _rule("update-without-where", "destructive", "UPDATE without WHERE overwrites the column(s) in every row.",
              "Add a WHERE clause, or copy the values to a new column first, or approve the plan."),
        _rule("convert-charset-lossy", "destructive", "CONVERT TO CHARACTER SET to a character set other than "
              "utf8mb4 replaces every character it lacks with '?', and copies the table.",
              "Convert to utf8mb4, or check that no value holds a character the new set lacks, then approve."),
        # --- locking ---------------------------------------------------------------------------------------------
        _rule("alter-column-type-rewrite", "locking", "This type change keeps every value (INT -> BIGINT, "
              "VARCHAR -> TEXT, a longer CHAR, a larger DECIMAL, a VARCHAR crossing 255 bytes), but InnoDB copies "
              "the table (ALGORITHM=COPY): writes wait for the whole copy.",
              f"Add a column of the new type and backfill it in batches, or use {_PT_OSC}."),
        _rule("algorithm-copy", "locking", "ALGORITHM=COPY copies the whole table while writes wait.",
              "Drop the ALGORITHM=COPY clause (or ask for ALGORITHM=INSTANT/INPLACE, LOCK=NONE: the server "
              f"refuses what it cannot do online), or use {_PT_OSC}."),
        _rule("exclusive-lock", "locking", "LOCK=SHARED / LOCK=EXCLUSIVE or LOCK TABLES blocks the app's writes "
              "(EXCLUSIVE and LOCK TABLES ... WRITE: its reads too) for the whole operation.",
              "Leave LOCK out, or ask for LOCK=NONE so the server refuses what it cannot do online."),
        _rule("add-column-not-instant", "locking", "This ADD COLUMN cannot be instant: an AUTO_INCREMENT column "
              "rebuilds the table with writes blocked (LOCK=NONE is refused), a STORED generated column copies "
              "it; both compute every row.",
              "Add a plain nullable column (instant), backfill it in batches, then add the constraint, or use "
              f"{_PT_OSC}."),
        _rule("add-primary-key", "locking", "ADD / DROP PRIMARY KEY rebuilds the clustered index, that is the "
              "whole table; dropping it without adding one copies the table (writes wait); it fails on duplicates.",
              f"Define the primary key when the table is created, or use {_PT_OSC}."),
        _rule("add-foreign-key", "locking", "Adding a FOREIGN KEY with foreign_key_checks on copies the table "
              "(ALGORITHM=COPY) and checks every row against the parent: writes to the table wait, and the parent "
              "is locked too.",
              "Add the foreign key while the table is small, or SET foreign_key_checks=0 for the statement (INPLACE,"
              " no check of existing rows) after checking the rows yourself."),
        _rule("add-check-constraint", "locking", "Adding a CHECK constraint copies the table and checks every row "
              "(writes wait); it fails if a row violates it.",
              f"Check the rows first; add it while the table is small, or use {_PT_OSC}."),
        _rule("fulltext-index", "locking", "A FULLTEXT or SPATIAL index is built with LOCK=SHARED (writes wait for "
              "the whole build); the first FULLTEXT index of a table also rebuilds the table (FTS_DOC_ID).",
              f"Build it in a maintenance window, or use {_PT_OSC}."),
        _rule("convert-charset", "locking", "CONVERT TO CHARACTER SET copies the table (writes wait) to rewrite "
              "every text value.",
              f"Convert column by column in a maintenance window, or use {_PT_OSC}."),
        _rule("rename-table", "locking", "RENAME TABLE is instant, but the running (old) app version still uses "
              "the old name and breaks.",
              "Create the new table (or a view under the new name), switch the app, drop the old name later."),
        _rule("rename-column", "locking", "RENAME COLUMN / CHANGE old new is instant, but the running (old) app "
              "version still uses the old name and breaks.",
              "Add the new column, write both, backfill, switch reads, drop the old column in a later release."),
        # --- warnings --------------------------------------------------------------------------------------------
        _rule("set-not-null", "warning", "MODIFY ... NOT NULL on a nullable column rebuilds the table online (reads"
              " and writes go on) and fails if a row holds NULL (in non-strict mode it stores 0 or '' instead).",
              "UPDATE the NULL rows in batches first, then set NOT NULL."),
        _rule("add-column-not-null-without-default", "warning", "ADD COLUMN ... NOT NULL without a DEFAULT gives "
              "the existing rows the type's implicit default (0, ''), and the old app's INSERTs that omit the "
              "column fail in strict mode.",
              "Add the column with a DEFAULT (instant), or nullable, backfill, then set NOT NULL."),
        _rule("table-rebuild", "warning", "OPTIMIZE TABLE, ALTER TABLE ... FORCE, ENGINE=, ROW_FORMAT= rebuild the "
              "whole table: online (reads and writes go on) unless it has a FULLTEXT index, but it reads and "
              "writes every row and replicas lag.",
              "Run maintenance outside migrations, in a quiet hour."),
        _rule("drop-view", "warning", "DROP VIEW breaks readers of the view.",
              "Stop using the view in a release first, then drop it."),
        _rule("delete-rows", "warning", "DELETE with a WHERE clause deletes rows: intended in a data migration, "
              "but the rows are gone unless the backup is restored.",
              "Check the WHERE clause; copy the rows aside first if they may be needed."),
        # --- notes -----------------------------------------------------------------------------------------------
        _rule("alter-column-type-widening", "note", "A type change InnoDB does in its metadata, without copying "
              "the table: the same type, a VARCHAR lengthened within its length bytes (both under 256 bytes or "
              "both from 256; on MariaDB also from under 128 bytes), ENUM/SET values appended at the end.",
              "Nothing to do."),
        _rule("unparsed-sql", "note", "sqlglot does not parse this statement as MySQL, so no rule could check it.",
              "Read the statement (the plan shows it); write it in a form MySQL documents if it is unusual."),
    ]
)

sqlrules.RULESETS[ENGINE] = RULES

# --- column types ---------------------------------------------------------------------------------------------------

_INT_BYTES: Final = {"tinyint": 1, "smallint": 2, "mediumint": 3, "int": 4, "bigint": 8}
_INT_DIGITS: Final = {1: 3, 2: 5, 3: 8, 4: 10, 8: 20}
_TEXTS: Final = {"tinytext": 255, "text": 65535, "mediumtext": 16777215, "longtext": 4294967295}
_BLOBS: Final = {"tinyblob": 255, "blob": 65535, "mediumblob": 16777215, "longblob": 4294967295}
_CHARS: Final = frozenset({"char", "varchar"})
_BINARIES: Final = frozenset({"binary", "varbinary"})
_TIMES: Final = {"time": 0, "datetime": 0, "timestamp": 0}
# bytes per character of the common character sets; an unknown one counts as utf8mb4's 4 (the worst case)
_MB: Final = {"latin1": 1, "ascii": 1, "binary": 1, "utf8": 3, "utf8mb3": 3, "utf8mb4": 4, "ucs2": 2, "utf16": 4,
              "utf32": 4, "cp1250": 1, "cp1251": 1, "cp1252": 1, "latin2": 1, "greek": 1, "hebrew": 1}
_ALIASES: Final = {"integer": "int", "int4": "int", "int8": "bigint", "bool": "tinyint", "boolean": "tinyint",
                   "dec": "decimal", "numeric": "decimal", "fixed": "decimal", "real": "double",
                   "float8": "double", "float4": "float", "double precision": "double", "character": "char",
                   "character varying": "varchar", "nchar": "char", "nvarchar": "varchar", "national char": "char",
                   "national varchar": "varchar", "uint": "int", "utinyint": "tinyint", "usmallint": "smallint",
                   "umediumint": "mediumint", "ubigint": "bigint"}


@dataclass(frozen=True)
class MyType:
    """A MySQL column type as COLUMN_TYPE spells it: varchar(250), int(10) unsigned, enum('a','b'), decimal(10,2);
    with its character set when one was named or read, and NOT NULL when known (None: not known)."""

    name: str
    args: tuple[str, ...] = ()  # lengths and precisions as digits; ENUM/SET members unquoted
    unsigned: bool = False
    charset: str | None = None
    not_null: bool | None = None

    def __str__(self) -> str:
        if self.name in ("enum", "set"):
            inner = ",".join("'" + a.replace("'", "''") + "'" for a in self.args)
        else:
            inner = ",".join(self.args)
        return f"{self.name}({inner})" if self.args else self.name

    @property
    def mb(self) -> int:
        return 1 if self.name in _BINARIES or self.name in _BLOBS else _MB.get((self.charset or "").lower(), 4)


def parse_type(text: str | None) -> MyType | None:
    """'varchar(20) CHARACTER SET utf8mb4 NOT NULL', 'int(11) unsigned', "enum('a','b')"; None if unparsable."""
    if not text:
        return None
    m = re.match(r"\s*([a-zA-Z][a-zA-Z0-9_ ]*?)\s*(\(|$|\s)", text)
    if not m:
        return None
    name = " ".join(m.group(1).lower().split())
    rest = text[m.end(1):].strip()
    args: tuple[str, ...] = ()
    if rest.startswith("("):
        inner, rest = _parens(rest)
        if inner is None:
            return None
        args = _args(inner)
    words = rest.lower().split()
    unsigned = "unsigned" in words or name in ("uint", "utinyint", "usmallint", "umediumint", "ubigint")
    name = _ALIASES.get(name, name).split()[0]
    if name == "tinyint" and not args and text.strip().lower().startswith(("bool", "boolean")):
        args = ("1",)
    charset = None
    for i, word in enumerate(words):
        if word in ("charset", "set") and i + 1 < len(words) and (word == "charset" or words[i - 1] == "character"):
            charset = words[i + 1]
    not_null = True if re.search(r"\bnot\s+null\b", rest, re.I) else None
    return MyType(name, args, unsigned, charset, not_null)


def _parens(text: str) -> tuple[str | None, str]:
    """The text inside the opening parenthesis and what follows its match (quotes may hold parentheses)."""
    depth, quote, i = 0, "", 0
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == quote and text[i + 1:i + 2] == quote:
                i += 1  # a doubled quote inside the string
            elif ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return text[1:i], text[i + 1:]
        i += 1
    return None, ""


def _args(inner: str) -> tuple[str, ...]:
    out = re.findall(r"'((?:[^']|'')*)'|\"((?:[^\"]|\"\")*)\"|([^,\s]+)", inner)
    return tuple(bare or (double.replace('""', '"') if double else single.replace("''", "'"))
                 for single, double, bare in out)


Verdict = Literal["same", "widening", "rewrite", "lossy", "unknown"]


def _num(args: tuple[str, ...], index: int, default: int) -> int:
    try:
        return int(args[index])
    except (IndexError, ValueError):
        return default


def _bytes(t: MyType) -> int | None:
    """The most bytes a string-like value can take."""
    if t.name in _CHARS or t.name in _BINARIES:
        return _num(t.args, 0, 1) * t.mb
    if t.name in _TEXTS:
        return _TEXTS[t.name]
    if t.name in _BLOBS:
        return _BLOBS[t.name]
    return None


def classify(old: MyType | None, new: MyType | None) -> tuple[Verdict, str]:
    """What MODIFY/CHANGE does to the values already there, and how InnoDB does it (the second item says why)."""
    if old is None or new is None:
        return "unknown", "the current type is not known"
    a, b = old.name, new.name
    if (a in _CHARS or a in _TEXTS) and (b in _CHARS or b in _TEXTS) and new.charset \
            and (old.charset or "").lower() != new.charset.lower():
        if new.charset.lower() != "utf8mb4":
            return "lossy", f"the character set changes to {new.charset}"
        return "rewrite", f"the character set changes to {new.charset}: the table is copied"
    new = MyType(new.name, new.args, new.unsigned, new.charset or old.charset)
    if a in _INT_BYTES and b in _INT_BYTES:
        ob, nb = _INT_BYTES[a], _INT_BYTES[b]
        if ob == nb and old.unsigned == new.unsigned:
            return "same", "the same integer type"
        if (old.unsigned == new.unsigned and nb > ob) or (old.unsigned and not new.unsigned and nb > ob):
            return "rewrite", "every value fits; MySQL 8.0 copies the table (MariaDB changes it instantly only " \
                              "with ROW_FORMAT=REDUNDANT)"
        return "lossy", "a narrower or differently signed integer"
    if a in _INT_BYTES and b == "decimal":
        p, s = _num(new.args, 0, 10), _num(new.args, 1, 0)
        return ("rewrite", "every value fits; the table is copied") if p - s >= _INT_DIGITS[_INT_BYTES[a]] \
            else ("lossy", "the DECIMAL has fewer integer digits")
    if a == b == "decimal":
        p1, s1, p2, s2 = _num(old.args, 0, 10), _num(old.args, 1, 0), _num(new.args, 0, 10), _num(new.args, 1, 0)
        if (p1, s1) == (p2, s2):
            return "same", "the same DECIMAL"
        if s2 >= s1 and p2 - s2 >= p1 - s1:
            return "rewrite", "every value fits; the table is copied"
        return "lossy", "fewer digits"
    if (a, b) in (("float", "double"),) or (a in ("tinyint", "smallint", "mediumint", "int") and b == "double"):
        return "rewrite", "every value fits; the table is copied"
    if a in ("float", "double") and a == b:
        return ("same", "the same type") if old.args == new.args else ("lossy", "a different precision")
    if (a in _TIMES and b in _TIMES) or (a, b) == ("date", "date"):
        if a != b:
            return "lossy", f"{a.upper()} -> {b.upper()} changes the range or meaning of values"
        p1, p2 = _num(old.args, 0, 0), _num(new.args, 0, 0)
        if p1 == p2:
            return "same", "the same type"
        return ("rewrite", "finer fractional seconds; the table is copied") if p2 > p1 \
            else ("lossy", "fewer fractional-second digits")
    if a == "date" and b in ("datetime", "timestamp"):
        return ("rewrite", "every value fits; the table is copied") if b == "datetime" \
            else ("lossy", "TIMESTAMP holds 1970-2038 only")
    if a in ("enum", "set") and a == b:
        if old.args == new.args:
            return "same", "the same members"
        if new.args[: len(old.args)] == old.args:
            limit = 255 if a == "enum" else 8
            same_storage = (len(old.args) <= limit) == (len(new.args) <= limit) if a == "enum" \
                else (len(old.args) + 7) // 8 == (len(new.args) + 7) // 8
            return ("widening", "members appended at the end: metadata only") if same_storage \
                else ("rewrite", "members appended, but the storage size grows: the table is copied")
        return "lossy", "members removed or reordered: stored values change"
    ob_, nb_ = _bytes(old), _bytes(new)
    if ob_ is not None and nb_ is not None:
        return _strings(old, new, ob_, nb_)
    if a == b and old.args == new.args and old.unsigned == new.unsigned:
        return "same", "the same type"
    return "lossy", f"{str(old).upper()} -> {str(new).upper()} may not keep every value"


def _strings(old: MyType, new: MyType, ob: int, nb: int) -> tuple[Verdict, str]:
    a, b = old.name, new.name
    text_like = (a in _CHARS or a in _TEXTS, b in _CHARS or b in _TEXTS)
    if text_like[0] != text_like[1]:
        return "lossy", "between character and binary strings"
    if a == b and old.args == new.args:
        return "same", "the same type"
    if nb < ob:
        return "lossy", "a narrowing"
    if a == b and a in ("varchar", "varbinary"):
        if (ob < 256) == (nb < 256):
            return "widening", "a longer VARCHAR within the same length bytes: metadata only"
        if ob < 128:
            return "rewrite", f"{ob} -> {nb} bytes crosses 255: MySQL 8.0 copies the table (MariaDB 10.4+ does " \
                              "it instantly)"
        return "rewrite", f"{ob} -> {nb} bytes crosses 255: the table is copied"
    return "rewrite", "every value fits, but the table is copied"


_VERDICT_RULE: Final = {"same": "alter-column-type-widening", "widening": "alter-column-type-widening",
                        "rewrite": "alter-column-type-rewrite", "lossy": "alter-column-type",
                        "unknown": "alter-column-type"}


def catalog_text(column_type: str, charset: str | None, nullable: str | bool | None) -> str:
    """How a column is kept in Catalog.columns for MySQL: its COLUMN_TYPE, its character set, NOT NULL."""
    text = str(column_type)
    if charset:
        text += f" CHARACTER SET {charset}"
    if nullable in ("NO", False):
        text += " NOT NULL"
    return text


# --- statements -----------------------------------------------------------------------------------------------------

_DELIMITER = re.compile(r";[ \t]*(?:\n|$)")


@dataclass(frozen=True)
class _Statement:
    start: int
    text: str
    tokens: list[Token]


@contextmanager
def _quiet() -> Iterator[None]:
    """sqlglot logs a warning for each statement it keeps as an opaque Command: the finding says it instead."""
    logger = logging.getLogger("sqlglot")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _statements(sql: str) -> list[_Statement]:
    """Split on the semicolons sqlglot's tokenizer sees (quotes and comments hide theirs); on text it cannot
    tokenize (an unterminated quote), on Alembic's own delimiter."""
    out: list[_Statement] = []
    try:
        tokens = sqlglot.Dialect.get_or_raise("mysql").tokenize(sql)
    except SqlglotError:
        pos = 0
        for m in [*_DELIMITER.finditer(sql), None]:
            end = m.start() if m else len(sql)
            text = sql[pos:end]
            if _code(text):
                out.append(_Statement(pos, text, []))
            pos = m.end() if m else len(sql)
        return out
    current: list[Token] = []
    for token in [*tokens, None]:
        if token is None or token.token_type == TokenType.SEMICOLON:
            if current:
                start, end = current[0].start, current[-1].end + 1
                out.append(_Statement(start, sql[start:end], current))
            current = []
        else:
            current.append(token)
    return out


def _code(text: str) -> str:
    return "\n".join(line for line in text.strip().splitlines() if not line.lstrip().startswith("--")).strip()


def _trim(text: str) -> str:
    text = _code(text) or text.strip()
    return text if len(text) <= sqlrules.STATEMENT_MAX else text[: sqlrules.STATEMENT_MAX - 1] + "…"


_WORD = re.compile(r"`(?:[^`]|``)+`|'(?:[^'\\]|''|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[\w$.]+|[^\s\w]")


def _words(stmt: _Statement) -> list[str]:
    """The statement's words as written (names unquoted), for what sqlglot keeps as an opaque Command."""
    code = "\n".join(line for line in stmt.text.splitlines() if not line.lstrip().startswith("--"))
    code = re.sub(r"/\*.*?\*/", " ", code, flags=re.S)
    return [w.strip("`") for w in _WORD.findall(code)]


def _name(node: Any) -> str:
    if node is None:
        return "?"
    if isinstance(node, exp.Table):
        return ".".join(p.name for p in node.parts) or node.name
    return str(getattr(node, "name", "") or node.sql(dialect="mysql"))


def _key(table: str) -> str:
    return table.rsplit(".", 1)[-1].strip("`").lower()


# --- the scanner ----------------------------------------------------------------------------------------------------


@dataclass
class Scanner:
    """One plan's SQL, revision after revision: remembers what the plan creates (no lock findings for it) and the
    column types it leaves, over the catalog's."""

    version_table: str = DEFAULT_VERSION_TABLE
    catalog: Catalog | None = None
    findings: list[Finding] = field(default_factory=list)
    _created: set[str] = field(default_factory=set)
    _types: dict[tuple[str, str], MyType | None] = field(default_factory=dict)

    def column(self, table: str, column: str) -> MyType | None:
        key = (_key(table), column.lower())
        if key in self._types:
            return self._types[key]
        if self.catalog is None:
            return None
        for (t, c), text in self.catalog.columns.items():
            if (t.lower(), c.lower()) == key:
                return parse_type(text)
        return None

    def deployed(self) -> None:
        """What the plan created so far is in production now (check takes each revision as deployed alone)."""
        self._created.clear()

    def at(self, catalog: Catalog) -> None:
        """The database as it is before the next chunk (check's scratch database)."""
        tables = {t.lower() for t, _c in catalog.columns}
        self._types = {k: v for k, v in self._types.items() if k[0] not in tables}
        self.catalog = catalog

    def scan(self, sql: str, revision: str | None = None) -> list[Finding]:
        at = sqlrules.revision_at(sql, revision)
        new: list[Finding] = []
        for stmt in _statements(sql):
            new.extend(self._statement(stmt, at(stmt.start)))
        self.findings.extend(new)
        return new

    def _statement(self, stmt: _Statement, rev: str | None) -> list[Finding]:
        out: list[Finding] = []
        text = _trim(stmt.text)

        def add(rule: str, operation: str) -> None:
            out.append(Finding(rule, RULES[rule].severity, operation, rev, text, engine=ENGINE))

        try:
            with _quiet():
                node = sqlglot.parse_one(stmt.text, read="mysql")
        except SqlglotError as err:
            node, error = None, str(err).splitlines()[0][:200]
        else:
            error = ""
        if node is None or isinstance(node, exp.Command):
            words = _words(stmt)
            if not self._command(words, [w.upper() for w in words], add):
                first = " ".join(words[:3]) or _code(stmt.text)[:40]
                add("unparsed-sql", f"{first} ... not parsed as MySQL" + (f" ({error})" if error else ""))
            return out
        if self._bookkeeping(node):
            return out
        handler = getattr(self, f"_on_{type(node).__name__}", None)
        if handler is not None:
            handler(node, add)
        return out

    # ---------------------------------------------------------------------------------------------------------------

    def _is_version(self, table: Any) -> bool:
        return isinstance(table, exp.Table) and table.name.lower() == self.version_table.lower()

    def _bookkeeping(self, node: exp.Expr) -> bool:
        if isinstance(node, (exp.Transaction, exp.Commit, exp.Set, exp.Use)):
            return True
        target = node.this
        if isinstance(target, exp.Schema):
            target = target.this
        if isinstance(node, (exp.Insert, exp.Update, exp.Delete, exp.Create, exp.Alter)) and self._is_version(target):
            return True
        if isinstance(node, exp.Drop) and (node.args.get("kind") or "").upper() == "TABLE":
            return all(self._is_version(t) for t in node.args.get("tables") or ())
        return _touches_only_version_num(node)

    def _new(self, table: str) -> bool:
        return _key(table) in self._created

    def _command(self, raw: list[str], up: list[str], add: Any) -> bool:
        """Statements sqlglot keeps as an opaque Command, read from their words (`raw` as written, `up` upper)."""
        if up[:1] == ["CREATE"] and "INDEX" in up and "ON" in up:
            kind = up[1] if up[1] in ("FULLTEXT", "SPATIAL", "UNIQUE") else ""
            at = up.index("ON") + 1
            table = raw[at] if at < len(raw) else "?"
            if kind in ("FULLTEXT", "SPATIAL") and not self._new(table):
                index = raw[up.index("INDEX") + 1] if up.index("INDEX") + 1 < at - 1 else ""
                add("fulltext-index", f"CREATE {kind} INDEX {index} ON {table}".replace("  ", " "))
            self._lock_clauses(up, table, add)
            return True
        if up[:1] == ["OPTIMIZE"]:
            for i, table in enumerate(raw[1:], 1):
                if up[i] not in ("TABLE", "TABLES", "NO_WRITE_TO_BINLOG", "LOCAL", ",") and not self._new(table):
                    add("table-rebuild", f"OPTIMIZE TABLE {table}")
            return True
        if up[:2] == ["ALTER", "TABLE"] and len(up) > 2 and "CONVERT" in up:
            table = raw[2]
            charset = next((raw[i + 1] for i, w in enumerate(up[:-1])
                            if w == "CHARSET" or (w == "SET" and up[i - 1] == "CHARACTER")), "?").lower()
            if charset != "utf8mb4":
                add("convert-charset-lossy", f"CONVERT TABLE {table} TO CHARACTER SET {charset}")
            elif not self._new(table):
                add("convert-charset", f"CONVERT TABLE {table} TO CHARACTER SET {charset}")
            for key in [k for k in self._types if k[0] == _key(table)]:
                self._types[key] = None
            self._lock_clauses(up, table, add)
            return True
        if up[:1] == ["RENAME"] and up[1:2] in (["TABLE"], ["TABLES"]):
            rest = raw[2:]
            for i in range(0, len(rest) - 2, 4):  # a TO b [, c TO d ...]
                if rest[i + 1].upper() == "TO":
                    self._rename_table(rest[i], rest[i + 2], add)
            return True
        if up[:2] in (["LOCK", "TABLES"], ["LOCK", "TABLE"]):
            for i, w in enumerate(up):
                if w in ("WRITE", "READ") and i >= 3:
                    table = raw[i - 1] if up[i - 2] not in ("AS",) else raw[i - 3]
                    if up[i + 1:i + 2] == ["LOCAL"]:
                        continue  # READ LOCAL: concurrent inserts go on
                    if not self._new(table):
                        add("exclusive-lock", f"LOCK TABLES {table} {w}")
            return True
        return up[:1] in (["UNLOCK"], ["ANALYZE"], ["SET"], ["COMMIT"], ["BEGIN"], ["START"], ["ROLLBACK"])

    def _lock_clauses(self, up: list[str], table: str, add: Any) -> None:
        for i, w in enumerate(up[:-1]):
            value = up[i + 2] if up[i + 1] == "=" and i + 2 < len(up) else up[i + 1]
            if w == "ALGORITHM" and value == "COPY" and not self._new(table):
                add("algorithm-copy", f"ALGORITHM=COPY on {table}")
            if w == "LOCK" and value in ("SHARED", "EXCLUSIVE") and not self._new(table):
                add("exclusive-lock", f"LOCK={value} on {table}")

    def _rename_table(self, old: str, new: str, add: Any) -> None:
        for key in [k for k in self._types if k[0] == _key(old)]:
            self._types[(_key(new), key[1])] = self._types.pop(key)
        if self.catalog is not None:
            for t, c in self.catalog.columns:
                if t.lower() == _key(old) and (_key(new), c.lower()) not in self._types:
                    self._types[(_key(new), c.lower())] = self.column(old, c)
                    self._types[(_key(old), c.lower())] = None
        if self._new(old):
            self._created.add(_key(new))
        else:
            add("rename-table", f"RENAME TABLE {old} TO {new}")

    # creations -----------------------------------------------------------------------------------------------------

    def _on_Create(self, node: exp.Create, add: Any) -> None:
        kind = (node.args.get("kind") or "").upper()
        if kind == "TABLE":
            schema = node.this
            table = _key(_name(schema.this if isinstance(schema, exp.Schema) else schema))
            self._created.add(table)
            if isinstance(schema, exp.Schema):
                for col in schema.expressions:
                    if isinstance(col, exp.ColumnDef):
                        self._types[(table, col.name.lower())] = _coltype(col)
        elif kind == "INDEX":
            index = node.this
            table = _name(index.args.get("table")) if isinstance(index, exp.Index) else "?"
            for prop in node.find_all(exp.AlgorithmProperty, exp.LockProperty):
                self._option(prop, table, add)

    # drops and data ------------------------------------------------------------------------------------------------

    def _on_Drop(self, node: exp.Drop, add: Any) -> None:
        kind = (node.args.get("kind") or "").upper()
        for target in node.args.get("tables") or ():
            name = _name(target) if kind != "SCHEMA" else (target.args.get("db") or target).name
            if kind == "TABLE":
                if self._is_version(target):
                    continue
                add("drop-table", f"DROP TABLE {name}")
                self._created.discard(_key(name))
                for key in [k for k in self._types if k[0] == _key(name)]:
                    self._types[key] = None
            elif kind in ("DATABASE", "SCHEMA"):
                add("drop-database", f"DROP {kind} {name}")
            elif kind == "VIEW":
                add("drop-view", f"DROP VIEW {name}")

    def _on_TruncateTable(self, node: exp.TruncateTable, add: Any) -> None:
        for table in node.expressions:
            if not self._is_version(table):
                add("truncate", f"TRUNCATE {_name(table)}")

    def _on_Delete(self, node: exp.Delete, add: Any) -> None:
        table = node.this
        name = _name(table)
        if node.args.get("where") is None and not (isinstance(table, exp.Table) and table.args.get("joins")) \
                and not node.args.get("using"):
            add("delete-without-where", f"DELETE FROM {name} without WHERE")
        else:
            add("delete-rows", f"DELETE FROM {name} WHERE ...")

    def _on_Update(self, node: exp.Update, add: Any) -> None:
        table = node.this
        if node.args.get("where") is None and not (isinstance(table, exp.Table) and table.args.get("joins")):
            cols = ", ".join(e.this.name for e in node.expressions if isinstance(e, exp.EQ) and e.this is not None)
            add("update-without-where", f"UPDATE {_name(table)} SET {cols} without WHERE")

    # ALTER TABLE ---------------------------------------------------------------------------------------------------

    def _on_Alter(self, node: exp.Alter, add: Any) -> None:
        if (node.args.get("kind") or "").upper() != "TABLE":
            return
        table = _name(node.this)
        new = self._new(table)
        for option in node.args.get("options") or ():
            self._option(option, table, add)
        pk_dropped = pk_added = False
        for action in node.args.get("actions") or ():
            if isinstance(action, exp.ColumnDef):
                self._types[(_key(table), action.name.lower())] = _coltype(action)
                if not new:
                    self._add_column(table, action, add)
            elif isinstance(action, exp.Drop):
                kind = (action.args.get("kind") or "").upper()
                if kind == "COLUMN":
                    for col in action.args.get("tables") or ():
                        add("drop-column", f"DROP COLUMN {table}.{col.name}")
                        self._types[(_key(table), col.name.lower())] = None
            elif isinstance(action, exp.DropPrimaryKey):
                pk_dropped = True
            elif isinstance(action, exp.ModifyColumn):
                self._modify(table, action, new, add)
            elif isinstance(action, exp.AlterColumn) and action.args.get("dtype") is not None:
                coldef = exp.ColumnDef(this=action.this, kind=action.args["dtype"])
                self._change_type(table, action.name, coldef, new, add, keeps_null=True)
            elif isinstance(action, exp.RenameColumn):
                old, to = action.this.name, action.args["to"].name
                self._types[(_key(table), to.lower())] = self.column(table, old)
                self._types[(_key(table), old.lower())] = None
                if not new:
                    add("rename-column", f"RENAME COLUMN {table}.{old} TO {to}")
            elif isinstance(action, exp.AlterRename):
                self._rename_table(table, _name(action.this), add)
            elif isinstance(action, exp.AddConstraint):
                for con in action.expressions:
                    pk_added = self._constraint(table, con, new, add) or pk_added
            elif isinstance(action, exp.ForceProperty) and not new:
                add("table-rebuild", f"ALTER TABLE {table} FORCE")
            if isinstance(action, (exp.AlgorithmProperty, exp.LockProperty)):
                self._option(action, table, add)
        if (pk_dropped or pk_added) and not new:
            verb = "DROP and ADD" if pk_dropped and pk_added else "DROP" if pk_dropped else "ADD"
            add("add-primary-key", f"{verb} PRIMARY KEY on {table}")

    def _option(self, option: exp.Expression, table: str, add: Any) -> None:
        value = option.name.upper()
        if self._new(table):
            return
        if isinstance(option, exp.AlgorithmProperty) and value == "COPY":
            add("algorithm-copy", f"ALGORITHM=COPY on {table}")
        elif isinstance(option, exp.LockProperty) and value in ("SHARED", "EXCLUSIVE"):
            add("exclusive-lock", f"LOCK={value} on {table}")
        elif isinstance(option, (exp.EngineProperty, exp.RowFormatProperty)):
            add("table-rebuild", f"ALTER TABLE {table} {option.sql(dialect='mysql')}")

    def _add_column(self, table: str, col: exp.ColumnDef, add: Any) -> None:
        kinds = [c.args.get("kind") for c in col.args.get("constraints") or ()]
        name = f"{table}.{col.name}"
        if any(isinstance(k, exp.AutoIncrementColumnConstraint) for k in kinds):
            add("add-column-not-instant", f"ADD COLUMN {name} AUTO_INCREMENT")
        elif any(isinstance(k, exp.ComputedColumnConstraint) and k.args.get("persisted") for k in kinds):
            add("add-column-not-instant", f"ADD COLUMN {name} STORED generated")
        if any(isinstance(k, exp.PrimaryKeyColumnConstraint) for k in kinds):
            add("add-primary-key", f"ADD COLUMN {name} PRIMARY KEY")
        not_null = any(isinstance(k, exp.NotNullColumnConstraint) and not k.args.get("allow_null") for k in kinds)
        default = any(isinstance(k, exp.DefaultColumnConstraint) for k in kinds)
        if not_null and not default and not any(isinstance(k, (exp.AutoIncrementColumnConstraint,
                                                                exp.ComputedColumnConstraint)) for k in kinds):
            add("add-column-not-null-without-default", f"ADD COLUMN {name} NOT NULL without DEFAULT")

    def _constraint(self, table: str, con: exp.Expression, new: bool, add: Any) -> bool:
        """One ADD ...; True when it adds a primary key."""
        inner = con.expressions if isinstance(con, exp.Constraint) else [con]
        label = f" {con.name}" if isinstance(con, exp.Constraint) and con.name else ""
        adds_pk = False
        for item in inner:
            if isinstance(item, exp.ForeignKey) and not new:
                ref = item.args.get("reference")
                parent = _name(ref.this.this) if ref is not None and isinstance(ref.this, exp.Schema) else "?"
                add("add-foreign-key", f"ADD FOREIGN KEY{label} ON {table} REFERENCES {parent}")
            elif isinstance(item, exp.CheckColumnConstraint) and not new:
                add("add-check-constraint", f"ADD CHECK{label} ON {table}")
            elif isinstance(item, exp.PrimaryKey):
                adds_pk = True
            elif isinstance(item, exp.IndexColumnConstraint) and not new:
                kind = (item.args.get("kind") or "").upper()
                if kind in ("FULLTEXT", "SPATIAL"):
                    add("fulltext-index", f"ADD {kind} INDEX {item.name} ON {table}".replace("  ", " "))
        return adds_pk

    def _modify(self, table: str, action: exp.ModifyColumn, new: bool, add: Any) -> None:
        coldef = action.this
        old_name = action.args.get("rename_from")
        column = old_name.name if old_name is not None else coldef.name
        if old_name is not None and old_name.name.lower() != coldef.name.lower() and not new:
            add("rename-column", f"CHANGE COLUMN {table}.{old_name.name} TO {coldef.name}")
        self._change_type(table, column, coldef, new, add, to=coldef.name)

    def _change_type(self, table: str, column: str, coldef: exp.ColumnDef, new_table: bool, add: Any,
                     keeps_null: bool = False, to: str | None = None) -> None:
        before = self.column(table, column)
        target = _coltype(coldef)
        verdict, why = classify(before, target)
        self._types[(_key(table), column.lower())] = None
        self._types[(_key(table), (to or column).lower())] = target if target is None or not keeps_null or \
            before is None else MyType(target.name, target.args, target.unsigned, target.charset, before.not_null)
        what = f"MODIFY {table}.{column} {_shown(target)}"
        shown = f"{what} (from {_shown(before)}: {why})" if before is not None else f"{what} ({why})"
        rule = _VERDICT_RULE[verdict]
        renamed = to is not None and to.lower() != column.lower()
        if verdict == "same" and renamed:
            pass  # CHANGE restates the type it keeps: the rename is the finding
        elif RULES[rule].severity == "destructive" or not new_table:
            add(rule, shown)
        if not new_table and not keeps_null and before is not None and before.not_null is not True \
                and target is not None and target.not_null:
            add("set-not-null", f"SET NOT NULL {table}.{column}")


def _touches_only_version_num(node: exp.Expr) -> bool:
    """Alembic's bookkeeping in a version table of another name: DML naming only the version_num column."""
    if isinstance(node, exp.Insert):
        schema = node.this
        names = {c.name for c in schema.expressions} if isinstance(schema, exp.Schema) else set()
    elif isinstance(node, (exp.Update, exp.Delete)):
        if node.args.get("where") is None:
            return False
        names = {c.name for c in node.find_all(exp.Column)}
    else:
        return False
    return names == {sqlrules.VERSION_COLUMN}


def _shown(t: MyType | None) -> str:
    if t is None:
        return "?"
    text = str(t)
    return t.name.upper() + text[len(t.name):] + (" UNSIGNED" if t.unsigned else "")


def _coltype(col: exp.ColumnDef) -> MyType | None:
    kind = col.args.get("kind")
    if not isinstance(kind, exp.DataType):
        return None
    text = kind.sql(dialect="mysql")
    for con in col.args.get("constraints") or ():
        k = con.args.get("kind")
        if isinstance(k, exp.CharacterSetColumnConstraint):
            text += f" CHARACTER SET {k.name}"
        elif (isinstance(k, exp.NotNullColumnConstraint) and not k.args.get("allow_null")) \
                or isinstance(k, exp.PrimaryKeyColumnConstraint):
            text += " NOT NULL"
    found = parse_type(text)
    if found is not None and found.not_null is None:
        found = MyType(found.name, found.args, found.unsigned, found.charset, False)
    return found


# --- API ------------------------------------------------------------------------------------------------------------


def scan(items: Iterable[tuple[str | None, str]], catalog: Catalog | None = None) -> list[Finding]:
    """Findings of a plan: the (revision, SQL) pairs it rendered offline with the MySQL dialect, in the order they
    run. `catalog`: the live database's columns before the plan (``read_catalog``); without it a type change of a
    column the plan did not create is destructive (its current type is not known)."""
    scanner = Scanner(catalog=catalog)
    for revision, sql in items:
        scanner.scan(sql, revision)
    return scanner.findings


def scanner(catalog: Catalog | None = None) -> Scanner:
    """A new scanner of one plan's SQL (the engine's `scanner`)."""
    return Scanner(catalog=catalog)


def alters_columns(items: Sequence[tuple[str | None, str]]) -> bool:
    """Whether the SQL changes a column's type (its findings then depend on the catalog)."""
    return bool(altered_tables(items))


def altered_tables(items: Iterable[tuple[str | None, str]]) -> set[str]:
    """The tables whose columns the plan's MODIFY / CHANGE / ALTER COLUMN ... TYPE change: what ``read_catalog``
    reads of the live database."""
    tables: set[str] = set()
    for _rev, sql in items:
        for stmt in _statements(sql):
            up = [w.upper() for w in _words(stmt)]
            if up[:2] == ["ALTER", "TABLE"] and len(up) > 2 and ("MODIFY" in up or "CHANGE" in up or "TYPE" in up):
                tables.add(_words(stmt)[2].rsplit(".", 1)[-1])
    return tables


# What the plan's scan reads (read only, the connection's database; %s parameters: PyMySQL and mysqlclient).
CATALOG_COLUMNS_SQL: Final = (
    "SELECT TABLE_NAME, COLUMN_NAME, COLUMN_TYPE, CHARACTER_SET_NAME, IS_NULLABLE FROM information_schema.COLUMNS "
    "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME IN ({}) ORDER BY TABLE_NAME, ORDINAL_POSITION")
CATALOG_ROWS_SQL: Final = (
    "SELECT TABLE_NAME, TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() "
    "AND TABLE_NAME IN ({})")


def catalog_from_rows(columns: Iterable[Sequence[Any]], sizes: Iterable[Sequence[Any]] = ()) -> Catalog:
    """The Catalog from the rows of CATALOG_COLUMNS_SQL and CATALOG_ROWS_SQL."""
    types = {(str(t), str(c)): catalog_text(str(ct), cs, nullable) for t, c, ct, cs, nullable in columns}
    rows = {str(t): int(n) for t, n in sizes if n is not None}
    return Catalog(columns=types, rows=rows)


def read_catalog(conn: Connection, items: Iterable[tuple[str | None, str]]) -> Catalog:
    """The live column types of the tables the plan alters, through a DB-API connection (PyMySQL, mysqlclient) to
    the database to migrate, in a read-only transaction that is rolled back: it can never write."""
    tables = sorted(altered_tables(items))
    if not tables:
        return Catalog()
    marks = ", ".join(["%s"] * len(tables))
    cur = conn.cursor()
    try:
        cur.execute("START TRANSACTION READ ONLY")
        cur.execute(CATALOG_COLUMNS_SQL.format(marks), tables)
        columns = list(cur.fetchall())
        cur.execute(CATALOG_ROWS_SQL.format(marks), tables)
        sizes = list(cur.fetchall())
    finally:
        conn.rollback()
        cur.close()
    return catalog_from_rows(columns, sizes)


# --- docs -----------------------------------------------------------------------------------------------------------


def markdown() -> str:
    """The MySQL section of docs/locking.md."""
    lines = [
        "# MySQL and MariaDB",
        "",
        "On `mysql+...` and `mariadb+...` databases the plan's SQL is rendered with the MySQL dialect and scanned by "
        "`sqlscan_mysql` (sqlglot's MySQL parser), with the same finding fields, severities and rule families, and "
        "MySQL's truths: InnoDB builds and drops a plain or UNIQUE index online (`LOCK=NONE`), adds and drops "
        "columns instantly (MariaDB 10.4+, MySQL 8.0.29+) and renames in its metadata, so none of these is a "
        "locking finding (a rename still breaks the running app: that is); what blocks writes is a table copy "
        "(`ALGORITHM=COPY`) or a rebuild under `LOCK=SHARED`. `tests/mariadb/test_scan_mariadb.py` checks each "
        "verdict against MariaDB 10.11 itself: a note runs with `ALGORITHM=INSTANT`, a locking change is refused "
        "with `LOCK=NONE`, an operation not flagged runs with `LOCK=NONE`. MySQL's DDL is not "
        "transactional: each statement commits, so a revision that fails halfway leaves its earlier statements "
        "applied. Column type changes (`MODIFY`, `CHANGE`, `ALTER COLUMN ... TYPE`) are classified against the "
        "column's current type (read from `information_schema.COLUMNS`, read only, with its character set and "
        "NOT NULL), as on PostgreSQL. A statement sqlglot does not parse is a note (`unparsed-sql`) naming it. "
        "Where MariaDB and MySQL differ, the finding names both and the severity follows the slower.",
        "",
    ]
    for severity in sqlrules.SEVERITIES:
        rules = [r for r in RULES.values() if r.severity == severity]
        if not rules:
            continue
        lines += [f"## {severity} (MySQL)", "", "| Rule | What goes wrong | Safely |", "|---|---|---|"]
        lines += [f"| `{r.name}` | {r.why} | {r.safely} |" for r in rules]
        lines.append("")
    lines += ["Not flagged on MySQL (online or metadata only): `CREATE [UNIQUE] INDEX`, `DROP INDEX`, `ADD COLUMN` "
              "(nullable or with a constant DEFAULT), `DROP FOREIGN KEY`, `DROP CHECK`, `ALTER COLUMN ... SET/DROP "
              "DEFAULT`.", ""]
    return "\n".join(lines)

