"""The layers of the design card, checked on every import statement (lazy ones inside functions too).

From the bottom: `storage` (schemas and Delta I/O), the IB vocabulary and settings, the domain packages (simulator,
doctor, quality, backtest engine, ingestion, alerts, local stack), `tasks`, `flows`, and the CLI on top. A module
may import its own layer and the ones below, never above, and the units of one layer may not import each other in
a cycle.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS: list[set[str]] = [
    {"storage"},
    {"ibkr_flows.ib", "ibkr_flows.settings"},
    {"ibkr_flows.sim", "ibkr_flows.doctor", "ibkr_flows.quality", "ibkr_flows.backtest", "ibkr_flows.ingest",
     "ibkr_flows.alerts", "ibkr_flows.stack", "ibkr_flows.continuous"},
    {"tasks"},
    {"flows"},
    {"ibkr_flows.cli", "ibkr_flows.api"},
]
SIMULATOR_USERS = {"ibkr_flows.sim", "ibkr_flows.cli"}
"""The simulator is a test double and a CLI command; no client code (the doctor above all) may lean on it."""
LAYER_OF = {unit: level for level, units in enumerate(LAYERS) for unit in units}


def unit_of(module: str) -> str | None:
    """The layer unit a dotted module name belongs to (the longest listed prefix), None if not ours."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in LAYER_OF:
            return prefix
    return None


def module_name(path: Path) -> str:
    relative = path.relative_to(ROOT).with_suffix("")
    parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports, relative imports resolved."""
    found: set[str] = set()
    package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(path)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def project_modules() -> list[Path]:
    """Every module but the package roots, which only hold a docstring (`ibkr_flows/__init__.py` must stay empty
    of imports: importing any subpackage runs it)."""
    return [p for top in ("storage", "ibkr_flows", "tasks", "flows") for p in (ROOT / top).rglob("*.py")
            if p.parent != ROOT / "ibkr_flows" or p.name != "__init__.py"]


def unit_graph() -> dict[str, dict[str, list[str]]]:
    """unit -> imported unit -> the modules that import it."""
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in project_modules():
        source = unit_of(module_name(path))
        assert source is not None, f"{path} belongs to no layer: add its package to LAYERS"
        for imported in imports_of(path):
            target = unit_of(imported)
            if target is not None and target != source:
                graph[source][target].append(module_name(path))
    return graph


def test_every_package_is_in_a_layer() -> None:
    tops = {p.name for p in (ROOT / "ibkr_flows").iterdir() if (p / "__init__.py").exists() or p.suffix == ".py"}
    listed = {unit.split(".")[1] for unit in LAYER_OF if unit.startswith("ibkr_flows.")}
    modules = {"settings", "api"}
    assert tops - {"__init__.py"} == {f"{name}.py" if name in modules else name for name in listed}


def test_no_module_imports_a_higher_layer() -> None:
    upward = [f"{importer} ({source}) imports {target}"
              for source, targets in unit_graph().items() for target, importers in targets.items()
              for importer in importers if LAYER_OF[target] > LAYER_OF[source]]
    assert upward == []


def test_units_import_each_other_without_cycles() -> None:
    graph = unit_graph()
    cycles: list[list[str]] = []

    def visit(unit: str, path: list[str]) -> None:
        for target in graph.get(unit, {}):
            if target in path:
                cycles.append([*path[path.index(target):], target])
            elif LAYER_OF[target] == LAYER_OF[unit]:
                visit(target, [*path, target])

    for unit in LAYER_OF:
        visit(unit, [unit])
    assert cycles == []


def test_only_the_cli_uses_the_simulator() -> None:
    users = {source for source, targets in unit_graph().items() if "ibkr_flows.sim" in targets}
    assert users <= SIMULATOR_USERS


def test_the_package_root_imports_nothing() -> None:
    assert imports_of(ROOT / "ibkr_flows" / "__init__.py") <= {"__future__", "__future__.annotations"}


def test_the_check_sees_real_imports() -> None:
    """Guards the guard: known edges must be found, or the tests above pass by looking at nothing."""
    graph = unit_graph()
    assert "storage" in graph["ibkr_flows.ingest"]
    assert "ibkr_flows.ib" in graph["ibkr_flows.doctor"]
    assert "tasks" in graph["flows"]
    assert "flows" in graph["ibkr_flows.cli"]
