"""An in-memory platform: every seam the lifecycle needs, with its state in Python objects.

It exists to show that a backend is one folder (this one, found through LLMOPS_PLATFORM_PATH),
and to run the lifecycle's task functions with nothing started. One `World` holds the state, so
the seams a test gets from separate `get_platform()` calls see the same route, servers and jobs.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from include.errors import Conflict
from include.platforms import Platform
from include.scheduling.cleanup import Action
from include.serving.router import Router
from include.serving.servers import Servers


class World:
    def __init__(self) -> None:
        self.routes: dict[str, dict] = {}
        self.servers: dict[str, dict] = {}  # service -> {"source", "replicas"}
        self.rendezvous: set[str] = set()
        self.stopped: list[str] = []
        self.metrics: dict[str, float] = {}  # PromQL -> value
        self.calls: list[tuple[str, ...]] = []


WORLD = World()


class MemoryJobs:
    kind = "local"  # the in-process operators: nothing to launch elsewhere
    trainer_backend = "tiny"
    retry_delay_s = 1
    training_timeout_h = 1

    def place(self, params: Mapping[str, Any], problems: list[str]) -> dict[str, Any]:
        return {"pool": params["pool"], "instance_type": "memory", "gpu_model": "none", "price_per_hour": 0.0}

    def preflight(self, plan: Mapping[str, Any]) -> dict[str, Any]:
        WORLD.calls.append(("preflight", plan["run_name"]))
        return {"profile": "memory", "ranks": plan["nodes"] * plan["gpus_per_node"]}

    def setup_rendezvous(self, plan: Mapping[str, Any]) -> dict[str, Any]:
        WORLD.rendezvous.add(plan["run_name"])
        return {"kind": "memory", "master_addr": "memory"}

    def teardown_rendezvous(self, plan: Mapping[str, Any]) -> None:
        WORLD.rendezvous.discard(plan["run_name"])

    def evaluation_job(self, model_uri: str, eval_uri: str, output_uri: str, **options: Any) -> dict[str, Any]:
        from include.evaluation.job import build_job

        return build_job(model_uri, eval_uri, output_uri, generator="tiny", metrics_profile="local", **options)


class MemoryCapacity:
    def __init__(self, schedule: Any):
        self.schedule = schedule

    def gpu_limit(self, kind: str) -> int:
        return 8

    def shared_gpu_budget(self) -> bool:
        return False

    def scale_to_zero(self, kind: str) -> list[Action]:
        return []

    def restore_limits(self, kind: str) -> list[Action]:
        return []

    def leftovers(self, now: datetime, running: set[str]) -> list[Action]:
        return []

    def stop_run(self, record: dict[str, Any]) -> list[Action]:
        rid = record["request"]["id"]
        return [Action("Run", rid, "stop", "would overrun the window", gpus=int(record["request"]["gpus"]),
                       run=lambda: WORLD.stopped.append(rid))]

    def release_hold(self, record: dict[str, Any]) -> None:
        pass

    def node_intervals(self, plan: dict[str, Any], result: dict[str, Any] | None) -> list[tuple[float, int]]:
        return [(0.0, int(plan["gpus_per_node"]))] * int(plan["nodes"])


class MemoryRouter(Router):
    namespace = "memory"

    def get(self, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(WORLD.routes.get(name))

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        name = obj["metadata"]["name"]
        if name in WORLD.routes:
            raise Conflict(f"HTTPRoute {name} exists")
        WORLD.routes[name] = {**copy.deepcopy(dict(obj)), "metadata": {**obj["metadata"], "resourceVersion": "1"}}
        return self.get(name)

    def replace(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        name = obj["metadata"]["name"]
        current = WORLD.routes[name]["metadata"]["resourceVersion"]
        if obj["metadata"].get("resourceVersion") != current:
            raise Conflict(f"HTTPRoute {name}: stale resourceVersion")
        WORLD.routes[name] = copy.deepcopy(dict(obj))
        WORLD.routes[name]["metadata"]["resourceVersion"] = str(int(current) + 1)
        return self.get(name)


class MemoryServers(Servers):
    def deploy(self, service: str, source_uri: str, *, method: str = "full", wait: bool = True,
               update: bool = True) -> str:
        WORLD.calls.append(("deploy", service))
        WORLD.servers[service] = {"source": source_uri, "replicas": 1}
        return self.url(service)

    def url(self, service: str) -> str | None:
        return f"memory://{service}" if service in WORLD.servers else None

    def scale_down(self, service: str) -> bool:
        if service not in WORLD.servers:
            return False
        WORLD.servers[service]["replicas"] = 0
        return True

    def deployed(self) -> dict[str, dict[str, Any]]:
        return {s: {"since": 0.0, "gpus": 0} for s, v in WORLD.servers.items() if v["replicas"]}


class MemoryMetrics:
    def scalar(self, promql: str, at: float | None = None) -> float | None:
        return WORLD.metrics.get(promql, 0.0)


class MemoryPlatform(Platform):
    name = "memory"
    rollout_defaults = {"traffic_rate": 0.0, "ready_timeout_s": 10, "scale_down_delay_s": 0, "retry_delay_s": 1}

    def jobs(self) -> MemoryJobs:
        return MemoryJobs()

    def capacity(self, schedule: Any = None) -> MemoryCapacity:
        from include.scheduling.windows import load

        return MemoryCapacity(schedule or load())

    def servers(self) -> MemoryServers:
        return MemoryServers()

    def router(self) -> MemoryRouter:
        return MemoryRouter()

    def metrics(self) -> MemoryMetrics:
        return MemoryMetrics()


PLATFORM = MemoryPlatform
