"""DAG task bodies of prepare_dataset: raw partitions -> a staged curation -> a published version."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from include.lifecycle.failfast import NothingToDo, fail_fast
from include.settings import get_settings

log = logging.getLogger(__name__)


@fail_fast
def resolve_sources(params: dict[str, Any], logical_date=None, triggering_asset_events=None) -> list[str]:
    """Explicit params win; an asset-triggered run curates the partitions its S3 notifications announce
    (and skips when they announce none); otherwise the partition of the logical date."""
    from include.data.catalog import landed_sources
    from include.data.catalog import resolve_sources as resolve

    data_root = get_settings().data_root
    landed = [e.extra.get("payload") for events in (triggering_asset_events or {}).values() for e in events
              if e.extra.get("from_trigger")]
    if landed and not (params["partition"] or params["source_uris"]):
        sources = landed_sources(data_root, landed)
        if not sources:
            raise NothingToDo(f"{len(landed)} notification batch(es) announced no new raw partition: nothing to curate")
        return sources
    return resolve(data_root, params["partition"], params["source_uris"], logical_date)


@fail_fast
def curate(sources: list[str], params: dict[str, Any], run_id: str) -> dict:
    from include.data.catalog import stage
    from include.data.pipeline import PrepConfig
    from include.lifecycle.summaries import curated

    config = PrepConfig(redact_pii=params["redact_pii"], near_dedup=params["near_dedup"],
                        dedup_threshold=params["dedup_threshold"], max_tokens=params["max_tokens"],
                        workers=min(2, os.cpu_count() or 1))
    started = time.monotonic()
    manifest = stage(get_settings().data_root, sources, config, run_id)
    log.info("%s", curated(manifest, time.monotonic() - started))
    return manifest


@fail_fast
def publish(manifest: dict, run_id: str, attempt_key: str) -> dict:
    """Publish the staged version; return the asset event's extra, or skip when another run published it."""
    from airflow.sdk.exceptions import AirflowSkipException

    from include.data.catalog import asset_extra, summary
    from include.data.catalog import publish as publish_version
    from include.lifecycle.summaries import published

    live, ours = publish_version(get_settings().data_root, manifest, run_id, attempt_key)
    log.info("%s", summary(live))
    log.info("%s", published(live, ours))
    if not ours:
        raise AirflowSkipException(
            f"version {live['version']} was already published by run {live['run_id']}; no new asset event"
        )
    return asset_extra(live)
