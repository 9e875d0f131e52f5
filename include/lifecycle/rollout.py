"""The rollout DAG's tasks: the canary's state machine over the platform's router and servers,
joined with the registry and the evaluation stage.

The state machine (deploy, set a step's weight, abort, promote, scale down) reads the route first
and edits it with the serving stage's rules (`serving.rollout`: who owns the route, the state it
carries). What joins stages lives here too: resolving which versions are stable and canary (the
registry's aliases against what the route serves), closing a step (the quality probe scores
answers with the evaluation stage's metrics; the step table goes to the canary's MLflow run), the
load generator's prompts (the curated eval set) and syncing `champion` with what serves. The loop
over the steps is `lifecycle/canary.py`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

from include.platforms import get_platform
from include.serving import analysis as an
from include.serving import rollout as rules
from include.serving import route as rt
from include.serving import step_analysis
from include.serving.rollout import RolloutBusy, RolloutError, check_owner, new_state, service_version
from include.serving.rollout import validate_params as validate_params  # the DAG's first task
from include.settings import Settings, get_settings

log = logging.getLogger(__name__)
ROLLOUT_TAG, ROLLOUT_REASON_TAG = "llmops.rollout", "llmops.rollout_reason"


def resolve(req: Mapping[str, Any], run_id: str, settings: Settings | None = None, client: Any = None) -> dict:
    """Which version is stable (the one taking the model's traffic) and which is the canary.

    Refuses a busy route, and one the rollout cannot edit (`route.read`: the reasons are in the error)
    before anything is deployed. The plan carries the policy's `route.match`, filled for the model.
    """
    from include.registry import mlflow_registry as reg

    settings = settings or get_settings()
    client = client or reg.get_client()
    model = settings.registered_model_name
    platform = get_platform(settings)
    router = platform.router()
    current = router.get(rt.route_name(model))
    check_owner(current, run_id)
    mine = rt.state(current) if current is not None and rt.state(current).get("run") == run_id else {}
    try:
        match = rt.selector((rules.analysis_policy(req, platform.name).get("route") or {}).get("match"), model)
    except rt.RouteError as exc:
        raise RolloutError(f"analysis_policy: {exc}") from exc
    canary_now = rt.served_name(model, mine["canary"]) if mine else None
    stable_service = read_route(router, current, model, match, canary=canary_now)["stable"] if current else None
    if mine:  # a retry of this run: the route already says who is who
        canary_version, stable_version = mine["canary"], mine.get("stable")
    elif req["action"] == "rollback":
        champ = reg.champion(model, client=client)
        previous = champ.tags.get(reg.PREVIOUS_CHAMPION_TAG) if champ is not None else None
        if previous is None:
            raise RolloutError(f"{model}: no previous champion recorded to roll back to")
        canary_version, stable_version = str(previous), service_version(stable_service)
    else:
        version = req["model_version"]
        if not version:
            chal = reg.challenger(model, client=client)
            if chal is None:
                raise RolloutError(f"{model}: no version given and no 'challenger' alias to roll out")
            version = str(chal.version)
        canary_version, stable_version = version, service_version(stable_service)
    try:
        mv = client.get_model_version(model, canary_version)
    except Exception as exc:
        raise RolloutError(f"model_version={canary_version}: not a registered version of {model}") from exc
    canary_service = rt.served_name(model, canary_version)
    noop = not mine and stable_service == canary_service
    stable = None
    if stable_version not in (None, canary_version):
        stable = {"version": stable_version, "service": rt.served_name(model, stable_version),
                  "source": client.get_model_version(model, stable_version).source}
    plan = {
        "model": model, "run_id": run_id, "action": req["action"], "noop": noop,
        "canary": {"version": canary_version, "service": canary_service, "source": mv.source,
                   "mlflow_run_id": mv.run_id, "dataset_version": (mv.tags or {}).get(reg.DATASET_TAG)},
        "stable": stable,
        "steps": list(req["steps"]),
        "route_match": match,
    }
    plan["direct"] = plan["stable"] is None or req["action"] == "rollback"
    if noop:
        log.info("%s v%s already serves 100 %%: nothing to do", model, canary_version)
    return plan


def read_route(router: Any, route: Mapping[str, Any], model: str, match: Mapping[str, Any] | None,
               canary: str | None = None) -> dict[str, Any]:
    """The model's rules and stable on `route` (`route.read`), with the ReferenceGrants of the namespaces
    its rules refer to read through the router; a route the rollout cannot edit is a RolloutError."""
    try:
        grants = [g for ns in rt.foreign_namespaces(route, model, match) for g in router.reference_grants(ns)]
        return rt.read(route, model, match=match, canary=canary, grants=grants)
    except rt.RouteError as exc:
        raise RolloutError(f"HTTPRoute {router.namespace}/{route['metadata']['name']}: {exc}") from exc


def analysis_policy(req: Mapping[str, Any], settings: Settings | None = None) -> dict[str, Any]:
    return rules.analysis_policy(req, get_platform(settings).name)


def deploy(plan: Mapping[str, Any], settings: Settings | None = None, *, wait_ready: bool = True) -> str:
    """Check the route, start (or find) the canary's server, attach it to the route at weight 0 and
    claim the route.

    The route is checked before any server starts: one the rollout cannot edit, or whose stable is
    no longer the plan's, stops it here with nothing deployed. `wait_ready=False` returns once the
    server is started, without holding the caller while the model loads: the DAG's `wait_ready` task
    waits for it deferred, in the triggerer.
    """
    settings = settings or get_settings()
    platform = get_platform(settings)
    router, servers = platform.router(), platform.servers()
    name = rt.route_name(plan["model"])
    canary, stable = plan["canary"]["service"], (plan["stable"] or {}).get("service")
    match = plan.get("route_match")

    def check(route: dict) -> dict:
        """The route with the canary attached, or RolloutError: the same check before and at the write."""
        found = read_route(router, route, plan["model"], match)["stable"]
        if found != stable:
            raise RolloutError(f"HTTPRoute {router.namespace}/{name}: its stable is now {found}, the plan's "
                               f"{stable}: the route changed since resolve; run again")
        try:
            return rt.attach(route, stable, canary, match=match)
        except rt.RouteError as exc:
            raise RolloutError(f"HTTPRoute {router.namespace}/{name}: {exc}") from exc

    current = router.get(name)
    if current is not None:
        check_owner(current, plan["run_id"])
        mine = rt.state(current) if rt.state(current).get("run") == plan["run_id"] else {}
        if mine.get("phase") in ("Promoted", "Aborted"):  # a finished run cleared or re-run: nothing to start
            log.info("rollout %s already %s: not deploying", plan["run_id"], mine["phase"])
            return servers.url(canary)
        if not mine:
            check(current)
    if plan["stable"]:
        # As a Deployment's controller would: a stable server that is gone (a local `stop-all`, a
        # reboot, scaled to 0) serves again before the route moves; one that runs keeps its spec.
        servers.deploy(plan["stable"]["service"], plan["stable"]["source"], update=False)
    url = servers.deploy(plan["canary"]["service"], plan["canary"]["source"], wait=wait_ready)
    servers.ensure_observability()

    def edit(route: dict) -> dict:
        check_owner(route, plan["run_id"])
        if rt.state(route).get("run") == plan["run_id"]:
            return route  # already claimed by this run (a retry)
        route = check(route)
        return rt.with_state(route, new_state(plan, phase="Deploying", step=-1, weight=0,
                                              base=rt.base_weights(route, canary, match=match)))

    if current is None:
        try:
            router.create(rt.new_route(plan["model"], settings.serving_namespace,
                                       backends={stable: 100} if stable else {canary: 0}))
        except Exception as exc:  # created meanwhile by a concurrent attempt: edit it below
            log.info("route create: %s", exc)
    router.update(name, edit)
    return url


def route_state(plan: Mapping[str, Any], settings: Settings | None = None) -> tuple[dict, dict]:
    route = get_platform(settings).router().get(rt.route_name(plan["model"]))
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
        route = rt.set_weights(route, stable, canary, weight, match=plan.get("route_match"))  # same weights on a retry
        return rt.with_state(route, {**st, "phase": "Progressing", "step": index, "weight": weight,
                                     "attempts": attempts, "analysis_started_at": time.time()})

    updated = get_platform(settings).router().update(rt.route_name(plan["model"]), edit)
    st = rt.state(updated)
    log.info("step %d/%d: canary %s at %d %% (attempt %d)", index + 1, len(plan["steps"]), canary, weight,
             st["attempts"])
    return st


def current_step(plan: Mapping[str, Any], settings: Settings | None = None) -> int:
    """The step the route says this run is at (0 when it has not started one)."""
    _, st = route_state(plan, settings)
    return max(int(st.get("step", -1)), 0) if st.get("run") == plan["run_id"] else 0


def abort(plan: Mapping[str, Any], reason: str, settings: Settings | None = None) -> dict:
    """Canary weight 0 in ONE update (with the Aborted state), before anything else; idempotent.

    The other backends of the model's rules get back the weights they had when the run claimed the route.
    """
    canary = plan["canary"]["service"]
    stable = (plan["stable"] or {}).get("service")

    def edit(route: dict) -> dict:
        st = rt.state(route)
        if st.get("run") not in (None, plan["run_id"]) and rt.in_progress(route):
            raise RolloutBusy(f"route owned by run {st.get('run')!r}")
        if st.get("run") == plan["run_id"] and st.get("phase") == "Aborted":
            return route
        if canary in rt.weights(route):
            route = rt.set_weights(route, stable, canary, 0, match=plan.get("route_match"))
        return rt.with_state(route, {**new_state(plan), **{k: v for k, v in st.items() if k == "step"},
                                     "phase": "Aborted", "weight": 0, "reason": reason[:500]})

    updated = get_platform(settings).router().update(rt.route_name(plan["model"]), edit)
    log.warning("rollout aborted: canary %s at weight 0 (%s)", canary, reason)
    return rt.state(updated)


def promote(plan: Mapping[str, Any], note: str = "", settings: Settings | None = None) -> dict:
    """Canary at 100 % of the model's rules (every other backend of them at 0) with the Promoted state;
    idempotent. Other rules are not touched."""
    canary = plan["canary"]["service"]
    stable = (plan["stable"] or {}).get("service")

    def edit(route: dict) -> dict:
        check_owner(route, plan["run_id"])
        st = rt.state(route)
        if st.get("phase") == "Aborted" and st.get("run") == plan["run_id"]:
            raise RolloutError("this rollout was aborted; it cannot be promoted")
        route = rt.set_weights(route, stable, canary, 100, match=plan.get("route_match"))
        return rt.with_state(route, {**new_state(plan), **st, "phase": "Promoted", "weight": 100,
                                     "step": len(plan["steps"]) - 1, "note": note})

    updated = get_platform(settings).router().update(rt.route_name(plan["model"]), edit)
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
    servers = get_platform(settings).servers()
    servers.scale_down(loser)
    get_platform(settings).router().update(rt.route_name(plan["model"]),
                                lambda r: rt.detach(r, loser) if loser in rt.weights(r) else r)
    return loser


def eval_uri(plan: Mapping[str, Any], settings: Settings | None = None) -> str | None:
    """The curated eval set the canary was gated on (its dataset version)."""
    version = plan["canary"].get("dataset_version")
    if not version:
        return None
    return f"{(settings or get_settings()).data_root}/curated/{version}/eval.jsonl"


def traffic_prompts(plan: Mapping[str, Any], limit: int = 200) -> list[str]:
    """Eval questions for the load generator, in the evaluator's prompt layout ([] falls back to built-ins)."""
    from include.evaluation.evalset import load_eval_set
    from include.evaluation.generate import build_prompt

    uri = eval_uri(plan)
    if uri is None:
        return []
    try:
        return [build_prompt(s.user_input, s.reference_contexts) for s in load_eval_set(uri, limit=limit)]
    except Exception:  # noqa: BLE001 - traffic falls back to built-in questions
        return []


def run_probe(plan: Mapping[str, Any], policy: Mapping[str, Any], settings: Settings | None = None) -> dict:
    """The quality probe of this step: canary against stable, straight to their servers."""
    from include.lifecycle import probe

    cfg = policy.get("quality_probe") or {}
    uri = eval_uri(plan, settings)
    if not plan.get("stable") or not cfg.get("sample_size") or uri is None:
        return {"phase": an.SUCCESSFUL, "metrics": {}, "skipped": "no stable, sample size 0 or no eval set"}
    servers = get_platform(settings).servers()
    canary = (servers.url(plan["canary"]["service"]), plan["canary"]["service"])
    stable = (servers.url(plan["stable"]["service"]), plan["stable"]["service"])
    try:
        return probe.run(cfg, uri, canary, stable)
    except (RuntimeError, OSError) as exc:
        return {"phase": an.ERROR, "metrics": {}, "skipped": f"probe could not run: {exc}"}


def finish_step(plan: Mapping[str, Any], policy: Mapping[str, Any], index: int, run_data: Mapping[str, Any],
                settings: Settings | None = None, *, with_probe: bool = True) -> dict[str, Any]:
    """Close a step: the quality probe (when the analysis passed), the verdict, the step table to the
    task log and the canary's MLflow run. {"decision", "reason", "table", "rows", "phase"}."""
    phase = an.AnalysisRun.from_dict(run_data).phase
    result = run_probe(plan, policy, settings) if with_probe and phase == an.SUCCESSFUL else None
    out = step_analysis.verdict(plan, index, run_data, result)
    log.info("step %d/%d at %d %%: analysis %s -> %s\n%s", index + 1, len(plan["steps"]), plan["steps"][index],
             out["phase"], out["decision"], out["table"])
    _log_to_mlflow(plan, index, out["table"], out["rows"])
    return out


def _log_to_mlflow(plan: Mapping[str, Any], index: int, table: str, rows: list[dict]) -> None:
    """The step table as an artifact of the canary version's MLflow run (best effort: never fails a step)."""
    run_id = plan["canary"].get("mlflow_run_id")
    if not run_id:
        return
    try:
        from include.registry import mlflow_registry as reg

        safe_run = "".join(c if c.isalnum() or c in "-_." else "_" for c in plan["run_id"])
        reg.log_artifacts(run_id, {f"step-{index + 1}.txt": table, f"step-{index + 1}.json": json.dumps(rows)},
                          artifact_path=f"rollout/{safe_run}")
    except Exception as exc:  # noqa: BLE001 - the record must not decide the rollout
        log.warning("could not log step %d to MLflow run %s: %s", index + 1, run_id, exc)


def sync_aliases(plan: Mapping[str, Any], settings: Settings | None = None, client: Any = None) -> dict:
    """`champion` follows what serves: moved on promotion, untouched on abort (the version is tagged)."""
    from include.registry import mlflow_registry as reg

    _, st = route_state(plan, settings)
    version = plan["canary"]["version"]
    c = client or reg.get_client()
    if st.get("phase") == "Promoted":
        reg.promote(plan["model"], version, client=c)
        c.set_model_version_tag(plan["model"], version, ROLLOUT_TAG, "promoted")
    elif st.get("phase") == "Aborted":
        c.set_model_version_tag(plan["model"], version, ROLLOUT_TAG, "aborted")
        c.set_model_version_tag(plan["model"], version, ROLLOUT_REASON_TAG, st.get("reason", "")[:5000])
    champ = reg.champion(plan["model"], client=c)
    chal = reg.challenger(plan["model"], client=c)
    out = {"phase": st.get("phase"), "champion": str(champ.version) if champ else None,
           "challenger": str(chal.version) if chal else None, "reason": st.get("reason")}
    log.info("%s", summary(plan, out))
    return out


def summary(plan: Mapping[str, Any], out: Mapping[str, Any]) -> str:
    """The rollout's last line: 'rollout of <model> v<N>: Promoted; champion N, challenger None'."""
    return (f"rollout of {plan['model']} v{plan['canary']['version']}: {out['phase']}; "
            f"champion {out['champion']}, challenger {out['challenger']}"
            + (f"; reason: {out['reason']}" if out.get("reason") else ""))
