"""Memory-traffic counters of the CUDA emulation (backend "cuda-emu"): a model of the global
memory traffic the CUDA kernels would cause on a GPU, from the emulated runs.

Every global load/store a kernel makes through dc::load/dc::store is recorded per lane; at the end
of each block the accesses are grouped into warp requests (the k-th execution of one source line
by the lanes of one warp) and the distinct 32-byte sectors of each request are counted. Per call
site and per launch the report gives

    requests      warp-level requests
    sectors       32-byte sectors touched (sum over requests)
    useful_bytes  distinct bytes the lanes asked for (sum over requests)
    bytes         all bytes the lanes asked for (sum over requests)

sector efficiency = useful_bytes / (32 * sectors) (what Nsight Compute calls global load/store
efficiency; 1.0 = perfectly coalesced), and sector_bytes = 32 * sectors is the modeled traffic
with no cache reuse between requests (a pessimistic L1-miss model). These are models, not GPU
measurements.

Usage (the counters are off by default; the C functions live in dilconv._C, read via ctypes):

    from dilconv import emu_traffic
    with emu_traffic.counting() as t:
        torch.ops.dilconv.conv2d_emu(...)
    t.efficiency(function="depthwise", kind="load")     # sites whose function name contains it
    t.versus_minimum(minimum_bytes)                     # modeled traffic (sector bytes) / your minimum

DILCONV_EMU_TRAFFIC=1 in the environment switches counting on from the start of the process.
"""
from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import json
from typing import Optional

_lib = None


def library() -> ctypes.CDLL:
    """dilconv._C loaded through ctypes (the same library instance Python imported)."""
    global _lib
    if _lib is None:
        from dilconv import _ext

        if not _ext.loaded:
            raise RuntimeError(f"dilconv._C is not available ({_ext.load_error})")
        path = importlib.util.find_spec("dilconv._C").origin
        lib = ctypes.CDLL(path)
        try:
            lib.dilconv_emu_traffic_report.restype = ctypes.c_char_p
            lib.dilconv_emu_traffic_enable.argtypes = [ctypes.c_int]
        except AttributeError as e:
            raise RuntimeError("this dilconv._C was built without the CUDA emulation runtime") from e
        _lib = lib
    return _lib


def enable(on: bool = True) -> None:
    library().dilconv_emu_traffic_enable(1 if on else 0)


def enabled() -> bool:
    return bool(library().dilconv_emu_traffic_enabled())


def reset() -> None:
    library().dilconv_emu_traffic_reset()


def report() -> dict:
    """The raw report: {"enabled", "sites": [...], "launches": [...]} (see the module doc)."""
    return json.loads(library().dilconv_emu_traffic_report().decode())


class Traffic:
    """A report with filters. `function` selects entries whose C++ function name contains the
    string (sites: the function containing the access; launches: any function of the launch);
    `kind` is "load", "store" or None for both."""

    def __init__(self, data: dict):
        self.data = data

    def sites(self, function: Optional[str] = None, kind: Optional[str] = None) -> list:
        return [s for s in self.data["sites"]
                if (function is None or function in s["function"]) and (kind is None or s["kind"] == kind)]

    def launches(self, function: Optional[str] = None) -> list:
        return [l for l in self.data["launches"] if function is None or any(function in f for f in l["functions"])]

    def totals(self, function: Optional[str] = None, kind: Optional[str] = None) -> dict:
        t = {"requests": 0, "sectors": 0, "useful_bytes": 0, "bytes": 0}
        for s in self.sites(function, kind):
            for k in t:
                t[k] += s[k]
        return t

    def efficiency(self, function: Optional[str] = None, kind: Optional[str] = None) -> float:
        t = self.totals(function, kind)
        if t["sectors"] == 0:
            raise ValueError("no global accesses recorded for this selection")
        return t["useful_bytes"] / (32.0 * t["sectors"])

    def sector_bytes(self, function: Optional[str] = None, kind: Optional[str] = None) -> int:
        return 32 * self.totals(function, kind)["sectors"]

    def requested_bytes(self, function: Optional[str] = None, kind: Optional[str] = None) -> int:
        return self.totals(function, kind)["bytes"]

    def versus_minimum(self, minimum_bytes: int, function: Optional[str] = None) -> float:
        """Modeled global traffic (sector bytes, loads + stores) over the caller's minimum (e.g.
        input + weight + output once)."""
        if minimum_bytes <= 0:
            raise ValueError("minimum_bytes must be positive")
        return self.sector_bytes(function) / minimum_bytes


@contextlib.contextmanager
def counting():
    """Reset, count while the block runs, stop; the yielded Traffic is filled on exit."""
    was = enabled()
    reset()
    enable(True)
    t = Traffic({"enabled": True, "sites": [], "launches": []})
    try:
        yield t
    finally:
        enable(was)
        t.data = report()
