"""The vocabulary of reasons (alembic_operator.reasons) is the only one: every reason any module emits is declared
there, and the generated reference, the runbooks and API.md agree with it (no cluster)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from alembic_operator import constants as c
from alembic_operator import reasons

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "operator" / "alembic_operator"
API_MD = REPO.parent / "shared" / "API.md"
CAMEL = re.compile(r"^(?:[A-Z][a-z]+|OOM)(?:[A-Z][a-z0-9]*|URL)*$")  # OOMKilled: Kubernetes' spelling, kept
# Calls whose first argument is a reason: Job and database errors, gate verdicts, Events.
REASON_CALLS = {"Failure", "JobError", "DatabaseError", "Verdict", "fail", "progressing", "stalled", "ready"}
# Kubernetes' own reasons for CRD validation rules (x-kubernetes-validations): a fixed set, not ours to declare.
KUBERNETES_REASONS = {"FieldValueInvalid", "FieldValueRequired", "FieldValueForbidden", "FieldValueDuplicate",
                      # read from pods (podstate), never written: the kubelet's and the Eviction API's own words
                      "Evicted", "EvictionByEvictionAPI"}
NOT_REASONS = set(c.PHASES) | {c.READY, c.RECONCILING, c.STALLED, c.BACKUP_SUCCEEDED, c.MIGRATED, c.ROLLED_BACK,
                               c.APPROVAL_REQUIRED, c.DRIFTED, "True", "False", "Normal", "Warning"}


def _emitted(tree: ast.AST) -> set[str]:
    """String constants used as a reason: a reason argument, a `reason=` keyword, a {"reason": ...} entry."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            args = list(node.args)
            if name in ("progressing", "stalled"):
                args = args[1:2]  # (phase, reason, message)
            elif name in REASON_CALLS:
                args = args[:1] if name != "Verdict" else args[1:2]
            else:
                args = []
            found |= {a.value for a in args if isinstance(a, ast.Constant) and isinstance(a.value, str)}
            found |= {k.value.value for k in node.keywords
                      if k.arg == "reason" and isinstance(k.value, ast.Constant) and isinstance(k.value.value, str)}
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if (isinstance(key, ast.Constant) and key.value == "reason" and isinstance(value, ast.Constant)
                        and isinstance(value.value, str)):
                    found.add(value.value)
        elif isinstance(node, ast.Compare) and isinstance(node.left, ast.Call):  # x.get("reason") == "Literal"
            call = node.left
            if (isinstance(call.func, ast.Attribute) and call.func.attr == "get" and call.args
                    and isinstance(call.args[0], ast.Constant) and call.args[0].value == "reason"):
                found |= {x.value for x in node.comparators if isinstance(x, ast.Constant)}
    return found


def test_every_emitted_reason_is_declared() -> None:
    emitted: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        for reason in _emitted(ast.parse(path.read_text(), str(path))):
            emitted.setdefault(reason, set()).add(str(path.relative_to(PACKAGE)))
    assert len(emitted) > 20, "the scan found too few reasons: it no longer matches how the code emits them"
    undeclared = {r: sorted(where) for r, where in emitted.items()
                  if r not in reasons.ALL and r not in KUBERNETES_REASONS}
    assert not undeclared, f"declare these in alembic_operator/reasons.py: {undeclared}"


def test_runner_reasons_are_declared() -> None:
    """The runner spells its reasons itself (it runs without this package): each one it maps to an exit code."""
    runner = PACKAGE / "runner"
    texts = " ".join(p.read_text() for p in runner.rglob("*.py"))
    spelled = set(re.findall(r'"([A-Z][A-Za-z]+)":\s*EXIT_', texts))
    assert spelled, "no reason -> exit code table found in the runner"
    assert spelled <= set(reasons.ALL), spelled - set(reasons.ALL)


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
    assert {"DatabaseUnreachable", "LockTimeout"} == reasons.TRANSIENT_JOB_REASONS
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
