"""From trigger params to a training plan: validate, size, place and price it before anything runs.

`validate_params` is the one check of the trigger's training params in Airflow: each field against its
rule (include/training/params.py, the same rules the trigger form's schema comes from), then the
combinations no schema can express, then placement. It returns a `TrainingPlan`, already valid;
every later task receives it (through XCom, `to_dict`/`from_dict`) and trusts it. `build_plan` turns it
into the flat launch plan (the trainer's keys, which only the trainer's own validator inside the image
checks again, plus the launch keys the Job renderer needs). Where a platform differs (placement,
backend, preflight) the caller passes its container-job seam. Every refusal is an InputError that
names the param and what would work, because the alternative is a GPU Job that dies an hour in, or
a pod that stays Pending.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from include.errors import InputError
from include.settings import Settings
from include.training.params import check_params
from include.training.plan import complete

# Sustained fraction of peak bf16 FLOPs a NeMo fine-tune reaches (model FLOPs utilisation).
MFU = 0.35
# Headroom per GPU for activations, CUDA context and fragmentation.
GPU_MEMORY_USABLE = 0.8
PARAM_KEYS = ("base_model", "method", "lora_rank", "max_steps", "learning_rate", "nodes", "gpus_per_node",
              "tensor_parallel", "pipeline_parallel", "pool", "checkpoint_interval")


@dataclass(frozen=True)
class TrainingPlan:
    """The trigger's training params after `validate_params`: each field in range, the combinations
    possible, placed on this platform. Only `validate_params` builds one from a trigger's values;
    `from_dict` (an XCom) trusts, because nothing but `to_dict` wrote it."""

    base_model: str
    method: str
    lora_rank: int
    max_steps: int
    learning_rate: float
    checkpoint_interval: int
    nodes: int
    gpus_per_node: int
    tensor_parallel: int
    pipeline_parallel: int
    pool: str
    dataset_version: str | None
    placement: dict[str, Any]  # the platform's `place`: instance_type, price_per_hour, ...

    @property
    def world(self) -> int:
        return self.nodes * self.gpus_per_node

    def params(self) -> dict[str, Any]:
        """The trigger's training fields as a mapping, the way the trainer's plan takes them."""
        return {key: getattr(self, key) for key in PARAM_KEYS}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingPlan:
        return cls(**{f.name: data[f.name] for f in fields(cls)})


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


def validate_params(params: Mapping[str, Any], jobs: Any) -> TrainingPlan:
    """Every field against its rule, then combinations no schema can express, then placement: the
    one check of the trigger's training params before the container's own.

    `jobs` is the platform's container-job seam: it places the run (local ranks, or a pool and
    instance type) and adds its own refusals.
    """
    checked = check_params(params)  # each field: InputError naming it and its range, before any arithmetic
    problems: list[str] = []
    nodes, gpus = checked["nodes"], checked["gpus_per_node"]
    tp, pp = checked["tensor_parallel"], checked["pipeline_parallel"]
    world = nodes * gpus
    _check(problems, world % (tp * pp) == 0,
           f"tensor_parallel x pipeline_parallel = {tp * pp} must divide nodes x gpus_per_node = {world}")
    _check(problems, tp <= gpus, f"tensor_parallel={tp} must fit inside one node (gpus_per_node={gpus}): "
           "tensor parallelism needs NVLink")
    _check(problems, checked["checkpoint_interval"] <= checked["max_steps"],
           f"checkpoint_interval={checked['checkpoint_interval']} exceeds max_steps={checked['max_steps']}: "
           "no checkpoint would ever be written")
    placement = jobs.place(checked, problems)
    if problems:
        raise InputError("invalid training params:\n  - " + "\n  - ".join(problems))
    return TrainingPlan(**checked, placement=placement)


def pool_placement(params: Mapping[str, Any], settings: Settings, problems: list[str]) -> dict[str, Any]:
    """The cheapest instance type of the param's pool that holds the model; refusals go to `problems`."""
    from include.cluster.pools import pool_for_plan
    from include.training.nemo_backend import NEMO_MODELS

    nodes, gpus = params["nodes"], params["gpus_per_node"]
    tp, pp = params["tensor_parallel"], params["pipeline_parallel"]
    model = NEMO_MODELS[params["base_model"]]
    pool = pool_for_plan(params["pool"], settings)
    need = per_gpu_memory_gib(model.params_billion, params["method"], nodes * gpus, tp * pp)
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
        return {}
    spot = pool.capacity_types == ("spot",)
    best = min(roomy, key=lambda i: (i.gpus != gpus, i.spot_usd_per_hour if spot else i.on_demand_usd_per_hour))
    return {"pool": params["pool"], "instance_type": best.name, "gpu_model": best.gpu_model,
            "price_per_hour": best.spot_usd_per_hour if spot else best.on_demand_usd_per_hour,
            "gpu_bf16_tflops": best.gpu_bf16_tflops, "params_billion": model.params_billion,
            "gpu_memory_need_gib": round(need, 1)}


def estimate(plan: TrainingPlan, global_batch: int, seq_length: int) -> dict:
    """GPU-hours and cost from 6·N·tokens FLOPs (4·N for LoRA: no weight gradients) at MFU."""
    placement = plan.placement
    if placement["instance_type"] == "local":
        return {"gpu_hours": 0.0, "cost_usd": 0.0, "instance_type": "local", "nodes": plan.nodes}
    tokens = plan.max_steps * global_batch * seq_length
    flops = (6 if plan.method == "full" else 4) * placement["params_billion"] * 1e9 * tokens
    seconds = flops / (plan.world * placement["gpu_bf16_tflops"] * 1e12 * MFU)
    hours = seconds / 3600
    return {
        "tokens": tokens,
        "wall_hours": round(hours, 3),
        "gpu_hours": round(hours * plan.world, 2),
        "cost_usd": round(hours * plan.nodes * placement["price_per_hour"], 2),
        "instance_type": placement["instance_type"],
        "nodes": plan.nodes,
        "price_per_hour": placement["price_per_hour"],
    }


def build_plan(plan: TrainingPlan, dataset: Mapping[str, Any], settings: Settings, dag_id: str, run_id: str,
               jobs: Any) -> dict[str, Any]:
    """{"plan": the flat plan every launcher takes, "estimate": GPU-hours and cost}.

    `plan` is valid already (`validate_params`): nothing here checks it again.
    """
    from include.training.restarts import restart_plan_fields

    name = run_name(dag_id, run_id)
    params = plan.params()
    trainer = complete({
        "run_name": name,
        "backend": jobs.trainer_backend,
        "dataset_uri": dataset["uri"],
        "output_uri": f"{settings.data_root}/models/{name}",
        "checkpoint_dir": os.path.join(settings.checkpoint_root, name),
        **{k: params[k] for k in PARAM_KEYS if k != "pool"},
    })
    # Restart budget, backoff, wall-clock bound and rendezvous wait: in the plan, so MLflow logs them.
    launch = {**trainer, "dag_id": dag_id, "run_id": run_id, "pool": plan.pool,
              "instance_type": plan.placement["instance_type"], "image": settings.trainer_image,
              **restart_plan_fields(trainer["backend"])}
    return {"plan": launch, "estimate": estimate(plan, trainer["global_batch_size"], trainer["seq_length"])}
