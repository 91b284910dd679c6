"""Fake (meta) kernels and autograd formulas for the `dilconv::` ops.

The compiled backends ("cpu"/"cuda" on the plain op names, "cuda-emu" on the *_emu names) and the
Triton backend (*_triton names) share one set of schemas (csrc/ops.cpp), so one set of formulas
serves all of them: `register_variant(suffix)` wires a variant up.

Autograd, in GEMM-view terms (fprop / dgrad / wgrad):
  y = conv2d(x, w) + b        gx = dgrad(gy, w)          gw = wgrad(gy, x)        gb = sum(gy)
  x = dgrad(g, w)             gg = conv2d(gx, w)          gw = wgrad(g, gx)
  w = wgrad(g, x)             gg = conv2d(x, gw)          gx = dgrad(g, gw)
  y = conv_transpose2d(x, w)  gx = conv2d(gy, w)          gw = wgrad(x, gy)        gb = sum(gy)
so every op's backward is again made of dilconv ops of the same backend (double backward works).
"""
from __future__ import annotations

from typing import Sequence

import torch

from dilconv import _ext

OP_NAMES = (
    "conv2d",
    "conv2d_input_grad",
    "conv2d_weight_grad",
    "conv_transpose2d",
    "separable_conv2d",
    "separable_conv2d_backward",
)


