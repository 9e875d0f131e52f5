"""The canary rollout's state machine: deploy, step (weight + analysis), promote or abort.

Plain functions over the two seams (router, servers), called through include/lifecycle/rollout.py
(which also resolves the versions and syncs the aliases in the registry) and by the canary
triggers. The HTTPRoute holds the truth: its weights are the split, its annotations the rollout's
state (run, phase, versions, step, weight), so every function reads the route first and a retried
or restarted task continues where the route says, never repeating or skipping a weight.

One rollout per model name at a time: the route carries `in-progress` and the owning run; any
other run's write is refused (`RolloutBusy`). The DAG also has max_active_runs=1, so a second
trigger of the DAG itself waits in the queue and, when its turn comes, finds nothing left to do
if the version already serves.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from functools import partial
from typing import Any

from include.serving import route as rt
from include.serving.router import get_router
from include.serving.servers import get_servers
from include.settings import Settings, get_settings
from include.validation import check_int, check_num

log = logging.getLogger(__name__)
ACTIONS = ("rollout", "rollback")
DEFAULT_STEPS = [10, 25, 50, 100]


class RolloutError(ValueError):
    """A rollout request or state that cannot go on; the message says why and what to do."""


class RolloutBusy(RolloutError):
    """Another run owns the model's route."""


_int = partial(check_int, error=RolloutError)
_num = partial(check_num, error=RolloutError)


def validate_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The trigger form's values, checked (the Param schema says the same; a test reads both)."""
    steps = params.get("steps", DEFAULT_STEPS)
    if not isinstance(steps, list) or not steps or not all(isinstance(s, int) and not isinstance(s, bool)
                                                         for s in steps):
        raise RolloutError(f"steps={steps!r}: expected a non-empty list of integer weights")
    if any(not 0 < s <= 100 for s in steps):
        raise RolloutError(f"steps={steps!r}: every weight must be in (0, 100]")
    if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
        raise RolloutError(f"steps={steps!r}: weights must strictly increase")
    if steps[-1] != 100:
        steps = [*steps, 100]  # the last step is full traffic: promotion
    action = params.get("action", "rollout")
    if action not in ACTIONS:
        raise RolloutError(f"action={action!r}: expected one of {', '.join(ACTIONS)}")
    version = str(params.get("model_version") or "").strip()
    if version and not version.isdigit():
        raise RolloutError(f"model_version={version!r}: expected a registered version number, or empty for "
                           "the challenger")
    policy = params.get("analysis_policy") or {}
    if not isinstance(policy, dict):
        raise RolloutError("analysis_policy: expected an object (deep-merged over include/serving/policy.yaml)")
    return {
        "action": action, "model_version": version, "steps": steps,
        "interval_s": _int("interval_s", params.get("interval_s", 10), 5, 3600),
        "count": _int("count", params.get("count", 3), 1, 100),
        "max_error_rate": _num("max_error_rate", params.get("max_error_rate", 0.05), 0.0, 1.0),
        "max_latency_ratio": _num("max_latency_ratio", params.get("max_latency_ratio", 2.0), 1.0, 100.0),
        "probe_size": _int("probe_size", params.get("probe_size", 16), 0, 1000),
        "traffic_rate": _num("traffic_rate", params.get("traffic_rate", 20), 0.0, 500.0),
        "ready_timeout_s": _int("ready_timeout_s", params.get("ready_timeout_s", 900), 10, 7200),
        "scale_down_delay_s": _int("scale_down_delay_s", params.get("scale_down_delay_s", 60), 0, 86400),
        "analysis_policy": policy,
    }


def analysis_policy(req: Mapping[str, Any], settings: Settings | None = None) -> dict[str, Any]:
    """policy.yaml + the form's interval/count/thresholds + the run's own overrides."""
    from include.serving.analysis import load_policy
    from include.validation import deep_merge

    form = {"defaults": {"interval": req["interval_s"], "count": req["count"]},
            "thresholds": {"max_error_rate": req["max_error_rate"], "max_latency_ratio": req["max_latency_ratio"]},
            "quality_probe": {"sample_size": req["probe_size"]}}
    return load_policy(deep_merge(form, req.get("analysis_policy") or {}),
                       profile=(settings or get_settings()).profile)


