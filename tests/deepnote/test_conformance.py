"""DeepnoteBackend against the fake Deepnote server passes the shared conformance suite."""

from notebookops.testing.conformance import BackendConformance
from notebookops.testing.deepnote import deepnote_target


class TestDeepnoteConformance(BackendConformance):
    target_factory = staticmethod(deepnote_target)
