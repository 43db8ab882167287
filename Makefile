# The two commands the README promises, plus CI's variant.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Exits non-zero unless the interpreter runs and is new enough for notebookops.
NEW_ENOUGH := -c 'import sys; sys.exit(sys.version_info < (3, 11))'

.PHONY: venv setup test test-stalled lint demo

# The virtualenv, (re)built when its Python does not run or is too old (made by another
# Python, or that Python was removed): such a .venv would otherwise stay broken.
venv:
	@if ! $(BIN)/python $(NEW_ENOUGH) 2>/dev/null; then \
		if ! $(PYTHON) $(NEW_ENOUGH); then \
			echo "notebookops needs Python 3.11 or newer; $(PYTHON) is older." \
				"Try: make $(MAKECMDGOALS) PYTHON=python3.11" >&2; \
			exit 1; \
		fi; \
		if [ -e $(VENV) ]; then \
			echo "$(VENV) has no working Python 3.11+: rebuilding it with $(PYTHON)" >&2; \
		fi; \
		rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); \
	fi

setup: venv
	$(BIN)/python -m pip install --quiet -e ".[dev]"

# Run the bundled notebook on the local backend: no account, no network beyond PyPI, and
# only what the demo needs (the `local` extra, not the development tools).
demo: venv
	$(BIN)/python -m pip install --quiet -e ".[local]"
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
