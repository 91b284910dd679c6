"""The CUDA depthwise family on backend "cuda-emu" (the CUDA kernel sources run by the CPU
emulation), beyond the shared matrix of tests/test_ops.py: bitwise determinism of the weight
gradients, edge cases of the tiling (stride 3, padding > dilation, odd sizes, multiplier 2, 1x7,
several tiles, a window beyond shared memory, arbitrary strides), the memory-traffic targets
(modelled by the emulation's counters, not measured on a GPU), and the ops' own argument checks.

Shapes are tiny: the emulation runs one OS thread per CUDA thread.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import dilconv
from dilconv import _ext

pytestmark = pytest.mark.skipif(not _ext.has_kernel("conv2d_emu", "CPU"),
                                reason="dilconv._C built without the CUDA emulation")

OPS = torch.ops.dilconv
TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}


def rel_err(got, ref):
    return ((got.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def layout(t, name):
    if name == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if name == "strided":  # neither layout: a view with gaps
        big = torch.zeros(*t.shape[:3], 2 * t.shape[3] + 1, dtype=t.dtype)
        big[..., 1::2] = t
        return big[..., 1::2]
    return t.contiguous()


def check_depthwise(n, c, h, w, m, kernel, stride, padding, dilation, lay="contiguous",
                    dtype=torch.float32, bias=True):
    x = layout(torch.randn(n, c, h, w, dtype=dtype), lay)
    wt = torch.randn(c * m, 1, *kernel, dtype=dtype)
    b = torch.randn(c * m, dtype=dtype) if bias else None
    args = (list(stride), list(padding), list(dilation), c)
    y = OPS.conv2d_emu(x, wt, b, *args)
    xd, wd = x.double().requires_grad_(), wt.double().requires_grad_()
    ref = F.conv2d(xd, wd, None if b is None else b.double(), *args)
    tol = TOL[dtype]
    assert rel_err(y, ref) < tol
    cl = lay == "channels_last" and not x.is_contiguous()
    assert y.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
    gy = layout(torch.randn(ref.shape, dtype=dtype), lay)
    ref.backward(gy.double())
    gx = OPS.conv2d_input_grad_emu(gy, wt, list(x.shape), *args)
    gw = OPS.conv2d_weight_grad_emu(gy, x, list(wt.shape), *args)
    assert rel_err(gx, xd.grad) < tol
    assert rel_err(gw, wd.grad) < tol
    assert gw.is_contiguous()


EDGE = [  # (n, c, h, w, m, kernel, stride, padding, dilation)
    (2, 3, 11, 13, 1, (3, 3), (3, 3), (1, 1), (1, 1)),      # stride 3
    (1, 2, 10, 9, 1, (3, 3), (1, 1), (5, 4), (2, 2)),       # padding > dilation
    (1, 3, 7, 5, 2, (5, 3), (2, 1), (1, 2), (1, 2)),        # odd sizes, multiplier 2
    (2, 2, 5, 17, 1, (1, 7), (1, 1), (0, 3), (1, 1)),       # 1x7
    (1, 2, 17, 5, 2, (7, 1), (1, 2), (6, 0), (2, 1)),       # 7x1, dilated, multiplier 2
    (1, 2, 9, 9, 1, (2, 2), (2, 2), (0, 0), (3, 3)),        # even kernel, stride = dilation - 1
]


@pytest.mark.parametrize("lay", ["contiguous", "channels_last"])
@pytest.mark.parametrize("case", EDGE, ids=lambda c: f"{c[5][0]}x{c[5][1]}s{c[6][0]}p{c[7][0]}d{c[8][0]}m{c[4]}")
def test_depthwise_edge_cases(case, lay):
    check_depthwise(*case, lay=lay)


def test_depthwise_several_tiles_and_strided_input():
    # 67x70 outputs exceed one NCHW tile (4096 pixels); the channels_last tiles are smaller still
    check_depthwise(1, 2, 67, 70, 1, (3, 3), (1, 1), (1, 1), (1, 1))
    check_depthwise(1, 3, 21, 40, 1, (3, 3), (1, 1), (2, 2), (2, 2), lay="channels_last")
    check_depthwise(2, 3, 6, 7, 2, (3, 3), (1, 1), (1, 1), (1, 1), lay="strided")


def test_depthwise_window_beyond_shared_memory():
    # 3x3 at dilation 60: a 121x121 window even for one output pixel -> the direct kernels
    check_depthwise(1, 2, 6, 5, 2, (3, 3), (1, 1), (60, 60), (60, 60))
    check_depthwise(1, 2, 6, 5, 1, (3, 3), (1, 1), (60, 60), (60, 60), lay="channels_last")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_depthwise_dtypes_channels_last(dtype):
    check_depthwise(2, 16, 6, 7, 2, (3, 3), (1, 1), (2, 2), (2, 2), lay="channels_last", dtype=dtype)


def sep_reference(x, dw, db, pw, pb, stride, padding, dilation, mid_relu, out_relu):
    mid = F.conv2d(x, dw, db, stride, padding, dilation, x.shape[1])
    mid = torch.relu(mid) if mid_relu else mid
    out = F.conv2d(mid, pw, pb)
    return torch.relu(out) if out_relu else out


@pytest.mark.parametrize("lay", ["contiguous", "channels_last"])
@pytest.mark.parametrize("o", [3, 20, 70])  # each register blocking of the fused kernel
def test_separable_fused_and_backward(o, lay):
    c, m = 3, 2
    x = layout(torch.randn(2, c, 9, 8), lay)
    dw, db = torch.randn(c * m, 1, 3, 3), torch.randn(c * m)
    pw, pb = torch.randn(o, c * m, 1, 1), torch.randn(o)
    conf = ([1, 2], [2, 1], [2, 1], True, True)
    out = OPS.separable_conv2d_emu(x, dw, db, pw, pb, *conf)
    ts = [t.double().requires_grad_() for t in (x, dw, db, pw, pb)]
    ref = sep_reference(*ts, *conf)
    assert rel_err(out, ref) < 1e-5
    gy = layout(torch.randn(ref.shape), lay)
    ref.backward(gy.double())
    grads = OPS.separable_conv2d_backward_emu(gy, x, dw, db, pw, pb, *conf)
    for g, t in zip(grads, ts):
        assert rel_err(g, t.grad) < 1e-5
    cl = torch.channels_last if lay == "channels_last" else torch.contiguous_format
    assert out.is_contiguous(memory_format=cl) and grads[0].is_contiguous(memory_format=cl)


@pytest.mark.parametrize("case", [
    (4, 24, 20, (3, 2), "contiguous"),     # row lattice (step 3)
    (4, 24, 20, (3, 2), "channels_last"),  # row lattice
    (16, 16, 40, (2, 4), "channels_last"),  # column lattice (step 4), NHWC only
])
def test_separable_dilation_lattice_tiles(case):
    # stride 1 and dilation > 1 on images larger than one tile: tiles on the dilation lattice
    # (the tile plans are fixed by the shapes), with 50 outputs (the 8-channel register blocking)
    c, h, w, dil, lay = case
    o = 50
    x = layout(torch.randn(1, c, h, w), lay)
    dw, db = torch.randn(c, 1, 3, 3), torch.randn(c)
    pw, pb = torch.randn(o, c, 1, 1), torch.randn(o)
    conf = ([1, 1], list(dil), list(dil), False, True)
    out = OPS.separable_conv2d_emu(x, dw, db, pw, pb, *conf)
    ref = sep_reference(*(t.double() for t in (x, dw, db, pw, pb)), *conf)
    assert rel_err(out, ref) < 1e-5


def test_separable_unfused_fallback():
    # dilation 60: no fused tile fits shared memory -> depthwise kernel + pointwise GEMM
    x = torch.randn(1, 2, 5, 6)
    dw, pw, pb = torch.randn(2, 1, 3, 3), torch.randn(4, 2, 1, 1), torch.randn(4)
    out = OPS.separable_conv2d_emu(x, dw, None, pw, pb, [1, 1], [60, 60], [60, 60], False, True)
    ref = sep_reference(x.double(), dw.double(), None, pw.double(), pb.double(), [1, 1], [60, 60],
                        [60, 60], False, True)
    assert rel_err(out, ref) < 1e-5


# ------------------------------------------------------------------------------------------------
# determinism: no float atomics, fixed-order reductions -> bitwise identical weight gradients


def test_weight_gradients_are_bitwise_deterministic():
    for lay in ("contiguous", "channels_last"):
        # many (image, tile) items -> several workspace chunks reduced in order
        x = layout(torch.randn(6, 3, 20, 19), lay)
        gy = layout(torch.randn(6, 6, 20, 19), lay)
        runs = [OPS.conv2d_weight_grad_emu(gy, x, [6, 1, 3, 3], [1, 1], [2, 2], [2, 2], 3)
                for _ in range(2)]
        assert torch.equal(runs[0], runs[1])
        ref = torch.nn.grad.conv2d_weight(x.double(), [6, 1, 3, 3], gy.double(), 1, 2, 2, 3)
        assert rel_err(runs[0], ref) < 1e-5
    x = torch.randn(3, 4, 10, 9)
    dw, pw = torch.randn(4, 1, 3, 3), torch.randn(5, 4, 1, 1)
    gy = torch.randn(3, 5, 10, 9)
    conf = ([1, 1], [2, 2], [2, 2], True, False)
    a = OPS.separable_conv2d_backward_emu(gy, x, dw, None, pw, None, *conf)
    b = OPS.separable_conv2d_backward_emu(gy, x, dw, None, pw, None, *conf)
    for ga, gb in zip(a, b):
        assert torch.equal(ga, gb)


# ------------------------------------------------------------------------------------------------
# memory traffic (modelled by the emulation's counters)


def traffic():
    return pytest.importorskip("dilconv.emu_traffic")


@pytest.mark.parametrize("lay", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_depthwise_forward_sector_efficiency(lay, dtype):
    et = traffic()
    x = layout(torch.randn(1, 32, 32, 32, dtype=dtype), lay)
    w, b = torch.randn(32, 1, 3, 3, dtype=dtype), torch.randn(32, dtype=dtype)
    with et.counting() as t:
        y = OPS.conv2d_emu(x, w, b, [1, 1], [2, 2], [2, 2], 32)
    eff = t.efficiency()
    assert eff >= 0.9, f"sector efficiency {eff:.3f} ({lay}, {dtype})"
    # each input element is read about once (the tile covers the plane, halo clipped)
    nbytes = lambda v: v.numel() * v.element_size()  # noqa: E731
    loaded = t.totals(kind="load")["useful_bytes"]
    assert loaded <= 1.3 * (nbytes(x) + nbytes(w) + nbytes(b))
    assert rel_err(y, F.conv2d(x.double(), w.double(), b.double(), 1, 2, 2, 32)) < TOL[dtype]


@pytest.mark.parametrize("lay", ["contiguous", "channels_last"])
def test_separable_forward_total_bytes(lay):
    et = traffic()
    c, o = 32, 32
    x = layout(torch.randn(1, c, 32, 32), lay)
    dw, db = torch.randn(c, 1, 3, 3), torch.randn(c)
    pw, pb = torch.randn(o, c, 1, 1), torch.randn(o)
    with et.counting() as t:
        out = OPS.separable_conv2d_emu(x, dw, db, pw, pb, [1, 1], [2, 2], [2, 2], True, False)
    minimum = sum(v.numel() * v.element_size() for v in (x, dw, db, pw, pb, out))
    moved = t.sector_bytes()
    assert moved <= 1.3 * minimum, f"{moved} bytes moved, minimum {minimum} ({lay})"
    ref = sep_reference(x.double(), dw.double(), db.double(), pw.double(), pb.double(), [1, 1],
                        [2, 2], [2, 2], True, False)
    assert rel_err(out, ref) < 1e-5


# ------------------------------------------------------------------------------------------------
# the ops' own checks (they can be called directly, bypassing dilconv.functional)


def test_direct_calls_with_bad_arguments_raise():
    x, w = torch.randn(1, 4, 8, 8), torch.randn(4, 1, 3, 3)
    conv = OPS.conv2d_emu
    with pytest.raises(RuntimeError, match="dtype"):
        conv(x.int(), w.int(), None, [1, 1], [0, 0], [1, 1], 4)
    with pytest.raises(RuntimeError, match="weight"):
        conv(x, torch.randn(4, 2, 3, 3), None, [1, 1], [0, 0], [1, 1], 4)
    with pytest.raises(RuntimeError, match="dilation"):
        conv(x, w, None, [1, 1], [0, 0], [0, 1], 4)
    with pytest.raises(RuntimeError):  # weight channels do not match groups (dense path)
        conv(x, torch.randn(4, 3, 3, 3), None, [1, 1], [0, 0], [1, 1], 1)
    with pytest.raises(RuntimeError, match="grad_output"):
        OPS.conv2d_weight_grad_emu(torch.randn(1, 4, 5, 5), x, [4, 1, 3, 3], [1, 1], [0, 0], [1, 1], 4)
    with pytest.raises(RuntimeError, match="pw_weight"):
        OPS.separable_conv2d_emu(x, w, None, torch.randn(3, 5, 1, 1), None, [1, 1], [1, 1], [1, 1],
                                 False, False)
    with pytest.raises(RuntimeError, match="32-bit indexing"):
        big = torch.randn(1, 1, 1, 1).expand(2**16, 1, 2**8, 2**8)
        conv(big, torch.randn(1, 1, 1, 1), None, [1, 1], [0, 0], [1, 1], 1)
    with pytest.raises(RuntimeError):  # weight's input channels do not match the input
        OPS.conv_transpose2d_emu(x, torch.randn(3, 1, 3, 3), None, [1, 1], [0, 0], [0, 0], 1, [1, 1])


def test_registry_routes_depthwise_to_the_depthwise_kernels():
    from dilconv import registry

    x = torch.randn(1, 4, 6, 6)
    y = dilconv.functional.conv2d(x, torch.randn(8, 1, 3, 3), padding=1, groups=4, backend="cuda-emu")
    assert y.shape == (1, 8, 6, 6)
    p = lambda groups, k: registry.Problem(  # noqa: E731
        op="conv2d", device="cpu", dtype=torch.float32, n=1, c=4, h=6, w=6, k=k, r=3, s=3,
        stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=groups, channels_last=False,
        max_numel=144, requires_grad=False)
    assert not registry.implicit_gemm_problem(p(4, 8))  # depthwise, multiplier 2
    assert registry.implicit_gemm_problem(p(2, 4))  # grouped: implicit GEMM
    assert registry.cuda_kernels_unsupported(p(2, 4)) is None
