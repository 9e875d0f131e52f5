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


def lifecycle_outcome() -> dict:
    """What the last finetune_lifecycle run decided, from its XComs in the metadata DB."""
    from airflow.models import DagRun
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        run = session.query(DagRun).filter(DagRun.dag_id == "finetune_lifecycle").order_by(
            DagRun.start_date.desc()).first()
        values = {}
        for task_id in ("collect_result", "gate", "register", "reject"):
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
    dags_test("finetune_lifecycle", {})
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
