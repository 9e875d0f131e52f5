"""The training fields' rules, in one place: the DAG's trigger Params are generated from them,
`validate_params` (the one check in Airflow) and the trainer's plan validator (the one in the image)
check with them, so none can drift.

Plain Python (no Airflow, no NeMo import): the trainer image validates its plan with these rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from include.cluster.pools import PLAN_POOLS
from include.errors import InputError
from include.validation import DATASET_VERSION_RE, RULE_KEY, Rule, check_all, is_dataset_version

METHODS = ("lora", "full")
POOLS = tuple(PLAN_POOLS)
GPU_COUNTS = (1, 2, 4, 8)
MAX_NODES = 64


def _int(field: str, low: int, high: int) -> Rule:
    return Rule(field, "integer", low, high)


def _enum(field: str, choices) -> Rule:
    return Rule(field, "enum", choices=tuple(choices))


def base_model_rule() -> Rule:
    from include.training.nemo_backend import NEMO_MODELS  # pure Python: the model catalogue, no NeMo

    return _enum("base_model", sorted(NEMO_MODELS))


# What a trigger may set (besides base_model, dataset_version, dry_run, gate_policy).
PARAM_RULES: dict[str, Rule] = {
    "method": _enum("method", METHODS),
    "lora_rank": _int("lora_rank", 1, 512),
    "max_steps": _int("max_steps", 1, 1_000_000),
    "learning_rate": Rule("learning_rate", "number", 0, 1, open_low=True),
    "checkpoint_interval": _int("checkpoint_interval", 1, 1_000_000),
    "nodes": _int("nodes", 1, MAX_NODES),
    "gpus_per_node": _enum("gpus_per_node", GPU_COUNTS),
    "tensor_parallel": _enum("tensor_parallel", GPU_COUNTS),
    "pipeline_parallel": _int("pipeline_parallel", 1, 16),
    "pool": _enum("pool", POOLS),
}
# Keys only the plan carries (set by the planner or a backend default, never by a trigger).
PLAN_ONLY_RULES: dict[str, Rule] = {
    "micro_batch_size": _int("micro_batch_size", 1, 65_536),
    "global_batch_size": _int("global_batch_size", 1, 1_048_576),
    "seq_length": _int("seq_length", 8, 131_072),
    "seed": _int("seed", 0, 2**31 - 1),
}
# The plan's numeric and enumerated keys: the params' rules (pool is the launcher's) plus its own.
PLAN_RULES: dict[str, Rule] = {**{k: r for k, r in PARAM_RULES.items() if k != "pool"}, **PLAN_ONLY_RULES}

# Trigger defaults per trainer backend (the container-job seam says which backend a profile runs).
PARAM_DEFAULTS: dict[str, dict[str, Any]] = {
    # A byte-level model on CPU: short runs, a large LR, two local ranks.
    "tiny": {"base_model": "llama32_1b", "max_steps": 240, "learning_rate": 3e-3, "checkpoint_interval": 60,
             "nodes": 2, "gpus_per_node": 1},
    # An 8B-class LoRA fine-tune on one 8-GPU node.
    "nemo": {"base_model": "llama31_8b", "max_steps": 1000, "learning_rate": 1e-4, "checkpoint_interval": 200,
             "nodes": 1, "gpus_per_node": 8},
}


# Short enough to stay on one line where a refused value's error quotes the schema.
DATASET_VERSION_WORDS = "Empty, or 16 lowercase hex digits."


def check_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Each trigger field against its rule; InputError names the first bad field and its range."""
    checked = check_all({"base_model": base_model_rule(), **PARAM_RULES}, params)
    version = params.get("dataset_version")
    if version is not None and not is_dataset_version(version):
        raise InputError(f"dataset_version={version!r}: expected 16 lowercase hex digits, or empty")
    return {**checked, "dataset_version": version}


def param_schemas() -> dict[str, dict[str, Any]]:
    """JSON-schema fragments for the DAG's Params, from the same rules."""
    return {
        "base_model": base_model_rule().schema(),
        **{key: rule.schema() for key, rule in PARAM_RULES.items()},
        "dataset_version": {"type": ["null", "string"], "pattern": f"^{DATASET_VERSION_RE.pattern}$",
                            RULE_KEY: DATASET_VERSION_WORDS},
    }
