"""The capacity and run-control seam of the off-hours DAG: GPU budget, scale-to-zero, leftovers and
stopping a training run, per profile.

`get_cluster()` is the one place that picks the backend from `settings.profile`: `LocalCluster`
here (rank processes on this machine, a slot budget) or `EksCluster` in k8s_capacity.py
(NodePools and NodeClaims through CustomObjectsApi, Jobs/Services/pods through the provider's
hook). Both return cleanup Actions (include/scheduling/cleanup.py) so the DAG lists, applies and
reports them the same way.

Stopping a run leaves a hold marker under the data root (`<data root>/offhours/stopped/<run name>.json`,
object storage on both profiles): the training task's pre_execute hook (include/lifecycle/training.py)
reads it and refuses a relaunch by a task retry until the run is admitted again, which clears it.
It is not in the checkpoint dir because Airflow's pods on eks mount no checkpoint volume (the FSx
claim lives in llm-training, for the trainer pods). Locally the stop also follows the launcher's
stop-request convention (`training.restarts.STOP_REQUEST_FILE` in the run's checkpoint dir, which
this machine shares with the ranks): the launcher does not restart ranks stopped on request. On
eks the JobSet is deleted, so nothing restarts the pods. It sits in compute, above the stages,
because it joins the training stage's names and files with the scheduling stage's records.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from include.scheduling.cleanup import Action
from include.scheduling.requests import admitted_run_id
from include.training.restarts import STOP_REQUEST_FILE

STOP_MARKER = STOP_REQUEST_FILE

TRAINING_DAG = "finetune_lifecycle"


def run_names(record: dict[str, Any]) -> dict[str, str]:
    """The admitted run's deterministic names: its plan's run name and its Job's name."""
    from include.training.planning import run_name

    run_id = admitted_run_id(record["request"]["id"])
    return {"run_id": run_id, "run_name": run_name(TRAINING_DAG, run_id)}


class OffhoursCluster(Protocol):
    def gpu_limit(self, kind: str) -> int: ...
    def shared_gpu_budget(self) -> bool: ...
    def scale_to_zero(self, kind: str) -> list[Action]: ...
    def restore_limits(self, kind: str) -> list[Action]: ...
    def leftovers(self, now: datetime, running: set[str]) -> list[Action]: ...
    def stop_run(self, record: dict[str, Any]) -> list[Action]: ...
    def node_intervals(self, plan: dict[str, Any], result: dict[str, Any] | None) -> list[tuple[float, int]]: ...


def hold_marker(settings, run_name: str):
    """The stopped run's hold marker: under the data root, which every Airflow task can read and write."""
    from include.storage.objectstore import storage_path

    return storage_path(f"{settings.data_root}/offhours/stopped/{run_name}.json")


def mark_stopped(settings, run_name: str, why: str, stop_request_dir: Path | None = None) -> None:
    """Hold the run: the training task's pre_execute hook reads the marker and refuses a relaunch by a
    retry until the run is re-admitted. `stop_request_dir` (local profile: the run's checkpoint dir,
    shared with its ranks) also gets the launcher's stop request, so it restarts no rank stopped now."""
    body = json.dumps({"run_name": run_name, "stopped_at": datetime.now(UTC).isoformat(timespec="seconds"),
                       "why": why})
    marker = hold_marker(settings, run_name)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_bytes(body.encode())
    if stop_request_dir is not None:
        stop_request_dir.mkdir(parents=True, exist_ok=True)
        (stop_request_dir / STOP_MARKER).write_text(body)


def stopped(settings, run_name: str) -> dict[str, Any] | None:
    """The run's hold marker ({"stopped_at", "why", ...}), or None when it may launch."""
    marker = hold_marker(settings, run_name)
    return json.loads(marker.read_bytes()) if marker.exists() else None


def clear_stop_marker(settings, record: dict[str, Any]) -> None:
    """The run is admitted again: lift the hold (and, locally, the launcher's stop request)."""
    name = run_names(record)["run_name"]
    hold_marker(settings, name).unlink(missing_ok=True)
    if settings.is_local:  # on eks the checkpoint volume is the trainer pods', not Airflow's
        (Path(settings.checkpoint_root) / name / STOP_MARKER).unlink(missing_ok=True)


class LocalCluster:
    """Ranks are processes here; the GPU budget is a slot count shared by both pools."""

    def __init__(self, settings, schedule):
        self.settings, self.schedule = settings, schedule

    def gpu_limit(self, kind: str) -> int:
        return int(self.schedule.admission["local_gpu_slots"])

    def shared_gpu_budget(self) -> bool:
        return True  # one machine: production and experiment runs share the slots

    def scale_to_zero(self, kind: str) -> list[Action]:
        return []  # no nodes to release; stopping the runs frees the slots

    def restore_limits(self, kind: str) -> list[Action]:
        return []

    def leftovers(self, now: datetime, running: set[str]) -> list[Action]:
        """Orphaned rank processes: recorded by a launch whose launcher is gone (its Airflow task was
        killed), so the ranks were re-parented. Ranks under a live launcher are a run in progress,
        whichever DAG started it, and are never touched."""
        from include.training.local_launcher import _recorded_process, launcher_gone, ranks_dir, stop_recorded_ranks

        actions = []
        root = Path(self.settings.checkpoint_root)
        for run_dir in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else ():
            if run_dir.name in running:
                continue
            live = {f: proc for f in sorted(ranks_dir(run_dir).glob("rank-*.pid"))
                    if (proc := _recorded_process(f)) is not None}
            if live and all(launcher_gone(f) for f in live):
                pids = [p.pid for p in live.values()]
                actions.append(Action("Process", f"{run_dir.name} ranks {pids}", "stop",
                                      f"rank processes of run {run_dir.name} whose launcher is gone", gpus=len(pids),
                                      run=lambda d=run_dir: stop_recorded_ranks(d)))
        return actions

    def stop_run(self, record: dict[str, Any]) -> list[Action]:
        from include.training.local_launcher import stop_recorded_ranks

        names = run_names(record)
        ckpt = Path(self.settings.checkpoint_root) / names["run_name"]
        grace = float(self.schedule.admission["local_stop_grace_s"])

        def stop() -> None:
            mark_stopped(self.settings, names["run_name"], "window closed", stop_request_dir=ckpt)
            stop_recorded_ranks(ckpt, grace=grace)

        return [Action("Process", f"{names['run_name']} ({names['run_id']})", "stop",
                       f"experiment run would overrun the window: SIGTERM, {grace:g}s to exit, resumes from "
                       "its last checkpoint in the next window", gpus=int(record["request"]["gpus"]), run=stop)]

    def node_intervals(self, plan: dict[str, Any], result: dict[str, Any] | None) -> list[tuple[float, int]]:
        """(seconds, GPUs) per node: local ranks ran train_seconds each, one slot per rank."""
        seconds = float(((result or {}).get("metrics") or {}).get("train_seconds") or 0.0)
        return [(seconds, int(plan["gpus_per_node"]))] * int(plan["nodes"])


def get_cluster(settings=None, schedule=None) -> OffhoursCluster:
    from include.scheduling.windows import load
    from include.settings import get_settings

    settings = settings or get_settings()
    schedule = schedule or load()
    if settings.profile == "eks":
        from include.compute.k8s_capacity import EksCluster

        return EksCluster(settings, schedule)
    return LocalCluster(settings, schedule)
