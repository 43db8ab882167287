"""Run stores: where ``run_and_wait(key=..., store=...)`` records keyed runs, so that a run is
started once per key across processes, crashes and restarts."""

from __future__ import annotations

from ._base import Claim, RecordState, RunRecord, RunStore

__all__ = ["Claim", "RecordState", "RunRecord", "RunStore"]
