"""Assets shared between DAGs: the producer's outlet is the consumer's schedule.

Imported by DAG files at parse time, so it stays light: settings only.
"""

from __future__ import annotations

from airflow.sdk import Asset

from include.settings import get_settings

# Each published dataset version emits one event on this asset; its extra carries the version.
CURATED_DATASET = Asset(name="curated_dataset", uri=f"{get_settings().data_root}/curated", group="datasets")
