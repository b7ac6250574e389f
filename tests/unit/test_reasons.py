"""The vocabulary of reasons (alembic_operator.reasons) is the only one: no module spells a reason but the registry
(and the runner's own module, checked against it), and the generated reference, the runbooks and API.md agree with it
(no cluster)."""

from __future__ import annotations

import ast
import functools
import re
import shutil
from pathlib import Path
from typing import get_args

import pytest

from alembic_operator import api, crdgen, reasons
from alembic_operator import constants as c
from alembic_operator.runner import reasons as runner_reasons
from alembic_operator.runner.errors import EXIT_CODES

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "operator" / "alembic_operator"
API_MD = REPO.parent / "shared" / "API.md"
CAMEL = re.compile(r"^(?:[A-Z][a-z]+|OOM)(?:[A-Z][a-z0-9]*|URL)*$")  # OOMKilled: Kubernetes' spelling, kept
# The registry, and the runner's one module of its own reasons (it runs without this package): the only places a
# reason is spelled.
REGISTRIES = {PACKAGE / "reasons.py", PACKAGE / "runner" / "reasons.py"}
NOT_REASONS = set(c.PHASES) | {c.READY, c.RECONCILING, c.STALLED, c.BACKUP_SUCCEEDED, c.MIGRATED, c.ROLLED_BACK,
                               c.APPROVAL_REQUIRED, c.DRIFTED, c.EXPANDED, c.CONTRACTED, "True", "False", "Normal",
                               "Warning"}
# Words of other vocabularies that happen to be spelled like a reason (a phase Planning, a run's result UpToDate, the
# condition type Migrated, the printer column Held): allowed as such, never where a reason goes (`_literals`).
SHARED = (set(c.PHASES) | set(get_args(api.RunStep)) | set(get_args(api.RunResult)) | NOT_REASONS
          | {str(col["name"]) for col in crdgen.PRINTER_COLUMNS}
          | set(get_args(api.ContractStatus.model_fields["state"].annotation))  # status.contract.state
          | {"Baselined"})  # status.history[].result of a baseline stamp (reconcile.record)
REASON_KEYWORDS = {"reason", "error_reason"}
# Kubernetes' own reasons: CRD validation rules' (x-kubernetes-validations), and those read from pods and Jobs, never
# written by us (the kubelet's, the Eviction API's): not ours to declare.
KUBERNETES_REASONS = {"FieldValueInvalid", "FieldValueRequired", "FieldValueForbidden", "FieldValueDuplicate",
                      "Evicted", "EvictionByEvictionAPI", "CreateContainerConfigError"}


def _reason_parameters(trees: list[ast.AST]) -> dict[str, set[int | str]]:
    """Function (or class, by its __init__) name -> the positions and names of its parameters typed `Reason`."""
    found: dict[str, set[int | str]] = {}
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                init = next((f for f in node.body if isinstance(f, ast.FunctionDef) and f.name == "__init__"), None)
                if init is not None:
                    found.setdefault(node.name, set()).update(_typed(init, skip_self=True))
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                found.setdefault(node.name, set()).update(_typed(node, skip_self=bool(node.args.args)
                                                                 and node.args.args[0].arg in ("self", "cls")))
    return {name: where for name, where in found.items() if where}


def _typed(func: ast.FunctionDef | ast.AsyncFunctionDef, skip_self: bool) -> set[int | str]:
    params = [*func.args.posonlyargs, *func.args.args][1 if skip_self else 0:]
    where: set[int | str] = set()
    for index, arg in enumerate(params):
        if arg.annotation is not None and "Reason" in ast.unparse(arg.annotation).split(" | ")[0]:
            where |= {index, arg.arg}
    where |= {arg.arg for arg in func.args.kwonlyargs
              if arg.annotation is not None and "Reason" in ast.unparse(arg.annotation)}
    return where


