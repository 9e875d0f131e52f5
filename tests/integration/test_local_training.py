"""Local training through the real launcher: N processes, gloo, checkpoints, a killed rank, resume.

These start real trainer processes (two ranks, one CPU thread each) and finish in seconds.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest

from include import tinylm
from include.errors import InputError
from include.training import local_launcher, tiny
from include.training.entrypoint import _parse_args
from include.training.local_launcher import LaunchError, build_command, launch
from include.training.restarts import RestartPolicy

PROJECT_ROOT = Path(__file__).resolve().parents[2]
NO_RESTARTS = RestartPolicy(max_restarts=0)


def make_dataset(root: Path, n_train: int = 300) -> Path:
    """A curated dataset in the data stage's layout: short, learnable question/answer pairs."""
    rng = random.Random(0)
    colors = ["red", "green", "blue", "amber", "violet", "teal"]

    def record(i: int) -> dict[str, str]:
        if i % 2:
            a, b = rng.randint(0, 20), rng.randint(0, 20)
            return {"id": f"r{i}", "input": f"Q: what is {a} plus {b}?", "output": f"A: {a + b}"}
        return {"id": f"r{i}", "input": f"Q: color of item {i % 6}?", "output": f"A: {colors[i % 6]}"}

    root.mkdir(parents=True)
    for name, n in (("training", n_train), ("validation", 30), ("test", 30)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(record(i)) + "\n" for i in range(n)))
    return root


def make_plan(tmp_path: Path, **overrides) -> dict:
    plan = {
        "run_name": "local-ft",
        "backend": "tiny",
        "base_model": "tiny-byte-lm",
        "dataset_uri": make_dataset(tmp_path / "dataset").as_uri(),
        "output_uri": (tmp_path / "out").as_uri(),
        "checkpoint_dir": str(tmp_path / "checkpoints"),
        "nodes": 2,
        "gpus_per_node": 1,
        "micro_batch_size": 8,
        "global_batch_size": 16,
        "seq_length": 64,
        "learning_rate": 3e-3,
        "max_steps": 120,
        "checkpoint_interval": 40,
        "seed": 7,
    }
    plan.update(overrides)
    return plan


def read_metrics(ckpt: Path) -> list[dict]:
    return [json.loads(line) for line in (ckpt / "metrics.jsonl").read_text().splitlines()]


def test_two_local_ranks_train_and_export(tmp_path):
    plan = make_plan(tmp_path)
    result = launch(plan, 2, timeout=120)

    metrics = result["metrics"]
    assert result["backend"] == "tiny"
    assert metrics["steps"] == 120 and metrics["resumed_from_step"] == 0
    assert metrics["final_loss"] < 0.5 * metrics["initial_loss"], metrics
    assert metrics["tokens_seen"] > 0 and metrics["train_seconds"] > 0

    ckpt = tmp_path / "checkpoints"
    assert result["checkpoint_uri"] == (ckpt / "step-120").as_uri()
    assert (ckpt / "latest").read_text().strip() == "step-120"
    assert [s for s, _ in tiny.complete_checkpoints(ckpt)] == [40, 80, 120]
    assert [r["step"] for r in read_metrics(ckpt)] == list(range(1, 121))

    model_dir = tmp_path / "out" / "model"
    assert result["model_uri"] == model_dir.as_uri()
    for name in ("config.json", "model.safetensors", "tokenizer_config.json", "generation_config.json"):
        assert (model_dir / name).is_file(), name
    exported = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert exported["final_loss"] == metrics["final_loss"] and len(exported["history"]) == 120

    model = tinylm.load_model(result["model_uri"])
    assert tinylm.generate(model, "Q: color of item 2?", max_new_tokens=16).startswith("A:")


