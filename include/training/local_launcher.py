"""Run the trainer entrypoint as N local processes, the way the JobSet's Indexed Job plus torchrun would.

Each process gets the rank environment a pod of the (JobSet's) Indexed Job gets (RANK, WORLD_SIZE,
NODE_RANK = JOB_COMPLETION_INDEX, MASTER_ADDR, MASTER_PORT), so the local profile exercises the
same entrypoint, rendezvous and failure handling as EKS. The plan travels as one argv item of
JSON: no shell, so no value in it can become a command.

All or nothing: when any rank fails or is lost, the launcher stops every other rank and starts
the whole group again, up to the plan's restart budget, with backoff, within one wall-clock bound
(include/training/restarts.py). The ranks resume from the newest complete checkpoint, so a
restart costs at most one checkpoint interval, and no rank ever waits on a peer that has already
exited. A bad plan (USER_ERROR_EXIT_CODE on any rank) is never restarted.

Rank 0's stdout (INFO) and stderr (WARNING) stream line by line to the logger `include.training.rank0`,
so a task log shows the run while it trains; every rank's output is also kept for failure tails.

Each live rank is recorded in `<checkpoint_dir>/.ranks/rank-<i>.pid` (its and its launcher's pid and start
time) until the launcher has seen it exit. If the Airflow task is killed outright, the files outlive
it and `stop_recorded_ranks` (the next launch, the run's teardown, the off-hours cleanup) stops them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from include.errors import InputError
from include.logs import forward_lines
from include.training.rendezvous import WAIT_TIMEOUT_ENV
from include.training.restarts import PEER_LOST_EXIT_CODE, STOP_REQUEST_FILE, USER_ERROR_EXIT_CODE, RestartPolicy

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT_MODULE = "include.training.entrypoint"
STDERR_TAIL_CHARS = 3000
TERMINATE_GRACE_S = 5.0
RANKS_DIR = ".ranks"
# A recorded start time this close to the live process's is the same process, not a reused pid.
START_TIME_TOLERANCE_S = 0.5

log = logging.getLogger(__name__)
# Rank 0's stdout (progress lines, at INFO) and stderr (at WARNING), line by line as it runs: in a task, the task log.
rank0_log = logging.getLogger("include.training.rank0")


@dataclass(frozen=True)
class RankFailure:
    rank: int
    returncode: int | None
    stderr_tail: str
    terminated_by_launcher: bool = False

    def describe(self) -> str:
        code = self.returncode
        if code is not None and code < 0:
            try:
                how = f"exit code {code} ({signal.Signals(-code).name})"
            except ValueError:
                how = f"exit code {code}"
        else:
            how = f"exit code {code}"
        why = " after the launcher stopped it" if self.terminated_by_launcher else ""
        if code == PEER_LOST_EXIT_CODE:
            why += " (lost a peer or rank 0's store)"
        return f"rank {self.rank} failed with {how}{why}"

    def cause_order(self) -> tuple[bool, bool, bool, int]:
        """Sort key, likeliest root cause first: not stopped by us, not a mere peer loss, a signal."""
        code = self.returncode if self.returncode is not None else 0
        return (self.terminated_by_launcher, code == PEER_LOST_EXIT_CODE, code >= 0, self.rank)


class LaunchError(RuntimeError):
    """The run failed for good; `failures` lists the last attempt's ranks, first cause first."""

    def __init__(self, message: str, failures: list[RankFailure], attempts: int = 1):
        super().__init__(message)
        self.failures = failures
        self.attempts = attempts


class InvalidPlan(LaunchError, InputError):
    """A rank's entrypoint refused the plan (USER_ERROR_EXIT_CODE): bad input that no retry fixes."""


class _AttemptFailed(Exception):
    def __init__(self, failures: list[RankFailure], timed_out: bool = False):
        super().__init__("attempt failed")
        self.failures = sorted(failures, key=RankFailure.cause_order)
        self.timed_out = timed_out
        self.bad_plan = any(f.returncode == USER_ERROR_EXIT_CODE and not f.terminated_by_launcher for f in failures)

    def summary(self) -> str:
        summary = "; ".join(f.describe() for f in self.failures) or "no rank failed"
        tails = "\n".join(f"--- rank {f.rank} stderr (tail) ---\n{f.stderr_tail.rstrip()}" for f in self.failures)
        return f"{summary}\n{tails}"


