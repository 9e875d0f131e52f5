"""The interfaces of the platform seams a bundle implements beside the serving stage's own
(`serving.servers.Servers`, `serving.router.Router`, `serving.metrics.PrometheusClient`)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Protocol

from include.scheduling.cleanup import Action


class ContainerJobs(Protocol):
    """Run a trainer or an evaluator on this platform. Results travel through storage on every
    platform (`training.results.read_result`), never a pod sidecar."""

    kind: str  # which operator plugins/ builds for a container task: "local" | "kubernetes"
    trainer_backend: str  # "tiny" | "nemo"
    retry_delay_s: int  # how long a failed task waits before its retry
    training_timeout_h: int

    def place(self, params: Mapping[str, Any], problems: list[str]) -> dict[str, Any]:
        """Where the run goes (ranks here, or a pool and instance type); refusals go to `problems`."""

    def preflight(self, plan: Mapping[str, Any]) -> dict[str, Any]: ...

    def setup_rendezvous(self, plan: Mapping[str, Any]) -> dict[str, Any]: ...

    def teardown_rendezvous(self, plan: Mapping[str, Any]) -> None: ...

    def evaluation_job(self, model_uri: str, eval_uri: str, output_uri: str, **options: Any) -> dict[str, Any]: ...


class Capacity(Protocol):
    """The off-hours DAG's side of the platform: GPU budget, scale to zero, leftovers, stopping a run.
    Each returns cleanup `Action`s, so the DAG lists, applies and reports them the same way."""

    def gpu_limit(self, kind: str) -> int: ...
    def shared_gpu_budget(self) -> bool: ...
    def scale_to_zero(self, kind: str) -> list[Action]: ...
    def restore_limits(self, kind: str) -> list[Action]: ...
    def leftovers(self, now: datetime, running: set[str]) -> list[Action]: ...
    def stop_run(self, record: dict[str, Any]) -> list[Action]: ...
    def release_hold(self, record: dict[str, Any]) -> None:
        """The run is admitted again: lift what `stop_run` left to hold it."""

    def node_intervals(self, plan: dict[str, Any], result: dict[str, Any] | None) -> list[tuple[float, int]]: ...
