"""The rollout DAG's tasks: the canary state machine (include/serving) joined with the registry and
the evaluation stage.

What joins stages lives here: resolving which versions are stable and canary (the registry's
aliases against what the route serves), closing a step (the quality probe scores answers with
the evaluation stage's metrics; the step table goes to the canary's MLflow run), the load
generator's prompts (the curated eval set) and syncing `champion` with what serves. The serving
stage's own state machine (deploy, set a step's weight, abort, promote, scale down) is re-exported
so the DAG and the canary operators import one module.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from include.serving import analysis as an
from include.serving import route as rt
from include.serving import step_analysis
from include.serving.rollout import (
    RolloutBusy,
    RolloutError,
    abort,
    analysis_policy,
    begin_step,
    check_owner,
    current_step,
    deploy,
    promote,
    route_state,
    scale_down_loser,
    service_version,
    validate_params,
)
from include.serving.router import get_router
from include.serving.servers import get_servers
from include.settings import Settings, get_settings

__all__ = ["RolloutBusy", "RolloutError", "abort", "analysis_policy", "begin_step", "current_step", "deploy",
           "eval_uri", "finish_step", "promote", "resolve", "run_probe", "scale_down_loser", "sync_aliases",
           "traffic_prompts", "validate_params"]

log = logging.getLogger(__name__)
ROLLOUT_TAG, ROLLOUT_REASON_TAG = "llmops.rollout", "llmops.rollout_reason"


def resolve(req: Mapping[str, Any], run_id: str, settings: Settings | None = None, client: Any = None) -> dict:
    """Which version is stable (serving 100 %) and which is the canary; refuses a busy route."""
    from include.registry import mlflow_registry as reg

    settings = settings or get_settings()
    model = settings.registered_model_name
    current = get_router(settings).get(rt.route_name(model))
    check_owner(current, run_id)
    mine = rt.state(current) if current is not None and rt.state(current).get("run") == run_id else {}
    stable_service = rt.serving_at_100(current) if current is not None else None
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
        mv = reg._client(client).get_model_version(model, canary_version)
    except Exception as exc:
        raise RolloutError(f"model_version={canary_version}: not a registered version of {model}") from exc
    canary_service = rt.served_name(model, canary_version)
    noop = not mine and stable_service == canary_service
    stable = None
    if stable_version not in (None, canary_version):
        stable = {"version": stable_version, "service": rt.served_name(model, stable_version),
                  "source": reg._client(client).get_model_version(model, stable_version).source}
    plan = {
        "model": model, "run_id": run_id, "action": req["action"], "noop": noop,
        "canary": {"version": canary_version, "service": canary_service, "source": mv.source,
                   "mlflow_run_id": mv.run_id, "dataset_version": (mv.tags or {}).get(reg.DATASET_TAG)},
        "stable": stable,
        "steps": list(req["steps"]),
    }
    plan["direct"] = plan["stable"] is None or req["action"] == "rollback"
    if noop:
        log.info("%s v%s already serves 100 %%: nothing to do", model, canary_version)
    return plan


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
    servers = get_servers(settings)
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
    c = reg._client(client)
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
