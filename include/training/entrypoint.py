"""The trainer entrypoint: one program for both profiles.

On EKS every process of every pod of the Indexed Job runs it under torchrun (NeMo backend); on the
local profile `local_launcher` starts N copies of it with the same rank environment (tiny backend).
The plan arrives as one JSON argument (or a mounted file) and is validated before anything runs, so
nothing a user typed is ever parsed by a shell or trusted unchecked.

Kept import-light (no torch, no NeMo, no Airflow at module level): the DAG side imports
`validate_plan` from here, and the NeMo image has no Airflow.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from include.training.restarts import PEER_LOST_EXIT_CODE, RESTART_KEYS, USER_ERROR_EXIT_CODE, is_peer_loss
from include.uris import CONTROL_RE, uri_problem

DEFAULT_XCOM_PATH = "/airflow/xcom/return.json"
RESULT_FILE = "result.json"  # rank 0's result, also published next to the model
DATASET_FILES = ("training.jsonl", "validation.jsonl", "test.jsonl")
BACKENDS = ("tiny", "nemo")
METHODS = ("lora", "full")

# Plain names only: they end up in paths, Job names and NeMo run names.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


class PlanError(ValueError):
    """The training plan has a missing, unknown or invalid key; the message names it."""


# key -> (kind, bounds). Required keys have no default; the others get one per backend.
_INT_KEYS: dict[str, tuple[int, int]] = {
    "lora_rank": (1, 1024),
    "max_steps": (1, 10_000_000),
    "micro_batch_size": (1, 65_536),
    "global_batch_size": (1, 1_048_576),
    "seq_length": (8, 131_072),
    "checkpoint_interval": (1, 10_000_000),
    "seed": (0, 2**31 - 1),
    "tensor_parallel": (1, 64),
    "pipeline_parallel": (1, 64),
    "nodes": (1, 1024),
    "gpus_per_node": (1, 64),
}
REQUIRED_KEYS = ("run_name", "backend", "dataset_uri", "output_uri", "checkpoint_dir", "base_model")
PLAN_KEYS = (*REQUIRED_KEYS, "method", "learning_rate", *_INT_KEYS)

_DEFAULTS: dict[str, dict[str, Any]] = {
    # A byte-level model trained from scratch wants a large LR and short sequences.
    "tiny": {
        "method": "full",
        "lora_rank": 8,
        "max_steps": 150,
        "learning_rate": 3e-3,
        "micro_batch_size": 8,
        "seq_length": 128,
        "checkpoint_interval": 50,
        "seed": 1234,
        "tensor_parallel": 1,
        "pipeline_parallel": 1,
        "nodes": 1,
        "gpus_per_node": 1,
    },
    # NeMo recipe defaults for an 8B-class LoRA fine-tune.
    "nemo": {
        "method": "lora",
        "lora_rank": 8,
        "max_steps": 1000,
        "learning_rate": 1e-4,
        "micro_batch_size": 1,
        "seq_length": 2048,
        "checkpoint_interval": 200,
        "seed": 1234,
        "tensor_parallel": 1,
        "pipeline_parallel": 1,
        "nodes": 1,
        "gpus_per_node": 8,
    },
}


def _bad(key: str, problem: str, value: Any) -> PlanError:
    return PlanError(f"plan key {key!r}: {problem} (got {value!r})")


def _check_name(key: str, value: Any) -> str:
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise _bad(
            key,
            "expected a plain name: letters, digits, '.', '_', '-', at most 63, starting with a letter or digit",
            value,
        )
    return value


def _check_no_traversal(key: str, value: str, path: str) -> None:
    if CONTROL_RE.search(value):
        raise _bad(key, "control characters are not allowed", value)
    if ".." in path.split("/"):
        raise _bad(key, "'..' path segments are not allowed", value)


def _check_uri(key: str, value: Any) -> str:
    problem = uri_problem(value)
    if problem:
        raise _bad(key, problem, value)
    return value.rstrip("/")


def _check_int(key: str, value: Any) -> int:
    low, high = _INT_KEYS[key]
    # bool is an int subclass; `true` in JSON is never a step count.
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(key, "expected an integer", value)
    if not low <= value <= high:
        raise _bad(key, f"expected {low} <= value <= {high}", value)
    return value


# Keys a launcher needs that the trainer does not read (the Job renderer's placement inputs).
LAUNCH_KEYS = ("dag_id", "run_id", "pool", "instance_type", "image", *RESTART_KEYS)


def trainer_plan(plan: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a launch plan the trainer reads, validated and with its defaults filled in."""
    return validate_plan({k: v for k, v in plan.items() if k not in LAUNCH_KEYS})


