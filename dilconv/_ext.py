"""Loading of the compiled extension. `import dilconv` never fails because it is missing (only
the "torch" backend is usable then); it fails loudly when the extension was built for another
torch, where loading it would die on undefined symbols.

DILCONV_JIT=1 compiles the extension from a source checkout at import instead (cached per torch
version and CUDA/CPU in ~/.cache/dilconv/jit), through torch.utils.cpp_extension.load.
"""
from __future__ import annotations

import importlib.util
import os

import torch

BUILD_HINT = (
    "build it with `pip install --no-build-isolation .` (or `python setup.py build_ext --inplace` "
    "in a checkout, or set DILCONV_JIT=1; DILCONV_CUDA=0 for a CPU-only build)"
)

try:
    from dilconv import _build_info as build_info  # written by setup.py
except ImportError:
    build_info = None


def _minor(v: str) -> str:
    return ".".join(v.split("+")[0].split(".")[:2])


def check_compatible(info, torch_version: str, torch_cuda) -> None:
    """Raise ImportError if an extension built as `info` cannot load under this torch."""
    if info is None:
        return
    if _minor(info.torch_version) != _minor(torch_version):
        raise ImportError(
            f"dilconv was built against torch {info.torch_version} but torch {torch_version} is "
            f"installed; the compiled extension only works with torch {_minor(info.torch_version)}.x. "
            f"Install torch=={_minor(info.torch_version)}.* or a dilconv wheel built for torch "
            f"{_minor(torch_version)} (or rebuild: {BUILD_HINT}).")
    if info.with_cuda and torch_cuda is None:
        raise ImportError(
            f"this dilconv build has CUDA kernels (CUDA {info.cuda_version}) but the installed torch "
            f"{torch_version} is a CPU-only build; install a CUDA build of torch or a CPU dilconv wheel.")


def _jit_load():
    from torch.utils import cpp_extension

    from dilconv import _build_config as cfg

    cfg.set_cuda_home()
    with_cuda = cfg.want_cuda(torch)
    f = cfg.flags(with_cuda)
    tag = cfg.local_version(torch, with_cuda)
    build_dir = os.path.join(os.path.expanduser("~/.cache/dilconv/jit"), tag)
    os.makedirs(build_dir, exist_ok=True)
    if with_cuda:
        cfg.arch_list()
    cpp_extension.load(
        name="_C", sources=cfg.sources(with_cuda, relative=False), build_directory=build_dir,
        extra_cflags=f["cxx"] + [f"-D{k}={v}" for k, v in f["define_macros"]],
        extra_ldflags=f["ldflags"],
        extra_cuda_cflags=f["nvcc"] + [f"-D{k}={v}" for k, v in f["define_macros"]],
        extra_include_paths=f["include_dirs"], with_cuda=with_cuda, verbose=False)
    return cfg.build_info(torch, with_cuda)


loaded = False
load_error: str | None = None
if os.environ.get("DILCONV_JIT") == "1":
    try:
        import types

        build_info = types.SimpleNamespace(**_jit_load())
        loaded = True
    except Exception as e:  # a compile error must not make `import dilconv` unusable
        load_error = f"DILCONV_JIT=1 compilation failed: {e}"
elif importlib.util.find_spec("dilconv._C") is None:
    load_error = "dilconv._C was not built"
else:
    check_compatible(build_info, torch.__version__, torch.version.cuda)
    try:
        from dilconv import _C  # noqa: F401  (loads the library; its op registrations run)

        loaded = True
    except ImportError as e:
        load_error = f"dilconv._C failed to load: {e}"


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
