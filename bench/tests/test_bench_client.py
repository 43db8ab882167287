"""``bench/client.py`` builds its backends through options that differ between versions of
the library (read sharing: ``share_reads`` or ``share_polls``; PostHog's origin: ``base_url``
or ``host``): it passes whichever the library has, so one harness measures both."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest


@pytest.fixture(scope="module")
def client(load_bench: Callable[[str], ModuleType]) -> ModuleType:
    return load_bench("client.py")


class _Recorder:
    """Stands in for a backend class: remembers how it was made."""

    made: dict[str, Any]

    def __init__(self, token: str, **options: Any) -> None:
        type(self).made = {"token": token, **options}


class _Newer(_Recorder):
    def __init__(self, token: str, *, base_url: str, share_reads: bool = True) -> None:
        super().__init__(token, base_url=base_url, share_reads=share_reads)


class _Older(_Recorder):
    def __init__(self, token: str, *, base_url: str, share_polls: bool = True) -> None:
        super().__init__(token, base_url=base_url, share_polls=share_polls)


class _Neither(_Recorder):
    def __init__(self, token: str, *, base_url: str) -> None:
        super().__init__(token, base_url=base_url)


@pytest.mark.parametrize(("backend", "option"), [(_Newer, "share_reads"), (_Older, "share_polls")])
def test_read_sharing_is_turned_off_by_the_option_the_library_has(
    client: ModuleType, monkeypatch: pytest.MonkeyPatch, backend: type[_Recorder], option: str
) -> None:
    monkeypatch.setattr(client, "DeepnoteBackend", backend)
    client.deepnote_backend("http://127.0.0.1:1", share=False)
    assert backend.made == {"token": client.TOKEN, "base_url": "http://127.0.0.1:1", option: False}
    client.deepnote_backend("http://127.0.0.1:1")  # the defaults: the class's own default
    assert backend.made[option] is True


def test_a_library_without_a_sharing_option_is_refused(
    client: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client, "DeepnoteBackend", _Neither)
    with pytest.raises(SystemExit, match="share_reads"):
        client.deepnote_backend("http://127.0.0.1:1", share=False)


def test_the_current_library_takes_one_of_the_sharing_options(client: ModuleType) -> None:
    import inspect

    from notebookops.backends.deepnote import DeepnoteBackend

    accepted = inspect.signature(DeepnoteBackend).parameters
    assert any(option in accepted for option in client.SHARING_OPTIONS)