def validate_plan(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Return the plan with defaults filled in, or raise PlanError naming the first bad key.

    Unknown keys are refused (a typo must not silently fall back to a default).
    """
    if not isinstance(raw, Mapping):
        raise PlanError(f"the plan must be a JSON object (got {type(raw).__name__})")
    for key in raw:
        if key not in PLAN_KEYS:
            raise PlanError(f"unknown plan key {key!r}; expected some of: {', '.join(PLAN_KEYS)}")
    for key in REQUIRED_KEYS:
        if key not in raw:
            raise PlanError(f"plan key {key!r} is required")

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
    _check_no_traversal("checkpoint_dir", ckpt, ckpt)
    plan["checkpoint_dir"] = ckpt.rstrip("/") or "/"

    if plan["method"] not in METHODS:
        raise _bad("method", f"expected one of {', '.join(METHODS)}", plan["method"])
    lr = plan["learning_rate"]
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr) or not 0 < lr <= 1:
        raise _bad("learning_rate", "expected a number with 0 < value <= 1", lr)
    plan["learning_rate"] = float(lr)
    for key in _INT_KEYS:
        if key == "global_batch_size" and key not in raw:
            continue
        plan[key] = _check_int(key, plan[key])

    world = plan["nodes"] * plan["gpus_per_node"]
    model_parallel = plan["tensor_parallel"] * plan["pipeline_parallel"]
    if world % model_parallel:
        raise _bad(
            "tensor_parallel",
            f"tensor_parallel x pipeline_parallel must divide nodes x gpus_per_node = {world}",
            plan["tensor_parallel"],
        )
    data_parallel = world // model_parallel
    per_step = plan["micro_batch_size"] * data_parallel
    plan.setdefault("global_batch_size", per_step)
    if plan["global_batch_size"] % per_step:
        raise _bad(
            "global_batch_size",
            f"must be a multiple of micro_batch_size x data-parallel size = {per_step}",
            plan["global_batch_size"],
        )

    if backend == "tiny":
        if model_parallel != 1:
            raise _bad(
                "tensor_parallel",
                "the tiny backend is data-parallel only (tensor_parallel = pipeline_parallel = 1)",
                plan["tensor_parallel"],
            )
        if plan["seq_length"] > 2048:
            raise _bad("seq_length", "the tiny backend supports at most 2048", plan["seq_length"])
    else:
        from include.training.nemo_backend import NEMO_MODELS  # pure Python, no NeMo import

        if plan["base_model"] not in NEMO_MODELS:
            raise _bad(
                "base_model",
                f"not a supported NeMo model; expected one of {', '.join(sorted(NEMO_MODELS))}",
                plan["base_model"],
            )
    return {key: plan[key] for key in PLAN_KEYS}


@dataclass(frozen=True)
class RankEnv:
    """Where this process sits in the job: what an Indexed Job plus torchrun put in the environment."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> RankEnv:
        env = os.environ if environ is None else environ

        def read_int(name: str, default: int, fallback: str | None = None) -> int:
            raw = env.get(name) or (env.get(fallback) if fallback else None)
            if raw is None or raw == "":
                return default
            try:
                value = int(raw)
            except ValueError:
                raise PlanError(f"environment {name}={raw!r}: expected an integer") from None
            if value < 0:
                raise PlanError(f"environment {name}={raw!r}: expected a non-negative integer")
            return value

        out = cls(
            rank=read_int("RANK", 0),
            world_size=read_int("WORLD_SIZE", 1),
            local_rank=read_int("LOCAL_RANK", 0),
            # The Indexed Job gives each pod its index; NODE_RANK is set from it in the pod spec.
            node_rank=read_int("NODE_RANK", 0, fallback="JOB_COMPLETION_INDEX"),
            master_addr=env.get("MASTER_ADDR") or "127.0.0.1",
            master_port=read_int("MASTER_PORT", 29500),
        )
        if out.world_size < 1 or out.rank >= out.world_size:
            raise PlanError(f"environment RANK={out.rank} WORLD_SIZE={out.world_size}: need 0 <= RANK < WORLD_SIZE")
        return out


def wait_for_master_hook(env: RankEnv) -> None:
    """Ranks off node 0 block here until rank 0's store accepts a TCP connection.

    A DNS answer (or a fixed IP) says nothing about the store being up. The bound is
    LLMOPS_RDZV_WAIT_TIMEOUT_S (the plan's rendezvous_timeout_s); see include.training.rendezvous.
    """
    if env.node_rank == 0:
        return
    from include.training.rendezvous import DEFAULT_WAIT_TIMEOUT_S, WAIT_TIMEOUT_ENV, wait_for_store

    timeout = float(os.environ.get(WAIT_TIMEOUT_ENV) or DEFAULT_WAIT_TIMEOUT_S)
    wait_for_store(env.master_addr, env.master_port, timeout_s=timeout)


# ---- object storage: file:// and s3:// through fsspec (no Airflow in the trainer image) ----


def _local_path(uri: str) -> Path | None:
    return Path(uri[len("file://") :]) if uri.startswith("file://") else None


def stage_dataset(uri: str, workdir: Path) -> Path:
    """A local directory with the dataset files: the directory itself for file://, a copy otherwise."""
    local = _local_path(uri)
    if local is not None:
        if not (local / "training.jsonl").is_file():
            raise FileNotFoundError(f"dataset {uri}: no training.jsonl")
        return local
    import fsspec

    fs, root = fsspec.core.url_to_fs(uri)
    dest = workdir / "dataset"
    dest.mkdir(parents=True, exist_ok=True)
    for name in DATASET_FILES:
        remote = f"{root.rstrip('/')}/{name}"
        if fs.exists(remote):
            fs.get_file(remote, str(dest / name))
    if not (dest / "training.jsonl").is_file():
        raise FileNotFoundError(f"dataset {uri}: no training.jsonl")
    return dest


def publish_dir(local_dir: Path, uri: str) -> None:
    """Copy a finished local directory to `uri`, replacing what was there.

    Locally the copy lands next to the target and is renamed into place, so a reader never sees a
    half-written model; on S3 objects appear file by file (readers key off metrics.json, written last).
    """
    local = _local_path(uri)
    if local is not None:
        local.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{local.name}.", dir=local.parent))
        shutil.copytree(local_dir, staging, dirs_exist_ok=True)
        if local.exists():
            trash = local.with_name(f".{local.name}.old-{os.getpid()}")
            local.rename(trash)
            staging.rename(local)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            staging.rename(local)
        return
    import fsspec

    fs, root = fsspec.core.url_to_fs(uri)
    root = root.rstrip("/")
    for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        fs.put_file(str(path), f"{root}/{path.relative_to(local_dir).as_posix()}")


def publish_file(local_file: Path, uri: str) -> None:
    local = _local_path(uri)
    if local is not None:
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.tmp-{os.getpid()}")
        shutil.copyfile(local_file, tmp)
        os.replace(tmp, local)
        return
    import fsspec

    fs, path = fsspec.core.url_to_fs(uri)
    fs.put_file(str(local_file), path)


def write_result(result: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Path:
    """Write the XCom the KubernetesPodOperator sidecar (or the local launcher) picks up."""
    env = os.environ if environ is None else environ
    path = Path(env.get("LLMOPS_XCOM_PATH") or DEFAULT_XCOM_PATH)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(result, sort_keys=True))
    os.replace(tmp, path)
    return path


def run(plan: dict[str, Any], env: RankEnv) -> dict[str, Any] | None:
    """Train per the (validated) plan; rank 0 publishes outputs and returns the result."""
    expected = plan["nodes"] * plan["gpus_per_node"]
    if env.world_size != expected:
        raise PlanError(f"WORLD_SIZE={env.world_size} but the plan asks for nodes x gpus_per_node = {expected}")
    if plan["backend"] == "tiny":
        from include.training import tiny as backend
    else:
        from include.training import nemo_backend as backend
    wait_for_master_hook(env)  # after the heavy imports: rank 0 pays them too before its store is up

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"llmops-train-{env.rank}-") as tmp:
        workdir = Path(tmp)
        dataset_dir = stage_dataset(plan["dataset_uri"], workdir)
        export_dir = workdir / "export"
        export_dir.mkdir()
        out = backend.train(plan, env, dataset_dir=dataset_dir, export_dir=export_dir)
        if not env.is_main:
            return None
        metrics = dict(out["metrics"])
        metrics.setdefault("train_seconds", round(time.monotonic() - started, 3))
        result = {
            "backend": plan["backend"],
            "checkpoint_uri": out["checkpoint_uri"],
            "model_uri": f"{plan['output_uri']}/model",
            "metrics": metrics,
        }
        # metrics.json, then result.json last: its presence says everything next to it is complete,
        # and Airflow reads it from storage on either profile (no pod sidecar needed).
        publish_dir(export_dir / "model", f"{plan['output_uri']}/model")
        publish_file(export_dir / "metrics.json", f"{plan['output_uri']}/metrics.json")
        (workdir / RESULT_FILE).write_text(json.dumps(result, sort_keys=True))
        publish_file(workdir / RESULT_FILE, f"{plan['output_uri']}/{RESULT_FILE}")
    return result


