# The README's two commands: `make demo` (the main job) and `make test` (the tests).
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup services demo test lint format

setup:
	@bash scripts/setup_venv.sh

# The real servers the tests start (Redis, Prometheus, Chromium), installed when missing.
services:
	@bash scripts/setup_services.sh

demo: setup
	$(BIN)/latlab bench --backend transformers,latlab --concurrency 1,4,16

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint services
	$(BIN)/python -m pytest
