"""The in-process benchmark harness (``bench/inprocess.py``) still runs against this library.

It reaches into internals (``HttpTransport._send`` and its connection gate, the orchestration's
poll schedule and jitter generator), so a refactor can break it without any other test
noticing, and the breakage would only show the next time someone measures. Each workload runs
here at a small scale on its virtual clock (well under a second), in a subprocess: the harness
replaces ``time.monotonic`` and the transport's ``_send`` for the whole process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"

_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
import inprocess
n = int(sys.argv[2])
cpu = {variant: inprocess.measure_cpu(variant, n) for variant in inprocess.VARIANTS}
objects = inprocess.measure_objects("lib", n)
print(json.dumps({"variants": list(inprocess.VARIANTS), "cpu": cpu, "objects": objects}))
"""


@pytest.fixture(scope="module")
def measured() -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(BENCH), "40"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _requests(measured: dict[str, Any], variant: str) -> float:
    return float(measured["cpu"][variant]["requests_per_run"])


def test_every_workload_finishes_its_waits(measured: dict[str, Any]) -> None:
    # measure_cpu exits non-zero when a wait fails; each variant reports its own name back
    # (the phases the breakdown needs are looked up by name in the tests below).
    assert list(measured["cpu"]) == measured["variants"]
    for variant, figures in measured["cpu"].items():
        assert figures["variant"] == variant
        assert figures["cpu_us_per_run"] > 0


def test_the_library_and_the_floors_make_the_same_requests(measured: dict[str, Any]) -> None:
    # The comparisons the harness exists for only hold if both sides do the same work.
    # The layers `guarantees` prices: the shared loop on the transport, then with the
    # guarantees' work (whole, and without each of its three pieces).
    layers = [v for v in measured["variants"] if v.startswith(("transport-", "guarded-"))]
    assert len(layers) == 5
    for variant in layers:
        assert _requests(measured, variant) == _requests(measured, "shared-floor"), variant
    assert _requests(measured, "lib-noshare") == pytest.approx(
        _requests(measured, "floor"), abs=0.25
    )
    # Shared reads (concurrent reads of a notebook's runs share its runs list) cut requests;
    # the hand-written shared loop, sleeping until one list read wakes every wait, cuts more.
    assert _requests(measured, "shared-floor") < _requests(measured, "lib")
    assert _requests(measured, "lib") < 0.9 * _requests(measured, "lib-noshare")


def test_the_breakdown_phases_stop_where_they_say(measured: dict[str, Any]) -> None:
    assert _requests(measured, "lib-start") == 1.0
    assert _requests(measured, "lib-start-alone") == 1.0
    assert _requests(measured, "floor-start") == 1.0
    assert _requests(measured, "lib-finished-read") == 2.0
    assert _requests(measured, "floor-finished-read") == 2.0
    assert _requests(measured, "lib-adapter") == pytest.approx(_requests(measured, "lib"), abs=0.2)


def test_the_object_census_sees_the_waits_asleep(measured: dict[str, Any]) -> None:
    objects = measured["objects"]
    assert objects["when"] == "asleep"
    assert objects["objects_per_wait"] > 5
