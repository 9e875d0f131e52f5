"""prepare_dataset: raw partitions -> a versioned, validated fine-tuning dataset.

Nightly on the partition of the run's logical date (the day the data interval covers), backfillable per day,
triggerable from the UI for any partition or explicit source URIs, and started by new raw files landing
(events on the raw-data asset: S3 notifications through SQS, or any producer's outlet). Publishing the version
emits an event on the curated-dataset asset, which is what retraining listens to.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import AssetOrTimeSchedule, CronDataIntervalTimetable, Param, dag, task
from llmops_operators.links import DatasetManifestLink, linked_task
from llmops_operators.sensors import PartitionSensor

from include.assets import CURATED_DATASET, RAW_DATA
from include.settings import get_settings
from include.validation import RULE_KEY, form_params, with_words

DEFAULTS = {
    "owner": "ml-platform",
    "retries": 2,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": True,
}

PARAMS = form_params({
    "partition": with_words(Param(
        None, type=["null", "string"], format="date", pattern=r"^\d{4}-\d{2}-\d{2}$",
        title="Partition date", section="Source",
        description="Optional. Raw partition dt=YYYY-MM-DD to curate (e.g. 2026-11-01). Empty: the run's data "
                    "interval day.",
    ), "Empty, or a date written YYYY-MM-DD."),
    "source_uris": with_words(Param(
        [], type=["null", "array"], maxItems=64, section="Source", title="Explicit source URIs",
        items={"type": "string", "pattern": r"^(file|s3)://(?!.*(^|/)\.\.(/|$))[^\s]+$", "maxLength": 1024,
               RULE_KEY: "file:// or s3:// under raw/, no spaces, no '..'"},
        description="Optional. Files or directories under <data root>/raw/, each an absolute file:// or s3:// "
                    "URI of at most 1,024 characters; they override the partition when given.",
    ), "Empty, or up to 64 URIs: file:// or s3:// under raw/, no spaces, no '..'"),
    "redact_pii": Param(True, type="boolean", title="Redact PII", section="Curation",
                        description="Replace e-mails, phones, cards, IPs and AWS keys with placeholders."),
    "near_dedup": Param(True, type="boolean", title="Near-duplicate removal", section="Curation",
                        description="MinHash LSH over word trigrams, after exact deduplication."),
    "dedup_threshold": Param(0.85, type="number", minimum=0.5, maximum=0.95, section="Curation",
                             title="Near-duplicate threshold",
                             description="Estimated Jaccard similarity at which two records are duplicates."),
    "max_tokens": Param(2048, type="integer", minimum=64, maximum=131072, section="Curation",
                        title="Max estimated tokens", description="Longer records are quarantined."),
})


@dag(
    dag_id="prepare_dataset",
    schedule=AssetOrTimeSchedule(timetable=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
                                 assets=RAW_DATA),
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    max_active_runs=3,
    default_args=DEFAULTS,
    params=PARAMS,
    tags=["llmops", "data"],
    doc_md=__doc__,
)
def prepare_dataset():
    @task
    def resolve_sources(params: dict, logical_date=None, triggering_asset_events=None) -> list[str]:
        from include.lifecycle.dataset import resolve_sources

        return resolve_sources(params, logical_date, triggering_asset_events)

    @task(multiple_outputs=False, execution_timeout=timedelta(hours=2))
    def curate(sources: list[str], params: dict, run_id: str) -> dict:
        from include.lifecycle.dataset import curate

        return curate(sources, params, run_id)

    @linked_task(DatasetManifestLink, multiple_outputs=False, outlets=[CURATED_DATASET])
    def publish(manifest: dict, run_id: str, dag_run=None, outlet_events=None) -> dict:
        from include.lifecycle.dataset import publish

        extra = publish(manifest, run_id, f"{run_id}#{dag_run.clear_number}")
        outlet_events[CURATED_DATASET].extra = extra
        return extra

    settings = get_settings()
    wait = PartitionSensor(task_id="wait_for_partition", wait_seconds=settings.partition_wait_seconds,
                           poke_seconds=settings.partition_poke_seconds)
    sources = resolve_sources()
    wait >> sources
    publish(curate(sources))


prepare_dataset()
