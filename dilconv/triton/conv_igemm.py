"""Dense and grouped (atrous) conv2d as implicit GEMM: fprop, dgrad, wgrad.

Notation (torch's): input x [N, C, H, W], weight w [K, C/G, R, S], output y [N, K, P, Q];
stride (sh, sw), padding (ph, pw), dilation (dh, dw), G groups, Cg = C/G, Kg = K/G.

As GEMMs (per group):
    fprop  y[NPQ, Kg]   = x_im2col[NPQ, Cg*R*S] @ w[Cg*R*S, Kg]
    dgrad  dx[NHW, Cg]  = dy_col[NHW, Kg*R*S]   @ w[Kg*R*S, Cg]
    wgrad  dw[Kg, Cg]   = dy[Kg, NPQ]           @ x_tap[NPQ, Cg]     (one GEMM per tap r, s)
The im2col matrices are never built: each program computes the input coordinates of its tile
(ih = p*sh - ph + r*dh, ...) and loads through masks, so dilation, stride and padding cost only
address arithmetic. All tensors are addressed through their four strides, so NCHW, channels_last
and any other strided layout run the same code (the loads are coalesced along whichever of the
pixel / channel axes is contiguous).

Groups sit in the grid. A program's channel tile covers a *pack* of `gp` consecutive groups:
gp = 1 when a group's channels fill the tile (>= BLOCK_N), otherwise gp = BLOCK_N // Kg groups
share one tile and the weight tile is block-diagonal (entries of other groups are masked to zero).
Narrow groups (1-8 channels) thus still feed tl.dot tiles of >= 16 at the price of gp-fold
redundant multiply-adds, instead of running 16-wide tiles that are mostly padding.

dgrad (and conv_transpose2d, which is dgrad plus a bias) use the gather form: each input pixel
sums the output pixels it contributed to. With stride > 1 only taps with
(h + ph - r*dh) % sh == 0 contribute; the grid is split into the sh*sw stride phases
(h % sh, w % sw) so that this test is uniform per program and whole taps are skipped, instead of
masking (sh*sw - 1)/(sh*sw) of every tile.

wgrad reduces over N*P*Q, long for few outputs: the reduction is split across programs
(_common.split_reduction) and partial sums are added with fp32 atomics into a zeroed workspace.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from dilconv.triton import _common

# ---------------------------------------------------------------------------------------------
# configs
#
# fprop/dgrad: M = pixels (large), N = channels of one group pack, K = channels*taps.
#   64x64, 8 warps   default: fits layers with 32-64 channels per group and small images; the
#                    one config the interpreter runs.
#   128x64, 8 warps  many pixels, <= 64 channels per group.
#   64x128, 8 warps  few pixels (small feature maps, batch 1), many channels.
#   128x32, 4 warps  narrow (packed) groups and thin layers: no 64-wide channel tile to fill.
# No 128x128 tile: with gathered operands it spills heavily in every dtype (aot report); the
# 128x64/64x128 tiles still spill a little with fp32 IEEE operands, not with 16-bit ones.
# BLOCK_K = 16 and 8 warps: the operand tiles are gathers (no affine address for TMA/cp.async), so
# each thread holds its share in registers before they go to shared memory, and fp32 operands on
# the IEEE path (an FMA dot that keeps whole K-slices per thread) spill with BLOCK_K = 32 or with
# 4 warps on the 64x64 tile (see `python -m dilconv.triton.aot`). Two stages: the nested
# tap/channel loops are not software-pipelined; the second buffer lets the next gather start
# while tl.dot reads the current one.
_GEMM_CONFIGS = [
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 16}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 16}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 16}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 32, "BLOCK_K": 16}, num_warps=4, num_stages=2),
]
# wgrad: M = output channels, N = input channels (per tap), K = pixels (long, split).
#   64x64x16 default; 128x64x16 for wide dense layers (128x128 spills); 32x32x32 for
#   narrow/packed groups and small layers (longer pixel step, fewer channels).
_WGRAD_CONFIGS = [
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 16}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 16}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32}, num_warps=4, num_stages=2),
]
_KEY = ["N", "C", "H", "W", "K", "P", "Q", "R", "S", "G", "stride_h", "stride_w"]

# smallest reduction chunk (pixels) of one wgrad program; tests lower it to reach the atomic path
WGRAD_MIN_CHUNK = 1024


# ---------------------------------------------------------------------------------------------
# kernels


@_common.autotune(_GEMM_CONFIGS, key=_KEY)
@triton.jit
def conv2d_fprop_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,                # x [N, C, H, W], w [K, Cg, R, S], b [K], y [N, K, P, Q]
    N, C, H, W, K, P, Q, R, S, G,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    sxn, sxc, sxh, sxw, swk, swc, swr, sws, syn, syk, syp, syq,
    HAS_BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # grid: (cdiv(N*P*Q, BLOCK_M), packs * tiles per pack)
    Cg = C // G
    Kg = K // G
    gp = tl.maximum(BLOCK_N // Kg, 1)              # groups per pack
    tiles = tl.cdiv(gp * Kg, BLOCK_N)              # channel tiles per pack
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pack = pid_n // tiles

    k_loc = (pid_n % tiles) * BLOCK_N + tl.arange(0, BLOCK_N)       # [BLOCK_N]
    k = pack * gp * Kg + k_loc
    k_ok = (k_loc < gp * Kg) & (k < K)
    k_grp = k // Kg

    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)                      # [BLOCK_M] output pixels
    m_ok = m < N * P * Q
    n = m // (P * Q)
    oh = (m // Q) % P
    ow = m % Q

    c_base = pack * gp * Cg
    c_count = gp * Cg
    c_idx = tl.arange(0, BLOCK_K)
    # w[k, c - k_grp*Cg] = w_ptr + k_off + c*swc: the weight address separates into a k part and
    # a c part, so only 1-D vectors live across the loops (2-D offset tiles cost registers).
    k_off = k * swk - k_grp * Cg * swc                               # [BLOCK_N]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for rs in range(0, R * S):
        r = rs // S
        s = rs % S
        ih = oh * stride_h - pad_h + r * dil_h
        iw = ow * stride_w - pad_w + s * dil_w
        pix_ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        x_row = n * sxn + ih * sxh + iw * sxw                        # [BLOCK_M]
        w_col = k_off + r * swr + s * sws                            # [BLOCK_N]
        for c0 in range(0, c_count, BLOCK_K):
            c = c_base + c0 + c_idx                                  # [BLOCK_K] input channels
            c_ok = (c0 + c_idx < c_count) & (c < C)
            a = tl.load(x_ptr + x_row[:, None] + (c * sxc)[None, :],
                        mask=pix_ok[:, None] & c_ok[None, :], other=0.0)          # [BLOCK_M, BLOCK_K]
            # block-diagonal weight tile: entries pairing channels of different groups are 0
            w_ok = c_ok[:, None] & k_ok[None, :] & ((c // Cg)[:, None] == k_grp[None, :])
            b = tl.load(w_ptr + (c * swc)[:, None] + w_col[None, :], mask=w_ok, other=0.0)  # [BLOCK_K, BLOCK_N]
            acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)

    if HAS_BIAS:
        acc += tl.load(b_ptr + k, mask=k_ok, other=0.0).to(tl.float32)[None, :]
    y = y_ptr + (n * syn + oh * syp + ow * syq)[:, None] + k[None, :] * syk
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & k_ok[None, :])


@_common.autotune(_GEMM_CONFIGS, key=_KEY)
@triton.jit
def conv2d_dgrad_kernel(
    dy_ptr, w_ptr, b_ptr, dx_ptr,              # dy [N, K, P, Q], w [K, Cg, R, S], b [C], dx [N, C, H, W]
    N, C, H, W, K, P, Q, R, S, G,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    sdn, sdk, sdp, sdq, swk, swc, swr, sws, sxn, sxc, sxh, sxw,
    HAS_BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # grid: (cdiv(N*cdiv(H,sh)*cdiv(W,sw), BLOCK_M), packs * tiles per pack, sh*sw phases)
    Cg = C // G
    Kg = K // G
    gp = tl.maximum(BLOCK_N // Cg, 1)
    tiles = tl.cdiv(gp * Cg, BLOCK_N)
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    phase = tl.program_id(2)
    ph = phase // stride_w                         # this program's pixels: h % sh == ph, w % sw == pw
    pw = phase % stride_w
    pack = pid_n // tiles

    c_loc = (pid_n % tiles) * BLOCK_N + tl.arange(0, BLOCK_N)       # [BLOCK_N] input channels
    c = pack * gp * Cg + c_loc
    c_ok = (c_loc < gp * Cg) & (c < C)
    c_grp = c // Cg

    Hs = tl.cdiv(H, stride_h)
    Ws = tl.cdiv(W, stride_w)
    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)                      # [BLOCK_M] pixels of the phase
    n = m // (Hs * Ws)
    h = ph + ((m // Ws) % Hs) * stride_h
    w = pw + (m % Ws) * stride_w
    m_ok = (m < N * Hs * Ws) & (h < H) & (w < W)

    k_base = pack * gp * Kg
    k_count = gp * Kg
    k_idx = tl.arange(0, BLOCK_K)
    c_off = (c - c_grp * Cg) * swc                                   # [BLOCK_N] (see fprop)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for r in range(0, R):
        if (ph + pad_h - r * dil_h) % stride_h == 0:                 # tap reaches this phase
            p = (h + pad_h - r * dil_h) // stride_h                  # exact division
            p_ok = m_ok & (p >= 0) & (p < P)
            for s in range(0, S):
                if (pw + pad_w - s * dil_w) % stride_w == 0:
                    q = (w + pad_w - s * dil_w) // stride_w
                    pix_ok = p_ok & (q >= 0) & (q < Q)
                    dy_row = n * sdn + p * sdp + q * sdq             # [BLOCK_M]
                    w_col = c_off + r * swr + s * sws                # [BLOCK_N]
                    for k0 in range(0, k_count, BLOCK_K):
                        k = k_base + k0 + k_idx                      # [BLOCK_K] output channels
                        k_ok = (k0 + k_idx < k_count) & (k < K)
                        a = tl.load(dy_ptr + dy_row[:, None] + (k * sdk)[None, :],
                                    mask=pix_ok[:, None] & k_ok[None, :], other=0.0)  # [BLOCK_M, BLOCK_K]
                        w_ok = k_ok[:, None] & c_ok[None, :] & ((k // Kg)[:, None] == c_grp[None, :])
                        b = tl.load(w_ptr + (k * swk)[:, None] + w_col[None, :],
                                    mask=w_ok, other=0.0)                         # [BLOCK_K, BLOCK_N]
                        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)

    if HAS_BIAS:
        acc += tl.load(b_ptr + c, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    dx = dx_ptr + (n * sxn + h * sxh + w * sxw)[:, None] + c[None, :] * sxc
    tl.store(dx, acc.to(dx_ptr.dtype.element_ty), mask=m_ok[:, None] & c_ok[None, :])


@_common.autotune(_WGRAD_CONFIGS, key=_KEY + ["ATOMIC"], reset_to_zero=["dw_ptr"])
@triton.jit
def conv2d_wgrad_kernel(
    dy_ptr, x_ptr, dw_ptr,                     # dy [N, K, P, Q], x [N, C, H, W], dw [K, Cg, R, S]
    N, C, H, W, K, P, Q, R, S, G,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    sdn, sdk, sdp, sdq, sxn, sxc, sxh, sxw, swk, swc, swr, sws,
    CHUNK,                                     # reduction pixels per program (split)
    ATOMIC: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # grid: (packs * k tiles * c tiles, R*S, splits); dw fp32 and zeroed when ATOMIC
    Cg = C // G
    Kg = K // G
    gp = tl.maximum(tl.minimum(BLOCK_M // Kg, BLOCK_N // Cg), 1)
    tm = tl.cdiv(gp * Kg, BLOCK_M)
    tn = tl.cdiv(gp * Cg, BLOCK_N)
    pid = tl.program_id(0)
    pack = pid // (tm * tn)
    pid_m = (pid // tn) % tm
    pid_n = pid % tn
    rs = tl.program_id(1)
    r = rs // S
    s = rs % S

    k_loc = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    k = pack * gp * Kg + k_loc                                       # [BLOCK_M] output channels
    k_ok = (k_loc < gp * Kg) & (k < K)
    c_loc = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    c = pack * gp * Cg + c_loc                                       # [BLOCK_N] input channels
    c_ok = (c_loc < gp * Cg) & (c < C)

    total = N * P * Q
    start = tl.program_id(2) * CHUNK
    end = tl.minimum(start + CHUNK, total)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for j0 in range(start, end, BLOCK_K):
        j = j0 + tl.arange(0, BLOCK_K)                               # [BLOCK_K] output pixels
        j_ok = j < end
        n = j // (P * Q)
        p = (j // Q) % P
        q = j % Q
        ih = p * stride_h - pad_h + r * dil_h
        iw = q * stride_w - pad_w + s * dil_w
        x_ok = j_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        a = tl.load(dy_ptr + k[:, None] * sdk + (n * sdn + p * sdp + q * sdq)[None, :],
                    mask=k_ok[:, None] & j_ok[None, :], other=0.0)                # [BLOCK_M, BLOCK_K]
        b = tl.load(x_ptr + (n * sxn + ih * sxh + iw * sxw)[:, None] + c[None, :] * sxc,
                    mask=x_ok[:, None] & c_ok[None, :], other=0.0)                # [BLOCK_K, BLOCK_N]
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)

    wc = c[None, :] - (k // Kg)[:, None] * Cg                        # only same-group pairs exist
    ok = k_ok[:, None] & c_ok[None, :] & (wc >= 0) & (wc < Cg)
    dw = dw_ptr + k[:, None] * swk + wc * swc + r * swr + s * sws
    if ATOMIC:
        tl.atomic_add(dw, acc, mask=ok)
    else:
        tl.store(dw, acc.to(dw_ptr.dtype.element_ty), mask=ok)


# ---------------------------------------------------------------------------------------------
# launchers (called from the ops in dilconv/triton/ops.py with validated arguments)


def _packs(groups: int, per_group: int, block: int) -> tuple[int, int]:
    """(packs, tiles per pack) for a channel tile of `block` over groups of `per_group`."""
    gp = max(block // per_group, 1)
    return triton.cdiv(groups, gp), triton.cdiv(gp * per_group, block)


def fprop(x, weight, bias, stride, padding, dilation, groups, out):
    n, c, h, w = x.shape
    k, _, r, s = weight.shape
    _, _, p, q = out.shape
    if out.numel() == 0:
        return out
    if c == 0 or x.numel() == 0:
        return out.copy_(bias.view(1, -1, 1, 1).expand_as(out) if bias is not None else torch.zeros_like(out))

    def grid(meta):
        packs, tiles = _packs(groups, k // groups, meta["BLOCK_N"])
        return (triton.cdiv(n * p * q, meta["BLOCK_M"]), packs * tiles)

    wrap_triton(conv2d_fprop_kernel)[grid](
        x, weight, bias if bias is not None else weight, out,
        n, c, h, w, k, p, q, r, s, groups,
        stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
        *x.stride(), *weight.stride(), *out.stride(),
        HAS_BIAS=bias is not None, DOT_PRECISION=_common.dot_precision(x.dtype))
    return out


def dgrad(grad_out, weight, bias, stride, padding, dilation, groups, out):
    """out[N, C, H, W] = gather of grad_out[N, K, P, Q] through weight [K, C/G, R, S] (+ bias[C]).
    Also the forward of conv_transpose2d (with input as grad_out)."""
    n, c, h, w = out.shape
    _, k, p, q = grad_out.shape
    r, s = weight.shape[2:]
    if out.numel() == 0:
        return out
    if grad_out.numel() == 0:
        return out.copy_(bias.view(1, -1, 1, 1).expand_as(out) if bias is not None else torch.zeros_like(out))
    hs, ws = triton.cdiv(h, stride[0]), triton.cdiv(w, stride[1])

    def grid(meta):
        packs, tiles = _packs(groups, c // groups, meta["BLOCK_N"])
        return (triton.cdiv(n * hs * ws, meta["BLOCK_M"]), packs * tiles, stride[0] * stride[1])

    wrap_triton(conv2d_dgrad_kernel)[grid](
        grad_out, weight, bias if bias is not None else weight, out,
        n, c, h, w, k, p, q, r, s, groups,
        stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
        *grad_out.stride(), *weight.stride(), *out.stride(),
        HAS_BIAS=bias is not None, DOT_PRECISION=_common.dot_precision(grad_out.dtype))
    return out


def wgrad(grad_out, x, stride, padding, dilation, groups, out):
    """out[K, C/G, R, S] (contiguous) = correlation of grad_out with x."""
    n, c, h, w = x.shape
    _, k, p, q = grad_out.shape
    r, s = out.shape[2:]
    if out.numel() == 0:
        return out
    if grad_out.numel() == 0:
        return out.zero_()
    cg, kg = c // groups, k // groups
    # programs before the split, for the smallest tiles (so the split is config-independent)
    gp = max(min(32 // kg, 32 // cg), 1)
    base = triton.cdiv(groups, gp) * triton.cdiv(gp * kg, 32) * triton.cdiv(gp * cg, 32) * r * s
    splits, chunk = _common.split_reduction(n * p * q, base, WGRAD_MIN_CHUNK)
    atomic = splits > 1
    dst = torch.zeros(out.shape, dtype=torch.float32, device=out.device) if atomic else out

    def grid(meta):
        bm, bn = meta["BLOCK_M"], meta["BLOCK_N"]
        g = max(min(bm // kg, bn // cg), 1)
        return (triton.cdiv(groups, g) * triton.cdiv(g * kg, bm) * triton.cdiv(g * cg, bn), r * s, splits)

    wrap_triton(conv2d_wgrad_kernel)[grid](
        grad_out, x, dst,
        n, c, h, w, k, p, q, r, s, groups,
        stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
        *grad_out.stride(), *x.stride(), *dst.stride(),
        chunk, ATOMIC=atomic, DOT_PRECISION=_common.dot_precision(x.dtype))
    if atomic:
        out.copy_(dst)
    return out


# ---------------------------------------------------------------------------------------------
# ahead-of-time compilation specs (dilconv/triton/aot.py): one representative specialisation per
# kernel; every config of each is compiled.

def aot_specs():
    # NCHW-contiguous operands (unit strides specialised, as the JIT does), fp16 and fp32
    common = dict(dtypes=("fp16", "fp32"))
    return [
        dict(kernel=conv2d_fprop_kernel, name="conv2d_fprop",
             pointers={"x_ptr": "x", "w_ptr": "x", "b_ptr": "x", "y_ptr": "x"},
             constexprs={"HAS_BIAS": True}, ones=("sxw", "sws", "syq"), **common),
        dict(kernel=conv2d_dgrad_kernel, name="conv2d_dgrad",
             pointers={"dy_ptr": "x", "w_ptr": "x", "b_ptr": "x", "dx_ptr": "x"},
             constexprs={"HAS_BIAS": False}, ones=("sdq", "sws", "sxw"), **common),
        dict(kernel=conv2d_wgrad_kernel, name="conv2d_wgrad",
             pointers={"dy_ptr": "x", "x_ptr": "x", "dw_ptr": "fp32"},
             constexprs={"ATOMIC": True}, ones=("sdq", "sxw", "sws"), **common),
    ]
