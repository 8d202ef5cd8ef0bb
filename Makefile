# keel — the two commands a newcomer needs are `make demo` and `make test`; both set up what they need.
SHELL := /bin/bash
VENV  := .venv
KEEL  := $(VENV)/bin/keel
export PATH := $(CURDIR)/.keel/bin:$(PATH)
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export RAY_AUTH_MODE := disabled

.PHONY: setup demo test lint clean down lock bench help

help:
	@echo "make demo   - set up, start the local stack and run the platform's main job"
	@echo "make test   - set up and run lint + all tests (real services on loopback)"
	@echo "make setup  - install venvs, system services, helm/kubectl (idempotent)"
	@echo "make bench  - benchmarks (not part of test); results in bench/results/"
	@echo "make lint   - ruff"
	@echo "make down   - stop the local stack"
	@echo "make clean  - stop the stack and remove venvs and state"
	@echo "make lock   - re-resolve platform/locks/*.txt from *.in (a deliberate commit)"

setup:
	@bash platform/scripts/setup.sh all

demo: setup
	@$(KEEL) demo

test: setup
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/python -m pytest

bench: setup
	@$(VENV)/bin/python bench/serving.py

lint: setup
	@$(VENV)/bin/ruff check .

down:
	@if [ -x $(KEEL) ]; then $(KEEL) down; fi

clean: down
	rm -rf .keel .venv .venv-airflow .pytest_cache .ruff_cache

lock: setup
	.keel/bootstrap/bin/uv pip compile --python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
	  platform/locks/core.in -o platform/locks/core.txt --no-header --quiet
	.keel/bootstrap/bin/uv pip compile --python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
	  platform/locks/airflow.in -o platform/locks/airflow.txt --no-header --quiet
