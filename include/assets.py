"""Assets shared between DAGs: the producer's outlet is the consumer's schedule.

Imported by DAG files at parse time, so it stays light: settings only.
"""

from __future__ import annotations

from airflow.sdk import Asset

from include.settings import get_settings

# Each published dataset version emits one event on this asset; its extra carries the version.
CURATED_DATASET = Asset(name="curated_dataset", uri=f"{get_settings().data_root}/curated", group="datasets")

# Each registered model version emits one event on this asset (the lifecycle's `register` task);
# the rollout DAG is scheduled on it. Its extra is built by `registered_model_extra`.
REGISTERED_MODEL = Asset(name="registered_model", uri=f"{get_settings().data_root}/registry/models", group="models")


def registered_model_extra(*, model_name: str, version: str | int, source_uri: str, dataset_version: str | None,
                           run_id: str) -> dict[str, str]:
    """The extra of a `registered_model` event: what the rollout needs to find and serve the version."""
    extra = {"model_name": model_name, "version": str(version), "source_uri": source_uri,
             "dataset_version": dataset_version or "", "run_id": run_id}
    missing = [k for k in ("model_name", "version", "source_uri", "run_id") if not extra[k]]
    if missing:
        raise ValueError(f"registered_model event: missing {', '.join(missing)}")
    return extra
