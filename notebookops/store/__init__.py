"""Run stores: where ``run_and_wait(key=..., store=...)`` records keyed runs, so that a run is
started once per key across processes, crashes and restarts.

* :class:`SQLiteRunStore` - one file, for the processes of one machine (the CLI's default,
  at :func:`default_store_path`);
* :class:`RedisRunStore` - for workers on many machines (``pip install 'notebookops[redis]'``);
* :class:`MemoryRunStore` - for tests;
* :func:`open_store` - one of these from a URL (``sqlite:///path``, ``redis://host:6379/0``).

Every store passes :class:`notebookops.testing.stores.StoreConformance`.
"""

from __future__ import annotations

from ._base import (
    Claim,
    RecordConflict,
    RecordState,
    RunRecord,
    RunStore,
    StoreCorrupted,
    StoreError,
    StoreUnavailable,
)
from ._memory import MemoryRunStore
from ._open import STORE_URL_FORMS, open_store
from ._redis import DEFAULT_PREFIX, RedisRunStore
from ._sqlite import SQLiteRunStore, default_store_path

__all__ = [
    "DEFAULT_PREFIX",
    "STORE_URL_FORMS",
    "Claim",
    "MemoryRunStore",
    "RecordConflict",
    "RecordState",
    "RedisRunStore",
    "RunRecord",
    "RunStore",
    "SQLiteRunStore",
    "StoreCorrupted",
    "StoreError",
    "StoreUnavailable",
    "default_store_path",
    "open_store",
]
