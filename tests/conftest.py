"""Run order for the parallel part of `make test` (scripts/test.sh): e2e modules, then slow ones, then the rest.

The e2e deployments take minutes each. The workers take one module at a time, in this order
(`--dist loadscope --no-loadscope-reorder`: a module's fixtures are built once), so the long
modules start first and the short ones fill the gaps: no worker is left running one long test at
the end while the other sits idle.
"""

from __future__ import annotations

import pytest


def _tier(item: pytest.Item) -> int:
    if "e2e" in item.path.parts:
        return 0
    return 1 if item.get_closest_marker("slow") else 2


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_tier)  # stable: file order within a tier
