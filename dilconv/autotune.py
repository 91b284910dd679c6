"""Per-shape autotuning for the "auto" backend on a GPU.

"auto" normally takes the first backend in its order that handles a problem and prefers it (a
static policy). With autotuning on (`DILCONV_AUTOTUNE=1`, or `autotune.enable()`), the first call
of each distinct problem on a CUDA device times every usable candidate backend ("cuda", "triton",
"torch" = cuDNN) on random inputs of that problem's shape and remembers the fastest; later calls
of the same problem use the remembered choice without timing anything.

The choices are cached in memory and persisted as JSON (default
`~/.cache/dilconv/autotune.json`, or `DILCONV_AUTOTUNE_CACHE`), keyed by

    device name | dtype | layout | op and the problem's sizes, stride, padding, dilation, groups

so a cache copied to another GPU model is simply not used there. Loading is safe: the file is
parsed with `json` only (no pickle, nothing is executed or imported), and every entry is
validated (key and choice are short strings from a fixed vocabulary, timings are finite floats);
anything malformed is dropped with a warning, and a corrupt file is treated as empty. Writes are
atomic (temporary file + rename).

Under torch.compile tracing nothing is timed: only cached choices are used (a miss falls back to
the static policy), so compiled graphs never run benchmarks while tracing.

Within the "cuda" backend, the implicit-GEMM kernels pick their tile configuration with a small
heuristic (csrc/kernels/gemm_conv.cuh, `select_conv_config`); this module tunes the choice
between backends.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import threading
import time
import warnings
from typing import Callable, Dict, Iterable, Optional

import torch

VERSION = 1
ENV_ENABLE = "DILCONV_AUTOTUNE"
ENV_PATH = "DILCONV_AUTOTUNE_CACHE"
MAX_KEY_LEN = 512
MAX_ENTRIES = 100_000
CHOICES = ("torch", "cpu", "cuda", "cuda-emu", "triton")

_enabled: Optional[bool] = None


def enabled() -> bool:
    if _enabled is not None:
        return _enabled
    return os.environ.get(ENV_ENABLE, "0") not in ("", "0")


def enable(on: bool = True) -> None:
    """Switch autotuning on/off for this process (overrides DILCONV_AUTOTUNE)."""
    global _enabled
    _enabled = bool(on)


def default_path() -> str:
    p = os.environ.get(ENV_PATH)
    if p:
        return p
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "dilconv", "autotune.json")


def problem_key(p, device_name: str) -> str:
    """The cache key of a registry.Problem on a device: every field that can change which
    backend is fastest (batch included: batch 1 and batch 32 often differ)."""
    layout = "nhwc" if p.channels_last else "nchw"
    dtype = str(p.dtype).replace("torch.", "")
    fields = [device_name, dtype, layout, p.op, p.n, p.c, p.h, p.w, p.k, p.r, p.s,
              "x".join(map(str, p.stride)), "x".join(map(str, p.padding)),
              "x".join(map(str, p.dilation)), p.groups, p.mid_channels,
              "grad" if p.requires_grad else "nograd"]
    return "|".join(str(f) for f in fields)


def _valid_entry(key, entry) -> bool:
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_LEN:
        return False
    if not isinstance(entry, dict) or set(entry) - {"choice", "times_ms"}:
        return False
    if entry.get("choice") not in CHOICES:
        return False
    times = entry.get("times_ms", {})
    if not isinstance(times, dict):
        return False
    for name, t in times.items():
        if name not in CHOICES or isinstance(t, bool) or not isinstance(t, (int, float)):
            return False
        if not math.isfinite(t) or t < 0:
            return False
    return True


class Cache:
    """The persistent problem -> backend choices (see the module doc for the file format)."""

    def __init__(self, path: Optional[str] = None):
        self.path = path if path is not None else default_path()
        self.entries: Dict[str, dict] = {}
        self._lock = threading.Lock()
        self.load()

    def load(self) -> None:
        self.entries = {}
        try:
            with open(self.path, "r", encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return
        except (OSError, ValueError, RecursionError) as e:
            warnings.warn(f"dilconv autotune: ignoring unreadable cache {self.path}: {e}")
            return
        if not isinstance(data, dict) or data.get("version") != VERSION or not isinstance(data.get("entries"), dict):
            warnings.warn(f"dilconv autotune: ignoring cache {self.path} (not a version-{VERSION} dilconv autotune file)")
            return
        dropped = 0
        for key, entry in data["entries"].items():
            if len(self.entries) >= MAX_ENTRIES:
                dropped += 1
                continue
            if _valid_entry(key, entry):
                self.entries[key] = {"choice": entry["choice"], "times_ms": dict(entry.get("times_ms", {}))}
            else:
                dropped += 1
        if dropped:
            warnings.warn(f"dilconv autotune: dropped {dropped} malformed entries of {self.path}")

    def get(self, key: str) -> Optional[str]:
        e = self.entries.get(key)
        return e["choice"] if e else None

    def put(self, key: str, choice: str, times_ms: Dict[str, float]) -> None:
        entry = {"choice": choice, "times_ms": {k: float(v) for k, v in times_ms.items()}}
        if not _valid_entry(key, entry):
            raise ValueError(f"dilconv autotune: refusing to store invalid entry {key!r}: {entry!r}")
        with self._lock:
            self.entries[key] = entry

    def save(self) -> None:
        d = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(d, exist_ok=True)
        with self._lock:
            data = {"version": VERSION, "entries": dict(sorted(self.entries.items()))}
        fd, tmp = tempfile.mkstemp(prefix=".autotune-", suffix=".json", dir=d)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1)
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise


def cuda_timer(fn: Callable[[], object], warmup: int = 2, reps: int = 5) -> float:
    """Median milliseconds of fn() on the current CUDA stream (CUDA events, synchronised)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def wall_timer(fn: Callable[[], object], warmup: int = 1, reps: int = 3) -> float:
    """Median milliseconds of fn() by wall clock (CPU tensors)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


class Autotuner:
    """Chooses among named candidates per key by timing them once; `timer(fn) -> ms` is
    injectable (tests use a fake one)."""

    def __init__(self, cache: Optional[Cache] = None, timer: Optional[Callable] = None,
                 save: bool = True):
        self.cache = cache if cache is not None else Cache()
        self.timer = timer
        self.save = save

    def choose(self, key: str, candidates: Dict[str, Callable[[], object]]) -> str:
        if not candidates:
            raise ValueError("dilconv autotune: no candidates")
        hit = self.cache.get(key)
        if hit in candidates:
            return hit
        if _compiling():
            return next(iter(candidates))
        timer = self.timer or (cuda_timer if torch.cuda.is_available() else wall_timer)
        times = {}
        for name, fn in candidates.items():
            try:
                times[name] = float(timer(fn))
            except (RuntimeError, NotImplementedError) as e:  # a candidate that fails is out
                warnings.warn(f"dilconv autotune: candidate {name!r} failed on {key}: {e}")
        if not times:
            return next(iter(candidates))
        best = min(times, key=lambda n: (times[n], list(candidates).index(n)))
        self.cache.put(key, best, times)
        if self.save:
            try:
                self.cache.save()
            except OSError as e:
                warnings.warn(f"dilconv autotune: could not write {self.cache.path}: {e}")
        return best


def _compiling() -> bool:
    try:
        return bool(torch.compiler.is_compiling())
    except AttributeError:  # pragma: no cover
        return False


def problem_inputs(p, device):
    """Random tensors of a Problem's shapes for timing (float values, never zeros)."""
    fmt = torch.channels_last if p.channels_last else torch.contiguous_format
    opts = dict(dtype=p.dtype, device=device)
    x = torch.randn(p.n, p.c, p.h, p.w, **opts).contiguous(memory_format=fmt)
    if p.op == "conv_transpose2d":
        w = torch.randn(p.c, p.k // p.groups, p.r, p.s, **opts)
    elif p.op == "separable_conv2d":
        w = (torch.randn(p.mid_channels, 1, p.r, p.s, **opts), torch.randn(p.k, p.mid_channels, 1, 1, **opts))
    else:
        w = torch.randn(p.k, p.c // p.groups, p.r, p.s, **opts)
    return x, w


def _runner(backend, p, x, w):
    if p.op == "conv2d":
        return lambda: backend.conv2d(x, w, None, p.stride, p.padding, p.dilation, p.groups)
    if p.op == "conv_transpose2d":
        return lambda: backend.conv_transpose2d(x, w, None, p.stride, p.padding, (0, 0), p.groups,
                                                p.dilation)
    dw, pw = w
    return lambda: backend.separable_conv2d(x, dw, None, pw, None, p.stride, p.padding, p.dilation,
                                            False, False)


_tuner: Optional[Autotuner] = None


def tuner() -> Autotuner:
    global _tuner
    if _tuner is None:
        _tuner = Autotuner()
    return _tuner


def set_tuner(t: Optional[Autotuner]) -> None:
    """Replace the process-wide tuner (tests; a custom cache path or timer)."""
    global _tuner
    _tuner = t


def pick_backend(p, backends: Iterable, device_name: Optional[str] = None):
    """The fastest of `backends` (registry.Backend objects that all handle `p`) for problem `p`,
    from the cache or by timing each once on random inputs of p's shapes."""
    backends = list(backends)
    if len(backends) == 1:
        return backends[0]
    if device_name is None:
        device_name = torch.cuda.get_device_name() if p.device == "cuda" else p.device
    by_name = {b.name: b for b in backends}
    key = problem_key(p, device_name)
    t = tuner()
    hit = t.cache.get(key)
    if hit in by_name:
        return by_name[hit]
    if _compiling():
        return backends[0]
    with torch.no_grad():
        x, w = problem_inputs(p, p.device)
        cands = {b.name: _runner(b, p, x, w) for b in backends}
        return by_name[t.choose(key, cands)]
