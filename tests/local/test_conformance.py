from notebookops.testing.conformance import BackendConformance
from notebookops.testing.local import local_target


class TestLocalConformance(BackendConformance):
    target_factory = staticmethod(local_target)
