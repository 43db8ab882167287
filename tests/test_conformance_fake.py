from notebookops.testing.conformance import BackendConformance, fake_target


class TestFakeBackendConformance(BackendConformance):
    target_factory = staticmethod(fake_target)
