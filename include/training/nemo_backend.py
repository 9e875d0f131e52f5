"""The EKS backend: NeMo 2 fine-tuning recipes, run inside the JobSet's Indexed Job under torchrun.

Everything that imports NeMo is inside functions, and nothing else in the project imports this
module's NeMo paths: the Airflow image and the tests have no NeMo. What the tests check is
`recipe_settings`, a pure mapping from the plan to the values the recipe gets, so the plan ->
recipe contract is pinned without a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class NemoModel:
    """A base model the recipes know: `llm.<recipe>.finetune_recipe` and its import classes."""

    recipe: str  # module under nemo.collections.llm.recipes
    hf_id: str  # what the recipe restores from: nemo://<hf_id> after llm.import_ckpt
    model_class: str  # llm.<model_class>(llm.<config_class>()) for llm.import_ckpt
    config_class: str
    params_billion: float  # approximate, for capacity checks (full fine-tuning memory)


NEMO_MODELS: dict[str, NemoModel] = {
    "llama3_8b": NemoModel("llama3_8b", "meta-llama/Meta-Llama-3-8B", "LlamaModel", "Llama3Config8B", 8.03),
    "llama31_8b": NemoModel("llama31_8b", "meta-llama/Meta-Llama-3.1-8B", "LlamaModel", "Llama31Config8B", 8.03),
    "llama32_1b": NemoModel("llama32_1b", "meta-llama/Llama-3.2-1B", "LlamaModel", "Llama32Config1B", 1.24),
    "llama32_3b": NemoModel("llama32_3b", "meta-llama/Llama-3.2-3B", "LlamaModel", "Llama32Config3B", 3.21),
    "llama3_70b": NemoModel("llama3_70b", "meta-llama/Meta-Llama-3-70B", "LlamaModel", "Llama3Config70B", 70.6),
    "mistral_7b": NemoModel("mistral_7b", "mistralai/Mistral-7B-v0.3", "MistralModel", "MistralConfig7B", 7.25),
    "qwen2_7b": NemoModel("qwen2_7b", "Qwen/Qwen2-7B", "Qwen2Model", "Qwen2Config7B", 7.62),
}

# Bytes per parameter while training in bf16 with Adam: weights 2 + grads 2 (+ fp32 master 4 and
# two fp32 moments 8 for every trained parameter). LoRA trains well under 1% of them.
_FULL_BYTES_PER_PARAM = 16
_FROZEN_BYTES_PER_PARAM = 2


def estimated_training_memory_gb(base_model: str, method: str) -> float:
    """Rough GPU memory for weights + optimizer state (no activations), summed over all GPUs.

    Good enough to refuse plans that cannot fit (an 8B full fine-tune needs ~128 GB before
    activations, i.e. more than one 80 GB GPU unless sharded by TP/PP or a distributed optimizer).
    """
    params = NEMO_MODELS[base_model].params_billion * 1e9
    per_param = _FULL_BYTES_PER_PARAM if method == "full" else _FROZEN_BYTES_PER_PARAM * 1.02
    return round(params * per_param / 1e9, 1)


def recipe_settings(plan: dict[str, Any], dataset_root: str) -> dict[str, Any]:
    """Everything the NeMo recipe gets from a validated plan, as plain data.

    Checkpoints and logs go under checkpoint_dir/run_name (the FSx mount), and the logger has no
    datetime version, so a restarted Job finds the previous checkpoints and AutoResume continues
    from them instead of starting over.
    """
    model = NEMO_MODELS[plan["base_model"]]
    lora = plan["method"] == "lora"
    interval = min(plan["checkpoint_interval"], plan["max_steps"])
    return {
        "recipe": model.recipe,
        "hf_id": model.hf_id,
        "factory": {
            "name": plan["run_name"],
            "dir": plan["checkpoint_dir"],
            "num_nodes": plan["nodes"],
            "num_gpus_per_node": plan["gpus_per_node"],
            "peft_scheme": "lora" if lora else None,
        },
        "trainer": {
            "max_steps": plan["max_steps"],
            "val_check_interval": interval,
            "limit_val_batches": 32,
            "log_every_n_steps": 1,
        },
        "strategy": {
            "tensor_model_parallel_size": plan["tensor_parallel"],
            "pipeline_model_parallel_size": plan["pipeline_parallel"],
        },
        "checkpoint": {
            "every_n_train_steps": interval,
            "save_last": True,
            "save_top_k": 2,
        },
        "log": {"use_datetime_version": False},
        "optim": {"lr": plan["learning_rate"]},
        "lora": {"dim": plan["lora_rank"], "alpha": 2 * plan["lora_rank"]} if lora else None,
        "data": {
            "dataset_root": dataset_root,
            "seq_length": plan["seq_length"],
            "micro_batch_size": plan["micro_batch_size"],
            "global_batch_size": plan["global_batch_size"],
            "seed": plan["seed"],
        },
        "resume": {"resume_if_exists": True, "resume_ignore_no_checkpoint": True},
        "model": {"seq_length": plan["seq_length"]},
    }


def run_dir(plan: dict[str, Any]) -> Path:
    return Path(plan["checkpoint_dir"]) / plan["run_name"]


# ---------------------------------------------------------------- NeMo (lazy; needs the image)


def build_recipe(settings: dict[str, Any]):  # pragma: no cover - needs NeMo
    import nemo_run as run
    from nemo.collections import llm

    recipe = getattr(llm, settings["recipe"]).finetune_recipe(**settings["factory"])
    for key, value in settings["trainer"].items():
        setattr(recipe.trainer, key, value)
    for key, value in settings["strategy"].items():
        setattr(recipe.trainer.strategy, key, value)
    for key, value in settings["checkpoint"].items():
        setattr(recipe.log.ckpt, key, value)
    for key, value in settings["log"].items():
        setattr(recipe.log, key, value)
    recipe.optim.config.lr = settings["optim"]["lr"]
    if settings["lora"] is not None:
        recipe.peft.dim = settings["lora"]["dim"]
        recipe.peft.alpha = settings["lora"]["alpha"]
    recipe.model.config.seq_length = settings["model"]["seq_length"]
    recipe.data = run.Config(llm.FineTuningDataModule, **settings["data"])
    # Keep the recipe's restore_config (the imported base weights) for a first start; resume from
    # our own checkpoints when they exist.
    for key, value in settings["resume"].items():
        setattr(recipe.resume, key, value)
    return recipe


def _restore_hf_id(recipe, default: str) -> str:  # pragma: no cover - needs NeMo
    path = str(getattr(getattr(recipe.resume, "restore_config", None), "path", "") or "")
    return path.removeprefix("nemo://") if path.startswith("nemo://") else default


def ensure_base_checkpoint(
    model: NemoModel, hf_id: str, env: Any, timeout_s: float = 4 * 3600
) -> None:  # pragma: no cover
    """Convert the Hugging Face base model to NeMo format once (into NEMO_HOME).

    One process per node tries; an O_EXCL lock file makes exactly one of them do it when
    NEMO_HOME is shared (FSx), and each node convert its own when it is not.
    """
    from nemo.collections import llm

    home = Path(os.environ.get("NEMO_HOME", Path.home() / ".cache" / "nemo"))
    target = home / "models" / hf_id
    done = target / ".llmops-imported"
    lock = home / "models" / f".{hf_id.replace('/', '--')}.import-lock"
    deadline = time.monotonic() + timeout_s
    while not done.exists():
        if env.local_rank == 0:
            lock.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                if time.time() - lock.stat().st_mtime > timeout_s:
                    lock.unlink(missing_ok=True)  # a crashed importer; take over
                    continue
            else:
                with os.fdopen(fd, "w") as fh:
                    fh.write(f"{socket.gethostname()} {os.getpid()}\n")
                try:
                    llm.import_ckpt(
                        model=getattr(llm, model.model_class)(getattr(llm, model.config_class)()),
                        source=f"hf://{hf_id}",
                    )
                    done.touch()
                finally:
                    lock.unlink(missing_ok=True)
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"base model {hf_id} was not imported into {target} within {timeout_s}s")
        time.sleep(10)


def _step_metrics_callback(plan: dict[str, Any], state: dict[str, Any]):  # pragma: no cover
    """Write the same metrics.jsonl series as the tiny backend, from global rank 0."""
    from lightning.pytorch.callbacks import Callback

    from include.training.tiny import MetricsLog

    log = MetricsLog(run_dir(plan) / "metrics.jsonl")

    class StepMetrics(Callback):
        def on_train_start(self, trainer, pl_module):
            state["resumed_from_step"] = trainer.global_step
            state["started"] = time.monotonic()
            if trainer.is_global_zero:
                log.truncate_after(trainer.global_step)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            loss = trainer.callback_metrics.get("reduced_train_loss")
            if not trainer.is_global_zero or loss is None:
                return
            lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None
            log.append(
                {
                    "step": trainer.global_step,
                    "loss": round(float(loss), 6),
                    "lr": lr,
                    "time": round(time.time(), 3),
                }
            )

    return StepMetrics()


def _latest_nemo_checkpoint(plan: dict[str, Any]) -> Path:
    """The newest finished NeMo checkpoint of this run (`*-last` preferred, else newest step)."""
    ckpts = run_dir(plan) / "checkpoints"
    candidates = [p for p in ckpts.glob("*") if p.is_dir() and (p / "context").is_dir()]
    if not candidates:
        raise FileNotFoundError(f"no NeMo checkpoint under {ckpts}")
    last = [p for p in candidates if p.name.endswith("-last")]
    return max(last or candidates, key=lambda p: p.stat().st_mtime)


def export_command(checkpoint: Path, output: Path, *, lora: bool, python: str = sys.executable) -> list[str]:
    """Export runs in a fresh process: the training process still holds its distributed state."""
    argv = [
        python,
        "-m",
        "include.training.nemo_backend",
        "export",
        "--checkpoint",
        str(checkpoint),
        "--output",
        str(output),
    ]
    return [*argv, "--merge-lora"] if lora else argv


def export_environment(environ: dict[str, str], master_port: int) -> dict[str, str]:
    """A single-process environment for the export: torchrun's rank and elastic variables would
    make Lightning join the (finished) training job, and its port is still taken."""
    dropped = ("TORCHELASTIC_", "GROUP_", "ROLE_", "LOCAL_WORLD_SIZE", "NODE_RANK", "JOB_COMPLETION_INDEX")
    env = {k: v for k, v in environ.items() if not k.startswith(dropped)}
    env.update(
        {
            "RANK": "0",
            "WORLD_SIZE": "1",
            "LOCAL_RANK": "0",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(master_port),
        }
    )
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _export(checkpoint: Path, output: Path, merge_lora: bool) -> None:  # pragma: no cover - needs NeMo
    from nemo.collections import llm

    source = checkpoint
    if merge_lora:
        source = output.parent / "merged"
        llm.peft.merge_lora(lora_checkpoint_path=str(checkpoint), output_path=str(source))
    llm.export_ckpt(path=Path(source), target="hf", output_path=output, overwrite=True)


def train(plan: dict[str, Any], env: Any, *, dataset_dir: Path, export_dir: Path) -> dict[str, Any]:  # pragma: no cover
    """Fine-tune per the plan on this rank; global rank 0 exports to Hugging Face format."""
    import fiddle as fdl

    from include.training.tiny import MetricsLog

    settings = recipe_settings(plan, str(dataset_dir))
    model = NEMO_MODELS[plan["base_model"]]
    recipe = build_recipe(settings)
    ensure_base_checkpoint(model, _restore_hf_id(recipe, model.hf_id), env)

    state: dict[str, Any] = {"tokens_per_step": plan["global_batch_size"] * plan["seq_length"]}
    finetune = fdl.build(recipe)
    finetune.keywords["trainer"].callbacks.append(_step_metrics_callback(plan, state))
    finetune()
    if not env.is_main:
        return {}

    checkpoint = _latest_nemo_checkpoint(plan)
    hf_dir = export_dir / "model"
    subprocess.run(
        export_command(checkpoint, hf_dir, lora=plan["method"] == "lora"),
        check=True,
        env=export_environment(dict(os.environ), _free_port()),
    )
    history = MetricsLog(run_dir(plan) / "metrics.jsonl").read()
    seconds = time.monotonic() - state.get("started", time.monotonic())
    metrics = {
        "initial_loss": history[0]["loss"] if history else None,
        "final_loss": history[-1]["loss"] if history else None,
        "steps": history[-1]["step"] if history else state.get("resumed_from_step", 0),
        "resumed_from_step": state.get("resumed_from_step", 0),
        # Upper bound: NeMo pads to seq_length unless sequences are packed.
        "tokens_seen": (history[-1]["step"] if history else 0) * state["tokens_per_step"],
        "train_seconds": round(seconds, 3),
    }
    (export_dir / "metrics.json").write_text(
        json.dumps({"run_name": plan["run_name"], "backend": "nemo", **metrics, "history": history}, sort_keys=True)
    )
    return {"checkpoint_uri": checkpoint.as_uri(), "metrics": metrics}


def _main(argv: list[str] | None = None) -> int:  # pragma: no cover - needs NeMo
    parser = argparse.ArgumentParser(prog="python -m include.training.nemo_backend")
    sub = parser.add_subparsers(dest="command", required=True)
    exp = sub.add_parser("export", help="NeMo checkpoint -> Hugging Face directory")
    exp.add_argument("--checkpoint", type=Path, required=True)
    exp.add_argument("--output", type=Path, required=True)
    exp.add_argument("--merge-lora", action="store_true")
    args = parser.parse_args(argv)
    _export(args.checkpoint, args.output, args.merge_lora)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_main())
