from notebookops.testing.conformance import BackendConformance
from notebookops.testing.datalore import datalore_target


class TestDataloreConformance(BackendConformance):
    target_factory = staticmethod(datalore_target)