def _literals(tree: ast.AST, declared: set[str], params: dict[str, set[int | str]]) -> list[tuple[int, str, str]]:
    """(line, word, form) of every string constant spelling a declared reason: in any form (an argument, a keyword,
    an error's reason, returned, assigned, compared, in a dict). A word another vocabulary shares (`SHARED`) is
    reported only where a reason goes: a parameter typed `Reason`, a `reason=`/`error_reason=` keyword, a
    {"reason": ...} entry, a comparison with a reason, a function returning `Reason`."""
    parents = {id(child): node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
            continue
        if node.value not in declared:  # a made-up reason: where it would become one (mypy sees typed places)
            form, where_reason = _form(node, parents, params)
            placed = form.startswith(("keyword", "argument", "the dict value", "made into")) or (
                form == "compared" and _compared_with_a_result(parents[id(node)]))
            if where_reason and placed and CAMEL.match(node.value) and node.value not in KUBERNETES_REASONS:
                found.append((node.lineno, node.value, f"{form}, undeclared"))
            continue
        form, where_reason = _form(node, parents, params)
        if form == "assigned to __all__":  # a Python name (the class DatabaseError), not a word of ours
            continue
        if node.value not in SHARED or where_reason:
            found.append((node.lineno, node.value, form))
    return found


def _form(node: ast.AST, parents: dict[int, ast.AST], params: dict[str, set[int | str]]) -> tuple[str, bool]:
    """How a constant is used, and whether that place takes a reason."""
    parent = parents.get(id(node))
    while isinstance(parent, ast.BoolOp | ast.IfExp | ast.Tuple | ast.List | ast.Set | ast.Starred):
        node, parent = parent, parents.get(id(parent))
    if isinstance(parent, ast.keyword):
        call = parents.get(id(parent))
        name = _called(call) if isinstance(call, ast.Call) else ""
        return f"keyword {parent.arg}=", parent.arg in REASON_KEYWORDS or parent.arg in params.get(name, ())
    if isinstance(parent, ast.Call):
        name = _called(parent)
        if name == "Reason":
            return "made into a Reason", True
        if node in parent.args:
            index = parent.args.index(node)
        return f"argument {index + 1} of {name}()", index in params.get(name, ())
        return "called", False
    if isinstance(parent, ast.Return):
        func = next((p for p in _ancestors(parent, parents) if isinstance(p, ast.FunctionDef | ast.AsyncFunctionDef)),
                    None)
        return "returned", func is not None and func.returns is not None and "Reason" in ast.unparse(func.returns)
    if isinstance(parent, ast.Assign | ast.AnnAssign | ast.AugAssign):
        target = ast.unparse(parent.targets[0] if isinstance(parent, ast.Assign) else parent.target)
        return f"assigned to {target}", "reason" in target.lower()
    if isinstance(parent, ast.Compare):
        return "compared", "reason" in ast.unparse(parent).lower()
    if isinstance(parent, ast.Dict):
        key = next((k for k, v in zip(parent.keys, parent.values, strict=True) if v is node), None)
        if key is None:
            return "a dict key", False
        return f"the dict value of {ast.unparse(key)}", isinstance(key, ast.Constant) and key.value == "reason"
    return type(parent).__name__ if parent is not None else "module", False


def _compared_with_a_result(compare: ast.AST) -> bool:
    """x.get("reason") == "...": a result's reason (not a Kubernetes object's, read as `reason ==`)."""
    left = compare.left if isinstance(compare, ast.Compare) else None
    return (isinstance(left, ast.Call) and isinstance(left.func, ast.Attribute) and left.func.attr == "get"
            and bool(left.args) and isinstance(left.args[0], ast.Constant) and left.args[0].value == "reason")


def _called(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def _ancestors(node: ast.AST, parents: dict[int, ast.AST]) -> list[ast.AST]:
    found = []
    parent = parents.get(id(node))
    while parent is not None:
        found.append(parent)
        parent = parents.get(id(parent))
    return found


def _modules(root: Path) -> dict[Path, ast.Module]:
    return {path: _parsed(path.read_text()) for path in sorted(root.rglob("*.py"))}


@functools.cache
def _parsed(source: str) -> ast.Module:
    """One parse per distinct source (a copy of the package shares the unchanged modules' trees)."""
    return ast.parse(source)


@functools.cache
def _module_parameters(tree: ast.Module) -> tuple[tuple[str, frozenset[int | str]], ...]:
    return tuple((name, frozenset(where)) for name, where in _reason_parameters([tree]).items())


@functools.cache
def _module_literals(tree: ast.Module, params: tuple[tuple[str, frozenset[int | str]], ...]
                     ) -> list[tuple[int, str, str]]:
    return _literals(tree, set(reasons.ALL), {name: set(where) for name, where in params})


def _guard(root: Path) -> list[str]:
    """The reason literals of the package at `root`, outside its registries, as `path:line: word (form)`."""
    trees = _modules(root)
    merged: dict[str, set[int | str]] = {}
    for tree in trees.values():
        for name, where in _module_parameters(tree):
            merged.setdefault(name, set()).update(where)
    params = tuple(sorted((name, frozenset(where)) for name, where in merged.items()))
    registries = {r.relative_to(PACKAGE) for r in REGISTRIES}
    return [f"{path.relative_to(root)}:{line}: {word} ({form})"
            for path, tree in trees.items() if path.relative_to(root) not in registries
            for line, word, form in _module_literals(tree, params)]


def test_no_reason_is_spelled_outside_the_registry() -> None:
    """Every reason is a `reasons.Reason` constant: a literal in any form anywhere else fails (mypy refuses one where
    a `Reason` is typed; this catches the rest, e.g. a literal compared with a result's reason)."""
    found = _guard(PACKAGE)
    assert not found, "use the constants of alembic_operator/reasons.py (runner: runner/reasons.py):\n" + "\n".join(
        found)


def test_the_code_emits_reasons_through_the_registry() -> None:
    """The constants of the registries are what the code uses: a scan of `reasons.X` / `r.X` references finds them."""
    used: set[str] = set()
    for tree in _modules(PACKAGE).values():
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in ("reasons", "r") and node.attr.isupper()):
                value = getattr(reasons, node.attr, None) or getattr(runner_reasons, node.attr, None)
                if isinstance(value, reasons.Reason | runner_reasons.Reason):
                    used.add(value)
    assert len(used) > 20, "the scan found too few reasons: it no longer matches how the code emits them"
    assert used <= set(reasons.ALL), used - set(reasons.ALL)


@pytest.mark.parametrize(("snippet", "form"), [
    ('raise JobError("LockTimeout", "held")', "argument 1 of JobError()"),
    ('raise StoreError("BackupCorrupt", "no")', "argument 1 of StoreError()"),
    ('_run(cmd, db, "pg_dump", "BackupFailed")', "argument 4 of _run()"),
    ('DatabaseObservation(error_reason="DatabaseNotFound")', "keyword error_reason="),
    ('Failure(reason="ScriptError", message="m")', "keyword reason="),
    ('def f() -> str:\n    return "PlanInvalid"', "returned"),
    ('reason = "ToolNotFound"', "assigned to reason"),
    ('result = {"ok": False, "reason": "InternalError"}', "the dict value of 'reason'"),
    ('if result.get("reason") == "LockTimeout": pass', "compared"),
    ('x = why or "RestoreFailed"', "assigned to x"),
    ('CODES = {"MultipleHeads": 3}', "a dict key"),
    ('stalled("Failed", "Migrating", "m")', "argument 2 of stalled()"),  # a shared spelling where a reason goes
    ('if result.get("reason") == "Migrated": pass', "compared"),
    ('raise Failure(Reason("LockTimeout"), "m")', "made into a Reason"),
    ('raise Failure(Reason("LockTimedOut"), "m")', "made into a Reason, undeclared"),  # mypy would let it pass
    ('result = {"ok": False, "reason": "LockTimedOut"}', "the dict value of 'reason', undeclared"),
    ('if report.get("reason") == "LockTimedOut": pass', "compared, undeclared"),
    ('Failure(reason="LockTimedOut", message="m")', "keyword reason=, undeclared"),
])
def test_the_guard_finds_a_literal_in_every_form(snippet: str, form: str) -> None:
    params = {"stalled": {1, "reason"}, "_run": {3, "reason"}}
    found = _literals(ast.parse(snippet), set(reasons.ALL), params)
    assert [f for _line, _word, f in found] == [form], found


def test_the_guard_lets_other_vocabularies_be() -> None:
    """A phase, a run's result, a condition type are not reasons, though spelled like some."""
    snippet = 'self.run.step = "Migrating"\nif run.result in ("Succeeded", "UpToDate"): pass\nMIGRATED = "Migrated"'
    assert _literals(ast.parse(snippet), set(reasons.ALL), {}) == []


@pytest.mark.parametrize(("module", "planted"), [
    ("engines/postgresql.py", '\n\ndef _planted() -> JobError:\n    return JobError("DatabaseError", "x")\n'),
    ("jobtools.py", '\n\ndef _planted() -> None:\n    raise JobError(reason="PlanInvalid", message="x")\n'),
    ("backupstores/volume.py", '\n\nPLANTED = {"ok": False, "reason": "BackupNotFound"}\n'),
])
def test_the_guard_fails_on_a_literal_planted_in_a_copy(tmp_path: Path, module: str, planted: str) -> None:
    """A copy of the package with one literal added: the guard that passes on the real one names it."""
    copy = tmp_path / "alembic_operator"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "*.json", "*.lua"))
    assert _guard(copy) == []
    with (copy / module).open("a") as out:
        out.write(planted)
    found = _guard(copy)
    assert len(found) == 1 and found[0].startswith(f"{module}:"), found


