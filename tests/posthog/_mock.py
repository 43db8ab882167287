"""Helpers to assert the exact requests a backend sent through aioresponses.

(tests/conftest.py makes aioresponses build responses aiohttp 3.14 accepts.)
"""

from __future__ import annotations

from typing import Any

from aioresponses import aioresponses
from yarl import URL

from notebookops.backends.posthog import PostHogBackend
from notebookops.policies import RetryPolicy

__all__ = ["BASE", "HOST", "KEY", "PROJECT", "aioresponses", "calls", "make_backend", "only_call"]

HOST = "https://ph.example"
KEY = "phx_test_secret_key"
PROJECT = "7"
BASE = f"{HOST}/api/projects/{PROJECT}/notebooks/"
NO_BODY = object()


def make_backend(**kwargs: Any) -> PostHogBackend:
    kwargs.setdefault("retry", RetryPolicy(max_attempts=2, initial_backoff=0.01, max_backoff=0.02))
    kwargs.setdefault("base_url", HOST)
    return PostHogBackend(KEY, project_id=PROJECT, **kwargs)


def calls(mocked: Any, method: str, url: str) -> list[Any]:
    # aioresponses records requests under the URL with its query sorted.
    parsed = URL(url)
    key = (method, parsed.with_query(sorted(parsed.query.items())))
    return list(mocked.requests.get(key, []))


def only_call(
    mocked: Any,
    method: str,
    url: str,
    *,
    json: Any = NO_BODY,
    headers: dict[str, str] | None = None,
) -> Any:
    """The single request sent to ``method url``; checks auth, JSON body and headers."""
    sent = calls(mocked, method, url)
    assert len(sent) == 1, f"expected one {method} {url}, got {len(sent)}: {list(mocked.requests)}"
    call = sent[0]
    assert call.kwargs["headers"]["Authorization"] == f"Bearer {KEY}"
    if json is not NO_BODY:
        assert call.kwargs.get("json") == json
    for name, value in (headers or {}).items():
        assert call.kwargs["headers"].get(name) == value
    return call
