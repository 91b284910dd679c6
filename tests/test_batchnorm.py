"""dilconv.functional.batch_norm_act (dilconv::batch_norm_act and its backward: training-mode
BatchNorm2d then ReLU/ReLU6) against a float64 F.batch_norm reference: output, gradients and
running statistics; and the networks' conv -> BatchNorm -> act runs in training."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import dilconv
from dilconv import _ext
from dilconv import functional as DF
from dilconv.modules import ConvNormActSequential, batch_norm_act_train

pytestmark = pytest.mark.skipif(not _ext.loaded, reason="needs the compiled extension")

TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}
INF = float("inf")
BOUNDS = {"none": (-INF, INF), "relu": (0.0, INF), "relu6": (0.0, 6.0)}
# batch 1 and 3, one-pixel maps, 17 channels (a channels-last row that is not whole vectors),
# a map larger than one summation run (1024 values)
SHAPES = [(2, 5, 7, 9), (1, 17, 3, 4), (3, 6, 1, 2), (2, 3, 40, 33)]


def make_input(shape, dtype, layout):
    # mean far from zero and spread > 1: the statistics must not come from cancelling sums
    x = torch.randn(shape, dtype=torch.float64) * 3 + 5
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "noncontiguous":
        n, c, h, w = shape
        x = (torch.randn(n, c, h, 2 * w, dtype=torch.float64) * 3 + 5)[..., ::2]
    return x.to(dtype)


def rel_err(got, ref):
    return (got.double() - ref).abs().max().item() / max(ref.abs().max().item(), 1e-30)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16],
                         ids=str)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("act", list(BOUNDS))
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "noncontiguous"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("backend", ["torch", "cpu", "auto"])
def test_batch_norm_act_matches_float64(backend, shape, layout, act, affine, dtype):
    lo, hi = BOUNDS[act]
    c = shape[1]
    x = make_input(shape, dtype, layout).requires_grad_()
    w = (torch.randn(c, dtype=dtype) * 2).requires_grad_() if affine else None
    b = torch.randn(c, dtype=dtype).requires_grad_() if affine else None
    sdt = dtype  # torch wants the running statistics in the input dtype
    rm, rv = torch.randn(c, dtype=sdt), torch.rand(c, dtype=sdt) + 0.5
    rm_ref, rv_ref = rm.float(), rv.float()
    y = DF.batch_norm_act(x, rm, rv, w, b, 0.3, 1e-3, lo, hi, backend=backend)

    leaves = [t.detach().double().requires_grad_() for t in (x, w, b) if t is not None]
    xr = leaves[0]
    wr, br = (leaves[1], leaves[2]) if affine else (None, None)
    z = F.batch_norm(xr, None, None, wr, br, True, 0.3, 1e-3)
    ref = z.clamp(lo, hi)
    assert y.shape == ref.shape and y.dtype == dtype
    assert rel_err(y, ref) <= TOL[dtype]
    if act != "none":
        assert (y == lo).any()  # the clamp did happen
    if layout == "channels_last" and c > 1 and shape[2] * shape[3] > 1:
        assert y.is_contiguous(memory_format=torch.channels_last)

    F.batch_norm(x.detach().float(), rm_ref, rv_ref, None, None, True, 0.3, 1e-3)
    tol = 1e-5 if dtype in (torch.float32, torch.float64) else 1e-2
    assert rel_err(rm, rm_ref.double()) <= tol and rel_err(rv, rv_ref.double()) <= tol

    if backend == "torch" and dtype in (torch.float16, torch.bfloat16):
        return  # torch's own 16-bit CPU batch-norm backward misses 1e-2 (not fp32-accumulated)
    g = torch.randn(ref.shape, dtype=torch.float64)
    got = torch.autograd.grad(y, [t for t in (x, w, b) if t is not None], g.to(dtype))
    want = torch.autograd.grad(ref, leaves, g.to(dtype).double())
    for name, gg, r in zip(("input", "weight", "bias"), got, want):
        assert gg.shape == r.shape, name
        assert rel_err(gg, r) <= TOL[dtype], name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("bound", ["relu", "relu6_top"])
def test_batch_norm_act_backward_mask_matches_the_forward(bound, layout, dtype):
    # The backward recomputes where the clamp passed the gradient from the input. Put a third of
    # the values exactly at the mean (3.0: the others are +-d pairs in 1/64 steps, so every sum
    # is exact) with the bias at the bound: their pre-clamp value is the bound up to the rounding
    # of x * scale + shift, which either side must evaluate alike. The reference takes the mask
    # from the forward's own output.
    torch.manual_seed(0)  # some of those values then land inside the clamp, some outside
    n, c, h, w = 2, 4, 9, 10
    d = torch.randint(1, 200, (n, c, h, w // 2), dtype=torch.float64) / 64
    d = torch.cat([d, -d], dim=3)
    d[:, :, ::3] = 0
    x = (3.0 + d).to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    lo, hi = (0.0, INF) if bound == "relu" else (0.0, 6.0)
    wt = (torch.rand(c, dtype=torch.float64) + 0.5).to(dtype)
    bias = torch.full((c,), 0.0 if bound == "relu" else 6.0, dtype=dtype)
    y, mean, invstd, _ = torch.ops.dilconv.batch_norm_act(x, wt, bias, 1e-5, lo, hi)
    assert (mean == 3.0).all()
    if bound == "relu":
        at_mean = y[d == 0]
        assert (at_mean > 0).any() and (at_mean == 0).any()
    g = torch.randn(x.shape, dtype=torch.float64)
    gx, gw, gb = torch.ops.dilconv.batch_norm_act_backward(g.to(dtype), x, wt, bias, mean, invstd,
                                                           lo, hi, [True, True, True])
    gz = g * ((y > lo) & (y < hi)).double()
    xm = x.double() - 3.0
    inv = invstd.double().view(1, c, 1, 1)
    m = n * h * w
    s1, s2 = gz.sum((0, 2, 3)).view(1, c, 1, 1), (gz * xm).sum((0, 2, 3)).view(1, c, 1, 1)
    k1 = inv * wt.double().view(1, c, 1, 1)
    want = k1 * (gz - s1 / m - xm * inv * inv * s2 / m)
    assert rel_err(gx, want) <= TOL[dtype]
    assert rel_err(gb, s1.flatten()) <= TOL[dtype]
    assert rel_err(gw, (s2 * inv).flatten()) <= TOL[dtype]


def test_batch_norm_act_nan_passes_without_clamp():
    # no activation: a NaN gradient flows as in torch; the clamps zero it as relu/hardtanh do
    x = make_input((2, 3, 4, 5), torch.float32, "contiguous").requires_grad_()
    g = torch.randn(2, 3, 4, 5)
    g[0, 1, 2, 3] = float("nan")
    y = DF.batch_norm_act(x, None, None, backend="cpu")
    (gx,) = torch.autograd.grad(y, x, g)
    assert gx[:, 1].isnan().all() and not gx[:, 0].isnan().any()


@pytest.mark.parametrize("act", ["none", "relu6"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_batch_norm_act_gradcheck(layout, act):
    lo, hi = BOUNDS[act]
    x = make_input((2, 3, 4, 5), torch.float64, layout).requires_grad_()
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    fn = lambda x, w, b: torch.ops.dilconv.batch_norm_act(x, w, b, 1e-3, lo, hi)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradgradcheck(fn, (x, w, b))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_batch_norm_act_opcheck(layout):
    x = make_input((2, 3, 4, 5), torch.float32, layout).requires_grad_()
    w = torch.randn(3, requires_grad=True)
    b = torch.randn(3, requires_grad=True)
    torch.library.opcheck(torch.ops.dilconv.batch_norm_act.default, (x, w, b, 1e-5, 0.0, 6.0))
    y, mean, invstd, _ = torch.ops.dilconv.batch_norm_act(x, w, b, 1e-5, 0.0, 6.0)
    g = torch.randn_like(y)
    torch.library.opcheck(torch.ops.dilconv.batch_norm_act_backward.default,
                          (g, x.detach(), w.detach(), b.detach(), mean, invstd, 0.0, 6.0,
                           [True, True, True]))


def test_batch_norm_act_bad_input():
    x = torch.randn(2, 3, 4, 5)
    with pytest.raises(RuntimeError, match="min <= max"):
        DF.batch_norm_act(x, None, None, min=6.0, max=0.0, backend="cpu")
    with pytest.raises(ValueError, match="4-D"):
        DF.batch_norm_act(torch.randn(2, 3, 4), None, None, backend="cpu")
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        DF.batch_norm_act(torch.randn(1, 3, 1, 1), None, None, backend="cpu")
    for backend in ("torch", "cpu"):  # eps = 0 or less, NaN: torch's refusal on every backend
        for eps in (0.0, -1e-5, float("nan")):
            with pytest.raises(ValueError, match="eps must be positive"):
                DF.batch_norm_act(x, None, None, eps=eps, backend=backend)
    op = torch.ops.dilconv.batch_norm_act
    for eps in (0.0, float("nan")):
        with pytest.raises(ValueError, match="eps must be positive"):
            op(x, None, None, eps, 0.0, 6.0)
    with pytest.raises(RuntimeError, match=r"weight of shape \[3\]"):
        op(x, torch.randn(4), None, 1e-5, 0.0, 6.0)
    with pytest.raises(RuntimeError, match="min <= max"):
        op(x, None, None, 1e-5, float("nan"), 6.0)
    with pytest.raises(RuntimeError, match="dtype"):
        op(x.to(torch.int32), None, None, 1e-5, 0.0, 6.0)
    with pytest.raises(RuntimeError, match="at least one value"):
        op(torch.randn(0, 3, 4, 5), None, None, 1e-5, 0.0, 6.0)
    y, mean, invstd, _ = op(x, None, None, 1e-5, 0.0, 6.0)
    with pytest.raises(RuntimeError, match="same shape"):
        torch.ops.dilconv.batch_norm_act_backward(y[:1], x, None, None, mean, invstd, 0.0, 6.0,
                                                  [True, False, False])
    with pytest.raises(RuntimeError, match=r"bias of shape \[3\]"):
        torch.ops.dilconv.batch_norm_act_backward(y, x, None, torch.randn(2), mean, invstd, 0.0,
                                                  6.0, [True, False, False])


def _block(layout, act):
    m = ConvNormActSequential(dilconv.AtrousConv2d(4, 6, 3, padding=2, dilation=2, bias=False),
                              nn.BatchNorm2d(6), act)
    with torch.no_grad():
        m[1].weight.uniform_(0.5, 1.5)
        m[1].bias.uniform_(-0.5, 0.5)
    return m.to(memory_format=torch.channels_last) if layout == "channels_last" else m


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("act", [nn.ReLU, nn.ReLU6])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_conv_norm_act_training_matches_torch(layout, act, momentum, monkeypatch):
    # a training step of conv -> BatchNorm -> act under "cpu" runs dilconv's batch_norm_act and
    # matches torch.nn's modules: output, every gradient, running statistics, batch count
    calls = []
    real = DF.batch_norm_act
    monkeypatch.setattr(DF, "batch_norm_act", lambda *a, **k: calls.append(1) or real(*a, **k))
    ref = _block(layout, act(inplace=True)).train()
    ref[1].momentum = momentum
    m = copy.deepcopy(ref)
    x = torch.randn(2, 4, 9, 10)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    for step in range(2):
        with dilconv.use_backend("torch"):
            yr = ref(x)
        with dilconv.use_backend("cpu"):
            y = m(x)
        assert rel_err(y, yr.double()) <= 1e-5
        g = torch.randn_like(y)
        gr = torch.autograd.grad(yr, list(ref.parameters()), g)
        gm = torch.autograd.grad(y, list(m.parameters()), g)
        for a, b in zip(gm, gr):
            assert rel_err(a, b.double()) <= 1e-5
    assert len(calls) == 2  # the torch run never called it
    assert rel_err(m[1].running_mean, ref[1].running_mean.double()) <= 1e-5
    assert rel_err(m[1].running_var, ref[1].running_var.double()) <= 1e-5
    assert int(m[1].num_batches_tracked) == int(ref[1].num_batches_tracked) == 2


def test_hooked_or_untracked_batchnorm():
    # a hooked BatchNorm runs as torch.nn runs it; track_running_stats=False keeps no statistics
    m = _block("contiguous", nn.ReLU()).train()
    seen = []
    m[1].register_forward_hook(lambda *a: seen.append(1))
    with dilconv.use_backend("cpu"):
        m(torch.randn(2, 4, 6, 6))
    assert seen == [1]
    bn = nn.BatchNorm2d(3, track_running_stats=False).train()
    x = torch.randn(2, 3, 5, 5)
    y = batch_norm_act_train(bn, None, x, "cpu")
    assert rel_err(y, F.batch_norm(x.double(), None, None, None, None, True)) <= 1e-5
    assert bn.running_mean is None


def test_separable_training_uses_batch_norm_act():
    # DepthwiseSeparableConv2d's inner BatchNorm + ReLU in training: same as the torch backend
    sep = dilconv.DepthwiseSeparableConv2d(4, 6, 3, 1, 2, 2, bias=False, mid_norm=True,
                                          mid_relu=True).train()
    ref = copy.deepcopy(sep)
    x = torch.randn(2, 4, 9, 9)
    with dilconv.use_backend("torch"):
        yr = ref(x)
    with dilconv.use_backend("cpu"):
        y = sep(x)
    assert rel_err(y, yr.double()) <= 1e-5
    assert rel_err(sep.mid_norm.running_var, ref.mid_norm.running_var.double()) <= 1e-5


def test_batch_norm_act_wide_channels_last():
    # more channels than the channels-last kernels take (4096): computed on an NCHW copy, returned
    # in the input's layout
    x = make_input((2, 4100, 2, 3), torch.float32, "channels_last").requires_grad_()
    y = DF.batch_norm_act(x, None, None, min=0.0, max=6.0, backend="cpu")
    xr = x.detach().double().requires_grad_()
    ref = F.batch_norm(xr, None, None, None, None, True).clamp(0.0, 6.0)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(y, ref) <= 1e-5
    g = torch.randn(ref.shape, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    (gx,) = torch.autograd.grad(y, x, g.float())
    (want,) = torch.autograd.grad(ref, xr, g)
    assert gx.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(gx, want) <= 1e-5


# From 16 MiB on the CPU kernels write the output (forward) and the input gradient (backward) by
# streaming stores, each NCHW plane after a scalar head up to its vector alignment (these planes'
# odd sizes give every plane another head), channels-last rows in whole vectors where the channel
# count is a multiple of the vector (16 here; 17 keeps the plain stores), per instruction set.
@pytest.mark.parametrize("isa", ["native", "avx2", "base"])
@pytest.mark.parametrize("dtype, shape", [(torch.float32, (2, 16, 363, 365)),
                                          (torch.float32, (2, 17, 351, 353)),
                                          (torch.float64, (1, 16, 363, 363))], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_batch_norm_act_large_outputs(layout, dtype, shape, isa, monkeypatch):
    if isa != "native":
        monkeypatch.setenv("DILCONV_CPU_ISA", isa)
    assert torch.Size(shape).numel() * dtype.itemsize >= 16 << 20  # the streamed sizes
    c = shape[1]
    x = make_input(shape, dtype, layout).requires_grad_()
    w = (torch.rand(c, dtype=dtype) + 0.5).requires_grad_()
    b = torch.randn(c, dtype=dtype).requires_grad_()
    y = DF.batch_norm_act(x, None, None, w, b, min=0.0, max=6.0, backend="cpu")
    leaves = [t.detach().double().requires_grad_() for t in (x, w, b)]
    ref = F.batch_norm(leaves[0], None, None, leaves[1], leaves[2], True).clamp(0.0, 6.0)
    assert rel_err(y, ref) <= TOL[dtype]
    assert (y == 0).any() and (y == 6).any() and ((y > 0) & (y < 6)).any()
    g = torch.randn(ref.shape, dtype=torch.float64)
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last)
        g = g.contiguous(memory_format=torch.channels_last)
    got = torch.autograd.grad(y, [x, w, b], g.to(dtype))
    want = torch.autograd.grad(ref, leaves, g)
    for name, gg, r in zip(("input", "weight", "bias"), got, want):
        assert rel_err(gg, r) <= TOL[dtype], name
