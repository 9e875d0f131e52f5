"""The fault matrix: real trainer processes, real signals, all-or-nothing restarts on the local profile.

Each case ends either in success having lost at most one checkpoint interval, or in a clear
failure within a stated bound. "Lost" is measured from the steps log: every step rank 0 finished
is a line of metrics.jsonl tagged with its attempt; the log is snapshotted after each failed
attempt (all ranks stopped) and at the end, so a step re-run after a restart shows up under two
attempts. Two ranks, a tiny model, a few dozen steps: each launch takes seconds.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from include.training import checkpoints, tiny
from include.training.local_launcher import LaunchError, launch
from include.training.restarts import PEER_LOST_EXIT_CODE, RestartPolicy
from tests.integration.test_local_training import make_dataset, make_plan

pytestmark = pytest.mark.slow

INTERVAL = 10
FAST = RestartPolicy(max_restarts=2, restart_backoff_s=0.2, max_wall_s=300, rendezvous_timeout_s=30)


def small_plan(tmp_path: Path, **overrides) -> dict:
    plan = make_plan(tmp_path, max_steps=30, checkpoint_interval=INTERVAL, seq_length=32, micro_batch_size=4,
                     global_batch_size=8)
    # a smaller dataset than make_plan's: fewer records to encode on each start
    plan["dataset_uri"] = make_dataset(tmp_path / "small-dataset", n_train=64).as_uri()
    plan.update(overrides)
    return plan


class Recorder:
    """Collects what the launcher reports per attempt, and snapshots the steps log between attempts."""

    def __init__(self, ckpt: Path):
        self.ckpt = ckpt
        self.started: list[dict[int, int]] = []
        self.failed: list[list] = []
        self.snapshots: list[list[dict]] = []
        self.hooks: list = []  # per attempt: callable(pids) run when the attempt's ranks are up

    def on_started(self, pids: dict[int, int]) -> None:
        self.started.append(dict(pids))
        attempt = len(self.started)
        if attempt <= len(self.hooks) and self.hooks[attempt - 1] is not None:
            self.hooks[attempt - 1](pids)

    def on_restart(self, attempt: int, failures: list) -> None:
        self.failed.append(failures)
        self.snapshots.append(tiny.MetricsLog(self.ckpt / "metrics.jsonl").read())

    def executions(self) -> Counter:
        """How many attempts ran each step (final log plus every snapshot, one count per attempt)."""
        runs = {(r["step"], r["attempt"]) for snap in self.snapshots for r in snap}
        runs |= {(r["step"], r["attempt"]) for r in tiny.MetricsLog(self.ckpt / "metrics.jsonl").read()}
        return Counter(step for step, _ in runs)


def assert_lost_at_most_one_interval(rec: Recorder, result: dict, max_steps: int) -> None:
    runs = rec.executions()
    assert sorted(runs) == list(range(1, max_steps + 1)), "every step ran"
    resumed = result["metrics"]["resumed_from_step"]
    rerun = sorted(step for step, n in runs.items() if n > 1)
    assert all(n <= 2 for n in runs.values()), runs
    assert all(resumed < step <= resumed + INTERVAL for step in rerun), (resumed, rerun)
    assert result["metrics"]["steps"] == max_steps


def kill_after_first_checkpoint(ckpt: Path, pid_of, sig: int, fired: dict):
    """A hook that starts a thread: once a checkpoint exists, send `sig` to the rank mid-training."""

    def hook(pids):
        def run():
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if (ckpt / f"step-{INTERVAL}").is_dir():
                    fired["step"] = max(r["step"] for r in tiny.MetricsLog(ckpt / "metrics.jsonl").read())
                    os.kill(pid_of(pids), sig)
                    return
                time.sleep(0.005)

        threading.Thread(target=run, daemon=True).start()

    return hook


@pytest.mark.parametrize(
    ("victim", "sig"),
    [(0, signal.SIGKILL), (1, signal.SIGTERM)],
    ids=["rank0-SIGKILL", "worker-SIGTERM"],
)
def test_a_rank_lost_mid_step_costs_one_restart_of_all_ranks(tmp_path, victim, sig):
    plan = small_plan(tmp_path)
    ckpt = Path(plan["checkpoint_dir"])
    rec, fired = Recorder(ckpt), {}
    rec.hooks = [kill_after_first_checkpoint(ckpt, lambda pids: pids[victim], sig, fired)]

    result = launch(plan, 2, policy=FAST, on_started=rec.on_started, on_restart=rec.on_restart)

    assert fired, "the fault was never injected"
    assert len(rec.started) == 2, "exactly one restart"
    assert set(rec.started[1]) == {0, 1} and not set(rec.started[0].values()) & set(rec.started[1].values())
    cause = rec.failed[0][0]
    assert (cause.rank, cause.returncode, cause.terminated_by_launcher) == (victim, -sig, False)
    # the survivor either saw its peer vanish (and said so) or was stopped by the launcher
    survivor = next((f for f in rec.failed[0] if f.rank != victim), None)
    assert survivor is None or survivor.terminated_by_launcher or survivor.returncode == PEER_LOST_EXIT_CODE
    assert fired["step"] >= INTERVAL
    assert_lost_at_most_one_interval(rec, result, plan["max_steps"])


def test_a_rank_that_exited_0_is_restarted_with_the_one_that_failed_in_export(tmp_path, s3_server):
    """Rank 1 finishes and exits 0; rank 0 then fails publishing the model. All ranks restart."""
    bucket = "fault-matrix-export"  # does not exist yet: publishing fails after the training is done
    plan = small_plan(tmp_path, max_steps=20, output_uri=f"s3://{bucket}/run")
    ckpt = Path(plan["checkpoint_dir"])
    rec = Recorder(ckpt)

    def fix_storage(attempt, failures):
        rec.on_restart(attempt, failures)
        s3_server.client().create_bucket(Bucket=bucket)

    env = {**os.environ, "AWS_ENDPOINT_URL": s3_server.endpoint_url}
    result = launch(plan, 2, env=env, policy=FAST, on_started=rec.on_started, on_restart=fix_storage)

    (first,) = rec.failed
    assert [(f.rank, f.returncode) for f in first] == [(0, 1)], "rank 1 had exited 0 before rank 0 failed"
    assert "bucket does not exist" in first[0].stderr_tail
    assert len(rec.started) == 2 and set(rec.started[1]) == {0, 1}, "the finished rank was started again"
    assert result["metrics"]["resumed_from_step"] == 20, "nothing retrained: the last checkpoint was complete"
    assert all(n == 1 for n in rec.executions().values())
    listed = s3_server.client().list_objects_v2(Bucket=bucket, Prefix="run/")
    assert {"run/model/model.safetensors", "run/result.json"} <= {o["Key"] for o in listed.get("Contents", [])}


def test_workers_wait_for_a_late_rank0_within_the_rendezvous_timeout(tmp_path):
    """Rank 0 held for 5 s (a slow image pull): the workers wait for its store, nothing restarts."""
    plan = small_plan(tmp_path, max_steps=10)
    rec = Recorder(Path(plan["checkpoint_dir"]))

    def hold_rank0(pids):
        os.kill(pids[0], signal.SIGSTOP)
        threading.Timer(5.0, os.kill, (pids[0], signal.SIGCONT)).start()

    rec.hooks = [hold_rank0]
    result = launch(plan, 2, policy=FAST, on_started=rec.on_started, on_restart=rec.on_restart)
    assert len(rec.started) == 1 and not rec.failed and result["metrics"]["steps"] == 10


def test_rank0_starting_after_the_workers_timeout_restarts_the_group(tmp_path):
    """Rank 0 is held (SIGSTOP) past the workers' store timeout; they exit 75, and all ranks restart."""
    plan = small_plan(tmp_path, max_steps=20)
    ckpt = Path(plan["checkpoint_dir"])
    rec = Recorder(ckpt)
    rec.hooks = [lambda pids: os.kill(pids[0], signal.SIGSTOP)]
    policy = RestartPolicy(max_restarts=1, restart_backoff_s=0.2, max_wall_s=300, rendezvous_timeout_s=10)

    started = time.monotonic()
    result = launch(plan, 2, policy=policy, on_started=rec.on_started, on_restart=rec.on_restart)

    (first,) = rec.failed
    worker = next(f for f in first if f.rank == 1)
    assert worker.returncode == PEER_LOST_EXIT_CODE and not worker.terminated_by_launcher
    assert "rank 0's store 127.0.0.1:" in worker.stderr_tail and "within 10s" in worker.stderr_tail
    assert first[0].rank == 1, "the held rank 0 is not blamed: it was stopped by the launcher"
    assert len(rec.started) == 2 and result["metrics"]["steps"] == 20
    assert all(n == 1 for n in rec.executions().values())
    assert time.monotonic() - started < policy.max_wall_s


