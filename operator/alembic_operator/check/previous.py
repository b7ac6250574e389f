"""`check --previous REF`: the revisions that would break the previous release while it still runs.

During a rolling update the previous release keeps serving until its last pod is gone, while the new revisions
commit. A revision that drops or renames a table or column that release uses breaks it for that whole time, unless
it is marked ``phase = "contract"`` (the operator then runs it once the previous release's pods are gone). REF is
the previous release:

- a git ref (a tag, a commit) of the repository that holds the scripts: its revision files give the revisions it
  had (the new ones are the rest), and it uses whatever its schema has (anything a new revision drops or renames);
- or the import path of its models, ``package.module`` or ``package.module:attribute`` (a MetaData, or a
  declarative base): it uses exactly the tables and columns they map. The new revisions are then the ones pending on
  ``--database-url`` when given, else every revision.
"""

from __future__ import annotations

import importlib
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..reconcile import contract
from ..runner.driver import phase_of
from .lint import Rendered
from .model import Finding

RULE = "breaks-previous-release"
_REVISION = re.compile(r"""^revision\s*(?::\s*\w+\s*)?=\s*['"]([^'"]+)['"]""", re.MULTILINE)


@dataclass(frozen=True)
class Previous:
    """What the previous release had: its revisions (None: not known, every revision is new) and what it uses
    (None: its whole schema)."""

    ref: str
    revisions: frozenset[str] | None
    used: frozenset[str] | None


def revision_ids(sources: Sequence[str]) -> frozenset[str]:
    """The revision ids declared in revision files' sources (``revision = "..."``)."""
    return frozenset(m.group(1) for text in sources if (m := _REVISION.search(text)))


def used_by(metadata: Any) -> frozenset[str]:
    """Tables and table.columns a MetaData (or a declarative base's) maps."""
    metadata = getattr(metadata, "metadata", metadata)
    out: set[str] = set()
    for table in getattr(metadata, "tables", {}).values():
        out.add(str(table.name))
        out |= {f"{table.name}.{col.name}" for col in table.columns}
    return frozenset(out)


def _git(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=60)


def from_git(ref: str, version_dirs: Sequence[Path]) -> Previous | None:
    """The previous release at a git ref of the repository holding the version directories; None: not a ref."""
    if not version_dirs:
        return None
    cwd = version_dirs[0]
    if _git(cwd, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").returncode != 0:
        return None
    top = Path(_git(cwd, "rev-parse", "--show-toplevel").stdout.strip())
    sources: list[str] = []
    for directory in version_dirs:
        rel = directory.resolve().relative_to(top.resolve()).as_posix()
        listed = _git(top, "ls-tree", "-r", "--name-only", ref, "--", rel).stdout.split()
        for path in listed:
            if path.endswith(".py"):
                sources.append(_git(top, "show", f"{ref}:{path}").stdout)
    return Previous(ref, revision_ids(sources), None)


def from_models(path: str) -> Previous:
    """The previous release's models, imported: ``module`` (its ``metadata`` or ``Base``) or ``module:attr``."""
    module_name, _, attr = path.partition(":")
    module = importlib.import_module(module_name)
    target = getattr(module, attr) if attr else getattr(module, "metadata", None) or module.Base
    return Previous(path, None, used_by(target))


def breaking(previous: Previous, path: Sequence[str], rendered: Rendered, scripts: Any) -> list[Finding]:
    """Each new revision before the first contract one that drops or renames what the previous release uses."""
    new = [rev for rev in path if previous.revisions is None or rev not in previous.revisions]
    marked = {rev for rev in new if (sc := scripts.get_revision(rev)) is not None and phase_of(sc) == "contract"}
    expand = contract.split(new, marked).expand
    scanner = rendered.engine.scanner(rendered.live)
    for rev, sql in rendered.items:
        if rev in new:
            scanner.deployed()  # what the previous release has is in use, whichever revision created it
        scanner.scan(sql, rev)
    return [_finding(f, previous.ref) for f in contract.breaking(scanner.findings, set(expand), "previous",
                                                                  previous.used)]


def _finding(found: Any, ref: str) -> Finding:
    name = contract.object_of(found) or "it"
    return Finding(check="lint", rule=RULE, severity="error", revision=found.revision,
                   message=f"{found.describe()} breaks the previous release ({ref}) while it still runs: it uses "
                           f"{name}. Mark revision {found.revision} phase = \"contract\" (next to revision and "
                           "down_revision), with what the new version needs added in an expand revision before it",
                   details=[f"SQL: {found.statement}", 'fix: phase = "contract"'])

