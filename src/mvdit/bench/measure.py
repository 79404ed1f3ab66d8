"""Measuring on a shared machine: wall-clock timing, peak memory, numbers for tables.

Every benchmark and study times with `timed` and samples memory with `PeakMemory`, so their
numbers mean the same thing: the best of several calls after a warm-up (on a shared machine the
minimum is the estimate of the work itself that load spikes disturb least), and the peak of the
process's resident set (CPU) or of CUDA's allocator inside a block.
"""

from __future__ import annotations

import os
import platform
import resource
import threading
import time
from collections.abc import Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn: Callable[[], object], device: torch.device = torch.device("cpu")) -> float:
    """Seconds of one call, waiting for the device to finish."""
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def timed(
    fn: Callable[[], object],
    device: torch.device = torch.device("cpu"),
    reps: int = 3,
    min_seconds: float = 0.0,
    warmup: bool = True,
) -> list[float]:
    """Seconds of `reps` calls (more while under `min_seconds` in total, at most 50), after one
    warm-up call (first calls pay for allocator growth and kernel selection)."""
    if warmup:
        fn()
        sync(device)
    times: list[float] = []
    while len(times) < reps or (sum(times) < min_seconds and len(times) < 50):
        times.append(time_once(fn, device))
    return times


def load_average() -> tuple[float, float, float] | None:
    """The machine's 1/5/15-minute load (os.getloadavg), None where the platform has none:
    benchmarks record it before and after they time, so a reader can tell a loaded run."""
    return os.getloadavg() if hasattr(os, "getloadavg") else None


def machine_info(load_start, device: torch.device | None = None) -> dict:
    """What every benchmark's JSON records of the machine it ran on: the device (the CPU's name,
    or the GPU's), cores, torch threads and version, and the load before and after timing."""
    cuda = device is not None and device.type == "cuda"
    return {
        "device": torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "loadavg_start": load_start,
        "loadavg_end": load_average(),
    }  # fmt: skip


def current_rss() -> int:
    """Resident set size of this process in bytes (Linux /proc; elsewhere the peak so far)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMemory:
    """Peak memory inside a `with` block: CUDA's allocator peak, or on CPU the process's resident
    set sampled every 5 ms (the OS high-water mark never goes down, so it cannot isolate one stage).
    `start` is the memory when the block was entered."""

    def __init__(self, device: torch.device | str = "cpu", interval: float = 0.005):
        self.device = torch.device(device)
        self.interval, self.start, self.peak = interval, 0, 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, current_rss())

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            self.start = self.peak = current_rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, current_rss())

    @property
    def mb(self) -> float | None:
        """The peak in MiB: on CPU the whole process's resident set (Python, torch and the text
        encoder included, ~0.5 GB), on CUDA the allocator's peak; None where not measurable."""
        return self.peak / 2**20 if self.peak else None


def si(x: float, unit: str = "") -> str:
    """1.23e9 -> '1.23 G' (+ unit): the one number format of every table and CLI line."""
    for prefix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {prefix}{unit}"
    return f"{x:.0f} {unit}".rstrip()


def seconds(x: float | None) -> str:
    """0.0123 -> '12.3 ms', 2.5 -> '2.50 s', None -> '–'."""
    if x is None:
        return "–"
    return f"{x * 1e3:.3g} ms" if x < 1 else f"{x:.2f} s"