def test_killed_rank_fails_the_launch_and_the_rerun_resumes_from_checkpoint(tmp_path, monkeypatch):
    plan = make_plan(tmp_path, max_steps=200, checkpoint_interval=10)
    ckpt = tmp_path / "checkpoints"
    pids: dict[int, int] = {}
    rank_tmp: list[str | None] = []
    outcome: dict[str, BaseException | dict] = {}
    temp_root = tmp_path / "tmp"
    temp_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp_root))  # where the launcher makes its attempt dirs

    def first_attempt():
        try:
            # no restart inside the launch: this test is about a later rerun (an Airflow retry)
            outcome["result"] = launch(plan, 2, timeout=120, on_started=pids.update, policy=NO_RESTARTS)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = exc

    runner = threading.Thread(target=first_attempt)
    runner.start()
    seen_step = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and runner.is_alive():
        latest = tiny.latest_checkpoint(ckpt)
        if latest and latest[0] > 10:
            seen_step = latest[0]
            # both ranks are past start-up and training: their environment is the one they run with
            rank_tmp = [psutil.Process(pid).environ().get("TMPDIR") for pid in pids.values()]
            os.kill(pids[1], signal.SIGKILL)
            break
        time.sleep(0.01)
    runner.join(timeout=60)
    assert seen_step is not None, f"no checkpoint beyond step 10 appeared before the run ended: {outcome}"

    error = outcome.get("error")
    assert isinstance(error, LaunchError), outcome
    assert "rank 1 failed with exit code -9 (SIGKILL)" in str(error)
    assert error.failures[0].rank == 1 and error.failures[0].returncode == -signal.SIGKILL

    last_step = tiny.latest_checkpoint(ckpt)[0]
    assert seen_step <= last_step < 200
    before = read_metrics(ckpt)
    first_attempt_id = before[0]["attempt"]

    result = launch(plan, 2, timeout=120)
    metrics = result["metrics"]
    assert metrics["resumed_from_step"] == last_step
    assert metrics["steps"] == 200 and metrics["final_loss"] < metrics["initial_loss"]

    after = read_metrics(ckpt)
    steps = [r["step"] for r in after]
    assert steps == list(range(1, 201)), "each step exactly once, in order"
    # Steps up to the checkpoint come from the first attempt (not recomputed); the rest from the rerun.
    assert {r["attempt"] for r in after if r["step"] <= last_step} == {first_attempt_id}
    assert first_attempt_id not in {r["attempt"] for r in after if r["step"] > last_step}
    assert [r for r in after if r["step"] <= last_step] == [r for r in before if r["step"] <= last_step]
    # the killed rank's temp files were in its attempt's dir, which the launcher removed
    assert len(rank_tmp) == 2 and all(t and Path(t).parent == temp_root for t in rank_tmp), rank_tmp
    assert list(temp_root.iterdir()) == []


def test_launcher_passes_hostile_values_only_as_single_argv_items(tmp_path, monkeypatch):
    # Names that would be commands in a shell are refused outright, by each rank's own validator (the
    # launcher trusts the planning task's plan; a hostile checkpoint_dir never reaches it: tests/unit/
    # test_training_plan.py)...
    for key, value in (
        ("run_name", "; rm -rf /"),
        ("run_name", "$(reboot)"),
        ("run_name", "../../etc"),
    ):
        with pytest.raises(InputError, match=repr(key)):
            launch(make_plan(tmp_path / key / str(abs(hash(value))), **{key: value}), 2, policy=NO_RESTARTS)

    # ...and values that may legally hold shell metacharacters travel inside the one JSON item.
    hostile = "file:///data/$(reboot);rm -rf ~ `id` && echo pwned |"
    plan = make_plan(tmp_path / "ok", dataset_uri=hostile, output_uri="s3://bucket/x y/$(id)")
    calls = []

    class FakePopen:
        def __init__(self, args, **kwargs):
            calls.append((args, kwargs))
            self.pid = 1000 + len(calls)
            self.stdout, self.stderr = io.BytesIO(), io.BytesIO()  # rank 0's pipes: the launcher forwards them
            if kwargs["env"]["RANK"] == "0":
                Path(kwargs["env"]["LLMOPS_XCOM_PATH"]).write_text('{"ok": true}')

        def poll(self):
            return 0

    monkeypatch.setattr(local_launcher.subprocess, "Popen", FakePopen)
    assert launch(plan, 2, python="python3") == {"ok": True}

    expected = build_command(plan, "python3")  # the plan as planned: each rank validates it
    assert len(calls) == 2
    for rank, (args, kwargs) in enumerate(calls):
        assert isinstance(args, list) and args == expected
        assert kwargs.get("shell", False) is False
        assert args[:4] == ["python3", "-m", "include.training.entrypoint", "--plan"] and len(args) == 5
        assert [a for a in args if "$(reboot)" in a] == [args[4]]
        assert json.loads(args[4]) == plan
        env = kwargs["env"]
        assert env["RANK"] == env["NODE_RANK"] == env["JOB_COMPLETION_INDEX"] == str(rank)
        assert env["WORLD_SIZE"] == "2" and env["LOCAL_RANK"] == "0" and env["MASTER_ADDR"] == "127.0.0.1"
        assert env["MASTER_PORT"] == calls[0][1]["env"]["MASTER_PORT"]
    # the entrypoint reads back exactly the plan that was sent
    assert _parse_args(expected[3:]) == plan


