"""Preflight refuses pods that would stay Pending on their pool, naming the field and the fix."""

from __future__ import annotations

import copy

import pytest
from kubernetes.client import V1Container, V1PodSpec, V1ResourceRequirements, V1Toleration

from include.cluster.pools import EFA, GPU, NODEPOOL_LABEL, Taint, get_pool
from include.cluster.preflight import PreflightError, check_pod_placement, placement_problems, tolerates
from include.training.k8s_job import render

TRAINING = "gpu-training-pool"
TRAINING_TOLERATIONS = [
    {"key": "nvidia.com/gpu", "operator": "Equal", "value": "true", "effect": "NoSchedule"},
    {"key": "llmops.io/workload", "operator": "Equal", "value": "training", "effect": "NoSchedule"},
]


def job(nodes: int = 4, gpus: int = 8, efa: int = 32, pool: str = TRAINING, **spec_overrides) -> dict:
    """A hand-written Job dict on the training pool that passes preflight by default."""
    limits = {GPU: str(gpus), **({EFA: str(efa)} if efa else {})}
    pod_spec = {
        "nodeSelector": {NODEPOOL_LABEL: pool, "node.kubernetes.io/instance-type": "p5.48xlarge"},
        "tolerations": copy.deepcopy(TRAINING_TOLERATIONS),
        "containers": [{"name": "trainer", "image": "x", "resources": {"limits": limits, "requests": limits}}],
        **spec_overrides,
    }
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"},
            "spec": {"parallelism": nodes, "completions": nodes, "template": {"spec": pod_spec}}}


def refusal(obj, pool=TRAINING, **kwargs) -> PreflightError:
    with pytest.raises(PreflightError) as info:
        check_pod_placement(obj, pool, **kwargs)
    return info.value


def test_passing_job():
    check_pod_placement(job())  # pool taken from the node selector


def test_rendered_jobs_pass():
    for pool, instance, gpus in (("production", "p4d.24xlarge", 8), ("experiment", "g5.12xlarge", 4)):
        for nodes in (1, 2):
            launch = render({"run_name": "r", "dag_id": "d", "run_id": "x", "pool": pool, "nodes": nodes,
                             "gpus_per_node": gpus, "instance_type": instance, "backend": "nemo",
                             "base_model": "llama31_8b", "dataset_uri": "s3://b/data",
                             "output_uri": "s3://b/out", "checkpoint_dir": "/checkpoints/r"})
            check_pod_placement(launch.child_job())


def test_missing_toleration_names_field_taint_and_fix():
    err = refusal(job(tolerations=TRAINING_TOLERATIONS[:1]))
    assert err.problems == [
        "spec.template.spec.tolerations: missing toleration for taint llmops.io/workload=training:NoSchedule "
        "of pool gpu-training-pool; add {'key': 'llmops.io/workload', 'operator': 'Equal', "
        "'value': 'training', 'effect': 'NoSchedule'}"
    ]
    assert isinstance(err, ValueError)


def test_toleration_for_another_workload_does_not_count():
    wrong = copy.deepcopy(TRAINING_TOLERATIONS)
    wrong[1]["value"] = "experiment"
    assert "llmops.io/workload=training:NoSchedule" in str(refusal(job(tolerations=wrong)))


def test_wrong_node_selector():
    err = refusal(job(nodeSelector={NODEPOOL_LABEL: "gpu-experiment-pool"}))
    assert err.problems == [
        "spec.template.spec.nodeSelector['karpenter.sh/nodepool']: is 'gpu-experiment-pool' but the pod is "
        "meant for pool gpu-training-pool; set it to 'gpu-training-pool'"
    ]


def test_missing_node_selector():
    err = refusal(job(nodeSelector={}))
    assert "spec.template.spec.nodeSelector: no karpenter.sh/nodepool label" in str(err)
    assert "{'karpenter.sh/nodepool': 'gpu-training-pool'}" in str(err)


def test_selector_for_a_workload_label_the_pool_does_not_carry():
    err = refusal(job(nodeSelector={NODEPOOL_LABEL: TRAINING, "llmops.io/workload": "inference"}))
    assert "nodeSelector['llmops.io/workload']: is 'inference'" in str(err)


def test_pinned_instance_type_outside_the_pool():
    err = refusal(job(nodeSelector={NODEPOOL_LABEL: TRAINING, "node.kubernetes.io/instance-type": "g5.xlarge"}))
    assert "'g5.xlarge' is not allowed on pool gpu-training-pool; use one of p5.48xlarge, p4d.24xlarge" \
        in str(err)


