"""Admission of queued training requests into an off-hours window: pure functions, no I/O.

Kueue admits by quota but has no time windows, so the off-hours DAG does it: at window open the
waiting requests are taken in priority order, then oldest first, and each is admitted while

- its GPUs fit the pool's GPU budget (NodePool limits.nvidia.com/gpu, or the local slot budget,
  minus GPUs already held by running runs and by requests admitted before it),
- its estimated duration fits the window's remaining time,
- its estimated cost fits what is left of the window's cost budget.

A request that fails a check waits for a later pass, and those behind it may still go (Kueue's
BestEffortFIFO: a big request does not hold back smaller ones; priority lets it go first next
time). A request that can never fit (more GPUs than the pool's limit, a cost above the whole
budget, a duration longer than any window) is refused at once with the reason.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from include.cluster.pools import EXPERIMENT

LOCAL_INSTANCE = "local"  # planning's placement on the local profile


@dataclass(frozen=True)
class Request:
    """One training run asking for a window, with its plan's estimate."""

    id: str
    pool: str  # production | experiment
    gpus: int  # what the pool's GPU limit counts: whole nodes' GPUs on eks, ranks locally
    hours: float  # estimated wall-clock hours
    gpu_hours: float
    cost_usd: float
    priority: int = 0
    created_at: str = ""  # ISO 8601 UTC; ties in priority go oldest first
    conf: dict[str, Any] = field(default_factory=dict)  # the trigger conf that runs it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Request:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass(frozen=True)
class PoolBudget:
    """What one pool can still take in the current window."""

    gpu_limit: int  # NodePool limits.nvidia.com/gpu, or the local slots
    gpus_in_use: int  # GPUs of runs already running
    remaining_hours: float  # until the window closes; 0 when closed
    window_hours: float  # the longest window: a request longer than this never fits
    cost_budget_usd: float
    cost_committed_usd: float = 0.0  # estimated cost already admitted in this window


@dataclass(frozen=True)
class Verdict:
    request: Request
    outcome: str  # admitted | waiting | refused
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.request.id, "pool": self.request.pool, "outcome": self.outcome, "reason": self.reason,
                "gpus": self.request.gpus, "hours": self.request.hours, "gpu_hours": self.request.gpu_hours,
                "cost_usd": self.request.cost_usd, "priority": self.request.priority}


def request_from_plan(plan: dict[str, Any], estimate: dict[str, Any], *, request_id: str, priority: int,
                      created_at: datetime, conf: dict[str, Any], local_seconds_per_step: float) -> Request:
    """A Request from build_plan's output: GPUs, duration and cost from the plan's estimate.

    Karpenter counts every GPU of a node against the pool limit, so eks GPUs are nodes x the
    instance's GPUs, not nodes x gpus_per_node. Locally a GPU is a rank slot; duration comes from
    a per-step figure (the tiny model's cost is 0).
    """
    nodes = int(plan["nodes"])
    if plan["instance_type"] == LOCAL_INSTANCE:
        gpus = nodes * int(plan["gpus_per_node"])
        hours = int(plan["max_steps"]) * local_seconds_per_step / 3600
        gpu_hours, cost = hours * gpus, 0.0
    else:
        from include.cluster.pools import get_instance_types

        gpus = nodes * get_instance_types()[plan["instance_type"]].gpus
        hours, gpu_hours, cost = float(estimate["wall_hours"]), float(estimate["gpu_hours"]), float(
            estimate["cost_usd"])
    return Request(id=request_id, pool=str(plan["pool"]), gpus=gpus, hours=round(hours, 4),
                   gpu_hours=round(gpu_hours, 4), cost_usd=round(cost, 2), priority=int(priority),
                   created_at=created_at.isoformat(), conf=dict(conf))


def order(requests: list[Request]) -> list[Request]:
    """Higher priority first, then oldest first, then id (a stable, replayable order)."""
    return sorted(requests, key=lambda r: (-r.priority, r.created_at, r.id))


def never_fits(request: Request, budget: PoolBudget) -> str | None:
    """Why the request can never be admitted to this pool, or None."""
    if request.gpus > budget.gpu_limit:
        return (f"needs {request.gpus} GPUs but pool {request.pool} is limited to {budget.gpu_limit}; "
                "use fewer nodes or the other pool")
    if request.cost_usd > budget.cost_budget_usd:
        return (f"estimated ${request.cost_usd:,.2f} exceeds the whole window cost budget "
                f"${budget.cost_budget_usd:,.2f}; lower max_steps or raise the budget")
    if request.hours > budget.window_hours:
        return (f"estimated {request.hours:.2f} h is longer than any window ({budget.window_hours:.2f} h); "
                "lower max_steps or run it with window=now")
    return None


def admit(requests: list[Request], budgets: dict[str, PoolBudget]) -> list[Verdict]:
    """One admission pass: a verdict for every request, in the order they were considered."""
    free = {pool: b.gpu_limit - b.gpus_in_use for pool, b in budgets.items()}
    cost_left = {pool: b.cost_budget_usd - b.cost_committed_usd for pool, b in budgets.items()}
    verdicts = []
    for r in order(requests):
        budget = budgets.get(r.pool)
        if budget is None:
            verdicts.append(Verdict(r, "refused", f"pool {r.pool!r} has no off-hours window; "
                                                  f"windows exist for {', '.join(sorted(budgets))}"))
            continue
        if why := never_fits(r, budget):
            verdicts.append(Verdict(r, "refused", why))
            continue
        if budget.remaining_hours <= 0:
            verdicts.append(Verdict(r, "waiting", "the window is closed"))
        elif r.gpus > free[r.pool]:
            verdicts.append(Verdict(r, "waiting", f"needs {r.gpus} GPUs, {free[r.pool]} of {budget.gpu_limit} "
                                                  f"free in pool {r.pool}"))
        elif r.hours > budget.remaining_hours:
            verdicts.append(Verdict(r, "waiting", f"needs {r.hours:.2f} h, the window closes in "
                                                  f"{budget.remaining_hours:.2f} h"))
        elif r.cost_usd > cost_left[r.pool]:
            verdicts.append(Verdict(r, "waiting", f"estimated ${r.cost_usd:,.2f}, ${cost_left[r.pool]:,.2f} "
                                                  "of the window cost budget left"))
        else:
            free[r.pool] -= r.gpus
            cost_left[r.pool] -= r.cost_usd
            verdicts.append(Verdict(r, "admitted", f"{r.gpus} GPUs, {r.hours:.2f} h, ${r.cost_usd:,.2f} fit"))
    return verdicts


def overruns(running: list[dict[str, Any]], now: datetime, close: datetime | None) -> list[dict[str, Any]]:
    """Experiment runs to stop at window close: those whose estimated end is past the close, and those
    still running past their estimated end (the estimate no longer says when they finish).

    `running`: {"id", "pool", "started_at" (ISO), "hours"}. Production runs always continue.
    """
    out = []
    for run in running:
        if run["pool"] != EXPERIMENT:
            continue
        ends = datetime.fromisoformat(run["started_at"]).timestamp() + float(run["hours"]) * 3600
        if close is None or now >= close or ends > close.timestamp() or ends <= now.timestamp():
            out.append(run)
    return out
