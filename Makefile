# Cai — the two commands a newcomer needs are `make up` and `make test` (see README.md).
SHELL := bash
.DEFAULT_GOAL := help
export PYTHONDONTWRITEBYTECODE := 1

UV ?= $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
PY := .venv/bin/python
RUN_DIR := .run

.PHONY: help
help: ## List targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk -F':.*?## ' '{printf "  %-14s %s\n", $$1, $$2}'

.PHONY: install
install: ## Install uv, the locked workspace and torch (CPU build) into .venv
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	$(UV) sync --frozen --inexact --all-packages
	@# torch is kept out of the lock: a resolved `torch` is a multi-GB CUDA build. 2.13.0 is a CPU build.
	@$(PY) -c "import torch" 2>/dev/null || python3 -m pip --python $(PY) install --quiet torch==2.13.0

.PHONY: up
up: install ## Start Cai locally (Redis 8, llm-sim, retriever, orchestrator, gateway) and print how to chat
	$(PY) -m cai_devstack up

.PHONY: down
down: ## Stop exactly what `make up` started
	@if [ -x $(PY) ]; then $(PY) -m cai_devstack down; else echo "Nothing was running."; fi

.PHONY: status
status: ## Show which of Cai's local processes are running
	$(PY) -m cai_devstack status

.PHONY: test
test: install proto-check lint ## Everything CI runs: proto check, lint, type check, all tests
	$(PY) -m pytest

.PHONY: test-fast
test-fast: ## Unit and integration tests only (no end-to-end or chaos)
	$(PY) -m pytest -m "not e2e and not chaos"

.PHONY: lock
lock: ## Re-resolve uv.lock
	$(UV) lock

.PHONY: proto
proto: ## Regenerate libs/cai-proto from proto/
	$(PY) -m grpc_tools.protoc -Iproto \
		--python_out=libs/cai-proto/src --grpc_python_out=libs/cai-proto/src \
		--pyi_out=libs/cai-proto/src \
		proto/cai/v1/*.proto

.PHONY: proto-check
proto-check: proto ## Regenerate protos and fail if the committed code differs
	git diff --exit-code -- libs/cai-proto/src

.PHONY: lint
lint: ## ruff + mypy
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy libs/cai-common/src services/gateway/src services/orchestrator/src services/retriever/src tools/llm-sim/src tools/devstack/src

.PHONY: fmt
fmt: ## Format and fix imports
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

-include mk/*.mk
