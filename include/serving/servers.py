"""The model-server seam: a server per model version, deployed, addressed and scaled down.

The implementations are the platforms' (include/platforms/<name>/servers.py): local processes, or
a vLLM Deployment and Service per version on eks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any


class Servers(ABC):
    @abstractmethod
    def deploy(self, service: str, source_uri: str, *, method: str = "full", wait: bool = True,
               update: bool = True) -> str:
        """Ensure the version's server exists and serves (idempotent; a stopped or scaled-to-0 one
        starts again); return its base URL. With `wait`, a local server is also ready when this
        returns; without it (and always on eks) the caller waits. `update=False` (the stable, which
        takes traffic): one that exists keeps its spec; only a stopped one starts again."""

    @abstractmethod
    def url(self, service: str) -> str | None:
        """Base URL of the version's server (direct, outside the route), None when not deployed."""

    @abstractmethod
    def scale_down(self, service: str) -> bool: ...

    # What a running server is, for the cleanup report: "Process" (local) or "Deployment" (eks).
    workload_kind = "Process"
    namespace = ""

    @abstractmethod
    def deployed(self) -> dict[str, dict[str, Any]]:
        """Every running server of this model: service -> {"since": epoch seconds, "gpus": int}."""

    def ensure_observability(self) -> None:  # noqa: B027 - eks: Prometheus is the cluster's
        """Make sure something scrapes the servers (local: start Prometheus)."""

    def start_traffic(self, prompts: list[str], rate: float) -> bool:
        """Replay prompts through the gateway during analysis (local); eks serves real traffic."""
        return False

    def stop_traffic(self) -> bool:
        return False
