"""Depthwise conv2d (groups == C, channel multiplier M = K / C, any dilation): fwd, dgrad, wgrad.

Notation: x [N, C, H, W], w [K, 1, R, S] with K = C*M (output channel k reads input channel
k // M), y [N, K, P, Q].

Why a direct kernel and not implicit GEMM: per output element a depthwise conv does R*S
multiply-adds on R*S inputs that no other output channel shares, so there is no reduction over
channels for tensor cores to exploit; at k*k/2 FLOP per 16-bit byte (3x3: 4.5, 5x5: 12.5) the op
is memory-bound on every GPU. The design goal is to touch each input, weight and output byte
close to once: a program owns a [BLOCK_P pixels x BLOCK_C channels] output tile, loops over the
R*S taps with shifted (dilated) masked loads of the input tile, which hit L1/L2 after the first
tap since neighbouring taps overlap, and holds the accumulators in registers. The tile has both a
pixel and a channel axis so that NCHW (pixels contiguous) and channels_last (channels
contiguous) are both read in full sectors; the autotuner picks the aspect ratio per layout and
shape. Taps are runtime loops: no recompilation per kernel size, and large kernels (31x31) do not
unroll into huge binaries.

dgrad gathers like conv_igemm's dgrad (stride phases in the grid, whole taps skipped), summing
over the M output channels of each input channel. wgrad reduces each (channel, tap) over N*P*Q
with an optional split across programs (fp32 atomics), and can also produce the bias gradient
(the sum of grad_out) from the same loads (used by the separable backward).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from dilconv.triton import _common

# ---------------------------------------------------------------------------------------------
# configs: [BLOCK_P pixels x BLOCK_C channels], 4 warps (128 threads, one element per thread per
# 32-element row: memory-bound, no tensor cores, so wider tiles only add registers).
#   64x32   default: balanced, full sectors for both layouts in fp32/fp16.
#   256x4   NCHW with few channels per program: long contiguous pixel rows.
#   128x8   NCHW.
#   32x64   channels_last.
#   16x128  channels_last with many channels (728-2048 in Xception/MobileNet blocks).
_DW_CONFIGS = [
    triton.Config({"BLOCK_P": 64, "BLOCK_C": 32}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_P": 256, "BLOCK_C": 4}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_P": 128, "BLOCK_C": 8}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_P": 32, "BLOCK_C": 64}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_P": 16, "BLOCK_C": 128}, num_warps=4, num_stages=2),
]
# wgrad keeps a [BLOCK_P, BLOCK_C] fp32 partial-sum tile (two with the bias) across the loop:
# same shapes, reduced to one row at the end.
_DW_WGRAD_CONFIGS = _DW_CONFIGS
_KEY = ["N", "C", "H", "W", "K", "P", "Q", "R", "S", "stride_h", "stride_w", "sxc", "sxw"]

WGRAD_MIN_CHUNK = 1024


@_common.autotune(_DW_CONFIGS, key=_KEY)
@triton.jit
def dw_fprop_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,                # x [N, C, H, W], w [K, 1, R, S], b [K], y [N, K, P, Q]
    N, C, H, W, K, P, Q, R, S,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    sxn, sxc, sxh, sxw, swk, swr, sws, syn, syk, syp, syq,
    HAS_BIAS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # grid: (cdiv(N*P*Q, BLOCK_P), cdiv(K, BLOCK_C))
    mult = K // C
    m = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)          # [BLOCK_P] output pixels
    m_ok = m < N * P * Q
    n = m // (P * Q)
    oh = (m // Q) % P
    ow = m % Q
    k = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)          # [BLOCK_C] output channels
    k_ok = k < K
    x_chan = (k // mult) * sxc

    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for r in range(0, R):
        ih = oh * stride_h - pad_h + r * dil_h
        h_ok = m_ok & (ih >= 0) & (ih < H)
        for s in range(0, S):
            iw = ow * stride_w - pad_w + s * dil_w
            ok = h_ok & (iw >= 0) & (iw < W)
            xv = tl.load(x_ptr + (n * sxn + ih * sxh + iw * sxw)[:, None] + x_chan[None, :],
                         mask=ok[:, None] & k_ok[None, :], other=0.0)
            wv = tl.load(w_ptr + k * swk + r * swr + s * sws, mask=k_ok, other=0.0)
            acc += xv.to(tl.float32) * wv.to(tl.float32)[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + k, mask=k_ok, other=0.0).to(tl.float32)[None, :]
    y = y_ptr + (n * syn + oh * syp + ow * syq)[:, None] + k[None, :] * syk
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & k_ok[None, :])


@_common.autotune(_DW_CONFIGS, key=_KEY)
@triton.jit
def dw_dgrad_kernel(
    dy_ptr, w_ptr, dx_ptr,                     # dy [N, K, P, Q], w [K, 1, R, S], dx [N, C, H, W]
    N, C, H, W, K, P, Q, R, S,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    sdn, sdk, sdp, sdq, swk, swr, sws, sxn, sxc, sxh, sxw,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # grid: (cdiv(N*cdiv(H,sh)*cdiv(W,sw), BLOCK_P), cdiv(C, BLOCK_C), sh*sw phases)
    mult = K // C
    phase = tl.program_id(2)
    ph = phase // stride_w
    pw = phase % stride_w
    Hs = tl.cdiv(H, stride_h)
    Ws = tl.cdiv(W, stride_w)
    m = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)          # [BLOCK_P] pixels of the phase
    n = m // (Hs * Ws)
    h = ph + ((m // Ws) % Hs) * stride_h
    w = pw + (m % Ws) * stride_w
    m_ok = (m < N * Hs * Ws) & (h < H) & (w < W)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)          # [BLOCK_C] input channels
    c_ok = c < C

    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for r in range(0, R):
        if (ph + pad_h - r * dil_h) % stride_h == 0:
            p = (h + pad_h - r * dil_h) // stride_h                  # exact division
            p_ok = m_ok & (p >= 0) & (p < P)
            for s in range(0, S):
                if (pw + pad_w - s * dil_w) % stride_w == 0:
                    q = (w + pad_w - s * dil_w) // stride_w
                    ok = p_ok & (q >= 0) & (q < Q)
                    dy_row = n * sdn + p * sdp + q * sdq
                    for j in range(0, mult):
                        k = c * mult + j
                        g = tl.load(dy_ptr + dy_row[:, None] + (k * sdk)[None, :],
                                    mask=ok[:, None] & c_ok[None, :], other=0.0)
                        wv = tl.load(w_ptr + k * swk + r * swr + s * sws, mask=c_ok, other=0.0)
                        acc += g.to(tl.float32) * wv.to(tl.float32)[None, :]
    dx = dx_ptr + (n * sxn + h * sxh + w * sxw)[:, None] + c[None, :] * sxc
    tl.store(dx, acc.to(dx_ptr.dtype.element_ty), mask=m_ok[:, None] & c_ok[None, :])


@_common.autotune(_DW_WGRAD_CONFIGS, key=_KEY + ["ATOMIC", "HAS_DB"], reset_to_zero=["dw_ptr", "db_ptr"])
@triton.jit
def dw_wgrad_kernel(
    dy_ptr, x_ptr, dw_ptr, db_ptr,             # dy [N, K, P, Q], x [N, C, H, W], dw [K, 1, R, S], db [K]
    N, C, H, W, K, P, Q, R, S,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    sdn, sdk, sdp, sdq, sxn, sxc, sxh, sxw, swk, swr, sws,
    CHUNK,                                     # reduction pixels per program (split)
    ATOMIC: tl.constexpr, HAS_DB: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # grid: (cdiv(K, BLOCK_C), R*S, splits); dw/db fp32 and zeroed when ATOMIC
    mult = K // C
    k = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)          # [BLOCK_C] output channels
    k_ok = k < K
    x_chan = (k // mult) * sxc
    rs = tl.program_id(1)
    r = rs // S
    s = rs % S
    total = N * P * Q
    start = tl.program_id(2) * CHUNK
    end = tl.minimum(start + CHUNK, total)

    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    acc_b = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for j0 in range(start, end, BLOCK_P):
        j = j0 + tl.arange(0, BLOCK_P)                               # [BLOCK_P] output pixels
        j_ok = j < end
        n = j // (P * Q)
        p = (j // Q) % P
        q = j % Q
        ih = p * stride_h - pad_h + r * dil_h
        iw = q * stride_w - pad_w + s * dil_w
        x_ok = j_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        g = tl.load(dy_ptr + (n * sdn + p * sdp + q * sdq)[:, None] + (k * sdk)[None, :],
                    mask=j_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
        xv = tl.load(x_ptr + (n * sxn + ih * sxh + iw * sxw)[:, None] + x_chan[None, :],
                     mask=x_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
        acc += g * xv
        if HAS_DB:
            acc_b += g

    dw = tl.sum(acc, axis=0)
    dw_ptrs = dw_ptr + k * swk + r * swr + s * sws
    if ATOMIC:
        tl.atomic_add(dw_ptrs, dw, mask=k_ok)
    else:
        tl.store(dw_ptrs, dw.to(dw_ptr.dtype.element_ty), mask=k_ok)
    if HAS_DB:
        if rs == 0:                                                  # one tap writes the bias
            db = tl.sum(acc_b, axis=0)
            if ATOMIC:
                tl.atomic_add(db_ptr + k, db, mask=k_ok)
            else:
                tl.store(db_ptr + k, db.to(db_ptr.dtype.element_ty), mask=k_ok)


# ---------------------------------------------------------------------------------------------
# launchers


def fprop(x, weight, bias, stride, padding, dilation, out):
    n, c, h, w = x.shape
    k, _, r, s = weight.shape
    _, _, p, q = out.shape
    if out.numel() == 0:
        return out
    grid = lambda meta: (triton.cdiv(n * p * q, meta["BLOCK_P"]), triton.cdiv(k, meta["BLOCK_C"]))  # noqa: E731
    wstr = weight.stride()
    wrap_triton(dw_fprop_kernel)[grid](
        x, weight, bias if bias is not None else weight, out,
        n, c, h, w, k, p, q, r, s,
        stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
        *x.stride(), wstr[0], wstr[2], wstr[3], *out.stride(),
        HAS_BIAS=bias is not None)
    return out


def dgrad(grad_out, weight, stride, padding, dilation, out):
    n, c, h, w = out.shape
    _, k, p, q = grad_out.shape
    r, s = weight.shape[2:]
    if out.numel() == 0:
        return out
    hs, ws = triton.cdiv(h, stride[0]), triton.cdiv(w, stride[1])
    grid = lambda meta: (triton.cdiv(n * hs * ws, meta["BLOCK_P"]), triton.cdiv(c, meta["BLOCK_C"]),  # noqa: E731
                         stride[0] * stride[1])
    wstr = weight.stride()
    wrap_triton(dw_dgrad_kernel)[grid](
        grad_out, weight, out,
        n, c, h, w, k, p, q, r, s,
        stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
        *grad_out.stride(), wstr[0], wstr[2], wstr[3], *out.stride())
    return out


def wgrad(grad_out, x, stride, padding, dilation, out, bias_out=None):
    """out[K, 1, R, S] (and bias_out[K] = grad_out.sum((0, 2, 3)) when given)."""
    n, c, h, w = x.shape
    _, k, p, q = grad_out.shape
    r, s = out.shape[2:]
    if grad_out.numel() == 0:
        out.zero_()
        if bias_out is not None:
            bias_out.zero_()
        return out
    splits, chunk = _common.split_reduction(n * p * q, triton.cdiv(k, 32) * r * s, WGRAD_MIN_CHUNK)
    atomic = splits > 1
    if atomic:
        dst = torch.zeros(out.shape, dtype=torch.float32, device=out.device)
        dst_b = torch.zeros(k, dtype=torch.float32, device=out.device) if bias_out is not None else dst
    else:
        dst, dst_b = out, (bias_out if bias_out is not None else out)
    grid = lambda meta: (triton.cdiv(k, meta["BLOCK_C"]), r * s, splits)  # noqa: E731
    wstr = dst.stride()
    wrap_triton(dw_wgrad_kernel)[grid](
        grad_out, x, dst, dst_b,
        n, c, h, w, k, p, q, r, s,
        stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
        *grad_out.stride(), *x.stride(), wstr[0], wstr[2], wstr[3],
        chunk, ATOMIC=atomic, HAS_DB=bias_out is not None)
    if atomic:
        out.copy_(dst)
        if bias_out is not None:
            bias_out.copy_(dst_b)
    return out


def aot_specs():
    # NCHW-contiguous operands; fp16 only (no tl.dot: registers and shared memory do not
    # depend on the element size the way a tensor-core tile does)
    return [
        dict(kernel=dw_fprop_kernel, name="dw_fprop",
             pointers={"x_ptr": "x", "w_ptr": "x", "b_ptr": "x", "y_ptr": "x"},
             constexprs={"HAS_BIAS": True}, ones=("sxw", "sws", "syq")),
        dict(kernel=dw_dgrad_kernel, name="dw_dgrad",
             pointers={"dy_ptr": "x", "w_ptr": "x", "dx_ptr": "x"}, constexprs={}, ones=("sdq", "sws", "sxw")),
        dict(kernel=dw_wgrad_kernel, name="dw_wgrad",
             pointers={"dy_ptr": "x", "x_ptr": "x", "dw_ptr": "fp32", "db_ptr": "fp32"},
             constexprs={"ATOMIC": True, "HAS_DB": True}, ones=("sdq", "sxw", "sws")),
    ]
