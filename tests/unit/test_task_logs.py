"""Readable task logs: progress lines, summary lines on real results, library noise at its level."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

from include import logs
from include.data import catalog
from include.data.pipeline import PrepConfig
from include.evaluation.gate import decide, validate_policy
from include.lifecycle import summaries
from include.training.progress import TrainingProgress, checkpoint_line, step_line

ROOT = Path(__file__).resolve().parents[2]
CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Records(logging.Handler):
    """Every record of a logger (the suite runs with pytest's logging plugin off)."""

    def __init__(self, *names: str, level: int = logging.INFO):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.loggers = [logging.getLogger(n) for n in names]
        self.level_to_set = level

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self) -> list[str]:
        return [r.getMessage() for r in self.records]

    def __enter__(self) -> Records:
        self.saved = [(lg, lg.level) for lg in self.loggers]
        for lg in self.loggers:
            lg.addHandler(self)
            lg.setLevel(self.level_to_set)
        return self

    def __exit__(self, *exc) -> None:
        for lg, level in self.saved:
            lg.removeHandler(self)
            lg.setLevel(level)


def readable(line: str) -> None:
    assert not CONTROL.search(line) and "\x1b" not in line and "\r" not in line, repr(line)


# --------------------------------------------------------------------------- progress


def test_progress_lines_carry_rate_eta_and_counts_without_control_characters():
    line = logs.format_progress("curate", 4096, 12000, "records", 5.0, {"written": 3900, "quarantined": 20})
    assert line == "curate: 4096 of 12000 records (34%), 819 records/s, ETA 10 s; written 3900, quarantined 20"
    unknown = logs.format_progress("curate", 500, None, "records", 2.0, {"written": 480}, fraction=0.25)
    assert unknown == "curate: 500 records (25%), 250 records/s, ETA 6 s; written 480"
    readable(logs.format_progress("x\x1b[31m", 1, 2, "steps\r", 1.0, {"a\nb": "c\rd"}))


def test_printable_drops_ansi_and_keeps_the_last_redraw_of_a_progress_bar():
    assert logs.printable("\x1b[31mERROR\x1b[0m boom\n") == "ERROR boom"
    assert logs.printable("Downloading:  10%|#\rDownloading: 100%|##########| 2/2\r\n") == \
        "Downloading: 100%|##########| 2/2"
    assert logs.printable("tab\tstays\x07") == "tab\tstays"
    assert logs.duration(45) == "45 s" and logs.duration(185) == "3 min 05 s" and logs.duration(None) == "?"
    assert logs.duration(7620) == "2 h 07 min"


def test_progress_is_rate_limited_to_its_interval_and_always_reports_the_end():
    clock, lines = Clock(), []
    p = logs.Progress("scoring", "samples", total=10, interval_s=5, emit=lines.append, clock=clock)
    assert p.update(1) is None  # nothing is due before an interval has passed
    clock.now += 5
    assert p.update(3) == "scoring: 3 of 10 samples (30%), 0.6 samples/s, ETA 12 s"
    clock.now += 1
    assert p.update(4) is None
    clock.now += 1
    assert p.update(10) == "scoring: 10 of 10 samples (100%), 1.429 samples/s, ETA 0 s"
    assert lines == [lines[0], lines[1]] and p.lines == 2


def test_progress_interval_is_a_setting_with_a_short_default(monkeypatch):
    assert logs.progress_interval_s({}) == logs.DEFAULT_PROGRESS_INTERVAL_S <= 10
    assert logs.progress_interval_s({logs.PROGRESS_INTERVAL_ENV: "30"}) == 30
    assert logs.progress_interval_s({logs.PROGRESS_INTERVAL_ENV: "soon"}) == logs.DEFAULT_PROGRESS_INTERVAL_S
    monkeypatch.setenv(logs.PROGRESS_INTERVAL_ENV, "0.5")
    assert logs.Progress("x", "y").interval_s == 0.5


def test_training_progress_reports_step_loss_tokens_eta_and_checkpoints():
    clock, lines = Clock(), []
    tp = TrainingProgress(240, start_step=40, interval_s=5, emit=lines.append, clock=clock)
    for step in range(41, 61):
        clock.now += 0.5
        tp.step(step, loss=3.41234, tokens=2048, lr=0.003)
    assert tp.checkpoint(60, "/ckpt/step-60") == "training: checkpoint written at step 60: /ckpt/step-60"
    first = lines[0]
    assert first == "training: step 50 of 240 (21%), 2.000 steps/s, ETA 1 min 35 s; loss 3.412, tokens/s 4096, lr 0.003"
    assert [ln.split(",")[0] for ln in lines] == ["training: step 50 of 240 (21%)", "training: step 60 of 240 (25%)",
                                                  "training: checkpoint written at step 60: /ckpt/step-60"]
    for ln in lines:
        readable(ln)
    assert step_line(240, 240, 200, 60.0, 2.428).startswith("training: step 240 of 240 (100%), 3.333 steps/s, ETA 0 s")
    readable(checkpoint_line(3, "C:\\odd\r\npath"))


