# Set-up and checks for a fresh machine with Python 3.11+.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-docker lint typecheck pytest demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check eventsourcing runners examples tests

typecheck: $(STAMP)
	$(BIN)/mypy eventsourcing runners examples

pytest: $(STAMP)
	$(BIN)/pytest -q tests --ignore=tests/benchmarks

test: lint typecheck pytest

# The image built and the compose file run for real: needs a Docker daemon.
test-docker: $(STAMP)
	$(BIN)/pytest -q -m docker tests/deploy

demo: $(STAMP)
	$(BIN)/python -m examples.paxos demo

bench: $(STAMP)
	$(BIN)/python tests/benchmarks/run.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
