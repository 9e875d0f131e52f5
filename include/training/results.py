"""A training run's result: rank 0 publishes `result.json` last, after the model and metrics, on
every platform; Airflow reads it from storage."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from include.training.entrypoint import RESULT_FILE

RESULT_KEYS = ("backend", "checkpoint_uri", "model_uri", "metrics")


class ResultMissing(FileNotFoundError):
    """The run's result.json is absent: the trainer did not finish publishing."""


def result_uri(plan: Mapping[str, Any]) -> str:
    return f"{str(plan['output_uri']).rstrip('/')}/{RESULT_FILE}"


def read_result(plan: Mapping[str, Any]) -> dict[str, Any]:
    """Rank 0's result for this plan; ResultMissing or ValueError name the URI when it is not usable."""
    from include.storage.objectstore import storage_path

    uri = result_uri(plan)
    path = storage_path(uri)
    if not path.exists():
        raise ResultMissing(
            f"training result {uri} does not exist: the trainer did not finish (rank 0 publishes it last, "
            "after the model and metrics)"
        )
    try:
        result = json.loads(path.read_bytes())
    except ValueError as exc:
        raise ValueError(f"training result {uri} is not valid JSON: {exc}") from None
    missing = [key for key in RESULT_KEYS if not isinstance(result, dict) or key not in result]
    if missing:
        raise ValueError(f"training result {uri} lacks {', '.join(missing)}")
    return result