def test_curation_reports_progress_while_it_reads(tmp_path, monkeypatch):
    monkeypatch.setenv(logs.PROGRESS_INTERVAL_ENV, "0")
    raw = tmp_path / "raw" / "dt=2026-11-30" / "part.jsonl"
    raw.parent.mkdir(parents=True)
    rows = [{"question": f"Question {i}: how does component {i} behave under load?",
             "context": f"Component {i} scales out.", "answer": f"Component {i} scales out horizontally."}
            for i in range(60)]
    rows += rows[:5]  # exact duplicates
    import json

    raw.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with Records("include.data.pipeline") as rec:
        manifest = catalog.stage(f"file://{tmp_path}", [f"file://{raw.parent}"], PrepConfig(batch_size=16), "r1")
    lines = [m for m in rec.messages() if m.startswith("curate:")]
    assert len(lines) >= 4, lines  # one per batch at interval 0, and the last one
    assert lines[-1].startswith("curate: 65 records (100%), ") and "records/s, ETA 0 s" in lines[-1]
    assert "written 60, quarantined 0, exact duplicates 5" in lines[-1]
    for ln in lines:
        readable(ln)

    line = summaries.curated(manifest, 3.2)
    assert line.startswith("curated 60 of 65 records (0 quarantined; 5 exact + 0 near duplicates) -> dataset "
                           f"{manifest['version']} (train ")
    assert line.endswith(" in 3 s")


# --------------------------------------------------------------------------- summaries on real results


def test_gate_summary_says_the_verdict_the_means_and_the_floors():
    candidate = [{"id": str(i), "rouge_score": 0.04 + i / 1000, "bleu_score": 0.01} for i in range(10)]
    policy = {"min_pairs": 5, "metrics": {"rouge_score": {"floor": 0.01}, "bleu_score": {"floor": 0.2}}}
    decision = decide(candidate, None, validate_policy(policy))
    line = summaries.gate(decision, "file:///data/evaluations/r/gate/report.html")
    assert line.startswith("gate: FAILED (1 reason) on 10 samples, no champion to compare; "
                           "rouge_score 0.0445 (floor 0.01), bleu_score 0.01 (floor 0.2); why: bleu_score: ")
    assert line.endswith("; report file:///data/evaluations/r/gate/report.html")
    champion = [{"id": str(i), "rouge_score": 0.04, "bleu_score": 0.01} for i in range(10)]
    passed = decide(candidate, champion, validate_policy({**policy, "metrics": {"rouge_score": {"floor": 0.01}}}))
    assert summaries.gate(passed, None, "2") == ("gate: PASSED on 10 samples, vs champion v2; "
                                                 "rouge_score 0.0445 (floor 0.01, champion 0.04, delta +0.0045)")


def test_training_registry_and_evaluation_summaries():
    result = {"backend": "tiny", "checkpoint_uri": "file:///ckpt/step-240", "model_uri": "file:///models/ft/model",
              "metrics": {"initial_loss": 5.576123, "final_loss": 2.428456, "steps": 240, "resumed_from_step": 0,
                          "tokens_seen": 491520, "train_seconds": 61.2, "steps_per_second": 3.92,
                          "validation_loss": 2.5012, "world_size": 2}}
    assert summaries.trained(result) == (
        "training: 240 steps on 2 ranks, loss 5.576 -> 2.428 (validation 2.501) in 1 min 01 s, "
        "checkpoint file:///ckpt/step-240; model file:///models/ft/model")
    resumed = {**result, "metrics": {**result["metrics"], "resumed_from_step": 120}}
    assert summaries.trained(resumed).startswith("training: 240 steps (resumed at step 120) on 2 ranks")
    assert summaries.registered({"model_name": "llmops-assistant", "version": "3", "source": "file:///m",
                                 "champion": "2"}) == \
        "registered llmops-assistant v3 (challenger; champion stays v2) from file:///m"
    assert summaries.registered({"model_name": "llmops-assistant", "version": "1", "source": "file:///m",
                                 "champion": None}) == "registered llmops-assistant v1 (challenger) from file:///m"
    assert summaries.rejected({"rejected": True, "reasons": ["rouge_score: regressed"]}) == \
        "rejected: the candidate is not registered (1 reason): rouge_score: regressed"
    evaluation = {"n": 27, "means": {"rouge_score": 0.0451, "semantic_similarity": None}, "metrics": []}
    assert summaries.evaluated(evaluation, "candidate", "file:///e") == \
        "evaluated candidate on 27 samples: rouge_score 0.0451, semantic_similarity n/a -> file:///e"


