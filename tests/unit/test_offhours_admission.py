"""Admission into off-hours windows: order, GPU/time/cost budgets, refusals, the request queue."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from include.lifecycle.training import hold_if_stopped, run_now_or_queue
from include.scheduling import admission, requests
from include.scheduling.admission import PoolBudget, Request, admit, order, overruns, request_from_plan
from include.settings import Settings
from include.training.restarts import STOP_REQUEST_FILE


def req(rid: str, gpus: int = 8, hours: float = 2.0, cost: float = 100.0, priority: int = 0,
        created: str = "2026-06-01T10:00:00+00:00", pool: str = "production") -> Request:
    return Request(id=rid, pool=pool, gpus=gpus, hours=hours, gpu_hours=gpus * hours, cost_usd=cost,
                   priority=priority, created_at=created)


def budget(limit: int = 16, used: int = 0, remaining: float = 8.0, cost: float = 1000.0, committed: float = 0.0):
    return PoolBudget(gpu_limit=limit, gpus_in_use=used, remaining_hours=remaining, window_hours=10.0,
                      cost_budget_usd=cost, cost_committed_usd=committed)


def outcomes(verdicts) -> dict[str, str]:
    return {v.request.id: v.outcome for v in verdicts}


def test_priority_then_age_then_id():
    rs = [req("c", created="2026-06-01T09:00:00+00:00"), req("a", priority=5, created="2026-06-02T00:00:00+00:00"),
          req("b", created="2026-06-01T08:00:00+00:00"), req("d", priority=5, created="2026-06-01T00:00:00+00:00")]
    assert [r.id for r in order(rs)] == ["d", "a", "b", "c"]


def test_gpu_budget_counts_running_runs_and_earlier_admissions():
    rs = [req("old", created="2026-06-01T00:00:00+00:00"), req("new", created="2026-06-02T00:00:00+00:00"),
          req("small", gpus=4, created="2026-06-03T00:00:00+00:00")]
    verdicts = admit(rs, {"production": budget(limit=16, used=4)})
    assert outcomes(verdicts) == {"old": "admitted", "new": "waiting", "small": "admitted"}
    waiting = next(v for v in verdicts if v.request.id == "new")
    assert waiting.reason == "needs 8 GPUs, 4 of 16 free in pool production"


def test_higher_priority_goes_first_even_if_younger():
    rs = [req("low", created="2026-06-01T00:00:00+00:00"), req("high", priority=1, created="2026-06-05T00:00:00+00:00")]
    assert outcomes(admit(rs, {"production": budget(limit=8)})) == {"high": "admitted", "low": "waiting"}


def test_remaining_window_time_and_cost_budget():
    rs = [req("long", hours=5.0), req("pricey", cost=700.0, created="2026-06-01T11:00:00+00:00"),
          req("fine", cost=400.0, created="2026-06-01T12:00:00+00:00")]
    verdicts = admit(rs, {"production": budget(limit=64, remaining=4.0, cost=1000.0, committed=400.0)})
    assert outcomes(verdicts) == {"long": "waiting", "pricey": "waiting", "fine": "admitted"}
    reasons = {v.request.id: v.reason for v in verdicts}
    assert reasons["long"] == "needs 5.00 h, the window closes in 4.00 h"
    assert reasons["pricey"] == "estimated $700.00, $600.00 of the window cost budget left"


def test_never_fits_is_refused_at_once_with_the_reason():
    rs = [req("huge", gpus=128), req("dear", cost=5000.0), req("endless", hours=11.0),
          req("nowhere", pool="inference")]
    verdicts = {v.request.id: v for v in admit(rs, {"production": budget(limit=64)})}
    assert {k: v.outcome for k, v in verdicts.items()} == dict.fromkeys(verdicts, "refused")
    assert verdicts["huge"].reason.startswith("needs 128 GPUs but pool production is limited to 64")
    assert "exceeds the whole window cost budget $1,000.00" in verdicts["dear"].reason
    assert "longer than any window (10.00 h)" in verdicts["endless"].reason
    assert "has no off-hours window" in verdicts["nowhere"].reason


def test_a_closed_window_admits_nothing_but_still_refuses_the_impossible():
    verdicts = admit([req("ok"), req("huge", gpus=99)], {"production": budget(remaining=0)})
    assert outcomes(verdicts) == {"ok": "waiting", "huge": "refused"}


def test_overruns_stop_only_experiment_runs_that_end_after_close():
    close = datetime(2026, 6, 2, 10, tzinfo=UTC)
    now = datetime(2026, 6, 2, 9, 50, tzinfo=UTC)
    running = [{"id": "exp-late", "pool": "experiment", "started_at": "2026-06-02T08:00:00+00:00", "hours": 3},
               {"id": "exp-ok", "pool": "experiment", "started_at": "2026-06-02T09:45:00+00:00", "hours": 0.2},
               {"id": "exp-blown", "pool": "experiment", "started_at": "2026-06-02T09:00:00+00:00", "hours": 0.5},
               {"id": "prod-late", "pool": "production", "started_at": "2026-06-02T08:00:00+00:00", "hours": 9}]
    # exp-blown should have ended at 09:30 and still runs: its end is unknown, so it is stopped too.
    assert [r["id"] for r in overruns(running, now, close)] == ["exp-late", "exp-blown"]
    assert [r["id"] for r in overruns(running, close, close)] == ["exp-late", "exp-ok", "exp-blown"]


def test_request_from_a_local_plan_uses_slots_and_the_per_step_figure():
    plan = {"nodes": 2, "gpus_per_node": 1, "max_steps": 360, "instance_type": "local", "pool": "experiment"}
    r = request_from_plan(plan, {"gpu_hours": 0.0, "cost_usd": 0.0}, request_id="req-1", priority=2,
                          created_at=datetime(2026, 6, 1, tzinfo=UTC), conf={"x": 1}, local_seconds_per_step=0.5)
    assert (r.gpus, r.hours, r.gpu_hours, r.cost_usd, r.pool) == (2, 0.05, 0.1, 0.0, "experiment")


def test_request_from_an_eks_plan_counts_whole_nodes():
    """Karpenter counts a node's GPUs against the limit: 2 nodes of g5.48xlarge hold 16, whatever the pods ask."""
    plan = {"nodes": 2, "gpus_per_node": 4, "max_steps": 100, "instance_type": "g5.48xlarge", "pool": "experiment"}
    est = {"wall_hours": 1.5, "gpu_hours": 12.0, "cost_usd": 21.0}
    r = request_from_plan(plan, est, request_id="r", priority=0, created_at=datetime(2026, 6, 1, tzinfo=UTC),
                          conf={}, local_seconds_per_step=1)
    assert (r.gpus, r.hours, r.gpu_hours, r.cost_usd) == (16, 1.5, 12.0, 21.0)


