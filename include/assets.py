"""Assets shared between DAGs: the producer's outlet is the consumer's schedule.

Imported by DAG files at parse time, so it stays light: settings only, and the message-queue
trigger only where a queue is configured.
"""

from __future__ import annotations

from airflow.sdk import Asset, AssetWatcher

from include.settings import Settings, get_settings


def raw_data_watchers(settings: Settings) -> list[AssetWatcher]:
    """S3 notifications through SQS become events on the raw-data asset, in the triggerer.

    The trigger deletes what it receives and parses nothing: prepare_dataset reads the messages
    (include.data.notifications), so a foreign or malformed message cannot crash the triggerer.
    """
    if not settings.raw_events_queue:
        return []
    from airflow.providers.common.messaging.triggers.msg_queue import MessageQueueTrigger

    trigger = MessageQueueTrigger(scheme="sqs", sqs_queue=settings.raw_events_queue,
                                  aws_conn_id=settings.aws_conn_id, max_messages=10, wait_time_seconds=10,
                                  waiter_delay=settings.raw_events_poll_seconds)
    return [AssetWatcher(name="raw_data_s3_notifications", trigger=trigger)]


_settings = get_settings()
# New raw files land here: from S3 notifications (watchers) or from any producer with it as an outlet.
RAW_DATA = Asset(name="raw_data", uri=f"{_settings.data_root}/raw", group="datasets",
                 watchers=raw_data_watchers(_settings))
# Each published dataset version emits one event on this asset; its extra carries the version.
CURATED_DATASET = Asset(name="curated_dataset", uri=f"{_settings.data_root}/curated", group="datasets")

# Each registered model version emits one event on this asset (the lifecycle's `register` task);
# the rollout DAG is scheduled on it. Its extra is built by `registered_model_extra`.
REGISTERED_MODEL = Asset(name="registered_model", uri=f"{_settings.data_root}/registry/models", group="models")


def registered_model_extra(*, model_name: str, version: str | int, source_uri: str, dataset_version: str | None,
                           run_id: str) -> dict[str, str]:
    """The extra of a `registered_model` event: what the rollout needs to find and serve the version."""
    extra = {"model_name": model_name, "version": str(version), "source_uri": source_uri,
             "dataset_version": dataset_version or "", "run_id": run_id}
    missing = [k for k in ("model_name", "version", "source_uri", "run_id") if not extra[k]]
    if missing:
        raise ValueError(f"registered_model event: missing {', '.join(missing)}")
    return extra
