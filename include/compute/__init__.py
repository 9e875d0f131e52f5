"""The container-job seam: run a trainer, an evaluator (next: a model server) on this profile.

`container_jobs(settings)` is the ONE place that picks the implementation from `settings.profile`:

| method                 | LocalJobs (compute/local.py)            | KubernetesJobs (compute/kubernetes.py)        |
|------------------------|-----------------------------------------|-----------------------------------------------|
| place(params, probs)   | ranks on this machine, CPU "instance"   | pool + instance type sized for the model      |
| preflight(plan)        | ranks vs CPUs                           | render the JobSet, check it against the pools |
| setup_rendezvous       | 127.0.0.1, the launcher picks the port  | the run's NetworkPolicy; rank 0's address     |
| teardown_rendezvous    | stop rank processes a killed task left  | delete an orphaned JobSet, the policy         |
| evaluation_job(...)    | tiny generator, non-LLM metrics         | vLLM generator, the LLM judge                 |

Each also names its trainer backend ("tiny" / "nemo") and the operator kind plugins/ maps to an
Airflow operator. Results travel through storage on both (`read_result`), never a pod sidecar.
The Kubernetes side (and the `kubernetes` client) is imported only on the eks profile.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol

from include.settings import Settings, get_settings
from include.training.entrypoint import RESULT_FILE  # rank 0 publishes it last

RESULT_KEYS = ("backend", "checkpoint_uri", "model_uri", "metrics")


class ContainerJobs(Protocol):
    kind: str  # "local" | "kubernetes": which operator plugins/ builds for a container task
    trainer_backend: str  # "tiny" | "nemo"
    retry_delay_s: int  # how long a failed task waits before its retry
    training_timeout_h: int

    def place(self, params: Mapping[str, Any], problems: list[str]) -> dict[str, Any]: ...

    def preflight(self, plan: Mapping[str, Any]) -> dict[str, Any]: ...

    def setup_rendezvous(self, plan: Mapping[str, Any]) -> dict[str, Any]: ...

    def teardown_rendezvous(self, plan: Mapping[str, Any]) -> None: ...

    def evaluation_job(self, model_uri: str, eval_uri: str, output_uri: str, **options: Any) -> dict[str, Any]: ...


def container_jobs(settings: Settings | None = None) -> ContainerJobs:
    """The container-job implementation for `settings.profile` (default: the environment's)."""
    settings = settings or get_settings()
    if settings.profile == "eks":
        from include.compute.kubernetes import KubernetesJobs

        return KubernetesJobs(settings)
    from include.compute.local import LocalJobs

    return LocalJobs(settings)


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
