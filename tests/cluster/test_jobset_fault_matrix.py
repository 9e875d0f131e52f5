"""Rank failures against the restart budget, decided by the real JobSet and Job controllers.

The JobSet the training operator renders (include/training/k8s_job.py, restarts.py) is launched as
Airflow's ServiceAccount; kwok's chaos stage ends a chosen rank with a chosen exit code
(training_world.py explains the markers). What decides each outcome:

- the child Job (one Indexed Job, a pod per node, podReplacementPolicy Failed, backoffLimitPerIndex 0,
  so no rank is ever retried alone) applies its podFailurePolicy to the first pod that fails:
  rule 0 `DisruptionTarget` -> FailJob, rule 1 exit 2 -> FailJob, rule 2 exit 75 -> FailIndex (a
  lost peer is a consequence: that rank stops and the Job waits for the cause), rule 3 any other
  exit code -> FailJob; when every rank ended on 75 there is no other cause and the Job fails;
- the JobSet's failurePolicy reads the failed Job's reason and message: `badPlan` (exit 2 at rule 1)
  -> FailJobSet; `disruption` (rule 0) -> RestartJobSetAndIgnoreMaxRestarts; anything else ->
  RestartJobSet, which spends one of maxRestarts; BlockingRecreate replaces every rank together.

| case                                          | budget spent | outcome                                      |
|-----------------------------------------------|--------------|----------------------------------------------|
| a rank crashes (exit 1)                       | yes, 1       | the whole group restarts                     |
| every rank lost its peer (exit 75 on all)     | yes, 1       | the whole group restarts                     |
| one rank exits 75, then its peer crashes      | yes, 1       | no restart on the 75; the crash restarts all |
| a pod deleted mid-run (kubelet: exit 143)     | yes, 1       | the whole group restarts                     |
| a pod evicted by a drain (DisruptionTarget)   | no           | the whole group restarts                     |
| bad plan (exit 2)                             | no restart   | JobSet Failed at once; task fails, no retry  |
| max_restarts=1, then two crashes              | yes, 1 of 1  | JobSet Failed; a cleared task relaunches it  |
| spot reclaim: node deleted, survivor exits 75 | no           | the group restarts once pod GC has marked    |
|   before the reclaimed pod is terminal        |              |   the reclaimed pod DisruptionTarget         |
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook
from airflow.providers.common.compat.sdk import AirflowFailException
from controlplane import ControlPlane
from kubernetes.client import CoreV1Api
from training_world import (
    TRAINING_NS,
    World,
    container_log,
    describe_run,
    exit_rank,
    first_event,
    launch,
    read_jobset,
    run_pods,
    spy,
    training_plan,
    training_world,
    wait_for,
    wait_running,
)

from include.platforms.eks.jobs import jobset_progress
from include.training.k8s_job import render
from include.training.restarts import PEER_LOST_EXIT_CODE, USER_ERROR_EXIT_CODE

pytestmark = pytest.mark.slow

DAG_ID = "cluster_faults"
TRAINING_POOL, SPOT_POOL = "gpu-training-pool", "gpu-experiment-pool"
NODES = {**{f"fault-train-{i}": TRAINING_POOL for i in range(2)},
         **{f"fault-spot-{i}": SPOT_POOL for i in range(2)}}
COUNTED, FREE = "DefaultFailurePolicy", "FailurePolicy_disruption"  # the RestartingJobSet condition's reason
POD_GC_S = 120  # kube-controller-manager's pod GC: 40 s quarantine of a deleted node, then every 20 s


@pytest.fixture(scope="module")
def world(cluster: ControlPlane) -> Iterator[World]:
    with training_world(cluster, DAG_ID, NODES) as w:
        yield w


def restarting(cluster: ControlPlane, name: str, restarts: int, timeout: float = 30) -> dict:
    """The JobSet once it has restarted `restarts` times or ended; its progress and RestartingJobSet reason."""
    def probe():
        jobset = read_jobset(cluster, name)
        progress = jobset_progress(jobset)
        if progress["restarts"] >= restarts or progress["state"] in ("failed", "succeeded"):
            conditions = {c["type"]: c for c in jobset["status"].get("conditions") or []}
            return {**progress, "restart_reason": conditions.get("RestartingJobSet", {}).get("reason")}
        return None

    return wait_for(f"JobSet {name} to restart {restarts} time(s) or end", probe, timeout,
                    state=lambda: describe_run(cluster, name))


def assert_group_restarted(cluster: ControlPlane, name: str, nodes: int, attempt: int = 1) -> None:
    """All-or-nothing: every rank of the new attempt runs, none of the old one is left."""
    ranks = wait_running(cluster, name, nodes, attempt=attempt)
    assert [p.metadata.annotations["batch.kubernetes.io/job-completion-index"] for p in ranks] == \
        [str(i) for i in range(nodes)]
    wait_for("the previous attempt's pods to be gone",
             lambda: all(int(p.metadata.labels["jobset.sigs.k8s.io/restart-attempt"]) >= attempt
                         for p in run_pods(cluster, name)), state=lambda: describe_run(cluster, name))


def _crash(cluster, ranks):
    exit_rank(cluster, ranks[1], 1)


def _peer_lost_everywhere(cluster, ranks):
    for rank in ranks:
        exit_rank(cluster, rank, PEER_LOST_EXIT_CODE)


def _deleted(cluster, ranks):
    CoreV1Api(cluster.api_client).delete_namespaced_pod(ranks[1].metadata.name, TRAINING_NS)


def _evicted(cluster, ranks):
    pod = ranks[1].metadata
    CoreV1Api(cluster.api_client).create_namespaced_pod_eviction(
        pod.name, TRAINING_NS, {"metadata": {"name": pod.name, "namespace": TRAINING_NS}})


# case -> (fault, budget spent, the RestartingJobSet reason)
RESTARTS: dict[str, tuple[Callable, int, str]] = {
    "crash-exit-1": (_crash, 1, COUNTED),
    "peer-lost-exit-75-on-every-rank": (_peer_lost_everywhere, 1, COUNTED),
    "pod-deleted-mid-run": (_deleted, 1, COUNTED),
    "pod-evicted-by-a-drain": (_evicted, 0, FREE),
}


@pytest.mark.parametrize("case", RESTARTS)
def test_a_rank_failure_restarts_the_whole_group(eks: World, case: str) -> None:
    fault, spent, reason = RESTARTS[case]
    cluster = eks.cluster
    plan = training_plan(eks.dag_id, f"manual__{case}")
    name = render(plan).name
    launch(plan)
    fault(cluster, wait_running(cluster, name, plan["nodes"]))

    progress = restarting(cluster, name, 1)
    assert (progress["state"], progress["restarts"], progress["restarts_counted"], progress["restart_reason"]) == \
        ("active", 1, spent, reason), describe_run(cluster, name)
    assert progress["max_restarts"] == 3
    assert_group_restarted(cluster, name, plan["nodes"])


def test_a_lone_peer_loss_waits_for_its_cause(eks: World) -> None:
    """Exit 75 names no cause: that rank stops (never retried alone) and the Job keeps waiting; the
    peer's own failure (here a crash) then decides, and it spends the budget."""
    cluster = eks.cluster
    plan = training_plan(eks.dag_id, "manual__lone-peer-loss")
    name = render(plan).name
    launch(plan)
    ranks = wait_running(cluster, name, plan["nodes"])
    exit_rank(cluster, ranks[1], PEER_LOST_EXIT_CODE)

    def child_job():
        from kubernetes.client import BatchV1Api

        jobs = BatchV1Api(cluster.api_client).list_namespaced_job(
            TRAINING_NS, label_selector=f"jobset.sigs.k8s.io/jobset-name={name}").items
        return jobs[0] if jobs else None

    decided = wait_for("the Job to record rank 1's exit, or the JobSet to restart", lambda: (
        (job := child_job()) and (job.status.failed_indexes or job.status.conditions)) or
        jobset_progress(read_jobset(cluster, name))["restarts"], state=lambda: describe_run(cluster, name))
    job = child_job()
    assert job is not None and job.status.failed_indexes == "1" and not job.status.conditions, \
        f"the lost peer decided the Job: {decided!r}; {describe_run(cluster, name)}"
    assert jobset_progress(read_jobset(cluster, name))["restarts"] == 0
    assert [p.metadata.name for p in run_pods(cluster, name)] == [p.metadata.name for p in ranks], \
        "a rank was retried alone"

    exit_rank(cluster, ranks[0], 1)
    progress = restarting(cluster, name, 1)
    assert (progress["restarts"], progress["restarts_counted"], progress["restart_reason"]) == (1, 1, COUNTED)
    assert_group_restarted(cluster, name, plan["nodes"])


