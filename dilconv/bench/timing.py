"""Timing: A/B-interleaved repeats with medians and spreads, on the CPU or a CUDA device.

Every timed callable takes the repeat index `i` (a GPU case rotates through input copies with it
so that operands come from DRAM, not L2). The callables of one case are timed interleaved: each
repeat runs every backend once, in an order that rotates, so that a noisy neighbour or a clock
change hits all of them alike; the speed-up is the median of the per-repeat paired ratios.
"""
from __future__ import annotations

import ctypes
import dataclasses
import resource
import statistics
import time
from typing import Callable, Optional

import torch

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4


def pin_malloc() -> str:
    """Keep freed memory in the process so that a fresh output tensor does not page-fault.

    glibc returns large blocks (mmap'ed above 128 KiB-32 MiB, or the heap top beyond
    M_TRIM_THRESHOLD) to the OS on free; the next allocation of the same size then pays a page
    fault per 4 KiB page (a 2 ms op can read 7 ms). With mmap off and trimming off, the heap keeps
    the pages and reuses them. Must run before the first parallel region (worker threads' arenas
    are set up then), i.e. at the start of the benchmark process."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 2**30) == 1
    except (OSError, AttributeError):
        ok = False
    if ok:
        return "glibc mallopt(M_MMAP_MAX=0, M_TRIM_THRESHOLD=1 GiB) set via ctypes at start: freed tensors stay in the heap"
    return "not glibc: allocator left at its defaults (page faults per call are reported)"


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


@dataclasses.dataclass
class Stats:
    """Seconds per call."""

    median: float
    q1: float
    q3: float
    min: float
    max: float
    n: int
    faults_per_call: Optional[float] = None

    @staticmethod
    def of(samples, faults_per_call=None) -> "Stats":
        s = sorted(samples)
        q = statistics.quantiles(s, n=4) if len(s) >= 2 else [s[0]] * 3
        return Stats(statistics.median(s), q[0], q[2], s[0], s[-1], len(s), faults_per_call)


def paired_speedup(base: list, other: list) -> Stats:
    """Median and spread of per-repeat ratios base/other (samples taken in the same repeat)."""
    return Stats.of([b / o for b, o in zip(base, other)])


class CpuTimer:
    """perf_counter around each call; `number` calls per sample for sub-millisecond ops."""

    device = "cpu"

    def calibrate(self, fn, warmup_s: float) -> float:
        fn(0)  # first call: lazy init, weight reorders
        t0 = time.perf_counter()
        n = 0
        while True:
            fn(n)
            n += 1
            dt = time.perf_counter() - t0
            if dt >= warmup_s or n >= 50:
                return dt / n

    def sample(self, fn, i, number):
        t0 = time.perf_counter()
        for j in range(number):
            fn(i + j)
        return (time.perf_counter() - t0) / number

    def finish(self, pending):
        return pending


class CudaTimer:
    """CUDA events around each call; results read after one synchronisation per repeat."""

    device = "cuda"

    def calibrate(self, fn, warmup_s: float) -> float:
        fn(0)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        n = 0
        while True:
            fn(n)
            n += 1
            if n % 5 == 0:
                torch.cuda.synchronize()
                dt = time.perf_counter() - t0
                if dt >= warmup_s or n >= 200:
                    return dt / n

    def sample(self, fn, i, number):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for j in range(number):
            fn(i + j)
        end.record()
        return (start, end, number)

    def finish(self, pending):
        torch.cuda.synchronize()
        return [s.elapsed_time(e) / 1e3 / n for s, e, n in pending]


def timer_for(device: str):
    return CudaTimer() if device == "cuda" else CpuTimer()


def measure(fns: dict[str, Callable[[int], object]], timer, budget_s: float = 1.0,
            min_reps: int = 7, max_reps: int = 200, warmup_s: float = 0.05,
            min_sample_s: float = 2e-4) -> dict[str, tuple[Stats, list]]:
    """Interleaved timing of `fns` (name -> fn(i)). Returns name -> (Stats, raw samples)."""
    names = list(fns)
    est = {k: timer.calibrate(fns[k], warmup_s) for k in names}
    number = {k: max(1, int(min_sample_s / max(est[k], 1e-9))) for k in names}
    samples = {k: [] for k in names}
    faults = {k: 0 for k in names}
    calls = {k: 0 for k in names}
    t_start = time.perf_counter()
    rep = 0
    while rep < max_reps and (rep < min_reps or time.perf_counter() - t_start < budget_s):
        order = names[rep % len(names):] + names[:rep % len(names)]
        pending = []
        for k in order:
            f0 = minor_faults()
            pending.append(timer.sample(fns[k], rep * number[k], number[k]))
            faults[k] += minor_faults() - f0
            calls[k] += number[k]
        for k, t in zip(order, timer.finish(pending)):
            samples[k].append(t)
        rep += 1
    return {k: (Stats.of(samples[k], faults[k] / calls[k]), samples[k]) for k in names}