def service_version(service: str | None) -> str | None:
    return service.rsplit("-v", 1)[1] if service else None


def check_owner(route: Mapping[str, Any] | None, run_id: str) -> None:
    if route is not None and rt.in_progress(route) and rt.state(route).get("run") != run_id:
        st = rt.state(route)
        raise RolloutBusy(f"HTTPRoute {route['metadata']['name']} is in a rollout by run {st.get('run')!r} "
                          f"(canary v{st.get('canary')}, phase {st.get('phase')}): refused; wait for it to end")


def _new_state(plan: Mapping[str, Any], **kw: Any) -> dict[str, Any]:
    return {"run": plan["run_id"], "canary": plan["canary"]["version"],
            "stable": (plan["stable"] or {}).get("version"), "steps": plan["steps"], **kw}


def deploy(plan: Mapping[str, Any], settings: Settings | None = None, *, wait_ready: bool = True) -> str:
    """Start (or find) the canary's server and attach it to the route at weight 0; claim the route.

    `wait_ready=False` returns once the server is started, without holding the caller while the
    model loads: the DAG's `wait_ready` task waits for it deferred, in the triggerer.
    """
    settings = settings or get_settings()
    servers = get_servers(settings)
    if plan["stable"]:
        # As a Deployment's controller would: a stable server that is gone (a local `stop-all`, a
        # reboot) serves again before the route moves. A no-op where it runs.
        servers.deploy(plan["stable"]["service"], plan["stable"]["source"])
    url = servers.deploy(plan["canary"]["service"], plan["canary"]["source"], wait=wait_ready)
    servers.ensure_observability()
    router = get_router(settings)
    name = rt.route_name(plan["model"])
    canary, stable = plan["canary"]["service"], (plan["stable"] or {}).get("service")

    def edit(route: dict) -> dict:
        check_owner(route, plan["run_id"])
        if rt.state(route).get("run") == plan["run_id"]:
            return route  # already claimed by this run (a retry)
        if stable:
            route = rt.attach(route, stable, canary)
        elif canary not in rt.weights(route):
            for rule in route["spec"]["rules"]:
                rule.setdefault("backendRefs", []).append({"name": canary, "port": rt.SERVICE_PORT, "weight": 0})
        return rt.with_state(route, _new_state(plan, phase="Deploying", step=-1, weight=0))

    if router.get(name) is None:
        try:
            router.create(rt.new_route(plan["model"], settings.serving_namespace,
                                       backends={stable: 100} if stable else {canary: 0}))
        except Exception as exc:  # created meanwhile by a concurrent attempt: edit it below
            log.info("route create: %s", exc)
    router.update(name, edit)
    return url


def route_state(plan: Mapping[str, Any], settings: Settings | None = None) -> tuple[dict, dict]:
    route = get_router(settings).get(rt.route_name(plan["model"]))
    if route is None:
        raise RolloutError(f"HTTPRoute for {plan['model']} does not exist: run deploy first")
    return route, rt.state(route)


