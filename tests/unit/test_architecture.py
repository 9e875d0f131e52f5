"""The layering docs/architecture.md describes, read from the code's own import statements.

Every import counts, including the lazy ones inside functions: a lazy import is still a
dependency. Layers, top to bottom: the DAG files and the plugin's operators -> lifecycle (one
function per task) -> platforms (one bundle per backend) -> stage packages (data, training,
evaluation, registry, serving, scheduling) -> shared modules.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STAGES = {"data", "training", "evaluation", "registry", "serving", "scheduling"}
RANK = {"dags": 5, "plugins": 5, "lifecycle": 4, "platforms": 3, **dict.fromkeys(STAGES, 2)}  # shared: 1
MAX_LINES = 400
SAMPLE_DATA = {"include/sample_data/build_sample.py"}  # shipped sample data, not logic
PROFILE_READERS = ("include/settings.py", "include/platforms/")


def sources() -> dict[str, Path]:
    """Module name -> file, for include/ and the DAG and plugin folders (as Airflow puts them on sys.path)."""
    out = {}
    for base, prefix in (("include", "include"), ("dags", "dags"), ("plugins", "")):
        for path in (ROOT / base).rglob("*.py"):
            parts = list(path.relative_to(ROOT / base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([p for p in [prefix, *parts] if p])] = path
    return out


def unit(module: str) -> str:
    """`include.training.plan` -> `training`; `include.validation` -> `validation`; a DAG file -> `dags`."""
    if module.startswith("dags"):
        return "dags"
    if module.startswith("llmops_"):
        return "plugins"
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


@cache
def module_graph() -> dict[str, frozenset[str]]:
    """Module -> the project modules it imports (a `from pkg import name` of a submodule counts it)."""
    mods = sources()
    graph = {}
    for module, path in mods.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], base]).strip(".")
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            targets |= {name for name in names if name in mods and name not in (module, "include")}
        graph[module] = frozenset(targets)
    return graph


def unit_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for module, targets in module_graph().items():
        graph[unit(module)] |= {unit(t) for t in targets if unit(t) != unit(module)}
    return graph


def test_each_import_runs_down_the_layers():
    """Upward or sideways between stages is refused; shared modules may use each other (no cycles)."""
    bad = sorted((a, b) for a, targets in unit_graph().items() for b in targets
                 if not (RANK.get(a, 1) > RANK.get(b, 1) or (RANK.get(a, 1) == 1 == RANK.get(b, 1))
                         or (a, b) == ("dags", "plugins")))
    assert not bad, f"imports against the layering: {bad}"


def find_cycle(graph: dict[str, frozenset[str] | set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path, node, nxt]
            if nxt not in state and (found := visit(nxt, [*path, node])):
                return found
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node, [])):
            return found
    return None


def test_no_import_cycles_between_modules_or_packages():
    for graph in (module_graph(), unit_graph()):
        cycle = find_cycle(graph)
        assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_check_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def profile_reads(source: str) -> list[int]:
    """Lines reading the profile: `<settings>.profile`, `.is_local`, LLMOPS_PROFILE from the environment."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and (
                node.attr == "is_local" or node.attr == "profile" and "settings" in ast.unparse(node.value)):
            lines.append(node.lineno)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in ("get", "getenv")
              and any(isinstance(a, ast.Constant) and a.value == "LLMOPS_PROFILE" for a in node.args)):
            lines.append(node.lineno)
    return lines


def test_only_settings_and_the_platforms_read_the_profile():
    """Everything else asks its platform (`get_platform()`), which was chosen once."""
    files = sorted((str(p.relative_to(ROOT)), p) for base in ("include", "dags", "plugins")
                   for p in ROOT.joinpath(base).rglob("*.py"))
    readers = [f"{rel}:{line}" for rel, path in files if not rel.startswith(PROFILE_READERS)
               for line in profile_reads(path.read_text())]
    assert readers == [], readers


def test_the_profile_check_sees_each_kind_of_read():
    code = ("def f(settings):\n    return (get_settings().profile, settings.profile, self.settings.is_local,\n"
            "            os.environ.get('LLMOPS_PROFILE'), policy.profile)\n")
    assert profile_reads(code) == [2, 2, 2, 3]


def test_no_module_under_include_passes_the_size_limit():
    long = {str(p.relative_to(ROOT)): n for p in ROOT.joinpath("include").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES and str(p.relative_to(ROOT)) not in SAMPLE_DATA}
    assert not long, long


def test_the_architecture_diagram_matches_the_import_graph():
    """docs/architecture.md's mermaid edges between units are exactly the imports, dags/ and plugins/ included."""
    doc = (ROOT / "docs" / "architecture.md").read_text()
    diagram = doc[doc.index("```mermaid"):doc.index("```", doc.index("```mermaid") + 3)]
    drawn = set(re.findall(r"^\s*([a-z_]+)(?:\[[^\]]*\])? --> ([a-z_]+)", diagram, re.M))
    actual = {(a, b) for a, targets in unit_graph().items() for b in targets}
    assert drawn == actual, (f"missing: {sorted(actual - drawn)}; not imports: {sorted(drawn - actual)} "
                             "(`python tests/unit/test_architecture.py` prints the edges)")


if __name__ == "__main__":
    graph = unit_graph()
    print("\n".join(f"  {a} --> {b}" for a in sorted(graph) for b in sorted(graph[a])))