def test_gpus_matching_no_instance_type():
    err = refusal(job(nodes=1, gpus=16, efa=0))
    (problem,) = err.problems
    assert problem.startswith("spec.template.spec.containers[0].resources.limits['nvidia.com/gpu']: 16 GPUs")
    assert "p5.48xlarge: 8" in problem and "request at most 8 per pod" in problem


def test_efa_request_too_big():
    err = refusal(job(efa=64))
    (problem,) = err.problems
    assert problem.startswith("spec.template.spec.containers[0].resources.limits['vpc.amazonaws.com/efa']: "
                              "64 EFA interfaces")
    assert "at most 32" in problem and "request 32 or fewer" in problem


def test_efa_on_a_pinned_type_with_fewer_interfaces():
    spec = {NODEPOOL_LABEL: TRAINING, "node.kubernetes.io/instance-type": "p4d.24xlarge"}
    assert "at most 4 (p4d.24xlarge: 4)" in str(refusal(job(efa=32, nodeSelector=spec)))


def test_pool_gpu_limit_exceeded():
    err = refusal(job(nodes=9))
    (problem,) = err.problems
    assert problem.startswith("spec.parallelism: 9 pod(s) need 9 x p5.48xlarge = 72 GPUs")
    assert "limit nvidia.com/gpu: 64" in problem and "use at most 8 pod(s)" in problem


def test_pool_limit_counts_whole_nodes_not_requests():
    """Karpenter charges whole nodes: two 4-GPU pods share a p5, so 16 pods fill 8 nodes, 17 need 9."""
    pool = get_pool(TRAINING)
    spec = job(gpus=4, efa=0)["spec"]["template"]["spec"]
    assert placement_problems(spec, pool, pods=16) == []  # 8 nodes x 8 = 64
    assert "need 9 x p5.48xlarge = 72 GPUs" in placement_problems(spec, pool, pods=17)[0]


def test_multi_node_job_must_take_whole_nodes():
    err = refusal(job(nodes=2, gpus=4, efa=16))
    assert "takes whole nodes" in str(err)
    assert "set limits['nvidia.com/gpu']: 8 and limits['vpc.amazonaws.com/efa']: 32" in str(err)


def test_single_pod_may_use_part_of_a_node():
    check_pod_placement(job(nodes=1, gpus=4, efa=0))


def test_gpu_pool_pod_without_gpus():
    err = refusal(job(nodes=1, gpus=0, efa=0))
    assert "asks for no GPU" in str(err)


def test_extended_resource_request_must_equal_limit():
    bad = job()
    bad["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"] = {GPU: "4", EFA: "32"}
    assert "requests['nvidia.com/gpu']: 4 differs from the limit 8" in str(refusal(bad))


def test_all_problems_are_reported_at_once():
    err = refusal(job(nodes=9, tolerations=[], nodeSelector={NODEPOOL_LABEL: "gpu-inference-pool"},
                      priorityClassName="llmops-experiment-low"))
    assert len(err.problems) == 5  # selector, two tolerations, priority class, pool limit
    assert str(err).startswith("5 problem(s) placing the pod on pool gpu-training-pool:")


def test_accepts_client_models_and_pod_specs():
    spec = V1PodSpec(
        node_selector={NODEPOOL_LABEL: TRAINING},
        tolerations=[V1Toleration(**t) for t in TRAINING_TOLERATIONS],
        containers=[V1Container(name="c", image="x", resources=V1ResourceRequirements(limits={GPU: "8"}))],
    )
    check_pod_placement(spec, TRAINING)
    spec.tolerations = []
    assert len(refusal(spec).problems) == 2
    pod = {"apiVersion": "v1", "kind": "Pod", "spec": job()["spec"]["template"]["spec"]}
    check_pod_placement(pod, TRAINING)


def test_no_pool_anywhere():
    bad = job(nodeSelector={})
    with pytest.raises(PreflightError, match="select one of the GPU pools"):
        check_pod_placement(bad)


@pytest.mark.parametrize(
    ("toleration", "expected"),
    [
        ({"key": "k", "operator": "Equal", "value": "v", "effect": "NoSchedule"}, True),
        ({"key": "k", "operator": "Exists"}, True),
        ({"operator": "Exists"}, True),  # empty key + Exists tolerates everything
        ({"key": "k", "value": "v"}, True),  # operator defaults to Equal, effect to all
        ({"key": "k", "operator": "Equal", "value": "other"}, False),
        ({"key": "k", "operator": "Exists", "effect": "NoExecute"}, False),
        ({"key": "other", "operator": "Exists"}, False),
        ({"value": "v"}, False),
    ],
)
def test_toleration_semantics(toleration, expected):
    assert tolerates(toleration, Taint("k", "v", "NoSchedule")) is expected