def begin_step(plan: Mapping[str, Any], index: int, settings: Settings | None = None) -> dict:
    """Set step `index`'s weight (once) and mark a fresh analysis start; returns the route state.

    A retry of the same step finds the weight already set: it changes annotations only.
    """
    weight = plan["steps"][index]
    canary, stable = plan["canary"]["service"], plan["stable"]["service"]

    def edit(route: dict) -> dict:
        check_owner(route, plan["run_id"])
        st = rt.state(route)
        if st.get("phase") in ("Aborted", "Promoted"):
            raise RolloutError(f"rollout already {st['phase']}: no further step")
        attempts = st.get("attempts", 0) + 1 if st.get("step") == index else 1
        if rt.weights(route).get(canary) != weight:
            route = rt.set_weights(route, stable, canary, weight)
        return rt.with_state(route, {**st, "phase": "Progressing", "step": index, "weight": weight,
                                     "attempts": attempts, "analysis_started_at": time.time()})

    updated = get_router(settings).update(rt.route_name(plan["model"]), edit)
    st = rt.state(updated)
    log.info("step %d/%d: canary %s at %d %% (attempt %d)", index + 1, len(plan["steps"]), canary, weight,
             st["attempts"])
    return st


def current_step(plan: Mapping[str, Any], settings: Settings | None = None) -> int:
    """The step the route says this run is at (0 when it has not started one)."""
    _, st = route_state(plan, settings)
    return max(int(st.get("step", -1)), 0) if st.get("run") == plan["run_id"] else 0


def abort(plan: Mapping[str, Any], reason: str, settings: Settings | None = None) -> dict:
    """Canary weight 0 in ONE update (with the Aborted state), before anything else; idempotent."""
    canary = plan["canary"]["service"]
    stable = (plan["stable"] or {}).get("service")

    def edit(route: dict) -> dict:
        st = rt.state(route)
        if st.get("run") not in (None, plan["run_id"]) and rt.in_progress(route):
            raise RolloutBusy(f"route owned by run {st.get('run')!r}")
        if st.get("run") == plan["run_id"] and st.get("phase") == "Aborted":
            return route
        if stable and canary in rt.weights(route):
            route = rt.set_weights(route, stable, canary, 0)
        return rt.with_state(route, {**_new_state(plan), **{k: v for k, v in st.items() if k == "step"},
                                     "phase": "Aborted", "weight": 0, "reason": reason[:500]})

    updated = get_router(settings).update(rt.route_name(plan["model"]), edit)
    log.warning("rollout aborted: canary %s at weight 0 (%s)", canary, reason)
    return rt.state(updated)


def promote(plan: Mapping[str, Any], note: str = "", settings: Settings | None = None) -> dict:
    """Canary at 100 % (stable 0) with the Promoted state; idempotent."""
    canary = plan["canary"]["service"]
    stable = (plan["stable"] or {}).get("service")

    def edit(route: dict) -> dict:
        check_owner(route, plan["run_id"])
        st = rt.state(route)
        if st.get("phase") == "Aborted" and st.get("run") == plan["run_id"]:
            raise RolloutError("this rollout was aborted; it cannot be promoted")
        if stable and stable in rt.weights(route):
            route = rt.set_weights(route, stable, canary, 100)
        else:
            for rule in route["spec"]["rules"]:
                for ref in rule.get("backendRefs") or []:
                    ref["weight"] = 100 if ref["name"] == canary else 0
        return rt.with_state(route, {**_new_state(plan), **st, "phase": "Promoted", "weight": 100,
                                     "step": len(plan["steps"]) - 1, "note": note})

    updated = get_router(settings).update(rt.route_name(plan["model"]), edit)
    log.info("promoted %s to 100 %%%s", canary, f" ({note})" if note else "")
    return rt.state(updated)


def scale_down_loser(plan: Mapping[str, Any], settings: Settings | None = None) -> str | None:
    """Stop the version that no longer takes traffic and drop its weight-0 backendRef."""
    route, st = route_state(plan, settings)
    loser = plan["canary"]["service"] if st.get("phase") == "Aborted" else (plan["stable"] or {}).get("service")
    if loser is None:
        return None
    if rt.weights(route).get(loser, 0) != 0:
        raise RolloutError(f"{loser} still takes traffic: not scaling it down")
    servers = get_servers(settings)
    servers.scale_down(loser)
    get_router(settings).update(rt.route_name(plan["model"]),
                                lambda r: rt.detach(r, loser) if loser in rt.weights(r) else r)
    return loser
