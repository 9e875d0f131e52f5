"""DAG task bodies up to a trained model: params -> dataset -> plan -> preflight -> launch -> result.

The training tasks' off-hours side is here too: queue a `window=off-hours` run instead of
launching it (the scheduling stage's request store), hold a run stopped at window close, and log
a run's actual GPU-hours and cost (the capacity seam's node intervals, the registry's run).

Where the platforms differ, the platform's container jobs (`get_platform().jobs()`) decide.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from include.lifecycle.failfast import NothingToDo, fail_fast
from include.platforms import get_platform
from include.settings import Settings, get_settings

log = logging.getLogger(__name__)


@fail_fast
def validate_params(params: Mapping[str, Any], settings: Settings | None = None) -> dict[str, Any]:
    """Refuse bad trigger params before anything is planned: the run's one check of them.

    Returns {"training": a TrainingPlan, "gate_policy": the run's GatePolicy}, as XCom dicts: every later
    task reads them back with `from_dict` and trusts them (only the trainer's container checks again).
    """
    from include.evaluation.gate import load_policy
    from include.training.planning import validate_params as check

    platform = get_platform(settings)
    training = check(params, platform.jobs())
    # The gate may only be tightened from a trigger: checked here, before any GPU time is spent.
    policy = load_policy(params.get("gate_policy") or None, profile=platform.name)
    return {"training": training.to_dict(), "gate_policy": policy.to_dict()}


# Runs a person (or the off-hours admission acting for one) asked for; every other run type
# (scheduled, asset_triggered, backfill) is the platform's own, and skips when there is nothing new.
ASKED_RUN_TYPES = ("manual",)


@fail_fast
def resolve_dataset(params: Mapping[str, Any], triggering_asset_events: Mapping | None = None,
                    settings: Settings | None = None, run_type: str = "manual") -> dict[str, Any]:
    """The curated version to train on: the param, else the triggering asset event's, else the latest.

    A run nobody asked for (nightly, asset event, backfill) skips (`NothingToDo`) when nothing is
    published yet, or when the version already has a decided run (registered or rejected) for the
    same base model and method: it never fails for want of data and never trains a version twice.
    A manual trigger is the explicit ask: a missing or unknown version fails it (bad input), and a
    version already trained on is trained again (to retrain, trigger by hand).
    """
    from include.data.catalog import NoDatasetYet, resolve_version
    from include.lifecycle.summaries import dataset_chosen

    settings = settings or get_settings()
    run_type = str(getattr(run_type, "value", run_type))
    asked = run_type in ASKED_RUN_TYPES
    versions = [e.extra.get("version") for events in (triggering_asset_events or {}).values()
                for e in events if e.extra.get("version")]
    try:
        manifest = resolve_version(settings.data_root, params["dataset_version"], versions)
    except NoDatasetYet as exc:
        if asked:
            raise
        raise NothingToDo(f"{run_type} run: nothing to train, {exc}") from None
    if not asked:
        skip_if_trained(manifest["version"], params, run_type, settings)
    dataset = {"version": manifest["version"], "uri": manifest["uri"], "splits": manifest["splits"]}
    log.info("%s", dataset_chosen(dataset))
    return dataset


def skip_if_trained(version: str, params: Mapping[str, Any], run_type: str, settings: Settings) -> None:
    """NothingToDo when `version` already has a decided run of the same recipe."""
    from include.registry.mlflow_registry import BASE_MODEL_TAG, DECISION_TAG, RUN_ID_TAG, decided_runs

    done = decided_runs(settings.mlflow_experiment, version, base_model=params.get("base_model"),
                        method=params.get("method"))
    if done:
        tags = done[0].data.tags
        raise NothingToDo(
            f"{run_type} run: dataset {version} was already trained on ({tags.get(BASE_MODEL_TAG)}, "
            f"{tags.get(DECISION_TAG)} in run {tags.get(RUN_ID_TAG)}, MLflow run {done[0].info.run_id}); "
            "not training it twice. To train it again, trigger finetune_lifecycle by hand."
        )


@fail_fast
def plan(validated: Mapping[str, Any], dataset: Mapping[str, Any], dag_id: str, run_id: str,
         settings: Settings | None = None) -> dict[str, Any]:
    """{"plan", "estimate", "gate_policy"}: the flat plan every launcher takes, its GPU-hours and cost,
    and the gate it must pass, from `validate_params`' output (valid already: not checked again).

    The gate policy rides along so the gate task needs nothing from before the plan: a run that skips
    at resolve_dataset skips the gate too.
    """
    from include.lifecycle.summaries import planned
    from include.training.planning import TrainingPlan, build_plan

    settings = settings or get_settings()
    out = build_plan(TrainingPlan.from_dict(validated["training"]), dataset, settings, dag_id, run_id,
                     get_platform(settings).jobs())
    log.info("%s", planned(out))
    return {**out, "gate_policy": validated["gate_policy"]}


@fail_fast
def preflight(plan: Mapping[str, Any], settings: Settings | None = None) -> dict[str, Any]:
    """Check what would be launched against the cluster's pools, or this machine."""
    return get_platform(settings).jobs().preflight(plan)


def setup_rendezvous(plan: Mapping[str, Any]) -> dict[str, Any]:
    return get_platform().jobs().setup_rendezvous(plan)


def teardown_rendezvous(plan: Mapping[str, Any]) -> None:
    get_platform().jobs().teardown_rendezvous(plan)


def collect_result(plan: Mapping[str, Any]) -> dict[str, Any]:
    from include.lifecycle.summaries import trained
    from include.training.results import read_result

    result = read_result(plan)
    log.info("%s", trained(result))
    return result


# ---- off-hours windows: queue instead of launching, hold a stopped run, actual cost ----

def run_now_or_queue(plan: dict[str, Any], estimate: dict[str, Any], params: dict[str, Any], run_id: str,
                     settings, now: datetime | None = None) -> bool:
    """finetune_lifecycle's gate: True to launch now, False once the run is queued for a window.

    Runs the off-hours DAG triggered (run_id offhours__...) were admitted already and launch.
    """
    from include.scheduling.admission import request_from_plan
    from include.scheduling.requests import ADMITTED_PREFIX, RequestStore, admitted_run_id, request_id
    from include.scheduling.windows import load

    if params.get("window", "now") != "off-hours" or run_id.startswith(ADMITTED_PREFIX):
        return True

    schedule = load()
    req_id = request_id(plan["dag_id"], run_id)
    conf = {k: v for k, v in params.items() if k != "window"} | {"window": "now"}
    request = request_from_plan(plan, estimate, request_id=req_id, priority=int(params.get("priority", 0)),
                                created_at=now or datetime.now(UTC), conf=conf,
                                local_seconds_per_step=schedule.admission["local_seconds_per_step"])
    record = RequestStore.for_settings(settings).add(request)
    log.info(f"Queued off-hours request {req_id} ({record['state']}): {request.gpus} GPUs, "
          f"{request.gpu_hours:.2f} GPU-h, ${request.cost_usd:,.2f} estimated, priority {request.priority}; "
          f"the off-hours DAG triggers run {admitted_run_id(req_id)} when a window admits it")
    return False


def hold_if_stopped(context: dict[str, Any]) -> None:
    """pre_execute hook of the training task: a run stopped at window close must not be relaunched
    by a task retry while the window is shut; it fails for good and resumes when re-admitted.

    The hold marker is under the data root (include/platforms/runs.py `hold_marker`), which this
    task reads on both profiles; on eks its pod has no checkpoint volume."""
    plan = getattr(context.get("task"), "plan", None)
    if not isinstance(plan, dict) or not plan.get("run_name"):
        return
    import json

    from include.platforms.runs import stopped

    held = stopped(get_settings(), str(plan["run_name"]))
    if held is not None:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(f"stopped at window close ({json.dumps(held, sort_keys=True)}); it resumes "
                                   "from its checkpoint when the next off-hours window re-admits it")


def log_actual_cost(plan: dict[str, Any], estimate: dict[str, Any], result: dict[str, Any] | None,
                    settings=None) -> dict[str, Any]:
    """Measure the run, log estimate/actual/error to its MLflow run, and to its off-hours request."""
    from include.registry import mlflow_registry as reg
    from include.scheduling.admission import request_from_plan
    from include.scheduling.cost import actual_usage, compare, node_price
    from include.scheduling.requests import ADMITTED_PREFIX, RequestStore
    from include.scheduling.windows import load
    from include.settings import get_settings

    settings = settings or get_settings()
    schedule = load()
    est = request_from_plan(plan, estimate, request_id="-", priority=0, created_at=datetime.now(UTC), conf={},
                            local_seconds_per_step=schedule.admission["local_seconds_per_step"])
    intervals = get_platform(settings).capacity(schedule).node_intervals(plan, result)
    actual = actual_usage(intervals, node_price(plan))
    metrics = compare({"gpu_hours": est.gpu_hours, "cost_usd": est.cost_usd}, actual)
    run = reg.get_or_create_run(settings.mlflow_experiment, plan["dag_id"], plan["run_id"], run_name=plan["run_name"])
    reg.log_training(run, {}, [], {k: v for k, v in metrics.items() if v is not None})
    if str(plan["run_id"]).startswith(ADMITTED_PREFIX):
        store = RequestStore.for_settings(settings)
        req_id = str(plan["run_id"]).removeprefix(ADMITTED_PREFIX)
        if store.get(req_id) is not None:  # training is over: its GPUs leave the pool's budget now
            store.transition(req_id, "done", "training finished", actual=actual)
    log.info(f"Run {plan['run_name']}: actual {actual['gpu_hours']:.3f} GPU-h, ${actual['cost_usd']:,.2f} "
          f"(estimated {est.gpu_hours:.3f} GPU-h, ${est.cost_usd:,.2f}; GPU-h error "
          f"{metrics['cost.gpu_hours_error_pct']}%)")
    return {"estimated": {"gpu_hours": est.gpu_hours, "cost_usd": est.cost_usd}, "actual": actual, **metrics}
