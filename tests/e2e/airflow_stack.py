"""A real Airflow 3 deployment in a temp directory: scheduler, dag-processor and API server.

    with AirflowStack(tmp_path / "airflow", dags_folder, db_url, connect, env={...}) as stack:
        stack.wait_for_dag("prepare_dataset")
        stack.airflow("dags", "unpause", "prepare_dataset")
        ...

Airflow 3 splits what `airflow standalone` hides: the dag-processor parses files into the metadata
DB, the scheduler (here with the LocalExecutor) runs tasks in forked supervisor processes, and
those report state, XComs and asset events to the API server's execution API, authenticated with
JWTs that the scheduler signs and the API server checks -- so all three must share the JWT secret
and know the execution API URL. The metadata DB is a Postgres database of its own (`db_url`;
`connect()` opens a psycopg2 connection to it), as in the deployment: with SQLite, concurrent
writers fail with "database is locked".

Each component runs in its own process group with its output in `<home>/<component>.log`; `stop()`
(also on leaving the `with`) terminates every group, children included. `logs()` returns those
files plus the task logs, for a failing test to print.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

COMPONENTS = ("dag-processor", "scheduler", "api-server")
TERMINAL_RUN_STATES = ("success", "failed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StackError(RuntimeError):
    pass


class AirflowStack:
    """Start, query and stop one Airflow deployment; a context manager."""

    def __init__(self, home: Path, dags_folder: Path, db_url: str, connect: Callable[[], Any],
                 env: dict[str, str] | None = None,
                 config: dict[str, str] | None = None, components: Iterable[str] = COMPONENTS,
                 api_apps: str = "execution", parallelism: int = 4, migrated: bool = False):
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.components = tuple(components)
        self.api_apps = api_apps
        self.migrated = migrated  # the database is a copy of one already migrated
        self.procs: dict[str, subprocess.Popen] = {}
        self.connect = connect
        self.api_url = f"http://127.0.0.1:{self.port}"

        base = {k: v for k, v in os.environ.items()
                if not k.startswith("AIRFLOW__") and k not in ("AIRFLOW_HOME", "AIRFLOW_CONFIG")}
        self.env = {
            **base,
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
            # the project's plugins/ sits beside dags/: DAG files import its operators
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(Path(dags_folder).parent / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": str(parallelism),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_url,
            # Task supervisors talk to this; the default is http://localhost:8080/execution/.
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
            "AIRFLOW__API__PORT": str(self.port),
            # The scheduler serves task logs on this port (all interfaces, default 8793): a fixed
            # port would collide with a second stack or a local dev scheduler.
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),  # likewise (default 8794)
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
            # One key for every component: with no migrate run first, each would write its own into a
            # fresh airflow.cfg, and the triggerer could not decrypt the triggers the dag-processor wrote.
            "AIRFLOW__CORE__FERNET_KEY": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            # Parse the dags folder at once, then once a minute (every 5 s cost a quarter of a core per
            # idle deployment: no test edits a DAG file); schedule in tight loops.
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "60",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            "AIRFLOW__DAG_PROCESSOR__PRINT_STATS_INTERVAL": "600",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "AIRFLOW__SCHEDULER__JOB_HEARTBEAT_SEC": "1",
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
            "AIRFLOW__SCHEDULER__PARSING_CLEANUP_INTERVAL": "600",
            "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "600",
            "AIRFLOW__SCHEDULER__DAGRUN_METRICS_INTERVAL": "600",
            "AIRFLOW__SCHEDULER__TI_METRICS_INTERVAL": "600",
            "AIRFLOW__SCHEDULER__POOL_METRICS_INTERVAL": "600",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        }
        self.env.update(env or {})
        self.env.update(config or {})

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> AirflowStack:
        try:
            if not self.migrated:
                self.migrate()
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def migrate(self) -> None:
        self.airflow("db", "migrate", timeout=180)

    def start(self) -> None:
        for name in self.components:
            args = [name]
            if name == "api-server":
                args += ["--port", str(self.port), "--host", "127.0.0.1", "--workers", "1",
                         "--apps", self.api_apps]
            log = open(self.home / f"{name}.log", "ab")  # noqa: SIM115 -- closed in stop()
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "airflow", *args], env=self.env, cwd=self.home,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
            log.close()  # the child holds its own descriptor
        if "api-server" in self.components:
            self.wait_until(self._api_healthy, timeout=300, what="the API server to answer /execution/health")

    def stop(self, grace: float = 15.0) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            # SIGKILL the whole group even if the leader exited: forked task workers may linger.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if proc.poll() is None:
                proc.wait(timeout=10)

    def check_alive(self) -> None:
        dead = {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}
        if dead:
            raise StackError(f"Airflow components exited: {dead}")

    # -- talking to it -----------------------------------------------------------------------

    def airflow(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        """Run the `airflow` CLI against this deployment (argument list, no shell)."""
        proc = subprocess.run([sys.executable, "-m", "airflow", *args], env=self.env, cwd=self.home,
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode:
            raise StackError(f"airflow {' '.join(args)} exited {proc.returncode}\n"
                             f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
        return proc

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[dict]:
        """Read the metadata DB directly (fast; no Airflow import in the test process)."""
        import psycopg2.extras

        con = self.connect()
        try:
            with con.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                cur.execute(sql, tuple(params))
                return [dict(r) for r in cur.fetchall()]
        finally:
            con.close()

    def wait_until(self, predicate: Callable[[], Any], timeout: float, what: str, interval: float = 1.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            result = predicate()
            if result:
                return result
            if time.monotonic() > deadline:
                raise StackError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(interval)

    def _api_healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.api_url}/execution/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def wait_for_dag(self, dag_id: str, timeout: float = 120) -> None:
        """Until the dag-processor has serialized `dag_id`; fails fast on an import error."""
        def parsed():
            errors = self.query("SELECT filename, stacktrace FROM import_error")
            if errors:
                raise StackError("import errors: " + json.dumps(errors, indent=1, default=str))
            return self.query("SELECT 1 FROM serialized_dag WHERE dag_id = %s", [dag_id])

        self.wait_until(parsed, timeout, f"dag {dag_id} to be parsed")

    def dag_runs(self, dag_id: str) -> list[dict]:
        rows = self.query("SELECT run_id, state, run_type, logical_date, backfill_id, clear_number, end_date "
                          "FROM dag_run WHERE dag_id = %s ORDER BY logical_date", [dag_id])
        return rows

    def wait_for_runs(self, dag_id: str, count: int, timeout: float = 360,
                      where: Callable[[dict], bool] = lambda r: True) -> list[dict]:
        """Until `count` runs matching `where` are in a terminal state; returns them."""
        def done():
            runs = [r for r in self.dag_runs(dag_id) if where(r)]
            if len(runs) >= count and all(r["state"] in TERMINAL_RUN_STATES for r in runs):
                return runs
            return None

        return self.wait_until(done, timeout, f"{count} terminal runs of {dag_id}")

    def task_states(self, dag_id: str) -> list[dict]:
        rows = self.query("SELECT run_id, task_id, state, try_number FROM task_instance WHERE dag_id = %s "
                          "ORDER BY run_id, task_id", [dag_id])
        return rows

    def asset_events(self, name: str) -> list[dict]:
        rows = self.query("SELECT e.id, e.extra, e.source_dag_id, e.source_run_id, e.source_task_id, e.timestamp "
                          "FROM asset_event e JOIN asset a ON a.id = e.asset_id WHERE a.name = %s ORDER BY e.id",
                          [name])
        return [{**r, "extra": r["extra"] or {}} for r in rows]

    def logs(self, task_log_tail: int = 200) -> str:
        """Every component's log and the tail of every task log, for a failure report."""
        parts = []
        for name in self.components:
            path = self.home / f"{name}.log"
            if path.exists():
                parts.append(f"===== {name} ({path})\n{path.read_text(errors='replace')[-20000:]}")
        for path in sorted((self.home / "logs").rglob("*.log")) if (self.home / "logs").exists() else []:
            if "dag_processor" in path.parts or "scheduler" in path.parts:
                continue
            lines = path.read_text(errors="replace").splitlines()[-task_log_tail:]
            parts.append(f"===== task log {path.relative_to(self.home)}\n" + "\n".join(lines))
        return "\n".join(parts)
