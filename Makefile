# cvplatform: two commands on a fresh machine.
#   make demo   -> creates .venv, installs everything, runs the pipeline on the built-in digits source
#   make test   -> same install, then the whole test suite
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TORCH  ?= torch==2.13.0
PYTEST_ARGS ?=
TASK ?= classification

.PHONY: setup demo test test-fast lint bench airflow stack stack-down stack-status serve clean

setup: $(STAMP)

# torch first (the local CPU build), then everything else under the pinned constraints so pip
# never pulls a CUDA build of torch.
$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -c requirements/constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m cvplatform.demo --task $(TASK)

# tests/dags runs in its own pytest process: dag.test() leaves Airflow's in-process API thread
# running, and fork()-based workers (DataLoader, ingest pool) started after it can deadlock.
test: $(STAMP)
	$(BIN)/ruff check cvplatform dags tests benchmarks
	$(BIN)/python -m pytest --ignore=tests/dags $(PYTEST_ARGS)
	$(BIN)/python -m pytest tests/dags $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not integration and not e2e" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check cvplatform dags tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/ingest.py
	$(BIN)/python benchmarks/train.py
	$(BIN)/python benchmarks/evaluate.py
	$(BIN)/python benchmarks/inference.py
	$(BIN)/python benchmarks/serving.py
	$(BIN)/python benchmarks/serving.py --threads 0 --out benchmarks/results/serving-threads0.json
	$(BIN)/python benchmarks/serving.py --hot-path
	$(BIN)/python benchmarks/dag_parse.py
	$(BIN)/python benchmarks/detection.py

# A real local Airflow 3 (api-server, scheduler, dag-processor, triggerer) on SQLite, bound to 127.0.0.1:
# AIRFLOW_HOME=airflow_home/, users admin/alice/bob, passwords printed on start; Ctrl-C stops it.
airflow: $(STAMP)
	$(BIN)/python -m cvplatform.airflow_local $(AIRFLOW_ARGS)

# The production topology on this machine (configs/stack.yaml): local S3 (moto), MLflow server on PostgreSQL with
# S3 artifacts and its auth app, DVC default remote on S3 (.dvc/config.local), two serving replicas behind a
# balancer, Airflow 3 with the CeleryExecutor (api-server, scheduler, dag-processor, triggerer, two Celery workers on
# the machine's Redis, each in its own clone of the project). Child processes with pid files and logs under .cvplatform/stack/; `make stack` again says it runs.
# `make stack-down` stops all of them; PURGE=1 also drops the stack's databases, its Celery queue keys in Redis and its state folder.
STACK_ARGS ?=
stack: $(STAMP)
	$(BIN)/python -m cvplatform.stack up $(STACK_ARGS)

stack-down:
	$(BIN)/python -m cvplatform.stack down $(STACK_ARGS) $(if $(PURGE),--purge,)

stack-status:
	$(BIN)/python -m cvplatform.stack status $(STACK_ARGS)

clean:
	rm -rf $(VENV) artifacts data/raw data/quarantine data/processed .pytest_cache
