"""The training task on both profiles: N local processes, or a JobSet on EKS.

Both take the same flat plan (trainer keys plus dag_id, run_id, pool, instance_type, image) as a
templated field, so the planning task's XCom can feed either. Results travel through storage
(`include.training.results.read_result`), never a pod sidecar.

This module stays free of the `kubernetes` client: the local profile parses DAGs without it. The
Kubernetes operator lives in `k8s_training.py` and is imported only when asked for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from airflow.sdk import BaseOperator


class LocalTrainingJobOperator(BaseOperator):
    """Run the trainer as nodes x gpus_per_node local ranks and return rank 0's result.

    Any failed rank restarts all ranks within the plan's restart policy (max_restarts,
    restart_backoff_s, max_wall_s); they resume from the last complete checkpoint in checkpoint_dir.
    A task retry does the same, and ranks a killed earlier try left running are stopped first.
    """

    template_fields: Sequence[str] = ("plan",)
    ui_color = "#e8f1fb"

    def __init__(self, *, plan: Mapping[str, Any] | Any, timeout_s: float | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.plan = plan
        self.timeout_s = timeout_s

    def execute(self, context) -> dict[str, Any]:
        from include.lifecycle.failfast import fail_fast
        from include.training.local_launcher import launch
        from include.training.plan import trainer_keys
        from include.training.restarts import RestartPolicy

        # The planning task's plan, valid already; each rank's entrypoint validates its part again, and a
        # plan it refuses fails the task without a retry.
        trainer = trainer_keys(self.plan)
        policy = RestartPolicy.from_plan(self.plan)
        nprocs = trainer["nodes"] * trainer["gpus_per_node"]
        self.log.info("Launching %d local ranks of run %s (restart policy %s); rank 0's progress follows",
                      nprocs, trainer["run_name"], policy)
        result = fail_fast(launch)(trainer, nprocs=nprocs, timeout=self.timeout_s, policy=policy)
        from include.lifecycle.summaries import trained

        self.log.info("%s", trained(result))
        return result

    def on_kill(self) -> None:
        from include.training.local_launcher import stop_recorded_ranks

        if isinstance(self.plan, Mapping) and self.plan.get("checkpoint_dir"):
            stop_recorded_ranks(self.plan["checkpoint_dir"])


def training_job_operator(**kwargs) -> BaseOperator:
    """The training operator for this profile's container jobs; same task id, params and plan either way."""
    from include.platforms import get_platform

    if get_platform().jobs().kind == "kubernetes":
        from .k8s_training import KubernetesTrainingJobOperator

        return KubernetesTrainingJobOperator(**kwargs)
    return LocalTrainingJobOperator(**kwargs)
