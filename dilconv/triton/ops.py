"""The `dilconv::*_triton` ops: schemas of csrc/ops.cpp, bodies that pick and launch the kernels.

On a GPU the ops are `torch.library.triton_op`s whose kernels are launched through `wrap_triton`:
torch.compile traces through them and Inductor sees the Triton kernels themselves (no graph
break, no opaque call). Under TRITON_INTERPRET=1 `wrap_triton` hands back the interpreted kernel,
which cannot run on the fake/functional tensors that tracing uses, so there the same bodies are
registered with `torch.library.custom_op` (opaque to the compiler, still no graph break).

Fake kernels and autograd come from dilconv._ops.register_variant("_triton"): triton_op would
derive a fake by running the body on fake tensors, which works with the compiled kernels but not
with the interpreter, so the explicit fakes (the same ones every backend shares) are registered
in both cases. Outputs follow dilconv._ops.output_memory_format (opcheck compares strides).

The ops' namespace `dilconv` is also defined by the C++ extension (TORCH_LIBRARY); both
registration paths add to it as a fragment, so the ops exist whether or not dilconv._C is loaded.
"""
from __future__ import annotations

import torch

from dilconv import _ops
from dilconv._ops import conv_out_size, conv_transpose_out_size, output_memory_format
from dilconv.triton import _common, conv_igemm, conv_transpose, depthwise, separable

DTYPES = (torch.float32, torch.float16, torch.bfloat16)

SCHEMAS = {
    "conv2d": "(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
              "int[2] dilation, int groups) -> Tensor",
    "conv2d_input_grad": "(Tensor grad_output, Tensor weight, int[4] input_size, int[2] stride, "
                         "int[2] padding, int[2] dilation, int groups) -> Tensor",
    "conv2d_weight_grad": "(Tensor grad_output, Tensor input, int[4] weight_size, int[2] stride, "
                          "int[2] padding, int[2] dilation, int groups) -> Tensor",
    "conv_transpose2d": "(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
                        "int[2] output_padding, int groups, int[2] dilation) -> Tensor",
    "separable_conv2d": "(Tensor input, Tensor dw_weight, Tensor? dw_bias, Tensor pw_weight, "
                        "Tensor? pw_bias, int[2] stride, int[2] padding, int[2] dilation, "
                        "bool mid_relu, bool out_relu) -> Tensor",
    "separable_conv2d_backward": "(Tensor grad_output, Tensor input, Tensor dw_weight, "
                                 "Tensor? dw_bias, Tensor pw_weight, Tensor? pw_bias, int[2] stride, "
                                 "int[2] padding, int[2] dilation, bool mid_relu, bool out_relu) "
                                 "-> (Tensor, Tensor, Tensor, Tensor, Tensor)",
}


def _define(name):
    def deco(fn):
        qualname = f"dilconv::{name}_triton"
        if _common.INTERPRET:
            return torch.library.custom_op(qualname, fn, mutates_args=(), schema=SCHEMAS[name])
        return torch.library.triton_op(qualname, fn, mutates_args=(), schema=SCHEMAS[name])
    return deco


def _check(op, *tensors):
    """Errors the kernels would otherwise turn into garbage or a crash (direct op calls skip
    dilconv.functional's checks)."""
    ts = [t for t in tensors if t is not None]
    dtype, device = ts[0].dtype, ts[0].device
    for t in ts:
        if t.dtype != dtype:
            raise RuntimeError(f"dilconv::{op}_triton: expected all tensors to be {dtype}, got {t.dtype}")
        if t.device != device:
            raise RuntimeError(f"dilconv::{op}_triton: expected all tensors on {device}, got {t.device}")
        if t.numel() > _common.INT32_MAX:
            raise RuntimeError(f"dilconv::{op}_triton: tensors over 2**31 - 1 elements are not "
                               "supported (32-bit indexing); use backend='torch'")
    if dtype not in DTYPES:
        raise RuntimeError(f"dilconv::{op}_triton: dtype {dtype} is not supported "
                           "(float32, float16, bfloat16)")
    if device.type == "cpu" and _common.INTERPRET and dtype == torch.bfloat16:
        raise RuntimeError(f"dilconv::{op}_triton: bfloat16 arithmetic is silently wrong in the Triton "
                           "interpreter; bfloat16 runs on CUDA tensors only")
    if device.type != "cuda" and not (_common.INTERPRET and device.type == "cpu"):
        raise RuntimeError(f"dilconv::{op}_triton: runs on CUDA tensors (CPU tensors only under "
                           f"TRITON_INTERPRET=1), got {device.type}")


