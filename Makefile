# codeexec-operator: one entry point for humans and CI.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV    ?= .venv
PY      := $(VENV)/bin/python
PYTEST  := $(VENV)/bin/pytest
CLUSTER ?= $(CURDIR)/.cluster
export KUBECONFIG ?= $(CLUSTER)/kubeconfig

# The pinned versions; our own kubectl and crictl come first on PATH (a foreign kubectl may
# be installed system-wide).
include e2e/cluster/versions.env
CODEEXEC_CACHE ?= $(HOME)/.cache/codeexec
export PATH := $(CODEEXEC_CACHE)/bin/kubernetes-$(K8S_VERSION):$(CODEEXEC_CACHE)/bin/cri-tools-$(CRI_TOOLS_VERSION):$(PATH)

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk -F':.*?## ' '{printf "  %-16s %s\n", $$1, $$2}'

# Constrained by the image's lock: the tests run the versions the operator image ships.
$(VENV)/.installed: pyproject.toml images/operator/requirements.lock
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -c images/operator/requirements.lock -e '.[dev]'
	touch $@

.PHONY: venv
venv: $(VENV)/.installed ## create the virtualenv with the operator and its dev tools

.PHONY: lint
lint: venv ## ruff and mypy
	$(VENV)/bin/ruff check operator tests e2e images bench
	$(VENV)/bin/mypy

.PHONY: unit
unit: venv ## tests that need no cluster (pure logic and the in-pod runners with real processes)
	$(PYTEST) -q tests/unit tests/runner

.PHONY: cluster-up
cluster-up: ## bring up the local single-node Kubernetes (KIND=1 for kind)
	bash e2e/cluster/up.sh

.PHONY: cluster-down
cluster-down: ## stop the local cluster and remove its state
	bash e2e/cluster/down.sh

.PHONY: images
images: ## build the project's images and load them into the cluster
	bash e2e/cluster/images.sh

.PHONY: tools
tools: ## build helm from the Go module proxy into ~/.cache/codeexec/bin
	bash e2e/tools.sh

.PHONY: integration
integration: venv tools cluster-up images ## integration and end-to-end tests against the real cluster
	$(PYTEST) -q tests/integration e2e

.PHONY: bench-deps
bench-deps: venv
	$(VENV)/bin/pip install -q 'matplotlib>=3.8' 'py-spy>=0.4'

.PHONY: bench
bench: bench-deps cluster-up images ## warm vs cold latency, throughput vs raw pod churn, operator cost, autoscaled pools -> bench/results.*
	$(PY) -m bench
	$(PY) -m bench.statuswrite
	$(PY) -m bench.capacity

.PHONY: chaos
chaos: venv tools cluster-up images ## executions under fire: operator kills, pod deletions, 7 cluster faults (disruptive)
	$(PY) -m bench.chaos

.PHONY: scale
scale: venv cluster-up images ## 5,000 finished + 200 pending executions, operator restart: time to ready, RSS, requests
	$(PY) -m bench.scale

.PHONY: soak
soak: venv cluster-up images ## 200 warm pods held idle for an hour, operator restart: memory per held pod, re-hold time
	$(PY) -m bench.soak

.PHONY: fairness
fairness: venv cluster-up images ## tenant A submits 200, then B 5: the order of claims and ends; a cap of 2 holds
	$(PY) -m bench.fairness

.PHONY: bench-smoke
bench-smoke: bench-deps tools cluster-up images ## short bench, chaos, scale and soak runs (results in bench/*.tmp)
	$(PY) -m bench --smoke
	$(PY) -m bench.capacity --smoke
	$(PY) -m bench.chaos --smoke
	$(PY) -m bench.scale --smoke
	$(PY) -m bench.soak --smoke

.PHONY: demo
demo: venv ## the chart on a cluster (the local one, or KUBECONFIG's), every example, a results table
	CLUSTER=$(CLUSTER) bash e2e/demo.sh

.PHONY: lock
lock: ## re-pin the operator image's dependencies (images/operator/requirements.lock)
	rm -rf $(CURDIR)/.lockenv && python3 -m venv $(CURDIR)/.lockenv
	$(CURDIR)/.lockenv/bin/pip install -q '.[operator]'
	{ sed -n '1,3p' images/operator/requirements.lock; \
	  $(CURDIR)/.lockenv/bin/pip freeze --exclude codeexec-operator; } > images/operator/requirements.lock.new
	mv images/operator/requirements.lock.new images/operator/requirements.lock
	rm -rf $(CURDIR)/.lockenv

.PHONY: docs
docs: venv ## regenerate docs/api.md from crds/, copy the CRDs into the chart, the chart README's values table
	$(PY) -m codeexec.apidocs --crds crds --out docs/api.md
	cp crds/*.yaml charts/codeexec-operator/crds/
	$(PY) -m codeexec.chartdocs --values charts/codeexec-operator/values.yaml \
	  --readme charts/codeexec-operator/README.md

.PHONY: crds
crds: ## apply the CRDs to KUBECONFIG's cluster (Helm never upgrades them: docs/upgrading.md)
	kubectl apply --server-side --force-conflicts -f crds/
	kubectl wait --for=condition=Established --timeout=60s \
	  crd/codeexecutions.codeexec.io crd/sandboxpools.codeexec.io

.PHONY: test
test: lint unit integration ## everything CI runs
