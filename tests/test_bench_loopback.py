"""Scenario 1's clients (``bench/client.py overhead``) still run against ``bench/server.py``.

``bench/run.py`` takes 20 minutes, so nobody runs it after every change, and its clients use
the library's transport and Deepnote adapter the way a user would, plus a few internals. Here
every scenario-1 client makes a handful of waits on very short runs against a loopback server
of its own, all clients at once (a few seconds: each wait's first poll comes a second in).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parents[1] / "bench"
WAITS = 6


def _variants() -> list[str]:
    """Every client ``bench/client.py overhead`` declares (asked of the module itself, so a
    client added there is tested here without a copy of the list)."""
    listing = subprocess.run(
        [sys.executable, "-c", "import json, client; print(json.dumps(list(client.OVERHEAD)))"],
        cwd=BENCH,
        capture_output=True,
        text=True,
        check=True,
    )
    variants: list[str] = json.loads(listing.stdout)
    return variants


def _server() -> tuple[subprocess.Popen[str], str]:
    server = subprocess.Popen(
        [sys.executable, str(BENCH / "server.py"), "--duration", "0.05"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    line = server.stdout.readline()
    if not line.startswith("PORT "):
        server.kill()
        _, stderr = server.communicate(timeout=30)
        raise AssertionError(f"bench/server.py did not start: {line}{stderr}")
    return server, f"http://127.0.0.1:{int(line.split()[1])}"


def _client(variant: str, url: str) -> subprocess.Popen[str]:
    command = [sys.executable, str(BENCH / "client.py"), "overhead", "--variant", variant]
    command += ["--n", str(WAITS), "--notebooks", "2", "--url", url]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_each_client_finishes_every_wait_and_reports_its_figures() -> None:
    # One test rather than one per client: with a worker per core, tests of one module may run
    # in two processes, and each would start every server and client again.
    servers: list[subprocess.Popen[str]] = []
    clients: dict[str, subprocess.Popen[str]] = {}
    try:
        # A server each: a client resets its server's counters (and runs) after its warm-up.
        variants = _variants()
        assert {"lib", "shared", "floor"} <= set(variants)
        for variant in variants:
            server, url = _server()
            servers.append(server)
            clients[variant] = _client(variant, url)
        for variant, client in clients.items():
            stdout, stderr = client.communicate(timeout=120)
            assert client.returncode == 0, f"{variant}: {stderr[-3000:]}"
            _check(variant, json.loads(stdout.strip().splitlines()[-1]))
    finally:
        for process in [*clients.values(), *servers]:
            if process.poll() is None:
                process.terminate()
        for process in [*clients.values(), *servers]:
            process.communicate(timeout=30)


def _check(variant: str, figures: dict[str, Any]) -> None:
    assert figures["ok"] == WAITS, variant
    assert figures["errors"] == {}, variant
    assert figures["peak_in_flight"] == WAITS, variant
    # What bench/run.py tabulates from each client.
    for key in ("cpu", "cpu_user", "cpu_sys", "gc_cpu", "wall", "rss_growth", "warm_up_cpu"):
        assert figures[key] >= 0, (variant, key)
    assert 0 < figures["latency_median"] <= figures["latency_max"], variant
