"""EKS profile of the container-job seam: pool placement, the rendered Job's preflight, the
headless Service that gives pod 0 of the Indexed Job its DNS name with the run's NetworkPolicy
(ingress only from the run's own pods; include/cluster/network.py), and the evaluator's job.

Both calls go through the Airflow Kubernetes connection (`settings.kubernetes_conn_id`) and are
idempotent: a retried setup finds the Service already there (409), a repeated teardown finds it
gone (404). Teardown also deletes the run's Job if it is still active: it runs only once training
is over for good, so a Job still running then has no task watching it and only burns GPU nodes.
Finished Jobs are left to their TTL, so their pods' logs stay readable.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException

from include.cluster.network import run_network_policy
from include.settings import Settings, get_settings
from include.training.k8s_job import job_name, render, rendezvous_service
from include.training.rendezvous import master_address


class KubernetesJobs:
    kind = "kubernetes"
    trainer_backend = "nemo"
    retry_delay_s = 300
    training_timeout_h = 72

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def place(self, params: Mapping[str, Any], problems: list[str]) -> dict[str, Any]:
        from include.training.planning import pool_placement

        return pool_placement(params, self.settings, problems)

    def preflight(self, plan: Mapping[str, Any]) -> dict[str, Any]:
        """Render what would be launched (once) and check it against the cluster's pools."""
        launch = render(plan, self.settings)  # InputError (PreflightError among them) names what to fix
        return {"profile": "eks", "job": launch.name, "namespace": launch.namespace, "pool": launch.pool.name,
                "instance_type": launch.instance.name}

    def setup_rendezvous(self, plan: Mapping[str, Any]) -> dict[str, Any]:
        return setup_rendezvous(plan, self.settings)

    def teardown_rendezvous(self, plan: Mapping[str, Any]) -> None:
        teardown_rendezvous(plan, self.settings)

    def evaluation_job(self, model_uri: str, eval_uri: str, output_uri: str, *, judge=None,
                       judge_conn_id: str | None = None, **options: Any) -> dict[str, Any]:
        """vLLM generation and the LLM judge, whose public part comes from `judge` or the Airflow
        connection `judge_conn_id` (default `llm_judge`): call inside a task, never at parse time."""
        from include.evaluation.job import build_job

        if judge is None:
            from include.evaluation.judge import DEFAULT_CONN_ID, judge_from_connection

            judge = judge_from_connection(judge_conn_id or DEFAULT_CONN_ID)
        return build_job(model_uri, eval_uri, output_uri, generator="vllm", metrics_profile="eks",
                         judge=judge.public(), **options)


def _hook(settings: Settings):
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

    return KubernetesHook(conn_id=settings.kubernetes_conn_id)


def _networking(hook):
    from kubernetes.client import NetworkingV1Api

    return NetworkingV1Api(hook.api_client)


def job_state(job: Any) -> str:
    """'succeeded', 'failed' or 'active' from a V1Job's conditions (status compared as the string 'True').

    SuccessCriteriaMet / FailureTarget (Kubernetes 1.31+) mark a Job already decided but still
    terminating its pods; they count as the outcome they announce.
    """
    conditions = (job.status.conditions if job.status else None) or []
    true = {c.type for c in conditions if str(c.status) == "True"}
    if true & {"Failed", "FailureTarget"}:
        return "failed"
    if true & {"Complete", "SuccessCriteriaMet"}:
        return "succeeded"
    return "active"


def setup_rendezvous(plan: Mapping[str, Any], settings: Settings | None = None) -> dict[str, Any]:
    settings = settings or get_settings()
    service = rendezvous_service(plan, settings)  # the Job is rendered by preflight and by the launch
    name, namespace = service.metadata.name, service.metadata.namespace
    hook = _hook(settings)
    try:
        hook.core_v1_client.create_namespaced_service(namespace=namespace, body=service)
        created = True
    except ApiException as exc:
        if exc.status != 409:  # AlreadyExists: an earlier try made it; same name, same run
            raise
        created = False
    try:  # the rendezvous port and NCCL accept only this run's pods (include/cluster/network.py)
        _networking(hook).create_namespaced_network_policy(namespace=namespace, body=run_network_policy(service))
    except ApiException as exc:
        if exc.status != 409:
            raise
    return {
        "kind": "kubernetes",
        "master_addr": master_address(name, name, namespace),
        "service": name,
        "namespace": namespace,
        "created": created,
    }


def teardown_rendezvous(plan: Mapping[str, Any], settings: Settings | None = None) -> None:
    """Names only, no validation: teardown must work even for a plan that never rendered."""
    settings = settings or get_settings()
    name = job_name(str(plan["dag_id"]), str(plan["run_id"]))  # the Job's and the Service's
    namespace = settings.training_namespace
    hook = _hook(settings)
    try:
        job = hook.batch_v1_client.read_namespaced_job_status(name=name, namespace=namespace)
    except ApiException as exc:
        if exc.status != 404:
            raise
        job = None
    if job is not None and job_state(job) == "active":
        try:
            hook.batch_v1_client.delete_namespaced_job(name=name, namespace=namespace,
                                                       propagation_policy="Foreground")
        except ApiException as exc:
            if exc.status != 404:
                raise
    for delete in (hook.core_v1_client.delete_namespaced_service,
                   _networking(hook).delete_namespaced_network_policy):  # both named like the Job
        try:
            delete(name=name, namespace=namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
