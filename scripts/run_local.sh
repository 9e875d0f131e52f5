#!/usr/bin/env bash
# The lifecycle on the local profile, through real `airflow dags test` runs.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$LLMOPS_ROOT"
mkdir -p "$AIRFLOW_HOME"
airflow db migrate > "$AIRFLOW_HOME/db-migrate.log" 2>&1 || { cat "$AIRFLOW_HOME/db-migrate.log"; exit 1; }
exec python scripts/run_local.py "$@"
