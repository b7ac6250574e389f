"""Schemas: reflect a database into a plain, sorted snapshot (to compare a database with itself before and after a
round trip) and describe Alembic autogenerate diffs (models vs a database) object by object."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Iterator
from typing import Any, TypedDict

from pydantic import JsonValue
from sqlalchemy import MetaData, create_engine, inspect
from sqlalchemy.engine import URL, Dialect, Inspector
from sqlalchemy.pool import NullPool

from .drivers import sync_url
from .model import DiffObject


class Snapshot(TypedDict):
    """A reflected schema, by section: plain JSON values (names, types as the dialect compiles them, flags)."""

    tables: dict[str, JsonValue]
    views: dict[str, JsonValue]
    enums: dict[str, JsonValue]
    sequences: dict[str, JsonValue]


_SECTIONS = {"tables": "table", "columns": "column", "indexes": "index", "foreign keys": "foreign key",
             "unique constraints": "unique constraint", "check constraints": "check constraint", "views": "view",
             "enums": "enum", "sequences": "sequence"}
_SHORT = 160


# --- snapshots ----------------------------------------------------------------------------------------------------


def snapshot(url: URL, exclude: Collection[str] = ()) -> Snapshot:
    """The database's default schema as nested dicts (tables, columns, keys, indexes, constraints, views, enums,
    sequences), in a form that does not depend on creation order."""
    engine = create_engine(sync_url(url), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            insp = inspect(conn)
            tables = [t for t in insp.get_table_names() if t not in exclude]
            return {
                "tables": {t: _table(insp, t, engine.dialect) for t in tables},
                "views": _views(insp),
                "enums": _enums(insp),
                "sequences": dict.fromkeys(map(str, _optional(insp.get_sequence_names) or []), True),
            }
    finally:
        engine.dispose()


def reflect(url: URL, exclude: Collection[str] = ()) -> MetaData:
    """The database's default schema as a MetaData (to compare another database with it through autogenerate)."""
    engine = create_engine(sync_url(url), poolclass=NullPool)
    try:
        metadata = MetaData()
        with engine.connect() as conn:
            metadata.reflect(bind=conn, only=lambda name, _: name not in exclude)
        return metadata
    finally:
        engine.dispose()


def _optional(call: Callable[[], Any]) -> Any:
    with contextlib.suppress(NotImplementedError, AttributeError):
        return call()
    return None


def _views(insp: Inspector) -> dict[str, JsonValue]:
    def definition(name: str) -> JsonValue:
        return _plain(_optional(lambda: insp.get_view_definition(name)))

    return {name: definition(name) for name in insp.get_view_names()}


def _enums(insp: Inspector) -> dict[str, JsonValue]:
    get_enums = getattr(insp, "get_enums", None)  # PostgreSQL's inspector only
    return {str(e["name"]): _plain(e["labels"]) for e in (get_enums() if get_enums else [])}


def _table(insp: Inspector, name: str, dialect: Dialect) -> dict[str, JsonValue]:
    pk = insp.get_pk_constraint(name)
    comment = _optional(lambda: insp.get_table_comment(name)) or {}
    return {
        "columns": {c["name"]: _column(c, dialect) for c in insp.get_columns(name)},
        "primary key": _plain({"name": pk.get("name"), "columns": pk.get("constrained_columns")}),
        "foreign keys": _keyed(insp.get_foreign_keys(name), "constrained_columns"),
        "indexes": _keyed(insp.get_indexes(name), "column_names"),
        "unique constraints": _keyed(_optional(lambda: insp.get_unique_constraints(name)) or [], "column_names"),
        "check constraints": _keyed(_optional(lambda: insp.get_check_constraints(name)) or [], "sqltext"),
        "comment": comment.get("text"),
    }


