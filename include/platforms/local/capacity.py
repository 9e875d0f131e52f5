"""The local capacity seam: ranks are processes on this machine, the GPU budget a slot count.

Stopping a run holds it (include/platforms/runs.py) and also follows the local launcher's
stop-request convention (`training.restarts.STOP_REQUEST_FILE` in the run's checkpoint dir, which
this machine shares with the ranks): the launcher does not restart ranks stopped on request.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from include.platforms.runs import clear_hold, mark_stopped, run_names
from include.scheduling.cleanup import Action
from include.training.restarts import STOP_REQUEST_FILE


class LocalCapacity:
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
            body = mark_stopped(self.settings, names["run_name"], "window closed")
            ckpt.mkdir(parents=True, exist_ok=True)  # the launcher restarts no rank stopped on request
            (ckpt / STOP_REQUEST_FILE).write_text(body)
            stop_recorded_ranks(ckpt, grace=grace)

        return [Action("Process", f"{names['run_name']} ({names['run_id']})", "stop",
                       f"experiment run would overrun the window: SIGTERM, {grace:g}s to exit, resumes from "
                       "its last checkpoint in the next window", gpus=int(record["request"]["gpus"]), run=stop)]

    def release_hold(self, record: dict[str, Any]) -> None:
        name = run_names(record)["run_name"]
        clear_hold(self.settings, name)
        (Path(self.settings.checkpoint_root) / name / STOP_REQUEST_FILE).unlink(missing_ok=True)

    def node_intervals(self, plan: dict[str, Any], result: dict[str, Any] | None) -> list[tuple[float, int]]:
        """(seconds, GPUs) per node: local ranks ran train_seconds each, one slot per rank."""
        seconds = float(((result or {}).get("metrics") or {}).get("train_seconds") or 0.0)
        return [(seconds, int(plan["gpus_per_node"]))] * int(plan["nodes"])
