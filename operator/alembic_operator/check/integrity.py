"""Script integrity, read from the revision files themselves (Alembic warns or raises on a broken graph before it
can tell what is wrong): one head, unique ids, every down_revision present, every revision reachable from base.

Also reads each file's suppressions: a comment ``# alembic-operator: allow drop-column, drop-table``.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .model import Finding, finding, known_rule

ALLOW = re.compile(r"#\s*alembic-operator:\s*allow\s+([A-Za-z0-9_,\- \t]+)")
_SOURCE = re.compile(r"^(?!\.#|__init__).*\.py$")  # Alembic's _only_source_rev_file


@dataclass
class RevisionFile:
    path: Path
    revision: str | None = None
    down: tuple[str, ...] = ()
    message: str = ""
    allow: frozenset[str] = frozenset()
    error: str | None = None
    irreversible: bool = False  # downgrade() does nothing although upgrade() does


@dataclass
class Graph:
    files: list[RevisionFile]
    by_id: dict[str, RevisionFile] = field(default_factory=dict)
    children: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def __post_init__(self) -> None:
        for rf in self.files:
            if rf.revision and rf.revision not in self.by_id:
                self.by_id[rf.revision] = rf
        for rev, rf in self.by_id.items():
            for down in rf.down:
                self.children[down].append(rev)

    @property
    def bases(self) -> list[str]:
        return sorted(rev for rev, rf in self.by_id.items() if not rf.down)

    def reachable(self) -> set[str]:
        seen: set[str] = set()
        todo = list(self.bases)
        while todo:
            rev = todo.pop()
            if rev not in seen:
                seen.add(rev)
                todo.extend(self.children.get(rev, ()))
        return seen

    def heads(self, among: set[str]) -> list[str]:
        return sorted(rev for rev in among if not any(c in among for c in self.children.get(rev, ())))

    def ancestors(self, rev: str) -> Iterator[str]:
        seen: set[str] = set()
        todo = [rev]
        while todo:
            current = todo.pop()
            if current in seen:
                continue
            seen.add(current)
            yield current
            rf = self.by_id.get(current)
            todo.extend(rf.down if rf else ())


# --- reading the files ------------------------------------------------------------------------------------------


def revision_files(dirs: Iterable[Path], recursive: bool = False) -> list[Path]:
    out: list[Path] = []
    for directory in dirs:
        if directory.is_dir():
            candidates = directory.rglob("*.py") if recursive else directory.glob("*.py")
            out.extend(sorted(p for p in candidates if _SOURCE.match(p.name)))
    return out


def read_revision_file(path: Path) -> RevisionFile:
    rf = RevisionFile(path)
    try:
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source, filename=str(path))
    except (OSError, SyntaxError, ValueError) as exc:
        rf.error = f"cannot parse: {exc}"
        return rf
    rf.allow = frozenset(_allowed(source))
    rf.message = (ast.get_docstring(tree) or "").strip().split("\n")[0]
    rf.irreversible = _does_something(tree, "upgrade") and not _does_something(tree, "downgrade")
    values = _assignments(tree)
    try:
        revision = values.get("revision")
        rf.revision = str(revision) if revision else None
        rf.down = _as_tuple(values.get("down_revision"))
    except (TypeError, ValueError) as exc:
        rf.error = str(exc)
    if rf.revision is None and rf.error is None:
        rf.error = "no `revision = '...'` at module level"
    return rf


def _does_something(tree: ast.Module, name: str) -> bool:
    """Whether the module-level function `name` has a statement other than pass, a docstring, `...` or raise."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            return any(not _inert(statement) for statement in node.body)
    return False


def _inert(statement: ast.stmt) -> bool:
    constant = isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant)
    return constant or isinstance(statement, (ast.Pass, ast.Raise))


def _allowed(source: str) -> set[str]:
    rules: set[str] = set()
    for match in ALLOW.finditer(source):
        rules.update(name for name in re.split(r"[,\s]+", match.group(1)) if name)
    return rules


