"""Planning refuses impossible runs with a message that names the fix, and prices the rest."""

import pytest

from include.errors import InputError
from include.lifecycle.training import plan as build_plan
from include.lifecycle.training import preflight, validate_params
from include.settings import Settings
from include.training.planning import TrainingPlan, estimate, per_gpu_memory_gib, run_name

EKS = Settings(profile="eks", data_root="s3://bucket/llmops")
LOCAL = Settings(profile="local", data_root="file:///tmp/llmops")
DATASET = {"version": "0123456789abcdef", "uri": "s3://bucket/llmops/curated/0123456789abcdef"}


def params(**over):
    base = {"base_model": "llama31_8b", "method": "lora", "lora_rank": 16, "max_steps": 1000, "learning_rate": 1e-4,
            "nodes": 1, "gpus_per_node": 8, "tensor_parallel": 1, "pipeline_parallel": 1, "pool": "production",
            "checkpoint_interval": 200, "dry_run": False}
    return base | over


def planned(p, settings, dag_id="d", run_id="r", dataset=DATASET):
    """The plan task's output for trigger params `p`: validate_params' output, planned."""
    return build_plan(validate_params(p, settings), dataset, dag_id, run_id, settings)


def placed(p, settings) -> TrainingPlan:
    return TrainingPlan.from_dict(validate_params(p, settings)["training"])


def test_a_lora_run_is_placed_priced_and_rendered():
    out = planned(params(nodes=2), EKS, "finetune_lifecycle", "scheduled__2026-11-29T02:00:00+00:00")
    plan, est = out["plan"], out["estimate"]
    assert plan["backend"] == "nemo" and plan["pool"] == "production"
    assert plan["instance_type"] in {"p5.48xlarge", "p4d.24xlarge"}
    assert plan["checkpoint_dir"] == f"/checkpoints/{plan['run_name']}"
    assert plan["output_uri"] == f"s3://bucket/llmops/models/{plan['run_name']}"
    assert est["gpu_hours"] > 0 and est["cost_usd"] > 0 and est["nodes"] == 2
    checked = preflight(plan, EKS)
    assert checked["pool"] == "gpu-training-pool" and checked["jobset"].startswith("train-finetune-lifecycle-")
    assert checked["max_restarts"] == plan["max_restarts"] and checked["max_wall_s"] == plan["max_wall_s"]
    assert checked["master_addr"] == f"{checked['jobset']}-node-0-0.{checked['jobset']}.llm-training.svc"


def test_run_name_is_stable_per_run():
    assert run_name("d", "r1") == run_name("d", "r1") != run_name("d", "r2")


def test_cost_scales_with_steps_and_gpus():
    one = estimate(placed(params(), EKS), 128, 2048)
    two = estimate(placed(params(max_steps=2000), EKS), 128, 2048)
    assert two["gpu_hours"] == pytest.approx(2 * one["gpu_hours"], rel=0.01)


@pytest.mark.parametrize(
    "over, message",
    [
        ({"tensor_parallel": 4, "pipeline_parallel": 3}, "must divide nodes x gpus_per_node = 8"),
        ({"tensor_parallel": 8, "gpus_per_node": 4, "pool": "experiment"}, "must fit inside one node"),
        ({"base_model": "llama3_70b", "method": "full"}, "use method=lora, more nodes or more model parallelism"),
        ({"nodes": 2, "gpus_per_node": 4}, "multi-node jobs take whole nodes"),
        ({"checkpoint_interval": 5000}, "no checkpoint would ever be written"),
    ],
)
def test_impossible_combinations_are_refused_before_launch(over, message):
    with pytest.raises(InputError) as e:
        validate_params(params(**over), EKS)
    assert message in str(e.value)


def test_full_fine_tuning_fits_when_sharded():
    assert placed(params(method="full", nodes=2), EKS).placement["instance_type"]
    assert per_gpu_memory_gib(8, "full", 8, 1) > per_gpu_memory_gib(8, "full", 16, 2)


def test_experiment_pool_uses_spot_prices():
    place = placed(params(pool="experiment", gpus_per_node=4), EKS).placement
    assert place["instance_type"] in {"g6e.12xlarge", "g5.12xlarge"}
    from include.cluster.pools import get_instance_types

    assert place["price_per_hour"] == get_instance_types()[place["instance_type"]].spot_usd_per_hour


def test_local_plans_tiny_ranks():
    out = planned(params(nodes=2, gpus_per_node=1, max_steps=100, checkpoint_interval=20, learning_rate=3e-3),
                  LOCAL, "finetune_lifecycle", "manual__1", DATASET | {"uri": "file:///tmp/llmops/curated/x"})
    assert out["plan"]["backend"] == "tiny" and out["plan"]["instance_type"] == "local"
    assert out["estimate"]["cost_usd"] == 0.0
    with pytest.raises(InputError, match="at most 8"):
        validate_params(params(nodes=4, gpus_per_node=4), LOCAL)


def test_preflight_refuses_what_the_pool_cannot_hold():
    plan = planned(params(nodes=12), EKS)["plan"]  # 96 GPUs > the pool's 64
    with pytest.raises(InputError, match="limit"):
        preflight(plan, EKS)


def test_the_training_plan_round_trips_through_xcom_and_carries_the_gate_policy():
    from include.evaluation.gate import GatePolicy, load_policy

    validated = validate_params(params(gate_policy={"confidence": 0.9}), EKS)
    training = TrainingPlan.from_dict(validated["training"])
    assert training.to_dict() == validated["training"] and training.nodes == 1 and training.dataset_version is None
    policy = GatePolicy.from_dict(validated["gate_policy"])
    assert policy == load_policy({"confidence": 0.9}, profile="eks") and policy.confidence == 0.9
    assert planned(params(gate_policy={"confidence": 0.9}), EKS)["gate_policy"] == validated["gate_policy"]
