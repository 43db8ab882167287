"""Process-level measurements for the benchmark clients: CPU time, wall time and RSS.

Every client workload runs in a fresh process, so its peak RSS (``VmHWM``) is its own; the
peak is reset just before the measured part where the kernel allows it (``/proc/self/clear_refs``).

Before measuring, every client puts glibc's allocator in the same state (:func:`settle_allocator`):
otherwise whether start-up happened to free a large mmap'd block decides the process's mmap
threshold, and with it whether each response buffer costs an ``mmap``/``munmap`` pair (about
20 µs of system time per request, seen at random in one client process out of a few).
"""

from __future__ import annotations

import gc
import os
import resource
import time
from typing import Any

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_now() -> int:
    """Resident set size of this process, in bytes."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * _PAGE


def peak_rss() -> int:
    """Peak resident set size (``VmHWM``) since start or the last :func:`reset_peak`, bytes."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def settle_allocator() -> None:
    """Raise glibc's dynamic mmap threshold to 4 MiB, the same way in every client process.

    glibc serves blocks above the threshold (128 KiB at start) with their own ``mmap`` and
    raises the threshold to the size of any such block when it is freed. Allocating and freeing
    one 4 MiB buffer does that deterministically, so no client is measured in the mmap-heavy
    state by the luck of its start-up. Harmless elsewhere (another allocator simply frees it).
    """
    buffer = bytearray(4 * 2**20)
    buffer[-1] = 1  # touched, so it is really allocated
    del buffer


def reset_peak() -> bool:
    """Make ``VmHWM`` restart from the current RSS (Linux >= 4.0); False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


class GCTimer:
    """Time spent in the cyclic garbage collector, by generation (through ``gc.callbacks``):
    with thousands of waits alive, full collections are a large share of a client's CPU."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.collections = [0, 0, 0]
        self._began = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = time.process_time()
        else:
            generation = info["generation"]
            self.seconds[generation] += time.process_time() - self._began
            self.collections[generation] += 1


class Meter:
    """Measures one block of work: CPU seconds (user + system, and each), wall seconds, RSS
    growth."""

    def __init__(self) -> None:
        self.cpu0 = self.wall0 = self.user0 = self.sys0 = 0.0
        self.rss0 = 0
        self.peak_reset = False
        self.result: dict[str, Any] = {}
        self.gc = GCTimer()

    def start(self) -> None:
        settle_allocator()
        gc.callbacks.append(self.gc)
        self.peak_reset = reset_peak()
        self.rss0 = rss_now()
        times = os.times()
        self.user0, self.sys0 = times.user, times.system
        self.cpu0 = time.process_time()
        self.wall0 = time.perf_counter()

    def stop(self) -> dict[str, Any]:
        wall = time.perf_counter() - self.wall0
        cpu = time.process_time() - self.cpu0
        times = os.times()
        peak = peak_rss()
        if self.gc in gc.callbacks:
            gc.callbacks.remove(self.gc)
        self.result = {
            "cpu": cpu,
            "cpu_user": times.user - self.user0,
            "cpu_sys": times.system - self.sys0,
            "gc_cpu": sum(self.gc.seconds),
            "gc_by_generation": self.gc.seconds,
            "gc_collections": self.gc.collections,
            "wall": wall,
            "rss_before": self.rss0,
            "peak_rss": peak,
            "rss_growth": max(0, peak - self.rss0),
            "peak_reset": self.peak_reset,
        }
        return self.result
