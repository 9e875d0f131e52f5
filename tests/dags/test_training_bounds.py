"""The training task's execution_timeout covers the restart policy's wall-clock bound on each profile.

The launcher (locally) and the JobSet (eks) restart within `max_wall_s`; the Airflow task must not
kill the run earlier, or the bound in the plan (and in MLflow) would be a lie.
"""

import pytest

from include.training.restarts import RESTART_DEFAULTS
from tests.dags.test_dag_integrity import PROFILES, load_dagbag

BACKEND = {"local": "tiny", "eks": "nemo"}


@pytest.fixture(autouse=True)
def fresh_settings():
    from include.settings import get_settings

    yield
    get_settings.cache_clear()


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_execution_timeout_covers_the_wall_clock_bound(profile, monkeypatch):
    dag = load_dagbag(PROFILES[profile], monkeypatch).dags["finetune_lifecycle"]
    timeout = dag.get_task("launch_training").execution_timeout
    assert timeout is not None
    assert timeout.total_seconds() >= RESTART_DEFAULTS[BACKEND[profile]]["max_wall_s"]
