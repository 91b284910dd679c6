"""The one test matrix: every usable backend against a float64 torch.nn.functional reference.

Each backend computes the same problems (fresh random inputs, never zeros); a backend that does
not handle a problem says so through its registry `unsupported()` (a NotImplementedError raised
by dilconv's backend resolution), and exactly that case is skipped with the backend's reason.
"""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

import dilconv
from dilconv import _ops, registry
from dilconv import functional as DF

BACKENDS = [b for b in dilconv.backends() if b != "auto"]
ALL = BACKENDS + ["auto"]
# relative to max|reference|; reference is float64 from the same (rounded) inputs
TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}


# ------------------------------------------------------------------------------------------------
# problems


@dataclasses.dataclass(frozen=True)
class Conv:
    n: int
    c: int
    h: int
    w: int
    k: int
    kernel: tuple
    stride: object = 1
    padding: object = 0
    dilation: object = 1
    groups: int = 1
    bias: bool = True

    def __str__(self):
        return (f"n{self.n}c{self.c}k{self.k}_{self.h}x{self.w}_r{self.kernel[0]}x{self.kernel[1]}"
                f"_s{self.stride}_p{self.padding}_d{self.dilation}_g{self.groups}"
                + ("" if self.bias else "_nobias"))


CONV = [
    Conv(2, 4, 7, 8, 6, (1, 1)),
    Conv(2, 4, 9, 8, 6, (3, 3), padding=1),
    Conv(1, 3, 11, 10, 5, (5, 5), padding=2, bias=False),
    Conv(2, 4, 12, 13, 4, (7, 7), padding=3),
    Conv(2, 4, 6, 15, 6, (1, 7), padding=(0, 3)),
    Conv(2, 4, 15, 6, 6, (7, 1), padding=(3, 0)),
    Conv(2, 4, 10, 11, 6, (3, 3), stride=2, padding=1),
    Conv(1, 4, 13, 14, 6, (3, 3), stride=3, padding=2, dilation=2),
    Conv(2, 4, 9, 10, 6, (3, 3), stride=(1, 2), padding=(1, 0)),
    Conv(2, 4, 12, 12, 6, (3, 3), padding=2, dilation=2),
    Conv(2, 4, 13, 12, 6, (3, 3), padding=1, dilation=3),  # padding smaller than dilation
    Conv(1, 4, 16, 15, 4, (3, 3), padding=4, dilation=(4, 5)),
    Conv(1, 4, 17, 17, 4, (3, 3), padding=6, dilation=6),
    Conv(1, 2, 30, 29, 3, (3, 3), padding=24, dilation=24),  # ASPP-style: taps mostly in padding
    Conv(2, 4, 9, 10, 6, (4, 4), padding="same", dilation=1),  # asymmetric 'same'
    Conv(2, 4, 11, 10, 6, (3, 3), padding="same", dilation=3),
    Conv(2, 4, 9, 8, 6, (3, 3), padding="valid"),
    Conv(2, 4, 9, 8, 6, (3, 3), padding=1, groups=2),
    Conv(2, 8, 9, 8, 8, (3, 3), padding=2, dilation=2, groups=4),
    Conv(2, 8, 10, 9, 8, (3, 3), stride=2, padding=1, groups=8),  # depthwise
    Conv(2, 6, 11, 10, 6, (5, 5), padding=4, dilation=2, groups=6),  # depthwise dilated
    Conv(2, 4, 9, 10, 8, (3, 3), padding=1, groups=4),  # depthwise, multiplier 2
    Conv(1, 5, 8, 9, 15, (1, 7), padding=(0, 3), groups=5, bias=False),  # depthwise x3, 1x7
    Conv(0, 4, 9, 8, 6, (3, 3), padding=1),  # empty batch
    Conv(0, 6, 9, 8, 6, (3, 3), padding=1, groups=6),  # empty batch, depthwise
    Conv(2, 16, 9, 10, 24, (1, 1)),  # pointwise: one GEMM on the planes (CPU)
    # pointwise without bias (no epilogue): one batched GEMM over the images (CPU: a sum over
    # >= 64 channels or small planes), else a GEMM per image (16 channels on 4900 pixels)
    Conv(2, 72, 5, 6, 80, (1, 1), bias=False),
    Conv(2, 16, 70, 70, 24, (1, 1), bias=False),
    Conv(1, 20, 7, 9, 12, (1, 1), groups=2, bias=False),  # grouped pointwise
]


@dataclasses.dataclass(frozen=True)
class ConvT:
    n: int
    c: int
    h: int
    w: int
    k: int
    kernel: tuple
    stride: object = 1
    padding: object = 0
    output_padding: object = 0
    groups: int = 1
    dilation: object = 1
    bias: bool = True

    def __str__(self):
        return (f"T_n{self.n}c{self.c}k{self.k}_{self.h}x{self.w}_r{self.kernel[0]}x{self.kernel[1]}"
                f"_s{self.stride}_p{self.padding}_op{self.output_padding}_g{self.groups}_d{self.dilation}")


CONVT = [
    ConvT(2, 4, 5, 6, 6, (4, 4), stride=2, padding=1),  # FCN/U-Net style x2 upsampling
    ConvT(2, 4, 5, 5, 3, (3, 3), stride=2, padding=1, output_padding=1),
    ConvT(1, 3, 4, 5, 4, (3, 3), stride=3, output_padding=2, bias=False),
    ConvT(2, 4, 6, 5, 6, (2, 2), stride=2),  # U-Net 2x2 up-conv
    ConvT(2, 4, 5, 6, 6, (3, 3), stride=2, padding=2, output_padding=1, dilation=2),
    ConvT(2, 4, 5, 5, 4, (3, 3), stride=1, padding=1, groups=2),
    ConvT(2, 6, 5, 6, 6, (4, 4), stride=2, padding=1, groups=6),  # depthwise transposed
    ConvT(1, 4, 3, 7, 6, (1, 7), stride=(1, 2), padding=(0, 3), output_padding=(0, 1)),
    ConvT(0, 4, 5, 6, 6, (4, 4), stride=2, padding=1),
    # output_padding >= stride is allowed when < dilation: extra output rows no input reaches
    ConvT(2, 4, 5, 6, 6, (3, 3), stride=1, padding=1, output_padding=1, dilation=2),
]


