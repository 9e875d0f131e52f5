#!/usr/bin/env bash
# The lifecycle on the local profile, through real `airflow dags test` runs.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$LLMOPS_ROOT"
# Everything the whole run needs, checked before the first task: a miss stops here in one line.
python -m include.prereqs check run
mkdir -p "$AIRFLOW_HOME"
airflow db migrate > "$AIRFLOW_HOME/db-migrate.log" 2>&1 || { cat "$AIRFLOW_HOME/db-migrate.log"; exit 1; }
exec python scripts/run_local.py "$@"
