"""Local profile of the container-job seam: ranks and evaluators are processes on this machine.

Rank 0 is always 127.0.0.1 and the launcher picks a free port itself. Teardown stops rank
processes the launcher recorded under `<checkpoint_dir>/.ranks/` and could not reap because the
Airflow task was killed: otherwise they would keep training, and writing checkpoints, unowned.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from include.settings import Settings

MASTER_ADDR = "127.0.0.1"
MAX_LOCAL_RANKS = 8


class LocalJobs:
    kind = "local"
    trainer_backend = "tiny"
    retry_delay_s = 5
    training_timeout_h = 2

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def place(self, params: Mapping[str, Any], problems: list[str]) -> dict[str, Any]:
        world = params["nodes"] * params["gpus_per_node"]
        if world > MAX_LOCAL_RANKS:
            problems.append(f"nodes x gpus_per_node = {world} local ranks; the local profile runs at most "
                            f"{MAX_LOCAL_RANKS}")
        if params["tensor_parallel"] * params["pipeline_parallel"] != 1:
            problems.append("the local profile trains data-parallel only: set tensor_parallel = "
                            "pipeline_parallel = 1")
        return {"pool": params["pool"], "instance_type": "local", "gpu_model": "cpu", "price_per_hour": 0.0}

    def preflight(self, plan: Mapping[str, Any]) -> dict[str, Any]:
        cpus = os.cpu_count() or 1
        ranks = plan["nodes"] * plan["gpus_per_node"]
        return {"profile": "local", "ranks": ranks, "cpus": cpus,
                "note": "ranks share CPUs" if ranks > cpus else "one CPU per rank"}

    def setup_rendezvous(self, plan: Mapping[str, Any]) -> dict[str, Any]:
        return {"kind": "local", "master_addr": MASTER_ADDR}

    def teardown_rendezvous(self, plan: Mapping[str, Any]) -> None:
        from include.training.local_launcher import stop_recorded_ranks

        stop_recorded_ranks(plan["checkpoint_dir"])

    def evaluation_job(self, model_uri: str, eval_uri: str, output_uri: str, **options: Any) -> dict[str, Any]:
        """Tiny-model generation and RAGAS' non-LLM metrics, in the task's own process."""
        from include.evaluation.job import build_job

        return build_job(model_uri, eval_uri, output_uri, generator="tiny", metrics_profile="local", **options)
