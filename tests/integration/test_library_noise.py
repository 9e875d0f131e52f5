"""Library noise in a task's process: a real registry call in a fresh interpreter, its stderr read.

In an Airflow task whatever reaches stderr is shown as ERROR; MLflow writes its INFO messages and its
"Downloading artifacts" progress bars there unless include/logs.py:quiet_libraries has run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import logging, sys
logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
from include.registry import tracking
client = tracking.get_client("sqlite:///" + sys.argv[1] + "/mlflow.db")
run = tracking.get_or_create_run("exp", "dag", "run-1", client=client)
uris = tracking.log_artifacts(run, {"eval/a.json": "{}", "eval/b.json": "[]"}, client=client)
print("read", tracking.read_artifact_text(uris["eval/a.json"], client=client))
"""


def test_mlflow_logs_through_logging_at_info_and_draws_no_progress_bar(tmp_path):
    """In a task, stderr is shown as ERROR: MLflow must write nothing there, and its INFO stays INFO."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    out = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Downloading artifacts" not in out.stderr and "%|" not in out.stderr, out.stderr[-2000:]
    assert " INFO " not in out.stderr and "mlflow" not in out.stderr, out.stderr[-2000:]
    assert "INFO mlflow.store.db.utils: Creating initial MLflow database tables..." in out.stdout
    assert "read {}" in out.stdout
