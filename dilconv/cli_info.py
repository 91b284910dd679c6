"""`python -m dilconv info`."""
from __future__ import annotations

import platform

import torch

import dilconv
from dilconv import _ext
from dilconv import registry as B


def add_arguments(parser):
    pass


def main(args) -> int:
    bi = _ext.build_info
    print(f"dilconv {dilconv.__version__}")
    print(f"python {platform.python_version()}, torch {torch.__version__}, "
          f"torch CUDA {torch.version.cuda or 'none (CPU build)'}")
    print(f"CUDA device visible: {torch.cuda.is_available()}"
          + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""))
    if _ext.loaded:
        print("compiled extension: loaded" + (f" (built against torch {bi.torch_version})" if bi else ""))
        cuda = _ext.cuda_compiled()
        archs = bi.cuda_arch_list if bi else "?"
        print(f"CUDA sources compiled: {'yes, for archs ' + archs if cuda else 'no'}")
        if B._cpu_gemm_paths_win():
            gemm = "1x1/dense/transposed convs on dilconv's GEMM paths"
        elif B._avx512() and not B._intel():
            gemm = (f"NCHW 1x1 convs (in training up to {B.POINTWISE_MAX_CK} input x output "
                    "channels) and "
                    f"the fused separable forward on maps up to {B.SEPARABLE_MAX_HW} pixels on "
                    "dilconv's register-tiled GEMM, dense/transposed convs on oneDNN")
        else:
            gemm = "1x1/dense/transposed convs on oneDNN"
        cl_dw = ("dilconv's kernel on maps of 64x64 and more where input and output exceed "
                 "20 MiB, else oneDNN"
                 if B._cl_dw_stream_wins() else "oneDNN")
        print(f"CPU kernels: {torch.ops.dilconv.cpu_isa()} variant, CPU maker "
              f"{torch.ops.dilconv.cpu_vendor()} (auto runs {gemm}, "
              f"channels-last depthwise inference on {cl_dw})")
    else:
        print(f"compiled extension: not available ({_ext.load_error}); {_ext.BUILD_HINT}")
    print(f"usable backends: {', '.join(B.backends())} (current: {B.current_backend()})")
    for name in B.NAMES:
        if name == "auto":
            continue
        why = B.get_backend(name).available()
        if why:
            print(f"  {name}: not usable: {why}")
    return 0
