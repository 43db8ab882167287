"""Tests of the benchmark harness (``bench/``), kept apart from the library's suite.

Run them from the repository root with ``python -m pytest bench/tests``: they start
``bench/server.py`` and ``bench/client.py`` processes on loopback and take about half a
minute.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def load_bench() -> Callable[[str], ModuleType]:
    """Load one of ``bench/``'s scripts as a module, under a name of its own (they import
    their siblings by name, so ``bench/`` leads ``sys.path`` while one loads)."""

    def load(script: str) -> ModuleType:
        sys.path.insert(0, str(BENCH))
        try:
            spec = importlib.util.spec_from_file_location(f"bench_{script[:-3]}", BENCH / script)
            assert spec is not None
            assert spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        finally:
            sys.path.remove(str(BENCH))
        return module

    return load
