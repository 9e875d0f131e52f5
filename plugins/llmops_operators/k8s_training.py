"""KubernetesJobOperator for the NeMo Indexed Job, made safe to retry.

The Job and its pods come from `include.training.k8s_job.render(plan)`; this class only decides
what to do with the Job of that name, since names derive from (dag_id, run_id):

- absent: create it (the provider's normal path), then defer until it finishes;
- active: re-attach, i.e. defer on it exactly as after a create; a retried task (worker lost,
  triggerer restarted) never starts a second training run beside the first;
- succeeded: nothing to wait for; the result is already in storage;
- failed (or still being deleted): delete it with Foreground propagation, wait until it is gone,
  create a fresh one. It resumes from the checkpoints on the shared volume.

Provider behaviour this relies on or works around (apache-airflow-providers-cncf-kubernetes 10.x):
- execute() builds the Job from the operator's own attributes over `full_job_spec`, prefixes
  "job-" to `name`, and sets `self.job` from `create_job()`'s return; `create_job` is therefore
  the one place to swap "create" for "use the existing one".
- hook.create_job() retries a 409 as if it were transient; create_job() here calls the API once.
- get_pods() lists pods a few times back to back and fails if the Job controller has not created
  them yet (apache/airflow#70585); here it waits for them, selecting by the Job's own label.
- do_xcom_push doubles as the sidecar switch and the return-value push: it stays False (no
  sidecar), so results are read from storage with `include.compute.read_result`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from airflow.providers.cncf.kubernetes.operators.job import KubernetesJobOperator
from airflow.providers.common.compat.sdk import AirflowException
from kubernetes.client import models as k8s
from kubernetes.client.exceptions import ApiException

from include.compute.kubernetes import job_state
from include.settings import get_settings
from include.training.k8s_job import CONTAINER, JOB_LABEL, JOB_PREFIX, TrainingLaunch

from .links import TrainingJobLink, TrainingPodsLink

DELETE_POLL_S = 2.0


def constant_kwargs() -> dict[str, Any]:
    """KubernetesJobOperator arguments every training launch shares."""
    settings = get_settings()
    return {
        "kubernetes_conn_id": settings.kubernetes_conn_id,
        "namespace": settings.training_namespace,
        "base_container_name": CONTAINER,
        "random_name_suffix": False,
        "wait_until_job_complete": True,
        "deferrable": True,
        # Pods stay until the Job's TTL so a failed rank's log can still be read.
        "on_finish_action": "keep_pod",
    }


def job_kwargs(launch: TrainingLaunch) -> dict[str, Any]:
    """Arguments that make KubernetesJobOperator submit exactly the rendered Job.

    The provider rebuilds the Job from its own parameters over `full_job_spec`: it prefixes "job-"
    to `name` (the rendered name already carries it, since MASTER_ADDR contains it), would add a
    random suffix, and its default parallelism=1 would win over ours, so those are pinned here.
    """
    nodes = launch.job.spec.parallelism
    return {
        "name": launch.name.removeprefix(f"{JOB_PREFIX}-"),
        "namespace": launch.namespace,
        "full_job_spec": launch.job,
        "parallelism": nodes,
        "completions": nodes,
        "completion_mode": "Indexed",
    }


class KubernetesTrainingJobOperator(KubernetesJobOperator):
    """Launch (or re-attach to) the run's NeMo Indexed Job and wait for it in the triggerer."""

    template_fields: Sequence[str] = (*KubernetesJobOperator.template_fields, "plan")
    ui_color = "#d6e9f8"
    operator_extra_links = (TrainingJobLink(), TrainingPodsLink())

    def __init__(
        self,
        *,
        plan: Mapping[str, Any] | Any,
        pod_discovery_timeout_s: float = 300,
        job_deletion_timeout_s: float = 900,
        **kwargs,
    ) -> None:
        # Constants of every training launch, set here so templates and retries see them; the plan
        # arrives through XCom, so only the plan-dependent rest (job_kwargs) is set in execute().
        super().__init__(**{**constant_kwargs(), **kwargs, "do_xcom_push": False})
        self.plan = plan
        self.pod_discovery_timeout_s = pod_discovery_timeout_s
        self.job_deletion_timeout_s = job_deletion_timeout_s
        self._existing_job: k8s.V1Job | None = None

    # ---- plan -> operator ----

    def _render(self) -> TrainingLaunch:
        from include.lifecycle.failfast import fail_fast
        from include.training.k8s_job import render

        return fail_fast(render)(self.plan)  # a bad plan: a retry cannot fix it

    def result_published(self) -> bool:
        """The run already finished (its Job may be gone after its TTL): never train it twice."""
        from include.compute import result_uri
        from include.storage.objectstore import storage_path

        return storage_path(result_uri(self.plan)).exists()

    def execute(self, context):
        if self.result_published():
            self.log.info("Run %s already published its result; nothing to launch", self.plan["run_name"])
            return None
        launch = self._render()
        for key, value in job_kwargs(launch).items():
            setattr(self, key, value)

        existing = self._read_job(launch.name, launch.namespace)
        state = job_state(existing) if existing is not None else "absent"
        if existing is not None and existing.metadata.deletion_timestamp:
            state = "deleting"
        self.log.info("Training Job %s/%s: %s", launch.namespace, launch.name, state)

        if state == "succeeded":
            ti = context["ti"]
            ti.xcom_push(key="job_name", value=launch.name)
            ti.xcom_push(key="job_namespace", value=launch.namespace)
            ti.xcom_push(key="job", value=existing.to_dict())
            return None
        if state in ("failed", "deleting"):
            self._delete_job(launch.name, launch.namespace)
            existing = None
        self._existing_job = existing
        return super().execute(context)

    # ---- provider seams ----

    def create_job(self, job_request_obj: k8s.V1Job) -> k8s.V1Job:
        """Create the Job, or hand back the one already running for this run (re-attach)."""
        if self._existing_job is not None:
            self.log.info("Re-attaching to running Job %s", self._existing_job.metadata.name)
            return self._existing_job
        name, namespace = job_request_obj.metadata.name, job_request_obj.metadata.namespace
        # Not hook.create_job: its retry counts 409 as transient and backs off ~15 s before
        # surfacing an AlreadyExists that no retry can change.
        body = self.job_client.api_client.sanitize_for_serialization(job_request_obj)
        try:
            self.job_client.create_namespaced_job(namespace=namespace, body=body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            # Another try created it between our read and our create: that one is the run, unless it
            # is already dead, in which case it is replaced like any failed Job.
            current = self.hook.get_job_status(job_name=name, namespace=namespace)
            if job_state(current) != "failed" and not current.metadata.deletion_timestamp:
                self.log.info("Job %s appeared concurrently; re-attaching", name)
                return current
            self._delete_job(name, namespace)
            self.job_client.create_namespaced_job(namespace=namespace, body=body)
        self.log.info("Created Job %s/%s", namespace, name)
        return job_request_obj

    def get_pods(self, pod_request_obj: k8s.V1Pod, context, *, exclude_checked: bool = True) -> Sequence[k8s.V1Pod]:
        """The Job's pods, waiting for the Job controller to create them (one per node rank)."""
        name, namespace = self.job.metadata.name, self.job.metadata.namespace
        selector = f"{JOB_LABEL}={name}"
        deadline = time.monotonic() + self.pod_discovery_timeout_s
        while True:
            pods = self.client.list_namespaced_pod(namespace=namespace, label_selector=selector).items
            if len(pods) >= self.parallelism or (pods and time.monotonic() >= deadline):
                self.log.info("Job %s has pods %s", name, sorted(p.metadata.name for p in pods))
                return pods
            if time.monotonic() >= deadline:
                raise AirflowException(
                    f"Job {namespace}/{name} has no pods after {self.pod_discovery_timeout_s}s "
                    f"(label {selector}); see `kubectl describe job -n {namespace} {name}`"
                )
            time.sleep(self.startup_check_interval_seconds)

    # ---- Kubernetes reads and deletes ----

    def _read_job(self, name: str, namespace: str) -> k8s.V1Job | None:
        try:
            return self.hook.get_job_status(job_name=name, namespace=namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _delete_job(self, name: str, namespace: str) -> None:
        """Delete the failed Job and its pods, and return once the name is free again."""
        self.log.info("Deleting failed Job %s/%s before relaunching it", namespace, name)
        try:
            self.job_client.delete_namespaced_job(name=name, namespace=namespace, propagation_policy="Foreground")
        except ApiException as exc:
            if exc.status != 404:
                raise
        deadline = time.monotonic() + self.job_deletion_timeout_s
        while self._read_job(name, namespace) is not None:
            if time.monotonic() >= deadline:
                raise AirflowException(
                    f"Job {namespace}/{name} still exists {self.job_deletion_timeout_s}s after its deletion; "
                    "its pods may be stuck terminating"
                )
            time.sleep(DELETE_POLL_S)