# --------------------------------------------------------------------------- library noise


def test_rouge_tokenizer_message_is_logged_once_and_scoring_reports_samples(monkeypatch):
    from include.evaluation.scoring import score

    monkeypatch.setenv(logs.PROGRESS_INTERVAL_ENV, "0")
    samples = [{"id": str(i), "user_input": "q", "reference": f"the answer is {i}", "reference_contexts": ["c"],
                "response": f"answer {i}"} for i in range(6)]
    err = io.StringIO()
    with Records("absl", "include.evaluation.scoring") as rec:
        handler = logging.StreamHandler(err)
        logging.getLogger().addHandler(handler)
        try:
            score(samples, metrics=["rouge_score", "bleu_score"])
        finally:
            logging.getLogger().removeHandler(handler)
    messages = rec.messages()
    assert messages.count("Using default tokenizer.") <= 1, messages
    progress = [m for m in messages if m.startswith("scoring: ")]
    assert progress[-1].startswith("scoring: 6 of 6 samples (100%)"), progress
    for m in progress:
        readable(m)


def test_mlflow_configured_before_the_registry_is_reached_loses_its_stderr_handler(monkeypatch):
    """A library imported MLflow first, so it put its own stderr handler on its loggers: undone.
    (tests/integration/test_library_noise.py runs a registry call in a fresh process and reads its stderr.)"""
    from mlflow.utils import logging_utils

    for key in ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "MLFLOW_CONFIGURE_LOGGING"):
        monkeypatch.delenv(key, raising=False)  # restored after the test

    names = ("mlflow", "alembic", "sqlalchemy.engine", "huey")
    saved = {n: (lg.handlers[:], lg.level, lg.propagate) for n in names for lg in [logging.getLogger(n)]}
    try:
        logging_utils._configure_mlflow_loggers("mlflow")
        logs.quiet_libraries()
        for name in names:
            lg = logging.getLogger(name)
            assert lg.propagate and not any(logs._is_mlflow_stream_handler(h) for h in lg.handlers), name
        assert logging.getLogger("mlflow").level == logging.INFO
        assert logging.getLogger("alembic").level == logging.WARNING
        assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"
    finally:
        for name, (handlers, level, propagate) in saved.items():
            lg = logging.getLogger(name)
            lg.handlers, lg.propagate = handlers, propagate
            lg.setLevel(level)


def test_forward_lines_copies_a_pipe_to_a_file_and_a_callback_line_by_line(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "print('a\\x1b[1m!\\x1b[0m'); print(); print('b\\r', flush=True)"],
                            stdout=subprocess.PIPE)
    got: list[str] = []
    thread = logs.forward_lines(proc.stdout, tmp_path / "out.log", got.append)
    proc.wait(timeout=30)
    thread.join(timeout=10)
    assert not thread.is_alive() and isinstance(thread, threading.Thread)
    assert got == ["a!", "b"]
    assert (tmp_path / "out.log").read_bytes().startswith(b"a\x1b[1m!")


def test_plan_summary_on_a_real_eks_plan():
    from include.lifecycle.training import plan as build_plan
    from include.lifecycle.training import validate_params
    from include.settings import Settings

    params = {"base_model": "llama31_8b", "method": "lora", "lora_rank": 16, "max_steps": 1000,
              "learning_rate": 1e-4, "nodes": 2, "gpus_per_node": 8, "tensor_parallel": 1, "pipeline_parallel": 1,
              "pool": "production", "checkpoint_interval": 200, "dry_run": False}
    dataset = {"version": "0123456789abcdef", "uri": "s3://bucket/llmops/curated/0123456789abcdef"}
    eks = Settings(profile="eks", data_root="s3://bucket/llmops")
    out = build_plan(validate_params(params, eks), dataset, "finetune_lifecycle", "manual__1", eks)
    line = summaries.planned(out)
    assert re.fullmatch(r"plan: run ft-\w+, 2 nodes x 8 GPUs \(p[\w.]+, production pool\), 1000 steps of "
                        r"\d+ x \d+ tokens, nemo backend; estimate [\d.]+ GPU-h \$[\d,.]+", line), line