def _column(col: Any, dialect: Dialect) -> dict[str, JsonValue]:
    try:
        type_ = col["type"].compile(dialect=dialect)
    except Exception:
        type_ = repr(col["type"])
    out: dict[str, JsonValue] = {"type": type_, "nullable": col.get("nullable"), "default": col.get("default")}
    for key in ("comment", "computed", "identity"):
        if col.get(key) is not None:
            out[key] = _plain(col[key])
    return out


def _keyed(items: list[Any], identity: str) -> dict[str, JsonValue]:
    """Named objects by name; unnamed ones (SQLite) by what identifies them."""
    out: dict[str, JsonValue] = {}
    for item in items:
        key = item.get("name") or f"(unnamed: {_short(item.get(identity))})"
        out[str(key)] = _plain({k: v for k, v in item.items() if k != "name"})
    return out


def _plain(value: Any) -> JsonValue:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


# --- comparing snapshots ------------------------------------------------------------------------------------------


def compare_snapshots(expected: Any, actual: Any, before: str, after: str) -> list[str]:
    """Differences, one line each: 'table t1, column x: VARCHAR(10) at base, VARCHAR(20) after the round trip'."""
    return list(_compare(expected, actual, (), before, after))


def _compare(expected: Any, actual: Any, path: tuple[str, ...], before: str, after: str) -> Iterator[str]:
    if isinstance(expected, dict) and isinstance(actual, dict):
        for key in sorted(set(expected) | set(actual), key=str):
            here = (*path, str(key))
            if key not in actual:
                yield f"{_label(here)}: {before}, but not {after} ({_short(expected[key])})"
            elif key not in expected:
                yield f"{_label(here)}: {after}, but not {before} ({_short(actual[key])})"
            else:
                yield from _compare(expected[key], actual[key], here, before, after)
    elif expected != actual:
        yield f"{_label(path)}: {_short(expected)} {before}, {_short(actual)} {after}"


def _label(path: tuple[str, ...]) -> str:
    parts: list[str] = []
    index = 0
    while index < len(path):
        section = _SECTIONS.get(path[index])
        if section and index + 1 < len(path):
            parts.append(f"{section} {path[index + 1]}")
            index += 2
        else:
            parts.append(path[index])
            index += 1
    return ", ".join(parts) or "schema"


def _short(value: Any) -> str:
    if isinstance(value, dict):
        text = ", ".join(f"{k}={_short(v)}" for k, v in value.items() if v not in (None, [], {}))
    elif isinstance(value, list):
        text = "[" + ", ".join(_short(v) for v in value) + "]"
    else:
        text = str(value)
    return text if len(text) <= _SHORT else text[: _SHORT - 1] + "…"


# --- describing autogenerate diffs --------------------------------------------------------------------------------


def describe_diffs(diffs: list[Any], dialect: Dialect | None, models: str, database: str) -> list[DiffObject]:
    """One dict per difference: object, table, column/name, change, and a message naming `models` (what the
    metadata says) and `database` (what the database has)."""
    out: list[DiffObject] = []
    for diff in diffs:
        for item in diff if isinstance(diff, list) else [diff]:
            out.append(_describe(item, _Words(dialect, models, database)))
    return out


class _Words:
    def __init__(self, dialect: Dialect | None, models: str, database: str) -> None:
        self.dialect, self.models, self.database = dialect, models, database

    def type(self, value: Any) -> str:
        if value is None:
            return "?"
        try:
            return str(value.compile(dialect=self.dialect))
        except Exception:
            return repr(value)

    def only(self, op: str) -> str:
        if op.startswith("add"):
            return f"in {self.models}, not in {self.database}"
        return f"in {self.database}, not in {self.models}"


def _describe(item: tuple[Any, ...], words: _Words) -> DiffObject:
    op = item[0]
    handler = _HANDLERS.get(op.removeprefix("add_").removeprefix("remove_").removeprefix("modify_"))
    obj: DiffObject = handler(item, words) if handler else {"object": "other", "detail": repr(item[1:])[:300]}
    obj["change"] = op
    obj.setdefault("message", f"{_what(obj)}: {words.only(op)}")
    return obj


