"""DAG task bodies up to a trained model: params -> dataset -> plan -> preflight -> launch -> result.

Where the profiles differ, the container-job seam (`include.compute.container_jobs`) decides.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from include.compute import container_jobs
from include.lifecycle.failfast import NothingToDo, fail_fast
from include.settings import Settings, get_settings

log = logging.getLogger(__name__)


@fail_fast
def validate_params(params: Mapping[str, Any], settings: Settings | None = None) -> dict[str, Any]:
    """Refuse bad trigger params before anything is planned; return the placement."""
    from include.evaluation.gate import load_policy
    from include.training.planning import validate_params as check

    placement = check(params, container_jobs(settings))
    # The gate may only be tightened from a trigger: checked here, before any GPU time is spent.
    load_policy(params.get("gate_policy") or None, profile=(settings or get_settings()).profile)
    return placement


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
def plan(params: Mapping[str, Any], dataset: Mapping[str, Any], dag_id: str, run_id: str,
         settings: Settings | None = None) -> dict[str, Any]:
    """{"plan", "estimate"}: the flat plan every launcher takes, and its GPU-hours and cost."""
    from include.lifecycle.summaries import planned
    from include.training.planning import build_plan

    settings = settings or get_settings()
    out = build_plan(params, dataset, settings, dag_id, run_id, container_jobs(settings))
    log.info("%s", planned(out))
    return out


@fail_fast
def preflight(plan: Mapping[str, Any], settings: Settings | None = None) -> dict[str, Any]:
    """Check what would be launched against the cluster's pools, or this machine."""
    return container_jobs(settings).preflight(plan)


def setup_rendezvous(plan: Mapping[str, Any]) -> dict[str, Any]:
    return container_jobs().setup_rendezvous(plan)


def teardown_rendezvous(plan: Mapping[str, Any]) -> None:
    container_jobs().teardown_rendezvous(plan)


def collect_result(plan: Mapping[str, Any]) -> dict[str, Any]:
    from include.compute import read_result
    from include.lifecycle.summaries import trained

    result = read_result(plan)
    log.info("%s", trained(result))
    return result
