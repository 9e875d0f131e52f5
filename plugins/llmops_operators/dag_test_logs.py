"""Task logs of `airflow dags test` runs, written where the UI reads them.

`airflow dags test` (what `make run` uses) runs every task inside its own process
(`InProcessTestSupervisor`): no supervisor writes the attempt's log file, every line goes to the
command's stdout, and the UI later finds nothing ("Log file not found on worker"). This listener,
registered by the `llmops` plugin, notices that case (the task's supervisor comms are the in-process
ones) and, from the task's start until it ends, also writes each record the task logs as the
supervisor would: Airflow's JSON log lines, in the file task handler's own path
(`[logging] base_log_folder` / `log_filename_template`, the file a scheduler-run attempt gets).
A deferred task's inline trigger run is kept in its attempt's file too. Under a real supervisor
(scheduler, executor, `--use-executor`) it does nothing: the supervisor writes that file already.

structlog records reach it through one processor put in front of the console renderer of the
process's structlog chain; stdlib records (the project's `include.*` loggers, MLflow) through a
handler on the root logger while a task runs. The in-process Execution API's own records are
not the task's and stay out, as they do in a supervised attempt's file.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from typing import Any

from airflow.listeners import hookimpl

# The in-process Execution API server logs in this process too; a supervised attempt's file has none of it.
_NOT_THE_TASKS = ("airflow.api_fastapi", "sqlalchemy", "httpx")


def _in_process() -> bool:
    """True when this task runs under `airflow dags test`'s in-process supervisor."""
    from airflow.sdk.execution_time import task_runner

    comms = getattr(task_runner, "SUPERVISOR_COMMS", None)
    return type(comms).__name__ == "InProcessSupervisorComms"


def attempt_log_path(ti) -> str:
    """The attempt's log file relative to base_log_folder, as the file task handler names it."""
    from airflow.utils.helpers import log_filename_template_renderer

    return log_filename_template_renderer()(ti=ti)


class _Sink:
    """One attempt's log file, in Airflow's JSON line format."""

    def __init__(self, relative_path: str):
        from airflow.sdk.log import init_log_file, logging_processors

        self.path = init_log_file(relative_path)
        self.file = self.path.open("ab")
        self.processors = logging_processors(json_output=True)  # Airflow's own: the UI parses these lines
        self.lock = threading.Lock()

    def write(self, method: str, event: dict[str, Any]) -> None:
        if str(event.get("logger", "")).startswith(_NOT_THE_TASKS):
            return
        try:
            for processor in self.processors:
                event = processor(None, method, event)
            line = event if isinstance(event, bytes) else str(event).encode()
        except Exception:  # noqa: BLE001 - a record that cannot be rendered must not fail the task
            return
        with self.lock:
            if not self.file.closed:
                self.file.write(line.rstrip(b"\n") + b"\n")
                self.file.flush()

    def close(self) -> None:
        with self.lock:
            self.file.close()


class _RootHandler(logging.Handler):
    """stdlib records, as the event dicts structlog would have made of them."""

    def emit(self, record: logging.LogRecord) -> None:
        sink = _state.sink
        if sink is None:
            return
        event: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z"),
            "event": record.getMessage(),
            "logger": record.name,
        }
        if record.exc_info:
            event["exc_info"] = record.exc_info
        sink.write(record.levelname.lower(), event)


def _tee(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """A structlog processor: a copy of each record to the running attempt's file."""
    sink = _state.sink
    if sink is not None:
        sink.write(method, dict(event))
    return event


class _State:
    def __init__(self) -> None:
        self.sink: _Sink | None = None
        self.key: str | None = None
        self.handler = _RootHandler()
        self.installed = False

    def install(self) -> None:
        """Put the tee in front of the console renderer, in place: loggers already bound share that list."""
        if self.installed:
            return
        import structlog

        processors = structlog.get_config()["processors"]
        if _tee not in processors:
            processors.insert(max(len(processors) - 1, 0), _tee)
        self.installed = True

    def open(self, ti) -> None:
        relative = attempt_log_path(ti)
        if self.sink is not None and self.key == relative:
            return  # a deferred task resuming: the same attempt, the same file
        self.close()
        self.install()
        self.sink, self.key = _Sink(relative), relative
        logging.getLogger().addHandler(self.handler)

    def close(self) -> None:
        logging.getLogger().removeHandler(self.handler)
        if self.sink is not None:
            self.sink.close()
        self.sink, self.key = None, None


_state = _State()


@hookimpl
def on_task_instance_running(previous_state, task_instance) -> None:
    if _in_process():
        _state.open(task_instance)


# Not on deferral: the trigger that runs inline next belongs to the same attempt's file.
@hookimpl
def on_task_instance_success(previous_state, task_instance) -> None:
    _state.close()


@hookimpl
def on_task_instance_failed(previous_state, task_instance, error) -> None:
    _state.close()


@hookimpl
def on_task_instance_skipped(previous_state, task_instance) -> None:
    _state.close()
