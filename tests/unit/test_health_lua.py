"""The Argo CD health check (alembic_operator/health.lua) in a real Lua 5.1, and kstatus (Flux) on the same objects.

Every fixture in tests/fixtures/health/databasemigrations.yaml is read by health.lua (lupa.lua51: the Lua version
Argo CD's gopher-lua speaks, with the libraries Argo CD does not give scripts removed) and by a Python port of
kstatus' generic rules (sigs.k8s.io/cli-utils pkg/kstatus/status: checkGenericProperties + Compute's fallback),
and the two must agree. The copies of the script (the chart's files/, docs/gitops.md) must equal the packaged one.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml

from alembic_operator import constants as c
from alembic_operator import status as s
from alembic_operator.api import parse_status, written

lupa51 = pytest.importorskip("lupa.lua51")

REPO = Path(__file__).resolve().parents[2]
FIXTURES = yaml.safe_load((REPO / "tests" / "fixtures" / "health" / "databasemigrations.yaml").read_text())
SCRIPT = resources.files("alembic_operator").joinpath("health.lua").read_text()
ARGO_KEY = f"resource.customizations.health.{c.GROUP}_{c.KIND}"

# Argo CD health <-> kstatus status: the same meaning, for sync waves and for Flux's health checks alike.
AGREES = {
    "Healthy": {"Current"},
    "Degraded": {"Failed"},
    "Progressing": {"InProgress", "Terminating"},
    "Suspended": {"InProgress"},  # kstatus has no "suspended": work is pending
}


def argo_health(obj: dict[str, Any]) -> dict[str, str]:
    """Run health.lua as Argo CD does: global `obj`, the script's return value is the health."""
    lua = lupa51.LuaRuntime(unpack_returned_tuples=True)
    g = lua.globals()
    for name in ("os", "io", "require", "dofile", "loadfile", "load", "loadstring", "package", "debug"):
        g[name] = None  # Argo CD's sandbox opens base, table, string and math only: the script must not need more
    g.obj = lua.table_from(obj, recursive=True)
    result = lua.execute(SCRIPT)
    assert result is not None, "health.lua returned nothing"
    return {k: result[k] for k in ("status", "message")}


def kstatus(obj: dict[str, Any]) -> str:
    """kstatus' generic rules (what Flux's kustomize-controller applies to a custom resource)."""
    meta = obj.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return "Terminating"
    status = obj.get("status") or {}
    if "generation" in meta and "observedGeneration" in status and status["observedGeneration"] != meta["generation"]:
        return "InProgress"
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Reconciling" and cond.get("status") == "True":
            return "InProgress"
        if cond.get("type") == "Stalled" and cond.get("status") == "True":
            return "Failed"
    return "Current"  # no standard condition says otherwise


def test_fixtures_cover_every_health_and_phase() -> None:
    assert {f["argo"] for f in FIXTURES} == set(AGREES)
    phases = {(f["object"].get("status") or {}).get("phase") for f in FIXTURES}
    assert set(c.PHASES) <= phases, set(c.PHASES) - phases


@pytest.mark.parametrize("case", FIXTURES, ids=[f["name"] for f in FIXTURES])
def test_argo_health(case: dict[str, Any]) -> None:
    health = argo_health(case["object"])
    assert health["status"] == case["argo"], health
    assert health["message"], "Argo CD shows the message: it must say something"
    if "message" in case:
        assert case["message"] in health["message"], health


@pytest.mark.parametrize("case", FIXTURES, ids=[f["name"] for f in FIXTURES])
def test_kstatus(case: dict[str, Any]) -> None:
    assert kstatus(case["object"]) == case["kstatus"]


@pytest.mark.parametrize("case", [f for f in FIXTURES if "divergent" not in f],
                         ids=[f["name"] for f in FIXTURES if "divergent" not in f])
def test_argo_and_kstatus_agree(case: dict[str, Any]) -> None:
    assert kstatus(case["object"]) in AGREES[argo_health(case["object"])["status"]]


