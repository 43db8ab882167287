# The two commands the README promises, plus CI's variant.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup test test-stalled lint demo

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

setup: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"

# Run the bundled notebook on the local backend: no account, no network beyond PyPI.
demo: setup
	$(BIN)/python examples/local_run.py

# Run the test suite (sets up the virtualenv first), one worker per core: the tests are
# independent (loopback servers on ephemeral ports, no shared files).
test: setup
	$(BIN)/python -m pytest -n auto

# The suite with the event loop stalled at random (.ci/stall.py): finds tests that only pass
# on a quick machine. Slower (about 4 minutes), and not part of CI.
test-stalled: setup
	PYTHONPATH=.ci $(BIN)/python -m pytest -n auto -p stall -p no:cacheprovider


lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy
