"""Local server processes that outlive the task that started them: pid files, ensure running, stop.

Each process has a name (e.g. `model-llmops-assistant-v2`, `envoy`, `prometheus`); its state file
`<data root>/serving/run/<name>.json` holds pid, port and argv. `ensure_running` is idempotent: a
live process whose command line still carries its name tag is reused (a retried task never starts
a second one); a dead one is replaced on a fresh free port. Processes run in their own session so
an Airflow worker exiting (or being SIGKILLed) does not take them down. Argument lists only: no shell.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from include.serving.timing import PROCESS_START_TIMEOUT_S, READY_POLL_S

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_dir(data_root: str | None = None) -> Path:
    """Where pid/state files and logs live: under the local data root."""
    if data_root is None:
        from include.settings import get_settings

        data_root = get_settings().data_root
    if not data_root.startswith("file://"):
        raise ValueError(f"local serving needs a file:// data root, got {data_root!r}")
    path = Path(data_root.removeprefix("file://")) / "serving" / "run"
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class ProcessInfo:
    name: str
    pid: int
    port: int
    argv: list[str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _alive(pid: int, tag: str) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    if "\nState:\tZ" in status:
        return False
    return tag.encode() in b" ".join(cmdline)


def _state_file(name: str, root: Path) -> Path:
    return root / f"{name}.json"


def read(name: str, root: Path | None = None) -> ProcessInfo | None:
    """The live process called `name`, or None (a stale state file is ignored)."""
    root = root or run_dir()
    path = _state_file(name, root)
    try:
        info = ProcessInfo(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return info if _alive(info.pid, f"--name={name}") or _alive(info.pid, name) else None


def started_at(name: str, root: Path | None = None) -> float | None:
    """When `name` was started (its state file is written once, at start); None when it is not running."""
    root = root or run_dir()
    if read(name, root) is None:
        return None
    try:
        return _state_file(name, root).stat().st_mtime
    except OSError:
        return None


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback URL we built
            return 200 <= resp.status < 300
    except OSError:
        return False


def ensure_running(name: str, argv: Callable[[int], Sequence[str]], *, ready_path: str | None = "/health",
                   ready: Callable[[ProcessInfo], bool] | None = None, port: int | None = None,
                   root: Path | None = None, timeout_s: float = PROCESS_START_TIMEOUT_S,
                   env: dict[str, str] | None = None, wait: bool = True) -> ProcessInfo:
    """Start `argv(port)` as `name` unless it already runs; wait until ready (unless not `wait`:
    then the caller waits, e.g. a deferred trigger polling its URL); return its info.

    The command line must contain `name` (as `--name=<name>` or a path) so a reused pid is recognised.
    """
    root = root or run_dir()
    current = read(name, root)
    if current is not None:
        return current
    port = port or free_port()
    args = [str(a) for a in argv(port)]
    if not any(name in a for a in args):
        raise ValueError(f"{name}: the command line must carry the process name to be found again")
    logfile = (root / f"{name}.log").open("ab")
    proc = subprocess.Popen(args, stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, close_fds=True, env=env or child_env())
    logfile.close()
    info = ProcessInfo(name=name, pid=proc.pid, port=port, argv=args)
    tmp = _state_file(name, root).with_suffix(".tmp")
    tmp.write_text(json.dumps(info.__dict__))
    tmp.replace(_state_file(name, root))
    if not wait:
        # Only until the process is findable (it has exec'd: its command line carries the name), which
        # takes milliseconds, so the caller's next step (scrape targets, the router's backends) sees it.
        deadline = time.monotonic() + 5.0
        while read(name, root) is None and time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = (root / f"{name}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} exited with {proc.returncode} while starting:\n{tail}")
            time.sleep(0.02)
        log.info("started %s pid %d on 127.0.0.1:%d (not waiting until ready)", name, info.pid, port)
        return info
    check = ready or (lambda i: http_ok(i.url + ready_path) if ready_path else True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (root / f"{name}.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{name} exited with {proc.returncode} while starting:\n{tail}")
        if check(info):
            log.info("started %s pid %d on 127.0.0.1:%d", name, info.pid, port)
            return info
        time.sleep(READY_POLL_S)
    stop(name, root)
    raise TimeoutError(f"{name} not ready within {timeout_s:.0f}s (log: {root / (name + '.log')})")


def stop(name: str, root: Path | None = None, *, grace_s: float = 10.0) -> bool:
    """Stop `name` (SIGTERM, then SIGKILL after the grace period); True if it was running."""
    root = root or run_dir()
    info = read(name, root)
    _state_file(name, root).unlink(missing_ok=True)
    if info is None:
        return False
    try:
        os.kill(info.pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and _alive(info.pid, name):
        _reap(info.pid)
        time.sleep(0.05)
    if _alive(info.pid, name):
        os.kill(info.pid, signal.SIGKILL)
    _reap(info.pid)
    log.info("stopped %s (pid %d)", name, info.pid)
    return True


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def running(prefix: str = "", root: Path | None = None) -> list[ProcessInfo]:
    root = root or run_dir()
    found = [read(p.stem, root) for p in sorted(root.glob(f"{prefix}*.json"))]
    return [i for i in found if i is not None]


MODEL_SERVER_PREFIX = "model-"


def model_server_name(service: str) -> str:
    """The process name of a version's model server (`include.serving.modelserver`)."""
    return MODEL_SERVER_PREFIX + service


def model_server_ports(root: Path | None = None) -> dict[str, int]:
    """Service name -> port of every running model server."""
    return {i.name.removeprefix(MODEL_SERVER_PREFIX): i.port for i in running(MODEL_SERVER_PREFIX, root)}


def child_env() -> dict[str, str]:
    """The environment with this checkout first on the import path, for `python -m include...`."""
    from include.settings import PROJECT_ROOT

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def python_argv(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def main(argv: list[str] | None = None) -> int:
    """`python -m include.serving.processes [list|stop-all]`: the local serving processes."""
    import argparse

    parser = argparse.ArgumentParser(description="local serving processes under the data root")
    parser.add_argument("command", choices=["list", "stop-all"])
    args = parser.parse_args(argv)
    for info in running():
        if args.command == "stop-all":
            stop(info.name)
        print(f"{'stopped' if args.command == 'stop-all' else 'running'} {info.name} pid {info.pid} {info.url}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
