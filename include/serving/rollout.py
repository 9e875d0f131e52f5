"""The canary rollout's request and rules: the form's values checked, the analysis policy, who owns
the route. The state machine over the platform's router and servers is include/lifecycle/rollout.py.

The HTTPRoute holds the truth: its weights are the split, its annotations the rollout's
state (run, phase, versions, step, weight), so every function reads the route first and a retried
or restarted task continues where the route says, never repeating or skipping a weight.

One rollout per model name at a time: the route carries `in-progress` and the owning run; any
other run's write is refused (`RolloutBusy`). The DAG also has max_active_runs=1, so a second
trigger of the DAG itself waits in the queue and, when its turn comes, finds nothing left to do
if the version already serves.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from include.serving import route as rt
from include.validation import Rule

log = logging.getLogger(__name__)
ACTIONS = ("rollout", "rollback")
DEFAULT_STEPS = [10, 25, 50, 100]


class RolloutError(ValueError):
    """A rollout request or state that cannot go on; the message says why and what to do."""


class RolloutBusy(RolloutError):
    """Another run owns the model's route."""


def _rule(field: str, kind: str, low: float, high: float, **kw: Any) -> Rule:
    return Rule(field, kind, low, high, error=RolloutError, **kw)


# The trigger form's rules: dags/rollout_model.py builds its Params from them (`param_schema`), and
# `validate_params` checks with the same objects, so the form and the task cannot disagree.
RULES = {
    "interval_s": _rule("interval_s", "integer", 5, 3600),
    "count": _rule("count", "integer", 1, 100),
    "max_error_rate": _rule("max_error_rate", "number", 0, 1),
    "max_latency_ratio": _rule("max_latency_ratio", "number", 1, 100),
    "probe_size": _rule("probe_size", "integer", 0, 1000),
    "traffic_rate": _rule("traffic_rate", "number", 0, 500),
    "ready_timeout_s": _rule("ready_timeout_s", "integer", 10, 7200),
    "scale_down_delay_s": _rule("scale_down_delay_s", "integer", 0, 86400),
}
STEP = _rule("steps[]", "integer", 0, 100, open_low=True)
ACTION = Rule("action", "enum", choices=ACTIONS, error=RolloutError)
DEFAULTS = {"action": "rollout", "steps": DEFAULT_STEPS, "interval_s": 10, "count": 3, "max_error_rate": 0.05,
            "max_latency_ratio": 2.0, "probe_size": 16, "traffic_rate": 20.0, "ready_timeout_s": 900,
            "scale_down_delay_s": 60}


def validate_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The trigger form's values, checked with the rules the form's schema is built from."""
    steps = params.get("steps", DEFAULT_STEPS)
    if not isinstance(steps, list) or not steps:
        raise RolloutError(f"steps={steps!r}: expected a non-empty list of integer weights")
    for step in steps:
        STEP.check(step, f"steps={steps!r}: weight")
    if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
        raise RolloutError(f"steps={steps!r}: weights must strictly increase")
    if steps[-1] != 100:
        steps = [*steps, 100]  # the last step is full traffic: promotion
    version = str(params.get("model_version") or "").strip()
    if version and not version.isdigit():
        raise RolloutError(f"model_version={version!r}: expected a registered version number, or empty for "
                           "the challenger")
    policy = params.get("analysis_policy") or {}
    if not isinstance(policy, dict):
        raise RolloutError("analysis_policy: expected an object (deep-merged over include/serving/policy.yaml)")
    return {"action": ACTION.check(params.get("action", DEFAULTS["action"])), "model_version": version,
            "steps": steps, **{key: rule.check(params.get(key, DEFAULTS[key])) for key, rule in RULES.items()},
            "analysis_policy": policy}


def analysis_policy(req: Mapping[str, Any], profile: str) -> dict[str, Any]:
    """policy.yaml + platform `profile`'s section + the form's interval/count/thresholds + the run's own
    overrides."""
    from include.serving.analysis import load_policy
    from include.validation import deep_merge

    form = {"defaults": {"interval": req["interval_s"], "count": req["count"]},
            "thresholds": {"max_error_rate": req["max_error_rate"], "max_latency_ratio": req["max_latency_ratio"]},
            "quality_probe": {"sample_size": req["probe_size"]}}
    return load_policy(deep_merge(form, req.get("analysis_policy") or {}), profile=profile)


def service_version(service: str | None) -> str | None:
    return service.rsplit("-v", 1)[1] if service else None


def check_owner(route: Mapping[str, Any] | None, run_id: str) -> None:
    if route is not None and rt.in_progress(route) and rt.state(route).get("run") != run_id:
        st = rt.state(route)
        raise RolloutBusy(f"HTTPRoute {route['metadata']['name']} is in a rollout by run {st.get('run')!r} "
                          f"(canary v{st.get('canary')}, phase {st.get('phase')}): refused; wait for it to end")


def new_state(plan: Mapping[str, Any], **kw: Any) -> dict[str, Any]:
    return {"run": plan["run_id"], "canary": plan["canary"]["version"],
            "stable": (plan["stable"] or {}).get("version"), "steps": plan["steps"], **kw}
