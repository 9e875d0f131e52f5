"""Off-hours admission with a real scheduler (dag-processor, scheduler, API server; Postgres).

Three finetune_lifecycle runs ask for an off-hours window on the local profile (2 GPU slots):
two of 2 ranks wait, one of 4 ranks is refused at once with the reason. A window then opens a
minute later: the offhours DAG admits the older request and triggers its run
(`offhours__<request id>`); the other waits for slots and is admitted when the first run ends.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

SMALL = {"max_steps": 20, "checkpoint_interval": 10, "window": "off-hours"}


def seed_dataset(data_root: str) -> None:
    from include.data.catalog import publish, stage
    from include.data.pipeline import PrepConfig
    from include.sample_data import stage_sample

    raw = stage_sample(data_root)
    manifest = stage(data_root, [raw], PrepConfig(), "seed")
    publish(data_root, manifest, "seed")


def write_windows(path: Path, opens: datetime | None) -> None:
    from include.scheduling.windows import WINDOWS_FILE

    doc = yaml.safe_load(WINDOWS_FILE.read_text())
    later = (datetime.now(UTC).isoweekday() + 3) % 7  # closed: a weekly window three days from now (cron 0 = Sunday)
    cron = f"{opens.minute} {opens.hour} * * *" if opens else f"0 0 * * {later}"
    for pool in doc["pools"].values():
        pool["windows"] = [{"name": "test", "cron": cron, "duration": "30m", "timezone": "UTC"}]
    doc["admission"].update(local_gpu_slots=2, local_seconds_per_step=1)
    path.write_text(yaml.safe_dump(doc))


def records(data_root: Path) -> dict[str, dict]:
    folder = data_root / "offhours" / "requests"
    out = {}
    for f in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        r = json.loads(f.read_text())
        out[r["request"]["id"]] = r
    return out


def test_window_admission_with_a_real_scheduler(airflow_stack, tmp_path):
    from include.scheduling.requests import admitted_run_id, request_id

    data_root = tmp_path / "data"
    seed_dataset(data_root.as_uri())
    windows = tmp_path / "windows.yaml"
    write_windows(windows, None)  # no window today yet
    stack = airflow_stack(env={"LLMOPS_DATA_ROOT": data_root.as_uri(), "LLMOPS_PROFILE": "local",
                               "LLMOPS_CHECKPOINT_ROOT": str(tmp_path / "checkpoints"),
                               "LLMOPS_WINDOWS_FILE": str(windows),
                               "LLMOPS_OFFHOURS_CRON": "* * * * *",  # a tick a minute: the window opens in one
                               "LLMOPS_MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    stack.wait_for_dag("finetune_lifecycle")
    stack.wait_for_dag("offhours")
    asks = {"first": {**SMALL, "nodes": 2}, "second": {**SMALL, "nodes": 2}, "huge": {**SMALL, "nodes": 4}}
    # Unpausing runs the latest missed nightly interval at once (a full training on default
    # params): the first request takes that logical date, as the nightly run asking for a window.
    now = datetime.now(UTC)
    nightly = now.replace(hour=2, minute=0, second=0, microsecond=0)
    nightly -= timedelta(days=1) if nightly > now else timedelta(0)
    for name, conf in asks.items():
        extra = ["--logical-date", nightly.isoformat()] if name == "first" else []
        stack.airflow("dags", "trigger", "finetune_lifecycle", "--run-id", f"manual__{name}", "--conf",
                      json.dumps(conf), *extra)
    stack.airflow("dags", "unpause", "finetune_lifecycle")
    ids = {name: request_id("finetune_lifecycle", f"manual__{name}") for name in asks}
    runs = stack.wait_for_runs("finetune_lifecycle", 3, timeout=420)
    assert [r["run_type"] for r in runs] == ["manual"] * 3, runs
    assert all(r["state"] == "success" for r in runs), stack.task_states("finetune_lifecycle")
    launched = [t for t in stack.task_states("finetune_lifecycle") if t["task_id"] == "launch_training"]
    assert {t["state"] for t in launched} == {"skipped"}, launched  # queued, not trained
    assert {records(data_root)[i]["state"] for i in ids.values()} == {"waiting"}

    # The offhours DAG ticks every minute; no window yet: the impossible request is refused at once.
    stack.airflow("dags", "unpause", "offhours")
    stack.wait_until(lambda: records(data_root)[ids["huge"]]["state"] == "refused", timeout=240,
                     what="the 4-slot request to be refused")
    assert "needs 4 GPUs but pool production is limited to 2" in records(data_root)[ids["huge"]]["history"][-1][2]
    assert [records(data_root)[ids[n]]["state"] for n in ("first", "second")] == ["waiting", "waiting"]

    # A window opens at the next minute, with the next tick.
    opens = (datetime.now(UTC) + timedelta(minutes=1)).replace(second=0, microsecond=0)
    write_windows(windows, opens)
    stack.wait_until(lambda: records(data_root)[ids["first"]]["state"] != "waiting", timeout=360,
                     what="the first request to be admitted at window open")
    first = records(data_root)[ids["first"]]
    assert first["state"] in ("admitted", "done") and first["admitted_at"] >= opens.isoformat()
    assert records(data_root)[ids["second"]]["state"] == "waiting"
    assert records(data_root)[ids["second"]].get("waiting_reason", "").startswith("needs 2 GPUs, 0 of 2 free")

    # The first admitted run trains; when it ends, the second is admitted in the same window.
    [ran] = stack.wait_for_runs("finetune_lifecycle", 1, timeout=900,
                                where=lambda r: r["run_id"] == admitted_run_id(ids["first"]))
    stack.wait_until(lambda: records(data_root)[ids["second"]]["state"] != "waiting", timeout=240,
                     what="the second request to be admitted after the first run ended")
    second = records(data_root)[ids["second"]]
    assert second["admitted_at"] >= records(data_root)[ids["first"]]["history"][-1][0][:19]
    stack.wait_until(lambda: [r for r in stack.dag_runs("finetune_lifecycle")
                              if r["run_id"] == admitted_run_id(ids["second"])], timeout=120,
                     what="the second admitted run to be triggered")
    trained = [t for t in stack.task_states("finetune_lifecycle")
               if t["run_id"] == admitted_run_id(ids["first"]) and t["task_id"] == "launch_training"]
    assert trained and trained[0]["state"] == "success", (ran, stack.task_states("finetune_lifecycle"))
