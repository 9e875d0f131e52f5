# Environment for the local profile; sourced by the Makefile targets, tests and .ci/run.
LLMOPS_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$LLMOPS_ROOT/.airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="$LLMOPS_ROOT/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$LLMOPS_ROOT/plugins"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__UNIT_TEST_MODE="${AIRFLOW__CORE__UNIT_TEST_MODE:-False}"
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="${AIRFLOW__DATABASE__SQL_ALCHEMY_CONN:-sqlite:///$AIRFLOW_HOME/airflow.db}"
export LLMOPS_PROFILE="${LLMOPS_PROFILE:-local}"
export RAGAS_DO_NOT_TRACK=true
export PATH="$LLMOPS_ROOT/.venv/bin:$PATH"
# This checkout first on the import path, ahead of any other checkout an editable install points at.
export PYTHONPATH="$LLMOPS_ROOT${PYTHONPATH:+:$PYTHONPATH}"
