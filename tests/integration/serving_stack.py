"""A real local serving stack for tests: model servers per version, Envoy, Prometheus, on 127.0.0.1.

Everything lives under a temporary data root and is stopped by the fixture's teardown.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from include import tinylm
from include.platforms import get_platform
from include.platforms.local import envoy
from include.platforms.local import prometheus as prometheus_local
from include.platforms.local.router import LocalRouter
from include.platforms.local.servers import LocalServers
from include.serving import loadgen, metrics, processes
from include.serving import route as rt
from include.settings import Settings

MODEL = "llmops-assistant"


def export_tiny(path: Path, seed: int) -> str:
    torch.manual_seed(seed)
    return "file://" + str(tinylm.export_model(tinylm.TinyByteLM(tinylm.TinyConfig(max_position_embeddings=64)), path))


@dataclass
class Stack:
    settings: Settings
    root: Path
    router: LocalRouter
    servers: LocalServers
    prom: metrics.PrometheusClient

    @property
    def route_name(self) -> str:
        return rt.route_name(MODEL)

    def gateway(self) -> str:
        return self.router.gateway_url()

    def route(self) -> dict:
        return self.router.get(self.route_name)

    def wait_scraped(self, promql: str, expected: float, timeout: float = 15.0) -> float:
        """Poll until Prometheus reports `expected` for a counter (it has scraped past our traffic)."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = self.prom.scalar(promql)
            if value is not None and value >= expected:
                return value
            time.sleep(0.5)
        raise AssertionError(f"{promql} reached {value}, expected {expected}")

    def stop_all(self) -> None:
        for info in processes.running("", self.root):
            processes.stop(info.name, self.root)


def start_stack(tmp: Path, versions: dict[str, str]) -> Stack:
    """Servers for `versions` (service -> weights URI), the route at 100 % on the first, Envoy, Prometheus."""
    settings = Settings(data_root=f"file://{tmp}")
    root = processes.run_dir(settings.data_root)
    stack = Stack(settings, root, LocalRouter(settings, root), LocalServers(settings, root),
                  get_platform(settings).metrics())
    try:
        for service, source in versions.items():
            stack.servers.deploy(service, source)
        first = next(iter(versions))
        stack.router.create(rt.new_route(MODEL, settings.serving_namespace, backends={first: 100}))
        prometheus_local.ensure_running(root)
    except Exception:
        stack.stop_all()
        raise
    return stack


__all__ = ["MODEL", "Stack", "envoy", "export_tiny", "loadgen", "start_stack"]