def _what(obj: DiffObject) -> str:
    kind = obj["object"]
    if kind == "table":
        return f"table {obj['table']}"
    if kind == "column":
        return f"column {obj['table']}.{obj['column']} ({obj.get('type')}, {obj.get('nullability')})"
    columns = ", ".join(obj.get("columns") or [])
    name = obj.get("name") or "unnamed"
    extra = f" -> {obj['references']}" if obj.get("references") else ""
    return f"{kind} {name} on {obj.get('table')} ({columns}){extra}"


def _table_diff(item: tuple[Any, ...], words: _Words) -> DiffObject:
    table = item[1]
    return {"object": "table", "table": table.name, "schema": table.schema}


def _table_comment(item: tuple[Any, ...], words: _Words) -> DiffObject:
    table = item[1]
    return {"object": "comment", "table": table.name,
            "message": f"comment of table {table.name}: {table.comment!r} in {words.models}, differs in "
                       f"{words.database}"}


def _column_diff(item: tuple[Any, ...], words: _Words) -> DiffObject:
    _, schema, table, column = item[:4]
    return {"object": "column", "table": table, "schema": schema, "column": column.name,
            "type": words.type(column.type), "nullability": "NULL" if column.nullable else "NOT NULL"}


def _index_diff(item: tuple[Any, ...], words: _Words) -> DiffObject:
    index = item[1]
    kind = "unique index" if index.unique else "index"
    columns = [getattr(e, "name", None) or str(e) for e in index.expressions]
    return {"object": kind, "table": index.table.name if index.table is not None else None, "name": index.name,
            "columns": columns}


def _constraint_diff(item: tuple[Any, ...], words: _Words) -> DiffObject:
    con = item[1]
    kind = {"unique_constraint": "unique constraint", "check_constraint": "check constraint",
            "primary_key_constraint": "primary key"}.get(con.__visit_name__, "constraint")
    table = con.table.name if con.table is not None else None
    return {"object": kind, "table": table, "name": con.name, "columns": [c.name for c in con.columns]}


def _fk_diff(item: tuple[Any, ...], words: _Words) -> DiffObject:
    fk = item[1]
    referred = fk.referred_table.name if fk.elements else "?"
    targets = ", ".join(e.column.name for e in fk.elements)
    return {"object": "foreign key", "table": fk.parent.name, "name": fk.name,
            "columns": [c.name for c in fk.columns], "references": f"{referred}({targets})"}


Render = Callable[["_Words", Any], str]


def _modify(attribute: str, render: Render) -> Callable[[tuple[Any, ...], _Words], DiffObject]:
    def handler(item: tuple[Any, ...], words: _Words) -> DiffObject:
        _, schema, table, column, _existing, in_db, in_models = item
        db_value, model_value = render(words, in_db), render(words, in_models)
        return {"object": attribute, "table": table, "schema": schema, "column": column,
                "database": db_value, "models": model_value,
                "message": f"column {table}.{column}: {attribute} {model_value} in {words.models}, {db_value} in "
                           f"{words.database}"}

    return handler


def _type(words: _Words, value: Any) -> str:
    return words.type(value)


def _nullability(words: _Words, value: Any) -> str:
    return "NULL" if value else "NOT NULL"


def _default(words: _Words, value: Any) -> str:
    if value is None or value is False:
        return "none"
    arg = getattr(value, "arg", value)
    return str(getattr(arg, "text", arg))


def _comment(words: _Words, value: Any) -> str:
    return repr(value)


_HANDLERS: dict[str, Callable[[tuple[Any, ...], _Words], DiffObject]] = {
    "table": _table_diff,
    "table_comment": _table_comment,
    "column": _column_diff,
    "index": _index_diff,
    "constraint": _constraint_diff,
    "fk": _fk_diff,
    "type": _modify("type", _type),
    "nullable": _modify("nullability", _nullability),
    "default": _modify("server default", _default),
    "comment": _modify("comment", _comment),
}
