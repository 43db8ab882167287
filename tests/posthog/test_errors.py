"""Every PostHog error shape lands on the right class of the error tree, with PostHog's words."""

from __future__ import annotations

from typing import Any

import pytest

from notebookops._api_errors import build_api_error
from notebookops.backends.posthog import (
    CollabConflict,
    CollabStale,
    MissingScope,
    ScopedKeyNotAllowed,
    VersionConflict,
)
from notebookops.backends.posthog._requests import (
    PROFILE,
    error_message,
    retry_after_from_body,
)
from notebookops.errors import (
    APIError,
    AuthenticationError,
    BadRequest,
    Conflict,
    NotFound,
    PermissionDenied,
    RateLimited,
    ResponseDecodeError,
    ServerError,
)

from ._mock import BASE, KEY, aioresponses, make_backend

NB = f"{BASE}nb/"


def build(
    status: int, body: Any, *, method: str = "GET", headers: dict[str, str] | None = None
) -> APIError:
    import json

    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return build_api_error(
        PROFILE, status=status, method=method, url=NB, headers=headers or {}, body=raw
    )


def test_standard_shape_keeps_detail_attr_and_code() -> None:
    error = build(
        400,
        {
            "type": "validation_error",
            "code": "required",
            "detail": "This field is required.",
            "attr": "code",
        },
        method="POST",
    )
    assert isinstance(error, BadRequest)
    assert "This field is required. (field: code) [required]" in str(error)
    assert error.data["attr"] == "code"  # type: ignore[index]
    missing = build(
        404, {"type": "invalid_request", "code": "not_found", "detail": "Not found.", "attr": None}
    )
    assert isinstance(missing, NotFound)
    assert str(missing).endswith("returned 404: Not found.")


@pytest.mark.parametrize(
    ("status", "body", "cls", "words"),
    [
        (503, {"detail": "Failed to start notebook kernel."}, ServerError, "Failed to start"),
        (400, {"detail": "recording_id is required"}, BadRequest, "recording_id is required"),
        (400, {"error": "Syntax error at line 1"}, BadRequest, "Syntax error at line 1"),
        (400, {"code": "weird_code"}, BadRequest, "weird_code"),
        (
            401,
            {
                "type": "authentication_error",
                "code": "not_authenticated",
                "detail": "Authentication credentials were not provided.",
                "attr": None,
            },
            AuthenticationError,
            "credentials were not provided",
        ),
        (502, b"<html><h1>502 Bad Gateway</h1></html>", ServerError, "HTML error page"),
        (500, b"", ServerError, "no details given"),
        (405, b"", APIError, "no details given"),
    ],
)
def test_hand_written_shapes(status: int, body: Any, cls: type[APIError], words: str) -> None:
    error = build(status, body)
    assert type(error) is cls
    assert words in str(error)


def test_collab_conflict_carries_the_servers_data() -> None:
    error = build(
        409,
        {"code": "conflict", "steps": [{"s": 1}, {"s": 2}], "client_ids": ["a", "b"], "version": 9},
        method="POST",
    )
    assert isinstance(error, CollabConflict)
    assert isinstance(error, Conflict)
    assert error.steps == [{"s": 1}, {"s": 2}]
    assert error.client_ids == ["a", "b"]
    assert error.version == 9
    assert error.updates == []
    assert "2 missed change(s); server version 9" in str(error)
    markdown = build(
        409, {"code": "conflict", "updates": [{"version": 3}], "version": 3}, method="POST"
    )
    assert isinstance(markdown, CollabConflict)
    assert markdown.updates == [{"version": 3}]
    assert markdown.steps == []


def test_collab_stale_is_its_own_error() -> None:
    error = build(410, {"code": "conflict_stale"}, method="POST")
    assert isinstance(error, CollabStale)
    assert not isinstance(error, Conflict)
    assert "read the notebook again" in str(error)


def test_patch_conflict_is_a_version_conflict_but_other_409s_are_not() -> None:
    body = {
        "type": "server_error",
        "code": "conflict",
        "detail": "Someone else edited the Notebook",
        "attr": None,
    }
    edit = build(409, body, method="PATCH")
    assert isinstance(edit, VersionConflict)
    assert "Someone else edited the Notebook" in str(edit)
    assert "update_notebook_content" in str(edit)
    busy = build(409, body | {"detail": "A run is already in progress"}, method="POST")
    assert type(busy) is Conflict


def test_scoped_key_403_says_which_key_is_needed() -> None:
    error = build(
        403,
        {
            "type": "authentication_error",
            "code": "permission_denied",
            "detail": "This action does not support Personal API Key access",
            "attr": None,
        },
        method="POST",
    )
    assert isinstance(error, ScopedKeyNotAllowed)
    assert isinstance(error, PermissionDenied)
    assert "created without scopes" in str(error)
    assert "'*'" in str(error)


def test_missing_scope_names_the_scope() -> None:
    error = build(
        403,
        {
            "type": "authentication_error",
            "code": "permission_denied",
            "detail": "API key missing required scope 'notebook:write'",
            "attr": None,
        },
    )
    assert isinstance(error, MissingScope)
    assert error.scope == "notebook:write"
    assert "Give the personal API key the 'notebook:write' scope" in str(error)
    odd = build(403, {"detail": "API key missing required scope"})
    assert isinstance(odd, MissingScope)
    assert odd.scope is None
    plain = build(403, {"detail": "You don't have edit permissions for this dashboard."})
    assert type(plain) is PermissionDenied


def test_throttle_delay_is_read_from_the_detail() -> None:
    body = {
        "type": "throttled_error",
        "code": "throttled",
        "detail": "Request was throttled. Expected available in 12 seconds.",
        "attr": None,
    }
    error = build(429, body)
    assert isinstance(error, RateLimited)
    assert error.retry_after == 12.0
    header_wins = build(429, body, headers={"retry-after": "3"})
    assert isinstance(header_wins, RateLimited)
    assert header_wins.retry_after == 3.0
    assert retry_after_from_body({"detail": "Expected available in 1 second."}) == 1.0
    assert retry_after_from_body("Expected available in 2.5 seconds") == 2.5
    assert retry_after_from_body({"detail": "slow down"}) is None
    assert retry_after_from_body({"detail": 3}) is None
    assert retry_after_from_body(None) is None


def test_error_message_fallbacks() -> None:
    assert error_message({"message": "hi"}, "") == "hi"
    assert error_message(None, "plain text failure") == "plain text failure"
    assert error_message({"code": "conflict"}, "") is not None


async def test_errors_through_the_transport_never_show_the_key() -> None:
    body = {
        "type": "authentication_error",
        "code": "permission_denied",
        "detail": "This action does not support Personal API Key access",
        "attr": None,
    }
    with aioresponses() as mocked:
        mocked.post(f"{NB}kernel/start/", status=403, payload=body)
        mocked.get(f"{NB}", status=200, body=b"{not json")
        mocked.get(f"{BASE}other/", payload={"title": "missing ids"})
        async with make_backend() as backend:
            with pytest.raises(ScopedKeyNotAllowed) as scoped:
                await backend.client.kernel_start("nb")
            with pytest.raises(ResponseDecodeError) as garbled:
                await backend.client.get_notebook("nb")
            with pytest.raises(ResponseDecodeError, match="a notebook") as shapeless:
                await backend.client.get_notebook("other")
    for error in (scoped.value, garbled.value, shapeless.value):
        assert KEY not in str(error)
        assert KEY not in repr(error)
    assert scoped.value.method == "POST"
    assert "missing ids" in shapeless.value.body
