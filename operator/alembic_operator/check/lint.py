"""Lint of pending revisions: render each one offline (`alembic upgrade <down>:<rev> --sql`) through the app's
env.py and scan the SQL with the operator's own scanner (sqlscan), rule names and all."""

from __future__ import annotations

from collections.abc import Sequence

from .. import sqlscan
from .model import LINT_SEVERITY, Finding
from .project import OFFLINE_URL, Project, describe


def lint(project: Project, revisions: Sequence[str], url: str = OFFLINE_URL) -> list[Finding]:
    """Findings for `revisions` (in upgrade order); `url` only gives the dialect (offline: nothing connects)."""
    items: list[tuple[str | None, str]] = []
    unrenderable: list[Finding] = []
    for rev in revisions:
        sc = project.revision(rev)
        if sc is None:
            continue
        try:
            items.append((rev, project.render_offline(sc, url)))
        except Exception as exc:
            unrenderable.append(_unrenderable(rev, describe(exc)))
    return [*(_finding(f) for f in sqlscan.scan_revisions(items)), *unrenderable]


def _finding(found: sqlscan.Finding) -> Finding:
    rule = sqlscan.RULES[found.rule]
    return Finding(check="lint", rule=found.rule, severity=LINT_SEVERITY[found.severity],
                   message=f"{found.operation}: {rule.why}", revision=found.revision,
                   details=[f"SQL: {found.statement}", f"safely: {rule.safely}"])


def _unrenderable(rev: str, error: str) -> Finding:
    rule = sqlscan.RULES["unrenderable-revision"]
    return Finding(check="lint", rule=rule.name, severity=LINT_SEVERITY[rule.severity],
                   message=f"revision {rev} cannot be rendered offline ({error}), so its SQL cannot be checked",
                   revision=rev, details=[f"safely: {rule.safely}"])
