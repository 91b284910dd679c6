"""What gets compiled, shared by setup.py (wheels, pip installs) and the DILCONV_JIT=1 path
(`torch.utils.cpp_extension.load` at import, for kernel developers). Imports nothing of dilconv.

Environment switches:
  DILCONV_CUDA=0          CPU-only build even where CUDA is available
  FORCE_CUDA=1            build the CUDA sources even if this torch/nvcc pair looks unusable
  TORCH_CUDA_ARCH_LIST    archs to compile for (default DEFAULT_ARCH_LIST; no GPU needs to be visible)
  MAX_JOBS                parallel compile jobs (torch's ninja build honours it)
  CUDA_HOME               CUDA toolkit; default /usr/local/cuda when it exists
"""
from __future__ import annotations

import glob
import os

DEFAULT_ARCH_LIST = "8.0;8.6;8.9;9.0+PTX"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc")


def set_cuda_home() -> None:
    # torch.utils.cpp_extension reads CUDA_HOME at import; with no GPU it would otherwise guess.
    if "CUDA_HOME" not in os.environ and os.path.exists("/usr/local/cuda/bin/nvcc"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"


def want_cuda(torch) -> bool:
    if os.environ.get("DILCONV_CUDA", "1") == "0":
        return False
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    from torch.utils.cpp_extension import CUDA_HOME

    return torch.version.cuda is not None and os.path.exists(os.path.join(CUDA_HOME or "", "bin", "nvcc"))


def arch_list() -> str:
    # Without a visible GPU torch derives the arch list from the devices and fails (pytorch
    # issue 137261): always give it one.
    return os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCH_LIST)


def sources(with_cuda: bool, relative: bool = True) -> list[str]:
    patterns = ["*.cpp", "cpu/*.cpp", "emu/*.cpp"] + (["cuda/*.cpp", "cuda/*.cu"] if with_cuda else [])
    out = []
    for p in patterns:
        out += sorted(glob.glob(os.path.join(CSRC, p)))
    return [os.path.relpath(s, ROOT) for s in out] if relative else out


def nvidia_include_dirs() -> list[str]:
    # ATen/cuda headers include cusparse.h/cublas*.h, which ship in torch's nvidia wheels, not
    # in the toolkit directory.
    dirs = []
    try:
        import nvidia  # type: ignore

        for base in nvidia.__path__:
            dirs += sorted(glob.glob(os.path.join(base, "*", "include")))
    except ImportError:
        pass
    return dirs


def flags(with_cuda: bool) -> dict:
    # -fopenmp: at::parallel_for is a header template that is only parallel when the including
    # translation unit is compiled with OpenMP (torch's ParallelOpenMP.h); without it every CPU
    # kernel runs on one thread. The libgomp it links is the one torch already loaded (same soname).
    cxx = ["-O3", "-std=c++20", "-fvisibility=hidden", "-fopenmp"]
    nvcc = ["-O3", "-std=c++17", "-lineinfo", "--expt-relaxed-constexpr"]
    macros = [("DILCONV_WITH_CUDA", "1")] if with_cuda else []
    include = [CSRC] + (nvidia_include_dirs() if with_cuda else [])
    return {"cxx": cxx, "nvcc": nvcc, "define_macros": macros, "include_dirs": include,
            "ldflags": ["-fopenmp"]}


def local_version(torch, with_cuda: bool) -> str:
    """PEP 440 local version naming what the build is tied to, e.g. 'torch2.14cu130'."""
    major_minor = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    dev = ("cu" + torch.version.cuda.replace(".", "")) if with_cuda and torch.version.cuda else "cpu"
    return f"torch{major_minor}{dev}"


def build_info(torch, with_cuda: bool) -> dict:
    return {
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda if with_cuda else None,
        "with_cuda": with_cuda,
        "cuda_arch_list": arch_list() if with_cuda else "",
    }
