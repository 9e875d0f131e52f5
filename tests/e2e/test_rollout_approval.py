"""An inconclusive canary asks a person, and aborts when no one answers: a real scheduler.

Airflow 3.3 parks a Human-in-the-loop task in `awaiting_input` and the scheduler's timeout sweep
resumes it, so this needs the scheduler, not `airflow dags test`. The load generator is off
(traffic_rate 0): the canary's metrics have no data, which is Inconclusive. v1 serves before the
deployment starts (the first rollout's DAG path is test_rollout_lifecycle's). What a person sees
afterwards, in the approval's Required Action tab (headless Chromium) and its log, says that the
request timed out and which default it took, not "Response received".
"""

from __future__ import annotations

import json
import shutil

import pytest
from test_ui_browser import Page, browser  # noqa: F401 - the browser fixture

from include.serving import processes
from include.serving import route as rt
from tests.integration import rollout_harness as h

pytestmark = pytest.mark.slow
APPROVAL_TIMEOUT_S = 15


def first_rollout(monkeypatch, env: dict[str, str]) -> None:
    """v1 to 100 % in this process, under the deployment's `env`."""
    from include.settings import get_settings

    try:
        with monkeypatch.context() as m:
            for k, v in env.items():
                m.setenv(k, v)
            get_settings.cache_clear()
            verdict, _ = h.first_rollout()
    finally:
        get_settings.cache_clear()  # after the environment is restored
    assert verdict["decision"] == "promote", verdict


def test_inconclusive_canary_waits_for_approval_then_aborts_on_timeout(airflow_stack, browser, tmp_path,  # noqa: F811
                                                                       monkeypatch):
    from mlflow import MlflowClient

    data = tmp_path / "data"
    h.write_eval_set(data)
    good = h.export_model(tmp_path / "m1", seed=1)
    shutil.copytree(good.removeprefix("file://"), tmp_path / "m2")
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking)
    h.register(client, [good, f"file://{tmp_path / 'm2'}"], tmp_path / "artifacts")
    root = processes.run_dir(data.as_uri())
    env = {"LLMOPS_PROFILE": "local", "LLMOPS_DATA_ROOT": data.as_uri(), "LLMOPS_MLFLOW_TRACKING_URI": tracking}
    try:
        first_rollout(monkeypatch, env)
        stack = airflow_stack(env={**env, "LLMOPS_APPROVAL_TIMEOUT_SECONDS": str(APPROVAL_TIMEOUT_S)},
                              config={"AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True"},
                              components=("dag-processor", "scheduler", "triggerer", "api-server"),
                              api_apps="core,execution")
        stack.wait_for_dag("rollout_model")
        stack.airflow("dags", "unpause", "rollout_model")
        stack.airflow("dags", "trigger", "rollout_model", "--run-id", "manual__canary", "--conf", json.dumps({
            "model_version": "2", "steps": [50, 100], "interval_s": 5, "count": 1, "probe_size": 2,
            "traffic_rate": 0, "scale_down_delay_s": 1}))

        def asking():
            rows = stack.query("SELECT d.subject, d.body, d.defaults, d.responded_at, d.chosen_options, ti.state "
                               "FROM hitl_detail d JOIN task_instance ti ON ti.id = d.ti_id "
                               "WHERE ti.run_id = 'manual__canary'")
            return rows or None

        asked = stack.wait_until(asking, 240, "the approval task to ask")
        assert "inconclusive" in asked[0]["subject"] and "takes the default: abort" in asked[0]["body"], asked
        assert asked[0]["defaults"] is None, "a default in the request reads as a response received on timeout"
        [run] = stack.wait_for_runs("rollout_model", 1, timeout=120 + APPROVAL_TIMEOUT_S)
        states = {r["task_id"]: r["state"] for r in stack.task_states("rollout_model")}
        assert run["state"] == "success", states
        assert states["approve"] == "success" and states["abort"] == "success", states
        assert states["promote"] == "skipped", states
        [answer] = asking()
        assert answer["responded_at"] is None and answer["chosen_options"] is None, answer  # nobody answered
        log = "\n".join(p.read_text(errors="replace") for p in (stack.home / "logs").rglob("*.log")
                        if "task_id=approve" in str(p))
        assert f"approval timed out: no answer within {APPROVAL_TIMEOUT_S} s; took the default: abort" in log, log

        page = Page(browser)
        page.d.get(f"{stack.api_url}/dags/rollout_model/runs/manual__canary/tasks/approve/required_actions")
        text = page.until(lambda: (t := page.d.find_element("tag name", "body").text) and "takes the default" in t
                          and t)
        assert "takes the default: abort" in text and "Response received" not in text, text
        page.shot("approval-timed-out")
        page.d.get(f"{stack.api_url}/required_actions")  # every request, with its state
        page.until(lambda: "No Response Received" in page.d.find_element("tag name", "body").text)
        page.shot("approval-timed-out-list")
        page.d.get(f"{stack.api_url}/dags/rollout_model/runs/manual__canary/tasks/approve")
        page.until(lambda: "approval timed out" in page.d.find_element("tag name", "body").text)
        page.shot("approval-timed-out-log")

        route = json.loads(next((root / "routes").glob("*.json")).read_text())
        assert rt.weights(route) == {rt.served_name(h.MODEL, 1): 100} and not rt.in_progress(route)
        aliases = {k: str(v) for k, v in client.get_registered_model(h.MODEL).aliases.items()}
        assert aliases["champion"] == "1", aliases  # champion untouched
        assert processes.read("model-" + rt.served_name(h.MODEL, 2), root) is None  # the canary scaled down
    finally:
        for info in processes.running("", root):
            processes.stop(info.name, root)
