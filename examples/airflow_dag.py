"""An Airflow DAG that runs a notebook on each vendor, one deferrable task per vendor.

Try it against the sandbox (no account, no Airflow scheduler needed)::

    pip install 'notebookops[airflow]'
    eval "$(notebookops sandbox --print-env)"   # fake Deepnote, PostHog and Datalore servers
    airflow db migrate                          # once: Airflow's metadata database
    python examples/airflow_dag.py              # dag.test(): runs the three tasks here
    kill "$NOTEBOOKOPS_SANDBOX_PID"

The notebooks come from ``DEEPNOTE_NOTEBOOK_ID``, ``POSTHOG_NOTEBOOK_ID`` and
``DATALORE_NOTEBOOK_ID`` (the sandbox sets them), the credentials from each vendor's
environment variables (or pass ``conn_id=`` naming a ``notebookops`` connection). Dropped in a
DAG folder, each task starts its run once, waits for it in the triggerer, and pushes the final
run's summary (state, url, outputs) to XCom.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow import DAG

from notebookops.integrations.airflow import NotebookRunOperator

with DAG(
    "notebookops_example",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    default_args={
        "retries": 2,
        "retry_delay": timedelta(seconds=30),
        "execution_timeout": timedelta(minutes=30),
    },
) as dag:
    for vendor in ("deepnote", "posthog", "datalore"):
        notebook = os.environ.get(f"{vendor.upper()}_NOTEBOOK_ID", "hello")
        NotebookRunOperator(
            task_id=vendor,
            target=f"{vendor}:{notebook}",
            inputs={"name": "Airflow"},
        )

if __name__ == "__main__":
    dag.test()