def test_a_bad_plan_fails_the_jobset_at_once_and_the_task_without_retry(
        eks: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Exit 2 on rank 0: FailJobSet, no restart. The trigger (as the ServiceAccount) reports it and
    execute_complete fails the task for good, naming the condition and ending with the tail of rank
    0's log (found and read as the ServiceAccount, through the API server's pods/log proxy)."""
    cluster = eks.cluster
    plan = training_plan(eks.dag_id, "manual__bad-plan")
    name = render(plan).name
    op, ctx, deferred = launch(plan, poll_interval_s=0.2)
    rank0 = wait_running(cluster, name, plan["nodes"])[0]
    exit_rank(cluster, rank0, USER_ERROR_EXIT_CODE)

    event = first_event(deferred.trigger)
    assert (event["state"], event["restarts"], event["restarts_counted"], event["reason"]) == \
        ("failed", 0, 0, "FailJobSetFailurePolicyAction")
    lists = spy(monkeypatch, CoreV1Api, "list_namespaced_pod")
    logs = spy(monkeypatch, CoreV1Api, "read_namespaced_pod_log")
    with pytest.raises(AirflowFailException) as failed:
        op.execute_complete(ctx, event)
    message = str(failed.value)
    assert f"JobSet {TRAINING_NS}/{name} failed after 0 restart(s) (0 of max 3 counted)" in message
    assert "FailJobSetFailurePolicyAction: applying FailJobSet failure policy action" in message
    assert lists.statuses == [200] and lists.entries[0]["as_airflow"]
    assert logs.statuses == [200] and logs.entries[0]["as_airflow"]
    assert logs.entries[0]["kwargs"]["name"] == rank0.metadata.name
    assert message.endswith("\n" + "\n".join(container_log(rank0.metadata.name, "trainer")[-op.log_tail_lines:]))


def test_a_spent_budget_fails_the_run_and_a_cleared_task_relaunches_it(
        eks: World, monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = eks.cluster
    plan = training_plan(eks.dag_id, "manual__budget", max_restarts=1)
    name = render(plan).name
    op, ctx, deferred = launch(plan, poll_interval_s=0.2)
    for attempt in (0, 1):
        exit_rank(cluster, wait_running(cluster, name, plan["nodes"], attempt=attempt)[1], 1)
        progress = restarting(cluster, name, attempt + 1)

    assert (progress["state"], progress["restarts"], progress["restarts_counted"], progress["reason"]) == \
        ("failed", 1, 1, "ReachedMaxRestarts")
    event = first_event(deferred.trigger)
    with pytest.raises(AirflowFailException, match=r"failed after 1 restart\(s\) \(1 of max 1 counted\): "
                                                   r"ReachedMaxRestarts"):
        op.execute_complete(ctx, event)

    # A person clears the task: the failed JobSet is deleted (Foreground: its pods first) and replaced.
    failed_uid = read_jobset(cluster, name)["metadata"]["uid"]
    deletes = spy(monkeypatch, KubernetesHook, "delete_custom_object")
    creates = spy(monkeypatch, KubernetesHook, "create_custom_object")
    _, _, again = launch(plan, try_number=2)
    assert deletes.statuses == [200] and deletes.entries[0]["kwargs"]["propagation_policy"] == "Foreground"
    assert creates.statuses == [200] and all(e["as_airflow"] for e in deletes.entries + creates.entries)
    fresh = read_jobset(cluster, name)
    assert fresh["metadata"]["uid"] != failed_uid and jobset_progress(fresh)["restarts"] == 0
    assert (again.trigger.name, again.trigger.namespace) == (name, TRAINING_NS)
    wait_running(cluster, name, plan["nodes"])


def test_a_spot_reclaim_does_not_spend_the_budget_when_a_survivor_reports_first(eks: World) -> None:
    """A spot node is reclaimed: its Node is deleted (kwok stops running its pods) and the surviving
    rank exits 75 at once, while the reclaimed rank's pod is not terminal yet: only pod GC fails
    it, 40-60 s later, marking it DisruptionTarget (DeletionByPodGC). The lost peer must not decide
    the restart; the reclaim does, and it costs no budget. Before the fix the 75 failed the Job
    at once (BackoffLimitExceeded) and the restart spent one of max_restarts."""
    cluster = eks.cluster
    plan = training_plan(eks.dag_id, "manual__spot", pool="experiment")
    name = render(plan).name
    launch(plan)
    survivor, reclaimed = wait_running(cluster, name, plan["nodes"])
    assert {survivor.spec.node_name, reclaimed.spec.node_name} == {n for n, p in NODES.items() if p == SPOT_POOL}

    CoreV1Api(cluster.api_client).delete_node(reclaimed.spec.node_name)
    exit_rank(cluster, survivor, PEER_LOST_EXIT_CODE)

    def survivor_exited():
        pods = {p.metadata.name: p for p in run_pods(cluster, name)}
        return pods if pods[survivor.metadata.name].status.phase == "Failed" else None

    pods = wait_for("the survivor's exit", survivor_exited, state=lambda: describe_run(cluster, name))
    assert pods[reclaimed.metadata.name].status.phase == "Running", "the reclaimed pod must not be terminal yet"
    eks.add_node("fault-spot-replacement", SPOT_POOL)  # Karpenter launches a new spot node

    progress = restarting(cluster, name, 1, timeout=POD_GC_S)
    assert (progress["state"], progress["restarts"], progress["restarts_counted"], progress["restart_reason"]) == \
        ("active", 1, 0, FREE), describe_run(cluster, name)
    assert_group_restarted(cluster, name, plan["nodes"])
