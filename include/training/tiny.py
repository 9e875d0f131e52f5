"""The local backend: a tiny byte-level causal transformer trained from scratch on CPU.

It stands in for NeMo on the `local` profile and keeps every contract the EKS path has: the same
rank environment (DDP over gloo instead of NCCL), atomic step checkpoints with resume on a shared
directory, a per-step metrics series, and a Hugging Face-like export (include/tinylm.py, the model
format the evaluation stage loads). Data and batching: tiny_data.py. Checkpoints: below.
The plan's `method` and `lora_rank` are accepted and ignored: all weights train from scratch.
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from contextlib import nullcontext
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from include.tinylm import TinyByteLM, TinyConfig, export_model
from include.training import checkpoints
from include.training.progress import TrainingProgress
from include.training.tiny_data import IGNORE_INDEX, BatchPlan, collate, encode_example, read_records

KEEP_CHECKPOINTS = 3
VALIDATION_RECORDS = 128


def token_loss_sum(model: nn.Module, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = model(ids)
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")


# ---------------------------------------------------------------- checkpoints and metrics


# The format and its checks live in include/training/checkpoints.py; these keep tiny's call sites.
_write_durable = checkpoints.write_durable


def write_checkpoint(root: Path, step: int, state: dict[str, Any], meta: dict[str, Any]) -> Path:
    """`state` as `state.pt` in an atomic, checksummed checkpoint `root/step-<step>/`."""
    return checkpoints.write_checkpoint(root, step, lambda d: torch.save(state, d / "state.pt"), meta)


complete_checkpoints = checkpoints.complete_checkpoints
latest_checkpoint = checkpoints.latest_complete  # newest that verifies; logs why newer ones were skipped
clean_partial_checkpoints = checkpoints.clean_partial


def prune_checkpoints(root: Path, keep: int = KEEP_CHECKPOINTS) -> None:
    checkpoints.prune(root, keep)


class MetricsLog:
    """`metrics.jsonl` beside the checkpoints: one line per step, continued across resumes."""

    def __init__(self, path: Path):
        self.path = path

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut short by a kill
            if isinstance(rec, dict) and isinstance(rec.get("step"), int):
                out.append(rec)
        return out

    def truncate_after(self, step: int) -> list[dict[str, Any]]:
        """Keep each step <= `step` once; later lines are from steps the resume will redo."""
        seen: dict[int, dict[str, Any]] = {}
        for rec in self.read():
            if rec["step"] <= step and rec["step"] not in seen:
                seen[rec["step"]] = rec
        kept = [seen[s] for s in sorted(seen)]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        _write_durable(tmp, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept).encode())
        os.replace(tmp, self.path)
        return kept

    def append(self, rec: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec, sort_keys=True) + "\n")


# ---------------------------------------------------------------- training


def lr_at(step: int, max_steps: int, peak: float) -> float:
    """Linear warmup, then cosine decay to 10% of peak: stateless, so resume needs no scheduler."""
    import math

    warmup = max(1, min(20, max_steps // 10))
    if step <= warmup:
        return peak * step / warmup
    progress = (step - warmup) / max(1, max_steps - warmup)
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress))))


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])


def _broadcast(obj: Any, world: int) -> Any:
    if world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@torch.no_grad()
def evaluate_loss(model: nn.Module, examples: list[tuple[list[int], list[int]]], batch: int = 16) -> float:
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(examples), batch):
        ids, labels = collate(examples[i : i + batch])
        total += float(token_loss_sum(model, ids, labels))
        count += int((labels != IGNORE_INDEX).sum())
    model.train()
    return total / max(count, 1)


def train(plan: dict[str, Any], env: Any, *, dataset_dir: Path, export_dir: Path) -> dict[str, Any]:
    """Run (or resume) the plan on this rank; rank 0 also writes the export into `export_dir`."""
    torch.set_num_threads(1)
    world, rank = env.world_size, env.rank
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://{env.master_addr}:{env.master_port}",
            rank=rank,
            world_size=world,
            timeout=timedelta(minutes=5),
        )
    try:
        return _train(plan, env, dataset_dir=dataset_dir, export_dir=export_dir)
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _train(plan: dict[str, Any], env: Any, *, dataset_dir: Path, export_dir: Path) -> dict[str, Any]:
    world, rank = env.world_size, env.rank
    seq_length, max_steps = plan["seq_length"], plan["max_steps"]
    micro, global_batch = plan["micro_batch_size"], plan["global_batch_size"]
    ckpt_root = Path(plan["checkpoint_dir"])

    examples = [
        encode_example(r["input"], r["output"], seq_length) for r in read_records(dataset_dir / "training.jsonl")
    ]
    batches = BatchPlan(len(examples), global_batch, world, plan["seed"])
    cfg = TinyConfig(max_position_embeddings=seq_length)

    torch.manual_seed(plan["seed"])
    random.seed(plan["seed"])
    model = TinyByteLM(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=plan["learning_rate"], betas=(0.9, 0.95), weight_decay=0.01)

    # Rank 0 decides where to resume from and tells the others, so all ranks load the same step.
    chosen = None
    if rank == 0:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        clean_partial_checkpoints(ckpt_root)
        found = latest_checkpoint(ckpt_root)
        chosen = str(found[1]) if found else None
    chosen = _broadcast(chosen, world)

    start_step, tokens_seen = 0, 0
    if chosen is not None:
        state = torch.load(Path(chosen) / "state.pt", map_location="cpu", weights_only=True)
        if state["model_config"] != asdict(cfg):
            raise RuntimeError(
                f"checkpoint {chosen} was made with model {state['model_config']}, "
                f"this plan builds {asdict(cfg)}; use a fresh checkpoint_dir"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        rngs = state["rng"]
        if len(rngs) == world:
            _set_rng_state(rngs[rank])
        start_step, tokens_seen = state["step"], state["tokens_seen"]

    ddp: nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(model)

    attempt = uuid.uuid4().hex[:12]
    log = MetricsLog(ckpt_root / "metrics.jsonl")
    if rank == 0:
        log.truncate_after(start_step)
        print(
            f"tiny: rank 0 of {world}, steps {start_step + 1}..{max_steps}"
            f" ({'resumed' if start_step else 'fresh'}), attempt {attempt}",
            flush=True,
        )

    started = time.monotonic()
    last_ckpt = chosen
    progress = TrainingProgress(max_steps, start_step) if rank == 0 else None
    for step in range(start_step + 1, max_steps + 1):
        lr = lr_at(step, max_steps, plan["learning_rate"])
        for group in optimizer.param_groups:
            group["lr"] = lr
        shard = [examples[i] for i in batches.indices(step, rank)]
        label_tokens = sum(sum(1 for t in lab if t != IGNORE_INDEX) for _, lab in shard)
        input_tokens = sum(len(inp) for inp, _ in shard)
        chunks = [shard[i : i + micro] for i in range(0, len(shard), micro)]
        loss_sum = 0.0
        for i, chunk in enumerate(chunks):
            ids, labels = collate(chunk)
            # Sync gradients only on the last micro-batch of the step (gradient accumulation).
            sync = world == 1 or i == len(chunks) - 1
            with nullcontext() if sync else ddp.no_sync():
                loss = token_loss_sum(ddp, ids, labels)
                (loss / max(label_tokens, 1)).backward()
            loss_sum += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        totals = torch.tensor([loss_sum, float(label_tokens), float(input_tokens)], dtype=torch.float64)
        if world > 1:
            dist.all_reduce(totals)
        step_loss = float(totals[0] / max(totals[1], 1.0))
        tokens_seen += int(totals[2])
        if rank == 0:
            log.append(
                {
                    "step": step,
                    "loss": round(step_loss, 6),
                    "lr": lr,
                    "tokens_seen": tokens_seen,
                    "attempt": attempt,
                    "time": round(time.time(), 3),
                }
            )
            progress.step(step, step_loss, tokens=int(totals[2]), lr=lr)

        if step % plan["checkpoint_interval"] == 0 or step == max_steps:
            rngs = [None] * world
            if world > 1:
                dist.all_gather_object(rngs, _rng_state())
            else:
                rngs = [_rng_state()]
            if rank == 0:
                state = {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "rng": rngs,
                    "step": step,
                    "tokens_seen": tokens_seen,
                    "model_config": asdict(cfg),
                }
                path = write_checkpoint(
                    ckpt_root, step, state, {"run_name": plan["run_name"], "tokens_seen": tokens_seen}
                )
                prune_checkpoints(ckpt_root)
                last_ckpt = str(path)
                progress.checkpoint(step, path)
    train_seconds = time.monotonic() - started

    result: dict[str, Any] = {}
    if rank == 0:
        if last_ckpt is None:  # nothing to do and nothing saved: cannot happen with max_steps >= 1
            raise RuntimeError("no checkpoint was produced")
        history = log.read()
        steps_run = max_steps - start_step
        val_path = dataset_dir / "validation.jsonl"
        val_loss = None
        if val_path.is_file():
            val = [
                encode_example(r["input"], r["output"], seq_length) for r in read_records(val_path)[:VALIDATION_RECORDS]
            ]
            val_loss = round(evaluate_loss(model, val), 6)
        metrics = {
            "initial_loss": history[0]["loss"] if history else None,
            "final_loss": history[-1]["loss"] if history else None,
            "steps": history[-1]["step"] if history else start_step,
            "resumed_from_step": start_step,
            "tokens_seen": tokens_seen,
            "train_seconds": round(train_seconds, 3),
            "steps_per_second": round(steps_run / train_seconds, 3) if steps_run and train_seconds else None,
            "validation_loss": val_loss,
            "world_size": world,
        }
        export_model(model, export_dir / "model", base_model=plan["base_model"], run_name=plan["run_name"])
        (export_dir / "metrics.json").write_text(
            json.dumps(
                {"run_name": plan["run_name"], "backend": "tiny", **metrics, "history": history},
                sort_keys=True,
            )
        )
        result = {"checkpoint_uri": Path(last_ckpt).resolve().as_uri(), "metrics": metrics}
    if world > 1:
        dist.barrier()  # nobody tears the group down while rank 0 still evaluates
    return result
