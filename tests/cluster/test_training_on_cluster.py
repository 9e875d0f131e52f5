"""The eks profile's training and evaluation paths against a real control plane, as Airflow's ServiceAccount.

The project's code runs unchanged through the provider's KubernetesHook with the `kubernetes_default`
connection of `as_airflow` (a TokenRequest token of airflow/airflow-worker, never an admin): the
DAG's setup/teardown tasks (include/lifecycle/training.py -> include/compute/kubernetes.py), the
training operator (plugins/llmops_operators/k8s_training.py: execute, its JobSetTrigger,
execute_complete, on_kill) and the evaluation operator (k8s_evaluation.py). The kube-apiserver
enforces the Role of k8s/training/rbac.yaml and the ValidatingAdmissionPolicy of
k8s/training/admission-policy.yaml; the JobSet, Job and scheduler controllers create and place the
Jobs and pods; kwok plays the kubelets. The `forbidden` fixture fails a test on any 403, also one the code
catches and only logs (the rank-0 log tail, the pod operator's log reads).

The world they run in (nodes, kwok's markers and stages, S3, helpers) is training_world.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook
from airflow.sdk.exceptions import TaskDeferred
from controlplane import ControlPlane
from kubernetes.client import CoreV1Api, CustomObjectsApi, NetworkingV1Api
from kubernetes.client.exceptions import ApiException
from llmops_operators.k8s_training import JobSetTrigger
from training_world import (
    BUCKET,
    COMPLETION_INDEX,
    JOBSET,
    KUBELET_LABEL,
    TRAINING_NS,
    KwokTrainingOperator,
    World,
    finish_rank,
    first_event,
    kwok_jobset,
    launch,
    read_jobset,
    spy,
    task_context,
    training_plan,
    training_world,
    wait_for,
    wait_gone,
    wait_running,
)

from include.cluster.network import RUN_LABEL
from include.platforms.eks.kube import Kube
from include.settings import get_settings
from include.training.k8s_job import render

# ---- this module's fixtures ----

DAG_ID = "cluster_training"
NODES = {"train-launch-0": "gpu-training-pool", "train-launch-1": "gpu-training-pool",
         "infer-launch-0": "gpu-inference-pool"}


@pytest.fixture(scope="module")
def world(cluster: ControlPlane) -> Iterator[World]:
    with training_world(cluster, DAG_ID, NODES) as w:
        yield w


# ---- launch, re-attach, adopt, teardown ----

def assert_sent(expected: Any, stored: Any, path: str = "") -> None:
    """Everything the code sent is stored as sent: the server only added defaults, removed nothing."""
    if isinstance(expected, dict):
        assert isinstance(stored, dict), f"{path}: {stored!r}"
        for key, value in expected.items():
            if value is None:
                continue
            assert key in stored, f"{path}.{key} was dropped by the API server"
            assert_sent(value, stored[key], f"{path}.{key}")
    elif isinstance(expected, list):
        assert isinstance(stored, list) and len(stored) == len(expected), f"{path}: {stored!r}"
        for i, (e, s) in enumerate(zip(expected, stored, strict=True)):
            assert_sent(e, s, f"{path}[{i}]")
    else:
        assert stored == expected, f"{path}: sent {expected!r}, stored {stored!r}"


def test_setup_launch_reattach_and_teardown_as_airflow(eks: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The DAG's setup_rendezvous, launch_training and teardown_rendezvous for one run: the NetworkPolicy
    (a retried setup tolerates the 409), the JobSet exactly as rendered, placed by the real
    controllers with rank 0's DNS name; a retried launch re-attaches; teardown stops the JobSet."""
    from include.lifecycle.training import setup_rendezvous, teardown_rendezvous

    cluster = eks.cluster
    plan = training_plan(eks.dag_id, "manual__launch")
    rendered = render(plan)
    name, ns = rendered.name, rendered.namespace
    policies = spy(monkeypatch, NetworkingV1Api, "create_namespaced_network_policy")
    creates = spy(monkeypatch, KubernetesHook, "create_custom_object")

    first, again = setup_rendezvous(plan), setup_rendezvous(plan)
    assert (first["created"], again["created"]) == (True, False)
    assert policies.statuses == [200, 409] and all(e["as_airflow"] for e in policies.entries)
    assert first["master_addr"] == rendered.master_addr == f"{name}-node-0-0.{name}.{ns}.svc"
    policy = NetworkingV1Api(cluster.api_client).read_namespaced_network_policy(name, ns)
    assert policy.spec.pod_selector.match_labels == {RUN_LABEL: name}
    assert [peer.pod_selector.match_labels for rule in policy.spec.ingress for peer in rule._from] == [
        {RUN_LABEL: name}]

    op, ctx, deferred = launch(plan)
    trigger = deferred.trigger
    assert isinstance(trigger, JobSetTrigger) and (trigger.name, trigger.namespace) == (name, ns)
    assert deferred.method_name == "execute_complete"
    assert deferred.timeout.total_seconds() == rendered.restarts.max_wall_s
    assert ctx["ti"].xcom == {"jobset_name": name, "jobset_namespace": ns}
    assert creates.statuses == [200] and creates.entries[0]["kwargs"]["namespace"] == ns
    assert creates.entries[0]["as_airflow"], "the JobSet must be created with Airflow's ServiceAccount"
    stored = read_jobset(cluster, name)
    assert_sent(kwok_jobset(plan), stored)

    ranks = wait_running(cluster, name, plan["nodes"])
    assert {p.spec.node_name for p in ranks} == {n for n, pool in NODES.items() if pool == "gpu-training-pool"}
    assert [p.spec.hostname for p in ranks] == [f"{name}-node-0-0", f"{name}-node-0-1"]
    assert {p.spec.subdomain for p in ranks} == {name}
    env = {e.name: e for e in ranks[1].spec.containers[0].env}
    assert env["MASTER_ADDR"].value == f"{ranks[0].spec.hostname}.{ranks[0].spec.subdomain}.{ns}.svc"
    assert env["NODE_RANK"].value_from.field_ref.field_path == f"metadata.annotations['{COMPLETION_INDEX}']"
    service = CoreV1Api(cluster.api_client).read_namespaced_service(name, ns)  # made by the JobSet controller
    assert service.spec.cluster_ip == "None" and service.spec.publish_not_ready_addresses is True

    # A retried try (worker lost) finds its JobSet active and waits on it; nothing is created.
    _, _, deferred_again = launch(plan, try_number=2)
    assert (deferred_again.trigger.name, deferred_again.trigger.namespace) == (name, ns)
    assert creates.statuses == [200]
    assert read_jobset(cluster, name)["metadata"]["uid"] == stored["metadata"]["uid"]
    assert [p.metadata.uid for p in wait_running(cluster, name, plan["nodes"])] == [p.metadata.uid for p in ranks]

    # Teardown after a wall-bound timeout: the JobSet still running is stopped, the policy deleted.
    deletes = spy(monkeypatch, NetworkingV1Api, "delete_namespaced_network_policy")
    teardown_rendezvous(plan)
    teardown_rendezvous(plan)  # a repeated teardown finds both gone
    assert deletes.statuses == [200, 404]
    wait_gone(cluster, name)
    with pytest.raises(ApiException) as gone:
        NetworkingV1Api(cluster.api_client).read_namespaced_network_policy(name, ns)
    assert gone.value.status == 404


