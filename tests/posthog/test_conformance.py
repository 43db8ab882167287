from notebookops.testing.conformance import BackendConformance
from notebookops.testing.posthog import posthog_target


class TestPostHogConformance(BackendConformance):
    target_factory = staticmethod(posthog_target)
