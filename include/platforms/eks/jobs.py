"""The eks container jobs: pool placement, the rendered JobSet's preflight, the
run's NetworkPolicy (ingress only from the run's own pods; include/cluster/network.py), the JobSet
reads and deletes every caller shares, and the evaluator's job.

The headless Service that gives rank 0 its DNS name is the JobSet controller's (`network`), owned by
the JobSet and deleted with it; Airflow creates only the NetworkPolicy before the launch
(setup_rendezvous) and the JobSet itself (plugins/llmops_operators/k8s_training.py).

Every call goes through the platform's client (kube.py, on the Airflow connection
`settings.kubernetes_conn_id`) and is idempotent: a retried setup finds the policy already there
(Conflict), a repeated teardown finds it gone. Teardown also deletes the run's JobSet if it is
still active: it runs only once training is over for good (including after the training task's
execution_timeout, the run's wall bound), so a JobSet still running then has no task watching it
and only burns GPU nodes.
Finished JobSets are left to their TTL, so their pods' logs stay readable.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from include.platforms.eks.kube import Kube
from include.settings import Settings
from include.training.k8s_job import (
    jobset_name,
    pod_host_prefix,
    render,
    rendezvous_network_policy,
)
from include.training.rendezvous import master_address


class KubernetesJobs:
    kind = "kubernetes"
    trainer_backend = "nemo"
    retry_delay_s = 300
    training_timeout_h = 72

    def __init__(self, settings: Settings, kube: Kube | None = None) -> None:
        self.settings = settings
        self.kube = kube or Kube(settings.kubernetes_conn_id)

    def place(self, params: Mapping[str, Any], problems: list[str]) -> dict[str, Any]:
        from include.training.planning import pool_placement

        return pool_placement(params, self.settings, problems)

    def preflight(self, plan: Mapping[str, Any]) -> dict[str, Any]:
        """Render what would be launched (once) and check it against the cluster's pools."""
        launch = render(plan, self.settings)  # InputError (PreflightError among them) names what to fix
        return {"profile": "eks", "jobset": launch.name, "namespace": launch.namespace, "pool": launch.pool.name,
                "instance_type": launch.instance.name, "master_addr": launch.master_addr,
                **launch.restarts.as_plan()}

    def setup_rendezvous(self, plan: Mapping[str, Any]) -> dict[str, Any]:
        """The run's NetworkPolicy, before its pods exist; rank 0's address (its Service is the JobSet's)."""
        policy = rendezvous_network_policy(plan, self.settings)  # the JobSet is rendered by preflight and launch
        name, namespace = policy.metadata.name, policy.metadata.namespace
        # The rendezvous port and NCCL accept only this run's pods (include/cluster/network.py); an
        # earlier try may have made it already: same name, same run.
        created = self.kube.ensure("NetworkPolicy", policy, namespace)
        return {"kind": "kubernetes", "master_addr": master_address(pod_host_prefix(name), name, namespace),
                "service": name, "namespace": namespace, "created": created}

    def teardown_rendezvous(self, plan: Mapping[str, Any]) -> None:
        """Names only, no validation: teardown must work even for a plan that never rendered."""
        name = jobset_name(str(plan["dag_id"]), str(plan["run_id"]))  # the JobSet's and the policy's
        namespace = self.settings.training_namespace
        if jobset_progress(self.kube.find("JobSet", name, namespace))["state"] in ("active", "suspended"):
            delete_jobset(self.kube, name, namespace)
        self.kube.delete("NetworkPolicy", name, namespace)

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


TERMINAL = ("succeeded", "failed")


def jobset_progress(jobset: Mapping[str, Any] | None) -> dict[str, Any]:
    """What a JobSet's status says, flat: state, restarts and its child Jobs' counts, the deciding message.

    state: 'absent', 'deleting', 'succeeded' (condition Completed), 'failed' (condition Failed:
    FailJobSet matched, or ReachedMaxRestarts), 'suspended', else 'active'. `restarts` counts every
    group restart, `restarts_counted` those that spend failurePolicy.maxRestarts (a spot reclaim
    does not).
    """
    if jobset is None:
        return {"state": "absent", "restarts": 0, "restarts_counted": 0, "max_restarts": None,
                "active": 0, "ready": 0, "succeeded": 0, "failed": 0, "reason": "", "message": ""}
    status = jobset.get("status") or {}
    spec = jobset.get("spec") or {}
    true = {c.get("type"): c for c in status.get("conditions") or [] if str(c.get("status")) == "True"}
    counts = {key: sum(int(r.get(key) or 0) for r in status.get("replicatedJobsStatus") or [])
              for key in ("active", "ready", "succeeded", "failed")}
    if (jobset.get("metadata") or {}).get("deletionTimestamp"):
        state, decided = "deleting", {}
    elif "Failed" in true or status.get("terminalState") == "Failed":
        state, decided = "failed", true.get("Failed", {})
    elif "Completed" in true or status.get("terminalState") == "Completed":
        state, decided = "succeeded", true.get("Completed", {})
    elif "Suspended" in true:
        state, decided = "suspended", true["Suspended"]
    else:
        state, decided = "active", {}
    return {"state": state, "restarts": int(status.get("restarts") or 0),
            "restarts_counted": int(status.get("restartsCountTowardsMax") or 0),
            "max_restarts": (spec.get("failurePolicy") or {}).get("maxRestarts"), **counts,
            "reason": decided.get("reason", ""), "message": decided.get("message", "")}


def describe_progress(name: str, namespace: str, progress: Mapping[str, Any]) -> str:
    """One log line: state, restarts against the budget, the child Jobs' counts."""
    budget = progress.get("max_restarts")
    return (f"JobSet {namespace}/{name}: {progress['state']}; restarts {progress['restarts']} "
            f"({progress['restarts_counted']} of max {budget if budget is not None else '?'} counted); "
            f"jobs active={progress['active']} ready={progress['ready']} succeeded={progress['succeeded']} "
            f"failed={progress['failed']}"
            + (f"; {progress['reason']}: {progress['message']}" if progress.get("reason") else ""))


class JobSetWatch:
    """One JobSet as a waiter sees it, poll after poll (the deferred trigger and the worker's poll
    share it): a line at every change of progress, and the final event once the JobSet ends."""

    def __init__(self, name: str, namespace: str):
        self.name, self.namespace, self.last = name, namespace, None

    def observe(self, jobset: Mapping[str, Any] | None) -> tuple[str | None, dict[str, Any] | None]:
        """(the progress line if it changed, else None; {name, namespace, **progress} once it ended, else None)."""
        progress = jobset_progress(jobset)
        line = describe_progress(self.name, self.namespace, progress)
        changed, self.last = (line if line != self.last else None), line
        done = progress["state"] in (*TERMINAL, "absent")
        return changed, ({"name": self.name, "namespace": self.namespace, **progress} if done else None)


def delete_jobset(kube: Kube, name: str, namespace: str) -> bool:
    """Delete the JobSet with its child Jobs, pods and Service; False when it was already gone.

    Foreground: the JobSet object stays (with a deletionTimestamp) until its pods are gone, so a
    relaunch under the same name never overlaps the old pods (two rank 0s, one checkpoint dir).
    """
    return kube.delete("JobSet", name, namespace, propagation="Foreground")
