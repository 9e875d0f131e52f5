#!/usr/bin/env bash
# The local Airflow UI with the project's DAGs and the runs `make run` made, on 127.0.0.1 only:
# api-server, scheduler, dag-processor and triggerer (`airflow standalone`). Ctrl-C stops them all.
# Loopback only, so no login: every local user is an admin (simple auth manager).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$LLMOPS_ROOT"
export AIRFLOW__API__HOST=127.0.0.1
export AIRFLOW__API__PORT="${LLMOPS_UI_PORT:-8080}"
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS=True
mkdir -p "$AIRFLOW_HOME"
airflow db migrate > "$AIRFLOW_HOME/db-migrate.log" 2>&1 || { cat "$AIRFLOW_HOME/db-migrate.log"; exit 1; }
echo "Airflow UI: http://127.0.0.1:$AIRFLOW__API__PORT (starting; Ctrl-C stops it)"
exec airflow standalone
