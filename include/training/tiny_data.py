"""The tiny backend's data: records -> token ids and loss labels, and which records each rank
trains on at each step (a pure function of seed, step and rank, so a resumed run sees exactly the
batches an uninterrupted one would)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from include.tinylm import BOS_ID, EOS_ID, PAD_ID, encode_text, prompt_text

IGNORE_INDEX = -100


def encode_example(input_text: str, output_text: str, seq_length: int) -> tuple[list[int], list[int]]:
    """Token ids and next-token labels for one record, loss only on the answer and EOS.

    Over-long records keep the answer (up to half the window) and drop the oldest prompt bytes,
    as NeMo truncates the `input` field first.
    """
    prompt = encode_text(prompt_text(input_text))
    answer = [*encode_text(output_text), EOS_ID]
    budget = seq_length + 1  # inputs and shifted labels both have seq_length positions
    answer = answer[: max(budget // 2, budget - 1 - len(prompt))]
    room = budget - 1 - len(answer)
    prompt = prompt[len(prompt) - room :] if room > 0 else []
    tokens = [BOS_ID, *prompt, *answer]
    n_prompt = 1 + len(prompt)
    inputs = tokens[:-1]
    labels = [tok if pos + 1 >= n_prompt else IGNORE_INDEX for pos, tok in enumerate(tokens[1:])]
    return inputs, labels


def collate(examples: list[tuple[list[int], list[int]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest example: causal attention never lets real tokens see the pads."""
    width = max(len(inp) for inp, _ in examples)
    ids = torch.full((len(examples), width), PAD_ID, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for row, (inp, lab) in enumerate(examples):
        ids[row, : len(inp)] = torch.tensor(inp)
        labels[row, : len(lab)] = torch.tensor(lab)
    return ids, labels


def read_records(path: Path) -> list[dict[str, str]]:
    records = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            rec = json.loads(line)
            if not isinstance(rec.get("input"), str) or not isinstance(rec.get("output"), str):
                raise ValueError(f"{path.name}:{lineno}: a record needs string 'input' and 'output'")
            records.append(rec)
    if not records:
        raise ValueError(f"{path.name}: no records")
    return records


class BatchPlan:
    """Which records each rank uses at each step: a pure function of (seed, step, rank).

    Global sample k of the run is record perm_e[k mod N] with e = k // N (a fresh shuffle per
    epoch). Because it depends on nothing but the step, a resumed run sees exactly the batches
    an uninterrupted one would, with no data-loader state to checkpoint.
    """

    def __init__(self, n_records: int, global_batch: int, world_size: int, seed: int):
        if global_batch % world_size:
            raise ValueError("global batch must split evenly across ranks")
        self.n, self.global_batch, self.world, self.seed = n_records, global_batch, world_size, seed
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.clear()
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms[epoch] = torch.randperm(self.n, generator=gen).tolist()
        return self._perms[epoch]

    def indices(self, step: int, rank: int) -> list[int]:
        """Record indices for 1-based `step` on `rank`: its disjoint slice of the global batch."""
        per_rank = self.global_batch // self.world
        start = (step - 1) * self.global_batch + rank * per_rank
        return [self._perm(k // self.n)[k % self.n] for k in range(start, start + per_rank)]
