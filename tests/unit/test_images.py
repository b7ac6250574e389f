"""The bed's images (bed/images.py): the build context and its hash without an engine; with buildah (bed-marked),
the bases, the content cache, the thin app layer, the shop image and a push to a real registry in a private
network namespace."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bed import images
from imagebuild import REPO


def test_context_follows_dockerignore(tmp_path: Path) -> None:
    (tmp_path / ".dockerignore").write_text("# comment\n*\n!keep/\nkeep/**/__pycache__\n!top.txt\n/skip*\n")
    for rel in ("keep/a.py", "keep/sub/b.py", "keep/sub/__pycache__/b.pyc", "top.txt", "other.txt",
                "big/data.bin", "skipme"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(rel)
    assert images.context_files(tmp_path) == ["keep", "keep/a.py", "keep/sub", "keep/sub/b.py", "top.txt"]


def test_context_of_the_project_dockerfile_matches_test_image() -> None:
    """The operator image's context by bed/images.py's rules is the one test_image.py checks (its own parser)."""
    import test_image

    ours = {p for p in images.context_files(REPO) if (REPO / p).is_file()}
    assert ours == {p.relative_to(REPO).as_posix() for p in test_image.context_files()}


def test_hash_follows_content_mode_dockerfile_and_args(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("one")
    (tmp_path / "ignored.log").write_text("x")
    (tmp_path / ".dockerignore").write_text("*.log\n")
    first = images.context_hash(tmp_path, "FROM x", {"A": "1"})
    assert images.context_hash(tmp_path, "FROM x", {"A": "1"}) == first
    (tmp_path / "ignored.log").write_text("changed")  # not in the context: no rebuild
    assert images.context_hash(tmp_path, "FROM x", {"A": "1"}) == first
    seen = {first, images.context_hash(tmp_path, "FROM y", {"A": "1"}),
            images.context_hash(tmp_path, "FROM x", {"A": "2"})}
    (tmp_path / "a.txt").write_text("two")
    seen.add(images.context_hash(tmp_path, "FROM x", {"A": "1"}))
    (tmp_path / "a.txt").chmod(0o755)
    seen.add(images.context_hash(tmp_path, "FROM x", {"A": "1"}))
    (tmp_path / "new").mkdir()
    seen.add(images.context_hash(tmp_path, "FROM x", {"A": "1"}))
    assert len(seen) == 6


def test_repository_names() -> None:
    assert images._repository("app:1") == "app"
    assert images._repository("Shop/Web:2@sha256:" + "0" * 64) == "shop/web"
    with pytest.raises(images.ImageError):
        images._repository("bad name")


def test_bed_dockerfiles_are_hadolint_clean() -> None:
    exe = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert exe, "hadolint is not installed (dev extra)"
    files = [*sorted(images.DOCKERFILES.glob("*/Dockerfile")), REPO / "examples" / "shop" / "Dockerfile"]
    proc = subprocess.run([exe, "--failure-threshold", "info", *map(str, files)], capture_output=True, text=True,
                          check=False, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr

