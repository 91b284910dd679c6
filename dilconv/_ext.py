"""Loading of the compiled extension. `import dilconv` never fails because it is missing."""
from __future__ import annotations

import torch

BUILD_HINT = (
    "build it with `pip install --no-build-isolation .` (or `python setup.py build_ext --inplace` "
    "in a checkout; DILCONV_CUDA=0 for a CPU-only build)"
)

import importlib.util

loaded = False
load_error: str | None = None
if importlib.util.find_spec("dilconv._C") is None:
    load_error = "dilconv._C was not built"
else:
    try:
        from dilconv import _C  # noqa: F401  (loads the library; its op registrations run)

        loaded = True
    except ImportError as e:  # e.g. built against another torch
        load_error = f"dilconv._C failed to load: {e}"

try:
    from dilconv import _build_info as build_info  # written by setup.py
except ImportError:
    build_info = None


_kernel_cache: dict = {}


def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether the op `dilconv::<op>` has an implementation for the dispatch key. Cached: the
    answer cannot change once the library is loaded, and torch.compile cannot trace the query."""
    if not loaded:
        return False
    key = (op, dispatch_key)
    if key not in _kernel_cache:
        _kernel_cache[key] = torch._C._dispatch_has_kernel_for_dispatch_key(f"dilconv::{op}", dispatch_key)
    return _kernel_cache[key]


def _warm_cache():
    from dilconv._ops import OP_NAMES

    for name in OP_NAMES:
        for suffix, key in (("", "CPU"), ("", "CUDA"), ("_emu", "CPU")):
            has_kernel(name + suffix, key)


def cuda_compiled() -> bool:
    return has_kernel("conv2d", "CUDA")
