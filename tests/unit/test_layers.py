"""Which module may import which (no server): the package's layers, read from the source with `ast`.

Top to bottom (a layer imports only layers below it, never above; no import cycle anywhere, across layers too; an
import for types only, under TYPE_CHECKING, counts like any other):

    entry       cli, __main__, app, crdgen, dbm.*, k8s_openapi.__main__/main: start-up, CLIs, generators
    operator    handlers (a pass, as Kopf calls it), observe, act, indexes, configmaps, release, webhook, kube, kept,
                metrics, config, audit, schedule, freshness, events, notify.send: talk to Kubernetes (Kopf, the API
                client), keep what it said, and when
    programs    jobtools, check.*: commands that run in Jobs or in CI
    decisions   reconcile, status, gate, podstate, jobs, approvals, notify (but notify.send), fleet (the sets'
                strategy; fleet.api is model, fleet.handlers operator): pure functions of what was observed
    seams       engines.*, backupstores.*, dbstate, jobio, plugins, sqlscan, sqlscan_mysql, scratchdb: databases and
                backup stores (and rehearsals' scratch databases);
                they answer the decisions (through what the model says) and never ask them
    model       api, observation, objects, k8s_openapi, jobparts, constants, reasons, plansql, sqlrules: the API
                types, what was observed, Kubernetes' object types, the vocabulary (reasons, the scanners' rules and
                findings), wire formats
    runner      runner.*: runs in the app's image without the rest; anything may use it, it uses nothing

A module that is in no layer fails the test: a newcomer places it (and this docstring says where it goes).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "operator" / "alembic_operator"

Layers = tuple[tuple[str, tuple[str, ...]], ...]
LAYERS: Layers = (
    ("entry", ("cli", "__main__", "app", "crdgen", "dbm", "k8s_openapi.__main__")),
    ("operator", ("handlers", "act", "observe", "indexes", "configmaps", "release", "webhook", "kube", "kept",
                  "metrics", "config", "audit", "schedule", "freshness", "events", "notify.send", "fleet.handlers")),
    ("programs", ("jobtools", "check")),
    ("decisions", ("reconcile", "status", "gate", "podstate", "jobs", "approvals", "notify", "fleet")),
    ("seams", ("engines", "backupstores", "dbstate", "jobio", "plugins", "sqlscan", "sqlscan_mysql", "scratchdb")),
    ("model", ("api", "fleet.api", "observation", "objects", "k8s_openapi", "jobparts", "constants", "reasons",
               "plansql", "sqlrules",
               "__init__")),
    ("runner", ("runner",)),
)
# Third-party packages a pure layer must not touch: I/O belongs above it. Kubernetes' object types
# (kubernetes.client.models: pydantic models, no I/O) are data, not the API client.
IO_PACKAGES = {"kopf", "kubernetes", "aiohttp", "psycopg", "sqlalchemy", "alembic", "prometheus_client"}
PURE = {"decisions", "model"}


def _module(path: Path, root: Path = PACKAGE) -> str:
    return ".".join(path.relative_to(root).with_suffix("").parts)


def _layer(module: str, layers: Layers = LAYERS) -> int:
    """Index in `layers` of the most specific prefix naming this module."""
    best: tuple[int, int] | None = None
    for index, (_name, prefixes) in enumerate(layers):
        for prefix in prefixes:
            matches = module == prefix or module.startswith(prefix + ".")
            if matches and (best is None or len(prefix) > best[1]):
                best = (index, len(prefix))
    assert best is not None, f"alembic_operator.{module} is in no layer: add it to LAYERS in {__file__}"
    return best[0]


def _package(module: str) -> str:
    """The third-party package a module counts as: its top level, but kubernetes.client.models on its own."""
    return "kubernetes.client.models" if module.startswith("kubernetes.client.models") else module.split(".")[0]


def _imports(path: Path, root: Path = PACKAGE) -> tuple[set[str], set[str]]:
    """(package modules, third-party top-level packages) imported: at run time, in a function, or for types only
    (an import under TYPE_CHECKING is a dependency too: it points the same way, and a cycle through it is one)."""
    tree = ast.parse(path.read_text(), str(path))
    here = list(path.relative_to(root).parent.parts)
    ours: set[str] = set()
    theirs: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)] if node.level > 1 else here
                if node.module:
                    ours.add(".".join([*base, node.module]))
                else:
                    ours |= {".".join([*base, alias.name]) for alias in node.names}
            elif node.module and node.module.startswith("alembic_operator"):
                ours.add(node.module.removeprefix("alembic_operator").lstrip(".") or "__init__")
            elif node.module:
                theirs.add(_package(node.module))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("alembic_operator"):
                    ours.add(alias.name.removeprefix("alembic_operator").lstrip(".") or "__init__")
                else:
                    theirs.add(_package(alias.name))
    return {m for m in ours if m and m != "__version__"}, theirs


def _graph(root: Path = PACKAGE) -> dict[str, tuple[set[str], set[str]]]:
    """Module -> (package modules it imports, third-party packages); a package stands for its __init__."""
    raw = {_module(p, root): _imports(p, root) for p in sorted(root.rglob("*.py"))}

    def resolve(dep: str) -> str:
        return dep if dep in raw or f"{dep}.__init__" not in raw else f"{dep}.__init__"

    return {m: ({resolve(d) for d in ours}, theirs) for m, (ours, theirs) in raw.items()}


def _against_the_layers(root: Path = PACKAGE, layers: Layers = LAYERS) -> list[str]:
    wrong = []
    for module, (ours, _theirs) in _graph(root).items():
        mine = _layer(module, layers)
        for dep in ours:
            if _layer(dep, layers) < mine:
                wrong.append(f"{module} ({layers[mine][0]}) imports {dep} ({layers[_layer(dep, layers)][0]})")
    return sorted(wrong)


def _cycle(root: Path = PACKAGE) -> list[str] | None:
    """The first import cycle found between any two modules (whatever their layers), or None."""
    full = _graph(root)
    graph = {m: {d for d in ours if d in full and d != m} for m, (ours, _t) in full.items()}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return [*path[path.index(dep):], dep]
            if dep not in state and (found := visit(dep, [*path, dep])):
                return found
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node, [node])):
            return found
    return None


def test_every_module_is_in_a_layer_and_imports_only_below_it() -> None:
    wrong = _against_the_layers()
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_the_runner_imports_nothing_of_the_rest() -> None:
    for module, (ours, _theirs) in _graph().items():
        if module.startswith("runner"):
            assert all(dep.startswith("runner") for dep in ours), (module, ours)


def test_decisions_and_the_model_do_no_io() -> None:
    for module, (_ours, theirs) in _graph().items():
        if LAYERS[_layer(module)][0] in PURE:
            assert not theirs & IO_PACKAGES, f"{module} imports {sorted(theirs & IO_PACKAGES)}"


def test_no_import_cycles_between_modules() -> None:
    cycle = _cycle()
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def _synthetic(root: Path, modules: dict[str, str]) -> Path:
    """A small package of `modules` (dotted name -> source) under `root`, for the checks to run over."""
    package = root / "pkg"
    for name, source in {"__init__": "", "engines.__init__": "", **modules}.items():
        path = package.joinpath(*name.split(".")).with_suffix(".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return package


def test_the_check_fails_on_a_seam_importing_a_decision(tmp_path: Path) -> None:
    """engines -> reconcile (what the engines did for DatabaseObservation) breaks the layers, also for types only."""
    for source in ("from ..reconcile import Decision\n",
                   "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..reconcile import Decision\n"):
        package = _synthetic(tmp_path / str(len(source)), {
            "engines.base": source, "reconcile": "from .observation import Observation\n", "observation": ""})
        assert _against_the_layers(package) == ["engines.base (seams) imports reconcile (decisions)"]
    clean = _synthetic(tmp_path / "clean", {"engines.base": "from ..observation import DatabaseObservation\n",
                                            "reconcile": "from .engines import base\n", "observation": ""})
    assert _against_the_layers(clean) == []


def test_the_check_fails_on_a_cycle_across_layers_and_through_types(tmp_path: Path) -> None:
    """dbstate -> engines -> engines.base -> dbstate (the last for types only): a cycle, whatever the layers."""
    package = _synthetic(tmp_path, {
        "dbstate": "from . import engines\n",
        "engines.__init__": "from .base import Engine\n",
        "engines.base": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..dbstate import Target\n",
        "reconcile": "from .dbstate import Target\n"})
    assert _cycle(package) == ["dbstate", "engines.__init__", "engines.base", "dbstate"]
    across = _synthetic(tmp_path / "across", {"observation": "from .reconcile import Decision\n",
                                              "reconcile": "from .observation import Observation\n"})
    assert _cycle(across) == ["observation", "reconcile", "observation"]
    assert _cycle(_synthetic(tmp_path / "none", {"reconcile": "from .observation import Observation\n",
                                                 "observation": ""})) is None
