"""DAG task bodies of prepare_dataset: raw partitions -> a staged curation -> a published version."""

from __future__ import annotations

import os
from typing import Any

from include.lifecycle.failfast import fail_fast
from include.settings import get_settings


@fail_fast
def resolve_sources(params: dict[str, Any], logical_date=None) -> list[str]:
    from include.data.catalog import resolve_sources as resolve

    return resolve(get_settings().data_root, params["partition"], params["source_uris"], logical_date)


@fail_fast
def curate(sources: list[str], params: dict[str, Any], run_id: str) -> dict:
    from include.data.catalog import stage
    from include.data.pipeline import PrepConfig

    config = PrepConfig(redact_pii=params["redact_pii"], near_dedup=params["near_dedup"],
                        dedup_threshold=params["dedup_threshold"], max_tokens=params["max_tokens"],
                        workers=min(2, os.cpu_count() or 1))
    return stage(get_settings().data_root, sources, config, run_id)


@fail_fast
def publish(manifest: dict, run_id: str, attempt_key: str) -> dict:
    """Publish the staged version; return the asset event's extra, or skip when another run published it."""
    from airflow.sdk.exceptions import AirflowSkipException

    from include.data.catalog import asset_extra, summary
    from include.data.catalog import publish as publish_version

    live, ours = publish_version(get_settings().data_root, manifest, run_id, attempt_key)
    print(summary(live))
    if not ours:
        raise AirflowSkipException(
            f"version {live['version']} was already published by run {live['run_id']}; no new asset event"
        )
    return asset_extra(live)
