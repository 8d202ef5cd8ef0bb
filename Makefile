# keel — the two commands a newcomer needs are `make demo` and `make test`; both set up what they need.
SHELL := /bin/bash
VENV  := .venv
KEEL  := $(VENV)/bin/keel
export PATH := $(CURDIR)/.keel/bin:$(PATH)
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export RAY_AUTH_MODE := disabled

.PHONY: setup demo test lint clean down lock bench help cluster-prereqs images

help:
	@echo "make demo   - set up, start the local stack and run the platform's main job"
	@echo "make test   - set up and run lint + all tests (real services on loopback)"
	@echo "make setup  - install venvs, system services, helm/kubectl (idempotent)"
	@echo "make bench  - benchmarks vs the peers' software (not part of test; BENCH=full for the record)"
	@echo "make lint   - ruff"
	@echo "make down   - stop the local stack"
	@echo "make clean  - stop the stack and remove venvs and state"
	@echo "make lock   - re-resolve platform/locks/*.txt from *.in (a deliberate commit)"
	@echo "make cluster-prereqs - install the operators the chart needs into the current kube context"

setup:
	@bash platform/scripts/setup.sh all

# the project `make demo` runs (any directory holding a keel.yaml)
PROJECT ?= examples/fraud
demo: setup
	@KEEL_PROJECT=$${KEEL_PROJECT:-$(PROJECT)} $(KEEL) demo

test: setup
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/python -m pytest

# make bench [BENCH=full] [ONLY=online,saturation,hang,oversize,batch,materialize,pit,pit_ray,rediscluster,drift]
BENCH ?= quick
bench: setup
	@bash platform/scripts/setup.sh bench
	@$(VENV)/bin/python -m bench.run --profile $(BENCH) $(if $(ONLY),--only $(ONLY),)

# Container images (platform/Dockerfile) with buildah from a locally bootstrapped Debian base; needs root,
# `apt-get install buildah debootstrap`, ~15 min. Never part of `make test`.
images:
	bash platform/scripts/images.sh

lint: setup
	@$(VENV)/bin/ruff check .

down:
	@if [ -x $(KEEL) ]; then KEEL_PROJECT=$${KEEL_PROJECT:-$(PROJECT)} $(KEEL) down; fi

clean: down
	rm -rf .keel .venv .venv-airflow .pytest_cache .ruff_cache

lock: setup
	.keel/bootstrap/bin/uv pip compile --python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
	  platform/locks/core.in -o platform/locks/core.txt --no-header --quiet
	.keel/bootstrap/bin/uv pip compile --python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
	  platform/locks/airflow.in -o platform/locks/airflow.txt --no-header --quiet
	.keel/bootstrap/bin/uv pip compile --python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
	  platform/locks/mlserver.in -o platform/locks/mlserver.txt --no-header --quiet

# Operators the chart plugs into, pinned (see charts/keel/README.md). Needs network and a kube context;
# never part of `make test`.
cluster-prereqs: setup
	helm repo add jetstack https://charts.jetstack.io --force-update
	helm repo add kedacore https://kedacore.github.io/charts --force-update
	helm repo add kuberay https://ray-project.github.io/kuberay-helm/ --force-update
	helm repo add prometheus-community https://prometheus-community.github.io/helm-charts --force-update
	helm upgrade --install cert-manager jetstack/cert-manager --version v1.19.1 -n cert-manager --create-namespace \
	  --set crds.enabled=true --wait
	helm upgrade --install kserve-crd oci://ghcr.io/kserve/charts/kserve-crd --version v0.20.0 -n kserve \
	  --create-namespace --wait
	helm upgrade --install kserve oci://ghcr.io/kserve/charts/kserve --version v0.20.0 -n kserve \
	  --set kserve.controller.deploymentMode=RawDeployment --wait
	helm upgrade --install keda kedacore/keda --version 2.20.2 -n keda --create-namespace --wait
	helm upgrade --install kuberay-operator kuberay/kuberay-operator --version 1.7.0 -n kuberay --create-namespace --wait
	helm upgrade --install kube-prometheus-stack prometheus-community/kube-prometheus-stack --version 79.5.0 \
	  -n monitoring --create-namespace --wait