def build_command(plan: Mapping[str, Any], python: str = sys.executable) -> list[str]:
    """The argv of one rank: the plan is a single JSON item, never split or interpolated."""
    return [python, "-m", ENTRYPOINT_MODULE, "--plan", json.dumps(dict(plan), sort_keys=True)]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rank_environment(
    rank: int, world_size: int, master_port: int, base: Mapping[str, str], xcom_path: Path
) -> dict[str, str]:
    """What a pod of the Indexed Job sees: one process per 'node', node index = rank."""
    env = dict(base)
    pythonpath = env.get("PYTHONPATH")
    env.update(
        {
            "RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "LOCAL_RANK": "0",
            "NODE_RANK": str(rank),
            "JOB_COMPLETION_INDEX": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(master_port),
            "LLMOPS_XCOM_PATH": str(xcom_path),
            "TMPDIR": str(xcom_path.parent),  # the attempt's dir: a killed rank's temp files go with it
            "PYTHONPATH": str(PROJECT_ROOT) + (os.pathsep + pythonpath if pythonpath else ""),
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def _tail(path: Path) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - STDERR_TAIL_CHARS))
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _stop(procs: list[subprocess.Popen]) -> set[int]:
    """SIGTERM every live rank, then SIGKILL what is left; returns the ranks it had to stop."""
    stopped = {rank for rank, p in enumerate(procs) if p.poll() is None}
    for rank in stopped:
        procs[rank].terminate()
        with contextlib.suppress(OSError):  # a stopped (SIGSTOP) rank acts on SIGTERM only once continued
            os.kill(procs[rank].pid, signal.SIGCONT)
    deadline = time.monotonic() + TERMINATE_GRACE_S
    for rank in stopped:
        try:
            procs[rank].wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            procs[rank].kill()
            procs[rank].wait()
    return stopped


def _drain(forwarders: list[threading.Thread], timeout: float = TERMINATE_GRACE_S) -> None:
    """Wait (bounded: a grandchild may hold the pipe open) until rank 0's output is forwarded."""
    deadline = time.monotonic() + timeout
    for thread in forwarders:
        thread.join(max(0.0, deadline - time.monotonic()))


def ranks_dir(checkpoint_dir: str | Path) -> Path:
    return Path(checkpoint_dir) / RANKS_DIR


def record_rank(checkpoint_dir: str | Path, rank: int, pid: int) -> None:
    """Write rank `rank`'s pid file atomically, naming this process its launcher; a gone process needs none."""
    try:
        started = psutil.Process(pid).create_time()
    except psutil.Error:
        return
    directory = ranks_dir(checkpoint_dir)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".rank-{rank}.pid.tmp"
    launcher = {"pid": os.getpid(), "create_time": psutil.Process().create_time()}
    tmp.write_text(json.dumps({"rank": rank, "pid": pid, "create_time": started, "launcher": launcher}))
    os.replace(tmp, directory / f"rank-{rank}.pid")


def launcher_gone(path: Path) -> bool:
    """Whether the launcher that wrote this pid file has exited. Asked of it, not of the ranks' parent:
    an Airflow task renames its process, and a re-parented rank's new parent may be anything."""
    return _recorded_process(path, "launcher") is None


def _recorded_process(path: Path, entry: str | None = None) -> psutil.Process | None:
    """The live process a pid file names (with `entry`, the one under that key of the record), or None if
    it is gone or the pid now belongs to another."""
    try:
        record = json.loads(path.read_text())
        record = record[entry] if entry else record
        proc = psutil.Process(int(record["pid"]))
        if abs(proc.create_time() - float(record["create_time"])) > START_TIME_TOLERANCE_S:
            return None
        return proc
    except (OSError, ValueError, KeyError, TypeError, psutil.Error):
        return None


