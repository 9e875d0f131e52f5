#!/usr/bin/env bash
# Lint, then every test: unit, DAG integrity, integration (servers on 127.0.0.1), e2e (real Airflow runs).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$LLMOPS_ROOT"
ruff check .
python -m pytest "$@"
