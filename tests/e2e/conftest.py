"""Fixtures for end-to-end tests: a real Airflow deployment (see airflow_stack.py).

`airflow_stack(env=..., config=...)` starts one deployment in the test's temp directory, with a
database of its own on the session's Postgres server (postgres_server.py), and always stops it
(every process group) at teardown. When the test fails, the components' logs and the task logs
are attached to the failure report as an "airflow logs" section, so the report shows why without
a rerun.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from airflow_stack import AirflowStack
from postgres_server import PostgresServer

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


@pytest.fixture(scope="session")
def postgres():
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def migrated_template(postgres, tmp_path_factory) -> str:
    """One `airflow db migrate` per session: every deployment's database is a copy of this one."""
    db = postgres.create_database()
    AirflowStack(tmp_path_factory.mktemp("airflow-template"), DAGS_FOLDER, postgres.url(db),
                 lambda: postgres.connect(db), components=()).migrate()
    return db


@pytest.fixture
def airflow_stack(request, tmp_path, postgres, migrated_template):
    """A factory: `airflow_stack(env={...}, config={"AIRFLOW__...": ...})` -> a started AirflowStack."""
    stacks: list[AirflowStack] = []
    request.node.stash[_stacks_key] = stacks

    def start(env: dict[str, str] | None = None, config: dict[str, str] | None = None, **kwargs) -> AirflowStack:
        db = postgres.create_database(template=migrated_template)
        stack = AirflowStack(tmp_path / f"airflow{len(stacks) or ''}", DAGS_FOLDER, postgres.url(db),
                             lambda: postgres.connect(db), env=env, config=config, migrated=True, **kwargs)
        stacks.append(stack)
        return stack.__enter__()

    yield start
    for stack in stacks:
        stack.stop()


class LocalAirflow:
    """A throwaway local-profile Airflow home (SQLite) for `airflow dags test` runs; its database is a
    copy of `template` when given (migrated once per session), else migrated here."""

    def __init__(self, root: Path, template: Path | None = None):
        import os
        import shutil

        self.root = root
        self.data_root = f"file://{root / 'data'}"
        self.env = {
            **os.environ,
            "AIRFLOW_HOME": str(root / "airflow"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{root / 'airflow' / 'airflow.db'}",
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "LLMOPS_PROFILE": "local",
            "LLMOPS_DATA_ROOT": self.data_root,
            "LLMOPS_CHECKPOINT_ROOT": str(root / "checkpoints"),
            "LLMOPS_MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        }
        (root / "airflow").mkdir(parents=True, exist_ok=True)
        if template:
            shutil.copyfile(template, root / "airflow" / "airflow.db")
        else:
            self.run(["airflow", "db", "migrate"])

    def run(self, argv: list[str], timeout: float = 600):
        import subprocess

        out = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout)
        assert out.returncode == 0, f"{argv} failed:\n{out.stdout[-8000:]}\n{out.stderr[-8000:]}"
        return out

    def dags_test(self, dag_id: str, conf: dict | None = None, timeout: float = 600):
        import json

        return self.run(["airflow", "dags", "test", dag_id, "--conf", json.dumps(conf or {})], timeout=timeout)

    def popen_dags_test(self, dag_id: str, conf: dict | None = None):
        import json
        import subprocess

        log = open(self.root / f"{dag_id}.log", "w")  # noqa: SIM115 - closed with the process
        return subprocess.Popen(["airflow", "dags", "test", dag_id, "--conf", json.dumps(conf or {})],
                                env=self.env, stdout=log, stderr=subprocess.STDOUT)


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("local-airflow-template")
    LocalAirflow(root)
    return root / "airflow" / "airflow.db"


@pytest.fixture
def local_airflow(tmp_path, migrated_sqlite) -> LocalAirflow:
    return LocalAirflow(tmp_path, template=migrated_sqlite)
