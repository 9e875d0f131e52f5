# The two commands a fresh machine needs: `make run` (the lifecycle on the local profile) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install system run test test-fast ui cluster mlflow lint bench clean

$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml scripts/install_kubectl.py scripts/install_checkov.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt -c constraints.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python scripts/install_kubectl.py
	bash scripts/install_checkov.sh
	touch $(STAMP)

# Everything both commands need, the machine's programs first (include/prereqs.py: Debian's packages,
# with sudo when not root); a check that takes milliseconds when nothing is missing.
install: system $(STAMP)

system:
	@$(PYTHON) -m include.prereqs install

run: install
	bash scripts/run_local.sh

test: install
	bash scripts/test.sh

# The edit loop: lint, unit and DAG tests, no servers or schedulers (under 3 minutes).
test-fast: install
	bash scripts/test.sh --fast

ui: install
	bash scripts/ui.sh

# The eks profile's proving ground for a person: a local Kubernetes control plane with k8s/ applied,
# built from the Go module proxy on first use (minutes), until Ctrl-C. make test starts its own.
cluster: install
	bash -c 'source scripts/env.sh && exec python scripts/cluster.py'

mlflow: install
	bash -c 'source scripts/env.sh && exec mlflow ui --host 127.0.0.1 --port 5000 --backend-store-uri "$${LLMOPS_MLFLOW_TRACKING_URI:-sqlite:///$$LLMOPS_ROOT/.mlflow/mlflow.db}"'

lint: install
	$(BIN)/ruff check .

bench: install
	bash -c 'source scripts/env.sh && python benchmarks/dataprep.py && python benchmarks/eval.py'

clean:
	rm -rf .airflow .data .mlflow
