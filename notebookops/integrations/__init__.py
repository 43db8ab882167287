"""Integrations with job engines. Each submodule needs its engine installed
(``notebookops.integrations.airflow``: ``pip install 'notebookops[airflow]'``); importing
``notebookops`` never imports them."""
