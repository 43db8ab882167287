"""Test kit shipped with notebookops: fakes for users' tests and ours.

* :class:`FakeBackend` (in-memory, scripted, fault-injectable);
* ``notebookops.testing.conformance``: the suite every backend passes (needs pytest);
* vendor fake servers (``notebookops.testing.<vendor>``) as they land.
"""

from __future__ import annotations

from .fake import FAKE_STATES, FakeBackend, FakeFaults, FakeRun, FakeScript

__all__ = ["FAKE_STATES", "FakeBackend", "FakeFaults", "FakeRun", "FakeScript"]