def conv_out_size(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def conv_transpose_out_size(size: int, k: int, s: int, p: int, op: int, d: int) -> int:
    return (size - 1) * s - 2 * p + d * (k - 1) + op + 1


def output_memory_format(t: torch.Tensor) -> torch.memory_format:
    """channels_last when `t` is channels_last and not also plain contiguous (ambiguous shapes such
    as C == 1 or H == W == 1 count as contiguous). Every implementation follows this rule."""
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _empty(like: torch.Tensor, shape: Sequence[int], fmt: torch.memory_format) -> torch.Tensor:
    return like.new_empty(tuple(shape)).contiguous(memory_format=fmt)


def _op(name: str, suffix: str):
    return getattr(torch.ops.dilconv, name + suffix).default


# ---------------------------------------------------------------------------------------------
# fake kernels


def _fake_conv2d(input, weight, bias, stride, padding, dilation, groups):
    n, _, h, w = input.shape
    k, _, r, s = weight.shape
    p = conv_out_size(h, r, stride[0], padding[0], dilation[0])
    q = conv_out_size(w, s, stride[1], padding[1], dilation[1])
    return _empty(input, (n, k, p, q), output_memory_format(input))


def _fake_conv2d_input_grad(grad_output, weight, input_size, stride, padding, dilation, groups):
    return _empty(grad_output, input_size, output_memory_format(grad_output))


def _fake_conv2d_weight_grad(grad_output, input, weight_size, stride, padding, dilation, groups):
    return input.new_empty(tuple(weight_size))


def _fake_conv_transpose2d(input, weight, bias, stride, padding, output_padding, groups, dilation):
    n, _, h, w = input.shape
    _, kg, r, s = weight.shape
    p = conv_transpose_out_size(h, r, stride[0], padding[0], output_padding[0], dilation[0])
    q = conv_transpose_out_size(w, s, stride[1], padding[1], output_padding[1], dilation[1])
    return _empty(input, (n, kg * groups, p, q), output_memory_format(input))


def _fake_separable_conv2d(input, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, dilation,
                           mid_relu, out_relu):
    n, _, h, w = input.shape
    r, s = dw_weight.shape[2:]
    p = conv_out_size(h, r, stride[0], padding[0], dilation[0])
    q = conv_out_size(w, s, stride[1], padding[1], dilation[1])
    return _empty(input, (n, pw_weight.shape[0], p, q), output_memory_format(input))


def _fake_separable_conv2d_backward(grad_output, input, dw_weight, dw_bias, pw_weight, pw_bias,
                                    stride, padding, dilation, mid_relu, out_relu):
    return (
        _empty(input, input.shape, output_memory_format(grad_output)),
        dw_weight.new_empty(dw_weight.shape),
        dw_weight.new_empty(dw_weight.shape[:1]),
        pw_weight.new_empty(pw_weight.shape),
        pw_weight.new_empty(pw_weight.shape[:1]),
    )


def _fake_conv2d_backward(grad_output, input, weight, stride, padding, dilation, groups, output_mask):
    return (
        _empty(grad_output, input.shape, output_memory_format(grad_output)) if output_mask[0] else None,
        weight.new_empty(weight.shape) if output_mask[1] else None,
        grad_output.new_empty(weight.shape[:1]) if output_mask[2] else None,
    )


def _fake_conv2d_clamp(input, weight, bias, stride, padding, dilation, groups, min, max):
    torch._check(min <= max, lambda: f"dilconv::conv2d_clamp: need min <= max, got {min}, {max}")
    return _fake_conv2d(input, weight, bias, stride, padding, dilation, groups)


def _fake_resize_bilinear(input, size, align_corners):
    torch._check(input.dim() == 4, lambda: f"dilconv::resize_bilinear: expected 4-D input, got {input.shape}")
    return _empty(input, (*input.shape[:2], *size), output_memory_format(input))


def _fake_resize_bilinear_backward(grad_output, input_size, align_corners):
    return _empty(grad_output, input_size, output_memory_format(grad_output))


def _fake_batch_norm_act(input, weight, bias, eps, min, max):
    torch._check(input.dim() == 4, lambda: f"dilconv::batch_norm_act: expected 4-D input, got {input.shape}")
    c = input.shape[1]
    stat = lambda: input.new_empty((c,), dtype=_compute_dtype(input.dtype))  # noqa: E731
    return _empty(input, input.shape, output_memory_format(input)), stat(), stat(), stat()


def _fake_batch_norm_act_backward(grad_output, input, weight, bias, mean, invstd, min, max,
                                  output_mask):
    c = input.shape[1]
    return (
        _empty(grad_output, input.shape, output_memory_format(input)) if output_mask[0] else None,
        input.new_empty((c,), dtype=weight.dtype if weight is not None else input.dtype)
        if output_mask[1] else None,
        input.new_empty((c,)) if output_mask[2] else None,
    )


def _fake_cross_entropy(logits, target, ignore_index):
    torch._check(logits.dim() == 4, lambda: f"dilconv::cross_entropy: expected 4-D logits, got {logits.shape}")
    shape = (logits.shape[0], *logits.shape[2:])
    dt = _compute_dtype(logits.dtype)
    return logits.new_empty(shape, dtype=dt), logits.new_empty(shape, dtype=dt)


def _fake_cross_entropy_backward(grad, logits, target, lsum, ignore_index):
    return _empty(logits, logits.shape, output_memory_format(logits))


def _fake_resize_cross_entropy(logits, target, align_corners, ignore_index):
    torch._check(logits.dim() == 4, lambda: f"dilconv::resize_cross_entropy: expected 4-D logits, got {logits.shape}")
    dt = _compute_dtype(logits.dtype)
    return logits.new_empty(target.shape, dtype=dt), logits.new_empty(target.shape, dtype=dt)


def _fake_resize_cross_entropy_backward(grad, logits, target, lsum, align_corners, ignore_index):
    return _empty(logits, logits.shape, output_memory_format(logits))


def resize_cross_entropy_grad_reference(grad, logits, target, align_corners, ignore_index):
    """resize_cross_entropy's logits gradient in differentiable torch ops (its double backward):
    the cross-entropy gradient of the resized logits, resized back (upsample_bilinear2d's
    backward)."""
    size = list(target.shape[-2:])
    up = torch.nn.functional.interpolate(logits.to(grad.dtype), size=size, mode="bilinear",
                                         align_corners=align_corners)
    gup = cross_entropy_grad_reference(grad, up, target, ignore_index)
    return torch.ops.aten.upsample_bilinear2d_backward(gup, size, list(logits.shape),
                                                       align_corners).to(logits.dtype)


def cross_entropy_grad_reference(grad, logits, target, ignore_index):
    """cross_entropy's logits gradient in differentiable torch ops (its double backward):
    grad * (softmax - one-hot) per pixel, 0 where target == ignore_index."""
    valid = target != ignore_index
    p = torch.softmax(logits.to(grad.dtype), 1)
    onehot = torch.nn.functional.one_hot(torch.where(valid, target, 0).long(), logits.shape[1])
    return ((p - onehot.permute(0, 3, 1, 2).to(p.dtype)) * (grad * valid).unsqueeze(1)).to(logits.dtype)


def _compute_dtype(dtype):
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def batch_norm_act_reference(grad, input, weight, bias, mean, invstd, min, max, eps):
    """The input/weight/bias gradients of batch_norm_act in differentiable torch ops, the batch
    statistics recomputed from `input` (so that a double backward sees how they depend on it).
    `mean`, `invstd`: the forward's, for where its clamp passed the gradient (its pre-clamp
    value recomputed as the op's backward does; a constant mask, no gradient of its own)."""
    if not (min == float("-inf") and max == float("inf")):
        with torch.no_grad():
            c = input.shape[1]
            scale = invstd if weight is None else invstd * weight
            shift = -mean * scale if bias is None else -mean * scale + bias
            pre = input * scale.view(1, c, 1, 1) + shift.view(1, c, 1, 1)
        grad = grad * ((pre > min) & (pre < max)).to(grad.dtype)
    var, mean = torch.var_mean(input, dim=(0, 2, 3), correction=0, keepdim=True)
    invstd = (var + eps).rsqrt()
    xhat = (input - mean) * invstd
    gb = grad.sum((0, 2, 3))
    gw = (grad * xhat).sum((0, 2, 3))
    m = input.numel() // input.shape[1]
    k = invstd if weight is None else invstd * weight.view(1, -1, 1, 1)
    gx = k * (grad - gb.view(1, -1, 1, 1) / m - xhat * gw.view(1, -1, 1, 1) / m)
    return gx, gw, gb


_FAKES = {
    "conv2d": _fake_conv2d,
    "conv2d_input_grad": _fake_conv2d_input_grad,
    "conv2d_weight_grad": _fake_conv2d_weight_grad,
    "conv_transpose2d": _fake_conv_transpose2d,
    "separable_conv2d": _fake_separable_conv2d,
    "separable_conv2d_backward": _fake_separable_conv2d_backward,
}


# ---------------------------------------------------------------------------------------------
# autograd


def _bias_grad(grad: torch.Tensor) -> torch.Tensor:
    return grad.sum((0, 2, 3))


def _autograd_formulas(suffix: str):
    fprop = lambda *a: _op("conv2d", suffix)(*a)  # noqa: E731
    dgrad = lambda *a: _op("conv2d_input_grad", suffix)(*a)  # noqa: E731
    wgrad = lambda *a: _op("conv2d_weight_grad", suffix)(*a)  # noqa: E731
    fused = _op("conv2d_backward", suffix) if suffix == "" else None

    # conv2d(input, weight, bias, stride, padding, dilation, groups)
    def conv2d_setup(ctx, inputs, output):
        input, weight, bias, stride, padding, dilation, groups = inputs
        ctx.save_for_backward(input, weight)
        ctx.conf = (stride, padding, dilation, groups)
        ctx.has_bias = bias is not None

    def conv2d_backward(ctx, grad):
        input, weight = ctx.saved_tensors
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1],
                ctx.has_bias and ctx.needs_input_grad[2]]
        if fused is not None:  # one call: the backend may read grad once for all three
            gi, gw, gb = fused(grad, input, weight, *ctx.conf, mask)
            return gi, gw, gb, None, None, None, None
        gi = gw = gb = None
        if mask[0]:
            gi = dgrad(grad, weight, list(input.shape), *ctx.conf)
        if mask[1]:
            gw = wgrad(grad, input, list(weight.shape), *ctx.conf)
        if mask[2]:
            gb = _bias_grad(grad)
        return gi, gw, gb, None, None, None, None

    # conv2d_backward(grad_output, input, weight, stride, padding, dilation, groups, output_mask)
    # (its own backward, for double backward through the fused call: the same formulas as the
    # separate ops' below, summed per input)
    def bwd_setup(ctx, inputs, output):
        g, input, weight, stride, padding, dilation, groups, _ = inputs
        ctx.save_for_backward(g, input, weight)
        ctx.conf = (stride, padding, dilation, groups)

    def bwd_backward(ctx, ggi, ggw, ggb):
        g, input, weight = ctx.saved_tensors
        need_g, need_x, need_w = ctx.needs_input_grad[:3]
        dg = dx = dw = None
        if need_g:
            terms = []
            if ggi is not None:
                terms.append(fprop(ggi, weight, None, *ctx.conf))
            if ggw is not None:
                terms.append(fprop(input, ggw, None, *ctx.conf))
            if ggb is not None:
                terms.append(ggb.view(1, -1, 1, 1).expand_as(g))
            dg = sum(terms[1:], terms[0]) if terms else torch.zeros_like(g)
        if need_x:
            dx = (dgrad(g, ggw, list(input.shape), *ctx.conf) if ggw is not None
                  else torch.zeros_like(input))
        if need_w:
            dw = (wgrad(g, ggi, list(weight.shape), *ctx.conf) if ggi is not None
                  else torch.zeros_like(weight))
        return dg, dx, dw, None, None, None, None, None

    # conv2d_input_grad(grad_output, weight, input_size, stride, padding, dilation, groups)
    def dgrad_setup(ctx, inputs, output):
        g, weight, _, stride, padding, dilation, groups = inputs
        ctx.save_for_backward(g, weight)
        ctx.conf = (stride, padding, dilation, groups)

    def dgrad_backward(ctx, grad):
        g, weight = ctx.saved_tensors
        gg = gw = None
        if ctx.needs_input_grad[0]:
            gg = fprop(grad, weight, None, *ctx.conf)
        if ctx.needs_input_grad[1]:
            gw = wgrad(g, grad, list(weight.shape), *ctx.conf)
        return gg, gw, None, None, None, None, None

    # conv2d_weight_grad(grad_output, input, weight_size, stride, padding, dilation, groups)
    def wgrad_setup(ctx, inputs, output):
        g, input, _, stride, padding, dilation, groups = inputs
        ctx.save_for_backward(g, input)
        ctx.conf = (stride, padding, dilation, groups)

    def wgrad_backward(ctx, grad):
        g, input = ctx.saved_tensors
        gg = gi = None
        if ctx.needs_input_grad[0]:
            gg = fprop(input, grad, None, *ctx.conf)
        if ctx.needs_input_grad[1]:
            gi = dgrad(g, grad, list(input.shape), *ctx.conf)
        return gg, gi, None, None, None, None, None

    # conv_transpose2d(input, weight, bias, stride, padding, output_padding, groups, dilation)
    def convt_setup(ctx, inputs, output):
        input, weight, bias, stride, padding, _, groups, dilation = inputs
        ctx.save_for_backward(input, weight)
        ctx.conf = (stride, padding, dilation, groups)
        ctx.has_bias = bias is not None

    def convt_backward(ctx, grad):
        input, weight = ctx.saved_tensors
        stride, padding, dilation, _ = ctx.conf
        # conv2d over grad has H + output_padding // stride rows: more than the input when
        # output_padding >= stride (allowed when it is < dilation). The extra rows/cols are
        # positions no input element reaches: crop them from the input gradient, and give wgrad
        # an input zero-padded to that size (zeros contribute nothing).
        h, w = input.shape[2:]
        p = conv_out_size(grad.shape[2], weight.shape[2], stride[0], padding[0], dilation[0])
        q = conv_out_size(grad.shape[3], weight.shape[3], stride[1], padding[1], dilation[1])
        gi = gw = gb = None
        if ctx.needs_input_grad[0]:
            gi = fprop(grad, weight, None, *ctx.conf)
            if (p, q) != (h, w):
                gi = gi[:, :, :h, :w]
        if ctx.needs_input_grad[1]:
            x = input if (p, q) == (h, w) else torch.nn.functional.pad(input, [0, q - w, 0, p - h])
            gw = wgrad(x, grad, list(weight.shape), *ctx.conf)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = _bias_grad(grad)
        return gi, gw, gb, None, None, None, None, None

    # separable_conv2d(input, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, dilation,
    #                  mid_relu, out_relu)
    def sep_setup(ctx, inputs, output):
        input, dw_w, dw_b, pw_w, pw_b = inputs[:5]
        ctx.save_for_backward(input, dw_w, dw_b, pw_w, pw_b)
        ctx.conf = tuple(inputs[5:])

    def sep_backward(ctx, grad):
        input, dw_w, dw_b, pw_w, pw_b = ctx.saved_tensors
        gi, gdw, gdb, gpw, gpb = _op("separable_conv2d_backward", suffix)(
            grad, input, dw_w, dw_b, pw_w, pw_b, *ctx.conf)
        return (gi, gdw, gdb if dw_b is not None else None, gpw, gpb if pw_b is not None else None,
                None, None, None, None, None)

    formulas = {
        "conv2d": (conv2d_backward, conv2d_setup),
        "conv2d_input_grad": (dgrad_backward, dgrad_setup),
        "conv2d_weight_grad": (wgrad_backward, wgrad_setup),
        "conv_transpose2d": (convt_backward, convt_setup),
        "separable_conv2d": (sep_backward, sep_setup),
    }
    # conv2d_clamp(input, weight, bias, stride, padding, dilation, groups, min, max): the clamp
    # passes the gradient where min < y < max (torch's hardtanh/relu: zero at the bounds)
    def clamp_setup(ctx, inputs, output):
        input, weight, bias, stride, padding, dilation, groups, lo, hi = inputs
        ctx.save_for_backward(input, weight, output)
        ctx.conf = (stride, padding, dilation, groups)
        ctx.bounds = (lo, hi)
        ctx.has_bias = bias is not None

    def clamp_backward(ctx, grad):
        input, weight, output = ctx.saved_tensors
        lo, hi = ctx.bounds
        # zero where the clamp held (at the bounds too, as relu's and hardtanh's backward): one
        # pass (the output lies within [lo, hi], so it tells what the pre-clamp value did);
        # comparing, and-ing, casting and multiplying took 3.5x longer (2x96x257^2: 21 -> 6 ms)
        grad = torch.ops.aten.hardtanh_backward(grad, output, lo, hi)
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1],
                ctx.has_bias and ctx.needs_input_grad[2]]
        gi, gw, gb = fused(grad, input, weight, *ctx.conf, mask)
        return gi, gw, gb, None, None, None, None, None, None

    # resize_bilinear is linear in its input: its backward is resize_bilinear_backward, whose
    # own backward is resize_bilinear again (double backward)
    def resize_setup(ctx, inputs, output):
        input, size, align_corners = inputs
        ctx.input_size = tuple(input.shape)
        ctx.input_format = output_memory_format(input)
        ctx.align_corners = align_corners

    def resize_backward(ctx, grad):
        # the input gradient in the input's layout (the loss's gradient arrives contiguous even
        # for a channels-last network; the layers below would otherwise run in the other layout).
        # A gradient that is a channel slice of a channels-last one (DeepLabV3+'s concat) is
        # neither layout: made channels-last first, a cheap copy, where the op would transpose it.
        if (ctx.input_format == torch.channels_last and grad.dim() == 4 and grad.stride(1) == 1
                and not grad.is_contiguous(memory_format=torch.channels_last)):
            grad = grad.contiguous(memory_format=torch.channels_last)
        gx = _op("resize_bilinear_backward", "")(grad, ctx.input_size, ctx.align_corners)
        return gx.contiguous(memory_format=ctx.input_format), None, None

    def resize_bwd_setup(ctx, inputs, output):
        grad_output, input_size, align_corners = inputs
        ctx.size = tuple(grad_output.shape[2:])
        ctx.align_corners = align_corners

    def resize_bwd_backward(ctx, grad):
        return _op("resize_bilinear", "")(grad, ctx.size, ctx.align_corners), None, None

    # batch_norm_act(input, weight, bias, eps, min, max) -> (out, mean, invstd, var): the
    # statistics are outputs for the running averages, not differentiated. Under create_graph
    # the gradient is built from differentiable torch ops (double backward); otherwise the op.
    # The output is not saved: the backward recomputes where the clamp passed the gradient.
    def bn_setup(ctx, inputs, output):
        input, weight, bias, eps, lo, hi = inputs
        _, mean, invstd, var = output
        ctx.mark_non_differentiable(mean, invstd, var)
        ctx.set_materialize_grads(False)  # no zero tensors for the statistics' (absent) gradients
        ctx.save_for_backward(input, weight, bias, mean, invstd)
        ctx.conf = (eps, lo, hi)
        ctx.has_weight, ctx.has_bias = weight is not None, bias is not None

    def bn_backward(ctx, grad, *_):
        if grad is None:  # the output did not reach the loss
            return None, None, None, None, None, None
        input, weight, bias, mean, invstd = ctx.saved_tensors
        eps, lo, hi = ctx.conf
        need = ctx.needs_input_grad
        if torch.is_grad_enabled():
            gx, gw, gb = batch_norm_act_reference(grad, input, weight, bias, mean, invstd, lo, hi,
                                                  eps)
        else:
            mask = [need[0], ctx.has_weight and need[1], ctx.has_bias and need[2]]
            gx, gw, gb = _op("batch_norm_act_backward", "")(grad, input, weight, bias, mean,
                                                              invstd, lo, hi, mask)
        return (gx if need[0] else None, gw if ctx.has_weight and need[1] else None,
                gb if ctx.has_bias and need[2] else None, None, None, None)

    # cross_entropy(logits, target, ignore_index) -> (loss, lsum): lsum (the log-sum-exp less
    # the max) is saved for the backward, not differentiated; under create_graph the gradient
    # is built from torch ops
    def ce_setup(ctx, inputs, output):
        logits, target, ignore_index = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(logits, target, output[1])
        ctx.ignore_index = ignore_index

    def ce_backward(ctx, grad, _):
        if grad is None:
            return None, None, None
        logits, target, lsum = ctx.saved_tensors
        if torch.is_grad_enabled():
            return cross_entropy_grad_reference(grad, logits, target, ctx.ignore_index), None, None
        return _op("cross_entropy_backward", "")(grad, logits, target, lsum, ctx.ignore_index), None, None

    # resize_cross_entropy(logits, target, align_corners, ignore_index) -> (loss, lsum): as
    # cross_entropy
    def rce_setup(ctx, inputs, output):
        logits, target, align_corners, ignore_index = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(logits, target, output[1])
        ctx.conf = (align_corners, ignore_index)

    def rce_backward(ctx, grad, _):
        if grad is None:
            return None, None, None, None
        logits, target, lsum = ctx.saved_tensors
        if torch.is_grad_enabled():
            gx = resize_cross_entropy_grad_reference(grad, logits, target, *ctx.conf)
        else:
            gx = _op("resize_cross_entropy_backward", "")(grad, logits, target, lsum, *ctx.conf)
        return gx, None, None, None

    if fused is not None:
        formulas["cross_entropy"] = (ce_backward, ce_setup)
        formulas["resize_cross_entropy"] = (rce_backward, rce_setup)
        formulas["batch_norm_act"] = (bn_backward, bn_setup)
        formulas["conv2d_backward"] = (bwd_backward, bwd_setup)
        formulas["conv2d_clamp"] = (clamp_backward, clamp_setup)
        formulas["resize_bilinear"] = (resize_backward, resize_setup)
        formulas["resize_bilinear_backward"] = (resize_bwd_backward, resize_bwd_setup)
    return formulas


