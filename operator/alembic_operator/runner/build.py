"""Packs the runner package into one zipapp, the single file a Job's shared volume receives.

The archive holds the package under a name of its own (`PACKAGE`: it never shadows a module of the app, whose
working directory is importable too) and a ``__main__.py`` that runs its cli. It is built from the installed
package's files (wheel or editable install) with the standard library's `zipapp`, at ``install-runner`` time.
"""

from __future__ import annotations

import shutil
import tempfile
import zipapp
from pathlib import Path

PACKAGE = "alembic_operator_runner"
HERE = Path(__file__).resolve().parent
EXCLUDED = frozenset({"build.py", "__main__.py"})  # the operator's side; the archive has its own __main__
MAIN = f"""import sys

from {PACKAGE}.cli import main

sys.exit(main())
"""


def modules() -> list[Path]:
    """The runner's modules, as installed."""
    return sorted(path for path in HERE.glob("*.py") if path.name not in EXCLUDED)


def build(target: str | Path) -> Path:
    """Write the zipapp to `target` (atomically: a Job never sees half an archive) and return its path."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".runner-", dir=target.parent) as tmp:
        source = Path(tmp) / "src"
        package = source / PACKAGE
        package.mkdir(parents=True)
        for path in modules():
            shutil.copyfile(path, package / path.name)
        (source / "__main__.py").write_text(MAIN, encoding="utf-8")
        partial = Path(tmp) / target.name
        zipapp.create_archive(source, partial, compressed=True)
        partial.chmod(0o644)
        partial.replace(target)
    return target
