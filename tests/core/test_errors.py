"""The error tree: shape, exports, and the handle attached to errors."""

from __future__ import annotations

import inspect

import notebookops
from notebookops import errors
from notebookops.models import Run, RunHandle, RunState


def test_every_error_is_exported_at_top_level() -> None:
    classes = {
        name
        for name, obj in vars(errors).items()
        if inspect.isclass(obj) and issubclass(obj, Exception)
    }
    assert classes <= set(notebookops.__all__)
    assert set(errors.__all__) == classes


def test_tree_shape() -> None:
    e = errors
    assert all(issubclass(getattr(e, name), e.NotebookOpsError) for name in e.__all__)
    expected_parents: dict[type[Exception], type[Exception]] = {
        e.BadRequest: e.APIError,
        e.AuthenticationError: e.APIError,
        e.PermissionDenied: e.APIError,
        e.NotFound: e.APIError,
        e.Conflict: e.APIError,
        e.RateLimited: e.APIError,
        e.ServerError: e.APIError,
        e.ConnectError: e.TransportError,
        e.RequestTimeout: e.TransportError,
        e.ConnectionLost: e.TransportError,
        e.RunFailed: e.RunError,
        e.RunCancelled: e.RunError,
        e.RunTimeout: e.RunError,
    }
    for cls, parent in expected_parents.items():
        assert issubclass(cls, parent), cls
    assert issubclass(e.BackendClosed, e.ConfigurationError)


def test_docstring_draws_every_class() -> None:
    doc = errors.__doc__ or ""
    for name in errors.__all__:
        assert name in doc, name


def test_run_error_carries_run_and_handle() -> None:
    handle = RunHandle(backend="b", run_id="r-9", notebook_id="n")
    run = Run(handle=handle, state=RunState.FAILED)
    error = errors.RunFailed("it failed", run=run)
    assert error.run is run
    assert error.handle is handle
    assert str(error) == "it failed [run b:r-9]"


def test_with_handle_keeps_the_first() -> None:
    first = RunHandle(backend="b", run_id="1", notebook_id="n")
    second = RunHandle(backend="b", run_id="2", notebook_id="n")
    error = errors.ConnectionLost("lost")
    assert error.with_handle(first).with_handle(second).handle is first
    assert "run b:1" in str(error)


def test_run_timeout_fields() -> None:
    handle = RunHandle(backend="b", run_id="r", notebook_id="n")
    error = errors.RunTimeout("late", run=None, cancelled=False, reason="detached", handle=handle)
    assert error.handle is handle
    assert error.cancelled is False
    assert error.reason == "detached"


def test_rate_limited_retry_after() -> None:
    error = errors.RateLimited(
        "slow down", retry_after=3.0, status=429, vendor="v", method="GET", url="https://x"
    )
    assert error.retry_after == 3.0
    assert error.status == 429
