"""One op case: its tensors, float64 reference, per-backend callables, FLOPs and minimal bytes."""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

from dilconv import functional as DF
from dilconv import registry
from dilconv.bench.suite import DTYPES, OpCase

# Relative tolerance (max |err| / max |ref|): the output rounding of the dtype, plus the expected
# rounding of a length-n fp32 accumulation (4 eps32 sqrt(n)). fp32 on a GPU: torch lets cuDNN use
# TF32 by default (torch.backends.cudnn.allow_tf32), whose inputs carry 10 mantissa bits.
BASE_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float64: 1e-12}
TF32_TOL = 2e-3
EPS32 = 2.0**-24


def tolerance(dtype, reduction: int, device: str) -> float:
    base = BASE_TOL[dtype]
    if dtype == torch.float32 and device == "cuda":
        base = TF32_TOL
    return base + 4 * EPS32 * math.sqrt(reduction)


def out_hw(c: OpCase):
    s = c.spec
    if s.op == "conv_transpose2d":
        f = lambda i, k, p: (i - 1) * s.stride - 2 * p + (k - 1) + s.output_padding + 1  # noqa: E731
        return f(s.h, s.r, s.padding[0]), f(s.w, s.s, s.padding[1])
    f = lambda i, k, p: (i + 2 * p - s.dilation * (k - 1) - 1) // s.stride + 1  # noqa: E731
    return f(s.h, s.r, s.padding[0]), f(s.w, s.s, s.padding[1])