@pytest.fixture
def settings(tmp_path):
    return Settings(data_root=f"file://{tmp_path}/data", checkpoint_root=str(tmp_path / "ckpt"))


def test_off_hours_params_queue_once_and_admitted_runs_launch(settings):
    plan = {"dag_id": "finetune_lifecycle", "nodes": 2, "gpus_per_node": 1, "max_steps": 100,
            "instance_type": "local", "pool": "production"}
    params = {"window": "off-hours", "priority": 3, "max_steps": 100}
    assert run_now_or_queue(plan, {}, {**params, "window": "now"}, "manual__1", settings) is True
    assert run_now_or_queue(plan, {}, params, "manual__1", settings) is False
    assert run_now_or_queue(plan, {}, params, "manual__1", settings) is False  # a rerun: same record
    store = requests.RequestStore.for_settings(settings)
    [record] = store.all()
    assert record["state"] == "waiting" and record["request"]["priority"] == 3
    assert record["request"]["conf"] == {"priority": 3, "max_steps": 100, "window": "now"}
    assert record["request"]["id"] == requests.request_id("finetune_lifecycle", "manual__1")
    admitted = requests.admitted_run_id(record["request"]["id"])
    assert run_now_or_queue(plan, {}, params, admitted, settings) is True
    store.transition(record["request"]["id"], "admitted", "window open")
    assert [r["state"] for r in store.all()] == ["admitted"]
    with pytest.raises(ValueError, match="state='lost'"):
        store.transition(record["request"]["id"], "lost", "")


