"""The off-hours loop on the local profile with real trainer processes, a real MLflow store and files.

A window closes on an experiment run: its ranks get SIGTERM, it is queued again, a task retry
is refused; the next window re-admits it under the same run id and it resumes from its last
checkpoint, losing at most one checkpoint interval. The window's report and the run's actual
cost (MLflow, beside the estimate and its error) are written.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from include.lifecycle import offhours
from include.lifecycle.offhours import write_report
from include.lifecycle.training import hold_if_stopped
from include.platforms import get_platform
from include.platforms.runs import run_names
from include.scheduling import requests
from include.scheduling.admission import Request
from include.scheduling.requests import RequestStore, admitted_run_id
from include.scheduling.windows import WINDOWS_FILE, load
from include.settings import get_settings
from include.training import tiny
from include.training.local_launcher import launch
from tests.integration.test_local_training import make_plan, read_metrics

INTERVAL = 10


@pytest.fixture
def settings(tmp_path, monkeypatch):
    doc = yaml.safe_load(WINDOWS_FILE.read_text())
    hourly = [{"name": "half-hours", "cron": "0 * * * *", "duration": "30m", "timezone": "UTC"}]
    for pool in doc["pools"].values():
        pool["windows"] = hourly
    doc["admission"].update(local_gpu_slots=2, local_seconds_per_step=0.5, local_stop_grace_s=10)
    windows_file = tmp_path / "windows.yaml"
    windows_file.write_text(yaml.safe_dump(doc))
    for key, value in {"DATA_ROOT": f"file://{tmp_path}/data", "CHECKPOINT_ROOT": str(tmp_path / "ckpt"),
                       "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
                       "WINDOWS_FILE": str(windows_file), "PROFILE": "local"}.items():
        monkeypatch.setenv(f"LLMOPS_{key}", value)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def at(hour: int, minute: int, second: int = 0) -> datetime:
    return datetime(2026, 6, 2, hour, minute, second, tzinfo=UTC)


def never_finished(run_id: str) -> str | None:
    return "running"


def test_window_close_stops_requeues_and_the_next_window_resumes(settings, tmp_path):
    schedule = load()
    cluster = get_platform(settings).capacity(schedule)
    store = RequestStore.for_settings(settings)
    rid = requests.request_id("finetune_lifecycle", "manual__exp1")
    store.add(Request(id=rid, pool="experiment", gpus=2, hours=400 * 0.5 / 3600, gpu_hours=0.2, cost_usd=0.0,
                      created_at=at(9, 0).isoformat(), conf={"pool": "experiment", "window": "now"}))
    # Window 10:00-10:30 is open: the request is admitted and its run would be triggered.
    result = offhours.tick(at(10, 20), schedule, cluster, store, settings, never_finished, log=lambda _: None)
    assert result["triggers"] == [{"trigger_run_id": admitted_run_id(rid), "conf": {"pool": "experiment",
                                                                                    "window": "now"}}]
    names = run_names(store.get(rid))
    ckpt = Path(settings.checkpoint_root) / names["run_name"]
    plan = make_plan(tmp_path, run_name=names["run_name"], checkpoint_dir=str(ckpt), max_steps=400,
                     checkpoint_interval=INTERVAL)
    # The launcher runs in its own process, as in the Airflow task; the off-hours tick is another.
    launcher = subprocess.Popen(
        [sys.executable, "-c", "import json, sys; from include.training.local_launcher import launch; "
                               "launch(json.loads(sys.argv[1]), 2, timeout=180)", json.dumps(plan)],
        cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not ((found := tiny.latest_checkpoint(ckpt)) and found[0] > INTERVAL):
        time.sleep(0.05)
    assert tiny.latest_checkpoint(ckpt)[0] > INTERVAL, launcher.poll()

    # 10:29: the window closes in a minute and the run would overrun: SIGTERM, re-queued.
    result = offhours.tick(at(10, 29), schedule, cluster, store, settings, never_finished, log=lambda _: None)
    _, stderr = launcher.communicate(timeout=60)
    assert [s["id"] for s in result["stopped"]] == [rid]
    assert launcher.returncode != 0 and "LaunchError" in stderr and "SIGTERM" in stderr, stderr[-2000:]
    done_steps = max(r["step"] for r in read_metrics(ckpt))
    last_ckpt = tiny.latest_checkpoint(ckpt)[0]
    record = store.get(rid)
    assert record["state"] == "waiting" and record["stops"] == 1
    with pytest.raises(Exception, match="stopped at window close"):
        hold_if_stopped({"task": SimpleNamespace(plan=plan)})  # a task retry does not relaunch

    # Closed: nothing admitted, the close cleanup ran once.
    result = offhours.tick(at(10, 45), schedule, cluster, store, settings, never_finished, log=lambda _: None)
    assert result["triggers"] == [] and result["cleanup"] is not None
    assert store.get(rid)["waiting_reason"] == "the window is closed"
    again = offhours.tick(at(10, 50), schedule, cluster, store, settings, never_finished, log=lambda _: None)
    assert again["cleanup"] is None  # once per close

    # 11:00 the next window: re-admitted under the same run id, the marker cleared, resumes.
    result = offhours.tick(at(11, 0, 30), schedule, cluster, store, settings, never_finished, log=lambda _: None)
    assert [t["trigger_run_id"] for t in result["triggers"]] == [admitted_run_id(rid)]
    hold_if_stopped({"task": SimpleNamespace(plan=plan)})
    resumed = launch(plan, 2, timeout=180)
    assert resumed["metrics"]["resumed_from_step"] == last_ckpt
    lost = done_steps - last_ckpt
    assert 0 <= lost <= INTERVAL, f"lost {lost} steps, more than one checkpoint interval"
    assert [r["step"] for r in read_metrics(ckpt)] == list(range(1, 401))

    # The cost task logs actual vs estimated to MLflow and closes the request.
    from include.lifecycle.training import log_actual_cost
    from include.registry import mlflow_registry as reg

    full_plan = {**plan, "dag_id": "finetune_lifecycle", "run_id": admitted_run_id(rid), "pool": "experiment",
                 "instance_type": "local"}
    cost = log_actual_cost(full_plan, {"gpu_hours": 0.0, "cost_usd": 0.0}, resumed, settings)
    seconds = resumed["metrics"]["train_seconds"]
    assert cost["actual"]["gpu_hours"] == pytest.approx(2 * seconds / 3600, abs=1e-4)
    assert cost["estimated"]["gpu_hours"] == pytest.approx(2 * 400 * 0.5 / 3600, abs=1e-4)
    client = reg.get_client(settings.mlflow_tracking_uri)
    run = client.get_run(reg.get_or_create_run(settings.mlflow_experiment, "finetune_lifecycle",
                                               admitted_run_id(rid), client=client))
    assert run.data.metrics["cost.actual_gpu_hours"] == cost["actual"]["gpu_hours"]
    assert run.data.metrics["cost.gpu_hours_error_pct"] == cost["cost.gpu_hours_error_pct"]
    assert store.get(rid)["state"] == "done" and store.get(rid)["actual"] == cost["actual"]

    # The window's report: admitted with estimated and actual GPU-hours, JSON and HTML with a chart.
    result = offhours.tick(at(11, 10), schedule, cluster, store, settings, lambda r: "success", log=lambda _: None)
    uris = write_report(result)
    report = json.loads(Path(uris["json"].removeprefix("file://")).read_text())
    assert report["window"] == at(11, 0).isoformat()
    [row] = report["admitted"]
    assert row["id"] == rid and row["actual_gpu_hours"] == cost["actual"]["gpu_hours"] and row["stops"] == 1
    assert report["totals"]["estimated_gpu_hours"] == 0.2 and report["totals"]["measured_runs"] == 1
    html = Path(uris["html"].removeprefix("file://")).read_text()
    assert "<svg" in html and "actual" in html and rid in html


def test_admission_against_the_local_slot_budget(settings):
    schedule = load()
    cluster = get_platform(settings).capacity(schedule)
    store = RequestStore.for_settings(settings)
    for i, (gpus, priority) in enumerate(((2, 0), (2, 0), (8, 0), (1, 5))):
        store.add(Request(id=f"req-{i}", pool="production", gpus=gpus, hours=0.1, gpu_hours=0.1 * gpus,
                          cost_usd=0.0, priority=priority, created_at=at(8, i).isoformat()))
    result = offhours.tick(at(10, 1), schedule, cluster, store, settings, never_finished, log=lambda _: None)
    # 2 slots: the priority-5 request (1 slot) first, then nothing else fits; 8 slots never fits.
    assert [t["trigger_run_id"] for t in result["triggers"]] == [admitted_run_id("req-3")]
    states = {r["request"]["id"]: r["state"] for r in store.all()}
    assert states == {"req-0": "waiting", "req-1": "waiting", "req-2": "refused", "req-3": "admitted"}
    assert "needs 8 GPUs but pool production is limited to 2" in store.get("req-2")["history"][-1][2]
    # req-3's run finishes: the oldest waiting one (1 of 2 slots was busy) is admitted next.
    result = offhours.tick(at(10, 5), schedule, cluster, store, settings,
                           lambda run_id: "success" if run_id == admitted_run_id("req-3") else None,
                           log=lambda _: None)
    assert [t["trigger_run_id"] for t in result["triggers"]] == [admitted_run_id("req-0")]
    assert store.get("req-3")["state"] == "done"
