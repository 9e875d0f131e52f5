"""The evaluation task on both profiles: in-process on local, an evaluator pod on the inference pool on eks.

Both take the same job spec (include/evaluation/job.py) as a templated field and leave the same
result in storage (`<output_uri>/result.json`), which the gate reads. A job of None means there is
nothing to evaluate (a champion whose scores are already on record): the task is skipped.
Which one a DAG gets follows the container-job seam (`get_platform().jobs().kind`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from airflow.sdk import BaseOperator


class LocalEvaluationOperator(BaseOperator):
    """Generate with the tiny model and score with RAGAS' non-LLM metrics, in this process."""

    template_fields: Sequence[str] = ("job",)
    ui_color = "#eef7e8"

    def __init__(self, *, job: Mapping[str, Any] | Any, role: str = "candidate", **kwargs) -> None:
        super().__init__(**kwargs)
        self.job = job
        self.role = role

    def execute(self, context) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        from include.evaluation.job import validate_job
        from include.evaluation.run import run_job
        from include.lifecycle.failfast import fail_fast

        if self.job is None:
            raise AirflowSkipException("nothing to evaluate: scores already on record")
        job = fail_fast(validate_job)(self.job)
        self.log.info("Evaluating %s on %s (%s)", job["model_uri"], job["eval_uri"], self.role)
        result = run_job(job)
        from include.lifecycle.summaries import evaluated

        self.log.info("%s", evaluated(result, self.role, job["output_uri"]))
        return result


def evaluation_operator(**kwargs) -> BaseOperator:
    """The evaluation operator for this profile's container jobs; only eks imports the `kubernetes` client."""
    from include.platforms import get_platform

    if get_platform().jobs().kind == "kubernetes":
        from .k8s_evaluation import KubernetesEvaluationOperator

        return KubernetesEvaluationOperator(**kwargs)
    return LocalEvaluationOperator(**kwargs)
