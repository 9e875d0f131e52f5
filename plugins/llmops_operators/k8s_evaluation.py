"""KubernetesPodOperator running the evaluator image on the inference pool.

The pod comes from `include.evaluation.k8s_pod.render_pod(job)`; since the job is only known at
run time (it names the candidate's model URI), the operator's pod arguments are filled in at
execute() from `kubernetes_pod_operator_kwargs`, before the provider builds its pod request.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

from include.settings import get_settings


class KubernetesEvaluationOperator(KubernetesPodOperator):
    template_fields: Sequence[str] = (*KubernetesPodOperator.template_fields, "job")
    ui_color = "#dff0d8"

    def __init__(self, *, job: Mapping[str, Any] | Any, **kwargs) -> None:
        settings = get_settings()
        kwargs.setdefault("kubernetes_conn_id", settings.kubernetes_conn_id)
        kwargs.setdefault("namespace", settings.training_namespace)  # where Airflow's Role allows pods
        kwargs.setdefault("image", settings.evaluator_image)
        super().__init__(**kwargs)
        self.job = job

    def apply_job(self, run_id: str) -> None:
        """Set the pod-defining attributes from the rendered evaluator pod (and check its placement)."""
        from include.evaluation.job import validate_job
        from include.evaluation.k8s_pod import kubernetes_pod_operator_kwargs, pod_name

        job = validate_job(self.job)
        name = pod_name(self.dag_id, run_id, self.task_id.removeprefix("evaluate_"))
        for key, value in kubernetes_pod_operator_kwargs(job, get_settings(), name=name).items():
            setattr(self, key, value)

    def execute(self, context):
        from airflow.sdk.exceptions import AirflowSkipException

        if self.job is None:
            raise AirflowSkipException("nothing to evaluate: scores already on record")
        self.apply_job(context["run_id"])
        return super().execute(context)
