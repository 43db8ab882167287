"""Longer chaos runs: many concurrent ``run_and_wait`` calls against every vendor fake under a
seeded fault mix, plus callers cancelled at the start, while polling and in a retry sleep.

Run from the repository root with the project's interpreter::

    .venv/bin/python bench/chaos.py --seed 7 --scale 100
    .venv/bin/python bench/chaos.py --seed 7 --scale 100 --out bench/results/chaos.md

``--scale`` is the number of concurrent calls per vendor in the chaos scenario (the
cancellation scenarios use a quarter of it per phase). The scenarios and their invariants are
those of ``tests/reliability`` (``tests/reliability/_chaos.py``), which runs them at a small
scale in CI. The figures table lists, per scenario: runs, outcomes, requests, faults injected,
server-side run starts, duplicates, lost runs, escaped exceptions, leaks (open sessions,
pending tasks, remote runs left running after a cancel) and deadline overruns; then the faults
injected by kind. The exit status is 1 when any invariant was broken.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from run import revision  # noqa: E402  (bench/ leads sys.path: a script's own directory)

import notebookops  # noqa: E402
from notebookops import DEFAULT_CANCEL_TIMEOUT  # noqa: E402
from tests.reliability._chaos import (  # noqa: E402  (needs the repository root on the path)
    VENDORS,
    CancelPhase,
    Figures,
    Settings,
    cancellation_scenario,
    chaos_scenario,
    figures_table,
)

PHASES: tuple[CancelPhase, ...] = ("start", "poll", "retry")


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=7, help="seed of the fault mix (default 7)")
    parser.add_argument(
        "--scale", type=int, default=100, help="concurrent calls per vendor (default 100)"
    )
    parser.add_argument(
        "--fault-rate",
        type=float,
        default=0.15,
        help="fraction of requests that get a fault (default 0.15)",
    )
    parser.add_argument(
        "--vendors",
        default=",".join(VENDORS),
        help=f"comma-separated subset of {', '.join(VENDORS)}",
    )
    parser.add_argument("--no-cancel", action="store_true", help="skip the cancellation runs")
    parser.add_argument(
        "--library-timeouts",
        action="store_true",
        help="the library's own request timeout (30 s) and cancel_timeout (5 s), instead of "
        "short ones that keep the run quick: the deadline-under-load check",
    )
    parser.add_argument("--out", type=Path, help="also write the report (markdown) here")
    args = parser.parse_args(argv)
    if args.scale < 1:
        parser.error("--scale must be at least 1")
    if not 0 <= args.fault_rate <= 1:
        parser.error("--fault-rate must be between 0 and 1")
    args.vendor_list = [v.strip() for v in args.vendors.split(",") if v.strip()]
    unknown = sorted(set(args.vendor_list) - set(VENDORS))
    if unknown:
        parser.error(f"unknown vendors {unknown}; choose from {', '.join(VENDORS)}")
    return args


def _settings(args: argparse.Namespace) -> Settings:
    # Every call and the fake servers share one event loop: above a few dozen concurrent
    # calls, poll less eagerly so the loop measures the library, not its own backlog.
    # A client has 100 pooled connections per backend; with hundreds of calls a request may
    # wait for one, and that wait counts against its timeout: give big runs a longer one.
    big = args.scale > 100
    if args.library_timeouts:
        return Settings(
            fault_rate=args.fault_rate,
            request_timeout=30.0,
            slow=60.0,  # a request that is never answered in time
            call_timeout=4.0,
            start_timeout=4.0,
            cancel_timeout=DEFAULT_CANCEL_TIMEOUT,
            poll_maximum=0.25,
        )
    request_timeout = 1.0 if big else 0.4
    return Settings(
        fault_rate=args.fault_rate,
        request_timeout=request_timeout,
        slow=request_timeout + 0.5,
        call_timeout=4.0 if big else 3.0,
        start_timeout=3.0 if big else 2.5,
        poll_maximum=0.25 if args.scale > 40 else 0.05,
    )


async def _run(args: argparse.Namespace) -> list[Figures]:
    settings = _settings(args)
    results: list[Figures] = []
    for vendor in args.vendor_list:
        figures = await chaos_scenario(vendor, seed=args.seed, runs=args.scale, settings=settings)
        results.append(figures)
        _progress(figures)
    if not args.no_cancel:
        cancel_runs = max(3, args.scale // 4)
        for vendor in args.vendor_list:
            for phase in PHASES:
                figures = await cancellation_scenario(
                    vendor, phase, seed=args.seed, runs=cancel_runs, settings=settings
                )
                results.append(figures)
                _progress(figures)
    return results


def _progress(figures: Figures) -> None:
    verdict = "ok" if figures.ok else f"{len(figures.problems)} VIOLATIONS"
    print(
        f"  {figures.scenario:<13} {figures.vendor:<15} {figures.calls:>4} runs "
        f"{sum(figures.faults.values()):>5} faults {figures.seconds:6.1f}s  {verdict}",
        file=sys.stderr,
        flush=True,
    )


def _totals(results: list[Figures]) -> str:
    runs = sum(f.calls for f in results)
    faults = sum(sum(f.faults.values()) for f in results)
    return (
        f"Totals: {runs} runs, {sum(f.requests for f in results)} requests, {faults} faults "
        f"injected, {sum(f.duplicates for f in results)} duplicate starts, "
        f"{sum(f.lost for f in results)} lost runs, {sum(f.escapes for f in results)} escaped "
        f"exceptions, {sum(f.leaks for f in results)} leaks, "
        f"{sum(f.overruns for f in results)} deadline overruns; "
        f"{sum(f.past_cancel_budget for f in results)} calls returned later than their deadline "
        "plus cancel_timeout and the slack (a start already sent, seen through to its answer)."
    )


def _report(
    args: argparse.Namespace, results: list[Figures], seconds: float, argv: list[str]
) -> str:
    settings = _settings(args)
    command = ".venv/bin/python bench/chaos.py " + " ".join(shlex.quote(a) for a in argv)
    return "\n".join(
        [
            "# Chaos run",
            "",
            f"Command: `{command}`",
            "",
            f"Date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}; notebookops "
            f"{notebookops.__version__}{revision(Path(notebookops.__file__).parent)}; "
            f"Python {platform.python_version()} on {platform.system()} "
            f"({os.cpu_count()} CPUs); wall time {seconds:.0f}s.",
            "",
            f"Seed {args.seed}; {args.scale} concurrent calls per vendor (cancellation: "
            f"{max(3, args.scale // 4)} per phase); fault rate {args.fault_rate:g}; call "
            f"timeout {settings.call_timeout:g}s, per-request timeout "
            f"{settings.request_timeout:g}s, slow faults {settings.slow:g}s; a call must return "
            f"within {settings.bound:g}s (the deadline, what run_and_wait may spend after it, and "
            f"{settings.slack:g}s of scheduling slack).",
            "",
            "Outcomes: `timeout (left running)` is a RunTimeout on a backend that cannot cancel "
            "(or whose cancel failed under faults: the error says so); `... at start` is a "
            "start refused or failed before any run existed, `start outcome unknown` a start "
            "the caller was told may or may not have happened. `uncertain starts (no run)`: "
            "calls told their start may have happened (StartOutcomeUnknown, or an unreadable "
            "start answer), and in brackets how many of those had in fact started nothing. "
            "`lost` counts server-side runs that no call reported; `leaks` open sessions, "
            "pending tasks and remote runs still running after a caller cancelled.",
            "",
            figures_table(results),
            "",
            _totals(results),
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _arguments(argv)
    # Retry warnings are expected by the thousand, and the fake servers' aiohttp complains
    # about clients that hung up on purpose: keep both off the console.
    for name in ("notebookops", "aiohttp"):
        logging.getLogger(name).propagate = False
        logging.getLogger(name).addHandler(logging.NullHandler())
    began = time.monotonic()
    results = asyncio.run(_run(args))
    report = _report(args, results, time.monotonic() - began, argv)
    print(report)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
    return 0 if all(f.ok for f in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
