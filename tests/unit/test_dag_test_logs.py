"""`airflow dags test` task logs land where the UI reads them (plugins/llmops_operators/dag_test_logs.py):
under the in-process supervisor the listener writes each record of the running task, structlog's and
stdlib's, as Airflow's JSON lines in the attempt's file-task-handler path; under a real supervisor it
writes nothing (the supervisor does). The whole path, through the UI, is tests/e2e/test_ui_browser.py's."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest
import structlog


class InProcessSupervisorComms:  # what dag.test() installs; the listener recognises it by name
    pass


@pytest.fixture
def task(tmp_path, monkeypatch):
    from airflow.sdk.execution_time import task_runner

    monkeypatch.setenv("AIRFLOW__LOGGING__BASE_LOG_FOLDER", str(tmp_path / "logs"))
    monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", InProcessSupervisorComms(), raising=False)
    ti = SimpleNamespace(dag_id="prepare_dataset", run_id="manual__2026-11-01T00:00:00+00:00", task_id="curate",
                         map_index=-1, try_number=1)
    path = tmp_path / "logs" / "dag_id=prepare_dataset" / "run_id=manual__2026-11-01T00:00:00+00:00" / \
        "task_id=curate" / "attempt=1.log"
    return ti, path


def records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_running_tasks_records_go_to_its_attempt_file_as_json(task):
    from llmops_operators import dag_test_logs as listener

    ti, path = task
    listener.on_task_instance_running(previous_state=None, task_instance=ti)
    try:
        structlog.get_logger("task").info("::endgroup::")
        logging.getLogger("include.lifecycle.dataset").info("curated %d of %d records", 80, 93)
        # The in-process Execution API's record, not the task's:
        structlog.get_logger("airflow.api_fastapi.execution_api.routes").info("Task started")
        try:
            raise ValueError("dataset version 'x' is not published")
        except ValueError:
            logging.getLogger("task").exception("Task failed with exception")
    finally:
        listener.on_task_instance_failed(previous_state=None, task_instance=ti, error=None)
    logging.getLogger("include.lifecycle.dataset").info("after the task: not in its file")

    lines = records(path)
    assert [r["event"] for r in lines] == ["::endgroup::", "curated 80 of 93 records", "Task failed with exception"]
    assert lines[1]["logger"] == "include.lifecycle.dataset" and lines[1]["level"] == "info"
    assert all(r["timestamp"] for r in lines)
    [raised] = lines[2]["exception"]  # the shape the UI renders and include.logs.failure_cause reads
    assert raised["exc_type"] == "ValueError" and "not published" in raised["exc_value"]


def test_a_resumed_task_appends_to_the_same_attempt(task):
    from llmops_operators import dag_test_logs as listener

    ti, path = task
    for event in ("deferred", "resumed"):
        listener.on_task_instance_running(previous_state=None, task_instance=ti)
        structlog.get_logger("task").info(event)
    listener.on_task_instance_success(previous_state=None, task_instance=ti)
    assert [r["event"] for r in records(path)] == ["deferred", "resumed"]


def test_under_a_real_supervisor_it_writes_nothing(task, monkeypatch):
    from airflow.sdk.execution_time import task_runner
    from llmops_operators import dag_test_logs as listener

    ti, path = task
    monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", object())
    listener.on_task_instance_running(previous_state=None, task_instance=ti)
    structlog.get_logger("task").info("the supervisor writes this one")
    listener.on_task_instance_success(previous_state=None, task_instance=ti)
    assert not path.exists()
