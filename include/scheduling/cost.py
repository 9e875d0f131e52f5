"""Actual GPU-hours and cost of a training run, beside the plan's estimate and its error.

Actual = for each node (a pod of the Job on eks, a rank locally): its run time x the node's GPUs,
and node-hours x the instance's price: spot for a spot pool (the experiment pool), on-demand
otherwise, from include/cluster/instance_types.yaml. Every attempt counts: time lost to a
failure or a spot interruption was paid for too.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def node_price(plan: dict[str, Any]) -> float:
    """USD per node-hour for the plan's instance type and pool; 0 for the local profile."""
    if plan.get("instance_type") in (None, "local"):
        return 0.0
    from include.cluster.pools import get_instance_types, pool_for_plan

    itype = get_instance_types()[plan["instance_type"]]
    spot = pool_for_plan(plan["pool"]).capacity_types == ("spot",)
    return itype.spot_usd_per_hour if spot else itype.on_demand_usd_per_hour


def actual_usage(node_intervals: list[tuple[float, int]], usd_per_node_hour: float) -> dict[str, float]:
    """node_intervals: (seconds, GPUs) per node or rank."""
    node_hours = sum(s for s, _ in node_intervals) / 3600
    gpu_hours = sum(s * g for s, g in node_intervals) / 3600
    return {"node_hours": round(node_hours, 4), "gpu_hours": round(gpu_hours, 4),
            "cost_usd": round(node_hours * usd_per_node_hour, 2)}


def _error_pct(estimated: float, actual: float) -> float | None:
    return round(100 * (actual - estimated) / estimated, 1) if estimated else None


def compare(estimated: dict[str, float], actual: dict[str, float]) -> dict[str, float | None]:
    """Flat metrics for MLflow: estimated, actual and the estimate's error (actual vs estimate, %)."""
    out: dict[str, float | None] = {}
    for key in ("gpu_hours", "cost_usd"):
        out[f"cost.estimated_{key}"] = estimated[key]
        out[f"cost.actual_{key}"] = actual[key]
        out[f"cost.{key}_error_pct"] = _error_pct(estimated[key], actual[key])
    return out
