"""Which module may import which (no server): the package's layers, read from the source with `ast`.

Top to bottom (a layer imports only layers below it, never above; within a layer, no cycles):

    entry       cli, __main__, app, crdgen, dbm.*, k8s_openapi.__main__/main: start-up, CLIs, generators
    operator    handlers (a pass, as Kopf calls it), observe, act, indexes, configmaps, release, webhook, kube, kept,
                metrics, config, audit, schedule, freshness, events: talk to Kubernetes (Kopf, the API client), keep
                what it said, and when
    programs    jobtools, check.*: commands that run in Jobs or in CI
    seams       engines.*, backupstores.*, dbstate, jobio, plugins, sqlscan, sqlscan_mysql: databases and backup stores
    decisions   reconcile, status, gate, podstate, jobs, approvals: pure functions of what was observed
    model       api, observation, objects, k8s_openapi, jobparts, constants, reasons, plansql: the API types, what
                was observed, Kubernetes' object types, the vocabulary, wire formats
    runner      runner.*: runs in the app's image without the rest; anything may use it, it uses nothing

A module that is in no layer fails the test: a newcomer places it (and this docstring says where it goes).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "operator" / "alembic_operator"

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("entry", ("cli", "__main__", "app", "crdgen", "dbm", "k8s_openapi.__main__")),
    ("operator", ("handlers", "act", "observe", "indexes", "configmaps", "release", "webhook", "kube", "kept",
                  "metrics", "config", "audit", "schedule", "freshness", "events")),
    ("programs", ("jobtools", "check")),
    ("seams", ("engines", "backupstores", "dbstate", "jobio", "plugins", "sqlscan", "sqlscan_mysql")),
    ("decisions", ("reconcile", "status", "gate", "podstate", "jobs", "approvals")),
    ("model", ("api", "observation", "objects", "k8s_openapi", "jobparts", "constants", "reasons", "plansql",
               "__init__")),
    ("runner", ("runner",)),
)
# Third-party packages a pure layer must not touch: I/O belongs above it. Kubernetes' object types
# (kubernetes.client.models: pydantic models, no I/O) are data, not the API client.
IO_PACKAGES = {"kopf", "kubernetes", "aiohttp", "psycopg", "sqlalchemy", "alembic", "prometheus_client"}
PURE = {"decisions", "model"}


def _module(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts)


def _layer(module: str) -> int:
    """Index in LAYERS of the most specific prefix naming this module."""
    best: tuple[int, int] | None = None
    for index, (_name, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or module.startswith(prefix + ".")
            if matches and (best is None or len(prefix) > best[1]):
                best = (index, len(prefix))
    assert best is not None, f"alembic_operator.{module} is in no layer: add it to LAYERS in {__file__}"
    return best[0]


def _package(module: str) -> str:
    """The third-party package a module counts as: its top level, but kubernetes.client.models on its own."""
    return "kubernetes.client.models" if module.startswith("kubernetes.client.models") else module.split(".")[0]


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """(package modules, third-party top-level packages) imported at run time (TYPE_CHECKING blocks excluded)."""
    tree = ast.parse(path.read_text(), str(path))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for child in node.body for n in ast.walk(child)}
    here = list(path.relative_to(PACKAGE).parent.parts)
    ours: set[str] = set()
    theirs: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
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


def _graph() -> dict[str, tuple[set[str], set[str]]]:
    """Module -> (package modules it imports, third-party packages); a package stands for its __init__."""
    raw = {_module(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}

    def resolve(dep: str) -> str:
        return dep if dep in raw or f"{dep}.__init__" not in raw else f"{dep}.__init__"

    return {m: ({resolve(d) for d in ours}, theirs) for m, (ours, theirs) in raw.items()}


def test_every_module_is_in_a_layer_and_imports_only_below_it() -> None:
    wrong = []
    for module, (ours, _theirs) in _graph().items():
        mine = _layer(module)
        for dep in ours:
            if _layer(dep) < mine:
                wrong.append(f"{module} ({LAYERS[mine][0]}) imports {dep} ({LAYERS[_layer(dep)][0]})")
    assert not wrong, "imports against the layers:\n" + "\n".join(sorted(wrong))


def test_the_runner_imports_nothing_of_the_rest() -> None:
    for module, (ours, _theirs) in _graph().items():
        if module.startswith("runner"):
            assert all(dep.startswith("runner") for dep in ours), (module, ours)


def test_decisions_and_the_model_do_no_io() -> None:
    for module, (_ours, theirs) in _graph().items():
        if LAYERS[_layer(module)][0] in PURE:
            assert not theirs & IO_PACKAGES, f"{module} imports {sorted(theirs & IO_PACKAGES)}"


def test_no_import_cycles_between_modules() -> None:
    full = _graph()
    graph = {m: {d for d in ours if d in full and d != m} for m, (ours, _t) in full.items()}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path[path.index(dep):], dep]))
            if dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
