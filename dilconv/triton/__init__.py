"""dilconv's Triton backend ("triton"): Triton kernels for every dilconv op.

Modules, one per op family (kernel + configs + launcher):
    conv_igemm      dense/grouped (atrous) conv2d as implicit GEMM: fprop, dgrad, wgrad
    depthwise       depthwise conv2d (dilated, channel multiplier), direct: fwd, dgrad, wgrad
    separable       fused depthwise + pointwise (bias/ReLU mid and out) and its backward
    conv_transpose  transposed conv2d in the gather form
    ops             the `dilconv::*_triton` ops (torch.library), fakes and autograd
    aot             ahead-of-time compilation for sm_80/sm_90 and its resource report

Runs on CUDA tensors, and on CPU tensors in Triton's interpreter when TRITON_INTERPRET=1 is set
before triton is imported (how the kernels are tested without a GPU). Importing this module
imports triton; `dilconv.registry` does it lazily.
"""
from __future__ import annotations

import torch
import triton  # noqa: F401  (ImportError here = backend unavailable; the registry reports it)

from dilconv import registry
from dilconv.triton import _common, ops  # noqa: F401  (registers the ops)

__all__ = ["TritonBackend"]


class TritonBackend(registry.OpsBackend):
    name = "triton"
    suffix = "_triton"
    dtypes = ops.DTYPES
    device_types = ("cuda", "cpu") if _common.INTERPRET else ("cuda",)

    def available(self):
        if _common.INTERPRET or torch.cuda.is_available():
            return None
        return ("no CUDA device is visible (set TRITON_INTERPRET=1 before importing triton to run "
                "the Triton kernels on CPU tensors in the interpreter)")

    def unsupported(self, p):
        if p.device not in self.device_types:
            return (f"backend 'triton' runs on CUDA tensors (CPU tensors only under "
                    f"TRITON_INTERPRET=1), got {p.device}")
        if p.dtype not in self.dtypes:
            return (f"backend 'triton' computes float32/float16/bfloat16 (fp32 accumulation), not "
                    f"{p.dtype}; use backend='torch' (or 'cpu'/'cuda') for it")
        if _common.INTERPRET and p.device == "cpu" and p.dtype == torch.bfloat16:
            return ("bfloat16 arithmetic is silently wrong in the Triton interpreter "
                    "(TRITON_INTERPRET=1); bfloat16 runs on CUDA tensors only")
        if p.max_numel > _common.INT32_MAX:
            return (f"backend 'triton' uses 32-bit indexing and a tensor has {p.max_numel} "
                    f"elements (> 2**31 - 1); use backend='torch' or split the batch")
        return None

    def prefers(self, p):
        """Whether "auto" picks Triton over torch (cuDNN) when the CUDA backend cannot run `p`.

        A static policy from the op structure, not from GPU measurements (none exist yet): the
        fused separable conv (it removes the mid tensor's write and re-read) and dilated depthwise
        conv (which PyTorch sends to its generic native kernel instead of cuDNN). Everything else
        stays with cuDNN until measured."""
        if p.op == "separable_conv2d":
            return True
        depthwise = p.op == "conv2d" and p.groups == p.c and p.k % p.c == 0
        return depthwise and max(p.dilation) > 1
