"""What the image-build tests share (unit/test_images.py without an engine, cluster/test_images_bed.py with
buildah on the bed)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from bed import images

REPO = Path(__file__).resolve().parents[1]


def _needs(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: `make deps` installs the Debian packages")


def run_in(image: str, *cmd: str, volumes: tuple[str, ...] = (), env: dict[str, str] | None = None) -> str:
    """`cmd` in a working container of `image` (chroot isolation: the host's network; as the image's USER);
    its stdout. `volumes` are ``HOST:CONTAINER`` bind mounts, `env` extra variables."""
    opts = [*(f"--volume={v}" for v in volumes), *(f"--env={k}={v}" for k, v in (env or {}).items())]
    script = ('set -e; c=$(buildah from --pull-never "$1"); shift; trap \'buildah rm "$c" >/dev/null\' EXIT; '
              f'buildah run --isolation chroot {" ".join(map(shlex.quote, opts))} "$c" -- "$@"')
    proc = subprocess.run(images.in_cache_ns(["sh", "-c", script, "sh", image, *cmd]), env=images._buildah_env(),
                          capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, f"{cmd} in {image}: {proc.stdout}{proc.stderr}"
    return proc.stdout