def _assignments(tree: ast.Module) -> dict[str, object]:
    out: dict[str, object] = {}
    for node in tree.body:
        target, value = _assigned(node)
        if target in ("revision", "down_revision") and value is not None:
            try:
                out[target] = ast.literal_eval(value)
            except ValueError:
                out[target] = _NotLiteral(f"{target} is not a literal")
    return out


class _NotLiteral:
    def __init__(self, message: str) -> None:
        self.message = message


def _assigned(node: ast.stmt) -> tuple[str | None, ast.expr | None]:
    if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
        return node.targets[0].id, node.value
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return node.target.id, node.value
    return None, None


def _as_tuple(value: Any) -> tuple[str, ...]:
    if isinstance(value, _NotLiteral):
        raise ValueError(value.message)
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (tuple, list)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise TypeError(f"down_revision has an unexpected value {value!r}")


# --- the checks ---------------------------------------------------------------------------------------------------


def check_files(files: list[RevisionFile]) -> list[Finding]:
    graph = Graph(files)
    reachable = graph.reachable()
    return [
        *_unreadable(files),
        *_duplicates(files),
        *_missing(graph),
        *_unreachable(graph, reachable),
        *_heads(graph, reachable),
        *_bases(graph),
        *_unknown_allows(files),
    ]


def _unreadable(files: list[RevisionFile]) -> Iterator[Finding]:
    for rf in files:
        if rf.error:
            yield finding("script-error", f"{rf.path.name}: {rf.error}", revision=rf.revision)


def _duplicates(files: list[RevisionFile]) -> Iterator[Finding]:
    paths: dict[str, list[Path]] = defaultdict(list)
    for rf in files:
        if rf.revision:
            paths[rf.revision].append(rf.path)
    for rev, where in sorted(paths.items()):
        if len(where) > 1:
            names = ", ".join(p.name for p in where)
            yield finding("duplicate-revision", f"revision {rev} is declared by {len(where)} files: {names}; "
                          "give each a unique id (and fix the down_revision of its children)",
                          revision=rev, details=[str(p) for p in where])


def _missing(graph: Graph) -> Iterator[Finding]:
    for rev, rf in sorted(graph.by_id.items()):
        for down in rf.down:
            if down not in graph.by_id:
                yield finding("missing-down-revision", f"revision {rev} ({rf.path.name}) has down_revision {down}, "
                              "which no revision file declares: restore that revision or point down_revision at "
                              "an existing one", revision=rev)


def _unreachable(graph: Graph, reachable: set[str]) -> Iterator[Finding]:
    for rev, rf in sorted(graph.by_id.items()):
        if rev in reachable or any(d not in graph.by_id for d in rf.down):
            continue  # reachable, or already reported as missing-down-revision
        broken = [a for a in graph.ancestors(rev)
                  if a in graph.by_id and any(d not in graph.by_id for d in graph.by_id[a].down)]
        why = (f"it descends from {', '.join(sorted(broken))}, whose down_revision is missing" if broken
               else "its down_revision chain loops back on itself")
        yield finding("unreachable-revision", f"revision {rev} ({rf.path.name}) cannot be reached from base: {why}",
                      revision=rev)


def _heads(graph: Graph, reachable: set[str]) -> Iterator[Finding]:
    heads = graph.heads(reachable)
    if len(heads) > 1:
        listed = [f"{h} ({graph.by_id[h].message or graph.by_id[h].path.name})" for h in heads]
        yield finding("multiple-heads", f"the scripts have {len(heads)} heads: {', '.join(heads)}; merge them with "
                      f"`alembic merge heads -m \"merge heads\"` (or `alembic merge {' '.join(heads)}`)",
                      details=listed)


def _bases(graph: Graph) -> Iterator[Finding]:
    bases = graph.bases
    if len(bases) > 1:
        yield finding("multiple-bases", f"{len(bases)} revisions have no down_revision: {', '.join(bases)}; unless "
                      "these are independent branches on purpose, set the down_revision that was lost")


def _unknown_allows(files: list[RevisionFile]) -> Iterator[Finding]:
    for rf in files:
        for rule in sorted(rf.allow):
            if not known_rule(rule):
                yield finding("unknown-allow-rule", f"{rf.path.name} allows `{rule}`, which is not a rule name "
                              "(see docs/check.md)", revision=rf.revision)
