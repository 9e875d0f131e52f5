"""The lifecycle on the local profile through real `airflow dags test` runs."""

import json
import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from include.sample_data import stage_sample

pytestmark = pytest.mark.slow


def models(local_airflow) -> list[Path]:
    return sorted((local_airflow.root / "data" / "models").glob("*/result.json"))


def prepare(local_airflow) -> None:
    raw = stage_sample(local_airflow.data_root)
    local_airflow.dags_test("prepare_dataset", {"source_uris": [raw]})


def steps_logged(checkpoints: Path) -> list[int]:
    lines = (checkpoints / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines]


def test_prepare_then_train_two_ranks(local_airflow):
    prepare(local_airflow)
    local_airflow.dags_test("finetune_lifecycle")
    [result_file] = models(local_airflow)
    result = json.loads(result_file.read_text())
    m = result["metrics"]
    assert result["backend"] == "tiny" and m["world_size"] == 2
    assert m["final_loss"] < m["initial_loss"], m
    model_dir = Path(result["model_uri"].removeprefix("file://"))
    assert (model_dir / "config.json").is_file() and (model_dir / "model.safetensors").is_file()
    [ckpt] = (local_airflow.root / "checkpoints").iterdir()
    assert steps_logged(ckpt) == list(range(1, m["steps"] + 1))


def test_killed_rank_resumes_from_last_checkpoint_on_retry(local_airflow):
    prepare(local_airflow)
    proc = local_airflow.popen_dags_test("finetune_lifecycle", {"max_steps": 200, "checkpoint_interval": 40})
    try:
        ckpt_root = local_airflow.root / "checkpoints"
        deadline = time.monotonic() + 240
        while not list(ckpt_root.glob("*/step-*80*")) and time.monotonic() < deadline:
            assert proc.poll() is None, (local_airflow.root / "finetune_lifecycle.log").read_text()[-5000:]
            time.sleep(0.2)
        victims = [p for p in psutil.process_iter(["cmdline", "environ"])
                   if "include.training.entrypoint" in " ".join(p.info["cmdline"] or [])
                   and (p.info["environ"] or {}).get("RANK") == "1"
                   and (p.info["environ"] or {}).get("LLMOPS_DATA_ROOT") == local_airflow.data_root]
        assert len(victims) == 1, victims
        os.kill(victims[0].pid, signal.SIGKILL)
        assert proc.wait(timeout=400) == 0, (local_airflow.root / "finetune_lifecycle.log").read_text()[-8000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (local_airflow.root / "finetune_lifecycle.log").read_text()
    assert "rank 1 failed with exit code -9 (SIGKILL)" in log  # the first attempt says which rank died, how
    [result_file] = models(local_airflow)
    m = json.loads(result_file.read_text())["metrics"]
    assert m["resumed_from_step"] >= 80 and m["final_loss"] < m["initial_loss"]
    [ckpt] = ckpt_root.iterdir()
    steps = steps_logged(ckpt)
    assert steps == list(range(1, 201)), "every step exactly once: nothing before the checkpoint was redone"