def _parse_args(argv: list[str] | None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m include.training.entrypoint", description=__doc__)
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--plan", help="the training plan as one JSON object")
    src.add_argument("--plan-file", type=Path, help="a file holding the plan JSON (e.g. a ConfigMap mount)")
    args = parser.parse_args(argv)
    try:
        text = args.plan if args.plan is not None else args.plan_file.read_text()
    except OSError as exc:
        raise PlanError(f"cannot read --plan-file: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PlanError(f"the plan is not valid JSON: {exc}") from None


# USER_ERROR_EXIT_CODE (a bad plan: fail at once) and PEER_LOST_EXIT_CODE: include/training/restarts.py


def main(argv: list[str] | None = None) -> int:
    try:
        plan = validate_plan(_parse_args(argv))
        env = RankEnv.from_environ()
        result = run(plan, env)
    except PlanError as exc:
        print(f"llmops trainer: {exc}", file=sys.stderr)
        return USER_ERROR_EXIT_CODE
    except Exception as exc:
        if not is_peer_loss(exc):
            raise
        import traceback

        traceback.print_exc()
        print(f"llmops trainer: lost a peer or rank 0's store ({type(exc).__name__}); exit "
              f"{PEER_LOST_EXIT_CODE} so the whole group restarts", file=sys.stderr)
        return PEER_LOST_EXIT_CODE
    if result is not None:
        write_result(result)
        print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
