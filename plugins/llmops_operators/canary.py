"""The canary's waits, deferred: readiness polling and step analysis run in the triggerer.

No worker slot is held while a model loads or while an analysis interval passes:
- `ServerReadyTrigger` polls the canary's `/v1/models` until it lists the served name (deadline);
- `CanaryAnalysisTrigger` sleeps until each measurement is due, queries Prometheus through the
  metrics seam, and ends with the step's AnalysisRun. A Failed or Error run sets the canary's
  weight to 0 right there (the abort's first and only urgent act), before the worker resumes.
- `CanaryStepsOperator` walks the steps: set the weight, defer to the analysis, close the step
  (`include.lifecycle.rollout.finish_step`: quality probe, table to the task log and MLflow),
  next step or verdict. A retried task reads its step from the route's annotations and
  continues there, without shifting weight again.
- `ScaleDownOperator` waits the scale-down delay in the triggerer, then stops the loser.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.request
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseOperator
from airflow.triggers.base import BaseTrigger, TriggerEvent

log = logging.getLogger(__name__)


def _lists_model(url: str, served_name: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v1/models", timeout=5) as resp:  # noqa: S310 - our server
            return any(m.get("id") == served_name for m in json.loads(resp.read()).get("data", []))
    except (OSError, ValueError):
        return False


class ServerReadyTrigger(BaseTrigger):
    def __init__(self, url: str, served_name: str, deadline: float, poll_s: float = 2.0):
        super().__init__()
        self.url, self.served_name, self.deadline, self.poll_s = url, served_name, deadline, poll_s

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{__name__}.ServerReadyTrigger",
                {"url": self.url, "served_name": self.served_name, "deadline": self.deadline, "poll_s": self.poll_s})

    async def run(self):
        while True:
            if await asyncio.to_thread(_lists_model, self.url, self.served_name):
                yield TriggerEvent({"ready": True})
                return
            if time.time() > self.deadline:
                yield TriggerEvent({"ready": False})
                return
            await asyncio.sleep(self.poll_s)


class CanaryAnalysisTrigger(BaseTrigger):
    def __init__(self, plan: dict, policy: dict, index: int, run: dict, tables: list[str] | None = None):
        super().__init__()
        self.plan, self.policy, self.index, self.run_data = plan, policy, index, run
        self.tables = tables or []

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{__name__}.CanaryAnalysisTrigger",
                {"plan": self.plan, "policy": self.policy, "index": self.index, "run": self.run_data,
                 "tables": self.tables})

    async def run(self):
        from include.lifecycle import rollout
        from include.serving import analysis as an
        from include.serving import step_analysis

        run = an.AnalysisRun.from_dict(self.run_data)
        weight = self.plan["steps"][self.index]
        while not run.done:
            wake = run.wake_at()
            await asyncio.sleep(max(0.0, (wake or time.time()) - time.time()))
            for metric in run.due(time.time()):
                m = await asyncio.to_thread(step_analysis.measure, run, metric, self.plan, time.time())
                self.log.info("step %d (%d %%) %s = %s -> %s %s", self.index + 1, weight, m.metric, m.value,
                              m.phase, m.message)
        if run.phase in (an.FAILED, an.ERROR):
            bad = [m for m in run.measurements if m.phase == run.phase]
            reason = f"step {self.index + 1} ({weight} %): {bad[-1].metric if bad else '?'} {run.phase}"
            await asyncio.to_thread(rollout.abort, self.plan, reason)
        # The step travels in the event itself: the resumed method gets the event on every executor.
        yield TriggerEvent({"run": run.to_dict(), "index": self.index, "tables": self.tables})


class CanaryReadyOperator(BaseOperator):
    """Wait (deferred) until the canary server answers /v1/models with its served name."""

    def execute(self, context: Any) -> Any:
        from include.serving.servers import get_servers

        plan = context["ti"].xcom_pull(task_ids="resolve")
        req = context["ti"].xcom_pull(task_ids="validate_params")
        if plan["noop"]:
            return "noop"
        url = get_servers().url(plan["canary"]["service"])
        self.defer(trigger=ServerReadyTrigger(url, plan["canary"]["service"], time.time() + req["ready_timeout_s"]),
                   method_name="done", timeout=timedelta(seconds=req["ready_timeout_s"] + 60))

    def done(self, context: Any, event: dict[str, Any]) -> str:
        if not event.get("ready"):
            from airflow.exceptions import AirflowFailException

            raise AirflowFailException("the canary server did not become ready before its deadline")
        return "ready"


class CanaryStepsOperator(BaseOperator):
    """Each step: set the weight, analyse (deferred), close the step; returns the verdict."""

    def execute(self, context: Any) -> Any:
        from include.lifecycle import rollout

        plan = context["ti"].xcom_pull(task_ids="resolve")
        if plan["noop"]:
            return {"decision": "noop", "reason": "the version already serves 100 %"}
        if plan["direct"]:
            note = ("first rollout: no champion server, serving at 100 % once ready, without analysis"
                    if plan["action"] == "rollout" else "rollback: switching to the previous champion at once")
            self.log.warning(note)
            rollout.promote(plan, note=note)
            return {"decision": "promote", "reason": note}
        return self._start(context, plan, rollout.current_step(plan))

    def _start(self, context: Any, plan: dict, index: int, tables: list[str] | None = None) -> Any:
        from include.lifecycle import rollout
        from include.serving import step_analysis
        from include.serving.servers import get_servers

        req = context["ti"].xcom_pull(task_ids="validate_params")
        policy = rollout.analysis_policy(req)
        rollout.begin_step(plan, index)
        get_servers().start_traffic(rollout.traffic_prompts(plan), req["traffic_rate"])
        # The analysis clock starts once the new weight is live and traffic flows: the first
        # measurement's window then holds only this step's requests.
        run = step_analysis.start(plan, policy, plan["steps"][index], time.time())
        self.defer(trigger=CanaryAnalysisTrigger(plan, policy, index, run.to_dict(), tables),
                   method_name="step_done")

    def step_done(self, context: Any, event: dict[str, Any]) -> Any:
        from include.lifecycle import rollout
        from include.serving import step_analysis
        from include.serving.servers import get_servers

        plan = context["ti"].xcom_pull(task_ids="resolve")
        req = context["ti"].xcom_pull(task_ids="validate_params")
        index = event["index"]
        out = rollout.finish_step(plan, rollout.analysis_policy(req), index, event["run"])
        tables = [*event.get("tables", []), out["table"]]
        if out["decision"] == step_analysis.NEXT:
            return self._start(context, plan, index + 1, tables)
        if out["decision"] == step_analysis.ABORT:
            rollout.abort(plan, out["reason"])
        get_servers().stop_traffic()
        return {"decision": out["decision"], "reason": out["reason"], "step": index, "tables": tables}


class ScaleDownOperator(BaseOperator):
    """After the delay (deferred), stop the version that lost and drop its backendRef."""

    def execute(self, context: Any) -> Any:
        from airflow.providers.standard.triggers.temporal import TimeDeltaTrigger

        req = context["ti"].xcom_pull(task_ids="validate_params")
        plan = context["ti"].xcom_pull(task_ids="resolve")
        if plan["noop"]:
            return None
        if req["scale_down_delay_s"] <= 0:
            return self.done(context, None)
        self.defer(trigger=TimeDeltaTrigger(timedelta(seconds=req["scale_down_delay_s"])), method_name="done")

    def done(self, context: Any, event: Any = None) -> str | None:
        from include.lifecycle import rollout

        plan = context["ti"].xcom_pull(task_ids="resolve")
        loser = rollout.scale_down_loser(plan)
        self.log.info("scaled down %s", loser)
        return loser
