"""Shared plumbing of the Triton kernels: interpreter detection, autotuning, output allocation.

Autotuning: each kernel lists a small config space next to its source. On a GPU all of them are
autotuned per problem shape (the `key`). Under TRITON_INTERPRET=1 only the kernel's default config
is given to @triton.autotune: with more than one config the autotuner benchmarks, which asks the
(absent) GPU driver and fails. The full list stays reachable as `kernel.all_configs` (and the
default as `kernel.default_config`) for the ahead-of-time compiler (dilconv/triton/aot.py).
"""
from __future__ import annotations

import os
from typing import Sequence

import torch
import triton

# Read at import, exactly as triton does: the interpreter is chosen when triton is imported.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

# Every kernel body works on 32-bit offsets; the backend refuses larger tensors (unsupported()).
INT32_MAX = 2**31 - 1


def autotune(configs: Sequence[triton.Config], key: Sequence[str], default: int = 0,
             reset_to_zero: Sequence[str] | None = None):
    """@triton.autotune over `configs` on a GPU, over `configs[default]` alone under the
    interpreter."""
    configs = list(configs)

    def deco(fn):
        active = [configs[default]] if INTERPRET else configs
        tuned = triton.autotune(configs=active, key=list(key),
                                reset_to_zero=list(reset_to_zero) if reset_to_zero else None)(fn)
        tuned.all_configs = configs
        tuned.default_config = configs[default]
        return tuned

    return deco


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot input precision for fp32 operands: IEEE fp32 unless the user allowed TF32 for
    matmuls (torch's own flag, off by default), so fp32 results match torch.matmul's contract.
    16-bit operands ignore it (they always run on tensor cores with fp32 accumulation)."""
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def empty(like: torch.Tensor, shape: Sequence[int], fmt: torch.memory_format,
          dtype: torch.dtype | None = None) -> torch.Tensor:
    """An output with exactly the strides of dilconv._ops' fake kernels
    (`new_empty(shape).contiguous(memory_format=fmt)`), without that expression's copy: a
    contiguous tensor that is also channels_last-contiguous (ambiguous sizes) is kept as it is."""
    dtype = dtype or like.dtype
    t = torch.empty(tuple(shape), dtype=dtype, device=like.device)
    if fmt == torch.channels_last and not t.is_contiguous(memory_format=fmt):
        t = torch.empty(tuple(shape), dtype=dtype, device=like.device, memory_format=fmt)
    return t


def split_reduction(total: int, programs: int, min_chunk: int) -> tuple[int, int]:
    """How a weight-gradient kernel splits its reduction over N*P*Q: (splits, chunk).

    Weight gradients have few outputs (K*C/g*R*S) and a long reduction, so without a split a
    small layer would run on a handful of SMs. Splits are added until about 4 programs per SM of
    the largest target (132 SMs) exist, but never below `min_chunk` reduction elements per
    program (partial sums then go through fp32 atomics into a zeroed workspace)."""
    target = 4 * 132
    splits = max(1, min(triton.cdiv(target, max(programs, 1)), triton.cdiv(total, min_chunk)))
    chunk = triton.cdiv(total, splits)
    return triton.cdiv(total, chunk), chunk
