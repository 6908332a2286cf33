# The virtualenv lives at .venv; `.venv/bin/ingest` is the console script.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: all install lint typecheck test run bench clean

all: install

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check ingest tests tools
	$(BIN)/ruff format --check ingest tests tools

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest -q tests

# Development run: starts the real emulator in the background unless
# PUBSUB_EMULATOR_HOST is set, creates the topic, serves on dev defaults.
run: $(STAMP)
	$(BIN)/python -m tools.devrun

bench: $(STAMP)
	$(BIN)/python -m tools.bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build *.egg-info
