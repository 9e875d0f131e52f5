"""Answer generation: the training prompt layout, and batched greedy decoding equal to tinylm.generate."""

from __future__ import annotations

import json

import pytest
import torch

from include import tinylm
from include.evaluation import evalset
from include.evaluation.generate import (
    Generator,
    LocalTinyGenerator,
    VllmGenerator,
    build_prompt,
    generate_answers,
    greedy_batch,
)
from include.prompts import format_prompt


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return tinylm.TinyByteLM(tinylm.TinyConfig(max_position_embeddings=32))


def test_prompt_is_the_training_layout():
    assert build_prompt("Why?", ["ctx one", "ctx two"]) == format_prompt("Why?", ["ctx one", "ctx two"])
    assert build_prompt("Why?", []) == "Question: Why?\nAnswer:"


def test_batched_greedy_equals_one_prompt_at_a_time(model):
    prompts = ["hi?", "hello?", "x" * 40, "y" * 40, "Context:\nabc\n\nQuestion: q?\nAnswer:", "hi?", "ünïcode?"]
    expected = [tinylm.generate(model, p, max_new_tokens=12) for p in prompts]
    assert greedy_batch(model, prompts, 12, batch_size=3) == expected
    assert greedy_batch(model, prompts, 12, batch_size=64) == expected


def test_the_generator_logs_samples_answered_of_the_total(model, monkeypatch, tmp_path):
    import logging

    monkeypatch.setenv("LLMOPS_PROGRESS_INTERVAL_S", "0")
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("include.evaluation.generate")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        gen = LocalTinyGenerator(tinylm.export_model(model, tmp_path / "m").as_uri(), max_new_tokens=4, batch_size=2)
        gen.generate(["a?", "b?", "cc?", "dd?", "eee?"])
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert [line.split(" (")[0] for line in lines] == [
        "generation: 2 of 5 samples", "generation: 4 of 5 samples", "generation: 5 of 5 samples"]
    assert lines[-1].startswith("generation: 5 of 5 samples (100%), ") and "ETA 0 s" in lines[-1]


def test_local_generator_is_deterministic_and_bounded(tmp_path, model):
    out = tinylm.export_model(model, tmp_path / "model")
    gen = LocalTinyGenerator(out.as_uri(), max_new_tokens=8)
    samples = [evalset.EvalSample("a", "q1?", "r1", ["some context"]), evalset.EvalSample("b", "q2?", "r2")]
    first = generate_answers(gen, samples)
    assert first == generate_answers(gen, samples)
    assert len(first) == 2 and all(len(a.encode("utf-8", errors="replace")) <= 8 * 3 for a in first)
    assert gen.describe() == {"generator": "tiny", "decoding": "greedy", "max_new_tokens": 8, "context_window": 32}


def test_vllm_generator_imports_vllm_only_when_it_generates(tmp_path):
    gen = VllmGenerator(tmp_path, max_new_tokens=16, max_model_len=2048)
    assert isinstance(gen, Generator) and gen.describe()["max_model_len"] == 2048
    assert gen._llm is None  # constructing it loaded nothing
    with pytest.raises(ValueError, match="room for the prompt"):
        VllmGenerator(tmp_path, max_new_tokens=4096, max_model_len=4096)


def test_vllm_generator_is_greedy_and_truncates_long_prompts_from_the_left(tmp_path, monkeypatch):
    """Against a stand-in `vllm` module: what the generator asks the engine for."""
    import sys
    import types

    calls = {}

    class SamplingParams:
        def __init__(self, **kwargs):
            calls["params"] = kwargs

    class LLM:
        def __init__(self, model, **kwargs):
            calls["engine"] = {"model": model, **kwargs}

        def get_tokenizer(self):
            return types.SimpleNamespace(encode=lambda text: [ord(c) for c in text])

        def generate(self, inputs, params, use_tqdm=True):
            calls["inputs"] = inputs
            return [types.SimpleNamespace(outputs=[types.SimpleNamespace(text=f"  answer {i} ")])
                    for i in range(len(inputs))]

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams))
    gen = VllmGenerator(tmp_path, max_new_tokens=16, max_model_len=300, seed=5)
    assert gen.generate(["short?", "x" * 1000]) == ["answer 0", "answer 1"]
    assert calls["params"] == {"temperature": 0.0, "top_p": 1.0, "max_tokens": 16, "seed": 5}
    assert calls["engine"]["model"] == str(tmp_path) and calls["engine"]["max_model_len"] == 300
    short, long = calls["inputs"]
    assert short["prompt_token_ids"] == [ord(c) for c in tinylm.prompt_text("short?")]
    assert len(long["prompt_token_ids"]) == 300 - 16  # the last tokens: the end of the prompt survives
    assert long["prompt_token_ids"][-1] == ord(" ")
    gen.close()
    assert gen._llm is None


def test_eval_set_parsing(tmp_path):
    lines = [{"id": "a", "user_input": "q", "reference": "r", "reference_contexts": ["c", " "]},
             {"id": "b", "user_input": "q2", "reference": "r2"}]
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + "\n")
    samples = evalset.load_eval_set(tmp_path.as_uri())
    assert [s.id for s in samples] == ["a", "b"] and samples[0].reference_contexts == ["c"]
    assert samples[1].reference_contexts == []
    assert [s.id for s in evalset.load_eval_set((tmp_path / "eval.jsonl").as_uri(), limit=1)] == ["a"]
    assert evalset.eval_digest(samples) != evalset.eval_digest(samples[:1])
    (tmp_path / "eval.jsonl").write_text(json.dumps(lines[0]) + "\n" + json.dumps(lines[0]) + "\n")
    with pytest.raises(evalset.EvalSetError, match="duplicate id"):
        evalset.load_eval_set(tmp_path.as_uri())
    (tmp_path / "eval.jsonl").write_text('{"id": "a", "user_input": "q"}\n')
    with pytest.raises(evalset.EvalSetError, match="line 1: 'reference'"):
        evalset.load_eval_set(tmp_path.as_uri())