def register_variant(suffix: str, *, fake: bool = True) -> None:
    """Register fake kernels (unless the variant brings its own, e.g. triton_op) and autograd for
    the ops `dilconv::<name><suffix>`."""
    if fake:
        for name, fn in _FAKES.items():
            torch.library.register_fake(f"dilconv::{name}{suffix}")(fn)
        if suffix == "":
            torch.library.register_fake("dilconv::conv2d_backward")(_fake_conv2d_backward)
            torch.library.register_fake("dilconv::conv2d_clamp")(_fake_conv2d_clamp)
            torch.library.register_fake("dilconv::resize_bilinear")(_fake_resize_bilinear)
            torch.library.register_fake("dilconv::resize_bilinear_backward")(
                _fake_resize_bilinear_backward)
            torch.library.register_fake("dilconv::batch_norm_act")(_fake_batch_norm_act)
            torch.library.register_fake("dilconv::batch_norm_act_backward")(
                _fake_batch_norm_act_backward)
            torch.library.register_fake("dilconv::cross_entropy")(_fake_cross_entropy)
            torch.library.register_fake("dilconv::cross_entropy_backward")(
                _fake_cross_entropy_backward)
            torch.library.register_fake("dilconv::resize_cross_entropy")(
                _fake_resize_cross_entropy)
            torch.library.register_fake("dilconv::resize_cross_entropy_backward")(
                _fake_resize_cross_entropy_backward)
    for name, (backward, setup) in _autograd_formulas(suffix).items():
        torch.library.register_autograd(f"dilconv::{name}{suffix}", backward, setup_context=setup)


if _ext.loaded:
    register_variant("")
    register_variant("_emu")