def stop_recorded_ranks(checkpoint_dir: str | Path, grace: float = TERMINATE_GRACE_S) -> list[int]:
    """Stop every rank (and its children) still alive from an earlier launch; return their pids.

    Pid files are removed either way; stale ones (process gone, pid reused) stop nothing.
    """
    directory = ranks_dir(checkpoint_dir)
    if not directory.is_dir():
        return []
    stopped: list[int] = []
    for path in sorted(directory.glob("rank-*.pid")):
        proc = _recorded_process(path)
        if proc is not None:
            with contextlib.suppress(psutil.Error):
                tree = [*proc.children(recursive=True), proc]
                for p in tree:
                    with contextlib.suppress(psutil.Error):
                        p.terminate()
                _, alive = psutil.wait_procs(tree, timeout=grace)
                for p in alive:
                    with contextlib.suppress(psutil.Error):
                        p.kill()
                psutil.wait_procs(alive, timeout=grace)
            stopped.append(proc.pid)
        path.unlink(missing_ok=True)
    return stopped


def _forget_ranks(checkpoint_dir: str | Path, nprocs: int) -> None:
    for rank in range(nprocs):
        (ranks_dir(checkpoint_dir) / f"rank-{rank}.pid").unlink(missing_ok=True)


def launch(
    plan: Mapping[str, Any],
    nprocs: int,
    *,
    python: str = sys.executable,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    policy: RestartPolicy | None = None,
    on_started: Callable[[dict[int, int]], None] | None = None,
    on_restart: Callable[[int, list[RankFailure]], None] | None = None,
    log_dir: Path | None = None,
) -> dict[str, Any]:
    """Run `nprocs` ranks of the trainer, restarting all of them on any failure; rank 0's result.

    `policy` defaults to the restart defaults of the plan's backend; `timeout` (if given) tightens
    its wall-clock bound. LaunchError says whether the budget or the bound ran out, or a rank
    reported a bad plan (InvalidPlan, an InputError too), and names each failed rank of the last
    attempt with its exit code and stderr tail. `on_started` receives {rank: pid} once each attempt's
    ranks are up, `on_restart` (attempt, failures) once a failed attempt's ranks are all gone (tests
    inject faults with them); `log_dir` keeps each attempt's rank logs. Ranks an earlier, killed
    launch of the same checkpoint_dir left running are stopped first: two trainers must never write
    one directory. `plan` is build_plan's, not checked here: each rank's entrypoint validates it.
    """
    if nprocs != (world := plan["nodes"] * plan["gpus_per_node"]):
        raise ValueError(f"nprocs={nprocs} but the plan asks for nodes x gpus_per_node = {world}")
    policy = RestartPolicy.from_plan(plan) if policy is None else policy
    bound = policy.max_wall_s if timeout is None else min(timeout, policy.max_wall_s)
    base = dict(os.environ if env is None else env)
    base[WAIT_TIMEOUT_ENV] = str(policy.rendezvous_timeout_s)
    argv = build_command(plan, python)
    checkpoint_dir = plan["checkpoint_dir"]
    stop_recorded_ranks(checkpoint_dir)
    deadline = time.monotonic() + bound
    attempt = 0
    while True:
        attempt += 1
        try:
            result = _attempt(argv, nprocs, base, checkpoint_dir, deadline, attempt, log_dir, on_started)
        except _AttemptFailed as failed:
            why = _give_up_reason(failed, attempt, policy, bound, deadline, checkpoint_dir)
            if why:
                raise (InvalidPlan if failed.bad_plan else LaunchError)(
                    f"training failed: {why}; last attempt: {failed.summary()}", failed.failures, attempt) from None
            wait = policy.backoff(attempt)
            log.warning("attempt %d failed (%s); restarting all %d ranks from the last complete checkpoint "
                        "in %.1fs (restart %d of at most %d)", attempt, failed.failures[0].describe(), nprocs,
                        wait, attempt, policy.max_restarts)
            if on_restart is not None:
                on_restart(attempt, failed.failures)
            time.sleep(wait)
            continue
        if attempt > 1:
            log.info("training finished after %d restart(s)", attempt - 1)
        return result


