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


def main() -> int:
    settings = get_settings()
    raw = stage_sample(settings.data_root)
    dags_test("prepare_dataset", {"source_uris": [raw]})
    print(summary(latest_version(settings.data_root)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
