"""What the container entrypoints (trainer, evaluator) share: the bad-input exit code and the result file.

Plain Python: both images import it, and neither has Airflow.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# An InputError inside a container exits with this code: the Job's podFailurePolicy fails the Job at
# once (a retry cannot fix a bad plan), and the local launcher reports it as bad input.
USER_ERROR_EXIT_CODE = 2
XCOM_ENV = "LLMOPS_XCOM_PATH"
DEFAULT_XCOM_PATH = "/airflow/xcom/return.json"


def write_result(result: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Path:
    """Write the result file the KubernetesPodOperator sidecar (or the local launcher) picks up."""
    from include.storage.files import write_result as write

    env = os.environ if environ is None else environ
    return write(result, env.get(XCOM_ENV) or DEFAULT_XCOM_PATH)
