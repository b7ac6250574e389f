"""README's Layout names every module of the package and every directory of tests, so that it cannot drift from the
tree again (it once missed six of them)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "operator" / "alembic_operator"
NAME_COLUMN = 28  # in the Layout block, a line indented this far continues the entry above it


def _layout() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```", 2)[1].splitlines()


def _entry(lines: list[str], name: str) -> str:
    """The Layout's lines about `name` (a `dir/`): the line naming it and the lines that continue it."""
    out: list[str] = []
    for line in lines:
        continues = bool(out) and len(line) - len(line.lstrip()) >= NAME_COLUMN
        if continues or re.search(rf"(?<![\w/.]){re.escape(name)}", line):
            out.append(line)
        elif out:
            break
    return "\n".join(out)


def test_every_module_is_in_the_layout() -> None:
    lines = _layout()
    block = "\n".join(lines)
    missing: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if len(rel.parts) == 1:
            if rel.name not in ("__init__.py", "__main__.py") and not re.search(
                    rf"(?<![\w/]){re.escape(rel.name)}(?!\w)", block):
                missing.append(str(rel))
            continue
        entry = _entry(lines, f"{rel.parts[0]}/")
        if not entry:
            missing.append(f"{rel.parts[0]}/")
        elif rel.stem != "__init__" and not re.search(rf"(?<![\w-]){re.escape(rel.stem)}(?![\w-])", entry):
            missing.append(str(rel))
    assert not missing, f"README's Layout does not name: {sorted(set(missing))}"


def test_every_test_directory_is_in_the_layout() -> None:
    block = "\n".join(_layout())
    dirs = sorted(p.name for p in (REPO / "tests").iterdir() if p.is_dir() and not p.name.startswith((".", "__")))
    assert dirs, "no test directories"
    missing = [d for d in dirs if f"tests/{d}/" not in block]
    assert not missing, f"README's Layout does not name: {missing}"