def test_kopf_events_are_posted_only_through_the_typed_poster() -> None:
    """`events.post` takes a `Reason`: a `kopf.event` call anywhere else could post a literal."""
    calls = [f"{path.relative_to(PACKAGE)}:{node.lineno}" for path, tree in _modules(PACKAGE).items()
             if path.name != "events.py" for node in ast.walk(tree)
             if isinstance(node, ast.Attribute) and node.attr == "event" and ast.unparse(node.value) == "kopf"]
    assert not calls, calls


def test_runner_reasons_are_declared() -> None:
    """The runner spells its reasons itself (it runs without this package), in one module: each one is declared in the
    registry with the same spelling, and each one it maps to an exit code is one of them."""
    assert runner_reasons.ALL and set(runner_reasons.ALL) <= set(reasons.ALL), (
        set(runner_reasons.ALL) - set(reasons.ALL))
    assert all(isinstance(r, runner_reasons.Reason) and name == r for name, r in runner_reasons.ALL.items())
    spelled = set(EXIT_CODES)
    assert spelled, "no reason -> exit code table found in the runner"
    assert spelled <= set(runner_reasons.ALL) <= set(reasons.ALL), spelled - set(reasons.ALL)


def test_a_reason_is_only_what_the_registry_declares() -> None:
    assert reasons.Reason("LockTimeout") is reasons.LOCK_TIMEOUT
    assert reasons.LOCK_TIMEOUT.info.transient and reasons.parse("LockTimeout") is reasons.LOCK_TIMEOUT
    with pytest.raises(ValueError, match="not a declared reason"):
        reasons.Reason("LockTimedOut")
    assert reasons.parse("LockTimedOut") is None and reasons.parse(None) is None


