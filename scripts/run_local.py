"""Stage the shipped sample, run the lifecycle DAGs with `airflow dags test`, print what they made.

Commands are argument lists: nothing here goes through a shell.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from include.data.catalog import latest_version, summary
from include.sample_data import stage_sample
from include.settings import get_settings


def dags_test(dag_id: str, conf: dict) -> None:
    cmd = ["airflow", "dags", "test", dag_id, "--conf", json.dumps(conf)]
    print(f"$ {' '.join(cmd[:4])} --conf '{cmd[5]}'", flush=True)
    log = Path(os.environ["AIRFLOW_HOME"]) / f"{dag_id}.log"
    with open(log, "w") as out:
        result = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        sys.stdout.write(log.read_text()[-20000:])
        raise SystemExit(f"{dag_id} failed (exit {result.returncode}); full log: {log}")
    print(f"  {dag_id}: success (log: {log})")


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
