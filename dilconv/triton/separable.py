"""Fused atrous-separable conv: depthwise (dilated, multiplier M) then pointwise 1x1, in one kernel.

    mid = act_mid(dw(x) + dw_bias)      [N, CM, P, Q]   CM = C*M
    out = act_out(pw(mid) + pw_bias)    [N, K, P, Q]    pw weight [K, CM, 1, 1]

Forward: a program owns an output tile [BLOCK_M pixels x BLOCK_N output channels] and walks the
mid channels in steps of BLOCK_K: it computes the depthwise slice mid[BLOCK_M, BLOCK_K] directly
(R*S dilated taps, as in depthwise.py) in registers, applies bias/ReLU, rounds it to the input
dtype (the precision the unfused pair would store), and feeds it to tl.dot with the pointwise
weight slice [BLOCK_K, BLOCK_N]. The mid tensor never goes to memory: the unfused pair writes and
re-reads N*CM*P*Q elements, which for CM >= K is the largest tensor of the pair. The price is
that the depthwise part is recomputed once per output-channel tile (cdiv(K, BLOCK_N) times), so
the configs favour wide BLOCK_N (one or two tiles cover the usual K = 256).

Backward (separable_conv2d_backward), five kernels, with the elementwise parts fused in:
  1. sep_fprop_kernel recomputes mid (stored this time) and, with out_relu, out (for the mask);
  2. sep_pw_wgrad_kernel:  g_pw_w = gout^T @ mid and g_pw_b = sum(gout), gout = dy * (out > 0);
  3. sep_mid_grad_kernel:  g_mid = (gout @ pw_w) * (mid > 0), kept in fp32;
  4. depthwise.dw_wgrad_kernel: g_dw_w and g_dw_b = sum(g_mid) from the same loads;
  5. depthwise.dw_dgrad_kernel: g_x.
The depthwise backward needs g_mid at a halo around each tile, so it is not fused with 3.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from dilconv.triton import _common, depthwise

# ---------------------------------------------------------------------------------------------
# configs
# fprop [BLOCK_M pixels x BLOCK_N out channels], BLOCK_K = 16 mid channels per step (8 warps,
# BLOCK_K 16: see conv_igemm's configs):
#   64x64, 8 warps   default (and the interpreter's).
#   64x256, 8 warps  K = 256 in one tile: the depthwise part computed once per pixel tile.
#   128x64, 8 warps  narrow outputs, many pixels.
# No 128x128 (spills: the depthwise slice and the fp32 accumulator do not fit together).
_SEP_CONFIGS = [
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 16}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 256, "BLOCK_K": 16}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 16}, num_warps=8, num_stages=2),
]
# pointwise grads: plain GEMMs with a ReLU mask on one operand.
#   wgrad [BLOCK_M out ch x BLOCK_N mid ch], BLOCK_K pixels (long reduction, split);
#   mid grad [BLOCK_M pixels x BLOCK_N mid ch], BLOCK_K out channels.
#   64x64 default, 128x64 / 64x128 for wide layers (128x128 spills).
_PW_CONFIGS = [
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 16}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 16}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 16}, num_warps=8, num_stages=2),
]
_KEY = ["N", "C", "H", "W", "CM", "K", "P", "Q", "R", "S", "stride_h", "stride_w"]
_PW_KEY = ["N", "K", "CM", "P", "Q"]

PW_WGRAD_MIN_CHUNK = 1024


@_common.autotune(_SEP_CONFIGS, key=_KEY + ["COMPUTE_OUT"])
@triton.jit
def sep_fprop_kernel(
    x_ptr, dww_ptr, dwb_ptr, pww_ptr, pwb_ptr, y_ptr, mid_ptr,
    # x [N, C, H, W], dww [CM, 1, R, S], dwb [CM], pww [K, CM, 1, 1], pwb [K], y [N, K, P, Q],
    # mid [N, CM, P, Q] (written when STORE_MID)
    N, C, H, W, CM, K, P, Q, R, S,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    sxn, sxc, sxh, sxw, sdk, sdr, sds, spk, spc, syn, syk, syp, syq, smn, smc, smp, smq,
    HAS_DW_BIAS: tl.constexpr, HAS_PW_BIAS: tl.constexpr, MID_RELU: tl.constexpr,
    OUT_RELU: tl.constexpr, STORE_MID: tl.constexpr, COMPUTE_OUT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # grid: (cdiv(N*P*Q, BLOCK_M), cdiv(K, BLOCK_N) if COMPUTE_OUT else 1)
    mult = CM // C
    pid_n = tl.program_id(1)
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)          # [BLOCK_M] output pixels
    m_ok = m < N * P * Q
    n = m // (P * Q)
    oh = (m // Q) % P
    ow = m % Q
    k = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)                      # [BLOCK_N] output channels
    k_ok = k < K

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for cm0 in range(0, CM, BLOCK_K):
        cm = cm0 + tl.arange(0, BLOCK_K)                             # [BLOCK_K] mid channels
        cm_ok = cm < CM
        x_chan = (cm // mult) * sxc
        mid = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
        for r in range(0, R):
            ih = oh * stride_h - pad_h + r * dil_h
            h_ok = m_ok & (ih >= 0) & (ih < H)
            for s in range(0, S):
                iw = ow * stride_w - pad_w + s * dil_w
                ok = h_ok & (iw >= 0) & (iw < W)
                xv = tl.load(x_ptr + (n * sxn + ih * sxh + iw * sxw)[:, None] + x_chan[None, :],
                             mask=ok[:, None] & cm_ok[None, :], other=0.0)
                wv = tl.load(dww_ptr + cm * sdk + r * sdr + s * sds, mask=cm_ok, other=0.0)
                mid += xv.to(tl.float32) * wv.to(tl.float32)[None, :]
        if HAS_DW_BIAS:
            mid += tl.load(dwb_ptr + cm, mask=cm_ok, other=0.0).to(tl.float32)[None, :]
        if MID_RELU:
            mid = tl.maximum(mid, 0.0)
        mid_q = mid.to(x_ptr.dtype.element_ty)
        if STORE_MID:
            if pid_n == 0:
                tl.store(mid_ptr + (n * smn + oh * smp + ow * smq)[:, None] + cm[None, :] * smc,
                         mid_q, mask=m_ok[:, None] & cm_ok[None, :])
        if COMPUTE_OUT:
            b = tl.load(pww_ptr + k[None, :] * spk + cm[:, None] * spc,
                        mask=cm_ok[:, None] & k_ok[None, :], other=0.0)   # [BLOCK_K, BLOCK_N]
            acc = tl.dot(mid_q, b, acc, input_precision=DOT_PRECISION)

    if COMPUTE_OUT:
        if HAS_PW_BIAS:
            acc += tl.load(pwb_ptr + k, mask=k_ok, other=0.0).to(tl.float32)[None, :]
        if OUT_RELU:
            acc = tl.maximum(acc, 0.0)
        y = y_ptr + (n * syn + oh * syp + ow * syq)[:, None] + k[None, :] * syk
        tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & k_ok[None, :])


@_common.autotune(_PW_CONFIGS, key=_PW_KEY + ["ATOMIC"], reset_to_zero=["dpw_ptr", "dpb_ptr"])
@triton.jit
def sep_pw_wgrad_kernel(
    dy_ptr, y_ptr, mid_ptr, dpw_ptr, dpb_ptr,
    # dy, y [N, K, P, Q] (y read only when OUT_RELU), mid [N, CM, P, Q], dpw [K, CM], dpb [K]
    N, K, CM, P, Q,
    sdn, sdk, sdp, sdq, syn, syk, syp, syq, smn, smc, smp, smq, spk, spc,
    CHUNK,
    OUT_RELU: tl.constexpr, ATOMIC: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # grid: (cdiv(K, BLOCK_M) * cdiv(CM, BLOCK_N), splits)
    tn = tl.cdiv(CM, BLOCK_N)
    pid_m = tl.program_id(0) // tn
    pid_n = tl.program_id(0) % tn
    k = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)                      # [BLOCK_M] output channels
    k_ok = k < K
    cm = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)                     # [BLOCK_N] mid channels
    cm_ok = cm < CM
    total = N * P * Q
    start = tl.program_id(1) * CHUNK
    end = tl.minimum(start + CHUNK, total)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_b = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for j0 in range(start, end, BLOCK_K):
        j = j0 + tl.arange(0, BLOCK_K)                               # [BLOCK_K] pixels
        j_ok = j < end
        n = j // (P * Q)
        p = (j // Q) % P
        q = j % Q
        a_ok = k_ok[:, None] & j_ok[None, :]
        a = tl.load(dy_ptr + k[:, None] * sdk + (n * sdn + p * sdp + q * sdq)[None, :],
                    mask=a_ok, other=0.0)                                         # [BLOCK_M, BLOCK_K]
        if OUT_RELU:
            yv = tl.load(y_ptr + k[:, None] * syk + (n * syn + p * syp + q * syq)[None, :],
                         mask=a_ok, other=0.0)
            a = tl.where(yv > 0, a, 0.0).to(dy_ptr.dtype.element_ty)
        b = tl.load(mid_ptr + (n * smn + p * smp + q * smq)[:, None] + cm[None, :] * smc,
                    mask=j_ok[:, None] & cm_ok[None, :], other=0.0)               # [BLOCK_K, BLOCK_N]
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
        acc_b += tl.sum(a.to(tl.float32), axis=1)

    ok = k_ok[:, None] & cm_ok[None, :]
    dpw = dpw_ptr + k[:, None] * spk + cm[None, :] * spc
    if ATOMIC:
        tl.atomic_add(dpw, acc, mask=ok)
    else:
        tl.store(dpw, acc.to(dpw_ptr.dtype.element_ty), mask=ok)
    if pid_n == 0:                                                   # one column tile writes the bias
        if ATOMIC:
            tl.atomic_add(dpb_ptr + k, acc_b, mask=k_ok)
        else:
            tl.store(dpb_ptr + k, acc_b.to(dpb_ptr.dtype.element_ty), mask=k_ok)


@_common.autotune(_PW_CONFIGS, key=_PW_KEY)
@triton.jit
def sep_mid_grad_kernel(
    dy_ptr, y_ptr, pww_ptr, mid_ptr, gmid_ptr,
    # dy, y [N, K, P, Q], pww [K, CM, 1, 1], mid [N, CM, P, Q], gmid [N, CM, P, Q] (fp32)
    N, K, CM, P, Q,
    sdn, sdk, sdp, sdq, syn, syk, syp, syq, spk, spc, smn, smc, smp, smq, sgn, sgc, sgp, sgq,
    OUT_RELU: tl.constexpr, MID_RELU: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # grid: (cdiv(N*P*Q, BLOCK_M), cdiv(CM, BLOCK_N))
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)          # [BLOCK_M] pixels
    m_ok = m < N * P * Q
    n = m // (P * Q)
    p = (m // Q) % P
    q = m % Q
    cm = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)         # [BLOCK_N] mid channels
    cm_ok = cm < CM

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)                               # [BLOCK_K] output channels
        k_ok = k < K
        a_ok = m_ok[:, None] & k_ok[None, :]
        a = tl.load(dy_ptr + (n * sdn + p * sdp + q * sdq)[:, None] + k[None, :] * sdk,
                    mask=a_ok, other=0.0)                                         # [BLOCK_M, BLOCK_K]
        if OUT_RELU:
            yv = tl.load(y_ptr + (n * syn + p * syp + q * syq)[:, None] + k[None, :] * syk,
                         mask=a_ok, other=0.0)
            a = tl.where(yv > 0, a, 0.0).to(dy_ptr.dtype.element_ty)
        b = tl.load(pww_ptr + k[:, None] * spk + cm[None, :] * spc,
                    mask=k_ok[:, None] & cm_ok[None, :], other=0.0)               # [BLOCK_K, BLOCK_N]
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)

    ok = m_ok[:, None] & cm_ok[None, :]
    if MID_RELU:
        mv = tl.load(mid_ptr + (n * smn + p * smp + q * smq)[:, None] + cm[None, :] * smc,
                     mask=ok, other=0.0)
        acc = tl.where(mv > 0, acc, 0.0)
    tl.store(gmid_ptr + (n * sgn + p * sgp + q * sgq)[:, None] + cm[None, :] * sgc, acc, mask=ok)


# ---------------------------------------------------------------------------------------------
# launchers


def _fprop_launch(x, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, dilation,
                  mid_relu, out_relu, out, mid, compute_out):
    n, c, h, w = x.shape
    cm, _, r, s = dw_weight.shape
    k = pw_weight.shape[0]
    p, q = mid.shape[2:] if mid is not None else out.shape[2:]

    def grid(meta):
        return (triton.cdiv(n * p * q, meta["BLOCK_M"]), triton.cdiv(k, meta["BLOCK_N"]) if compute_out else 1)

    dws, pws = dw_weight.stride(), pw_weight.stride()
    ys = out.stride() if out is not None else (0, 0, 0, 0)
    ms = mid.stride() if mid is not None else (0, 0, 0, 0)
    wrap_triton(sep_fprop_kernel)[grid](
        x, dw_weight, dw_bias if dw_bias is not None else dw_weight, pw_weight,
        pw_bias if pw_bias is not None else pw_weight,
        out if out is not None else x, mid if mid is not None else x,
        n, c, h, w, cm, k, p, q, r, s,
        stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
        *x.stride(), dws[0], dws[2], dws[3], pws[0], pws[1], *ys, *ms,
        HAS_DW_BIAS=dw_bias is not None, HAS_PW_BIAS=pw_bias is not None,
        MID_RELU=bool(mid_relu), OUT_RELU=bool(out_relu), STORE_MID=mid is not None,
        COMPUTE_OUT=compute_out, DOT_PRECISION=_common.dot_precision(x.dtype))


def fprop(x, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, dilation, mid_relu,
          out_relu, out):
    if out.numel() == 0:
        return out
    _fprop_launch(x, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, dilation, mid_relu,
                  out_relu, out, None, True)
    return out


def backward(grad_out, x, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, dilation,
             mid_relu, out_relu, grad_in, g_dw, g_dwb, g_pw, g_pwb):
    n, c, h, w = x.shape
    cm, _, r, s = dw_weight.shape
    k = pw_weight.shape[0]
    _, _, p, q = grad_out.shape
    if grad_out.numel() == 0:
        for t in (grad_in, g_dw, g_dwb, g_pw, g_pwb):
            t.zero_()
        return
    fmt = torch.channels_last if x.stride(1) == 1 and c > 1 else torch.contiguous_format
    # 1. recompute mid (and out, whose sign masks grad_out when out_relu)
    mid = _common.empty(x, (n, cm, p, q), fmt)
    out = _common.empty(x, (n, k, p, q), fmt) if out_relu else None
    _fprop_launch(x, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, dilation, mid_relu,
                  out_relu, out, mid, bool(out_relu))
    y = out if out is not None else grad_out
    ys = y.stride()
    # 2. pointwise weight and bias grads
    splits, chunk = _common.split_reduction(n * p * q, triton.cdiv(k, 64) * triton.cdiv(cm, 64),
                                            PW_WGRAD_MIN_CHUNK)
    atomic = splits > 1
    g_pw2 = g_pw.view(k, cm)
    if atomic:
        dpw = torch.zeros((k, cm), dtype=torch.float32, device=x.device)
        dpb = torch.zeros((k,), dtype=torch.float32, device=x.device)
    else:
        dpw, dpb = g_pw2, g_pwb
    grid = lambda meta: (triton.cdiv(k, meta["BLOCK_M"]) * triton.cdiv(cm, meta["BLOCK_N"]), splits)  # noqa: E731
    wrap_triton(sep_pw_wgrad_kernel)[grid](
        grad_out, y, mid, dpw, dpb,
        n, k, cm, p, q,
        *grad_out.stride(), *ys, *mid.stride(), *dpw.stride(),
        chunk, OUT_RELU=bool(out_relu), ATOMIC=atomic,
        DOT_PRECISION=_common.dot_precision(x.dtype))
    if atomic:
        g_pw2.copy_(dpw)
        g_pwb.copy_(dpb)
    # 3. grad of mid (fp32: it feeds two more reductions)
    g_mid = _common.empty(x, (n, cm, p, q), fmt, dtype=torch.float32)
    grid = lambda meta: (triton.cdiv(n * p * q, meta["BLOCK_M"]), triton.cdiv(cm, meta["BLOCK_N"]))  # noqa: E731
    pws = pw_weight.stride()
    wrap_triton(sep_mid_grad_kernel)[grid](
        grad_out, y, pw_weight, mid, g_mid,
        n, k, cm, p, q,
        *grad_out.stride(), *ys, pws[0], pws[1], *mid.stride(), *g_mid.stride(),
        OUT_RELU=bool(out_relu), MID_RELU=bool(mid_relu),
        DOT_PRECISION=_common.dot_precision(x.dtype))
    # 4-5. depthwise grads
    depthwise.wgrad(g_mid, x, stride, padding, dilation, g_dw, bias_out=g_dwb)
    depthwise.dgrad(g_mid, dw_weight, stride, padding, dilation, grad_in)


def aot_specs():
    common = dict(dtypes=("fp16", "fp32"))
    return [
        dict(kernel=sep_fprop_kernel, name="sep_fprop",
             pointers={p: "x" for p in ("x_ptr", "dww_ptr", "dwb_ptr", "pww_ptr", "pwb_ptr",
                                        "y_ptr", "mid_ptr")},
             constexprs={"HAS_DW_BIAS": True, "HAS_PW_BIAS": True, "MID_RELU": True,
                         "OUT_RELU": True, "STORE_MID": False, "COMPUTE_OUT": True},
             ones=("sxw", "sds", "spc", "syq", "smq"), **common),
        dict(kernel=sep_pw_wgrad_kernel, name="sep_pw_wgrad",
             pointers={"dy_ptr": "x", "y_ptr": "x", "mid_ptr": "x", "dpw_ptr": "fp32",
                       "dpb_ptr": "fp32"},
             constexprs={"OUT_RELU": True, "ATOMIC": True}, ones=("sdq", "syq", "smq", "spc"), **common),
        dict(kernel=sep_mid_grad_kernel, name="sep_mid_grad",
             pointers={"dy_ptr": "x", "y_ptr": "x", "pww_ptr": "x", "mid_ptr": "x",
                       "gmid_ptr": "fp32"},
             constexprs={"OUT_RELU": True, "MID_RELU": True},
             ones=("sdq", "syq", "spc", "smq", "sgq"), **common),
    ]
