"""Stage the shipped sample, run the lifecycle DAGs with `airflow dags test`, print what they made.

Each command's whole output goes to `$AIRFLOW_HOME/<dag_id>.log`; each task's log is also written
where the UI reads it (the `llmops` plugin's listener, plugins/llmops_operators/dag_test_logs.py),
so `make ui` shows these runs' logs. A failure prints the failing task, its one-line cause and the
log to read; the traceback stays in that log.

Commands are argument lists: nothing here goes through a shell.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from include.data.catalog import latest_version, summary
from include.sample_data import stage_sample
from include.settings import get_settings


def dags_test(dag_id: str, conf: dict) -> None:
    cmd = ["airflow", "dags", "test", dag_id, "--conf", json.dumps(conf)]
    print(f"$ {' '.join(cmd[:4])} --conf '{cmd[5]}'", flush=True)
    log = Path(os.environ["AIRFLOW_HOME"]) / f"{dag_id}.log"
    started = datetime.now(UTC)
    with open(log, "w") as out:
        result = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        print(failure_summary(dag_id, started, log), flush=True)
        raise SystemExit(f"{dag_id} failed (exit {result.returncode})")
    print(f"  {dag_id}: success (log: {log})")


def failure_summary(dag_id: str, started: datetime, output: Path) -> str:
    """What failed and why, in a few lines: each failed task of the run this command made, with the
    cause its log ends with and that log's path; the command's own error when no task ran."""
    from include.logs import failure_cause

    lines = [f"{dag_id} failed:"]
    for task in failed_tasks(dag_id, started):
        text = task["log"].read_text(errors="replace") if task["log"].is_file() else ""
        tries = (f"attempt {task['attempt']} of {task['attempts']}" if task["attempt"] >= task["attempts"]
                 else f"attempt {task['attempt']}, failed without retrying")
        lines.append(f"  task {task['task_id']} ({tries}): "
                     f"{failure_cause(text) or 'no exception in its log'}")
        lines.append(f"    log: {task['log']}")
    if len(lines) == 1:
        lines.append(f"  {failure_cause(output.read_text(errors='replace')) or 'no traceback in the output'}")
    lines.append(f"  all output: {output}")
    return "\n".join(lines)


def failed_tasks(dag_id: str, started: datetime) -> list[dict]:
    """The failed task instances of the run `airflow dags test` made after `started`, with their log files."""
    from airflow.configuration import conf
    from airflow.models import DagRun, TaskInstance
    from airflow.utils.helpers import log_filename_template_renderer
    from airflow.utils.session import create_session

    render, base = log_filename_template_renderer(), Path(conf.get("logging", "base_log_folder"))
    with create_session() as session:
        run = session.query(DagRun).filter(DagRun.dag_id == dag_id, DagRun.start_date >= started).order_by(
            DagRun.start_date.desc()).first()
        if run is None:
            return []
        failed = session.query(TaskInstance).filter(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run.run_id,
                                                    TaskInstance.state == "failed").all()
        return [{"task_id": ti.task_id, "attempt": ti.try_number, "attempts": ti.max_tries + 1,
                 "log": base / render(ti=ti)} for ti in failed]


def lifecycle_outcome(dag_id: str = "finetune_lifecycle",
                      task_ids: tuple[str, ...] = ("collect_result", "gate", "register", "reject")) -> dict:
    """What the last run of `dag_id` decided, from its XComs in the metadata DB."""
    from airflow.models import DagRun
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        run = session.query(DagRun).filter(DagRun.dag_id == dag_id).order_by(
            DagRun.start_date.desc()).first()
        values = {}
        for task_id in task_ids:
            row = session.query(XComModel).filter(XComModel.dag_id == run.dag_id, XComModel.run_id == run.run_id,
                                                  XComModel.task_id == task_id,
                                                  XComModel.key == "return_value").first()
            values[task_id] = XComModel.deserialize_value(row) if row else None
    return values


def main() -> int:
    settings = get_settings()
    raw = stage_sample(settings.data_root)
    dags_test("prepare_dataset", {"source_uris": [raw]})
    print(summary(latest_version(settings.data_root)))
    dags_test("finetune_lifecycle", {})  # registers a challenger; only the rollout moves champion
    out = lifecycle_outcome()
    m = out["collect_result"]["metrics"]
    print(f"training: {m['steps']} steps on {m['world_size']} ranks, loss {m['initial_loss']:.3f} -> "
          f"{m['final_loss']:.3f}; model {out['collect_result']['model_uri']}")
    gate = out["gate"]
    print(f"gate: {'PASSED' if gate['passed'] else 'REJECTED'}"
          + "".join(f"\n  - {r}" for r in gate["reasons"]) + f"\n  report: {gate['report_uri']}")
    for name, value in sorted(gate["means"].items()):
        print(f"  {name} = {value:.4f}")
    if out["register"]:
        r = out["register"]
        print(f"registered: {r['model_name']} version {r['version']} (champion: {r['champion']}), "
              f"weights at {r['source']}")
        rollout(str(r["version"]))
    return 0


def rollout(version: str) -> None:
    """Canary-roll the new version (a first one goes straight to 100 %); print the step tables and aliases."""
    dags_test("rollout_model", {"model_version": version, "steps": [50, 100], "interval_s": 5, "count": 2,
                                "probe_size": 8, "scale_down_delay_s": 2})
    out = lifecycle_outcome("rollout_model", ("analyse", "sync_aliases"))
    verdict, aliases = out["analyse"] or {}, out["sync_aliases"] or {}
    for table in verdict.get("tables", []):
        print(table)
    print(f"rollout: {aliases.get('phase')} ({verdict.get('reason') or 'every step successful'}); "
          f"champion {aliases.get('champion')}, challenger {aliases.get('challenger')}")
    print("serving on 127.0.0.1 (model servers, Envoy, Prometheus): "
          "`python -m include.serving.processes list` / `stop-all`")


if __name__ == "__main__":
    sys.exit(main())
