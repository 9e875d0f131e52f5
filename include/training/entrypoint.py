"""The trainer entrypoint: one program for both profiles.

On EKS every process of every pod of the JobSet's Indexed Job runs it under torchrun (NeMo backend); on the
local profile `local_launcher` starts N copies of it with the same rank environment (tiny backend).
The plan arrives as one JSON argument and is validated before anything runs, so
nothing a user typed is ever parsed by a shell or trusted unchecked: Airflow checked the params once
already, but this process may run a newer image, or a hand-written plan.

Kept import-light (no torch, no NeMo, no Airflow at module level): the NeMo image has no Airflow.
The plan's rules are in plan.py and params.py; storage is include/storage/files.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from include.container import USER_ERROR_EXIT_CODE, write_result
from include.errors import InputError
from include.storage.files import publish_dir, publish_file, stage_dir
from include.training.plan import validate_plan
from include.training.restarts import PEER_LOST_EXIT_CODE, is_peer_loss
from include.validation import Rule

RESULT_FILE = "result.json"  # rank 0's result, also published next to the model
DATASET_FILES = ("training.jsonl", "validation.jsonl", "test.jsonl")


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
                raise InputError(f"environment {name}={raw!r}: expected an integer") from None
            return Rule(name, "integer", 0).check(value, f"environment {name}")

        out = cls(
            rank=read_int("RANK", 0),
            world_size=read_int("WORLD_SIZE", 1),
            local_rank=read_int("LOCAL_RANK", 0),
            # The (child) Indexed Job gives each pod its index; NODE_RANK is set from it in the pod spec.
            node_rank=read_int("NODE_RANK", 0, fallback="JOB_COMPLETION_INDEX"),
            master_addr=env.get("MASTER_ADDR") or "127.0.0.1",
            master_port=read_int("MASTER_PORT", 29500),
        )
        if out.world_size < 1 or out.rank >= out.world_size:
            raise InputError(f"environment RANK={out.rank} WORLD_SIZE={out.world_size}: need 0 <= RANK < WORLD_SIZE")
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


def stage_dataset(uri: str, workdir: Path) -> Path:
    """A local directory with the dataset files: the directory itself for file://, a copy otherwise."""
    try:
        local = stage_dir(uri, workdir / "dataset", DATASET_FILES)
    except FileNotFoundError:
        local = None
    if local is None or not (local / "training.jsonl").is_file():
        raise FileNotFoundError(f"dataset {uri}: no training.jsonl")
    return local


def run(plan: dict[str, Any], env: RankEnv) -> dict[str, Any] | None:
    """Train per the (validated) plan; rank 0 publishes outputs and returns the result."""
    expected = plan["nodes"] * plan["gpus_per_node"]
    if env.world_size != expected:
        raise InputError(f"WORLD_SIZE={env.world_size} but the plan asks for nodes x gpus_per_node = {expected}")
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
    parser.add_argument("--plan", required=True, help="the training plan as one JSON object")
    args = parser.parse_args(argv)
    try:
        return json.loads(args.plan)
    except json.JSONDecodeError as exc:
        raise InputError(f"the plan is not valid JSON: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    try:
        plan = validate_plan(_parse_args(argv))
        env = RankEnv.from_environ()
        result = run(plan, env)
    except InputError as exc:
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
    from include.storage.files import use_plain_fsspec

    use_plain_fsspec()  # a rank is a process of its own: credentials from its environment, not a task
    sys.exit(main())
