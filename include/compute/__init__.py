"""The compute seam: what a training run needs around it, the same calls on both profiles.

- `setup_rendezvous(plan)`: make rank 0 findable. EKS creates the headless Service the Job's pods
  name as their subdomain; locally every rank is on 127.0.0.1 and the launcher picks the port.
- `teardown_rendezvous(plan)`: remove it, and stop ranks a killed task left running, so neither
  profile leaves orphans (GPU nodes that keep billing, processes that keep writing checkpoints).
- `read_result(plan)`: rank 0's `result.json` from object storage. Results travel through storage,
  not a pod sidecar, so Airflow reads them the same way on file:// and s3://.

The backend is chosen by `get_settings().profile`; the Kubernetes one (and the `kubernetes`
client) is imported only on the eks profile.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from include.settings import get_settings
from include.training.entrypoint import RESULT_FILE  # rank 0 publishes it last

RESULT_KEYS = ("backend", "checkpoint_uri", "model_uri", "metrics")


class ResultMissing(FileNotFoundError):
    """The run's result.json is absent: the trainer did not finish publishing."""


def _backend() -> ModuleType:
    if get_settings().profile == "eks":
        from include.compute import kubernetes as backend
    else:
        from include.compute import local as backend
    return backend


def setup_rendezvous(plan: Mapping[str, Any]) -> dict[str, Any]:
    """Prepare what rank 0 needs to be reachable; idempotent, so a retried task is harmless."""
    return _backend().setup_rendezvous(plan)


def teardown_rendezvous(plan: Mapping[str, Any]) -> None:
    """Undo setup_rendezvous and stop ranks still running; idempotent, absent is fine."""
    _backend().teardown_rendezvous(plan)


def result_uri(plan: Mapping[str, Any]) -> str:
    return f"{str(plan['output_uri']).rstrip('/')}/{RESULT_FILE}"


def read_result(plan: Mapping[str, Any]) -> dict[str, Any]:
    """Rank 0's result for this plan; ResultMissing or ValueError name the URI when it is not usable."""
    from include.storage import storage_path

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