def test_awaiting_approval_says_so_and_keeps_the_operators_message() -> None:
    case = next(f for f in FIXTURES if f["name"] == "awaiting-approval")
    health = argo_health(case["object"])
    stalled = next(x for x in case["object"]["status"]["conditions"] if x["type"] == "Stalled")
    assert health == {"status": "Degraded", "message": "awaiting approval: " + stalled["message"]}


def _summarized(kind: str, generation: int, observed: int | None = None) -> dict[str, Any]:
    outcome = {"progressing": s.progressing("Migrating", "Migrating", "migrate Job is running"),
               "ready": s.ready("Migrated", "at c3c3c3c3c303"),
               "stalled": s.stalled("Failed", "JobFailed", "migrate Job failed")}[kind]
    status = written(s.summarize(parse_status({"currentRevision": "c3c3c3c3c303"}), outcome,
                                 generation if observed is None else observed, datetime(2026, 1, 1, tzinfo=UTC)))
    return {"apiVersion": c.API_VERSION, "kind": c.KIND,
            "metadata": {"name": "shop", "namespace": "shop", "generation": generation},
            "spec": {"targetRevision": "head"}, "status": status}


@pytest.mark.parametrize(("kind", "argo", "kstat"), [("progressing", "Progressing", "InProgress"),
                                                      ("ready", "Healthy", "Current"),
                                                      ("stalled", "Degraded", "Failed")])
def test_what_the_operator_writes(kind: str, argo: str, kstat: str) -> None:
    """Statuses made by the operator's own status.summarize read as they should, and stale ones as Progressing."""
    obj = _summarized(kind, 3)
    assert argo_health(obj)["status"] == argo
    assert kstatus(obj) == kstat
    stale = _summarized(kind, 4, observed=3)
    assert argo_health(stale)["status"] == "Progressing"
    assert kstatus(stale) == "InProgress"


def test_crd_defaults_observed_generation_against_the_creation_race() -> None:
    """A new object reads InProgress (not Current) before the operator writes anything: status defaults to -1."""
    crd = next(d for d in yaml.safe_load_all((REPO / "crds" / "databasemigrations.yaml").read_text()) if d)
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert schema["properties"]["status"]["default"] == {"observedGeneration": -1}
    fresh = {"metadata": {"name": "x", "namespace": "y", "generation": 1}, "spec": {},
             "status": schema["properties"]["status"]["default"]}
    assert kstatus(fresh) == "InProgress"
    assert argo_health(fresh)["status"] == "Progressing"


def test_copies_of_the_script_are_identical() -> None:
    """The chart ships it (files/health.lua, a link; files/argocd-cm.yaml) and docs/gitops.md shows it: all equal."""
    chart_copy = REPO / "charts" / "alembic-operator" / "files" / "health.lua"
    fix = f"ln -sf ../../../operator/alembic_operator/health.lua {chart_copy.relative_to(REPO)}"
    assert chart_copy.read_text() == SCRIPT, f"stale copy: {fix}"
    doc = (REPO / "docs" / "gitops.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", doc, flags=re.S)
    shown = [b for b in blocks if ARGO_KEY in b]
    assert shown, f"docs/gitops.md shows no argocd-cm snippet with {ARGO_KEY}"
    for block in shown:
        doc_obj = yaml.safe_load(block)
        lua = _find_key(doc_obj, ARGO_KEY)
        assert lua is not None and lua.strip() == SCRIPT.strip(), "docs/gitops.md: the health.lua shown is stale"


def _find_key(node: Any, key: str) -> str | None:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key and isinstance(v, str):
                return v
            if (found := _find_key(v, key)) is not None:
                return found
    if isinstance(node, list):
        for item in node:
            if (found := _find_key(item, key)) is not None:
                return found
    return None


def test_packaged_in_the_wheel() -> None:
    """pyproject's package-data takes *.lua: the operator image (and `pip install`) carries the script."""
    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(r'alembic_operator\s*=\s*\[[^\]]*"\*\.lua"', pyproject)
