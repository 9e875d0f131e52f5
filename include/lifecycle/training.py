"""DAG task bodies up to a trained model: params -> dataset -> plan -> preflight -> launch -> result.

Where the profiles differ, the container-job seam (`include.compute.container_jobs`) decides.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from include.compute import container_jobs
from include.lifecycle.failfast import fail_fast
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


@fail_fast
def resolve_dataset(params: Mapping[str, Any], triggering_asset_events: Mapping | None = None,
                    settings: Settings | None = None) -> dict[str, Any]:
    """The curated version to train on: the param, else the triggering asset event's, else the latest."""
    from include.data.catalog import resolve_version
    from include.lifecycle.summaries import dataset_chosen

    settings = settings or get_settings()
    versions = [e.extra.get("version") for events in (triggering_asset_events or {}).values()
                for e in events if e.extra.get("version")]
    manifest = resolve_version(settings.data_root, params["dataset_version"], versions)
    dataset = {"version": manifest["version"], "uri": manifest["uri"], "splits": manifest["splits"]}
    log.info("%s", dataset_chosen(dataset))
    return dataset


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
