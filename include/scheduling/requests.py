"""The queue of training requests waiting for an off-hours window, kept in object storage.

Why a queue and not a deferrable task: finetune_lifecycle has max_active_runs=1, so a run that
waited inside the DAG (deferred or not) until tonight would hold the only slot and block the
nightly and asset-triggered runs meanwhile; and a run stopped at window close must be resumed in
a later window, which a waiting task cannot express. So a `window=off-hours` run plans, prices
and preflights, writes its request here (visible in its task log and XCom, and in the off-hours
DAG's report as waiting), and ends without launching. At window open the off-hours DAG admits
it and triggers finetune_lifecycle with run_id `offhours__<request id>`: that run's plan (run
name and checkpoint directory derive from dag_id + run_id) is the same on every resume, so a run
stopped at close and re-triggered (reset_dag_run) resumes from its last checkpoint.

One JSON document per request under <data_root>/offhours/requests/, written whole each time.
The off-hours DAG has max_active_runs=1, so there is one writer at a time.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import UTC, datetime
from typing import Any

from include.scheduling.admission import Request

log = logging.getLogger(__name__)

STATES = ("waiting", "admitted", "stopped", "done", "failed", "refused")
ADMITTED_PREFIX = "offhours__"


def request_id(dag_id: str, run_id: str) -> str:
    return "req-" + hashlib.sha256(f"{dag_id}\0{run_id}".encode()).hexdigest()[:12]


def admitted_run_id(req_id: str) -> str:
    return f"{ADMITTED_PREFIX}{req_id}"


class RequestStore:
    """Request records: {"request": Request dict, "state", "history": [[time, state, note]], ...}."""

    def __init__(self, root_uri: str):
        self.root_uri = root_uri.rstrip("/")

    @classmethod
    def for_settings(cls, settings) -> RequestStore:
        return cls(f"{settings.data_root}/offhours/requests")

    def _path(self, req_id: str):
        from include.storage.objectstore import storage_path

        return storage_path(f"{self.root_uri}/{req_id}.json")

    def get(self, req_id: str) -> dict[str, Any] | None:
        path = self._path(req_id)
        return json.loads(path.read_bytes()) if path.exists() else None

    def put(self, record: dict[str, Any]) -> None:
        path = self._path(record["request"]["id"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(json.dumps(record, indent=2, sort_keys=True).encode())

    def all(self) -> list[dict[str, Any]]:
        from include.storage.objectstore import storage_path

        root = storage_path(self.root_uri)
        if not root.exists():
            return []
        return [json.loads(p.read_bytes()) for p in sorted(root.iterdir(), key=lambda p: p.name)
                if p.name.endswith(".json")]

    def add(self, request: Request, state: str = "waiting", note: str = "") -> dict[str, Any]:
        """Idempotent: a rerun of the same logical run finds its record and keeps it."""
        existing = self.get(request.id)
        if existing is not None:
            return existing
        record = {"request": request.to_dict(), "state": state, "history": []}
        self._log(record, state, note or "queued for the next off-hours window")
        self.put(record)
        return record

    def transition(self, req_id: str, state: str, note: str, **extra: Any) -> dict[str, Any]:
        if state not in STATES:
            raise ValueError(f"state={state!r}: expected one of {', '.join(STATES)}")
        record = self.get(req_id)
        if record is None:
            raise KeyError(f"no off-hours request {req_id}")
        record.update(extra)
        self._log(record, state, note)
        self.put(record)
        return record

    @staticmethod
    def _log(record: dict[str, Any], state: str, note: str) -> None:
        record["state"] = state
        record["history"].append([datetime.now(UTC).isoformat(timespec="seconds"), state, note])

    def in_state(self, *states: str) -> list[dict[str, Any]]:
        return [r for r in self.all() if r["state"] in states]
