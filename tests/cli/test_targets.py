"""notebookops.targets: the backend a target names, from explicit credentials or the
environment."""

from __future__ import annotations

import pytest

from notebookops.backends.datalore import DataloreBackend
from notebookops.backends.deepnote import DeepnoteBackend
from notebookops.backends.posthog import PostHogBackend
from notebookops.errors import ConfigurationError
from notebookops.targets import backend_for_target


async def test_explicit_credentials_build_each_vendor() -> None:
    backend, notebook = backend_for_target(
        "deepnote:nb1", token="t0k3n-deepnote", base_url="http://127.0.0.1:9"
    )
    assert isinstance(backend, DeepnoteBackend)
    assert (notebook, backend.base_url) == ("nb1", "http://127.0.0.1:9")
    await backend.aclose()
    backend, notebook = backend_for_target(
        "posthog:abc",
        token="phx_t0k3n",
        base_url="http://127.0.0.1:9",
        posthog_mode="server",
        posthog_project_id="7",
    )
    assert isinstance(backend, PostHogBackend)
    assert (notebook, backend.mode, backend.project_id) == ("abc", "server", "7")
    await backend.aclose()
    backend, notebook = backend_for_target("datalore:me/nb", token="t", base_url="http://[::1]:9")
    assert isinstance(backend, DataloreBackend)
    assert notebook == "me/nb"
    await backend.aclose()


async def test_missing_credentials_fall_back_to_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATALORE_TOKEN", "from-the-env")
    monkeypatch.setenv("DATALORE_URL", "http://127.0.0.1:8")
    backend, _ = backend_for_target("datalore:me/nb")
    assert isinstance(backend, DataloreBackend)
    assert backend.base_url == "http://127.0.0.1:8"
    await backend.aclose()


def test_bad_targets_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="unknown backend"):
        backend_for_target("hex:abc")
    with pytest.raises(ConfigurationError, match="no token or base URL"):
        backend_for_target("local:nb.ipynb", token="t")
