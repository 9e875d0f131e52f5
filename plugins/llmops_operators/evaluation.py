"""The evaluation task on both profiles: in-process on local, an evaluator pod on the inference pool on eks.

Both take the same job spec (include/evaluation/job.py) as a templated field and leave the same
result in storage (`<output_uri>/result.json`), which the gate reads. A job of None means there is
nothing to evaluate (a champion whose scores are already on record): the task is skipped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from airflow.sdk import BaseOperator

from include.settings import get_settings


class LocalEvaluationOperator(BaseOperator):
    """Generate with the tiny model and score with RAGAS' non-LLM metrics, in this process."""

    template_fields: Sequence[str] = ("job",)
    ui_color = "#eef7e8"

    def __init__(self, *, job: Mapping[str, Any] | Any, **kwargs) -> None:
        super().__init__(**kwargs)
        self.job = job

    def execute(self, context) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        from include.errors import InputError
        from include.evaluation.job import JobError, validate_job
        from include.evaluation.scoring import run_job

        if self.job is None:
            raise AirflowSkipException("nothing to evaluate: scores already on record")
        try:
            job = validate_job(self.job)
        except JobError as exc:
            raise InputError(str(exc)) from None
        self.log.info("Evaluating %s on %s", job["model_uri"], job["eval_uri"])
        return run_job(job)


def evaluation_operator(**kwargs) -> BaseOperator:
    """The evaluation operator for LLMOPS_PROFILE; only eks imports the `kubernetes` client."""
    if get_settings().is_local:
        return LocalEvaluationOperator(**kwargs)
    from .k8s_evaluation import KubernetesEvaluationOperator

    return KubernetesEvaluationOperator(**kwargs)
