"""The plan -> NeMo recipe contract, checked without NeMo installed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from include.training import nemo_backend
from include.training.nemo_backend import NEMO_MODELS, recipe_settings
from include.training.plan import validate_plan


def _plan(**overrides):
    plan = {
        "run_name": "ft-llama",
        "backend": "nemo",
        "dataset_uri": "s3://bucket/curated/v3",
        "output_uri": "s3://bucket/runs/ft-llama",
        "checkpoint_dir": "/fsx/checkpoints",
        "base_model": "llama31_8b",
        "max_steps": 500,
        "checkpoint_interval": 100,
        "learning_rate": 2e-4,
        "lora_rank": 16,
        "nodes": 2,
        "gpus_per_node": 8,
        "micro_batch_size": 1,
        "global_batch_size": 64,
        "seq_length": 4096,
        "seed": 7,
    }
    plan.update(overrides)
    return validate_plan(plan)


def test_recipe_for_a_lora_plan():
    s = recipe_settings(_plan(), "/tmp/dataset")
    assert s["recipe"] == "llama31_8b"
    assert s["factory"] == {
        "name": "ft-llama",
        "dir": "/fsx/checkpoints",
        "num_nodes": 2,
        "num_gpus_per_node": 8,
        "peft_scheme": "lora",
    }
    assert s["lora"] == {"dim": 16, "alpha": 32}
    assert s["optim"] == {"lr": 2e-4}
    assert s["trainer"]["max_steps"] == 500 and s["trainer"]["val_check_interval"] == 100
    assert s["checkpoint"]["every_n_train_steps"] == 100 and s["checkpoint"]["save_last"] is True
    assert s["strategy"] == {"tensor_model_parallel_size": 1, "pipeline_model_parallel_size": 1}
    assert s["data"] == {
        "dataset_root": "/tmp/dataset",
        "seq_length": 4096,
        "micro_batch_size": 1,
        "global_batch_size": 64,
        "seed": 7,
    }
    assert s["model"] == {"seq_length": 4096}
    assert s["resume"] == {"resume_if_exists": True, "resume_ignore_no_checkpoint": True}
    # a restarted Job must land in the same directory to find its checkpoints
    assert s["log"] == {"use_datetime_version": False}


def test_recipe_for_a_full_fine_tune_with_model_parallelism():
    s = recipe_settings(
        _plan(method="full", tensor_parallel=4, pipeline_parallel=2, global_batch_size=32, checkpoint_interval=900),
        "/d",
    )
    assert s["factory"]["peft_scheme"] is None and s["lora"] is None
    assert s["strategy"] == {"tensor_model_parallel_size": 4, "pipeline_model_parallel_size": 2}
    # validation/checkpoint cadence never exceeds the run
    assert s["trainer"]["val_check_interval"] == 500 and s["checkpoint"]["every_n_train_steps"] == 500


@pytest.mark.parametrize("name", ["llama3_8b", "llama31_8b", "mistral_7b", "qwen2_7b"])
def test_recipe_supported_models_map_to_recipe_modules(name):
    model = NEMO_MODELS[name]
    assert model.recipe == name and "/" in model.hf_id
    assert 1 < model.params_billion < 100
    assert recipe_settings(_plan(base_model=name), "/d")["recipe"] == name


def test_recipe_memory_estimate_refuses_what_cannot_fit():
    full = nemo_backend.estimated_training_memory_gb("llama31_8b", "full")
    lora = nemo_backend.estimated_training_memory_gb("llama31_8b", "lora")
    assert full > 80 > lora  # an 8B full fine-tune does not fit one 80 GB GPU; LoRA does


def test_recipe_export_runs_as_an_argument_list():
    cmd = nemo_backend.export_command(Path("/fsx/c/ft-last"), Path("/tmp/hf"), lora=True, python="python")
    assert cmd == [
        "python",
        "-m",
        "include.training.nemo_backend",
        "export",
        "--checkpoint",
        "/fsx/c/ft-last",
        "--output",
        "/tmp/hf",
        "--merge-lora",
    ]
    assert "--merge-lora" not in nemo_backend.export_command(Path("/c"), Path("/o"), lora=False)


def test_recipe_export_environment_is_single_process():
    env = nemo_backend.export_environment(
        {
            "RANK": "0",
            "WORLD_SIZE": "16",
            "TORCHELASTIC_RUN_ID": "x",
            "LOCAL_WORLD_SIZE": "8",
            "MASTER_PORT": "29500",
            "HF_TOKEN": "t",
        },
        41000,
    )
    assert env["WORLD_SIZE"] == "1" and env["MASTER_PORT"] == "41000" and env["HF_TOKEN"] == "t"
    assert "TORCHELASTIC_RUN_ID" not in env and "LOCAL_WORLD_SIZE" not in env


def test_recipe_module_imports_without_nemo():
    code = (
        "import sys, include.training.nemo_backend, include.training.entrypoint;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('nemo', 'nemo_run', 'lightning', 'torch'));"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
