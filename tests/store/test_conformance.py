"""Every run store passes the conformance suite (notebookops.testing.stores)."""

from __future__ import annotations

from notebookops.testing.stores import (
    StoreConformance,
    memory_target,
    redis_target,
    sqlite_target,
)


class TestMemoryRunStore(StoreConformance):
    target_factory = staticmethod(memory_target)


class TestSQLiteRunStore(StoreConformance):
    target_factory = staticmethod(sqlite_target)


class TestRedisRunStore(StoreConformance):
    target_factory = staticmethod(redis_target)
