"""From trigger params to a training plan: validate, size, place and price it before anything runs.

The plan is one flat dict: the trainer's keys (include/training/entrypoint.py validates them the
same way inside the container) plus the launch keys the Job renderer needs. Every refusal is an
InputError that names the param and what would work, because the alternative is a GPU Job that
dies an hour in, or a pod that stays Pending.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from include.errors import InputError
from include.settings import Settings

# Sustained fraction of peak bf16 FLOPs a NeMo fine-tune reaches (model FLOPs utilisation).
MFU = 0.35
# Headroom per GPU for activations, CUDA context and fragmentation.
GPU_MEMORY_USABLE = 0.8
MAX_LOCAL_RANKS = 8
PARAM_KEYS = ("base_model", "method", "lora_rank", "max_steps", "learning_rate", "nodes", "gpus_per_node",
              "tensor_parallel", "pipeline_parallel", "pool", "checkpoint_interval")


def run_name(dag_id: str, run_id: str) -> str:
    """Stable per DAG run: a retry or rerun resumes the same checkpoints instead of starting over."""
    return "ft-" + hashlib.sha256(f"{dag_id}\0{run_id}".encode()).hexdigest()[:12]


def per_gpu_memory_gib(params_billion: float, method: str, world: int, model_parallel: int) -> float:
    """Weights (+ grads and Adam state for full fine-tuning) on one GPU, before activations.

    Weights and gradients split over tensor x pipeline parallel; Megatron's distributed optimizer
    splits the fp32 master weights and moments over every GPU.
    """
    params = params_billion * 1e9
    if method == "full":
        sharded = params * 4 / model_parallel  # bf16 weights + bf16 grads
        optimizer = params * 12 / world  # fp32 master + two fp32 moments
    else:
        sharded = params * 2 / model_parallel  # frozen bf16 weights; adapters are ~1%
        optimizer = params * 0.01 * 16 / world
    return (sharded + optimizer) / 2**30


def _check(problems: list[str], ok: bool, message: str) -> None:
    if not ok:
        problems.append(message)


def validate_params(params: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Refuse combinations the schema cannot express; return the placement (pool, instance type)."""
    from include.evaluation.gate import load_policy

    load_policy(params.get("gate_policy") or None, profile=settings.profile)  # tighten-only, before any GPU time
    problems: list[str] = []
    nodes, gpus = params["nodes"], params["gpus_per_node"]
    tp, pp = params["tensor_parallel"], params["pipeline_parallel"]
    world = nodes * gpus
    _check(problems, world % (tp * pp) == 0,
           f"tensor_parallel x pipeline_parallel = {tp * pp} must divide nodes x gpus_per_node = {world}")
    _check(problems, tp <= gpus, f"tensor_parallel={tp} must fit inside one node (gpus_per_node={gpus}): "
           "tensor parallelism needs NVLink")
    _check(problems, params["checkpoint_interval"] <= params["max_steps"],
           f"checkpoint_interval={params['checkpoint_interval']} exceeds max_steps={params['max_steps']}: "
           "no checkpoint would ever be written")
    if settings.is_local:
        _check(problems, world <= MAX_LOCAL_RANKS,
               f"nodes x gpus_per_node = {world} local ranks; the local profile runs at most {MAX_LOCAL_RANKS}")
        _check(problems, tp * pp == 1, "the local profile trains data-parallel only: "
               "set tensor_parallel = pipeline_parallel = 1")
        if problems:
            raise InputError("invalid training params:\n  - " + "\n  - ".join(problems))
        return {"pool": params["pool"], "instance_type": "local", "gpu_model": "cpu", "price_per_hour": 0.0}

    from include.cluster.pools import pool_for_plan
    from include.training.nemo_backend import NEMO_MODELS

    model = NEMO_MODELS[params["base_model"]]
    pool = pool_for_plan(params["pool"], settings)
    need = per_gpu_memory_gib(model.params_billion, params["method"], world, tp * pp)
    fits = [i for i in pool.instances() if i.gpus >= gpus and (nodes == 1 or i.gpus == gpus)]
    _check(problems, bool(fits),
           f"gpus_per_node={gpus} matches no instance type of pool {pool.name} "
           f"({', '.join(f'{i.name}: {i.gpus}' for i in pool.instances())})"
           + ("; multi-node jobs take whole nodes" if nodes > 1 else ""))
    roomy = [i for i in fits if need <= i.gpu_memory_gib * GPU_MEMORY_USABLE]
    if fits and not roomy:
        biggest = max(i.gpu_memory_gib for i in fits)
        problems.append(
            f"{params['method']} fine-tuning of {params['base_model']} needs ~{need:.0f} GiB per GPU at "
            f"nodes={nodes}, gpus_per_node={gpus}, tensor_parallel={tp}, pipeline_parallel={pp}, but pool "
            f"{pool.name} offers {biggest} GiB GPUs; use method=lora, more nodes or more model parallelism")
    if problems:
        raise InputError("invalid training params:\n  - " + "\n  - ".join(problems))
    spot = pool.capacity_types == ("spot",)
    best = min(roomy, key=lambda i: (i.gpus != gpus, i.spot_usd_per_hour if spot else i.on_demand_usd_per_hour))
    return {"pool": params["pool"], "instance_type": best.name, "gpu_model": best.gpu_model,
            "price_per_hour": best.spot_usd_per_hour if spot else best.on_demand_usd_per_hour,
            "gpu_bf16_tflops": best.gpu_bf16_tflops, "params_billion": model.params_billion,
            "gpu_memory_need_gib": round(need, 1)}


