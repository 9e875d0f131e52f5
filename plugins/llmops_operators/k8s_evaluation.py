"""KubernetesPodOperator running the evaluator image on the inference pool.

include/ renders the pod (`include.evaluation.k8s_pod.render_pod`); the mapping onto the
provider's arguments lives here. Everything that does not depend on the job is set in the
constructor, so `template_fields`, retries and re-attachment behave as the provider documents.
The job itself arrives through XCom (it names the candidate's model URI) into the templated `job`
field; the pod is rendered from it where the provider builds its request
(`build_pod_request_obj`, once per try) and laid over the provider's own build, so nothing is
written back onto the operator at execute time: its fields stay what the constructor and the
template rendering made them.
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

    def rendered_pod(self, run_id: str):
        """The evaluator pod for the job (validated, placement checked), deterministically named."""
        from include.evaluation.job import validate_job
        from include.evaluation.k8s_pod import pod_name, render_pod
        from include.lifecycle.failfast import fail_fast

        return fail_fast(render_pod)(fail_fast(validate_job)(self.job), get_settings(),
                                     name=pod_name(self.dag_id, run_id, self.role))

    def build_pod_request_obj(self, context=None, *, dry_run: bool = False, run_id: str | None = None):
        """The provider's request (the try's identifying labels, namespace, hooks) with the rendered
        pod laid over it: the pod wins on everything it sets, the name gets the provider's suffix."""
        from airflow.providers.cncf.kubernetes.kubernetes_helper_functions import add_unique_suffix
        from airflow.providers.cncf.kubernetes.pod_generator import PodGenerator

        request = super().build_pod_request_obj(context, dry_run=dry_run)
        if self.job is None:
            return request
        pod = self.rendered_pod(run_id or context["run_id"])
        name = pod.metadata.name
        merged = PodGenerator.reconcile_pods(request, pod)
        merged.metadata.name = add_unique_suffix(name=name) if self.random_name_suffix else name
        return merged

    def execute(self, context):
        from airflow.sdk.exceptions import AirflowSkipException

        if self.job is None:
            raise AirflowSkipException("nothing to evaluate: scores already on record")
        # The pod is rendered once, in build_pod_request_obj; a bad job fails there without retries.
        return super().execute(context)