def _require(cond, op, msg):
    if not cond:
        raise RuntimeError(f"dilconv::{op}_triton: {msg}")


def _check_conv(op, x_shape, w_shape, bias, stride, padding, dilation, groups, out_hw=None):
    """Geometry of a conv2d with input x_shape [N, C, H, W] and weight w_shape [K, C/g, R, S]:
    everything the kernels' index arithmetic relies on. Returns the output size (P, Q)."""
    _require(len(x_shape) == 4 and len(w_shape) == 4, op,
             f"expected 4-D input and weight, got {list(x_shape)} and {list(w_shape)}")
    _require(groups > 0, op, f"groups must be positive, got {groups}")
    _require(all(v > 0 for v in stride) and all(v > 0 for v in dilation), op,
             f"stride and dilation must be positive, got {list(stride)}, {list(dilation)}")
    _require(all(v >= 0 for v in padding), op, f"padding must be non-negative, got {list(padding)}")
    n, c, h, w = x_shape
    k, cg, r, s = w_shape
    _require(cg * groups == c and k % groups == 0, op,
             f"weight {list(w_shape)} with groups={groups} does not match {c} input channels")
    _require(bias is None or tuple(bias.shape) == (k,), op,
             f"expected a bias of {k} elements, got {list(bias.shape) if bias is not None else None}")
    p = conv_out_size(h, r, stride[0], padding[0], dilation[0])
    q = conv_out_size(w, s, stride[1], padding[1], dilation[1])
    _require(p > 0 and q > 0, op, f"kernel {r}x{s} (dilation {list(dilation)}) does not fit the "
             f"padded input {h + 2 * padding[0]}x{w + 2 * padding[1]}")
    if out_hw is not None:
        _require(tuple(out_hw) == (n, k, p, q), op,
                 f"grad_output {list(out_hw)} does not match the conv's output {[n, k, p, q]}")
    return p, q


def _is_depthwise(c: int, cg: int, groups: int) -> bool:
    return cg == 1 and groups == c


def _check_separable(op, input, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, dilation):
    _require(input.dim() == 4 and dw_weight.dim() == 4 and pw_weight.dim() == 4, op,
             "expected 4-D input, dw_weight and pw_weight")
    c, cm = input.shape[1], dw_weight.shape[0]
    _require(cm % c == 0 if c else False, op,
             f"dw_weight {list(dw_weight.shape)} is not a depthwise weight for {c} channels")
    _require(tuple(pw_weight.shape[1:]) == (cm, 1, 1), op,
             f"pw_weight {list(pw_weight.shape)} is not a 1x1 weight over {cm} channels")
    _require(pw_bias is None or tuple(pw_bias.shape) == (pw_weight.shape[0],), op,
             "pw_bias does not match pw_weight")
    return _check_conv(op, input.shape, dw_weight.shape, dw_bias, stride, padding, dilation, c)


@_define("conv2d")
def conv2d(input, weight, bias, stride, padding, dilation, groups):
    _check("conv2d", input, weight, bias)
    p, q = _check_conv("conv2d", input.shape, weight.shape, bias, stride, padding, dilation, groups)
    n, c = input.shape[:2]
    k, cg = weight.shape[:2]
    shape = (n, k, p, q)
    out = _common.empty(input, shape, output_memory_format(input))
    if _is_depthwise(c, cg, groups):
        return depthwise.fprop(input, weight, bias, stride, padding, dilation, out)
    return conv_igemm.fprop(input, weight, bias, stride, padding, dilation, groups, out)


@_define("conv2d_input_grad")
def conv2d_input_grad(grad_output, weight, input_size, stride, padding, dilation, groups):
    _check("conv2d_input_grad", grad_output, weight)
    _require(len(input_size) == 4, "conv2d_input_grad", f"input_size must have 4 entries, got {input_size}")
    _check_conv("conv2d_input_grad", input_size, weight.shape, None, stride, padding, dilation,
                groups, out_hw=grad_output.shape)
    out = _common.empty(grad_output, input_size, output_memory_format(grad_output))
    if _is_depthwise(input_size[1], weight.shape[1], groups):
        return depthwise.dgrad(grad_output, weight, stride, padding, dilation, out)
    return conv_igemm.dgrad(grad_output, weight, None, stride, padding, dilation, groups, out)


