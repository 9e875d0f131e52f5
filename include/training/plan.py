"""The trainer's plan: one JSON object, built in Airflow from the checked params and validated inside the image.

Airflow checks the trigger's params once (`planning.validate_params`) and builds the plan from them
(`complete`) without checking again; the trainer's entrypoint validates it (`validate_plan`), because it
crosses a process and image boundary: the image may be newer than Airflow, or the plan hand-written.
The numeric and enumerated keys use the shared rules (include/training/params.py), so the trigger
form, `validate_params` and this validator accept exactly the same values. Every refusal is an
InputError naming the key and what it accepts. Plain Python (no torch, NeMo or Airflow): the NeMo
image imports it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from include.errors import InputError
from include.training.params import PARAM_DEFAULTS, PLAN_RULES, base_model_rule
from include.training.restarts import RESTART_KEYS
from include.validation import CONTROL_RE, uri_problem

BACKENDS = ("tiny", "nemo")
# Plain names only: they end up in paths, Job names and NeMo run names.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")

REQUIRED_KEYS = ("run_name", "backend", "dataset_uri", "output_uri", "checkpoint_dir", "base_model")
PLAN_KEYS = (*REQUIRED_KEYS, *PLAN_RULES)
# Keys a launcher needs that the trainer does not read (the Job renderer's placement inputs).
LAUNCH_KEYS = ("dag_id", "run_id", "pool", "instance_type", "image", *RESTART_KEYS)

# What a plan may leave out: the trigger's training defaults, and one rank (a hand-written plan).
_DEFAULTS: dict[str, dict[str, Any]] = {
    backend: {**{k: PARAM_DEFAULTS[backend][k] for k in ("max_steps", "learning_rate", "checkpoint_interval")},
              "lora_rank": 8, "seed": 1234, "tensor_parallel": 1, "pipeline_parallel": 1, "nodes": 1,
              "gpus_per_node": 1, **plan_only}
    for backend, plan_only in {
        # A byte-level model trained from scratch wants short sequences.
        "tiny": {"method": "full", "micro_batch_size": 8, "seq_length": 128},
        # NeMo recipe defaults for an 8B-class LoRA fine-tune on one node.
        "nemo": {"method": "lora", "micro_batch_size": 1, "seq_length": 2048, "gpus_per_node": 8},
    }.items()
}


def _bad(key: str, problem: str, value: Any) -> InputError:
    return InputError(f"plan key {key!r}: {problem} (got {value!r})")


def _check_name(key: str, value: Any) -> str:
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise _bad(key, "expected a plain name: letters, digits, '.', '_', '-', at most 63, starting with a "
                   "letter or digit", value)
    return value


def _check_uri(key: str, value: Any) -> str:
    problem = uri_problem(value)
    if problem:
        raise _bad(key, problem, value)
    return value.rstrip("/")


def trainer_keys(plan: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a launch plan the trainer reads, as it is (built from checked params: no check here)."""
    return {k: v for k, v in plan.items() if k not in LAUNCH_KEYS}


def complete(raw: Mapping[str, Any]) -> dict[str, Any]:
    """`raw` with its backend's defaults and the derived global batch size, in PLAN_KEYS order.

    No checks: `validate_plan` calls it on values it has checked, `build_plan` on values
    `validate_params` has checked.
    """
    plan: dict[str, Any] = {**_DEFAULTS[raw["backend"]], **raw}
    if "global_batch_size" not in plan:
        data_parallel = plan["nodes"] * plan["gpus_per_node"] // (plan["tensor_parallel"] * plan["pipeline_parallel"])
        plan["global_batch_size"] = plan["micro_batch_size"] * data_parallel
    return {key: plan[key] for key in PLAN_KEYS}


def validate_plan(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Return the plan with defaults filled in, or raise InputError naming the first bad key.

    Unknown keys are refused (a typo must not silently fall back to a default).
    """
    if not isinstance(raw, Mapping):
        raise InputError(f"the plan must be a JSON object (got {type(raw).__name__})")
    for key in raw:
        if key not in PLAN_KEYS:
            raise InputError(f"unknown plan key {key!r}; expected some of: {', '.join(PLAN_KEYS)}")
    for key in REQUIRED_KEYS:
        if key not in raw:
            raise InputError(f"plan key {key!r} is required")

    backend = raw["backend"]
    if backend not in BACKENDS:
        raise _bad("backend", f"expected one of {', '.join(BACKENDS)}", backend)
    plan: dict[str, Any] = {**_DEFAULTS[backend], **raw}

    plan["run_name"] = _check_name("run_name", plan["run_name"])
    plan["base_model"] = _check_name("base_model", plan["base_model"])
    plan["dataset_uri"] = _check_uri("dataset_uri", plan["dataset_uri"])
    plan["output_uri"] = _check_uri("output_uri", plan["output_uri"])

    ckpt = plan["checkpoint_dir"]
    if not isinstance(ckpt, str) or not ckpt.startswith("/"):
        raise _bad("checkpoint_dir", "expected an absolute filesystem path (a shared mount on EKS)", ckpt)
    if CONTROL_RE.search(ckpt):
        raise _bad("checkpoint_dir", "control characters are not allowed", ckpt)
    if ".." in ckpt.split("/"):
        raise _bad("checkpoint_dir", "'..' path segments are not allowed", ckpt)
    plan["checkpoint_dir"] = ckpt.rstrip("/") or "/"

    for key, rule in PLAN_RULES.items():
        if key == "global_batch_size" and key not in raw:
            continue
        plan[key] = rule.check(plan[key], label=f"plan key {key!r}")

    world = plan["nodes"] * plan["gpus_per_node"]
    model_parallel = plan["tensor_parallel"] * plan["pipeline_parallel"]
    if world % model_parallel:
        raise _bad("tensor_parallel", f"tensor_parallel x pipeline_parallel must divide nodes x gpus_per_node = "
                   f"{world}", plan["tensor_parallel"])
    plan = complete(plan)
    per_step = plan["micro_batch_size"] * world // model_parallel
    if plan["global_batch_size"] % per_step:
        raise _bad("global_batch_size", f"must be a multiple of micro_batch_size x data-parallel size = {per_step}",
                   plan["global_batch_size"])

    if backend == "tiny":
        if model_parallel != 1:
            raise _bad("tensor_parallel", "the tiny backend is data-parallel only (tensor_parallel = "
                       "pipeline_parallel = 1)", plan["tensor_parallel"])
        if plan["seq_length"] > 2048:
            raise _bad("seq_length", "the tiny backend supports at most 2048", plan["seq_length"])
    else:
        base_model_rule().check(plan["base_model"], label="plan key 'base_model'")
    return plan