@dataclasses.dataclass(frozen=True)
class Sep:
    n: int
    c: int
    h: int
    w: int
    mult: int
    k: int
    kernel: tuple
    stride: object = 1
    padding: object = 0
    dilation: object = 1
    dw_bias: bool = True
    pw_bias: bool = True
    mid_relu: bool = False
    out_relu: bool = False

    def __str__(self):
        return (f"S_n{self.n}c{self.c}m{self.mult}k{self.k}_{self.h}x{self.w}_r{self.kernel[0]}x{self.kernel[1]}"
                f"_s{self.stride}_p{self.padding}_d{self.dilation}"
                f"_b{int(self.dw_bias)}{int(self.pw_bias)}_relu{int(self.mid_relu)}{int(self.out_relu)}")


SEP = [
    Sep(2, 4, 9, 10, 1, 6, (3, 3), padding=1),
    Sep(2, 4, 13, 12, 1, 6, (3, 3), padding=6, dilation=6, mid_relu=True, out_relu=True),
    Sep(1, 3, 11, 10, 2, 5, (3, 3), stride=2, padding=2, dilation=2, dw_bias=False, mid_relu=True),
    Sep(2, 4, 9, 10, 1, 3, (5, 5), padding="same", dilation=2, pw_bias=False, out_relu=True),
    Sep(1, 4, 7, 16, 1, 6, (1, 7), padding=(0, 3), mid_relu=True),
    Sep(1, 2, 30, 29, 1, 3, (3, 3), padding=24, dilation=24),
    Sep(0, 4, 9, 10, 1, 6, (3, 3), padding=1),
]


# ------------------------------------------------------------------------------------------------
# inputs


def make(shape, dtype, layout="contiguous", requires_grad=False):
    """Fresh random values in the given layout: 'contiguous', 'channels_last' or 'strided'
    (a non-contiguous view that is neither layout)."""
    if layout == "strided":
        big = torch.randn(*shape[:-1], shape[-1] * 2, dtype=torch.float64)
        t = big.to(dtype)[..., ::2]
    else:
        t = torch.randn(*shape, dtype=torch.float64).to(dtype)
        if layout == "channels_last" and len(shape) == 4:
            t = t.contiguous(memory_format=torch.channels_last)
    return t.requires_grad_(requires_grad)


