"""The candidate answers every eval question, RAG style, with the prompt layout it was trained on.

prompt = `format_prompt(user_input, reference_contexts)` (include/prompts.py), the input half of
the training template "{input} {output}" (`tinylm.prompt_text`), so the model sees exactly what it
saw in training: the gold contexts stand in for a retriever (see scoring.py for what that means
for the context metrics).

Two generators behind one interface, both greedy and deterministic:
- `LocalTinyGenerator` (local profile): the tiny byte-level model, batched greedy decoding on CPU,
  bounded by `max_new_tokens`. Same tokens as `tinylm.generate` one prompt at a time, but rows whose
  context has the same length are decoded together, which makes 1,000 samples take seconds.
- `VllmGenerator` (eks): vLLM offline `LLM(model=dir).generate` with SamplingParams temperature 0.
  vLLM is imported only when it generates: never in tests, never on an Airflow worker.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from include.prompts import format_prompt
from include.tinylm import DEFAULT_BATCH_SIZE, greedy_batch

log = logging.getLogger(__name__)


def build_prompt(user_input: str, reference_contexts: Sequence[str]) -> str:
    """The evaluation prompt: the one layout used for training inputs."""
    return format_prompt(user_input, list(reference_contexts))


class Generator(ABC):
    """Answers prompts; one answer per prompt, in order, whitespace-stripped."""

    name: ClassVar[str]

    @abstractmethod
    def generate(self, prompts: Sequence[str]) -> list[str]: ...

    def describe(self) -> dict[str, Any]:
        """What produced the answers, recorded in summary.json."""
        return {"generator": self.name}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the model (GPU memory) once the answers are in."""


class LocalTinyGenerator(Generator):
    name = "tiny"

    def __init__(self, model_dir: str | Path, *, max_new_tokens: int = 64, batch_size: int = DEFAULT_BATCH_SIZE):
        from include import tinylm

        if max_new_tokens < 1 or batch_size < 1:
            raise ValueError("max_new_tokens and batch_size must be positive")
        self.model_dir = str(model_dir)
        self.model = tinylm.load_model(model_dir)
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size

    def describe(self) -> dict[str, Any]:
        cfg = self.model.config
        return {"generator": self.name, "decoding": "greedy", "max_new_tokens": self.max_new_tokens,
                "context_window": cfg.max_position_embeddings}

    def generate(self, prompts: Sequence[str]) -> list[str]:
        from include.logs import Progress

        progress = Progress("generation", "samples", total=len(prompts), emit=log.info)  # answered, of all
        return [a.strip() for a in greedy_batch(self.model, prompts, self.max_new_tokens, self.batch_size,
                                                on_batch=progress.update)]


class VllmGenerator(Generator):
    """vLLM offline inference on the evaluator pod's GPU: temperature 0, one seed, bounded tokens."""

    name = "vllm"

    def __init__(self, model_dir: str | Path, *, max_new_tokens: int = 256, max_model_len: int = 4096,
                 gpu_memory_utilization: float = 0.85, tensor_parallel_size: int = 1, dtype: str = "auto",
                 seed: int = 0):
        self.model_dir = str(model_dir)
        self.max_new_tokens = max_new_tokens
        self.engine_args: dict[str, Any] = {
            "gpu_memory_utilization": gpu_memory_utilization,
            "tensor_parallel_size": tensor_parallel_size,
            "dtype": dtype,
            "seed": seed,
            "max_model_len": max_model_len,
        }
        if max_new_tokens >= max_model_len:
            raise ValueError("max_new_tokens must leave room for the prompt within max_model_len")
        self.seed = seed
        self._llm: Any = None

    def describe(self) -> dict[str, Any]:
        return {"generator": self.name, "decoding": "greedy (temperature 0)", "max_new_tokens": self.max_new_tokens,
                **self.engine_args}

    def _engine(self) -> Any:
        if self._llm is None:
            from vllm import LLM  # only in the evaluator image

            started = time.monotonic()
            self._llm = LLM(model=self.model_dir, **self.engine_args)
            log.info("vLLM loaded %s in %.1fs", self.model_dir, time.monotonic() - started)
        return self._llm

    def generate(self, prompts: Sequence[str]) -> list[str]:
        from vllm import SamplingParams

        from include.tinylm import prompt_text  # the training template (torch is imported, unused here)

        engine = self._engine()
        # Over-long prompts keep their last tokens (the question and the nearest context), as the tiny
        # model's window and NeMo's input truncation do, instead of failing the whole batch. Done
        # here with the engine's own tokenizer, so it does not depend on a SamplingParams option.
        keep = self.engine_args["max_model_len"] - self.max_new_tokens
        tokenizer = engine.get_tokenizer()
        inputs = [{"prompt_token_ids": tokenizer.encode(prompt_text(p))[-keep:]} for p in prompts]
        params = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=self.max_new_tokens, seed=self.seed)
        outputs = engine.generate(inputs, params, use_tqdm=False)
        return [o.outputs[0].text.strip() if o.outputs else "" for o in outputs]

    def close(self) -> None:
        if self._llm is not None:
            self._llm = None
            try:
                import gc

                import torch

                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            except ImportError:  # pragma: no cover
                pass


def make_generator(kind: str, model_dir: str | Path, *, max_new_tokens: int,
                   vllm_options: dict[str, Any] | None = None) -> Generator:
    if kind == "tiny":
        return LocalTinyGenerator(model_dir, max_new_tokens=max_new_tokens)
    if kind == "vllm":
        return VllmGenerator(model_dir, max_new_tokens=max_new_tokens, **(vllm_options or {}))
    raise ValueError(f"unknown generator {kind!r}; expected tiny or vllm")


def generate_answers(generator: Generator, samples: Sequence[Any]) -> list[str]:
    """One answer per eval sample (objects with user_input and reference_contexts), in order."""
    prompts = [build_prompt(s.user_input, s.reference_contexts) for s in samples]
    started = time.monotonic()
    answers = generator.generate(prompts)
    if len(answers) != len(prompts):
        raise RuntimeError(f"{generator.name} returned {len(answers)} answers for {len(prompts)} prompts")
    log.info("%s answered %d prompts in %.1fs", generator.name, len(prompts), time.monotonic() - started)
    return answers
