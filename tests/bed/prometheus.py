"""Prometheus' own binaries for the tests: promtool (the chart's rule tests), prometheus and alertmanager (the bed's
end-to-end alert test), built from their Go modules by tests/bed/build-prometheus.sh (`make prometheus`) into
``$BED_CACHE/prometheus-<ver>/`` and ``$BED_CACHE/alertmanager-<ver>/``."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from bed.tools import cache_root

PROMETHEUS_VERSION = os.environ.get("PROMETHEUS_VERSION", "v0.316.0")
ALERTMANAGER_VERSION = os.environ.get("ALERTMANAGER_VERSION", "v0.35.0")
BUILD = Path(__file__).resolve().parent / "build-prometheus.sh"


class NotBuilt(RuntimeError):
    """The binaries are not in the cache: `make prometheus` builds them (make test does it first)."""


def binaries(build: bool = False) -> dict[str, Path]:
    """{"promtool", "prometheus", "alertmanager"}: their paths in the cache; with build=True, built when missing."""
    prom = cache_root() / f"prometheus-{PROMETHEUS_VERSION}"
    am = cache_root() / f"alertmanager-{ALERTMANAGER_VERSION}"
    if build and not ((prom / ".complete").exists() and (am / ".complete").exists()):
        subprocess.run([str(BUILD)], check=True, stdout=subprocess.DEVNULL)
    return {"promtool": prom / "promtool", "prometheus": prom / "prometheus", "alertmanager": am / "alertmanager"}


def binary(name: str) -> Path:
    """One of them, raising NotBuilt when the cache does not have it."""
    path = binaries()[name]
    if not (path.parent / ".complete").exists() or not path.exists():
        raise NotBuilt(f"missing {path}: run `make prometheus` (tests/bed/build-prometheus.sh)")
    return path
