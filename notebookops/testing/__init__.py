"""Test kit shipped with notebookops: fakes for users' tests and ours.

* :class:`FakeBackend` (in-memory, scripted, fault-injectable);
* ``notebookops.testing.conformance``: the suite every backend passes (needs pytest);
* :class:`MockTransport`: answer a backend's requests from a function, without a server;
* vendor fake servers (``notebookops.testing.<vendor>``) over loopback HTTP, with faults
  scripted through ``notebookops.testing.server.Fault``.
"""

from __future__ import annotations

from .fake import FAKE_STATES, FakeBackend, FakeFaults, FakeRun, FakeScript
from .mock import MockTransport, json_response

__all__ = [
    "FAKE_STATES",
    "FakeBackend",
    "FakeFaults",
    "FakeRun",
    "FakeScript",
    "MockTransport",
    "json_response",
]
