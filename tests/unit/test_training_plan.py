"""The trainer's plan validation, rank environment and entrypoint contract."""

from __future__ import annotations

import json
import sys
import types

import pytest

from include import container
from include.errors import InputError
from include.storage import files
from include.training import entrypoint
from include.training import plan as plan_module
from include.training.entrypoint import RankEnv
from include.training.plan import validate_plan


def _plan(**overrides):
    plan = {
        "run_name": "ft-2024-01-01",
        "backend": "tiny",
        "dataset_uri": "file:///data/curated/v1",
        "output_uri": "s3://bucket/runs/ft-1",
        "checkpoint_dir": "/fsx/checkpoints/ft-1",
        "base_model": "tiny-byte-lm",
    }
    plan.update(overrides)
    return plan


def test_plan_defaults_are_filled_per_backend():
    tiny = validate_plan(_plan())
    assert tiny["seq_length"] == 128 and tiny["method"] == "full"
    assert tiny["global_batch_size"] == tiny["micro_batch_size"]  # one rank, no accumulation
    nemo = validate_plan(_plan(backend="nemo", base_model="llama31_8b"))
    assert nemo["gpus_per_node"] == 8 and nemo["method"] == "lora" and nemo["seq_length"] == 2048
    assert set(tiny) == set(plan_module.PLAN_KEYS)


def test_plan_global_batch_default_scales_with_data_parallel_ranks():
    plan = validate_plan(_plan(nodes=2, gpus_per_node=1, micro_batch_size=4))
    assert plan["global_batch_size"] == 8


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"unknown_knob": 1}, "unknown_knob"),
        ({"backend": "deepspeed"}, "backend"),
        ({"run_name": ""}, "run_name"),
        ({"run_name": "a" * 64}, "run_name"),
        ({"dataset_uri": "http://example.com/data"}, "dataset_uri"),
        ({"dataset_uri": "file://relative/path"}, "dataset_uri"),
        ({"output_uri": "s3://"}, "output_uri"),
        ({"checkpoint_dir": "relative/dir"}, "checkpoint_dir"),
        ({"method": "qlora"}, "method"),
        ({"max_steps": 0}, "max_steps"),
        ({"max_steps": True}, "max_steps"),
        ({"max_steps": 10.0}, "max_steps"),
        ({"seq_length": "128"}, "seq_length"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"learning_rate": float("nan")}, "learning_rate"),
        ({"micro_batch_size": 3, "global_batch_size": 8}, "global_batch_size"),
        ({"tensor_parallel": 2, "gpus_per_node": 2}, "tensor_parallel"),  # tiny is data-parallel only
        ({"tensor_parallel": 3, "gpus_per_node": 8, "backend": "nemo", "base_model": "llama31_8b"}, "tensor_parallel"),
        ({"backend": "nemo", "base_model": "gpt-17"}, "base_model"),
        ({"seq_length": 4096}, "seq_length"),
    ],
)
def test_plan_errors_name_the_bad_key(overrides, key):
    with pytest.raises(InputError, match=repr(key)):
        validate_plan(_plan(**overrides))


@pytest.mark.parametrize("key", plan_module.REQUIRED_KEYS)
def test_plan_missing_required_key_is_named(key):
    plan = _plan()
    del plan[key]
    with pytest.raises(InputError, match=f"{key!r} is required"):
        validate_plan(plan)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("run_name", "; rm -rf /"),
        ("run_name", "$(reboot)"),
        ("run_name", "../../etc"),
        ("run_name", "a b"),
        ("base_model", "`id`"),
        ("checkpoint_dir", "/fsx/../../etc"),
        ("dataset_uri", "file:///data/../../etc/passwd"),
        ("output_uri", "s3://bucket/a/../../b"),
        ("dataset_uri", "s3://bucket/x\ny"),
    ],
)
def test_plan_refuses_hostile_values(key, value):
    with pytest.raises(InputError, match=repr(key)):
        validate_plan(_plan(**{key: value}))


def test_plan_that_is_not_an_object_is_refused():
    with pytest.raises(InputError, match="JSON object"):
        validate_plan(["not", "a", "plan"])


def test_rank_env_reads_indexed_job_and_torchrun_variables():
    env = RankEnv.from_environ(
        {
            "RANK": "3",
            "WORLD_SIZE": "4",
            "LOCAL_RANK": "1",
            "JOB_COMPLETION_INDEX": "1",
            "MASTER_ADDR": "ft-0.ft-svc.llm-training.svc",
            "MASTER_PORT": "29400",
        }
    )
    assert (env.rank, env.world_size, env.local_rank, env.node_rank) == (3, 4, 1, 1)
    assert env.master_addr == "ft-0.ft-svc.llm-training.svc" and env.master_port == 29400
    assert not env.is_main
    assert RankEnv.from_environ({}) == RankEnv()  # a plain single process
    assert RankEnv.from_environ({"NODE_RANK": "2", "JOB_COMPLETION_INDEX": "5"}).node_rank == 2


