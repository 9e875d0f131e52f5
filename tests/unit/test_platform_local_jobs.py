"""The local platform's container jobs: no orphaned rank processes, and results read from storage.

Rank processes here are plain `sleep`s: what matters is the pid-file bookkeeping around them, not
training (tests/integration/test_local_training.py runs the real trainer).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from include.platforms import get_platform
from include.platforms.local import jobs as local_jobs
from include.settings import Settings, get_settings
from include.training import local_launcher, results
from include.training.local_launcher import launch, ranks_dir, record_rank

LOCAL_JOBS = local_jobs.LocalJobs(Settings(profile="local"))
REAL_POPEN = subprocess.Popen  # tests below replace subprocess.Popen for the launcher


def plan_for(tmp_path: Path, **overrides) -> dict:
    return {"run_name": "local-ft", "backend": "tiny", "base_model": "tiny-byte-lm",
            "dataset_uri": (tmp_path / "dataset").as_uri(), "output_uri": (tmp_path / "out").as_uri(),
            "checkpoint_dir": str(tmp_path / "checkpoints"), "nodes": 2, "gpus_per_node": 1,
            "dag_id": "llm_finetune", "run_id": "manual__1", **overrides}


@pytest.fixture
def sleeper():
    """Start `sleep` processes (argument lists, no shell) and make sure none outlives the test."""
    started: list[subprocess.Popen] = []

    def start(seconds: int = 60, **streams) -> subprocess.Popen:
        proc = REAL_POPEN(["sleep", str(seconds)], **streams)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def gone(proc: subprocess.Popen) -> bool:
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        return False
    return True


def test_setup_is_local_and_creates_nothing(tmp_path):
    assert LOCAL_JOBS.setup_rendezvous(plan_for(tmp_path)) == {"kind": "local", "master_addr": "127.0.0.1"}
    assert not (tmp_path / "checkpoints").exists()


def test_teardown_stops_a_leftover_rank_and_removes_its_pid_file(tmp_path, sleeper):
    plan = plan_for(tmp_path)
    orphan = sleeper()
    record_rank(plan["checkpoint_dir"], 1, orphan.pid)
    assert (ranks_dir(plan["checkpoint_dir"]) / "rank-1.pid").is_file()

    LOCAL_JOBS.teardown_rendezvous(plan)

    assert gone(orphan)
    assert list(ranks_dir(plan["checkpoint_dir"]).iterdir()) == []


def test_teardown_stops_ranks_orphaned_by_a_killed_launcher(tmp_path):
    """The Airflow task dies by SIGKILL: its ranks are reparented, nobody reaps them but teardown."""
    plan = plan_for(tmp_path)
    code = ("import subprocess, sys, time; from include.training.local_launcher import record_rank; "
            "p = subprocess.Popen(['sleep', '60']); record_rank(sys.argv[1], 0, p.pid); "
            "print(p.pid, flush=True); time.sleep(60)")
    root = Path(__file__).resolve().parents[2]
    launcher = REAL_POPEN([sys.executable, "-c", code, plan["checkpoint_dir"]], cwd=root, stdout=subprocess.PIPE,
                          env={**os.environ, "PYTHONPATH": str(root)}, text=True)
    rank_pid = 0
    try:
        rank_pid = int(launcher.stdout.readline())
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        rank = psutil.Process(rank_pid)
        assert rank.is_running() and rank.ppid() != launcher.pid  # an orphan now

        LOCAL_JOBS.teardown_rendezvous(plan)

        psutil.wait_procs([rank], timeout=10)
        assert not rank.is_running()
    finally:
        launcher.kill()
        launcher.wait()
        launcher.stdout.close()
        with contextlib.suppress(psutil.Error, ValueError):
            psutil.Process(rank_pid).kill()


def test_teardown_ignores_stale_pid_files(tmp_path, sleeper):
    plan = plan_for(tmp_path)
    directory = ranks_dir(plan["checkpoint_dir"])
    exited = sleeper()
    record_rank(plan["checkpoint_dir"], 0, exited.pid)
    exited.kill()
    exited.wait()
    # A pid that now belongs to another process (here: this test) is recognised by its start time.
    me = psutil.Process(os.getpid())
    (directory / "rank-1.pid").write_text(json.dumps({"rank": 1, "pid": me.pid, "create_time": me.create_time() - 60}))
    (directory / "rank-2.pid").write_text("{not json")
    bystander = sleeper()

    LOCAL_JOBS.teardown_rendezvous(plan)
    LOCAL_JOBS.teardown_rendezvous(plan)  # twice: idempotent

    assert bystander.poll() is None, "a process never recorded must not be touched"
    assert list(directory.iterdir()) == []


def test_teardown_without_any_launch_is_a_no_op(tmp_path):
    LOCAL_JOBS.teardown_rendezvous(plan_for(tmp_path))
    assert not (tmp_path / "checkpoints").exists()


def test_the_seam_dispatches_to_local_by_default(tmp_path, sleeper, monkeypatch):
    monkeypatch.delenv("LLMOPS_PROFILE", raising=False)
    get_settings.cache_clear()
    plan = plan_for(tmp_path)
    orphan = sleeper()
    record_rank(plan["checkpoint_dir"], 0, orphan.pid)
    assert get_platform().jobs().setup_rendezvous(plan)["kind"] == "local"
    get_platform().jobs().teardown_rendezvous(plan)
    assert gone(orphan)


class SleepingRanks:
    """Stands in for subprocess.Popen in the launcher: each rank is a short real `sleep`."""

    def __init__(self, sleeper):
        self.sleeper = sleeper

    def __call__(self, argv, *, env, **kwargs):
        assert isinstance(argv, list) and not kwargs.get("shell")
        if env["RANK"] == "0":
            Path(env["LLMOPS_XCOM_PATH"]).write_text(json.dumps({"ok": True}))
        return self.sleeper(1, stdout=kwargs.get("stdout"), stderr=kwargs.get("stderr"))  # rank 0's are pipes


def test_launch_records_ranks_while_they_run_and_forgets_them_on_exit(tmp_path, sleeper, monkeypatch):
    plan = plan_for(tmp_path)
    monkeypatch.setattr(local_launcher.subprocess, "Popen", SleepingRanks(sleeper))
    seen = {}

    def on_started(pids):
        seen.update({p.name: json.loads(p.read_text())["pid"] for p in ranks_dir(plan["checkpoint_dir"]).iterdir()})
        assert sorted(seen.values()) == sorted(pids.values())

    trainer_plan = {k: v for k, v in plan.items() if k not in ("dag_id", "run_id")}
    assert launch(trainer_plan, 2, on_started=on_started, timeout=30) == {"ok": True}
    assert sorted(seen) == ["rank-0.pid", "rank-1.pid"]
    assert list(ranks_dir(plan["checkpoint_dir"]).iterdir()) == []


def test_launch_first_stops_ranks_a_killed_earlier_launch_left_running(tmp_path, sleeper, monkeypatch):
    plan = plan_for(tmp_path)
    orphan = sleeper()
    record_rank(plan["checkpoint_dir"], 0, orphan.pid)
    monkeypatch.setattr(local_launcher.subprocess, "Popen", SleepingRanks(sleeper))

    trainer_plan = {k: v for k, v in plan.items() if k not in ("dag_id", "run_id")}
    launch(trainer_plan, 2, on_started=lambda _: None if gone(orphan) else pytest.fail("orphan still running"))


def test_read_result_names_the_missing_uri(tmp_path):
    plan = plan_for(tmp_path)
    with pytest.raises(results.ResultMissing) as info:
        results.read_result(plan)
    assert f"{plan['output_uri']}/result.json" in str(info.value)
    assert isinstance(info.value, FileNotFoundError)


def test_read_result_returns_the_published_result(tmp_path):
    plan = plan_for(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    result = {"backend": "tiny", "checkpoint_uri": "file:///ckpt/step-120", "model_uri": f"{plan['output_uri']}/model",
              "metrics": {"train_loss": 1.2}}
    (out / "result.json").write_text(json.dumps(result))
    assert results.read_result(plan) == result

    (out / "result.json").write_text('{"backend": "tiny"')
    with pytest.raises(ValueError, match="result.json is not valid JSON"):
        results.read_result(plan)
    (out / "result.json").write_text('{"backend": "tiny"}')
    with pytest.raises(ValueError, match="lacks checkpoint_uri, model_uri, metrics"):
        results.read_result(plan)


def test_local_operator_launches_nodes_times_gpus_ranks_of_the_trainer_plan(tmp_path, monkeypatch):
    from llmops_operators.training import LocalTrainingJobOperator

    calls = []
    monkeypatch.setattr(local_launcher, "launch", lambda plan, nprocs, **kw: calls.append((plan, nprocs)) or {"ok": 1})
    plan = {**plan_for(tmp_path), "pool": "experiment", "instance_type": "g6e.12xlarge", "image": "trainer:1"}
    op = LocalTrainingJobOperator(task_id="train", plan=plan)
    assert op.execute({}) == {"ok": 1}
    (sent, nprocs), = calls
    assert nprocs == 2 and not {"dag_id", "run_id", "pool", "instance_type", "image"} & set(sent)
    assert sent["checkpoint_dir"] == plan["checkpoint_dir"]


def test_local_operator_fails_a_bad_plan_without_retry(tmp_path):
    from airflow.sdk.exceptions import AirflowFailException
    from llmops_operators.training import LocalTrainingJobOperator

    from include.errors import InputError

    op = LocalTrainingJobOperator(task_id="train", plan=plan_for(tmp_path, run_name="$(reboot)"))
    with pytest.raises(InputError, match="run_name") as info:
        op.execute({})
    assert isinstance(info.value, AirflowFailException), "bad input fails the task without a retry"


def test_local_operator_on_kill_stops_its_ranks(tmp_path, sleeper):
    from llmops_operators.training import LocalTrainingJobOperator

    plan = plan_for(tmp_path)
    rank = sleeper()
    record_rank(plan["checkpoint_dir"], 0, rank.pid)
    LocalTrainingJobOperator(task_id="train", plan=plan).on_kill()
    assert gone(rank)
