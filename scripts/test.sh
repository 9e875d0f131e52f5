#!/usr/bin/env bash
# Lint, then every test: unit, DAG integrity, integration (servers on 127.0.0.1), e2e (real Airflow runs).
# Two test processes share the machine (most e2e time is spent waiting on schedulers, triggers and
# servers), each handed one test module at a time, the e2e ones first (tests/conftest.py); the tests marked
# `serial` measure latency or timing, so they run afterwards, alone.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$LLMOPS_ROOT"
ruff check . || exit 1
if [ "${1:-}" = "--fast" ]; then  # make test-fast: the edit loop, nothing that starts a server or scheduler
  shift
  OMP_NUM_THREADS=1 exec python -m pytest -n 2 -m "not slow and not serial" tests/unit tests/dags tests/platforms "$@"
fi
ok() { [ "$1" -eq 0 ] || [ "$1" -eq 5 ]; }  # 5: nothing collected in that part (a narrowed run)
# The eks profile's control plane (tests/cluster): its first build on a machine takes minutes, so it
# starts now, under nice, and overlaps the end-to-end tests; the cluster fixture waits for it (a lock).
mkdir -p test-artifacts
if [ $# -eq 0 ] || [[ "$*" == *tests/cluster* ]]; then
  bash scripts/build_control_plane.sh > test-artifacts/control-plane-build.log 2>&1 &
fi
# The cluster tests record every Kubernetes call the code makes; the coverage check (serial) reads them.
export LLMOPS_K8S_CALLS="$LLMOPS_ROOT/test-artifacts/k8s-calls.jsonl"
rm -f "$LLMOPS_K8S_CALLS"
# One intra-op thread per process: with two busy test processes, OpenMP's and OpenBLAS' spinning
# threads fight over the cores (a 150-step fit: 12 s wall with two threads, 7 s with one, measured under load).
OMP_NUM_THREADS=1 python -m pytest -n "${LLMOPS_TEST_WORKERS:-2}" --dist loadscope --no-loadscope-reorder -m "not serial" "$@"; parallel=$?
python -m pytest -m serial "$@"; serial=$?
ok "$parallel" && ok "$serial"
