"""Tiny single-layer OCI images written directly (no builder), and pushing them to the bed's registry.

The bed needs the sandbox ("pause") image before any pod can start, and registry.k8s.io is out of reach: the
pause binary is built from the Kubernetes release's own pause.c (build-node.sh) and packed here. The format is
small enough to write by hand: a gzipped tar layer, a config, a manifest and an index in an OCI layout directory,
which ``skopeo copy`` pushes.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Entry:
    """A file, directory or symbolic link of the layer (``source`` for files, ``target`` for links)."""

    path: str
    mode: int = 0o755
    source: Path | None = None
    data: bytes | None = None
    target: str | None = None
    directory: bool = False


def _layer(entries: Sequence[Entry]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            info = tarfile.TarInfo(entry.path.lstrip("/"))
            info.mode = entry.mode
            info.mtime = 0  # reproducible: the same files give the same digest
            if entry.directory:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif entry.target is not None:
                info.type = tarfile.SYMTYPE
                info.linkname = entry.target
                tar.addfile(info)
            else:
                data = entry.data if entry.data is not None else (entry.source or Path("/dev/null")).read_bytes()
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def _blob(layout: Path, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = layout / "blobs" / "sha256" / digest.removeprefix("sha256:")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return digest


def write_layout(layout: Path, tag: str, entries: Sequence[Entry], config: Mapping[str, Any]) -> Path:
    """Write a one-layer linux/amd64 image as an OCI layout at ``layout`` (replaced), tagged ``tag``."""
    shutil.rmtree(layout, ignore_errors=True)
    layout.mkdir(parents=True)
    tar = _layer(entries)
    gz = gzip.compress(tar, mtime=0)
    layer_digest = _blob(layout, gz)
    image_config = {
        "architecture": "amd64",
        "os": "linux",
        "config": dict(config),
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(tar).hexdigest()]},
    }
    config_bytes = json.dumps(image_config, sort_keys=True).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": _blob(layout, config_bytes), "size": len(config_bytes)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest, "size": len(gz)}],
    }  # fmt: skip
    manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
    index = {
        "schemaVersion": 2,
        "manifests": [{"mediaType": manifest["mediaType"], "digest": _blob(layout, manifest_bytes),
                       "size": len(manifest_bytes), "annotations": {"org.opencontainers.image.ref.name": tag}}],
    }  # fmt: skip
    (layout / "index.json").write_text(json.dumps(index))
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return layout


def push_layout(layout: Path, tag: str, dest_ref: str, netns_cmd: Sequence[str]) -> str:
    """Push an OCI layout to ``dest_ref`` (a plain-HTTP registry reached through ``netns_cmd``); returns dest_ref."""
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        raise RuntimeError("skopeo is missing: run `make deps`")
    from bed import images

    # As root, skopeo keeps a blob-info cache in /var/lib/containers whatever it is told: give it the build cache's.
    cmd = [*netns_cmd, *images.in_cache_ns([skopeo, "--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false",
                                            f"oci:{layout}:{tag}", f"docker://{dest_ref}"])]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=images.tool_env())
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed ({proc.returncode}): {proc.stderr.strip()}")
    return dest_ref
