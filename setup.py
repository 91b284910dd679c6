"""Build of dilconv's compiled extension `dilconv._C` (switches: see dilconv/_build_config.py).

    pip install --no-build-isolation .                   # install (CUDA if torch+nvcc allow it)
    pip wheel --no-build-isolation --no-deps -w dist .   # a wheel, e.g. dilconv-0.1.0+torch2.14cu130
    DILCONV_CUDA=0 python setup.py build_ext --inplace   # CPU-only, in place (fast iteration)
"""
import importlib.util
import os
import sys

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("_build_config", os.path.join(HERE, "dilconv", "_build_config.py"))
cfg = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cfg)
cfg.set_cuda_home()

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

BASE_VERSION = "0.1.0"
WITH_CUDA = cfg.want_cuda(torch)
TORCH_MM = ".".join(torch.__version__.split("+")[0].split(".")[:2])


def make_extension():
    f = cfg.flags(WITH_CUDA)
    kind = CUDAExtension if WITH_CUDA else CppExtension
    args = {"cxx": f["cxx"], "nvcc": f["nvcc"]} if WITH_CUDA else {"cxx": f["cxx"]}
    if WITH_CUDA:
        cfg.arch_list()
    info = cfg.build_info(torch, WITH_CUDA)
    with open(os.path.join(HERE, "dilconv", "_build_info.py"), "w") as fh:
        fh.write("# Written by setup.py at build time.\n")
        for k, v in info.items():
            fh.write(f"{k} = {v!r}\n")
    print(f"dilconv: building {'with CUDA for ' + info['cuda_arch_list'] if WITH_CUDA else 'CPU-only'}",
          file=sys.stderr)
    return kind("dilconv._C", cfg.sources(WITH_CUDA), include_dirs=f["include_dirs"],
                define_macros=f["define_macros"], extra_compile_args=args,
                extra_link_args=f["ldflags"])


setup(
    version=f"{BASE_VERSION}+{cfg.local_version(torch, WITH_CUDA)}",
    packages=find_packages(include=["dilconv", "dilconv.*"]),
    # the compiled extension is tied to this torch minor version (C++ ABI)
    install_requires=[f"torch>={TORCH_MM},<{TORCH_MM.split('.')[0]}.{int(TORCH_MM.split('.')[1]) + 1}",
                      "numpy", "tqdm"],
    ext_modules=[make_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