def _give_up_reason(failed: _AttemptFailed, attempt: int, policy: RestartPolicy, bound: float,
                    deadline: float, checkpoint_dir: str) -> str | None:
    """Why this failure ends the run, or None to restart."""
    stop_request = Path(checkpoint_dir) / STOP_REQUEST_FILE
    if stop_request.is_file():
        return f"stopped on request ({stop_request.read_text().strip()}); not restarted"
    if failed.timed_out:
        return f"the wall-clock bound of {bound:.0f}s (max_wall_s) ran out in attempt {attempt}"
    if failed.bad_plan:
        return f"a rank reported an invalid plan (exit code {USER_ERROR_EXIT_CODE}); not restarted"
    if attempt > policy.max_restarts:
        return (f"{attempt} attempt(s) failed and the restart budget (max_restarts={policy.max_restarts}) "
                "is spent")
    if time.monotonic() + policy.backoff(attempt) >= deadline:
        return f"no time left for restart {attempt} within the wall-clock bound of {bound:.0f}s (max_wall_s)"
    return None


def _attempt(
    argv: list[str],
    nprocs: int,
    base: dict[str, str],
    checkpoint_dir: str,
    deadline: float,
    attempt: int,
    log_dir: Path | None,
    on_started: Callable[[dict[int, int]], None] | None,
) -> dict[str, Any]:
    """Start every rank once; rank 0's result, or _AttemptFailed once all ranks are stopped."""
    with tempfile.TemporaryDirectory(prefix="llmops-launch-") as tmp:
        workdir = Path(tmp)
        logdir = workdir if log_dir is None else Path(log_dir)
        logdir.mkdir(parents=True, exist_ok=True)
        xcom = workdir / "return.json"
        port = free_port()  # a fresh store port per attempt: the last one may linger in TIME_WAIT
        procs: list[subprocess.Popen] = []
        logs: list[Path] = []
        forwarders: list[threading.Thread] = []
        try:
            for rank in range(nprocs):
                stem = f"attempt-{attempt}-rank-{rank}"
                log_path = logdir / f"{stem}.stderr"
                logs.append(log_path)
                with log_path.open("wb") as err, (logdir / f"{stem}.stdout").open("wb") as out:
                    piped = subprocess.PIPE if rank == 0 else None  # rank 0's lines also go to rank0_log
                    procs.append(subprocess.Popen(argv, env=rank_environment(rank, nprocs, port, base, xcom),
                                                  cwd=PROJECT_ROOT, stdin=subprocess.DEVNULL, stdout=piped or out,
                                                  stderr=piped or err))
                if piped:
                    forwarders = [forward_lines(procs[0].stdout, out.name, rank0_log.info, "rank0-stdout"),
                                  forward_lines(procs[0].stderr, err.name, rank0_log.warning, "rank0-stderr")]
                record_rank(checkpoint_dir, rank, procs[-1].pid)
            if on_started is not None:
                on_started({rank: p.pid for rank, p in enumerate(procs)})

            failed_first: list[int] = []
            timed_out = False
            while True:
                codes = [p.poll() for p in procs]
                failed_first = [r for r, c in enumerate(codes) if c not in (None, 0)]
                if failed_first or all(c == 0 for c in codes):
                    break
                if time.monotonic() > deadline:
                    timed_out = True
                    break
                time.sleep(0.05)
        except BaseException:
            _stop(procs)
            _forget_ranks(checkpoint_dir, len(procs))
            _drain(forwarders)
            raise

        if failed_first or timed_out:
            stopped = _stop(procs)
            _forget_ranks(checkpoint_dir, nprocs)
            _drain(forwarders)  # rank 0's last lines are in the task log and its stderr file before the tails
            failures = [
                RankFailure(r, p.returncode, _tail(logs[r]), terminated_by_launcher=r in stopped)
                for r, p in enumerate(procs)
                if p.returncode != 0 or r in stopped
            ]
            raise _AttemptFailed(failures, timed_out)

        _forget_ranks(checkpoint_dir, nprocs)
        _drain(forwarders)
        if not xcom.is_file():
            raise LaunchError(f"all ranks exited 0 but rank 0 wrote no result; stderr:\n{_tail(logs[0])}", [], attempt)
        return json.loads(xcom.read_text())
