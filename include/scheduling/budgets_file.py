"""Rewrite the disruption budgets of k8s/karpenter/nodepools.yaml from windows.yaml.

A text edit, not a YAML round trip: only each pool's `budgets:` block under `spec.disruption` is
replaced, so the file's comments and layout survive. scripts/gen_disruption_budgets.py runs it;
tests run it too and fail when the file on disk differs from what it would write.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from include.scheduling.windows import Schedule, disruption_budgets

MARKER = "# Generated from include/scheduling/windows.yaml by scripts/gen_disruption_budgets.py: edit there."
_NAME = re.compile(r"^  name:\s*(\S+)\s*$")
_PART_COMMENT = {"schedule": "window", "always": "always"}


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def budget_lines(budgets: list[dict]) -> list[str]:
    lines = ["    budgets:", f"      {MARKER}"]
    for b in budgets:
        lines.append(f"      - nodes: {json.dumps(b['nodes'])}")
        if "reasons" in b:
            lines.append(f"        reasons: [{', '.join(json.dumps(r) for r in b['reasons'])}]")
        if "schedule" in b:
            lines.append(f"        schedule: {json.dumps(b['schedule'])}")
            lines.append(f"        duration: {b['duration']}")
    return lines


def _rewrite_doc(lines: list[str], budgets: list[dict]) -> list[str]:
    """Replace (or add) the budgets block inside `  disruption:` of one NodePool document."""
    start = next((i for i, line in enumerate(lines) if line.rstrip() == "  disruption:"), None)
    if start is None:
        raise ValueError("NodePool has no spec.disruption block to hold the budgets")
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > 2):
        end += 1
    block = lines[start + 1:end]
    first = next((i for i, line in enumerate(block) if line.rstrip() == "    budgets:"), None)
    if first is not None:
        last = first + 1
        while last < len(block) and (not block[last].strip() or _indent(block[last]) > 4):
            last += 1
        # Comments right above `budgets:` belong to it when they are generated ones.
        block = block[:first] + block[last:]
    while block and not block[-1].strip():
        block.pop()
    return lines[:start + 1] + block + budget_lines(budgets) + lines[end:]


def render(text: str, schedule: Schedule, pool_names: dict[str, str]) -> str:
    """The nodepools file with the budgets of every pool in `pool_names` (plan kind -> NodePool)."""
    by_name = {name: disruption_budgets(schedule.pool(kind)) for kind, name in pool_names.items()}
    docs = re.split(r"(?m)^---\n", text)
    out = []
    for doc in docs:
        lines = doc.split("\n")
        is_pool = any(line.strip() == "kind: NodePool" for line in lines)
        name = next((m.group(1) for line in lines if (m := _NAME.match(line))), None)
        if is_pool and name in by_name:
            lines = _rewrite_doc(lines, by_name.pop(name))
        out.append("\n".join(lines))
    if by_name:
        raise ValueError(f"no NodePool named {sorted(by_name)} in the file")
    return "---\n".join(out)


def pool_names() -> dict[str, str]:
    from include.cluster.pools import PLAN_POOLS
    from include.settings import get_settings

    settings = get_settings()
    return {kind: getattr(settings, field) for kind, field in PLAN_POOLS.items()}


def nodepools_file() -> Path:
    from include.cluster.pools import NODEPOOLS_SUBDIR, k8s_dir

    return k8s_dir() / NODEPOOLS_SUBDIR / "nodepools.yaml"