def test_launcher_refuses_a_process_count_that_disagrees_with_the_plan(tmp_path):
    with pytest.raises(ValueError, match="nprocs=3"):
        launch(make_plan(tmp_path), 3)


def test_launcher_reports_a_rank_that_fails_on_its_own(tmp_path):
    plan = make_plan(tmp_path, dataset_uri=(tmp_path / "missing").as_uri())
    with pytest.raises(LaunchError) as info:
        launch(plan, 2, timeout=60, policy=NO_RESTARTS)
    message = str(info.value)
    assert "rank 0 failed with exit code 1" in message or "rank 1 failed with exit code 1" in message
    assert "no training.jsonl" in message


def test_trainer_image_runs_the_entrypoint_without_a_shell():
    dockerfile = (PROJECT_ROOT / "images" / "nemo-trainer" / "Dockerfile").read_text()
    entry = [line for line in dockerfile.splitlines() if line.startswith("ENTRYPOINT")]
    assert len(entry) == 1
    assert json.loads(entry[0].removeprefix("ENTRYPOINT")) == ["python", "-m", "include.training.entrypoint"]
    assert re.search(r"^ARG NEMO_IMAGE=nvcr\.io/nvidia/nemo:\d\d\.\d\d(\.\d+)?$", dockerfile, re.M)
    assert "FROM ${NEMO_IMAGE}" in dockerfile and ":latest" not in dockerfile
    assert re.search(r"^USER \S+", dockerfile, re.M)  # not root


def test_trainer_entrypoint_module_runs_as_a_program(tmp_path):
    """`python -m include.training.entrypoint` with a bad plan exits 2 and names the key."""
    proc = subprocess.run(
        [sys.executable, "-m", "include.training.entrypoint", "--plan", json.dumps({"backend": "tiny"})],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2 and "'run_name' is required" in proc.stderr


def test_rank_zero_progress_streams_to_the_logger_while_it_trains(tmp_path):
    """Rank 0's stdout reaches `include.training.rank0` line by line during the run (the task log on
    local), not after it; rank 1's does not; the lines are plain text."""
    import logging

    import psutil

    from include.lifecycle.summaries import trained
    from include.logs import PROGRESS_INTERVAL_ENV

    plan = make_plan(tmp_path, max_steps=30, checkpoint_interval=10)
    pids: dict[int, int] = {}
    seen: list[tuple[str, bool]] = []  # (line, rank 0 still running when it arrived)

    class Handler(logging.Handler):
        def emit(self, record):
            proc = psutil.Process(pids[0]) if pids else None
            alive = proc is not None and proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
            seen.append((record.getMessage(), alive))

    logger = logging.getLogger("include.training.rank0")
    handler, level = Handler(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        result = launch(plan, 2, timeout=120, on_started=pids.update, policy=NO_RESTARTS,
                        env={**os.environ, PROGRESS_INTERVAL_ENV: "0"})
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)

    lines = [line for line, _ in seen]
    steps = [line for line in lines if line.startswith("training: step ")]
    assert len(steps) == 30, lines
    assert re.fullmatch(r"training: step 10 of 30 \(33%\), [\d.]+ steps/s, ETA .+; loss [\d.]+, tokens/s \d+, lr .+",
                        steps[9]), steps[9]
    assert [line for line in lines if "checkpoint written" in line] == [
        f"training: checkpoint written at step {s}: {tmp_path / 'checkpoints' / f'step-{s}'}" for s in (10, 20, 30)]
    assert any(alive for line, alive in seen if line.startswith("training: step 1 of")), "forwarded only at exit"
    assert any(line.startswith("tiny: rank 0 of 2") for line in lines)
    assert not any("\r" in line or "\x1b" in line for line in lines)
    assert trained(result).startswith("training: 30 steps on 2 ranks, loss ")
