# The two commands a fresh machine needs: `make run` (the lifecycle on the local profile) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test ui lint bench clean

$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt -c constraints.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python scripts/install_kubectl.py
	bash scripts/install_checkov.sh
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	bash scripts/run_local.sh

test: $(STAMP)
	bash scripts/test.sh

ui: $(STAMP)
	bash scripts/ui.sh

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	bash -c 'source scripts/env.sh && python benchmarks/dataprep.py && python benchmarks/eval.py'

clean:
	rm -rf .airflow .data .mlflow
