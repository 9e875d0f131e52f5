"""Unpausing prepare_dataset and finetune_lifecycle on a fresh install leaves nothing red.

A real deployment (dag-processor, scheduler with the LocalExecutor, triggerer, API server) on an
empty data root. Unpausing starts each DAG's latest interval at once: prepare_dataset's nightly run
must wait for its partition (the sensor deferred in the triggerer), and finetune_lifecycle's run,
with no published dataset, must skip. For half a minute after unpausing, no run and no task fails.
"""

from __future__ import annotations

import time

import pytest
from airflow_stack import COMPONENTS

pytestmark = pytest.mark.slow

WATCH_S = 30  # six pokes of the partition wait
BAD_TASK_STATES = ("failed", "upstream_failed", "up_for_retry")


def test_unpausing_both_dags_on_a_fresh_install_waits_or_skips(airflow_stack, tmp_path):
    (tmp_path / "data").mkdir()
    stack = airflow_stack(
        env={"LLMOPS_DATA_ROOT": (tmp_path / "data").as_uri(), "LLMOPS_PROFILE": "local",
             "LLMOPS_CHECKPOINT_ROOT": str(tmp_path / "checkpoints"),
             "LLMOPS_MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
             # the wait outlasts the test; the trigger checks often enough to be seen doing it
             "LLMOPS_PARTITION_WAIT_SECONDS": "3600", "LLMOPS_PARTITION_POKE_SECONDS": "5"},
        components=(*COMPONENTS, "triggerer"),
    )
    dags = ("prepare_dataset", "finetune_lifecycle")
    for dag_id in dags:
        stack.wait_for_dag(dag_id)
    for dag_id in dags:
        stack.airflow("dags", "unpause", dag_id)
    start = time.monotonic()

    def states(dag_id: str) -> dict[str, str]:
        return {t["task_id"]: t["state"] for t in stack.task_states(dag_id)}

    def no_red() -> None:
        for dag_id in dags:
            runs = stack.dag_runs(dag_id)
            assert all(r["state"] != "failed" for r in runs), (dag_id, runs, stack.task_states(dag_id))
            bad = {k: v for k, v in states(dag_id).items() if v in BAD_TASK_STATES}
            assert not bad, (dag_id, bad)

    def settled():
        no_red()
        waiting = states("prepare_dataset").get("wait_for_partition") == "deferred"
        trained = [r for r in stack.dag_runs("finetune_lifecycle") if r["state"] == "success"]
        return waiting and trained

    stack.wait_until(settled, timeout=WATCH_S + 60, what="a deferred partition wait and a finished training run")
    while time.monotonic() - start < WATCH_S:
        no_red()
        time.sleep(2)
    no_red()

    [prep] = stack.dag_runs("prepare_dataset")
    assert prep["run_type"] == "scheduled" and prep["state"] == "running"
    assert states("prepare_dataset") == {"wait_for_partition": "deferred", "resolve_sources": None,
                                         "curate": None, "publish": None}
    assert stack.query("SELECT classpath FROM trigger")[0]["classpath"].endswith("StoragePathTrigger")

    [train] = stack.dag_runs("finetune_lifecycle")
    assert train["run_type"] == "scheduled" and train["state"] == "success"
    tasks = states("finetune_lifecycle")
    assert tasks.pop("validate_params") == "success"
    assert tasks.pop("resolve_dataset") == "skipped"
    assert set(tasks.values()) == {"skipped"}, tasks
    log = "\n".join(p.read_text(errors="replace") for p in (stack.home / "logs").rglob("*.log")
                    if "task_id=resolve_dataset" in str(p))
    assert "nothing to train, no published dataset" in log, log[-3000:]
