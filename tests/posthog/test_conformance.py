"""The conformance suite on PostHog, in every run mode and server version the fake emulates."""

from functools import partial

from notebookops.testing.conformance import BackendConformance
from notebookops.testing.posthog import posthog_target


class TestOldServerAuto(BackendConformance):
    """Older PostHog (kernel streaming, no runs/): auto picks the kernel stream."""

    target_factory = staticmethod(partial(posthog_target, "old", "auto"))


class TestOldServerKernel(BackendConformance):
    target_factory = staticmethod(partial(posthog_target, "old", "kernel"))


class TestNewServerAuto(BackendConformance):
    """Newer PostHog with the runs flag on: auto picks server runs."""

    target_factory = staticmethod(partial(posthog_target, "new", "auto"))


class TestNewServerServer(BackendConformance):
    target_factory = staticmethod(partial(posthog_target, "new", "server"))


class TestNewServerFlagOffAuto(BackendConformance):
    """Newer PostHog with the runs flag off, for a caller its kernel accepts: auto runs the
    markdown notebook's cells one by one through kernel/execute/ (no stream there)."""

    target_factory = staticmethod(
        partial(
            posthog_target,
            "new",
            "auto",
            runs_flag=False,
            personal_keys_on_unscoped_actions=True,
        )
    )


class TestNewServerKernel(BackendConformance):
    """Newer PostHog, kernel mode forced, for a caller its kernel accepts: cell by cell."""

    target_factory = staticmethod(
        partial(posthog_target, "new", "kernel", personal_keys_on_unscoped_actions=True)
    )
