"""``bench/pair.py``: paired runs of a scenario-1 client on two checkouts of the library.

Its verdict (the sign test and the ratios) decides whether a change's effect is told from the
spread between runs, so the arithmetic is checked on known splits, and the whole tool once on
loopback, with this checkout as both sides and very short runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1]
REPO = BENCH.parent


@pytest.fixture(scope="module")
def pair(load_bench: Callable[[str], ModuleType]) -> ModuleType:
    return load_bench("pair.py")


@pytest.mark.parametrize(
    ("wins", "losses", "expected"),
    [
        (0, 0, 1.0),
        (5, 5, 1.0),
        (6, 6, 1.0),
        (7, 5, 0.7744140625),  # 2 * P(X <= 5), X ~ Binomial(12, 1/2) = 2 * 1586 / 4096
        (8, 2, 0.109375),  # 2 * (1 + 10 + 45) / 1024
        (10, 0, 0.001953125),  # 2 / 1024
        (0, 10, 0.001953125),
        (1, 0, 1.0),
    ],
)
def test_sign_test(pair: ModuleType, wins: int, losses: int, expected: float) -> None:
    assert pair.sign_test(wins, losses) == pytest.approx(expected)


def _sample(cpu: float) -> dict[str, float]:
    return {"cpu_ms_per_run": cpu, "gc_ms_per_run": 0.1, "wall_s": 4.0, "requests_per_run": 2.0}


def test_report_gives_per_pair_ratios_and_the_split(pair: ModuleType) -> None:
    result = {
        "a": "/old",
        "b": "/new",
        "variant": "lib",
        "n": 1000,
        "notebooks": 10,
        "duration": 3.0,
        "spread": 0.2,
        "pinned": True,
        "samples": {
            "a": [_sample(1.0), _sample(2.0), _sample(1.0)],
            # Pairs 1.1, 0.9 and 1.2: the median pair is 1.1, the ratio of the medians 1.2.
            "b": [_sample(1.1), _sample(1.8), _sample(1.2)],
        },
    }
    text = pair.report(result)
    assert "| A: `/old` | 1.000 | 1.000-2.000 |" in text
    assert "| B: `/new` | 1.200 | 1.100-1.800 |" in text
    assert "B/A per pair: median 1.100, range 0.900-1.200;" in text
    assert "B costlier in 2 of 3 pairs, cheaper in 1 (two-sided sign test p = 1)" in text
    assert "Ratio of the medians: 1.200." in text
    assert "server and clients on separate CPUs" in text


def test_a_checkout_that_is_not_the_library_is_refused(pair: ModuleType, tmp_path: Path) -> None:
    # With an empty directory on PYTHONPATH the installed library is imported instead: the
    # comparison would be of one library with itself.
    with pytest.raises(SystemExit, match="notebookops comes from"):
        pair._check_library(tmp_path)


def test_pairs_on_loopback(tmp_path: Path) -> None:
    out = tmp_path / "pairs.json"
    command = [sys.executable, str(BENCH / "pair.py"), "--a", str(REPO), "--pairs", "2"]
    command += ["--n", "4", "--notebooks", "2", "--duration", "0.05", "--json", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "2 pairs of `bench/client.py overhead --variant lib` (N=4 on 2 notebooks" in done.stdout
    assert "B/A per pair: median" in done.stdout
    result = json.loads(out.read_text())
    assert [len(result["samples"][side]) for side in ("a", "b")] == [2, 2]
    for sample in result["samples"]["a"] + result["samples"]["b"]:
        assert sample["cpu_ms_per_run"] > 0
        # A start, then the runs list or the run's own read: at least two requests per run.
        assert sample["requests_per_run"] >= 2
    # The order alternates: A first in the first pair, B first in the second.
    order = [line.split(": ")[1].split(" ")[0] for line in done.stderr.splitlines()]
    assert order == ["a", "b", "b", "a"]
