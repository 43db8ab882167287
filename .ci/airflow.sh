#!/usr/bin/env bash
# The Airflow integration's tests, in a virtualenv of their own (.venv-airflow): Airflow pins
# and pulls in much (SQLAlchemy 1.4, Flask...) that the main development environment should
# not carry. About 75 s to install on a 2-core CI machine, 30 s to test.
set -euo pipefail
cd "$(dirname "$0")/.."

AIRFLOW_VENV="${AIRFLOW_VENV:-.venv-airflow}"
# The newest Airflow whose dag.test() runs a deferred task on SQLite here without a DAG
# folder; the extra allows >=2.9.
AIRFLOW_VERSION="2.10.5"

if ! "$AIRFLOW_VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    rm -rf "$AIRFLOW_VENV"
    python3 -m venv "$AIRFLOW_VENV"
fi
"$AIRFLOW_VENV/bin/python" -m pip install --quiet -e ".[testing]" \
    "apache-airflow==$AIRFLOW_VERSION" "pytest-asyncio>=0.24" -c .ci/airflow-constraints.txt
# Every test runs: CI=1 turns a missing dependency into a failure, never a skip.
CI="${CI:-1}" "$AIRFLOW_VENV/bin/python" -m pytest -q integration_tests/airflow "$@"
