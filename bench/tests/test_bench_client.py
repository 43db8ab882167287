"""``bench/client.py`` builds its backends through the library's public options."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import pytest


@pytest.fixture(scope="module")
def client(load_bench: Callable[[str], ModuleType]) -> ModuleType:
    return load_bench("client.py")


async def test_read_sharing_is_on_by_default_and_can_be_turned_off(client: ModuleType) -> None:
    async with client.deepnote_backend("http://127.0.0.1:1") as shared:
        assert shared.options.share_reads is True
    async with client.deepnote_backend("http://127.0.0.1:1", share=False) as alone:
        assert alone.options.share_reads is False
