"""The layering docs/architecture.md describes, read from the code's own import statements.

Every import counts, including the lazy ones inside functions: a lazy import is still a
dependency. Layers (top to bottom): lifecycle -> compute (the container-job and capacity seams)
-> stage packages (data, training, evaluation, registry, serving, scheduling) -> shared modules.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
INCLUDE = ROOT / "include"
STAGES = {"data", "training", "evaluation", "registry", "serving", "scheduling"}
SEAMS = {"compute"}
TOP = {"lifecycle"}
MAX_LINES = 400
SAMPLE_DATA = {"include/sample_data/build_sample.py"}  # shipped sample data, not logic
SEAM_PICKERS = ["include/compute/__init__.py", "include/compute/capacity.py", "include/serving/metrics.py",
                "include/serving/router.py", "include/serving/servers.py"]


def unit(module: str) -> str:
    """`include.training.plan` -> `training`; `include.validation` -> `validation`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for path in INCLUDE.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        source = unit(".".join(rel.parts))
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names if node.module == "include"]
            for name in names:
                if name.startswith("include.") and unit(name) != source:
                    graph[source].add(unit(name))
    return graph


def test_stage_packages_never_import_each_other_sideways():
    graph = import_graph()
    sideways = {(a, b) for a, targets in graph.items() if a in STAGES for b in targets if b in STAGES}
    assert not sideways, f"stage packages import each other: {sorted(sideways)}"


def test_nothing_below_imports_upward():
    graph = import_graph()
    upward = {(a, b) for a, targets in graph.items() for b in targets
              if (b in TOP and a not in TOP) or (b in SEAMS and a not in TOP | SEAMS)}
    assert not upward, f"imports against the layering: {sorted(upward)}"


def test_the_package_graph_has_no_cycles():
    graph = import_graph()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path, node, nxt]))
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_only_settings_and_the_seam_pickers_branch_on_the_profile():
    pattern = re.compile(r"is_local|profile ==")
    hits = sorted(str(p.relative_to(ROOT)) for base in ("include", "plugins", "dags")
                  for p in (ROOT / base).rglob("*.py") if pattern.search(p.read_text()))
    assert hits == sorted([*SEAM_PICKERS, "include/settings.py"]), hits


def test_no_module_under_include_passes_the_size_limit():
    long = {str(p.relative_to(ROOT)): n for p in INCLUDE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES and str(p.relative_to(ROOT)) not in SAMPLE_DATA}
    assert not long, long


def test_the_architecture_diagram_matches_the_import_graph():
    """docs/architecture.md's mermaid edges between include/ packages are exactly the imports."""
    doc = (ROOT / "docs" / "architecture.md").read_text()
    diagram = doc[doc.index("```mermaid"):doc.index("```", doc.index("```mermaid") + 3)]
    drawn = set(re.findall(r"^\s*([a-z_]+)(?:\[[^\]]*\])? --> ([a-z_]+)", diagram, re.M))
    drawn = {(a, b) for a, b in drawn if a not in {"dags", "plugins"}}
    actual = {(a, b) for a, targets in import_graph().items() for b in targets}
    assert drawn == actual, f"missing: {sorted(actual - drawn)}; not imports: {sorted(drawn - actual)}"
