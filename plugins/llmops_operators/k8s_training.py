"""Launch the run's training JobSet and wait for it, safe to retry (eks profile).

The JobSet comes from `include.training.k8s_job.render(plan)`; Airflow has no JobSet operator, so
this one creates and watches the custom object through the eks platform's Kubernetes client
(include/platforms/eks/kube.py, on the provider's KubernetesHook). Its name derives from
(dag_id, run_id), so what to do depends on the JobSet of that name:

- absent: create it, then wait;
- active: re-attach, i.e. wait on it exactly as after a create: a retried task (worker lost,
  triggerer restarted) never starts a second training run beside the first;
- succeeded: nothing to wait for; the result is already in storage;
- failed or being deleted: a person cleared the task to try again: delete it (Foreground, so the
  old pods are gone first), wait until the name is free, create a fresh one. It resumes from the
  checkpoints on the shared volume.

Waiting holds no worker slot: the task defers to `JobSetTrigger`, which polls the JobSet from the
triggerer and logs a progress line (state, restarts against the budget, child Jobs' counts) at
every change. With deferrable=False it polls in the worker instead, with the same lines. Restarts
are the JobSet controller's (failurePolicy.maxRestarts of the plan's restart policy): a JobSet
that ends Failed has spent its budget or failed a bad plan, so the task fails without an Airflow
retry (AirflowFailException) and says why: the JobSet's condition, the restart count, the tail
of rank 0's log. The wall-clock bound is the plan's max_wall_s: the deferral's timeout, and the
task's execution_timeout; `on_kill` (and the DAG's teardown, when the task times out deferred)
deletes the JobSet.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import timedelta
from typing import Any

from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException
from airflow.sdk import BaseOperator
from airflow.triggers.base import BaseTrigger, TriggerEvent
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from include.errors import Conflict, Forbidden, NotFound
from include.platforms.eks.jobs import JobSetWatch, delete_jobset, describe_progress, jobset_progress
from include.platforms.eks.kube import Kube
from include.settings import get_settings
from include.training.k8s_job import COMPLETION_INDEX_LABEL, CONTAINER, JOB_LABEL, TrainingLaunch

from .links import TrainingJobLink, TrainingPodsLink

DELETE_POLL_S = 2.0
POLL_INTERVAL_S = 60.0  # a training run takes hours; a minute's delay in noticing its end is nothing
LOG_TAIL_LINES = 50


class JobSetTrigger(BaseTrigger):
    """Poll one JobSet from the triggerer until it succeeds or fails; log every change of progress."""

    def __init__(self, name: str, namespace: str, kubernetes_conn_id: str | None,
                 poll_interval_s: float = POLL_INTERVAL_S) -> None:
        super().__init__()
        self.name, self.namespace = name, namespace
        self.kubernetes_conn_id = kubernetes_conn_id
        self.poll_interval_s = poll_interval_s

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}",
                {"name": self.name, "namespace": self.namespace, "kubernetes_conn_id": self.kubernetes_conn_id,
                 "poll_interval_s": self.poll_interval_s})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        kube, watch = Kube(self.kubernetes_conn_id), JobSetWatch(self.name, self.namespace)
        while True:
            line, done = watch.observe(await asyncio.to_thread(kube.find, "JobSet", self.name, self.namespace))
            if line:
                self.log.info("%s", line)
            if done:
                yield TriggerEvent(done)
                return
            await asyncio.sleep(self.poll_interval_s)


class KubernetesTrainingJobOperator(BaseOperator):
    """Launch (or re-attach to) the run's training JobSet and wait for it, in the triggerer by default."""

    template_fields: Sequence[str] = ("plan",)
    ui_color = "#d6e9f8"
    operator_extra_links = (TrainingJobLink(), TrainingPodsLink())

    def __init__(
        self,
        *,
        plan: Mapping[str, Any] | Any,
        kubernetes_conn_id: str | None = None,
        deferrable: bool = True,
        poll_interval_s: float = POLL_INTERVAL_S,
        deletion_timeout_s: float = 900,
        log_tail_lines: int = LOG_TAIL_LINES,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.plan = plan
        self.kubernetes_conn_id = kubernetes_conn_id or get_settings().kubernetes_conn_id
        self.deferrable = deferrable
        self.poll_interval_s = poll_interval_s
        self.deletion_timeout_s = deletion_timeout_s
        self.log_tail_lines = log_tail_lines
        self._launched: tuple[str, str] | None = None  # (name, namespace) once created or attached

    @property
    def kube(self) -> Kube:
        return Kube(self.kubernetes_conn_id)

    # ---- plan -> JobSet ----

    def _render(self) -> TrainingLaunch:
        from include.lifecycle.failfast import fail_fast
        from include.training.k8s_job import render

        return fail_fast(render)(self.plan)  # a bad plan: a retry cannot fix it

    def result_published(self) -> bool:
        """The run already finished (its JobSet may be gone after its TTL): never train it twice."""
        from include.storage.objectstore import storage_path
        from include.training.results import result_uri

        return storage_path(result_uri(self.plan)).exists()

    def execute(self, context):
        if self.result_published():
            self.log.info("Run %s already published its result; nothing to launch", self.plan["run_name"])
            return None
        launch = self._render()
        name, namespace = launch.name, launch.namespace
        ti = context["ti"]
        ti.xcom_push(key="jobset_name", value=name)
        ti.xcom_push(key="jobset_namespace", value=namespace)
        policy = launch.restarts
        self.log.info("Training JobSet %s/%s: %d node(s); restart budget %d (backoff %gs, wall bound %gs); "
                      "rank 0 at %s", namespace, name, launch.nodes, policy.max_restarts,
                      policy.restart_backoff_s, policy.max_wall_s, launch.master_addr)

        kube = self.kube
        current = kube.find("JobSet", name, namespace)
        state = jobset_progress(current)["state"]
        self.log.info("%s", describe_progress(name, namespace, jobset_progress(current)))
        if state == "succeeded":
            return None
        if state in ("failed", "deleting"):
            self._delete_and_wait(kube, name, namespace)
            current = None
        if current is None:
            self._create(kube, launch)
        else:
            self.log.info("Re-attaching to JobSet %s/%s (%s); not creating a second one", namespace, name, state)
        self._launched = (name, namespace)

        if self.deferrable:
            self.defer(trigger=JobSetTrigger(name, namespace, self.kubernetes_conn_id, self.poll_interval_s),
                       method_name="execute_complete", timeout=timedelta(seconds=policy.max_wall_s))
        return self.execute_complete(context, self._poll(kube, name, namespace, policy.max_wall_s))

    def _create(self, kube: Kube, launch: TrainingLaunch) -> None:
        name, namespace = launch.name, launch.namespace
        if not kube.ensure("JobSet", launch.jobset, namespace):
            # Another try created it between our read and our create: that one is the run, unless it
            # is already dead, in which case it is replaced like any failed JobSet.
            state = jobset_progress(kube.find("JobSet", name, namespace))["state"]
            if state not in ("failed", "deleting"):
                self.log.info("JobSet %s/%s appeared concurrently (%s); re-attaching", namespace, name, state)
                return
            self._delete_and_wait(kube, name, namespace)
            kube.create("JobSet", launch.jobset, namespace)
        self.log.info("Created JobSet %s/%s", namespace, name)

    def _poll(self, kube: Kube, name: str, namespace: str, timeout_s: float) -> dict[str, Any]:
        """Bounded polling in the worker (deferrable=False): the trigger's loop, with the same lines."""
        deadline = time.monotonic() + timeout_s
        watch = JobSetWatch(name, namespace)
        while True:
            line, done = watch.observe(kube.find("JobSet", name, namespace))
            if line:
                self.log.info("%s", line)
            if done:
                return done
            if time.monotonic() >= deadline:
                raise AirflowException(f"JobSet {namespace}/{name} still running after the wall bound "
                                       f"{timeout_s:g}s ({watch.last}); the DAG's teardown deletes it")
            time.sleep(self.poll_interval_s)

    def execute_complete(self, context, event: Mapping[str, Any]):
        name, namespace = event["name"], event["namespace"]
        self._launched = (name, namespace)
        state = event["state"]
        if state == "succeeded":
            self.log.info("JobSet %s/%s succeeded after %d restart(s)", namespace, name, event["restarts"])
            return None
        if state == "absent":
            raise AirflowException(f"JobSet {namespace}/{name} disappeared before it finished (deleted by someone "
                                   "else, e.g. the off-hours window close); a retry relaunches it from the last "
                                   "checkpoint")
        tail = self.rank0_log_tail(name, namespace)
        raise AirflowFailException(
            f"JobSet {namespace}/{name} failed after {event['restarts']} restart(s) "
            f"({event['restarts_counted']} of max {event['max_restarts']} counted): "
            f"{event['reason'] or 'Failed'}: {event['message'] or 'no message'}. "
            + (f"Rank 0's last log lines:\n{tail}" if tail else
               f"Rank 0's log is not readable; see `kubectl -n {namespace} logs -l {JOB_LABEL}={name}`")
        )

    def rank0_log_tail(self, name: str, namespace: str) -> str:
        """The last lines of the newest rank 0 pod's log ('' when there is none to read)."""
        kube = self.kube
        try:
            pods = kube.list("Pod", namespace, f"{JOB_LABEL}={name},{COMPLETION_INDEX_LABEL}=0")
            if not pods:
                return ""
            newest = max(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "")
            text = kube.pod_log(newest["metadata"]["name"], namespace, CONTAINER, self.log_tail_lines)
        except (NotFound, Forbidden, Conflict, ApiException, HTTPError) as exc:
            self.log.warning("Could not read rank 0's log of JobSet %s/%s: %s", namespace, name,
                             getattr(exc, "reason", None) or exc)
            return ""
        return text.rstrip()

    def _delete_and_wait(self, kube: Kube, name: str, namespace: str) -> None:
        """Delete the JobSet (and its Jobs, pods and Service), and return once the name is free."""
        self.log.info("Deleting JobSet %s/%s before relaunching it", namespace, name)
        delete_jobset(kube, name, namespace)
        deadline = time.monotonic() + self.deletion_timeout_s
        while kube.find("JobSet", name, namespace) is not None:
            if time.monotonic() >= deadline:
                raise AirflowException(
                    f"JobSet {namespace}/{name} still exists {self.deletion_timeout_s}s after its deletion; "
                    "its pods may be stuck terminating"
                )
            time.sleep(DELETE_POLL_S)

    def on_kill(self) -> None:
        """The task is stopped (marked failed, timed out in the worker): stop the training run with it."""
        if self._launched is None:
            return
        name, namespace = self._launched
        self.log.info("Task killed: deleting JobSet %s/%s", namespace, name)
        delete_jobset(self.kube, name, namespace)