def conv_tensors(p: Conv, dtype, layout):
    x = make((p.n, p.c, p.h, p.w), dtype, layout)
    w = make((p.k, p.c // p.groups, *p.kernel), dtype, "strided" if layout == "strided" else "contiguous")
    b = make((p.k,), dtype) if p.bias else None
    return x, w, b


def convt_tensors(p: ConvT, dtype, layout):
    x = make((p.n, p.c, p.h, p.w), dtype, layout)
    w = make((p.c, p.k // p.groups, *p.kernel), dtype)
    b = make((p.k,), dtype) if p.bias else None
    return x, w, b


def sep_tensors(p: Sep, dtype, layout):
    x = make((p.n, p.c, p.h, p.w), dtype, layout)
    dw = make((p.c * p.mult, 1, *p.kernel), dtype)
    db = make((p.c * p.mult,), dtype) if p.dw_bias else None
    pw = make((p.k, p.c * p.mult, 1, 1), dtype)
    pb = make((p.k,), dtype) if p.pw_bias else None
    return x, dw, db, pw, pb


def run_conv(p: Conv, backend, x, w, b):
    return DF.conv2d(x, w, b, p.stride, p.padding, p.dilation, p.groups, backend=backend)


def ref_conv(p: Conv, x, w, b):
    d = lambda t: None if t is None else t.double()  # noqa: E731
    return F.conv2d(d(x), d(w), d(b), p.stride, p.padding, p.dilation, p.groups)


def run_convt(p: ConvT, backend, x, w, b):
    return DF.conv_transpose2d(x, w, b, p.stride, p.padding, p.output_padding, p.groups, p.dilation,
                               backend=backend)


def ref_convt(p: ConvT, x, w, b):
    d = lambda t: None if t is None else t.double()  # noqa: E731
    return F.conv_transpose2d(d(x), d(w), d(b), p.stride, p.padding, p.output_padding, p.groups,
                              p.dilation)


def run_sep(p: Sep, backend, x, dw, db, pw, pb):
    return DF.depthwise_separable_conv2d(x, dw, pw, db, pb, p.stride, p.padding, p.dilation,
                                         mid_relu=p.mid_relu, out_relu=p.out_relu, backend=backend)


def ref_sep(p: Sep, x, dw, db, pw, pb):
    d = lambda t: None if t is None else t.double()  # noqa: E731
    mid = F.conv2d(d(x), d(dw), d(db), p.stride, p.padding, p.dilation, p.c)
    mid = torch.relu(mid) if p.mid_relu else mid
    out = F.conv2d(mid, d(pw), d(pb))
    return torch.relu(out) if p.out_relu else out


def call(fn, *args):
    """Run a backend; skip exactly the problems the backend declares it does not handle."""
    try:
        return fn(*args)
    except NotImplementedError as e:
        if str(e).startswith("dilconv backend"):
            pytest.skip(str(e))
        raise


def assert_close(out, ref, dtype, what="output"):
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert out.dtype == dtype, f"{what}: dtype {out.dtype} != {dtype}"
    if ref.numel() == 0:
        return
    err = (out.double() - ref).abs().max().item()
    scale = max(ref.abs().max().item(), 1e-30)
    assert math.isfinite(err) and err <= TOL[dtype] * scale, (
        f"{what}: max abs error {err:.3e} > {TOL[dtype]:.0e} x max|ref| ({scale:.3e})")


def assert_layout(out, x, backend):
    if backend == "torch":
        return
    want = _ops.output_memory_format(x)
    assert out.is_contiguous(memory_format=want), f"output strides {out.stride()} are not {want}"


LAYOUTS = ["contiguous", "channels_last", "strided"]
LOW = [torch.float16, torch.bfloat16]


# ------------------------------------------------------------------------------------------------
# forward


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("p", CONV, ids=str)
@pytest.mark.parametrize("backend", ALL)
def test_conv2d_forward(backend, p, layout):
    x, w, b = conv_tensors(p, torch.float32, layout)
    out = call(run_conv, p, backend, x, w, b)
    assert_close(out, ref_conv(p, x, w, b), torch.float32)
    if layout != "strided":
        assert_layout(out, x, backend)


@pytest.mark.parametrize("dtype", LOW + [torch.float64], ids=str)
@pytest.mark.parametrize("p", CONV[1:3] + CONV[9:11] + CONV[17:23], ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_conv2d_forward_dtypes(backend, p, dtype):
    x, w, b = conv_tensors(p, dtype, "channels_last" if dtype == torch.float16 else "contiguous")
    out = call(run_conv, p, backend, x, w, b)
    assert_close(out, ref_conv(p, x, w, b), dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("p", CONVT, ids=str)
@pytest.mark.parametrize("backend", ALL)
def test_conv_transpose2d_forward(backend, p, layout):
    x, w, b = convt_tensors(p, torch.float32, layout)
    out = call(run_convt, p, backend, x, w, b)
    assert_close(out, ref_convt(p, x, w, b), torch.float32)


@pytest.mark.parametrize("dtype", LOW + [torch.float64], ids=str)
@pytest.mark.parametrize("p", CONVT[:3] + CONVT[6:7], ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_conv_transpose2d_forward_dtypes(backend, p, dtype):
    x, w, b = convt_tensors(p, dtype, "contiguous")
    out = call(run_convt, p, backend, x, w, b)
    assert_close(out, ref_convt(p, x, w, b), dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("p", SEP, ids=str)
@pytest.mark.parametrize("backend", ALL)
def test_separable_forward(backend, p, layout):
    ts = sep_tensors(p, torch.float32, layout)
    out = call(run_sep, p, backend, *ts)
    assert_close(out, ref_sep(p, *ts), torch.float32)


@pytest.mark.parametrize("dtype", LOW + [torch.float64], ids=str)
@pytest.mark.parametrize("p", SEP[:3], ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_separable_forward_dtypes(backend, p, dtype):
    ts = sep_tensors(p, dtype, "channels_last")
    out = call(run_sep, p, backend, *ts)
    assert_close(out, ref_sep(p, *ts), dtype)


# ------------------------------------------------------------------------------------------------
# backward: fp32 gradients against float64 autograd of the reference, and float64 gradcheck


def _grads_vs_reference(run, ref, tensors, dtype):
    leaves = [t.detach().requires_grad_(True) if t is not None else None for t in tensors]
    out = call(run, *leaves)
    g = torch.randn(out.shape, dtype=torch.float64)
    out.backward(g.to(dtype))
    rleaves = [t.detach().double().requires_grad_(True) if t is not None else None for t in tensors]
    rout = ref(*rleaves)
    rout.backward(g)
    for i, (a, r) in enumerate(zip(leaves, rleaves)):
        if a is not None:
            assert a.grad is not None, f"no gradient for argument {i}"
            assert_close(a.grad, r.grad, dtype, what=f"grad of argument {i}")


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("p", CONV, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_conv2d_backward(backend, p, layout):
    _grads_vs_reference(lambda x, w, b: run_conv(p, backend, x, w, b),
                        lambda x, w, b: ref_conv(p, x, w, b), conv_tensors(p, torch.float32, layout),
                        torch.float32)


@pytest.mark.parametrize("p", CONVT, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_conv_transpose2d_backward(backend, p):
    _grads_vs_reference(lambda x, w, b: run_convt(p, backend, x, w, b),
                        lambda x, w, b: ref_convt(p, x, w, b),
                        convt_tensors(p, torch.float32, "channels_last"), torch.float32)


@pytest.mark.parametrize("p", SEP, ids=str)
@pytest.mark.parametrize("backend", ALL)  # auto: fused or as its two convs, by the policy
def test_separable_backward(backend, p):
    _grads_vs_reference(lambda *t: run_sep(p, backend, *t), lambda *t: ref_sep(p, *t),
                        sep_tensors(p, torch.float32, "contiguous"), torch.float32)


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_low_precision_backward(backend, dtype):
    p = CONV[1]
    _grads_vs_reference(lambda x, w, b: run_conv(p, backend, x, w, b),
                        lambda x, w, b: ref_conv(p, x, w, b), conv_tensors(p, dtype, "channels_last"),
                        dtype)


def _gradcheck(fn, tensors):
    leaves = tuple(t.detach().requires_grad_(True) for t in tensors if t is not None)
    mask = [t is not None for t in tensors]

    def f(*ls):
        it = iter(ls)
        return fn(*[next(it) if m else None for m in mask])

    try:
        assert torch.autograd.gradcheck(f, leaves, fast_mode=True)
        assert torch.autograd.gradgradcheck(f, leaves, fast_mode=True)
    except NotImplementedError as e:
        if str(e).startswith("dilconv backend"):
            pytest.skip(str(e))
        raise


GRADCHECK_CONV = [CONV[i] for i in (1, 4, 7, 11, 14, 17, 20, 21, 23)]


@pytest.mark.parametrize("p", GRADCHECK_CONV, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_conv2d_gradcheck(backend, p):
    _gradcheck(lambda x, w, b: run_conv(p, backend, x, w, b), conv_tensors(p, torch.float64, "channels_last"))


@pytest.mark.parametrize("p", CONVT[:2] + CONVT[4:7] + CONVT[-1:], ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_conv_transpose2d_gradcheck(backend, p):
    _gradcheck(lambda x, w, b: run_convt(p, backend, x, w, b), convt_tensors(p, torch.float64, "contiguous"))


@pytest.mark.parametrize("p", SEP[:4], ids=str)
@pytest.mark.parametrize("backend", ALL)
def test_separable_gradcheck(backend, p):
    # gradgradcheck: the separable backward op has no autograd of its own (first order only)
    ts = sep_tensors(p, torch.float64, "contiguous")
    leaves = tuple(t.detach().requires_grad_(True) for t in ts if t is not None)
    mask = [t is not None for t in ts]

    def f(*ls):
        it = iter(ls)
        return run_sep(p, backend, *[next(it) if m else None for m in mask])

    try:
        assert torch.autograd.gradcheck(f, leaves, fast_mode=True)
    except NotImplementedError as e:
        if str(e).startswith("dilconv backend"):
            pytest.skip(str(e))
        raise


def _channel_slice(t, channels_last):
    """t's values in a channel slice of a wider tensor: unit channel stride but not
    channels-last contiguous (channels_last), or NCHW with gaps between images (not). The
    gradient a torch.cat or a chunk hands back is such a slice."""
    n, c, h, w = t.shape
    big = torch.randn(n, c + 5, h, w, dtype=t.dtype)
    if channels_last:
        big = big.contiguous(memory_format=torch.channels_last)
    view = big[:, 2:2 + c]
    view.copy_(t)
    return view


# (op, C, K, groups, kernel, stride, dilation): the depthwise cases take the fused backward
SLICED = [("conv2d", 24, 24, 24, 3, 1, 2), ("conv2d", 16, 32, 16, 3, 1, 1),
          ("conv2d", 24, 24, 24, 3, 2, 1), ("conv2d", 32, 32, 32, 5, 1, 1),
          ("conv2d", 16, 16, 4, 3, 1, 1), ("conv2d", 16, 24, 1, 1, 1, 1),
          ("conv2d", 16, 20, 1, 3, 1, 2), ("separable", 16, 24, 16, 3, 1, 2),
          ("transposed", 16, 12, 1, 3, 2, 1)]


@pytest.mark.parametrize("case", SLICED, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("backend", ALL)
def test_gradients_of_channel_slices(backend, case):
    # input and output gradient as channel slices (either layout): the channels-last depthwise
    # backward had written an NCHW input gradient as if channels-last when the output gradient
    # was a channels-last slice (NaN / wrong values, not an error)
    op, c, k, g, ks, st, dl = case
    pad = dl * (ks - 1) // 2
    x0 = torch.randn(2, c, 7, 9, dtype=torch.float64)
    if op == "conv2d":
        w0 = torch.randn(k, c // g, ks, ks, dtype=torch.float64)
        params = [w0, torch.randn(k, dtype=torch.float64)]
        ref_f = lambda x, w, b: F.conv2d(x, w, b, st, pad, dl, g)  # noqa: E731
        f = lambda x, w, b: DF.conv2d(x, w, b, st, pad, dl, g, backend=backend)  # noqa: E731
    elif op == "separable":
        params = [torch.randn(c, 1, ks, ks, dtype=torch.float64),
                  torch.randn(k, c, 1, 1, dtype=torch.float64)]
        ref_f = lambda x, dw, pw: F.conv2d(F.conv2d(x, dw, None, st, pad, dl, c), pw)  # noqa: E731
        f = lambda x, dw, pw: DF.depthwise_separable_conv2d(  # noqa: E731
            x, dw, pw, stride=st, padding=pad, dilation=dl, backend=backend)
    else:
        params = [torch.randn(c, k, ks, ks, dtype=torch.float64), torch.randn(k, dtype=torch.float64)]
        ref_f = lambda x, w, b: F.conv_transpose2d(x, w, b, st, 1, 1)  # noqa: E731
        f = lambda x, w, b: DF.conv_transpose2d(x, w, b, st, 1, 1, backend=backend)  # noqa: E731
    leaves = [x0.clone().requires_grad_(), *(t.clone().requires_grad_() for t in params)]
    y_ref = ref_f(*leaves)
    gy0 = torch.randn_like(y_ref)
    refs = torch.autograd.grad(y_ref, leaves, gy0)
    for x_cl, gy_cl in [(True, True), (False, True), (True, False), (False, False)]:
        ins = [_channel_slice(x0.float(), x_cl).requires_grad_(),
               *(t.float().requires_grad_() for t in params)]
        y = call(f, *ins)
        grads = torch.autograd.grad(y, ins, _channel_slice(gy0.float(), gy_cl))
        assert_close(y, y_ref, torch.float32)
        for i, (got, ref) in enumerate(zip(grads, refs)):
            assert_close(got, ref, torch.float32, f"gradient {i} (x {x_cl}, gy {gy_cl})")


# ------------------------------------------------------------------------------------------------
# conv2d_clamp: conv2d then clamp (the activations after a folded BatchNorm)

CLAMP_CONV = [CONV[i] for i in (1, 7, 12, 20, 23, 25, 26)]
CLAMPS = [(0.0, float("inf")), (0.0, 6.0), (-0.3, 0.4)]


@pytest.mark.parametrize("bounds", CLAMPS[:2], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("p", CLAMP_CONV, ids=str)
@pytest.mark.parametrize("backend", ALL)
def test_conv2d_clamp(backend, p, layout, bounds):
    x, w, b = conv_tensors(p, torch.float32, layout)
    x.requires_grad_(), w.requires_grad_()
    if b is not None:
        b.requires_grad_()
    x = x * 8  # outputs on both sides of both bounds (x: the scaled tensor, gradients w.r.t. it)
    out = call(lambda: DF.conv2d_clamp(x, w, b, p.stride, p.padding, p.dilation, p.groups,
                                       *bounds, backend=backend))
    xr = x.detach().double().requires_grad_()
    ref_in = [xr, w.detach().double().requires_grad_(),
              None if b is None else b.detach().double().requires_grad_()]
    conv = F.conv2d(*ref_in, p.stride, p.padding, p.dilation, p.groups)
    ref = conv.clamp(*bounds)
    # the clamp is 1-Lipschitz: the conv's rounding (relative to the conv's own scale) carries
    # over to the values between the bounds
    assert out.shape == ref.shape and out.dtype == torch.float32
    if out.numel():
        err = (out.double() - ref).abs().max().item()
        assert err <= TOL[torch.float32] * conv.abs().max().item(), err
    assert_layout(out, x, backend)
    if out.numel():
        assert (out == bounds[0]).any()  # the clamp did happen
    gy = torch.randn_like(ref)
    leaves = [t for t in (x, w, b) if t is not None]
    got = torch.autograd.grad(out, leaves, gy.float(), allow_unused=True)
    want = torch.autograd.grad(ref, [xr] + [t for t in ref_in[1:] if t is not None], gy)
    for name, g, r in zip(("input", "weight", "bias"), got, want):
        assert_close(g, r, torch.float32, f"grad {name}")


def test_conv2d_clamp_bad_bounds():
    x, w = torch.randn(1, 4, 5, 5), torch.randn(4, 4, 3, 3)
    with pytest.raises(RuntimeError, match="min <= max"):
        DF.conv2d_clamp(x, w, None, 1, 1, 1, 1, 6.0, 0.0, backend="torch")
    if "cpu" in dilconv.backends():
        for lo, hi in ((6.0, 0.0), (float("nan"), 1.0)):
            with pytest.raises(RuntimeError, match="min <= max"):
                torch.ops.dilconv.conv2d_clamp(x, w, None, [1, 1], [1, 1], [1, 1], 1, lo, hi)


# the backends with their own conv2d_clamp op (the others run conv2d, gradchecked above, and
# torch's clamp_)
@pytest.mark.parametrize("bounds", CLAMPS[1:], ids=str)
@pytest.mark.parametrize("backend", [b for b in BACKENDS if b in ("torch", "cpu", "cuda")])
def test_conv2d_clamp_gradcheck(backend, bounds):
    p = CONV[9]
    x, w, b = conv_tensors(p, torch.float64, "contiguous")
    fn = lambda x, w, b: DF.conv2d_clamp(x * 3, w, b, p.stride, p.padding, p.dilation,  # noqa
                                         p.groups, *bounds, backend=backend)
    call(fn, x, w, b)
    assert torch.autograd.gradcheck(fn, (x.requires_grad_(), w.requires_grad_(),
                                         b.requires_grad_()), eps=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# opcheck: schema, autograd registration, fake kernels, AOT dispatch — for every op of every
# backend that is made of dilconv ops


def _op_backends():
    out = []
    for name in BACKENDS:
        b = registry.get_backend(name)
        if isinstance(b, registry.OpsBackend) or hasattr(b, "suffix"):
            out.append(name)
    return out


def _opcheck_cases(backend):
    """(op name, args) for problems the backend handles."""
    b = registry.get_backend(backend)
    cases = []
    for p in (CONV[1], CONV[8], CONV[17], CONV[21]):
        for layout in ("contiguous", "channels_last"):
            x, w, bias = conv_tensors(p, torch.float32, layout)
            pad = list(DF._pair("padding", p.padding))
            conf = [list(DF._pair("s", p.stride)), pad, list(DF._pair("d", p.dilation)), p.groups]
            with torch.no_grad():
                out = ref_conv(p, x, w, bias).float().contiguous(memory_format=_ops.output_memory_format(x))
            cases.append(("conv2d", p, (x.requires_grad_(), w.requires_grad_(), bias, *conf)))
            cases.append(("conv2d_input_grad", p, (out, w, list(x.shape), *conf)))
            cases.append(("conv2d_weight_grad", p, (out, x.detach(), list(w.shape), *conf)))
            if b.suffix == "":  # the whole backward in one call, conv2d_clamp: plain names only
                cases.append(("conv2d_backward", p, (out, x.detach(), w.detach(), *conf, [True, True, True])))
                cases.append(("conv2d_clamp", p, (x, w, bias, *conf, 0.0, 6.0)))
    for p in (CONVT[0], CONVT[4], CONVT[6]):
        x, w, bias = convt_tensors(p, torch.float32, "channels_last")
        cases.append(("conv_transpose2d", p, (x.requires_grad_(), w.requires_grad_(), bias,
                                              *[list(DF._pair("s", v)) for v in (p.stride, p.padding, p.output_padding)],
                                              p.groups, list(DF._pair("d", p.dilation)))))
    for p in (SEP[1], SEP[2]):
        x, dw, db, pw, pb = sep_tensors(p, torch.float32, "contiguous")
        conf = [list(DF._pair("s", v)) for v in (p.stride, p.padding, p.dilation)] + [p.mid_relu, p.out_relu]
        cases.append(("separable_conv2d", p, (x.requires_grad_(), dw.requires_grad_(), db, pw, pb, *conf)))
        with torch.no_grad():
            g = ref_sep(p, x, dw, db, pw, pb).float()
        cases.append(("separable_conv2d_backward", p, (g, x.detach(), dw.detach(), db, pw, pb, *conf)))
    return b, cases


@pytest.mark.parametrize("backend", _op_backends())
def test_opcheck(backend):
    b, cases = _opcheck_cases(backend)
    ran = 0
    for name, p, args in cases:
        # only the problems this backend handles (the same decision resolve() makes)
        try:
            if isinstance(p, Conv):
                run_conv(p, backend, *conv_tensors(p, torch.float32, "contiguous"))
            elif isinstance(p, ConvT):
                run_convt(p, backend, *convt_tensors(p, torch.float32, "contiguous"))
            else:
                run_sep(p, backend, *sep_tensors(p, torch.float32, "contiguous"))
        except NotImplementedError as e:
            if str(e).startswith("dilconv backend"):
                continue
            raise
        op = getattr(torch.ops.dilconv, name + ("" if name == "conv2d_clamp" else b.suffix)).default
        torch.library.opcheck(op, args)
        ran += 1
    if ran == 0:
        pytest.skip(f"backend {backend!r} handles none of the opcheck problems")


# ------------------------------------------------------------------------------------------------
# torch.compile: a model of dilconv modules compiles with no graph break, same results


def _small_model(backend):
    return torch.nn.Sequential(
        dilconv.AtrousConv2d(4, 8, 3, padding=2, dilation=2, backend=backend),
        torch.nn.ReLU(),
        dilconv.DepthwiseConv2d(8, 8, 3, padding="same", dilation=3, backend=backend),
        dilconv.DepthwiseSeparableConv2d(8, 8, 3, padding=1, mid_relu=True, backend=backend),
        dilconv.GroupedConv2d(8, 8, 3, padding=1, groups=4, backend=backend),
        dilconv.ConvTranspose2d(8, 4, 4, stride=2, padding=1, backend=backend),
    )


def _model_supported(backend, model, x):
    try:
        model(x)
        return True
    except NotImplementedError as e:
        if str(e).startswith("dilconv backend"):
            return False
        raise


@pytest.mark.parametrize("backend", ALL)
def test_torch_compile_fullgraph(backend):
    model = _small_model(backend)
    x = torch.randn(2, 4, 10, 11)
    if not _model_supported(backend, model, x):
        pytest.skip(f"backend {backend!r} does not handle every layer of the model")
    _compiled_matches_eager(model, x)


def _compiled_matches_eager(model, x):
    """torch.compile(fullgraph) of model: same outputs and input gradients as eager."""
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    ye, yc = model(xe), compiled(xc)
    torch.testing.assert_close(yc, ye, rtol=1e-5, atol=1e-5)
    ye.square().sum().backward()
    yc.square().sum().backward()
    torch.testing.assert_close(xc.grad, xe.grad, rtol=1e-5, atol=1e-5)
    return compiled


@pytest.mark.parametrize("backend", [b for b in ALL if b in ("torch", "cpu", "auto")])
def test_torch_compile_fullgraph_folded_inference(backend):
    """A conv -> BatchNorm -> ReLU6 block in eval mode (folded, conv2d_clamp) compiles without a
    graph break and agrees with eager, with and without gradients."""
    torch.manual_seed(3)
    bn = torch.nn.BatchNorm2d(8)
    bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
    model = dilconv.ConvNormActSequential(
        dilconv.AtrousConv2d(4, 8, 3, padding=2, dilation=2, bias=False, backend=backend),
        bn, torch.nn.ReLU6()).eval()
    x = torch.randn(2, 4, 10, 11) * 4
    compiled = _compiled_matches_eager(model, x)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


def test_torch_compile_inductor():
    """The default compiler (inductor) too, on the best CPU backend."""
    backend = "cpu" if "cpu" in BACKENDS else "torch"
    model = _small_model(backend)
    x = torch.randn(1, 4, 9, 9)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# bad input: the exception type torch raises, for every backend; never a crash


def _bad_conv_cases():
    x = torch.randn(2, 4, 8, 8)
    w = torch.randn(6, 4, 3, 3)
    return {
        "rank5_input": (torch.randn(1, 2, 4, 8, 8), w, None, 1, 0, 1, 1),
        "rank2_input": (torch.randn(4, 8), w, None, 1, 0, 1, 1),
        "dtype_mismatch": (x.double(), w, None, 1, 0, 1, 1),
        "bias_dtype_mismatch": (x, w, torch.randn(6, dtype=torch.float64), 1, 0, 1, 1),
        "channels_vs_groups": (torch.randn(2, 5, 8, 8), torch.randn(6, 2, 3, 3), None, 1, 0, 1, 2),
        "weight_channels": (x, torch.randn(6, 3, 3, 3), None, 1, 0, 1, 1),
        "out_not_divisible": (x, torch.randn(5, 2, 3, 3), None, 1, 0, 1, 2),
        "bias_shape": (x, w, torch.randn(5), 1, 0, 1, 1),
        "negative_padding": (x, w, None, 1, -1, 1, 1),
        "zero_stride": (x, w, None, 0, 0, 1, 1),
        "negative_stride": (x, w, None, -2, 0, 1, 1),
        "zero_dilation": (x, w, None, 1, 0, 0, 1),
        "kernel_too_large": (torch.randn(2, 4, 4, 4), torch.randn(6, 4, 5, 5), None, 1, 0, 1, 1),
        "dilated_kernel_too_large": (x, w, None, 1, 1, 5, 1),
        "same_with_stride": (x, w, None, 2, "same", 1, 1),
        "bad_padding_string": (x, w, None, 1, "full", 1, 1),
        "stride_of_3": (x, w, None, (1, 1, 1), 0, 1, 1),
        "zero_groups": (x, w, None, 1, 0, 1, 0),
        "zero_output_channels": (x, torch.randn(0, 4, 3, 3), None, 1, 0, 1, 1),
    }


BAD = _bad_conv_cases()


@pytest.mark.parametrize("case", sorted(BAD))
@pytest.mark.parametrize("backend", ALL)
def test_conv2d_bad_input_raises_like_torch(backend, case):
    args = BAD[case]
    with pytest.raises(Exception) as torch_exc:
        F.conv2d(*args)
    with pytest.raises(torch_exc.type):
        DF.conv2d(*args, backend=backend)


@pytest.mark.parametrize("backend", ALL)
def test_integer_input_like_torch_or_clear_refusal(backend):
    x, w = torch.randint(-5, 5, (1, 2, 6, 6)), torch.randint(-5, 5, (3, 2, 3, 3))
    if backend in ("torch", "auto"):  # torch computes integer convs on the CPU; so do these
        assert torch.equal(DF.conv2d(x, w, backend=backend), F.conv2d(x, w))
    else:
        with pytest.raises(NotImplementedError, match="torch.int64"):
            DF.conv2d(x, w, backend=backend)


BAD_T = {
    "output_padding_too_big": ((2, 4, 5, 5), (4, 3, 3, 3), dict(stride=2, output_padding=2)),
    "weight_in_channels": ((2, 4, 5, 5), (3, 3, 3, 3), {}),
    "negative_padding": ((2, 4, 5, 5), (4, 3, 3, 3), dict(padding=-1)),
    "zero_stride": ((2, 4, 5, 5), (4, 3, 3, 3), dict(stride=0)),
    "groups_not_dividing": ((2, 4, 5, 5), (4, 3, 3, 3), dict(groups=3)),
    "negative_output_size": ((1, 4, 1, 1), (4, 3, 3, 3), dict(padding=3)),
    "zero_input_channels": ((1, 0, 5, 5), (0, 3, 3, 3), {}),
    "empty_map": ((2, 4, 0, 5), (4, 3, 3, 3), dict(stride=2)),
    "zero_output_channels": ((2, 4, 5, 5), (4, 0, 3, 3), {}),
}


@pytest.mark.parametrize("case", sorted(BAD_T))
@pytest.mark.parametrize("backend", ALL)
def test_conv_transpose2d_bad_input_raises_like_torch(backend, case):
    xs, ws, kw = BAD_T[case]
    x, w = torch.randn(xs), torch.randn(ws)
    with pytest.raises(Exception) as torch_exc:
        F.conv_transpose2d(x, w, **kw)
    with pytest.raises(torch_exc.type):
        DF.conv_transpose2d(x, w, **kw, backend=backend)


@pytest.mark.parametrize("unbatched", [False, True])
@pytest.mark.parametrize("backend", ALL)
def test_zero_input_channels_is_a_clear_error(backend, unbatched):
    # torch's conv2d answers [N, 0, P, Q] here (no output channels), which no backend copies
    x = torch.randn(1, 0, 8, 8)[0 if unbatched else slice(None)]
    for call in (lambda: DF.conv2d(x, torch.randn(6, 0, 3, 3), torch.randn(6), backend=backend),
                 lambda: DF.conv2d_clamp(x, torch.randn(6, 0, 3, 3), backend=backend),
                 lambda: DF.conv2d(x, torch.randn(6, 0, 1, 1), groups=3, backend=backend),
                 lambda: DF.conv_transpose2d(x, torch.randn(0, 6, 3, 3), backend=backend),
                 lambda: DF.depthwise_separable_conv2d(x, torch.randn(0, 1, 3, 3),
                                                       torch.randn(6, 0, 1, 1), backend=backend)):
        with pytest.raises(RuntimeError, match="at least one channel"):
            call()
        with pytest.raises(RuntimeError, match="at least one channel"):
            call()  # a second call of the signature too (picks are remembered)


@pytest.mark.skipif("cpu" not in dilconv.backends(), reason="dilconv's C++ extension is not built")
def test_one_geometry_bound():
    """dilconv.functional's bound is the C++ ops' (one constant): the raw ops of the cpu and
    cuda-emu backends take a stride, padding or dilation of MAX_GEOMETRY and refuse one more."""
    bound = DF.MAX_GEOMETRY
    assert torch.ops.dilconv.max_geometry() == bound
    x, w = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)
    ops = [torch.ops.dilconv.conv2d] + (
        [torch.ops.dilconv.conv2d_emu] if "cuda-emu" in dilconv.backends() else [])
    for op in ops:
        # one output pixel a row and column: the centre tap on x[2, 2] (zeros elsewhere)
        y = op(x, w, None, [bound, bound], [1, 1], [1, 1], 1)
        assert_close(y, F.conv2d(x.double(), w.double(), None, bound, 1), torch.float32)
        for args in (([bound + 1, 1], [1, 1], [1, 1]), ([1, 1], [bound + 1, 0], [1, 1]),
                     ([1, 1], [1, 1], [1, bound + 1])):
            with pytest.raises(RuntimeError, match=str(bound)):
                op(x, w, None, *args, 1)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "torch"])
def test_huge_strides_paddings_dilations(backend):
    # sizes computed from 2^61-2^63 had wrapped in int64 past the checks (out-of-bounds reads,
    # a segfault, hangs); beyond 2^24 every dilconv backend refuses them
    x, w = torch.randn(2, 4, 6, 6), torch.randn(4, 1, 3, 3)
    calls = [lambda: DF.conv2d(x, torch.randn(5, 4, 3, 3), stride=2**62, padding=1, backend=backend),
             lambda: DF.conv2d(x, w, stride=2**62, padding=2**61, groups=4, backend=backend),
             lambda: DF.conv2d(x, w, padding=2**62, dilation=2**62, groups=4, backend=backend),
             lambda: DF.conv_transpose2d(x, torch.randn(4, 3, 3, 3), stride=2**62, padding=2**61,
                                         backend=backend),
             lambda: DF.conv_transpose2d(x, torch.randn(4, 3, 3, 3), padding=2**62,
                                         dilation=2**62, backend=backend),
             lambda: DF.depthwise_separable_conv2d(x, w, torch.randn(5, 4, 1, 1), stride=2**62,
                                                   backend=backend)]
    for f in calls:
        with pytest.raises((RuntimeError, NotImplementedError)):
            f()
    # a stride far beyond the map (one output pixel a row and column) is exact and cheap
    x = torch.randn(2, 3, 6, 6)
    wd = torch.randn(4, 3, 3, 3)
    out = call(lambda: DF.conv2d(x, wd, None, 10**6, 1, backend=backend))
    assert_close(out, F.conv2d(x.double(), wd.double(), None, 10**6, 1), torch.float32)
    # padding and dilation 2^20 (a 3x3 kernel spanning 2^21 columns over a 6x7 map, only its
    # centre tap reading the map): exact, with the input gradient, in bounded memory (the CPU
    # kernels had packed the padded window: terabytes)
    x = torch.randn(2, 8, 6, 7)
    big = 2**20
    for conv, ref in [
            (lambda x: DF.conv2d(x, wd.repeat(2, 1, 1, 1)[:, :2], None, 1, big, big, 4, backend=backend),
             lambda x: F.conv2d(x, wd.repeat(2, 1, 1, 1)[:, :2].double(), None, 1, big, big, 4)),
            (lambda x: DF.conv2d(x.contiguous(memory_format=torch.channels_last), wd[:, :1].repeat(2, 1, 1, 1),
                                 None, 1, big, big, 8, backend=backend),
             lambda x: F.conv2d(x, wd[:, :1].repeat(2, 1, 1, 1).double(), None, 1, big, big, 8)),
            (lambda x: DF.depthwise_separable_conv2d(x, wd[:, :1].repeat(2, 1, 1, 1), wd[:, :2, :1, :1].repeat(1, 4, 1, 1),
                                                     padding=big, dilation=big, backend=backend),
             lambda x: F.conv2d(F.conv2d(x, wd[:, :1].repeat(2, 1, 1, 1).double(), None, 1, big, big, 8),
                                wd[:, :2, :1, :1].repeat(1, 4, 1, 1).double())),
            (lambda x: DF.conv_transpose2d(x, wd.repeat(2, 1, 1, 1)[:8], None, 1, big, 0, 1, big, backend=backend),
             lambda x: F.conv_transpose2d(x, wd.repeat(2, 1, 1, 1)[:8].double(), None, 1, big, 0, 1, big))]:
        xr = x.double().requires_grad_()
        yr = ref(xr)
        gy = torch.randn_like(yr)
        yr.backward(gy)
        xx = x.clone().requires_grad_()
        y = call(conv, xx)
        y.backward(gy.float())
        assert_close(y, yr, torch.float32)
        assert_close(xx.grad, xr.grad, torch.float32, "input gradient")


@pytest.mark.parametrize("backend", ALL)
def test_separable_bad_input(backend):
    x = torch.randn(1, 4, 8, 8)
    dw, pw = torch.randn(4, 1, 3, 3), torch.randn(6, 4, 1, 1)
    with pytest.raises(RuntimeError, match="dw_weight"):
        DF.depthwise_separable_conv2d(x, torch.randn(6, 1, 3, 3), pw, backend=backend)
    with pytest.raises(RuntimeError, match="pw_weight"):
        DF.depthwise_separable_conv2d(x, dw, torch.randn(6, 5, 1, 1), backend=backend)
    with pytest.raises(RuntimeError, match="pw_weight"):
        DF.depthwise_separable_conv2d(x, dw, torch.randn(6, 4, 3, 3), backend=backend)
    with pytest.raises(RuntimeError, match="Kernel size can't be greater"):
        DF.depthwise_separable_conv2d(x, dw, pw, dilation=5, backend=backend)
    with pytest.raises(RuntimeError, match="at least one output channel"):
        DF.depthwise_separable_conv2d(x, dw, torch.randn(0, 4, 1, 1), backend=backend)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "torch"])
def test_32bit_indexing_limit_is_a_clear_error(backend):
    # an expanded (stride-0) view: > 2**31 elements without allocating them
    x = torch.randn(1, 1, 1, 1).expand(1, 2**16, 2**8, 2**8)
    w = torch.randn(2**16, 1, 1, 1)
    with pytest.raises(NotImplementedError, match="32-bit indexing"):
        DF.conv2d(x, w, groups=2**16, backend=backend)


@pytest.mark.parametrize("backend", [b for b in _op_backends()])
def test_direct_op_call_with_bad_shapes_raises(backend):
    """Ops can be called directly, bypassing functional's checks: the kernels' own checks must
    refuse what would read or write out of bounds."""
    suffix = registry.get_backend(backend).suffix
    conv = getattr(torch.ops.dilconv, "conv2d" + suffix)
    dev = "cuda" if backend == "cuda" else "cpu"
    x = torch.randn(1, 4, 8, 8, device=dev)
    with pytest.raises(RuntimeError):
        conv(x, torch.randn(6, 3, 3, 3, device=dev), None, [1, 1], [0, 0], [1, 1], 1)  # channels
    with pytest.raises(RuntimeError):
        conv(x, torch.randn(4, 1, 3, 3, device=dev), torch.randn(7, device=dev), [1, 1], [0, 0], [1, 1], 4)
    with pytest.raises(RuntimeError):
        conv(x, torch.randn(4, 4, 3, 3, device=dev), None, [0, 1], [0, 0], [1, 1], 1)  # stride 0
    with pytest.raises(RuntimeError):
        conv(x, torch.randn(4, 4, 3, 3, device=dev), None, [1, 1], [-1, 0], [1, 1], 1)
    with pytest.raises(RuntimeError):
        conv(x, torch.randn(4, 4, 9, 9, device=dev), None, [1, 1], [0, 0], [1, 1], 1)  # too big
    convt = getattr(torch.ops.dilconv, "conv_transpose2d" + suffix)
    # no input channels (the GEMM planner had divided by 0): refused, or the bias's broadcast
    try:
        out = convt(torch.randn(1, 0, 8, 8, device=dev), torch.randn(0, 4, 3, 3, device=dev),
                    torch.ones(4, device=dev), [1, 1], [0, 0], [0, 0], 1, [1, 1])
    except RuntimeError as e:
        assert "channels" in str(e)
    else:
        assert torch.equal(out, torch.ones(1, 4, 10, 10, device=dev))
    dgrad = getattr(torch.ops.dilconv, "conv2d_input_grad" + suffix)
    with pytest.raises(RuntimeError):  # input_size inconsistent with grad_output
        dgrad(torch.randn(1, 4, 6, 6, device=dev), torch.randn(4, 4, 3, 3, device=dev), [1, 4, 20, 20],
              [1, 1], [0, 0], [1, 1], 1)


# ------------------------------------------------------------------------------------------------
# unbatched (3-D) input, as torch accepts


@pytest.mark.parametrize("backend", ALL)
def test_unbatched_input(backend):
    x, w = torch.randn(4, 9, 9), torch.randn(6, 4, 3, 3)
    out = call(lambda: DF.conv2d(x, w, None, 1, 2, 2, backend=backend))
    assert_close(out, F.conv2d(x.double(), w.double(), None, 1, 2, 2), torch.float32)
