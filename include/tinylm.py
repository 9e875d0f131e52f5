"""The tiny byte-level causal LM as a model format: what the local trainer exports and the local
evaluator loads. Shared by training and evaluation, so neither imports the other.

Bytes are the vocabulary (0-255) plus a few special ids, so there is no tokenizer to ship or
download; the prompt template matches NeMo's FineTuningDataModule: "{input} {output}".
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

PAD_ID, BOS_ID, EOS_ID = 256, 257, 258
VOCAB_SIZE = 259
PROMPT_TEMPLATE = "{input} {output}"
ARCHITECTURE = "TinyByteLMForCausalLM"


def encode_text(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def decode_ids(ids: list[int]) -> str:
    return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")


def prompt_text(input_text: str) -> str:
    """The part of the template before the answer: what the model is conditioned on."""
    return PROMPT_TEMPLATE.split("{output}")[0].format(input=input_text)


@dataclass(frozen=True)
class TinyConfig:
    vocab_size: int = VOCAB_SIZE
    hidden_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    intermediate_size: int = 512
    max_position_embeddings: int = 128

    def to_hf(self, **extra: Any) -> dict[str, Any]:
        return {
            "architectures": [ARCHITECTURE],
            "model_type": "tiny-byte-lm",
            **asdict(self),
            "bos_token_id": BOS_ID,
            "eos_token_id": EOS_ID,
            "pad_token_id": PAD_ID,
            "tie_word_embeddings": True,
            "torch_dtype": "float32",
            **extra,
        }

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> TinyConfig:
        return cls(**{k: cfg[k] for k in cls.__dataclass_fields__})


class Block(nn.Module):
    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.heads = cfg.num_attention_heads
        self.ln1 = nn.LayerNorm(cfg.hidden_size)
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)
        self.proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.ln2 = nn.LayerNorm(cfg.hidden_size)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.hidden_size, cfg.intermediate_size),
            nn.GELU(),
            nn.Linear(cfg.intermediate_size, cfg.hidden_size),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


class TinyByteLM(nn.Module):
    """Pre-norm GPT with learned positions; the output head is the (tied) byte embedding."""

    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.pos = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = nn.LayerNorm(cfg.hidden_size)
        for name, p in self.named_parameters():
            if p.dim() > 1:
                nn.init.normal_(p, std=0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        h = self.embed(ids) + self.pos(positions)
        for block in self.blocks:
            h = block(h)
        return self.norm(h) @ self.embed.weight.T


def export_model(model: TinyByteLM, out_dir: Path, *, base_model: str = "tiny-byte-lm", run_name: str = "") -> Path:
    """A Hugging Face-like directory: config, safetensors weights, tokenizer and generation defaults."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    os.chmod(out_dir / "model.safetensors", 0o644)  # safetensors writes 0600; evaluators may run as another user
    (out_dir / "config.json").write_text(
        json.dumps(cfg.to_hf(base_model=base_model, run_name=run_name), indent=2, sort_keys=True)
    )
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "ByteLevelTokenizer",
                "encoding": "utf-8 bytes: token id = byte value (0-255)",
                "vocab_size": VOCAB_SIZE,
                "bos_token_id": BOS_ID,
                "eos_token_id": EOS_ID,
                "pad_token_id": PAD_ID,
                "add_bos_token": True,
                "prompt_template": PROMPT_TEMPLATE,
                "model_max_length": cfg.max_position_embeddings,
            },
            indent=2,
            sort_keys=True,
        )
    )
    (out_dir / "generation_config.json").write_text(
        json.dumps(
            {
                "bos_token_id": BOS_ID,
                "eos_token_id": EOS_ID,
                "pad_token_id": PAD_ID,
                "do_sample": False,
                "max_new_tokens": 64,
            },
            indent=2,
            sort_keys=True,
        )
    )
    return out_dir


def load_model(model_dir: str | Path) -> TinyByteLM:
    """Load an exported tiny model (a directory, or a file:// URI of one) ready for `generate`."""
    from safetensors.torch import load_file

    path = Path(str(model_dir).removeprefix("file://"))
    cfg = json.loads((path / "config.json").read_text())
    if ARCHITECTURE not in cfg.get("architectures", []):
        raise ValueError(f"{path}: not a tiny byte-level model (architectures={cfg.get('architectures')})")
    model = TinyByteLM(TinyConfig.from_hf(cfg))
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    model.eval()
    return model


@torch.no_grad()
def generate(model: TinyByteLM, prompt: str, max_new_tokens: int = 64, *, template: bool = True) -> str:
    """Greedy byte-level continuation of `prompt`, stopping at EOS.

    With `template` (the default) the prompt is the `input` of "{input} {output}", as in training,
    so `generate(model, question)` returns the model's answer.
    """
    model.eval()
    window = model.config.max_position_embeddings
    ids = [BOS_ID, *encode_text(prompt_text(prompt) if template else prompt)]
    out: list[int] = []
    for _ in range(max_new_tokens):
        context = torch.tensor([ids[-window:]])
        logits = model(context)[0, -1]
        logits[PAD_ID] = logits[BOS_ID] = float("-inf")
        nxt = int(logits.argmax())
        if nxt == EOS_ID:
            break
        ids.append(nxt)
        out.append(nxt)
    return decode_ids(out)


DEFAULT_BATCH_SIZE = 64


def greedy_batch(model: Any, prompts: Sequence[str], max_new_tokens: int,
                 batch_size: int = DEFAULT_BATCH_SIZE, on_batch: Callable[[int], Any] | None = None) -> list[str]:
    """`tinylm.generate(model, p, max_new_tokens)` for every prompt, decoding equal-length rows together.

    The tiny model has no attention mask, so rows of different lengths cannot share a batch
    without changing the result. Rows whose (window-truncated) context has the same length can:
    they grow by one token per step, in step, and stay equal. Prompts longer than the window all
    truncate to it, so a RAG eval set falls into a handful of groups. Rows that emit EOS leave
    their batch; the others continue. Deterministic: the groups and their order depend only on
    the prompts. `on_batch(answered so far)` runs after each batch (progress lines).
    """
    answered = 0
    window = model.config.max_position_embeddings
    seqs = [[BOS_ID, *encode_text(prompt_text(p))] for p in prompts]
    outputs: list[list[int]] = [[] for _ in prompts]
    groups: dict[int, list[int]] = defaultdict(list)
    for i, ids in enumerate(seqs):
        groups[min(len(ids), window)].append(i)
    model.eval()
    with torch.no_grad():
        for length in sorted(groups):
            members = groups[length]
            for start in range(0, len(members), batch_size):
                active = members[start:start + batch_size]
                answered += len(active)
                for _ in range(max_new_tokens):
                    if not active:
                        break
                    context = torch.tensor([seqs[i][-window:] for i in active])
                    logits = model(context)[:, -1]
                    logits[:, PAD_ID] = float("-inf")
                    logits[:, BOS_ID] = float("-inf")
                    chosen = logits.argmax(dim=-1).tolist()
                    still = []
                    for i, nxt in zip(active, chosen, strict=True):
                        if nxt == EOS_ID:
                            continue
                        seqs[i].append(nxt)
                        outputs[i].append(nxt)
                        still.append(i)
                    active = still
                if on_batch is not None:
                    on_batch(answered)
    return [decode_ids(o) for o in outputs]