@pytest.fixture
def env_settings(tmp_path, monkeypatch):
    """The settings hold_if_stopped reads (get_settings), from the environment as in a task."""
    from include.settings import get_settings

    monkeypatch.setenv("LLMOPS_PROFILE", "local")
    monkeypatch.setenv("LLMOPS_DATA_ROOT", f"file://{tmp_path}/data")
    monkeypatch.setenv("LLMOPS_CHECKPOINT_ROOT", str(tmp_path / "ckpt"))
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def test_a_stopped_run_is_not_relaunched_by_a_retry_until_readmitted(env_settings, tmp_path):
    """The hold marker is under the data root (readable by every Airflow task, on eks too: its pods have
    no checkpoint volume); locally the stop also leaves the launcher's stop request in the checkpoint
    dir, so it restarts no rank. Re-admission lifts both."""
    from pathlib import Path
    from types import SimpleNamespace

    from airflow.sdk.exceptions import AirflowFailException

    from include.platforms import get_platform
    from include.platforms.runs import hold_marker, run_names, stopped
    from include.scheduling.windows import load

    record = {"request": {"id": "req-1", "gpus": 1}}
    capacity = get_platform(env_settings).capacity(load())

    def stop_run() -> None:
        (stop,) = capacity.stop_run(record)  # the local stop: hold marker, then the launcher's stop request
        stop.run()
    names = run_names(record)
    ckpt = Path(env_settings.checkpoint_root) / names["run_name"]
    task = SimpleNamespace(plan={"run_name": names["run_name"], "checkpoint_dir": str(ckpt)})
    hold_if_stopped({"task": task})  # no marker: launches
    hold_if_stopped({"task": SimpleNamespace(plan={"checkpoint_dir": str(ckpt)})})  # no run name: nothing to hold

    stop_run()
    marker = hold_marker(env_settings, names["run_name"])
    assert str(marker) == f"file://{tmp_path}/data/offhours/stopped/{names['run_name']}.json"
    assert stopped(env_settings, names["run_name"])["why"] == "window closed"
    assert (ckpt / STOP_REQUEST_FILE).is_file()  # what the local launcher reads (local_launcher._give_up_reason)
    with pytest.raises(AirflowFailException, match="stopped at window close"):
        hold_if_stopped({"task": task})
    # Without the checkpoint dir (an eks Airflow pod has none), the data root alone holds the run.
    (ckpt / STOP_REQUEST_FILE).unlink()
    with pytest.raises(AirflowFailException, match="window closed"):
        hold_if_stopped({"task": task})

    stop_run()
    capacity.release_hold(record)
    assert not marker.exists() and not (ckpt / STOP_REQUEST_FILE).exists()
    assert stopped(env_settings, names["run_name"]) is None
    hold_if_stopped({"task": task})
    capacity.release_hold(record)  # idempotent


def test_the_eks_stop_writes_no_stop_request_into_a_checkpoint_dir(env_settings, tmp_path):
    """mark_stopped (all EksCapacity.stop_run writes besides deleting the JobSet) writes only the data-root marker."""
    from include.platforms.runs import mark_stopped, stopped

    mark_stopped(env_settings, "ft-abc", "window closed")
    assert stopped(env_settings, "ft-abc")["run_name"] == "ft-abc"
    assert not (tmp_path / "ckpt").exists()


def test_admission_module_never_imports_airflow():
    import subprocess
    import sys

    code = "import sys, include.scheduling.admission, include.scheduling.windows; print('airflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert admission.LOCAL_INSTANCE == "local"
