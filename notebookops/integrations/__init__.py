"""Integrations with job engines: :mod:`.arq` (``pip install 'notebookops[arq]'``) and
:mod:`.airflow` (``pip install 'notebookops[airflow]'``). Importing this package, or
``notebookops``, imports none of them."""
