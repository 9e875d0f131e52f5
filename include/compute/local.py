"""Local profile: ranks are processes on this machine, so there is no name to publish.

Rank 0 is always 127.0.0.1 and the launcher picks a free port itself. Teardown stops rank
processes the launcher recorded under `<checkpoint_dir>/.ranks/` and could not reap because the
Airflow task was killed: otherwise they would keep training, and writing checkpoints, unowned.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from include.training.local_launcher import stop_recorded_ranks

MASTER_ADDR = "127.0.0.1"


def setup_rendezvous(plan: Mapping[str, Any]) -> dict[str, Any]:
    return {"kind": "local", "master_addr": MASTER_ADDR}


def teardown_rendezvous(plan: Mapping[str, Any]) -> None:
    stop_recorded_ranks(plan["checkpoint_dir"])