def test_reasons_are_camel_case_and_not_phases_or_conditions() -> None:
    for name, info in reasons.ALL.items():
        assert CAMEL.match(name), name
        assert name == info.name
        assert info.meaning and not info.meaning.endswith(".")
        assert info.where, name


def test_derived_sets() -> None:
    plan_errors = {"MultipleHeads", "UnknownRevision", "UnknownTargetRevision", "DowngradeNotSupported"}
    modes = {"TransactionRolledBack": "transaction", "Downgraded": "downgrade", "Restored": "restore"}
    assert plan_errors == reasons.PLAN_ERRORS
    assert {"DatabaseUnreachable", "LockTimeout", "BackupUploadInterrupted"} == reasons.TRANSIENT_JOB_REASONS
    assert modes == reasons.ROLLBACK_MODES
    assert all(reasons.info(r).kind == "stalled" for r in reasons.PLAN_ERRORS)


def test_generated_reference_is_current() -> None:
    assert (REPO / "docs" / "reasons.md").read_text() == reasons.markdown(), (
        "docs/reasons.md is stale: run make crd")


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_runbook_anchors_match_the_runbooks() -> None:
    headings = [line[3:] for line in (REPO / "docs" / "runbooks.md").read_text().splitlines()
                if line.startswith("## ")]
    slugs = {_slug(h) for h in headings}
    for info in reasons.ALL.values():
        if info.runbook:
            assert info.runbook in slugs, f"{info.name}: no runbook heading with anchor {info.runbook}"
    for heading in headings:
        named = {w.split("=")[0] for w in re.findall(r"`([A-Za-z=]+)`", heading)} - NOT_REASONS
        for name in named:
            assert name in reasons.ALL, f"runbook heading {heading!r} names undeclared reason {name}"
            assert reasons.ALL[name].runbook == _slug(heading), f"{name}: runbook anchor should be {_slug(heading)}"


@pytest.mark.skipif(not API_MD.is_file(), reason="shared/API.md is not beside the repository")
def test_api_md_reasons_are_declared() -> None:
    text = API_MD.read_text()
    listed = re.search(r"Examples of Stalled reasons:(.*?)\n\n", text, re.S)
    assert listed, "API.md's list of reasons moved"
    names = set(re.findall(r"`([A-Za-z]+)`", listed.group(1)))
    assert names and names <= set(reasons.ALL), names - set(reasons.ALL)
    assert all(reasons.info(n).kind in ("stalled", "progressing") for n in names)
