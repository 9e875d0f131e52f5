"""Run the trainer entrypoint as N local processes, the way an Indexed Job plus torchrun would.

Each process gets the rank environment a pod of the Indexed Job gets (RANK, WORLD_SIZE,
NODE_RANK = JOB_COMPLETION_INDEX, MASTER_ADDR, MASTER_PORT), so the local profile exercises the
same entrypoint, rendezvous and failure handling as EKS. The plan travels as one argv item of
JSON: no shell, so no value in it can become a command.

Each live rank is recorded in `<checkpoint_dir>/.ranks/rank-<i>.pid` (pid and start time) until the
launcher has seen it exit. If the Airflow task is killed outright, the files outlive it and
`stop_recorded_ranks` (the next launch, or the run's teardown) stops the orphans.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from include.training.plan import validate_plan

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT_MODULE = "include.training.entrypoint"
STDERR_TAIL_CHARS = 3000
TERMINATE_GRACE_S = 5.0
RANKS_DIR = ".ranks"
# A recorded start time this close to the live process's is the same process, not a reused pid.
START_TIME_TOLERANCE_S = 0.5


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
        return f"rank {self.rank} failed with {how}{why}"


class LaunchError(RuntimeError):
    """A rank failed (or the run timed out); `failures` lists the ranks, first cause first."""

    def __init__(self, message: str, failures: list[RankFailure]):
        super().__init__(message)
        self.failures = failures


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
    deadline = time.monotonic() + TERMINATE_GRACE_S
    for rank in stopped:
        try:
            procs[rank].wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            procs[rank].kill()
            procs[rank].wait()
    return stopped


def ranks_dir(checkpoint_dir: str | Path) -> Path:
    return Path(checkpoint_dir) / RANKS_DIR


def record_rank(checkpoint_dir: str | Path, rank: int, pid: int) -> None:
    """Write rank `rank`'s pid file atomically; a process already gone needs none."""
    try:
        started = psutil.Process(pid).create_time()
    except psutil.Error:
        return
    directory = ranks_dir(checkpoint_dir)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".rank-{rank}.pid.tmp"
    tmp.write_text(json.dumps({"rank": rank, "pid": pid, "create_time": started}))
    os.replace(tmp, directory / f"rank-{rank}.pid")


def _recorded_process(path: Path) -> psutil.Process | None:
    """The live process a pid file names, or None if it is gone or the pid now belongs to another."""
    try:
        record = json.loads(path.read_text())
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
    on_started: Callable[[dict[int, int]], None] | None = None,
) -> dict[str, Any]:
    """Run `nprocs` ranks of the trainer and return rank 0's result (the XCom it wrote).

    If any rank fails, the others are stopped (a collective would hang on them otherwise) and
    LaunchError names each failed rank with its exit code and stderr tail. `on_started`
    receives {rank: pid} once all ranks are up (tests use it to inject faults). Ranks an earlier,
    killed launch of the same checkpoint_dir left running are stopped first: two trainers must
    never write one checkpoint directory.
    """
    plan = validate_plan(plan)
    expected = plan["nodes"] * plan["gpus_per_node"]
    if nprocs != expected:
        raise ValueError(f"nprocs={nprocs} but the plan asks for nodes x gpus_per_node = {expected}")
    base = dict(os.environ if env is None else env)
    argv = build_command(plan, python)
    checkpoint_dir = plan["checkpoint_dir"]
    stop_recorded_ranks(checkpoint_dir)

    with tempfile.TemporaryDirectory(prefix="llmops-launch-") as tmp:
        workdir = Path(tmp)
        xcom = workdir / "return.json"
        port = free_port()
        procs: list[subprocess.Popen] = []
        logs: list[Path] = []
        try:
            for rank in range(nprocs):
                log = workdir / f"rank-{rank}.stderr"
                logs.append(log)
                with log.open("wb") as err, (workdir / f"rank-{rank}.stdout").open("wb") as out:
                    procs.append(
                        subprocess.Popen(
                            argv,
                            env=rank_environment(rank, nprocs, port, base, xcom),
                            cwd=PROJECT_ROOT,
                            stdin=subprocess.DEVNULL,
                            stdout=out,
                            stderr=err,
                        )
                    )
                record_rank(checkpoint_dir, rank, procs[-1].pid)
            if on_started is not None:
                on_started({rank: p.pid for rank, p in enumerate(procs)})

            deadline = None if timeout is None else time.monotonic() + timeout
            first_failed: list[int] = []
            while True:
                codes = [p.poll() for p in procs]
                # Within one poll, a rank killed by a signal is the likelier cause: its peers then
                # fail on a broken collective.
                first_failed = sorted(
                    (r for r, c in enumerate(codes) if c not in (None, 0)), key=lambda r: (codes[r] >= 0, r)
                )
                if first_failed or all(c == 0 for c in codes):
                    break
                if deadline is not None and time.monotonic() > deadline:
                    stopped = _stop(procs)
                    failures = [RankFailure(r, procs[r].returncode, _tail(logs[r]), True) for r in sorted(stopped)]
                    raise LaunchError(f"training timed out after {timeout}s; stopped ranks {sorted(stopped)}", failures)
                time.sleep(0.05)
        except BaseException:
            _stop(procs)
            _forget_ranks(checkpoint_dir, len(procs))
            raise

        if first_failed:
            stopped = _stop(procs)
            _forget_ranks(checkpoint_dir, nprocs)
            failures = [RankFailure(r, procs[r].returncode, _tail(logs[r])) for r in first_failed]
            failures += [
                RankFailure(r, p.returncode, _tail(logs[r]), terminated_by_launcher=r in stopped)
                for r, p in enumerate(procs)
                if r not in first_failed and p.returncode != 0
            ]
            summary = "; ".join(f.describe() for f in failures)
            tails = "\n".join(f"--- rank {f.rank} stderr (tail) ---\n{f.stderr_tail.rstrip()}" for f in failures)
            raise LaunchError(f"training failed: {summary}\n{tails}", failures)

        _forget_ranks(checkpoint_dir, nprocs)
        if not xcom.is_file():
            raise LaunchError(f"all ranks exited 0 but rank 0 wrote no result; stderr:\n{_tail(logs[0])}", [])
        return json.loads(xcom.read_text())