def test_resume_skips_a_corrupt_and_a_half_written_checkpoint(tmp_path):
    plan = small_plan(tmp_path, max_steps=30)
    ckpt = Path(plan["checkpoint_dir"])
    launch(plan, 2, policy=FAST)
    assert [s for s, _ in checkpoints.complete_checkpoints(ckpt, checksums=True)] == [10, 20, 30]

    state = ckpt / "step-30" / "state.pt"
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size: only the checksum can tell
    state.write_bytes(bytes(data))
    (ckpt / "step-20" / checkpoints.MANIFEST).unlink()  # published without its completion marker

    logs = tmp_path / "logs"
    result = launch(plan, 2, policy=FAST, log_dir=logs)

    assert result["metrics"]["resumed_from_step"] == 10
    stderr = (logs / "attempt-1-rank-0.stderr").read_text()
    assert "checkpoint step-30 skipped: state.pt fails its SHA-256 check: corrupt" in stderr
    assert "checkpoint step-20 skipped: no manifest.json: half-written" in stderr
    assert [s for s, _ in checkpoints.complete_checkpoints(ckpt, checksums=True)] == [10, 20, 30]
    assert [r["step"] for r in tiny.MetricsLog(ckpt / "metrics.jsonl").read()] == list(range(1, 31))


