"""The canary's waits, deferred: readiness polling and step analysis run in the triggerer.

No worker slot is held while a model loads or while an analysis interval passes:
- `ServerReadyTrigger` polls the canary's `/v1/models` until it lists the served name (deadline);
- `CanaryAnalysisTrigger` sleeps until each measurement is due, queries Prometheus through the
  metrics seam, and ends with the step's AnalysisRun. A Failed or Error run sets the canary's
  weight to 0 right there (the abort's first and only urgent act), before the worker resumes.
- `CanaryStepsOperator` executes, defers and resumes the loop in `include/lifecycle/canary.py`
  (set the weight, analyse, close the step: quality probe, table to the task log and MLflow; next
  step or verdict). A retried task reads its step from the route's annotations and continues
  there, without shifting weight again.

The operators get the rollout's request and plan as arguments (XComArgs of the tasks that made
them), never by task ids of their own.
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
        from include.platforms import get_platform
        from include.serving import analysis as an
        from include.serving import step_analysis

        metrics = await asyncio.to_thread(get_platform().metrics)  # eks reads a connection: not on the loop
        run = an.AnalysisRun.from_dict(self.run_data)
        weight = self.plan["steps"][self.index]
        while not run.done:
            wake = run.wake_at()
            await asyncio.sleep(max(0.0, (wake or time.time()) - time.time()))
            for metric in run.due(time.time()):
                m = await asyncio.to_thread(step_analysis.measure, run, metric, self.plan, time.time(),
                                            metrics)
                self.log.info("step %d (%d %%) %s = %s -> %s %s", self.index + 1, weight, m.metric, m.value,
                              m.phase, m.message)
        if run.phase in (an.FAILED, an.ERROR):
            bad = [m for m in run.measurements if m.phase == run.phase]
            reason = f"step {self.index + 1} ({weight} %): {bad[-1].metric if bad else '?'} {run.phase}"
            await asyncio.to_thread(rollout.abort, self.plan, reason)
        # The step travels in the event itself: the resumed method gets the event on every executor.
        yield TriggerEvent({"run": run.to_dict(), "index": self.index, "tables": self.tables, "policy": self.policy,
                            "aborted": run.phase in (an.FAILED, an.ERROR)})


class CanaryReadyOperator(BaseOperator):
    """Wait (deferred) until the canary server answers /v1/models with its served name."""

    template_fields = ("plan", "request")

    def __init__(self, *, plan: Any, request: Any, **kwargs: Any):
        super().__init__(**kwargs)
        self.plan, self.request = plan, request

    def execute(self, context: Any) -> Any:
        from include.platforms import get_platform

        if self.plan["noop"]:
            return "noop"
        url = get_platform().servers().url(self.plan["canary"]["service"])
        timeout = self.request["ready_timeout_s"]
        self.defer(trigger=ServerReadyTrigger(url, self.plan["canary"]["service"], time.time() + timeout),
                   method_name="done", timeout=timedelta(seconds=timeout + 60))

    def done(self, context: Any, event: dict[str, Any]) -> str:
        if not event.get("ready"):
            from airflow.exceptions import AirflowFailException

            raise AirflowFailException("the canary server did not become ready before its deadline")
        return "ready"


class CanaryStepsOperator(BaseOperator):
    """Each step: set the weight, analyse (deferred), close the step; returns the verdict."""

    template_fields = ("plan", "request")

    def __init__(self, *, plan: Any, request: Any, **kwargs: Any):
        super().__init__(**kwargs)
        self.plan, self.request = plan, request

    def execute(self, context: Any) -> Any:
        from include.lifecycle import canary

        return self._follow(canary.first_move(self.plan, self.request))

    def step_done(self, context: Any, event: dict[str, Any]) -> Any:
        from include.lifecycle import canary

        return self._follow(canary.after_analysis(self.plan, self.request, event))

    def _follow(self, move: dict[str, Any]) -> Any:
        if "verdict" in move:
            return move["verdict"]
        self.defer(trigger=CanaryAnalysisTrigger(**move["analyse"]), method_name="step_done")


class ScaleDownOperator(BaseOperator):
    """After the delay (deferred), stop the version that lost and drop its backendRef."""

    template_fields = ("plan", "request")

    def __init__(self, *, plan: Any, request: Any, **kwargs: Any):
        super().__init__(**kwargs)
        self.plan, self.request = plan, request

    def execute(self, context: Any) -> Any:
        from airflow.providers.standard.triggers.temporal import TimeDeltaTrigger

        if self.plan["noop"]:
            return None
        if self.request["scale_down_delay_s"] <= 0:
            return self.done(context, None)
        self.defer(trigger=TimeDeltaTrigger(timedelta(seconds=self.request["scale_down_delay_s"])),
                   method_name="done")

    def done(self, context: Any, event: Any = None) -> str | None:
        from include.lifecycle import rollout

        loser = rollout.scale_down_loser(self.plan)
        self.log.info("scaled down %s", loser)
        return loser
