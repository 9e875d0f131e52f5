"""Rank 0's progress lines, the same from every backend (tiny and NeMo), printed to stdout.

On local the launcher forwards rank 0's stdout into the Airflow task log as it comes; on eks the
operator's pod-log streaming shows it. One line per progress interval (include/logs.py:
LLMOPS_PROGRESS_INTERVAL_S), one per checkpoint, plain text:

    training: step 40 of 240 (17%), 3.9 steps/s, ETA 51 s; loss 3.412, tokens/s 10240, lr 0.003
    training: checkpoint written at step 40: /data/checkpoints/ft-.../step-40
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from include.logs import Progress, duration, number, printable

LABEL = "training"


def _print(line: str) -> None:
    print(line, file=sys.stdout, flush=True)


class TrainingProgress:
    """Call `step` after every optimizer step and `checkpoint` after each checkpoint, on rank 0 only."""

    def __init__(self, max_steps: int, start_step: int = 0, *, interval_s: float | None = None,
                 emit: Callable[[str], Any] = _print, clock: Callable[[], float] = time.monotonic):
        self.max_steps, self.start_step = max_steps, start_step
        self.emit = emit
        # Rates and the ETA count this attempt's steps only: a resumed run does not look instant.
        self._clock = Progress(LABEL, "steps", interval_s=interval_s, emit=emit, clock=clock)
        self._tokens = 0

    def step(self, step: int, loss: float | None, tokens: int = 0, lr: float | None = None) -> str | None:
        self._tokens += tokens
        if not self._clock.due(finished=step >= self.max_steps):
            return None
        elapsed = self._clock.elapsed()
        line = step_line(step, self.max_steps, step - self.start_step, elapsed, loss,
                         self._tokens / elapsed if elapsed > 0 else None, lr)
        self.emit(line)
        return line

    def checkpoint(self, step: int, where: Any) -> str:
        line = checkpoint_line(step, where)
        self.emit(line)
        return line


def step_line(step: int, max_steps: int, done: int, elapsed_s: float, loss: float | None,
              tokens_per_s: float | None = None, lr: float | None = None) -> str:
    """'training: step 40 of 240 (17%), 3.9 steps/s, ETA 51 s; loss 3.412, tokens/s 10240, lr 0.003'.

    `done` is the steps this attempt ran, for its rate and the ETA; `step` the absolute step.
    """
    rate = done / elapsed_s if elapsed_s > 0 and done > 0 else None
    eta = max(max_steps - step, 0) / rate if rate else None
    head = [f"{LABEL}: step {step} of {max_steps} ({min(step / max_steps, 1.0):.0%})"]
    if rate is not None:
        head.append(f"{number(rate)} steps/s")
    head.append(f"ETA {duration(eta)}")
    fields = {"loss": loss, "tokens/s": round(tokens_per_s) if tokens_per_s else None, "lr": lr}
    tail = ", ".join(f"{k} {number(v)}" for k, v in fields.items() if v is not None)
    return printable(", ".join(head) + (f"; {tail}" if tail else ""))


def checkpoint_line(step: int, where: Any) -> str:
    return printable(f"{LABEL}: checkpoint written at step {step}: {where}")


def summary_line(metrics: dict[str, Any], checkpoint_uri: str | None = None) -> str:
    """'training: 240 steps on 2 ranks, loss 5.576 -> 2.428 (validation 2.501) in 61 s, checkpoint ...'."""
    steps, resumed = metrics.get("steps"), metrics.get("resumed_from_step") or 0
    parts = [f"{LABEL}: {steps} steps" + (f" (resumed at step {resumed})" if resumed else "")
             + (f" on {metrics['world_size']} ranks" if metrics.get("world_size") else "")]
    if metrics.get("initial_loss") is not None and metrics.get("final_loss") is not None:
        loss = f"loss {number(metrics['initial_loss'])} -> {number(metrics['final_loss'])}"
        if metrics.get("validation_loss") is not None:
            loss += f" (validation {number(metrics['validation_loss'])})"
        parts.append(loss)
    if metrics.get("train_seconds") is not None:
        parts[-1] += f" in {duration(metrics['train_seconds'])}"
    if checkpoint_uri:
        parts.append(f"checkpoint {checkpoint_uri}")
    return printable(", ".join(parts))