def work(c: OpCase) -> dict:
    """FLOPs (2 per multiply-add) and minimal bytes (every operand read or written once)."""
    s, n = c.spec, c.n
    esz = torch.empty((), dtype=DTYPES[c.dtype]).element_size()
    ho, wo = out_hw(c)
    x, y = n * s.c * s.h * s.w, n * s.k * ho * wo
    if s.op == "separable_conv2d":
        mid = s.mid or s.c
        wts = mid * s.r * s.s + s.k * mid
        flops = 2 * n * ho * wo * (mid * s.r * s.s + s.k * mid)
        red = max(s.r * s.s, mid, n * ho * wo)
    elif s.op == "conv_transpose2d":
        wts = s.c * (s.k // s.groups) * s.r * s.s
        flops = 2 * x * (s.k // s.groups) * s.r * s.s
        red = max(s.c // s.groups * s.r * s.s, n * s.h * s.w)
    else:
        wts = s.k * (s.c // s.groups) * s.r * s.s
        flops = 2 * y * (s.c // s.groups) * s.r * s.s
        red = max(s.c // s.groups * s.r * s.s, n * ho * wo)
    fwd_bytes = (x + wts + y) * esz
    if c.pass_ == "fwd":
        return {"flops": flops, "bytes": fwd_bytes, "reduction": red}
    # backward reads dy, x, w and writes dx, dw (plus the forward)
    return {"flops": 3 * flops, "bytes": fwd_bytes + (y + 2 * x + 2 * wts) * esz, "reduction": red}


@contextlib.contextmanager
def fast_float64_torch():
    """Backend "torch" computes float64 grouped/depthwise convs with ref_conv2d for the block
    (for float64 references of whole networks)."""
    tb = registry.get_backend("torch")
    conv, sep = type(tb).conv2d, type(tb).separable_conv2d

    def conv2d(input, weight, bias, stride, padding, dilation, groups):
        if input.dtype == torch.float64 and groups > 1:
            return ref_conv2d(input, weight, bias, stride, padding, dilation, groups)
        return conv(tb, input, weight, bias, stride, padding, dilation, groups)

    def separable_conv2d(input, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, dilation,
                         mid_relu, out_relu):
        if input.dtype != torch.float64:
            return sep(tb, input, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, dilation,
                       mid_relu, out_relu)
        mid = ref_conv2d(input, dw_weight, dw_bias, stride, padding, dilation, input.shape[1])
        out = F.conv2d(torch.relu(mid) if mid_relu else mid, pw_weight, pw_bias)
        return torch.relu(out) if out_relu else out

    tb.conv2d, tb.separable_conv2d = conv2d, separable_conv2d
    try:
        yield
    finally:
        del tb.conv2d, tb.separable_conv2d


_REF_CACHE: dict = {}


def ref_conv2d(x, w, b, stride, padding, dilation, groups):
    """float64 grouped/depthwise conv2d as a sum over taps of shifted views contracted per group
    (einsum). Same result as F.conv2d up to float64 rounding, but torch's own float64 grouped and
    depthwise convs (no oneDNN for float64) take tens of seconds forward+backward on suite shapes;
    this takes milliseconds. Differentiable by autograd."""
    n, c, h, wd = x.shape
    k, cg, r, s = w.shape
    st, pd, dl = (stride, stride) if isinstance(stride, int) else stride, \
        (padding, padding) if isinstance(padding, int) else padding, \
        (dilation, dilation) if isinstance(dilation, int) else dilation
    ho = (h + 2 * pd[0] - dl[0] * (r - 1) - 1) // st[0] + 1
    wo = (wd + 2 * pd[1] - dl[1] * (s - 1) - 1) // st[1] + 1
    xp = F.pad(x, [pd[1], pd[1], pd[0], pd[0]]).view(n, groups, cg, h + 2 * pd[0], wd + 2 * pd[1])
    wg = w.view(groups, k // groups, cg, r, s)
    y = None
    for i in range(r):
        for j in range(s):
            xs = xp[..., i * dl[0]: i * dl[0] + st[0] * (ho - 1) + 1: st[0],
                    j * dl[1]: j * dl[1] + st[1] * (wo - 1) + 1: st[1]]
            t = torch.einsum("ngchw,gkc->ngkhw", xs, wg[..., i, j])
            y = t if y is None else y + t
    y = y.reshape(n, k, ho, wo)
    return y if b is None else y + b.view(1, -1, 1, 1)


class Problem:
    """Tensors of a case (seeded), its float64 reference, and callables per backend."""

    def __init__(self, case: OpCase, device: str, rotate: int = 1, seed: int = 0):
        s = case.spec
        self.case, self.device = case, device
        dtype = DTYPES[case.dtype]
        g = torch.Generator().manual_seed(seed)
        rnd = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
        ho, wo = out_hw(case)
        x = rnd(case.n, s.c, s.h, s.w)
        if s.op == "conv_transpose2d":
            ws = [rnd(s.c, s.k // s.groups, s.r, s.s) / math.sqrt(s.c // s.groups * s.r * s.s)]
        elif s.op == "separable_conv2d":
            mid = s.mid or s.c
            ws = [rnd(mid, 1, s.r, s.s) / s.r, rnd(s.k, mid, 1, 1) / math.sqrt(mid)]
        else:
            ws = [rnd(s.k, s.c // s.groups, s.r, s.s) / math.sqrt(s.c // s.groups * s.r * s.s)]
        b = rnd(s.k) if s.bias else None
        gy = rnd(case.n, s.k, ho, wo)
        # rounded to the benchmarked dtype, then float64 on the device (a GPU computes the
        # float64 reference of a big case in a fraction of the CPU's time)
        cast = lambda t: None if t is None else t.to(dtype).to(device, torch.float64)  # noqa: E731
        x, ws, b, gy = cast(x), [cast(w) for w in ws], cast(b), cast(gy)
        # the reference does not depend on the layout: both layouts of a case share it
        key = (s, case.n, case.dtype, case.pass_, seed)
        full = (s, case.n, case.dtype, "fwd+bwd", seed)
        if case.pass_ == "fwd" and full in _REF_CACHE:  # its first tensor is the forward's
            _REF_CACHE[key] = _REF_CACHE[full][:1]
        if key not in _REF_CACHE:
            if any(k[:3] != key[:3] for k in _REF_CACHE):
                _REF_CACHE.clear()
            _REF_CACHE[key] = self._reference(x, ws, b, gy)
        self.ref = _REF_CACHE[key]

        fmt = torch.channels_last if case.layout == "nhwc" else torch.contiguous_format
        dev = lambda t: None if t is None else t.to(device, dtype).contiguous(memory_format=fmt)  # noqa: E731
        self.copies = []
        for _ in range(max(1, rotate)):  # GPU: rotating copies larger than L2
            xc = dev(x)
            self.copies.append(xc if len(self.copies) == 0 else xc.clone(memory_format=fmt))
        self.ws = [dev(w) for w in ws]
        self.b = None if b is None else b.to(device, dtype)
        self.gy = dev(gy)
        self.params = [t for t in (*self.ws, self.b) if t is not None]
        if case.pass_ == "fwd+bwd":
            for t in (*self.copies, *self.params):
                t.requires_grad_(True)

    def _forward(self, x, ws, b, backend, ref=False):
        s = self.case.spec
        if ref and s.op == "conv2d" and s.groups > 1:
            return ref_conv2d(x, ws[0], b, s.stride, s.padding, s.dilation, s.groups)
        if ref and s.op == "separable_conv2d":
            mid = torch.relu(ref_conv2d(x, ws[0], None, s.stride, s.padding, s.dilation, s.groups))
            return F.conv2d(mid, ws[1], b)
        if s.op == "separable_conv2d":
            if backend is None:
                return registry.get_backend("torch").separable_conv2d(
                    x, ws[0], None, ws[1], b, s.stride, s.padding, s.dilation, True, False)
            return DF.depthwise_separable_conv2d(x, ws[0], ws[1], None, b, s.stride, s.padding,
                                                 s.dilation, mid_relu=True, backend=backend)
        if s.op == "conv_transpose2d":
            f = F.conv_transpose2d if backend is None else DF.conv_transpose2d
            kw = {} if backend is None else {"backend": backend}
            return f(x, ws[0], b, s.stride, s.padding, s.output_padding, s.groups, s.dilation, **kw)
        if backend is None:
            return F.conv2d(x, ws[0], b, s.stride, s.padding, s.dilation, s.groups)
        return DF.conv2d(x, ws[0], b, s.stride, s.padding, s.dilation, s.groups, backend=backend)

    def _reference(self, x, ws, b, gy):
        leaves = [x, *ws] + ([b] if b is not None else [])
        if self.case.pass_ == "fwd":
            with torch.no_grad():
                return [self._forward(x, ws, b, None, ref=True)]
        leaves = [t.clone().requires_grad_(True) for t in leaves]
        y = self._forward(leaves[0], leaves[1:1 + len(ws)], leaves[-1] if b is not None else None, None,
                          ref=True)
        return [y.detach(), *torch.autograd.grad(y, leaves, gy)]

    def callable(self, backend: str, cudnn: dict | None = None):
        """fn(i) running the case once on copy i; backend "torch" is torch.nn.functional itself
        (no dilconv code in the way); `cudnn`: torch.backends.cudnn.flags for that variant."""
        be = None if backend == "torch" else backend
        ctx = (lambda: torch.backends.cudnn.flags(**cudnn)) if cudnn else contextlib.nullcontext
        copies, ws, b, gy = self.copies, self.ws, self.b, self.gy
        if self.case.pass_ == "fwd":
            def fn(i):
                with ctx(), torch.no_grad():
                    return [self._forward(copies[i % len(copies)], ws, b, be)]
        else:
            def fn(i):
                x = copies[i % len(copies)]
                with ctx():
                    y = self._forward(x, ws, b, be)
                    return [y.detach(), *torch.autograd.grad(y, [x, *self.params], gy)]
        return fn

    def error(self, outs) -> float:
        """max over outputs of max|out - ref| / max|ref|."""
        err = 0.0
        for o, r in zip(outs, self.ref):
            scale = r.abs().max().item() or 1.0
            err = max(err, (o.detach().to(r.device, torch.float64) - r).abs().max().item() / scale)
        return err

    def layout_ok(self, outs) -> bool:
        """The output follows the input's memory format (dilconv's output_memory_format rule)."""
        y = outs[0]
        want_cl = self.case.layout == "nhwc" and y.shape[1] > 1 and y.shape[2] * y.shape[3] > 1
        return (not want_cl) or y.is_contiguous(memory_format=torch.channels_last)


@contextlib.contextmanager
def record_resolution():
    """Which backend "auto" (or any name) resolved to during the block."""
    seen = []
    registry.PICK_OBSERVERS.append(seen.append)
    try:
        yield seen
    finally:
        registry.PICK_OBSERVERS.remove(seen.append)