def estimate(params: dict[str, Any], placement: dict[str, Any], global_batch: int, seq_length: int) -> dict:
    """GPU-hours and cost from 6·N·tokens FLOPs (4·N for LoRA: no weight gradients) at MFU."""
    nodes, gpus = params["nodes"], params["gpus_per_node"]
    if placement["instance_type"] == "local":
        return {"gpu_hours": 0.0, "cost_usd": 0.0, "instance_type": "local", "nodes": nodes}
    tokens = params["max_steps"] * global_batch * seq_length
    flops = (6 if params["method"] == "full" else 4) * placement["params_billion"] * 1e9 * tokens
    seconds = flops / (nodes * gpus * placement["gpu_bf16_tflops"] * 1e12 * MFU)
    hours = seconds / 3600
    return {
        "tokens": tokens,
        "wall_hours": round(hours, 3),
        "gpu_hours": round(hours * nodes * gpus, 2),
        "cost_usd": round(hours * nodes * placement["price_per_hour"], 2),
        "instance_type": placement["instance_type"],
        "nodes": nodes,
        "price_per_hour": placement["price_per_hour"],
    }


def build_plan(params: dict[str, Any], dataset: dict[str, Any], settings: Settings, dag_id: str,
               run_id: str) -> dict[str, Any]:
    """{"plan": the flat plan every launcher takes, "estimate": GPU-hours and cost}."""
    from include.training.entrypoint import PlanError, validate_plan

    placement = validate_params(params, settings)
    name = run_name(dag_id, run_id)
    trainer = {
        "run_name": name,
        "backend": "tiny" if settings.is_local else "nemo",
        "dataset_uri": dataset["uri"],
        "output_uri": f"{settings.data_root}/models/{name}",
        "checkpoint_dir": os.path.join(settings.checkpoint_root, name),
        **{k: params[k] for k in PARAM_KEYS if k != "pool"},
    }
    try:
        trainer = validate_plan(trainer)
    except PlanError as e:
        raise InputError(f"invalid training plan: {e}") from e
    plan = {**trainer, "dag_id": dag_id, "run_id": run_id, "pool": params["pool"],
            "instance_type": placement["instance_type"], "image": settings.trainer_image}
    return {"plan": plan, "estimate": estimate(params, placement, trainer["global_batch_size"],
                                                trainer["seq_length"])}


def preflight(plan: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Render what would be launched and check it against the cluster's pools, or the local machine."""
    if settings.is_local:
        cpus = os.cpu_count() or 1
        ranks = plan["nodes"] * plan["gpus_per_node"]
        return {"profile": "local", "ranks": ranks, "cpus": cpus,
                "note": "ranks share CPUs" if ranks > cpus else "one CPU per rank"}
    from include.cluster.preflight import PreflightError
    from include.training.k8s_job import PlanError, render

    try:
        launch = render(plan, settings)
    except (PlanError, PreflightError) as e:
        raise InputError(str(e)) from e
    return {"profile": "eks", "job": launch.name, "namespace": launch.namespace, "pool": launch.pool.name,
            "instance_type": launch.instance.name}
