"""What the numbers were measured on, and the machine's own peaks measured in the same run."""
from __future__ import annotations

import os
import platform
import subprocess

import torch

import dilconv
from dilconv import registry
from dilconv.bench.timing import Stats, measure, timer_for


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _loadavg():
    """1/5/15-minute load averages: a shared machine's noise, stated with the numbers."""
    try:
        return [round(x, 1) for x in os.getloadavg()]
    except OSError:
        return None


def git_commit() -> str | None:
    try:
        here = os.path.dirname(os.path.abspath(dilconv.__file__))
        out = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _dilconv_cpu_isa():
    # the instruction-set variant of the "cpu" backend's kernels picked for this CPU
    try:
        return torch.ops.dilconv.cpu_isa()
    except (AttributeError, RuntimeError):
        return None


def info(device: str, threads: int, malloc_note: str) -> dict:
    d = {
        "device": device,
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "threads_used": threads,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "dilconv_cpu_isa": _dilconv_cpu_isa(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "python": platform.python_version(),
        "glibc": " ".join(platform.libc_ver()),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "dilconv": dilconv.__version__,
        "dilconv_commit": git_commit(),
        "backends_usable": registry.backends(),
        "allocation": malloc_note,
        "loadavg_start": _loadavg(),
    }
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        d.update(gpu=p.name, gpu_sm=f"sm_{p.major}{p.minor}", gpu_l2_bytes=p.L2_cache_size,
                 cudnn=torch.backends.cudnn.version(),
                 cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                 matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    return d


CACHED_COPY_BYTES = 16 << 20


def bandwidth_for(peaks: dict, nbytes: float) -> float:
    """The measured copy bandwidth an op moving `nbytes` is compared with: the cache-scale copy
    (CPU) for working sets up to twice its size, else the DRAM-scale one."""
    if "cached_bandwidth_Bps" in peaks and nbytes <= 2 * peaks["cached_copy_bytes"]:
        return peaks["cached_bandwidth_Bps"]
    return peaks["bandwidth_Bps"]


def peaks(device: str, dtypes, budget: float) -> dict:
    """Copy bandwidth (bytes read + written per second) and matmul FLOP/s per dtype, medians.
    Sizes: a 256 MiB copy (far beyond any CPU cache; on a GPU at least 8x L2) and, on the CPU, a
    16 MiB one (the suite's working-set scale), matmul 2048^3 on the CPU (~0.1 s), 8192^3 on a
    GPU."""
    timer = timer_for(device)
    nbytes = 256 << 20
    if device == "cuda":
        nbytes = max(nbytes, 8 * torch.cuda.get_device_properties(0).L2_cache_size)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    bw = measure({"copy": lambda i: dst.copy_(src)}, timer, budget_s=budget, min_reps=5)["copy"][0]
    out = {"copy_bytes": 2 * nbytes, "bandwidth_Bps": 2 * nbytes / bw.median,
           "bandwidth_spread_Bps": [2 * nbytes / bw.q3, 2 * nbytes / bw.q1], "matmul": {}}
    del src, dst
    if device == "cpu":
        # the suite's operands are tens of MiB: on a CPU with a large last-level cache they stay
        # in it, and the DRAM copy above understates what such an op can reach
        small = CACHED_COPY_BYTES
        src = torch.empty(small // 4, dtype=torch.float32).uniform_()
        dst = torch.empty_like(src)
        cb = measure({"copy": lambda i: dst.copy_(src)}, timer, budget_s=budget / 2,
                     min_reps=20)["copy"][0]
        out.update(cached_copy_bytes=2 * small, cached_bandwidth_Bps=2 * small / cb.median)
        del src, dst
    from dilconv.bench.suite import DTYPES
    for name in dtypes:
        n = 2048 if device == "cpu" else 8192
        a = torch.randn(n, n, device=device).to(DTYPES[name])
        b = torch.randn(n, n, device=device).to(DTYPES[name])
        st: Stats = measure({"mm": lambda i: a @ b}, timer, budget_s=budget, min_reps=3)["mm"][0]
        out["matmul"][name] = {"n": n, "flops_per_s": 2 * n**3 / st.median,
                               "spread": [2 * n**3 / st.q3, 2 * n**3 / st.q1]}
    return out
