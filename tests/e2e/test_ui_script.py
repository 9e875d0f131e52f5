"""`make ui` (scripts/ui.sh) stops every process it started: SIGTERM to the script leaves no scheduler,
no LocalExecutor worker, no api-server behind (`airflow standalone` alone left them running), and the
executor has one worker per core, not Airflow's default of 32.

The deployment runs in a temp AIRFLOW_HOME on free ports. What the script started is the process
tree under it and the process group it runs `airflow standalone` in; both must be empty afterwards.
(Their environment cannot tell: the workers' process titles overwrite it in /proc.)
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from airflow_stack import free_port

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "ui.sh"


def alive(procs) -> list[psutil.Process]:
    out = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
        except psutil.NoSuchProcess:
            continue
    return out


def in_group(pgid: int) -> list[psutil.Process]:
    out = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == pgid:
                out.append(proc)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return alive(out)


def cmdlines(procs) -> str:
    lines = []
    for proc in procs:
        try:
            lines.append(" ".join(proc.cmdline()))
        except psutil.NoSuchProcess:
            continue
    return "\n".join(lines)


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def test_sigterm_stops_everything_ui_sh_started(tmp_path, migrated_sqlite):
    home = tmp_path / "airflow"
    home.mkdir()
    shutil.copyfile(migrated_sqlite, home / "airflow.db")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
    env.update({"AIRFLOW_HOME": str(home), "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
                "LLMOPS_UI_PORT": str(port), "LLMOPS_DATA_ROOT": (tmp_path / "data").as_uri(),
                "LLMOPS_MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
                # the scheduler's and triggerer's log servers: off their fixed defaults (8793, 8794)
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port())})
    log = open(tmp_path / "ui.log", "wb")  # noqa: SIM115 - closed below
    script = subprocess.Popen(["bash", str(SCRIPT)], env=env, stdin=subprocess.DEVNULL, stdout=log,
                              stderr=subprocess.STDOUT)
    started: dict[int, psutil.Process] = {}
    group, cores = None, len(os.sched_getaffinity(0))
    try:
        deadline = time.monotonic() + 240
        workers = []
        while time.monotonic() < deadline and script.poll() is None:
            tree = alive(psutil.Process(script.pid).children(recursive=True))
            started.update({p.pid: p for p in tree})
            workers = [line for line in cmdlines(tree).splitlines() if "LocalExecutor" in line]
            if answers(f"http://127.0.0.1:{port}/api/v2/version") and len(workers) >= cores:
                break
            time.sleep(2)
        assert script.poll() is None and workers, (tmp_path / "ui.log").read_text(errors="replace")[-5000:]
        [standalone] = psutil.Process(script.pid).children()
        group = os.getpgid(standalone.pid)
        assert group == standalone.pid != os.getpgid(script.pid), "standalone runs in a process group of its own"
        names = cmdlines(in_group(group))
        for component in ("scheduler", "api_server", "dag-processor", "triggerer", "LocalExecutor"):
            assert component in names, f"{component} not running:\n{names}"
        time.sleep(3)  # no worker beyond one per core comes later
        workers = [line for line in cmdlines(in_group(group)).splitlines() if "LocalExecutor" in line]
        assert len(workers) == cores, f"one LocalExecutor worker per core (nproc): {workers}"

        script.send_signal(signal.SIGTERM)
        assert script.wait(timeout=60) == 143
        survivors = alive(started.values()) + in_group(group)
        assert not survivors, cmdlines(survivors)
        assert not answers(f"http://127.0.0.1:{port}/api/v2/version")
    finally:  # never leave a deployment behind, even when the test failed
        if script.poll() is None:
            script.kill()
        if group:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for proc in alive(started.values()):
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        log.close()
