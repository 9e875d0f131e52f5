"""New data lands -> prepare_dataset publishes a version -> the asset event starts finetune_lifecycle.

A real deployment (dag-processor, scheduler with the LocalExecutor, API server; SQLite). The
nightly prepare_dataset run curates yesterday's partition; its asset event must create an
asset-triggered finetune_lifecycle run that trains on exactly the version the event carries.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

pytestmark = pytest.mark.slow


def test_a_published_version_triggers_retraining_on_that_version(airflow_stack, tmp_path):
    from include.sample_data import stage_sample

    data_root = (tmp_path / "data").as_uri()
    staged = tmp_path / "data" / "raw"
    stage_sample(data_root)
    # The nightly run after unpausing covers yesterday's interval: make that partition the new data.
    yesterday = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    (staged / "dt=2026-11-01").rename(staged / f"dt={yesterday}")

    stack = airflow_stack(env={"LLMOPS_DATA_ROOT": data_root, "LLMOPS_PROFILE": "local",
                               "LLMOPS_CHECKPOINT_ROOT": str(tmp_path / "checkpoints"),
                               "LLMOPS_MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    stack.wait_for_dag("prepare_dataset")
    stack.wait_for_dag("finetune_lifecycle")
    stack.airflow("dags", "unpause", "finetune_lifecycle")
    stack.airflow("dags", "unpause", "prepare_dataset")

    [prep] = stack.wait_for_runs("prepare_dataset", 1, timeout=240)
    assert prep["state"] == "success", stack.task_states("prepare_dataset")
    [event] = stack.asset_events("curated_dataset")
    assert event["source_dag_id"] == "prepare_dataset"
    assert event["extra"]["uri"].endswith(event["extra"]["version"])

    def resolved():
        rows = stack.query(
            "SELECT r.run_type, x.value::text AS value FROM dag_run r "
            "JOIN xcom x ON x.dag_id = r.dag_id AND x.run_id = r.run_id "
            "WHERE r.dag_id = 'finetune_lifecycle' AND x.task_id = 'resolve_dataset' AND x.key = 'return_value'")
        return rows[0] if rows else None

    row = stack.wait_until(resolved, timeout=180, what="the asset-triggered run to resolve its dataset")
    assert row["run_type"] == "asset_triggered"
    value = json.loads(row["value"])
    assert value["version"] == event["extra"]["version"]
    assert value["uri"] == event["extra"]["uri"]
