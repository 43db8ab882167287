"""Integrations with job queues and other hosts of notebook runs. Each is a submodule with an
optional extra of its own (``pip install 'notebookops[arq]'`` for :mod:`.arq`); importing
this package imports none of them."""
