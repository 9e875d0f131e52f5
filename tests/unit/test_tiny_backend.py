"""The tiny backend's pieces: byte tokenizer and SFT masking, model export, checkpoints, metrics."""

from __future__ import annotations

import json

import pytest
import torch

from include import tinylm
from include.tinylm import BOS_ID, EOS_ID, PAD_ID
from include.training import tiny, tiny_data
from include.training.tiny_data import IGNORE_INDEX


def test_tiny_tokenizer_round_trips_utf8_bytes():
    text = "Grüße, 東京! 🚀"
    ids = tinylm.encode_text(text)
    assert all(0 <= i < 256 for i in ids) and len(ids) == len(text.encode())
    assert tinylm.decode_ids([BOS_ID, *ids, EOS_ID, PAD_ID]) == text


def test_tiny_masking_puts_the_loss_on_the_answer_and_eos_only():
    inputs, labels = tiny_data.encode_example("2+2?", "4", seq_length=64)
    prompt = tinylm.encode_text("2+2? ")  # template "{input} {output}"
    assert inputs == [BOS_ID, *prompt, ord("4")]
    # position i predicts token i+1: nothing is learned while reading the prompt
    assert labels == [IGNORE_INDEX] * len(prompt) + [ord("4"), EOS_ID]
    assert len(inputs) == len(labels)


def test_tiny_truncation_keeps_the_answer_and_the_window():
    inputs, labels = tiny_data.encode_example("x" * 500, "answer", seq_length=32)
    assert len(inputs) == len(labels) == 32
    assert [t for t in labels if t != IGNORE_INDEX] == [*tinylm.encode_text("answer"), EOS_ID]
    assert inputs[0] == BOS_ID
    long_answer = tiny_data.encode_example("q", "y" * 500, seq_length=32)
    assert len(long_answer[0]) == 32 and sum(t != IGNORE_INDEX for t in long_answer[1]) >= 16


def test_tiny_collate_pads_right_with_ignored_labels():
    ids, labels = tiny_data.collate([([1, 2, 3], [IGNORE_INDEX, 3, 4]), ([5], [6])])
    assert ids.tolist() == [[1, 2, 3], [5, PAD_ID, PAD_ID]]
    assert labels.tolist() == [[IGNORE_INDEX, 3, 4], [6, IGNORE_INDEX, IGNORE_INDEX]]


def test_tiny_batch_plan_is_deterministic_and_disjoint_across_ranks():
    plan = tiny_data.BatchPlan(n_records=50, global_batch=8, world_size=2, seed=3)
    again = tiny_data.BatchPlan(n_records=50, global_batch=8, world_size=2, seed=3)
    for step in (1, 7, 13):  # 13 crosses an epoch boundary
        r0, r1 = plan.indices(step, 0), plan.indices(step, 1)
        assert len(r0) == len(r1) == 4 and not set(r0) & set(r1)
        assert r0 == again.indices(step, 0)
    # one epoch of steps covers every record exactly once
    seen = [i for step in range(1, 8) for rank in (0, 1) for i in plan.indices(step, rank)]
    assert sorted(seen[:50]) == list(range(50))
    with pytest.raises(ValueError):
        tiny_data.BatchPlan(10, global_batch=3, world_size=2, seed=0)


def test_tiny_model_is_causal():
    torch.manual_seed(0)
    model = tinylm.TinyByteLM(tinylm.TinyConfig(max_position_embeddings=16)).eval()
    ids = torch.randint(0, 256, (1, 10))
    changed = ids.clone()
    changed[0, 7] = (changed[0, 7] + 1) % 256
    a, b = model(ids), model(changed)
    assert a.shape == (1, 10, tinylm.VOCAB_SIZE)
    assert torch.allclose(a[0, :7], b[0, :7]) and not torch.allclose(a[0, 7:], b[0, 7:])


def test_tiny_export_load_and_generate(tmp_path):
    torch.manual_seed(0)
    model = tinylm.TinyByteLM(tinylm.TinyConfig(max_position_embeddings=32))
    out = tinylm.export_model(model, tmp_path / "model", base_model="tiny-byte-lm", run_name="r1")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [tinylm.ARCHITECTURE]
    assert config["vocab_size"] == tinylm.VOCAB_SIZE and config["num_hidden_layers"] == 2
    tok = json.loads((out / "tokenizer_config.json").read_text())
    assert tok["eos_token_id"] == EOS_ID and tok["prompt_template"] == "{input} {output}"
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["do_sample"] is False
    loaded = tinylm.load_model(out.as_uri())
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])
    answer = tinylm.generate(loaded, "hello?", max_new_tokens=40)
    assert isinstance(answer, str) and answer == tinylm.generate(loaded, "hello?", max_new_tokens=40)
    assert len(answer.encode("utf-8", errors="replace")) <= 40 * 3


