"""The canary's loop over a rollout's steps: open a step, close it on its analysis, decide.

plugins/llmops_operators/canary.py only executes, defers and resumes: each function here returns
either `{"verdict": ...}` (the steps task's result) or `{"analyse": ...}` (the arguments of the
analysis trigger to defer to). The analysis policy is resolved once, when the steps start, and
travels with the trigger, so a step never reads a different policy than the one before it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from include.lifecycle import rollout
from include.platforms import get_platform
from include.serving import step_analysis

log = logging.getLogger(__name__)


def first_move(plan: Mapping[str, Any], req: Mapping[str, Any]) -> dict[str, Any]:
    """Nothing to analyse (the version already serves; a first rollout or a rollback switches at
    once), or the first step to analyse: the one the route says this run is at (a retried task)."""
    if plan["noop"]:
        return {"verdict": {"decision": "noop", "reason": "the version already serves 100 %"}}
    if plan["direct"]:
        note = ("first rollout: no champion server, serving at 100 % once ready, without analysis"
                if plan["action"] == "rollout" else "rollback: switching to the previous champion at once")
        log.warning(note)
        rollout.promote(plan, note=note)
        return {"verdict": {"decision": "promote", "reason": note}}
    return open_step(plan, req, rollout.analysis_policy(req), rollout.current_step(plan), [])


def open_step(plan: Mapping[str, Any], req: Mapping[str, Any], policy: Mapping[str, Any], index: int,
              tables: list[str]) -> dict[str, Any]:
    """Set step `index`'s weight, start traffic, start its analysis clock once the weight is live:
    the first measurement's window then holds only this step's requests."""
    rollout.begin_step(plan, index)
    get_platform().servers().start_traffic(rollout.traffic_prompts(plan), req["traffic_rate"])
    run = step_analysis.start(plan, policy, plan["steps"][index], time.time())
    return {"analyse": {"plan": dict(plan), "policy": dict(policy), "index": index, "run": run.to_dict(),
                        "tables": tables}}


def after_analysis(plan: Mapping[str, Any], req: Mapping[str, Any], event: Mapping[str, Any]) -> dict[str, Any]:
    """Close the step the trigger analysed (probe, table, verdict): the next step, or the verdict. A
    canary the trigger already set to weight 0 (`event["aborted"]`) is not aborted a second time."""
    index = event["index"]
    policy = event.get("policy") or rollout.analysis_policy(req)  # a trigger deferred by an older release
    out = rollout.finish_step(plan, policy, index, event["run"])
    tables = [*event.get("tables", []), out["table"]]
    if out["decision"] == step_analysis.NEXT:
        return open_step(plan, req, policy, index + 1, tables)
    if out["decision"] == step_analysis.ABORT and not event.get("aborted"):
        rollout.abort(plan, out["reason"])
    get_platform().servers().stop_traffic()
    return {"verdict": {"decision": out["decision"], "reason": out["reason"], "step": index, "tables": tables}}
