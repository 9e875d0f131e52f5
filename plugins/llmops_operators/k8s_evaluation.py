"""KubernetesPodOperator running the evaluator image on the inference pool.

include/ renders the pod (`include.evaluation.k8s_pod.render_pod`); the mapping onto the
provider's arguments lives here. Everything that does not depend on the job is set in the
constructor, so `template_fields`, retries and re-attachment behave as the provider documents.
The job itself arrives through XCom (it names the candidate's model URI), so only the pod name,
the `--job` argument and `full_pod_spec` are filled in at execute(), from one render.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

from include.evaluation.k8s_pod import COMMAND, CONTAINER, STARTUP_TIMEOUT_S
from include.settings import get_settings


def constant_kwargs() -> dict[str, Any]:
    """KubernetesPodOperator arguments every evaluator pod shares."""
    settings = get_settings()
    return {
        "kubernetes_conn_id": settings.kubernetes_conn_id,
        "namespace": settings.training_namespace,  # where Airflow's Role allows pods
        "image": settings.evaluator_image,
        "cmds": list(COMMAND),
        "base_container_name": CONTAINER,  # never the provider's "base"
        "random_name_suffix": True,  # each try its own pod; the operator re-attaches by labels
        "do_xcom_push": False,  # the sidecar needs pods/exec, which the Role does not grant
        "get_logs": True,
        "log_events_on_failure": True,
        "startup_timeout_seconds": STARTUP_TIMEOUT_S,
        "reattach_on_restart": True,
        "on_finish_action": "delete_succeeded_pod",  # keep failed pods for their logs
        "deferrable": True,
    }


def pod_kwargs(pod) -> dict[str, Any]:
    """The run-dependent arguments that make the provider submit exactly `pod`."""
    container = pod.spec.containers[0]
    return {"name": pod.metadata.name, "namespace": pod.metadata.namespace, "image": container.image,
            "cmds": list(container.command), "arguments": list(container.args), "full_pod_spec": pod}


class KubernetesEvaluationOperator(KubernetesPodOperator):
    template_fields: Sequence[str] = (*KubernetesPodOperator.template_fields, "job")
    ui_color = "#dff0d8"

    def __init__(self, *, job: Mapping[str, Any] | Any, role: str = "candidate", **kwargs) -> None:
        super().__init__(**{**constant_kwargs(), **kwargs})
        self.job = job
        self.role = role  # candidate | champion: part of the pod's deterministic name

    def apply_job(self, run_id: str) -> None:
        """Render the evaluator pod for the job (validated, placement checked) and submit exactly it."""
        from include.evaluation.job import validate_job
        from include.evaluation.k8s_pod import pod_name, render_pod

        pod = render_pod(validate_job(self.job), get_settings(), name=pod_name(self.dag_id, run_id, self.role))
        for key, value in pod_kwargs(pod).items():
            setattr(self, key, value)

    def execute(self, context):
        from airflow.sdk.exceptions import AirflowSkipException

        from include.lifecycle.failfast import fail_fast

        if self.job is None:
            raise AirflowSkipException("nothing to evaluate: scores already on record")
        fail_fast(self.apply_job)(context["run_id"])
        return super().execute(context)