def test_tiny_load_refuses_a_foreign_model(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(ValueError, match="not a tiny"):
        tinylm.load_model(tmp_path)


def test_tiny_lr_schedule_warms_up_then_decays():
    lrs = [tiny.lr_at(s, 100, 1e-3) for s in range(1, 101)]
    assert lrs[0] < lrs[9] == pytest.approx(1e-3)
    assert lrs[-1] == pytest.approx(1e-4) and all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))


# ---------------------------------------------------------------- atomic checkpoints


def _state(step):
    return {"model": {"w": torch.full((2,), float(step))}, "step": step}


def test_checkpoint_write_is_atomic_and_updates_latest(tmp_path):
    path = tiny.write_checkpoint(tmp_path, 10, _state(10), {"run_name": "r"})
    assert path == tmp_path / "step-10"
    assert sorted(p.name for p in path.iterdir()) == ["manifest.json", "state.pt"]
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["step"] == 10 and manifest["meta"] == {"run_name": "r"}
    assert (tmp_path / "latest").read_text().strip() == "step-10"
    tiny.write_checkpoint(tmp_path, 20, _state(20), {})
    assert tiny.latest_checkpoint(tmp_path) == (20, tmp_path / "step-20")
    assert (tmp_path / "latest").read_text().strip() == "step-20"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_checkpoint_resume_ignores_incomplete_directories(tmp_path):
    tiny.write_checkpoint(tmp_path, 10, _state(10), {})
    # a writer killed mid-way: a temp dir, and a step dir without manifest.json (never renamed by us,
    # but e.g. a half-synced copy); neither may be resumed from
    (tmp_path / ".tmp-step-20-123").mkdir()
    (tmp_path / ".tmp-step-20-123" / "state.pt").write_bytes(b"partial")
    (tmp_path / "step-30").mkdir()
    (tmp_path / "step-30" / "state.pt").write_bytes(b"partial")
    (tmp_path / "step-40").mkdir()
    (tmp_path / "step-40" / "manifest.json").write_text('{"step": 41, "files": {}}')  # inconsistent
    (tmp_path / "step-40" / "state.pt").write_bytes(b"x")
    assert tiny.latest_checkpoint(tmp_path) == (10, tmp_path / "step-10")
    tiny.clean_partial_checkpoints(tmp_path)
    assert not (tmp_path / ".tmp-step-20-123").exists()


def test_checkpoint_scan_survives_a_lagging_latest_marker(tmp_path):
    tiny.write_checkpoint(tmp_path, 10, _state(10), {})
    tiny.write_checkpoint(tmp_path, 20, _state(20), {})
    (tmp_path / "latest").write_text("step-10\n")  # crash between rename and marker update
    assert tiny.latest_checkpoint(tmp_path)[0] == 20


def test_checkpoint_rewrite_of_the_same_step_and_pruning(tmp_path):
    tiny.write_checkpoint(tmp_path, 10, _state(1), {})
    tiny.write_checkpoint(tmp_path, 10, _state(2), {})
    state = torch.load(tmp_path / "step-10" / "state.pt", weights_only=True)
    assert state["model"]["w"][0] == 2
    for step in (20, 30, 40):
        tiny.write_checkpoint(tmp_path, step, _state(step), {})
    tiny.prune_checkpoints(tmp_path, keep=2)
    assert [s for s, _ in tiny.complete_checkpoints(tmp_path)] == [30, 40]


def test_checkpoint_metrics_log_truncates_and_dedupes(tmp_path):
    log = tiny.MetricsLog(tmp_path / "metrics.jsonl")
    for step in (1, 2, 3, 2, 4):
        log.append({"step": step, "loss": float(step)})
    with log.path.open("a") as fh:
        fh.write('{"step": 5, "lo')  # cut short by SIGKILL
    assert [r["step"] for r in log.read()] == [1, 2, 3, 2, 4]
    kept = log.truncate_after(3)
    assert [r["step"] for r in kept] == [1, 2, 3]
    assert [r["step"] for r in log.read()] == [1, 2, 3]
    log.append({"step": 4, "loss": 0.5})
    assert [r["step"] for r in log.read()] == [1, 2, 3, 4]