@pytest.mark.parametrize("environ", [{"RANK": "x"}, {"RANK": "2", "WORLD_SIZE": "2"}, {"MASTER_PORT": "-1"}])
def test_rank_env_rejects_inconsistent_values(environ):
    with pytest.raises(InputError):
        RankEnv.from_environ(environ)


def test_wait_for_master_hook_waits_for_the_store_on_every_worker(monkeypatch):
    calls = []
    fake = types.ModuleType("include.training.rendezvous")
    fake.DEFAULT_WAIT_TIMEOUT_S, fake.WAIT_TIMEOUT_ENV = 1800.0, "LLMOPS_RDZV_WAIT_TIMEOUT_S"
    fake.wait_for_store = lambda host, port, timeout_s: calls.append((host, port, timeout_s))
    monkeypatch.setitem(sys.modules, "include.training.rendezvous", fake)
    monkeypatch.setenv("LLMOPS_RDZV_WAIT_TIMEOUT_S", "42")

    entrypoint.wait_for_master_hook(RankEnv(rank=0, world_size=2, node_rank=0, master_addr="ft-0.svc"))
    assert calls == []  # node 0 hosts the store
    # an IP is no proof that the store is up: workers wait either way
    entrypoint.wait_for_master_hook(RankEnv(rank=1, world_size=2, node_rank=1, master_addr="10.0.0.7"))
    entrypoint.wait_for_master_hook(RankEnv(rank=1, world_size=2, node_rank=1, master_addr="ft-0.svc"))
    assert calls == [("10.0.0.7", 29500, 42.0), ("ft-0.svc", 29500, 42.0)]


def test_main_rejects_a_bad_plan_with_exit_code_2(capsys):
    assert entrypoint.main(["--plan", json.dumps(_plan(max_steps=-5))]) == 2
    assert "'max_steps'" in capsys.readouterr().err
    assert entrypoint.main(["--plan", "{not json"]) == 2


def test_main_refuses_a_world_size_that_disagrees_with_the_plan(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(InputError, match="WORLD_SIZE=2"):
        entrypoint.run(validate_plan(_plan()), RankEnv.from_environ())


def test_write_result_is_atomic_and_uses_the_xcom_path(tmp_path):
    target = tmp_path / "airflow" / "xcom" / "return.json"
    path = container.write_result({"a": 1}, {"LLMOPS_XCOM_PATH": str(target)})
    assert path == target and json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in target.parent.iterdir()] == ["return.json"]


def test_publish_to_a_non_local_filesystem_goes_through_fsspec(tmp_path, monkeypatch):
    """As in the trainer image, where no Airflow connection exists."""
    import fsspec

    monkeypatch.setattr(files, "_PLAIN_FSSPEC", True)

    src = tmp_path / "model"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text("{}")
    (src / "sub" / "w.bin").write_bytes(b"\x00\x01")
    files.publish_dir(src, "memory://bucket/run/model")
    fs = fsspec.filesystem("memory")
    assert fs.cat("/bucket/run/model/sub/w.bin") == b"\x00\x01"
    assert fs.cat("/bucket/run/model/config.json") == b"{}"


def test_publish_dir_replaces_a_local_target(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "new.txt").write_text("new")
    dest = tmp_path / "out" / "model"
    dest.mkdir(parents=True)
    (dest / "old.txt").write_text("old")
    files.publish_dir(src, dest.as_uri())
    assert sorted(p.name for p in dest.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in dest.parent.iterdir()) == ["model"]  # no staging left behind


def test_main_trains_a_single_process_plan_end_to_end(tmp_path, monkeypatch):
    """World size 1 through the real entrypoint: no launcher, no process group."""
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"id": str(i), "input": f"q{i % 5}?", "output": f"a{i % 5}"} for i in range(40)]
    (data / "training.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK", "JOB_COMPLETION_INDEX", "MASTER_ADDR"):
        monkeypatch.delenv(var, raising=False)
    xcom = tmp_path / "xcom" / "return.json"
    monkeypatch.setenv("LLMOPS_XCOM_PATH", str(xcom))
    plan = _plan(
        dataset_uri=data.as_uri(),
        output_uri=(tmp_path / "out").as_uri(),
        checkpoint_dir=str(tmp_path / "ckpt"),
        max_steps=6,
        checkpoint_interval=4,
        seq_length=32,
    )
    assert entrypoint.main(["--plan", json.dumps(plan)]) == 0
    result = json.loads(xcom.read_text())
    assert result["backend"] == "tiny"
    assert result["model_uri"] == f"{(tmp_path / 'out').as_uri()}/model"
    assert result["checkpoint_uri"].endswith("/ckpt/step-6")
    assert set(result["metrics"]) >= {
        "initial_loss",
        "final_loss",
        "steps",
        "resumed_from_step",
        "tokens_seen",
        "train_seconds",
    }
    assert result["metrics"]["steps"] == 6
    assert (tmp_path / "out" / "model" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["steps"] == 6
