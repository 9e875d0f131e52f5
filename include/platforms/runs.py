"""A training run as the off-hours side of every platform names and holds it.

Stopping a run leaves a hold marker under the data root (`<data root>/offhours/stopped/<run>.json`,
object storage on every platform): the training task's pre_execute hook
(include/lifecycle/training.py) reads it and refuses a relaunch by a task retry until the run is
admitted again, which clears it. It is not in the checkpoint dir because Airflow's pods on eks
mount no checkpoint volume (the FSx claim lives in llm-training, for the trainer pods).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from include.dag_ids import FINETUNE_LIFECYCLE
from include.scheduling.requests import admitted_run_id


def run_names(record: dict[str, Any]) -> dict[str, str]:
    """The admitted run's deterministic names: its DAG run id and its plan's run name."""
    from include.training.planning import run_name

    run_id = admitted_run_id(record["request"]["id"])
    return {"run_id": run_id, "run_name": run_name(FINETUNE_LIFECYCLE, run_id)}


def hold_marker(settings, run_name: str):
    """The stopped run's hold marker: under the data root, which every Airflow task can read and write."""
    from include.storage.objectstore import storage_path

    return storage_path(f"{settings.data_root}/offhours/stopped/{run_name}.json")


def mark_stopped(settings, run_name: str, why: str) -> str:
    """Hold the run; returns the marker's body (the local launcher's stop request carries the same)."""
    body = json.dumps({"run_name": run_name, "stopped_at": datetime.now(UTC).isoformat(timespec="seconds"),
                       "why": why})
    marker = hold_marker(settings, run_name)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_bytes(body.encode())
    return body


def stopped(settings, run_name: str) -> dict[str, Any] | None:
    """The run's hold marker ({"stopped_at", "why", ...}), or None when it may launch."""
    marker = hold_marker(settings, run_name)
    return json.loads(marker.read_bytes()) if marker.exists() else None


def clear_hold(settings, run_name: str) -> None:
    hold_marker(settings, run_name).unlink(missing_ok=True)
