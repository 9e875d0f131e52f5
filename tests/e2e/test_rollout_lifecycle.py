"""rollout_model through real `airflow dags test` runs: deferrals in the triggerer path, XComs, branches.

A first rollout (no champion server: straight to 100 %), then a healthy canary over two steps,
promoted, the old version scaled down and `champion` moved. The latency ratios are off: this runs
beside other tests, and the latency verdicts are tests/integration/test_rollout_latency.py's, alone.
"""

from __future__ import annotations

import json
import shutil

import pytest

from include.serving import processes
from include.serving import route as rt
from tests.integration import rollout_harness as h

pytestmark = pytest.mark.slow


def test_first_rollout_then_a_healthy_canary_is_promoted(local_airflow):
    from mlflow import MlflowClient

    data = local_airflow.root / "data"
    h.write_eval_set(data)
    good = h.export_model(local_airflow.root / "m1", seed=1)
    shutil.copytree(good.removeprefix("file://"), local_airflow.root / "m2")
    client = MlflowClient(local_airflow.env["LLMOPS_MLFLOW_TRACKING_URI"])
    h.register(client, [good, f"file://{local_airflow.root / 'm2'}"], local_airflow.root / "artifacts")
    root = processes.run_dir(local_airflow.data_root)
    try:
        first = local_airflow.dags_test("rollout_model", {"model_version": "1", "steps": [100]})
        assert "first rollout" in first.stdout + first.stderr
        out = local_airflow.dags_test("rollout_model", {
            "model_version": "2", "steps": [50, 100], "interval_s": 5, "count": 1, "probe_size": 2,
            "traffic_rate": 20, "scale_down_delay_s": 1, "analysis_policy": h.NO_LATENCY})
        log = out.stdout + out.stderr
        assert "rollout of llmops-assistant v2: Promoted; champion 2, challenger None" in log, log[-5000:]
        route = json.loads(next((root / "routes").glob("*.json")).read_text())
        assert rt.weights(route) == {rt.served_name(h.MODEL, 2): 100}
        assert rt.state(route)["phase"] == "Promoted" and not rt.in_progress(route)
        assert processes.read("model-" + rt.served_name(h.MODEL, 1), root) is None  # the loser is scaled down
        assert {k: str(v) for k, v in client.get_registered_model(h.MODEL).aliases.items()} == {"champion": "2"}
    finally:
        for info in processes.running("", root):
            processes.stop(info.name, root)
