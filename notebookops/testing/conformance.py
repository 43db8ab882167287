"""The conformance suite every backend must pass.

It is a pytest mix-in: a backend's test module turns it on in one line by naming a target
factory (an async context manager yielding a :class:`ConformanceTarget`)::

    from notebookops.testing.conformance import BackendConformance, fake_target

    class TestFakeBackend(BackendConformance):
        target_factory = staticmethod(fake_target)

A target knows how to build fresh backends (pointed at a fake server, say) and which requests
make a run succeed, fail, run for a long time, or report a status the backend cannot know.
Requires pytest (``pip install 'notebookops[testing]'``) and one plugin that runs async
tests, with one line of setup: with pytest-asyncio, ``asyncio_mode = "auto"`` in your pytest
configuration; with anyio's own plugin (no other install), ``pytestmark = pytest.mark.anyio``
in your subclass.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import ClassVar, Literal

import anyio

try:
    import pytest
except ModuleNotFoundError as error:  # pragma: no cover - depends on the installation
    raise ModuleNotFoundError(
        "notebookops.testing.conformance needs pytest: pip install 'notebookops[testing]'",
        name=error.name,
    ) from error

from ..backend import NotebookBackend
from ..errors import (
    BackendClosed,
    ConfigurationError,
    RunFailed,
    RunTimeout,
    UnsupportedOperation,
)
from ..models import Capability, Run, RunHandle, RunRequest, RunState
from ..orchestration import run_and_wait, wait_for_run
from ..policies import PollPolicy
from .fake import FakeBackend, FakeScript

__all__ = ["BackendConformance", "ConformanceTarget", "Outcome", "fake_target"]

Outcome = Literal["succeed", "fail", "long", "unknown_status"]

FAST_POLL = PollPolicy(initial=0.01, multiplier=1.5, maximum=0.05, jitter=0.1)


class ConformanceTarget(abc.ABC):
    """What the suite needs from a backend under test."""

    #: Polling used by the suite: fast, because targets run on fakes.
    poll: PollPolicy = FAST_POLL
    #: A deadline comfortably shorter than a "long" run and longer than a "succeed" one.
    short_timeout: float = 0.5
    #: How long to wait for the remote side to report a cancel.
    settle_timeout: float = 5.0

    @abc.abstractmethod
    def make_backend(self) -> NotebookBackend:
        """A new, open backend instance. The suite closes what it makes."""

    @abc.abstractmethod
    def request(self, outcome: Outcome) -> RunRequest | None:
        """A request whose run ends as ``outcome`` says (None: not possible on this target).

        ``long`` must outlast ``short_timeout`` by far (until cancelled);
        ``unknown_status`` must report a vendor status the backend does not know.
        """

    def remote_cancelled(self, handle: RunHandle) -> bool | None:
        """Whether the remote side saw a cancel for ``handle`` (None: cannot tell; the suite
        then asks the backend instead)."""
        return None


TargetFactory = Callable[[], AbstractAsyncContextManager[ConformanceTarget]]


class _FakeTarget(ConformanceTarget):
    def __init__(self) -> None:
        self.backends: list[FakeBackend] = []
        self._runs: dict[str, FakeBackend] = {}

    def make_backend(self) -> NotebookBackend:
        backend = FakeBackend()
        backend.program("ok", FakeScript(states=("pending", "running", "success")))
        backend.program("bad", FakeScript(states=("pending", "running", "failed")))
        backend.program("long", FakeScript(states=("pending", "running")))
        backend.program("odd", FakeScript(states=("pending", "warming_up", "warming_up")))
        # Share run tables so a second instance can resume a first one's handle (RESUMABLE).
        if self.backends:
            backend.runs = self.backends[0].runs
        self.backends.append(backend)
        return backend

    def request(self, outcome: Outcome) -> RunRequest | None:
        notebook = {"succeed": "ok", "fail": "bad", "long": "long", "unknown_status": "odd"}
        return RunRequest(notebook=notebook[outcome], inputs={"x": 1})

    def remote_cancelled(self, handle: RunHandle) -> bool | None:
        fake = self.backends[0].runs.get(handle.run_id)
        return None if fake is None else fake.cancelled


@asynccontextmanager
async def fake_target() -> AsyncIterator[ConformanceTarget]:
    """The FakeBackend as a conformance target."""
    yield _FakeTarget()


class BackendConformance:
    """Mix-in test class. Subclasses set ``target_factory``; every test then runs on it."""

    target_factory: ClassVar[TargetFactory]

    @pytest.fixture
    async def target(self) -> AsyncIterator[ConformanceTarget]:
        async with type(self).target_factory() as target:
            yield target

    @pytest.fixture
    async def backend(self, target: ConformanceTarget) -> AsyncIterator[NotebookBackend]:
        backend = target.make_backend()
        try:
            yield backend
        finally:
            await backend.aclose()

    @staticmethod
    def _request(target: ConformanceTarget, outcome: Outcome) -> RunRequest:
        request = target.request(outcome)
        if request is None:
            pytest.skip(f"this target cannot produce a {outcome!r} run")
        return request

    @staticmethod
    async def _settle(
        backend: NotebookBackend, handle: RunHandle, target: ConformanceTarget
    ) -> Run:
        """Read until terminal (or the settle timeout)."""
        run = await backend.get_run(handle)
        with anyio.move_on_after(target.settle_timeout):
            while not run.state.is_terminal:
                await anyio.sleep(target.poll.initial)
                run = await backend.get_run(handle)
        return run

    async def _cleanup(self, backend: NotebookBackend, handle: RunHandle | None) -> None:
        if handle is not None and Capability.CANCEL in backend.capabilities:
            try:
                await backend.cancel_run(handle)
            except Exception:
                pass

    # -- the contract

    async def test_satisfies_protocol(self, backend: NotebookBackend) -> None:
        assert isinstance(backend, NotebookBackend)
        assert isinstance(backend.name, str)
        assert backend.name
        assert isinstance(backend.capabilities, frozenset)
        assert all(isinstance(c, Capability) for c in backend.capabilities)

    async def test_start_returns_handle(
        self, backend: NotebookBackend, target: ConformanceTarget
    ) -> None:
        request = self._request(target, "succeed")
        handle = await backend.start_run(request)
        try:
            assert handle.backend == backend.name
            assert handle.run_id
            assert handle.notebook_id
            run = await backend.get_run(handle)
            assert run.handle.run_id == handle.run_id
            assert isinstance(run.state, RunState)
        finally:
            await self._settle(backend, handle, target)

    async def test_success_path(self, backend: NotebookBackend, target: ConformanceTarget) -> None:
        started: list[RunHandle] = []
        updates: list[Run] = []

        def on_start(handle: RunHandle) -> None:
            assert not updates, "on_start must run before the first status read"
            started.append(handle)

        run = await run_and_wait(
            backend,
            self._request(target, "succeed"),
            poll=target.poll,
            timeout=30,
            on_start=on_start,
            on_update=updates.append,
        )
        assert run.state is RunState.SUCCEEDED
        assert started
        assert started[0].run_id == run.run_id
        assert updates
        assert updates[-1].state is RunState.SUCCEEDED

    async def test_failure_path(self, backend: NotebookBackend, target: ConformanceTarget) -> None:
        request = self._request(target, "fail")
        with pytest.raises(RunFailed) as caught:
            await run_and_wait(backend, request, poll=target.poll, timeout=30)
        failed = caught.value.run
        assert failed is not None
        assert failed.state is RunState.FAILED
        assert caught.value.handle is not None
        run = await run_and_wait(
            backend, request, poll=target.poll, timeout=30, raise_on_failure=False
        )
        assert run.state is RunState.FAILED

    async def test_timeout_detach_leaves_run(
        self, backend: NotebookBackend, target: ConformanceTarget
    ) -> None:
        handle: RunHandle | None = None
        try:
            with pytest.raises(RunTimeout) as caught:
                await run_and_wait(
                    backend,
                    self._request(target, "long"),
                    poll=target.poll,
                    timeout=target.short_timeout,
                    on_timeout="detach",
                )
            handle = caught.value.handle
            assert handle is not None
            assert caught.value.cancelled is False
            run = await backend.get_run(handle)
            assert not run.state.is_terminal
        finally:
            await self._cleanup(backend, handle)

    async def test_timeout_cancel(
        self, backend: NotebookBackend, target: ConformanceTarget
    ) -> None:
        handle: RunHandle | None = None
        try:
            with pytest.raises(RunTimeout) as caught:
                await run_and_wait(
                    backend,
                    self._request(target, "long"),
                    poll=target.poll,
                    timeout=target.short_timeout,
                    on_timeout="cancel",
                )
            handle = caught.value.handle
            assert handle is not None
            if Capability.CANCEL in backend.capabilities:
                assert caught.value.cancelled is True
                run = await self._settle(backend, handle, target)
                assert run.state is RunState.CANCELLED
            else:
                assert caught.value.cancelled is False
                assert "cannot cancel" in str(caught.value)
        finally:
            await self._cleanup(backend, handle)

    async def test_caller_cancellation_cancels_remote(
        self, backend: NotebookBackend, target: ConformanceTarget
    ) -> None:
        handles: list[RunHandle] = []
        first_update = anyio.Event()

        def on_update(run: Run) -> None:
            first_update.set()

        async with anyio.create_task_group() as group:

            async def waiter() -> None:
                await run_and_wait(
                    backend,
                    self._request(target, "long"),
                    poll=target.poll,
                    timeout=60,
                    on_start=handles.append,
                    on_update=on_update,
                )

            group.start_soon(waiter)
            with anyio.fail_after(10):
                await first_update.wait()
            group.cancel_scope.cancel()
        assert handles, "on_start should have received the handle"
        handle = handles[0]
        try:
            if Capability.CANCEL in backend.capabilities:
                remote = target.remote_cancelled(handle)
                if remote is not None:
                    assert remote is True
                run = await self._settle(backend, handle, target)
                assert run.state is RunState.CANCELLED
            else:
                run = await backend.get_run(handle)
                assert run.state is not RunState.CANCELLED
        finally:
            await self._cleanup(backend, handle)

    async def test_cancel_without_capability(
        self, backend: NotebookBackend, target: ConformanceTarget
    ) -> None:
        if Capability.CANCEL in backend.capabilities:
            pytest.skip("backend can cancel")
        handle = await backend.start_run(self._request(target, "succeed"))
        with pytest.raises(UnsupportedOperation):
            await backend.cancel_run(handle)
        await self._settle(backend, handle, target)

    async def test_unknown_status_maps_to_unknown(
        self, backend: NotebookBackend, target: ConformanceTarget
    ) -> None:
        request = self._request(target, "unknown_status")
        handle = await backend.start_run(request)
        try:
            seen: list[Run] = []
            with anyio.move_on_after(target.settle_timeout):
                while not any(run.state is RunState.UNKNOWN for run in seen):
                    seen.append(await backend.get_run(handle))
                    await anyio.sleep(target.poll.initial)
            unknown = [run for run in seen if run.state is RunState.UNKNOWN]
            assert unknown, f"no UNKNOWN state seen in {[r.vendor_state for r in seen]}"
            assert unknown[0].vendor_state
            assert not RunState.UNKNOWN.is_terminal
        finally:
            await self._cleanup(backend, handle)

    async def test_handle_json_round_trip(
        self, backend: NotebookBackend, target: ConformanceTarget
    ) -> None:
        handle = await backend.start_run(self._request(target, "succeed"))
        restored = RunHandle.from_json(handle.to_json())
        assert restored == handle
        if Capability.RESUMABLE in backend.capabilities:
            other = target.make_backend()
            try:
                run = await wait_for_run(other, restored, poll=target.poll, timeout=30)
                assert run.state is RunState.SUCCEEDED
            finally:
                await other.aclose()
        else:
            await self._settle(backend, handle, target)

    async def test_aclose_idempotent_and_use_after_close(self, target: ConformanceTarget) -> None:
        backend = target.make_backend()
        request = self._request(target, "succeed")
        handle = await backend.start_run(request)
        await self._settle(backend, handle, target)
        await backend.aclose()
        await backend.aclose()
        with pytest.raises(BackendClosed):
            await backend.start_run(request)
        with pytest.raises(BackendClosed):
            await backend.get_run(handle)

    async def test_async_context_manager(self, target: ConformanceTarget) -> None:
        backend = target.make_backend()
        async with backend as entered:
            assert entered is backend
        with pytest.raises(BackendClosed):
            await backend.start_run(self._request(target, "succeed"))

    async def test_foreign_handle_rejected(self, backend: NotebookBackend) -> None:
        foreign = RunHandle(backend=f"not-{backend.name}", run_id="r1", notebook_id="n1")
        with pytest.raises(ConfigurationError):
            await backend.get_run(foreign)