def test_a_jobset_created_by_a_concurrent_try_is_adopted_on_409(eks: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two tries race: the second read 'absent' before the first created it. Its create gets the real
    API server's 409 and it re-attaches to the first try's JobSet instead of failing or replacing it."""
    cluster = eks.cluster
    plan = training_plan(eks.dag_id, "manual__race")
    name = render(plan).name
    launch(plan)
    original = read_jobset(cluster, name)["metadata"]["uid"]

    real_find = Kube.find
    reads = []

    def raced_find(self, kind, jobset_name, namespace=None):  # the first read happened before try 1's create
        reads.append(jobset_name)
        return None if len(reads) == 1 else real_find(self, kind, jobset_name, namespace)

    monkeypatch.setattr(Kube, "find", raced_find)
    creates = spy(monkeypatch, KubernetesHook, "create_custom_object")
    _, _, deferred = launch(plan, try_number=2)

    assert creates.statuses == [409] and creates.entries[0]["as_airflow"]
    assert (deferred.trigger.name, deferred.trigger.namespace) == (name, TRAINING_NS)
    assert read_jobset(cluster, name)["metadata"]["uid"] == original, "the running JobSet was replaced"


def test_the_trigger_follows_the_run_to_success_and_reruns_do_not_train_again(
        eks: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """JobSetTrigger (the triggerer's async client, as the ServiceAccount) sees the JobSet complete;
    a retry after that creates nothing; once the result is in S3 a rerun calls the cluster not at all."""
    from include.training.results import result_uri

    cluster = eks.cluster
    plan = training_plan(eks.dag_id, "manual__success")
    name = render(plan).name
    op, ctx, deferred = launch(plan, poll_interval_s=0.2)
    for rank in wait_running(cluster, name, plan["nodes"]):
        finish_rank(cluster, rank)

    event = first_event(deferred.trigger)
    assert (event["state"], event["restarts"], event["succeeded"]) == ("succeeded", 0, 1)
    assert op.execute_complete(ctx, event) is None

    creates = spy(monkeypatch, KubernetesHook, "create_custom_object")
    gets = spy(monkeypatch, KubernetesHook, "get_custom_object")
    retry = KwokTrainingOperator(task_id="launch_training", plan=plan)
    assert retry.execute(task_context(eks.dag_id, plan["run_id"], try_number=2)) is None
    assert len(creates) == 0 and gets.statuses == [200]

    # The JobSet's TTL has removed it; rank 0 published the result: nothing to launch, nothing to read.
    CustomObjectsApi(cluster.api_client).delete_namespaced_custom_object(*JOBSET, name)
    wait_gone(cluster, name)
    bucket_key = result_uri(plan).removeprefix(f"s3://{BUCKET}/")
    eks.s3().put_object(Bucket=BUCKET, Key=bucket_key, Body=b'{"final_loss": 1.0}')
    rerun = KwokTrainingOperator(task_id="launch_training", plan=plan)
    assert rerun.execute(task_context(eks.dag_id, plan["run_id"], try_number=3)) is None
    assert len(creates) == 0 and len(gets) == 1
    assert read_jobset(cluster, name) is None


def test_on_kill_deletes_the_jobset_as_airflow(eks: World, monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = eks.cluster
    plan = training_plan(eks.dag_id, "manual__killed")
    name = render(plan).name
    deletes = spy(monkeypatch, KubernetesHook, "delete_custom_object")
    idle = KwokTrainingOperator(task_id="launch_training", plan=plan)
    idle.on_kill()  # killed before it launched anything: nothing to delete
    assert len(deletes) == 0

    op, _, _ = launch(plan)
    wait_running(cluster, name, plan["nodes"])
    op.on_kill()
    assert deletes.statuses == [200] and deletes.entries[0]["as_airflow"]
    assert deletes.entries[0]["kwargs"]["propagation_policy"] == "Foreground"
    wait_gone(cluster, name)  # the JobSet, its Jobs and every rank
    op.on_kill()  # a second kill finds it gone
    assert deletes.statuses == [200, 404]


# ---- the evaluator pod ----

def test_the_evaluator_pod_runs_to_completion_on_the_inference_pool(
        eks: World, forbidden: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """KubernetesEvaluationOperator creates the rendered evaluator pod as the ServiceAccount in
    llm-training; the admission policy admits it (and refuses the same pod from another registry);
    the scheduler puts it on the inference pool's node; the deferred pod trigger (async client, as
    the ServiceAccount) sees it succeed, and the operator deletes it."""
    from airflow.providers.cncf.kubernetes.triggers.pod import KubernetesPodTrigger
    from llmops_operators.k8s_evaluation import KubernetesEvaluationOperator

    from include.evaluation.judge import JudgeConfig
    from include.platforms import get_platform

    cluster = eks.cluster
    run_id = "manual__evaluate"
    judge = JudgeConfig(provider="openai", model="judge-70b", base_url="http://judge.llm-serving.svc:8000/v1")
    job = get_platform().jobs().evaluation_job(f"s3://{BUCKET}/prod/models/ft-1/model",
                                          f"s3://{BUCKET}/prod/curated/0123456789abcdef",
                                          f"s3://{BUCKET}/prod/evaluations/ft-1/candidate", judge=judge)
    creates = spy(monkeypatch, CoreV1Api, "create_namespaced_pod")
    op = KubernetesEvaluationOperator(task_id="evaluate_candidate", job=job, poll_interval=0.2,
                                      startup_timeout_seconds=60, labels=dict([KUBELET_LABEL]))
    ctx = task_context(eks.dag_id, run_id, task_id="evaluate_candidate")
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(ctx)
    assert isinstance(deferred.value.trigger, KubernetesPodTrigger)
    assert creates.statuses == [200] and creates.entries[0]["as_airflow"]
    assert creates.entries[0]["kwargs"]["namespace"] == TRAINING_NS
    pod_name = ctx["ti"].xcom["pod_name"]
    assert ctx["ti"].xcom["pod_namespace"] == TRAINING_NS
    pod = wait_for("the evaluator pod to be placed", lambda: (
        p if (p := CoreV1Api(cluster.api_client).read_namespaced_pod(pod_name, TRAINING_NS)).spec.node_name else None))
    node = CoreV1Api(cluster.api_client).read_node(pod.spec.node_name)
    assert node.metadata.labels["karpenter.sh/nodepool"] == get_settings().inference_pool
    assert pod.spec.service_account_name == "llm-evaluator"
    assert pod.spec.containers[0].image == get_settings().evaluator_image

    event = first_event(deferred.value.trigger)
    assert event["status"] == "success", event
    op.trigger_reentry(ctx, event)
    wait_for("the succeeded evaluator pod to be deleted", lambda: not CoreV1Api(cluster.api_client).list_namespaced_pod(
        TRAINING_NS, field_selector=f"metadata.name={pod_name}").items)

    # The admission policy is in force for this caller: the same pod from another registry is refused.
    foreign = op.build_pod_request_obj(ctx)
    foreign.metadata.name = f"{pod_name}-foreign"
    foreign.spec.containers[0].image = "docker.io/someone/evaluator:1"
    with pytest.raises(ApiException) as refused:
        op.client.create_namespaced_pod(TRAINING_NS, foreign)
    assert refused.value.status == 403
    assert "ValidatingAdmissionPolicy 'llm-training-airflow-guard'" in json.loads(refused.value.body)["message"]
    assert len(forbidden) == 1 and "llm-training-airflow-guard" in forbidden[0]
    forbidden.clear()  # that 403 was the point