@_define("conv2d_weight_grad")
def conv2d_weight_grad(grad_output, input, weight_size, stride, padding, dilation, groups):
    _check("conv2d_weight_grad", grad_output, input)
    _require(len(weight_size) == 4, "conv2d_weight_grad", f"weight_size must have 4 entries, got {weight_size}")
    _check_conv("conv2d_weight_grad", input.shape, weight_size, None, stride, padding, dilation,
                groups, out_hw=grad_output.shape)
    out = input.new_empty(tuple(weight_size))
    if _is_depthwise(input.shape[1], weight_size[1], groups):
        return depthwise.wgrad(grad_output, input, stride, padding, dilation, out)
    return conv_igemm.wgrad(grad_output, input, stride, padding, dilation, groups, out)


@_define("conv_transpose2d")
def conv_transpose2d(input, weight, bias, stride, padding, output_padding, groups, dilation):
    op = "conv_transpose2d"
    _check(op, input, weight, bias)
    _require(input.dim() == 4 and weight.dim() == 4, op, "expected 4-D input and weight")
    n, cin, h, w = input.shape
    _, kg, r, s = weight.shape
    _require(groups > 0 and cin == weight.shape[0] and cin % groups == 0, op,
             f"weight {list(weight.shape)} with groups={groups} does not match {cin} input channels")
    _require(all(v > 0 for v in stride) and all(v > 0 for v in dilation)
             and all(v >= 0 for v in padding) and all(v >= 0 for v in output_padding), op,
             "stride/dilation must be positive, padding/output_padding non-negative")
    _require(all(output_padding[i] < max(stride[i], dilation[i]) for i in range(2)), op,
             f"output_padding {list(output_padding)} must be smaller than stride or dilation")
    _require(bias is None or tuple(bias.shape) == (kg * groups,), op, f"expected a bias of {kg * groups} elements")
    shape = (n, kg * groups,
             conv_transpose_out_size(h, r, stride[0], padding[0], output_padding[0], dilation[0]),
             conv_transpose_out_size(w, s, stride[1], padding[1], output_padding[1], dilation[1]))
    _require(shape[2] > 0 and shape[3] > 0, op, f"output size {list(shape)} is not positive")
    out = _common.empty(input, shape, output_memory_format(input))
    return conv_transpose.fprop(input, weight, bias, stride, padding, dilation, groups, out)


@_define("separable_conv2d")
def separable_conv2d(input, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, dilation,
                     mid_relu, out_relu):
    _check("separable_conv2d", input, dw_weight, dw_bias, pw_weight, pw_bias)
    p, q = _check_separable("separable_conv2d", input, dw_weight, dw_bias, pw_weight, pw_bias,
                            stride, padding, dilation)
    shape = (input.shape[0], pw_weight.shape[0], p, q)
    out = _common.empty(input, shape, output_memory_format(input))
    return separable.fprop(input, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding,
                           dilation, mid_relu, out_relu, out)


@_define("separable_conv2d_backward")
def separable_conv2d_backward(grad_output, input, dw_weight, dw_bias, pw_weight, pw_bias, stride,
                              padding, dilation, mid_relu, out_relu):
    op = "separable_conv2d_backward"
    _check(op, grad_output, input, dw_weight, dw_bias, pw_weight, pw_bias)
    p, q = _check_separable(op, input, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, dilation)
    expect = (input.shape[0], pw_weight.shape[0], p, q)
    _require(tuple(grad_output.shape) == expect, op,
             f"grad_output {list(grad_output.shape)} does not match the output {list(expect)}")
    grad_in = _common.empty(input, input.shape, output_memory_format(grad_output))
    g_dw = dw_weight.new_empty(dw_weight.shape)
    g_dwb = dw_weight.new_empty(dw_weight.shape[:1])
    g_pw = pw_weight.new_empty(pw_weight.shape)
    g_pwb = pw_weight.new_empty(pw_weight.shape[:1])
    separable.backward(grad_output, input, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding,
                       dilation, mid_relu, out_relu, grad_in, g_dw, g_dwb, g_pw, g_pwb)
    return grad_in, g_dw, g_dwb, g_pw, g_pwb


_ops.register_variant("_triton", fake=True)
