"""Off-hours scheduling, measured: a seeded week of synthetic training requests, three ways.

    python benchmarks/offhours_sim.py [--seed 7] [--requests 120] [--weeks 1]

(A) on-arrival    every request starts when it arrives (FIFO by priority within the pools' GPU
                  limits), all on on-demand nodes;
(B) off-hours     requests wait for the windows in include/scheduling/windows.yaml and go through
                  the real admission code (include/scheduling/admission.admit: priority, age,
                  GPU budget, remaining window time, window cost budget), on-demand nodes;
(C) off-hours+spot as (B) with the experiment pool on spot: spot prices from
                  include/cluster/instance_types.yaml, interruptions at the per-type hourly rate
                  in SPOT_INTERRUPTIONS below, each costing a restart plus the work since the last
                  checkpoint (half an interval on average); at window close overrunning
                  experiment runs are stopped and re-queued with a resume cost.

The node model is Karpenter's: a run takes whole nodes, a new node bills from launch (boot time
included), an idle node is reused by the next run of its type or removed after the pool's
consolidateAfter (read from k8s/karpenter/nodepools.yaml); in (B) and (C) idle experiment nodes
go at window close (scale to zero). Actual durations differ from the estimates admission sees
(lognormal noise). One minute resolution.

Prints total cost, p50/p95 wait until start, GPU utilisation (busy / billed GPU-hours) within the
windows and overall, and the savings against (A) beside the source design's claims (off-hours
30-40 %, spot 60-90 %).
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from include.cluster.pools import get_instance_types  # noqa: E402
from include.scheduling.admission import PoolBudget, Request, admit  # noqa: E402
from include.scheduling.windows import WINDOWS_FILE, load, parse_duration  # noqa: E402

START = datetime(2026, 6, 1, 4, 0, tzinfo=UTC)  # Monday 00:00 in New York (EDT)
BOOT_MIN = 6  # launch to Ready: billed, not usable
# Spot interruptions per node-hour (rough public figures: the Spot Advisor's "<5 %" to "5-10 %" per
# month bands are far lower; GPU spot in busy regions is reclaimed much more often). Assumptions.
SPOT_INTERRUPTIONS = {"g5.12xlarge": 0.02, "g6e.12xlarge": 0.03, "g5.48xlarge": 0.04}
RESTART_MIN = 12  # new node, image pull, rendezvous, checkpoint load
CHECKPOINT_INTERVAL_MIN = 30
POOL_OF = {"production": "gpu-training-pool", "experiment": "gpu-experiment-pool"}
SHAPES = {  # pool -> [(instance type, nodes, weight)]
    "production": [("p4d.24xlarge", 1, 5), ("p4d.24xlarge", 2, 3), ("p5.48xlarge", 1, 2)],
    "experiment": [("g5.12xlarge", 1, 5), ("g6e.12xlarge", 1, 3), ("g5.48xlarge", 1, 2), ("g5.12xlarge", 2, 2)],
}


@dataclass
class Job:
    id: str
    pool: str
    itype: str
    nodes: int
    arrival: int  # minute
    est_min: int
    actual_min: int
    priority: int
    remaining: int = 0
    start: int | None = None
    end: int | None = None
    interruptions: int = 0
    stops: int = 0
    held: list = field(default_factory=list)


@dataclass
class Node:
    itype: str
    pool: str
    launched: int
    ready: int
    busy_until: int | None = None  # None: idle
    busy_from: int = 0  # the run starts once all its nodes are ready
    idle_since: int = 0
    gone: int | None = None


def consolidate_after() -> dict[str, int]:
    docs = yaml.safe_load_all((Path(__file__).resolve().parent.parent / "k8s/karpenter/nodepools.yaml").read_text())
    out = {}
    for d in docs:
        if d and d["kind"] == "NodePool":
            after = parse_duration("consolidateAfter", d["spec"]["disruption"]["consolidateAfter"])
            out[d["metadata"]["name"]] = int(after.total_seconds() // 60)
    return out


def synth(seed: int, n: int, minutes: int) -> list[Job]:
    """Arrivals weighted to New York working hours; sizes by pool; lognormal durations and noise."""
    rng = random.Random(seed)
    jobs = []
    for i in range(n):
        while True:
            t = rng.randrange(minutes)
            local = START + timedelta(minutes=t) - timedelta(hours=4)
            weight = 1.0 if local.weekday() < 5 and 9 <= local.hour < 18 else 0.15
            if rng.random() < weight:
                break
        pool = "production" if rng.random() < 0.45 else "experiment"
        itype, nodes, _ = rng.choices(SHAPES[pool], weights=[s[2] for s in SHAPES[pool]])[0]
        est = max(20, int(rng.lognormvariate(math.log(150 if pool == "production" else 90), 0.6)))
        est = min(est, 9 * 60)
        actual = max(10, int(est * rng.lognormvariate(0, 0.2)))
        jobs.append(Job(f"r{i:03d}", pool, itype, nodes, t, est, actual, rng.choice((0, 0, 0, 1, 2))))
    return sorted(jobs, key=lambda j: j.arrival)


class Sim:
    def __init__(self, jobs: list[Job], windows: bool, spot: bool, seed: int):
        self.jobs = [Job(**{k: v for k, v in vars(j).items() if k != "held"}) for j in jobs]
        for j in self.jobs:
            j.remaining = j.actual_min
        self.windows, self.spot = windows, spot
        self.rng = random.Random(seed + 1)
        self.types = get_instance_types()
        self.schedule = load(WINDOWS_FILE)
        self.limits = {"production": 64, "experiment": 32}
        self.idle_after = consolidate_after()
        self.nodes: list[Node] = []
        self.busy_gpu_min = 0.0
        self.busy_gpu_min_in_window = 0.0
        self.billed_gpu_min_in_window = 0.0
        self.spent = 0.0

    def price(self, itype: str, pool: str) -> float:
        t = self.types[itype]
        return t.spot_usd_per_hour if (self.spot and pool == "experiment") else t.on_demand_usd_per_hour

    def open_spans(self, minutes: int) -> dict[str, list[tuple[int, int]]]:
        end = START + timedelta(minutes=minutes)
        out = {}
        for kind in POOL_OF:
            spans = self.schedule.pool(kind).intervals(START, end)
            out[kind] = [(int((a - START).total_seconds() // 60), int((b - START).total_seconds() // 60))
                         for a, b in spans]
        return out

    def window_at(self, kind: str, t: int) -> tuple[int, int] | None:
        return next(((a, b) for a, b in self.spans[kind] if a <= t < b), None)

    def gpus_in_use(self, pool: str) -> int:
        return sum(self.types[n.itype].gpus for n in self.nodes if n.gone is None and n.pool == pool)

    def start(self, job: Job, t: int) -> bool:
        need_gpus = self.types[job.itype].gpus * job.nodes
        idle = [n for n in self.nodes if n.gone is None and n.itype == job.itype and n.pool == job.pool
                and n.busy_until is None]
        new = job.nodes - min(len(idle), job.nodes)
        if self.gpus_in_use(job.pool) + new * self.types[job.itype].gpus > self.limits[job.pool]:
            return False
        take = idle[:job.nodes]
        for _ in range(new):
            node = Node(job.itype, job.pool, launched=t, ready=t + BOOT_MIN)
            self.nodes.append(node)
            take.append(node)
        begin = max(t, *(n.ready for n in take))
        if job.start is None:
            job.start = begin
        if self.spot and job.pool == "experiment":
            rate = SPOT_INTERRUPTIONS[job.itype] * job.nodes / 60
            hits = sum(1 for _ in range(job.remaining) if self.rng.random() < rate)
            job.interruptions += hits
            job.remaining += hits * (RESTART_MIN + CHECKPOINT_INTERVAL_MIN // 2)
        for n in take:
            n.busy_from, n.busy_until = begin, begin + job.remaining
        job.held = take
        return need_gpus > 0

    def run(self, minutes: int) -> dict:
        self.spans = self.open_spans(minutes + 14 * 1440)
        queue: list[Job] = []
        pending = list(self.jobs)
        horizon = minutes + 14 * 1440  # let the last requests finish
        committed: dict[tuple[str, int], float] = {}
        for t in range(horizon):
            while pending and pending[0].arrival <= t:
                queue.append(pending.pop(0))
            running = [j for j in self.jobs if j.held]
            for j in running:  # finish
                if j.held[0].busy_until <= t:
                    j.end = t
                    for n in j.held:
                        n.busy_until, n.idle_since = None, t
                    j.held = []
            if self.windows:  # window close: stop experiment runs that are still running
                for j in [j for j in self.jobs if j.held and j.pool == "experiment"]:
                    if self.window_at("experiment", t) is None:
                        left = j.held[0].busy_until - t
                        j.remaining = left + RESTART_MIN + CHECKPOINT_INTERVAL_MIN // 2
                        j.stops += 1
                        for n in j.held:
                            n.busy_until, n.idle_since = None, t
                        j.held = []
                        queue.append(j)
            if queue:
                queue = self.admit(queue, t, committed)
            for n in self.nodes:  # consolidation / scale to zero
                if n.gone is None and n.busy_until is None:
                    closed = self.windows and n.pool == "experiment" and self.window_at("experiment", t) is None
                    if closed or t - n.idle_since >= self.idle_after[POOL_OF[n.pool]]:
                        n.gone = t
            self.account(t)
            if not pending and not queue and not any(j.held for j in self.jobs) and t >= minutes:
                break
        for n in self.nodes:
            if n.gone is None:
                n.gone = t
        return self.result()

    def admit(self, queue: list[Job], t: int, committed: dict) -> list[Job]:
        if not self.windows:
            waiting = []
            for j in sorted(queue, key=lambda j: (-j.priority, j.arrival)):
                if not self.start(j, t):
                    waiting.append(j)
            return waiting
        requests, budgets = [], {}
        for kind in POOL_OF:
            w = self.window_at(kind, t)
            key = (kind, w[0] if w else -1)
            budgets[kind] = PoolBudget(
                gpu_limit=self.limits[kind], gpus_in_use=self.gpus_in_use(kind) - self.idle_gpus(kind),
                remaining_hours=(w[1] - t) / 60 if w else 0.0, window_hours=58.0,
                cost_budget_usd=float(self.schedule.admission["cost_budget_usd_per_window"]),
                cost_committed_usd=committed.get(key, 0.0))
        by_id = {}
        for j in queue:
            hours = (j.est_min if j.start is None else j.remaining) / 60
            cost = hours * j.nodes * self.price(j.itype, j.pool)
            requests.append(Request(j.id, j.pool, self.types[j.itype].gpus * j.nodes, round(hours, 4),
                                    round(hours * self.types[j.itype].gpus * j.nodes, 3), round(cost, 2),
                                    j.priority, f"{j.arrival:06d}"))
            by_id[j.id] = j
        waiting = []
        for v in admit(requests, budgets):
            j = by_id[v.request.id]
            if v.outcome == "admitted" and self.start(j, t):
                w = self.window_at(j.pool, t)
                committed[(j.pool, w[0])] = committed.get((j.pool, w[0]), 0.0) + v.request.cost_usd
            elif v.outcome != "refused":
                waiting.append(j)
        return waiting

    def idle_gpus(self, pool: str) -> int:
        return sum(self.types[n.itype].gpus for n in self.nodes if n.gone is None and n.pool == pool
                   and n.busy_until is None)

    def account(self, t: int) -> None:
        in_window = any(self.window_at(k, t) for k in POOL_OF)
        for n in self.nodes:
            if n.gone is None:
                gpus = self.types[n.itype].gpus
                self.spent += self.price(n.itype, n.pool) / 60
                busy = n.busy_until is not None and n.busy_from <= t
                self.busy_gpu_min += gpus * busy
                if in_window:
                    self.billed_gpu_min_in_window += gpus
                    self.busy_gpu_min_in_window += gpus * busy

    def result(self) -> dict:
        done = [j for j in self.jobs if j.start is not None]
        waits = sorted((j.start - j.arrival) / 60 for j in done)
        billed = sum((n.gone - n.launched) * self.types[n.itype].gpus for n in self.nodes)

        def pct(p: float) -> float:
            return waits[min(len(waits) - 1, int(p * len(waits)))] if waits else float("nan")

        return {"cost": self.spent, "p50": statistics.median(waits) if waits else float("nan"), "p95": pct(0.95),
                "util_window": self.busy_gpu_min_in_window / self.billed_gpu_min_in_window
                if self.billed_gpu_min_in_window else float("nan"),
                "util_all": self.busy_gpu_min / billed if billed else float("nan"),
                "started": len(done), "nodes": len(self.nodes), "stops": sum(j.stops for j in self.jobs),
                "interruptions": sum(j.interruptions for j in self.jobs),
                "gpu_hours": self.busy_gpu_min / 60}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--requests", type=int, default=120)
    parser.add_argument("--weeks", type=int, default=1)
    args = parser.parse_args(argv)
    minutes = args.weeks * 7 * 1440
    jobs = synth(args.seed, args.requests, minutes)
    scenarios = {"A on-arrival, on-demand": Sim(jobs, windows=False, spot=False, seed=args.seed),
                 "B off-hours, on-demand": Sim(jobs, windows=True, spot=False, seed=args.seed),
                 "C off-hours, experiment on spot": Sim(jobs, windows=True, spot=True, seed=args.seed)}
    results = {name: sim.run(minutes) for name, sim in scenarios.items()}
    base = results["A on-arrival, on-demand"]["cost"]
    print(f"{args.requests} requests over {args.weeks} week(s), seed {args.seed}; windows from {WINDOWS_FILE.name}; "
          f"{sum(j.pool == 'experiment' for j in jobs)} experiment / {sum(j.pool == 'production' for j in jobs)} "
          "production")
    head = (f"{'scenario':34} {'cost $':>10} {'vs A':>7} {'wait p50 h':>10} {'p95 h':>7} {'util win':>8} "
            f"{'util all':>8} {'busy GPU-h':>10} {'runs':>5} {'nodes':>6} {'stops':>5} {'spot int':>8}")
    print(head)
    print("-" * len(head))
    for name, r in results.items():
        saving = 100 * (1 - r["cost"] / base)
        print(f"{name:34} {r['cost']:10,.0f} {saving:6.1f}% {r['p50']:10.1f} {r['p95']:7.1f} "
              f"{r['util_window']:8.1%} {r['util_all']:8.1%} {r['gpu_hours']:10,.0f} {r['started']:5d} {r['nodes']:6d} "
              f"{r['stops']:5d} {r['interruptions']:8d}")
    b, c = results["B off-hours, on-demand"]["cost"], results["C off-hours, experiment on spot"]["cost"]
    exp_b = _pool_cost(scenarios["B off-hours, on-demand"], "experiment")
    exp_c = _pool_cost(scenarios["C off-hours, experiment on spot"], "experiment")
    print(f"\noff-hours saving (B vs A): {100 * (1 - b / base):.1f} %   claimed 30-40 %")
    print(f"spot saving on the experiment pool (C vs B, that pool only): {100 * (1 - exp_c / exp_b):.1f} %   "
          "claimed 60-90 %")
    print(f"off-hours + spot overall (C vs A): {100 * (1 - c / base):.1f} %")
    return 0


def _pool_cost(sim: Sim, pool: str) -> float:
    return sum((n.gone - n.launched) / 60 * sim.price(n.itype, n.pool) for n in sim.nodes if n.pool == pool)


if __name__ == "__main__":
    sys.exit(main())
