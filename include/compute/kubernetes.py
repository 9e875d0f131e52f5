"""EKS profile: the headless Service that gives pod 0 of the Indexed Job its DNS name, and the
run's NetworkPolicy (ingress only from the run's own pods; include/cluster/network.py).

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
from include.training.k8s_job import job_name, render
from include.training.rendezvous import master_address


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
    launch = render(plan, settings)
    hook = _hook(settings)
    try:
        hook.core_v1_client.create_namespaced_service(namespace=launch.namespace, body=launch.service)
        created = True
    except ApiException as exc:
        if exc.status != 409:  # AlreadyExists: an earlier try made it; same name, same run
            raise
        created = False
    try:  # the rendezvous port and NCCL accept only this run's pods (include/cluster/network.py)
        _networking(hook).create_namespaced_network_policy(namespace=launch.namespace,
                                                           body=run_network_policy(launch.service))
    except ApiException as exc:
        if exc.status != 409:
            raise
    return {
        "kind": "kubernetes",
        "master_addr": master_address(launch.name, launch.service.metadata.name, launch.namespace),
        "service": launch.service.metadata.name,
        "namespace": launch.namespace,
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
