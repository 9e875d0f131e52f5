#!/usr/bin/env bash
# The local Airflow UI with the project's DAGs and the runs `make run` made, on 127.0.0.1 only:
# api-server, scheduler, dag-processor and triggerer (`airflow standalone`). Ctrl-C stops them all.
# Loopback only, so no login: every local user is an admin (simple auth manager).
#
# `airflow standalone` does not stop its components and their LocalExecutor workers when it gets
# SIGTERM, so it runs in a process group (session) of its own, and Ctrl-C, SIGTERM or SIGHUP here
# stop that whole group: TERM, up to STOP_GRACE_S seconds to exit, then KILL. The executor gets one
# worker per core (LLMOPS_UI_PARALLELISM overrides), not Airflow's default of 32.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$LLMOPS_ROOT"
export AIRFLOW__API__HOST=127.0.0.1
export AIRFLOW__API__PORT="${LLMOPS_UI_PORT:-8080}"
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS=True
# nproc honours OMP_NUM_THREADS (the test runner sets it to 1): count the cores without it.
cores="$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)"
export AIRFLOW__CORE__PARALLELISM="${LLMOPS_UI_PARALLELISM:-$cores}"
STOP_GRACE_S="${STOP_GRACE_S:-20}"
# What the UI's runs will need, and its port free: a miss stops here in one line.
python -m include.prereqs check ui "$AIRFLOW__API__PORT"
mkdir -p "$AIRFLOW_HOME"
airflow db migrate > "$AIRFLOW_HOME/db-migrate.log" 2>&1 || { cat "$AIRFLOW_HOME/db-migrate.log"; exit 1; }

# With job control on, a background job gets a process group of its own, with its pid as the group's
# id: everything standalone starts (and what they start) stays in it. Out of the terminal's foreground
# group, a Ctrl-C reaches this script only, which stops the group below.
set -m
airflow standalone < /dev/null &
group=$!
set +m

stop() {
  trap - INT TERM HUP
  kill -TERM -- "-$group" 2>/dev/null || return 0
  for _ in $(seq $((STOP_GRACE_S * 2))); do
    kill -0 -- "-$group" 2>/dev/null || return 0
    sleep 0.5
  done
  echo "Airflow did not stop within ${STOP_GRACE_S}s: killing it" >&2
  kill -KILL -- "-$group" 2>/dev/null || true
}
trap 'stop; exit 130' INT
trap 'stop; exit 143' TERM
trap 'stop; exit 129' HUP

echo "Airflow UI: http://127.0.0.1:$AIRFLOW__API__PORT (starting; Ctrl-C stops it; $AIRFLOW__CORE__PARALLELISM task slots)"
status=0
wait "$group" || status=$?
stop  # standalone exited by itself: take whatever it left behind with it
exit "$status"