def test_a_failure_that_persists_ends_when_the_restart_budget_is_spent(tmp_path):
    plan = small_plan(tmp_path, dataset_uri=(tmp_path / "missing").as_uri())
    rec = Recorder(Path(plan["checkpoint_dir"]))
    policy = RestartPolicy(max_restarts=1, restart_backoff_s=0.2, max_wall_s=300, rendezvous_timeout_s=30)
    with pytest.raises(LaunchError) as info:
        launch(plan, 2, policy=policy, on_started=rec.on_started, on_restart=rec.on_restart)
    message = str(info.value)
    assert "2 attempt(s) failed and the restart budget (max_restarts=1) is spent" in message
    assert "no training.jsonl" in message and info.value.attempts == 2 and len(rec.started) == 2


def test_a_run_that_outlives_its_wall_clock_bound_is_stopped(tmp_path):
    plan = small_plan(tmp_path)
    rec = Recorder(Path(plan["checkpoint_dir"]))
    rec.hooks = [lambda pids: os.kill(pids[0], signal.SIGSTOP)]  # hangs the group; rendezvous wait is longer
    policy = RestartPolicy(max_restarts=5, restart_backoff_s=0.2, max_wall_s=10, rendezvous_timeout_s=600)
    started = time.monotonic()
    with pytest.raises(LaunchError, match=r"the wall-clock bound of 10s \(max_wall_s\) ran out in attempt 1"):
        launch(plan, 2, policy=policy, on_started=rec.on_started, on_restart=rec.on_restart)
    elapsed = time.monotonic() - started
    assert 10 <= elapsed < 10 + 15, elapsed  # the bound, plus the launcher's stop grace
    assert len(rec.started) == 1 and not rec.failed
