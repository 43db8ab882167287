"""Paired runs of one scenario-1 client on two versions of the library: is a change's effect
on client CPU larger than the spread between runs of the same code?

Usage::

    git worktree add /tmp/before <rev>
    .venv/bin/python bench/pair.py --a /tmp/before [--b .] [--pairs 10] [--variant lib]
        [--n 1000] [--notebooks 10] [--duration 3] [--spread 0.2] [--no-pin] [--json FILE]

One ``bench/server.py`` serves every client. Each pair runs the client once on each library,
in alternating order (A then B, then B then A) so that a drift of the machine over the run
weighs on both alike. Each client is this checkout's ``bench/client.py`` with ``PYTHONPATH``
set to the library's checkout, so that the library is the only thing that differs (checked
first: a Python started that way must import ``notebookops`` from that checkout). On a
machine with two or more CPUs the server runs on one and the clients on another
(``--no-pin``: wherever the kernel puts them), which keeps the server's work from landing on
the client's CPU time.

It prints a Markdown table: per library, the median client CPU per run and its range over
the pairs (the spread of the same code run after run); the median and range of the per-pair
ratios B/A; and a two-sided sign test over the pairs (how likely a split at least as uneven
as the one seen would be if neither library were the cheaper). A change whose pairs split
8 to 2 (p = 0.11) is not shown to be one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# bench/ leads sys.path (a script's own directory): run.py's helpers and paths.
from run import BENCH, PY, REPO, client, control, process

# What the client process runs before the workload: the path of the library it imported.
_WHICH = "import notebookops, os; print(os.path.dirname(os.path.dirname(notebookops.__file__)))"


def sign_test(wins: int, losses: int) -> float:
    """Two-sided sign test: the probability of a split at least as uneven as ``wins`` to
    ``losses`` when each pair is a fair coin (ties are left out before calling)."""
    total = wins + losses
    if total == 0:
        return 1.0
    low = min(wins, losses)
    tail = sum(math.comb(total, k) for k in range(low + 1)) / (1 << total)
    return min(1.0, 2 * tail)


def _pinning(cpu: int | None) -> Callable[[], None] | None:
    if cpu is None:
        return None

    def pin() -> None:
        os.sched_setaffinity(0, {cpu})

    return pin


def _cpus(pin: bool) -> tuple[int | None, int | None]:
    """The server's and the clients' CPU, or (None, None) where pinning is off or impossible."""
    affinity = getattr(os, "sched_getaffinity", None)
    if not pin or affinity is None:
        return None, None
    cpus = sorted(affinity(0))
    if len(cpus) < 2:
        return None, None
    return cpus[0], cpus[1]


def _library_env(checkout: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(checkout)
    return env


def _check_library(checkout: Path) -> None:
    """Fail early if a client with this checkout on its path would import another library."""
    done = subprocess.run(
        [PY, "-c", _WHICH],
        env=_library_env(checkout),
        cwd=BENCH,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"cannot import notebookops from {checkout}:\n{done.stderr[-2000:]}")
    imported = Path(done.stdout.strip()).resolve()
    if imported != checkout.resolve():
        raise SystemExit(
            f"with PYTHONPATH={checkout}, notebookops comes from {imported}: "
            "give the checkout's top directory (the one holding notebookops/)"
        )


def _one(checkout: Path, url: str, args: argparse.Namespace, cpu: int | None) -> dict[str, float]:
    control(url, "/_reset", post=True)
    result = client(
        "overhead",
        "--variant",
        args.variant,
        "--n",
        args.n,
        "--notebooks",
        args.notebooks,
        "--url",
        url,
        env=_library_env(checkout),
        preexec=_pinning(cpu),
    )
    if result["ok"] != args.n:
        raise SystemExit(f"the client on {checkout}: {result['ok']}/{args.n} runs succeeded")
    counts = control(url, "/_stats")["counts"]
    return {
        "cpu_ms_per_run": result["cpu"] * 1000 / args.n,
        "gc_ms_per_run": result["gc_cpu"] * 1000 / args.n,
        "wall_s": result["wall"],
        "requests_per_run": (counts["post"] + counts["get"] + counts["list"]) / args.n,
    }


def run_pairs(args: argparse.Namespace) -> dict[str, Any]:
    a, b = Path(args.a), Path(args.b)
    for checkout in (a, b):
        _check_library(checkout)
    server_cpu, client_cpu = _cpus(not args.no_pin)
    samples: dict[str, list[dict[str, float]]] = {"a": [], "b": []}
    server = process(
        "server.py",
        "--duration",
        str(args.duration),
        "--spread",
        str(args.spread),
        preexec=_pinning(server_cpu),
    )
    with server as url:
        for index in range(args.pairs):
            order = (("a", a), ("b", b)) if index % 2 == 0 else (("b", b), ("a", a))
            for side, checkout in order:
                print(f"pair {index + 1}/{args.pairs}: {side} ({checkout})", file=sys.stderr)
                samples[side].append(_one(checkout, url, args, client_cpu))
    return {
        "a": str(a),
        "b": str(b),
        "variant": args.variant,
        "n": args.n,
        "notebooks": args.notebooks,
        "duration": args.duration,
        "spread": args.spread,
        "pinned": server_cpu is not None,
        "samples": samples,
    }


def _span(values: Sequence[float], digits: int = 3) -> str:
    return f"{min(values):.{digits}f}-{max(values):.{digits}f}"


def report(result: dict[str, Any]) -> str:
    """The Markdown table and sentence for one paired run."""
    a_cpu = [s["cpu_ms_per_run"] for s in result["samples"]["a"]]
    b_cpu = [s["cpu_ms_per_run"] for s in result["samples"]["b"]]
    ratios = [b / a for a, b in zip(a_cpu, b_cpu, strict=True)]
    higher = sum(r > 1 for r in ratios)
    lower = sum(r < 1 for r in ratios)
    p = sign_test(higher, lower)
    lines = [
        f"{len(ratios)} pairs of `bench/client.py overhead --variant {result['variant']}` "
        f"(N={result['n']:,} on {result['notebooks']} notebooks, runs of "
        f"{result['duration']:g} s +/- {result['spread']:.0%}), alternating order, "
        + ("server and clients on separate CPUs." if result["pinned"] else "not pinned."),
        "",
        "| library | CPU ms/run (median) | range over the pairs | GC ms/run (median) "
        "| requests/run (median) |",
        "|---|---|---|---|---|",
    ]
    for side in ("a", "b"):
        cpu = [s["cpu_ms_per_run"] for s in result["samples"][side]]
        gc = [s["gc_ms_per_run"] for s in result["samples"][side]]
        requests = [s["requests_per_run"] for s in result["samples"][side]]
        lines.append(
            f"| {side.upper()}: `{result[side]}` | {statistics.median(cpu):.3f} | {_span(cpu)} "
            f"| {statistics.median(gc):.3f} | {statistics.median(requests):.2f} |"
        )
    lines += [
        "",
        f"B/A per pair: median {statistics.median(ratios):.3f}, range {_span(ratios)}; "
        f"B costlier in {higher} of {len(ratios)} pairs, cheaper in {lower} "
        f"(two-sided sign test p = {p:.2g}). Ratio of the medians: "
        f"{statistics.median(b_cpu) / statistics.median(a_cpu):.3f}.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", required=True, help="checkout of the baseline library")
    parser.add_argument("--b", default=str(REPO), help="checkout of the other (default: this)")
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--variant", default="lib", help="a bench/client.py overhead client")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--notebooks", type=int, default=10)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--spread", type=float, default=0.2)
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and clients")
    parser.add_argument("--json", help="also write the raw samples here")
    args = parser.parse_args(argv)
    if args.pairs < 1 or args.n < 1 or args.notebooks < 1:
        parser.error("--pairs, --n and --notebooks must be at least 1")
    result = run_pairs(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(report(result))


if __name__ == "__main__":
    main()
