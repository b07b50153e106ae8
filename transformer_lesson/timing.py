"""Measuring how long code takes, honestly.

GPU work is asynchronous: a call returns before the GPU has finished, so a timer must wait for
the device (``torch.cuda.synchronize``) before it reads the clock. The first calls are slower
(memory allocation, kernel selection), so they are run as warm-up and not counted. What is
reported is the median of several repeats, which ignores the odd slow run.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Timing:
    """Seconds per call: the median and the spread (min, max) over ``repeats`` runs."""

    median: float
    low: float
    high: float
    repeats: int
    device: str

    def __str__(self) -> str:
        ms = 1e3
        return (f"{self.median * ms:.3f} ms (min {self.low * ms:.3f}, max {self.high * ms:.3f}, "
                f"n={self.repeats}, {self.device})")


def synchronize(device: torch.device | str) -> None:
    """Wait until ``device`` has finished all queued work."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def measure(
    fn: Callable[[], object],
    device: torch.device | str = "cpu",
    repeats: int = 10,
    warmup: int = 2,
    min_time: float = 0.0,
) -> Timing:
    """Time ``fn()`` on ``device``.

    Runs ``warmup`` untimed calls, then at least ``repeats`` timed ones (more, until
    ``min_time`` seconds have passed, so that very fast functions are measured stably).
    """
    if repeats < 1:
        raise ValueError("repeats must be at least 1.")
    for _ in range(warmup):
        fn()
    synchronize(device)
    samples: list[float] = []
    started = time.perf_counter()
    while len(samples) < repeats or time.perf_counter() - started < min_time:
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        samples.append(time.perf_counter() - t0)
    return Timing(
        median=statistics.median(samples),
        low=min(samples),
        high=max(samples),
        repeats=len(samples),
        device=str(torch.device(device)),
    )


def cpu_name() -> str:
    """The processor's model name (from /proc/cpuinfo on Linux), for reports of timings."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def describe_device(device: torch.device | str) -> str:
    """What a timing ran on: the GPU's name, or the CPU's with its cores and PyTorch's thread count."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (cuda, CUDA {torch.version.cuda})"
    return f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads ({device.type})"
