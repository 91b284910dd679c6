"""Build of dilconv's compiled extension `dilconv._C`.

Environment switches (all optional):
  DILCONV_CUDA=0          CPU-only build even where CUDA is available (fast local iteration)
  FORCE_CUDA=1            build the CUDA sources even if this torch/nvcc pair looks unusable
  TORCH_CUDA_ARCH_LIST    archs to compile for; default below (no GPU needs to be visible)
  MAX_JOBS                parallel compile jobs (honoured by torch's ninja build)
  CUDA_HOME               CUDA toolkit; default /usr/local/cuda when it exists
"""
import glob
import os
import sys

from setuptools import find_packages, setup

# torch.utils.cpp_extension reads CUDA_HOME at import; with no GPU it would otherwise guess.
if "CUDA_HOME" not in os.environ and os.path.exists("/usr/local/cuda/bin/nvcc"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

import torch  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCH_LIST = "8.0;8.6;8.9;9.0+PTX"


def want_cuda() -> bool:
    if os.environ.get("DILCONV_CUDA", "1") == "0":
        return False
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    nvcc = os.path.join(CUDA_HOME or "", "bin", "nvcc")
    return torch.version.cuda is not None and os.path.exists(nvcc)


def sources(*patterns):
    out = []
    for p in patterns:
        out += sorted(glob.glob(os.path.join("csrc", p)))
    return out


def nvidia_include_dirs():
    # ATen/cuda headers include cusparse.h/cublas*.h, which ship in torch's nvidia wheels, not in
    # the toolkit directory.
    dirs = []
    try:
        import nvidia  # type: ignore

        for base in nvidia.__path__:
            dirs += sorted(glob.glob(os.path.join(base, "*", "include")))
    except ImportError:
        pass
    return dirs


def write_build_info(with_cuda: bool, arch_list: str) -> None:
    info = {
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda if with_cuda else None,
        "with_cuda": with_cuda,
        "cuda_arch_list": arch_list if with_cuda else "",
    }
    with open(os.path.join(HERE, "dilconv", "_build_info.py"), "w") as f:
        f.write("# Written by setup.py at build time.\n")
        for k, v in info.items():
            f.write(f"{k} = {v!r}\n")


def make_extension():
    with_cuda = want_cuda()
    arch_list = ""
    cxx = ["-O3", "-std=c++20", "-fvisibility=hidden"]
    define_macros = []
    include_dirs = [os.path.join(HERE, "csrc")]
    srcs = sources("*.cpp", "cpu/*.cpp", "emu/*.cpp")
    if with_cuda:
        # Without a visible GPU torch derives the arch list from the devices and fails
        # (pytorch issue 137261): always give it one.
        arch_list = os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCH_LIST)
        srcs += sources("cuda/*.cpp", "cuda/*.cu")
        define_macros.append(("DILCONV_WITH_CUDA", "1"))
        include_dirs += nvidia_include_dirs()
        nvcc = ["-O3", "-std=c++17", "-lineinfo", "--expt-relaxed-constexpr", "-Xptxas=-v"]
        nvcc = [a for a in nvcc if a != "-Xptxas=-v" or os.environ.get("DILCONV_PTXAS_VERBOSE") == "1"]
        ext = CUDAExtension(
            "dilconv._C",
            srcs,
            include_dirs=include_dirs,
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx, "nvcc": nvcc},
        )
    else:
        ext = CppExtension(
            "dilconv._C",
            srcs,
            include_dirs=include_dirs,
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx},
        )
    write_build_info(with_cuda, arch_list)
    print(f"dilconv: building {'with CUDA for ' + arch_list if with_cuda else 'CPU-only'}", file=sys.stderr)
    return ext


setup(
    packages=find_packages(include=["dilconv", "dilconv.*"]),
    ext_modules=[make_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
