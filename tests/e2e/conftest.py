"""Fixtures for end-to-end tests: a real Airflow deployment (see airflow_stack.py).

`airflow_stack(env=..., config=...)` starts one deployment in the test's temp directory and
always stops it (every process group) at teardown. When the test fails, the components' logs and
the task logs are attached to the failure report as an "airflow logs" section, so the report
shows why without a rerun.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from airflow_stack import AirflowStack

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DAGS_FOLDER = PROJECT_ROOT / "dags"

_stacks_key = pytest.StashKey[list]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed and report.when in ("setup", "call"):
        for stack in item.stash.get(_stacks_key, []):
            report.sections.append((f"airflow logs ({stack.home})", stack.logs()))
    return report


@pytest.fixture
def airflow_stack(request, tmp_path):
    """A factory: `airflow_stack(env={...}, config={"AIRFLOW__...": ...})` -> a started AirflowStack."""
    stacks: list[AirflowStack] = []
    request.node.stash[_stacks_key] = stacks

    def start(env: dict[str, str] | None = None, config: dict[str, str] | None = None, **kwargs) -> AirflowStack:
        stack = AirflowStack(tmp_path / f"airflow{len(stacks) or ''}", DAGS_FOLDER, env=env, config=config,
                             **kwargs)
        stacks.append(stack)
        return stack.__enter__()

    yield start
    for stack in stacks:
        stack.stop()
