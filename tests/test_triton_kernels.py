"""The Triton kernels against a float64 torch reference: every kernel, its masks and edges.

Runs where the Triton backend can run: on CUDA tensors with a GPU, or on CPU tensors in Triton's
interpreter when TRITON_INTERPRET=1 was set before triton was imported. In a plain CI process
(no GPU, no interpreter) this module skips itself and tests/test_triton.py runs it in a
subprocess with TRITON_INTERPRET=1.

Shapes are tiny (the interpreter runs one program instance at a time). bfloat16 is tested only on
a GPU: the interpreter's bf16 arithmetic is silently wrong.
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
if not INTERPRET and not torch.cuda.is_available():
    pytest.skip("needs a CUDA device or TRITON_INTERPRET=1 (tests/test_triton.py runs this module "
                "under the interpreter)", allow_module_level=True)
pytest.importorskip("triton")

import dilconv  # noqa: E402
import dilconv.triton  # noqa: E402  (registers the *_triton ops)
from dilconv.triton import conv_igemm, depthwise, separable  # noqa: E402

DEV = "cpu" if INTERPRET else "cuda"
T = torch.ops.dilconv
DTYPES = [torch.float32, torch.float16] + ([] if INTERPRET else [torch.bfloat16])
# fp32 with IEEE tl.dot (TF32 stays off unless torch.backends.cuda.matmul.allow_tf32): 1e-5;
# 16-bit operands with fp32 accumulation: 1e-2 (bf16 has 8 mantissa bits: 2e-2).
TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 2e-2}


def rand(*shape, dtype=torch.float32, cl=False):
    t = torch.randn(*shape, dtype=torch.float64).to(device=DEV, dtype=dtype)
    return t.to(memory_format=torch.channels_last) if cl else t


def close(got, ref, dtype, what=""):
    """max |got - ref| relative to max |ref| (the scale of a conv's output), float64 reference."""
    assert got.shape == ref.shape, (what, got.shape, ref.shape)
    assert got.dtype == dtype, (what, got.dtype)
    err = (got.double().cpu() - ref.double().cpu()).abs().max().item() if got.numel() else 0.0
    scale = max(ref.abs().max().item() if ref.numel() else 0.0, 1e-3)
    assert err <= TOL[dtype] * scale, f"{what}: error {err:.3g} > {TOL[dtype]} * {scale:.3g}"


def d64(t):
    return t.detach().double().requires_grad_()


# (N, C, H, W, K, (R, S), stride, padding, dilation, groups): each line names the edge it covers
CONV_CASES = [
    (2, 8, 9, 7, 12, (3, 3), (1, 1), (1, 1), (1, 1), 1),       # dense, odd sizes
    (1, 8, 11, 10, 16, (3, 3), (2, 2), (3, 3), (2, 2), 4),     # grouped, padding > dilation
    (2, 5, 10, 9, 7, (3, 3), (3, 3), (1, 1), (1, 1), 1),       # stride 3, odd channels
    (1, 6, 8, 8, 9, (3, 3), (1, 1), (2, 2), (2, 2), 3),        # 2 channels/group in, 3 out: packed
    (1, 16, 7, 9, 8, (3, 3), (1, 2), (4, 1), (3, 1), 8),       # 2 -> 1 channels/group, asymmetric
    (1, 8, 6, 7, 8, (1, 7), (1, 1), (0, 3), (1, 1), 1),        # 1x7
    (1, 8, 9, 6, 8, (7, 1), (2, 1), (3, 0), (1, 1), 2),        # 7x1, stride on one axis
    (1, 4, 5, 6, 8, (3, 3), (1, 1), (24, 24), (24, 24), 1),    # dilation 24 (taps mostly padding)
    (2, 6, 7, 7, 6, (1, 1), (2, 2), (0, 0), (1, 1), 1),        # 1x1 strided
    (1, 40, 5, 5, 40, (3, 3), (1, 1), (1, 1), (1, 1), 2),      # 20 channels/group: > one BLOCK_K step
    (1, 4, 8, 8, 4, (5, 5), (3, 3), (2, 2), (1, 1), 4),        # depthwise 5x5, stride 3
    (2, 3, 9, 8, 6, (3, 3), (2, 2), (2, 2), (2, 2), 3),        # depthwise, multiplier 2
    (1, 5, 6, 7, 15, (3, 3), (1, 1), (6, 6), (6, 6), 5),       # depthwise, multiplier 3, d=6
]


def _ids(cases):
    return [f"c{i}" for i in range(len(cases))]


@pytest.mark.parametrize("case", CONV_CASES, ids=_ids(CONV_CASES))
@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "nhwc"])
def test_conv2d_fwd_bwd_fp32(case, cl):
    n, c, h, w, k, (r, s), st, pad, dil, g = case
    x, wt, b = rand(n, c, h, w, cl=cl), rand(k, c // g, r, s), rand(k)
    args = (list(st), list(pad), list(dil), g)
    y = T.conv2d_triton(x, wt, b, *args)
    xr, wr = d64(x), d64(wt)
    ref = F.conv2d(xr, wr, b.double(), st, pad, dil, g)
    close(y, ref, torch.float32, "fprop")
    assert y.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
    gy = rand(*ref.shape, cl=cl)
    ref.backward(gy.double())
    close(T.conv2d_input_grad_triton(gy, wt, [n, c, h, w], *args), xr.grad, torch.float32, "dgrad")
    close(T.conv2d_weight_grad_triton(gy, x, [k, c // g, r, s], *args), wr.grad, torch.float32, "wgrad")


@pytest.mark.parametrize("case", CONV_CASES[1:4] + CONV_CASES[11:12], ids=_ids(CONV_CASES[1:4] + CONV_CASES[11:12]))
@pytest.mark.parametrize("dtype", DTYPES[1:], ids=lambda d: str(d)[6:])
def test_conv2d_16bit(case, dtype):
    n, c, h, w, k, (r, s), st, pad, dil, g = case
    x, wt, b = rand(n, c, h, w, dtype=dtype), rand(k, c // g, r, s, dtype=dtype), rand(k, dtype=dtype)
    args = (list(st), list(pad), list(dil), g)
    xr, wr = d64(x), d64(wt)
    ref = F.conv2d(xr, wr, b.double(), st, pad, dil, g)
    close(T.conv2d_triton(x, wt, b, *args), ref, dtype, "fprop")
    gy = rand(*ref.shape, dtype=dtype)
    ref.backward(gy.double())
    close(T.conv2d_input_grad_triton(gy, wt, [n, c, h, w], *args), xr.grad, dtype, "dgrad")
    close(T.conv2d_weight_grad_triton(gy, x, [k, c // g, r, s], *args), wr.grad, dtype, "wgrad")


@pytest.mark.skipif(INTERPRET, reason="bf16 arithmetic is silently wrong in the Triton interpreter; "
                    "bf16 is tested on a GPU only")
def test_bf16_gpu_only():
    n, c, h, w, k, (r, s), st, pad, dil, g = CONV_CASES[1]
    x, wt = rand(n, c, h, w, dtype=torch.bfloat16), rand(k, c // g, r, s, dtype=torch.bfloat16)
    ref = F.conv2d(x.double(), wt.double(), None, st, pad, dil, g)
    close(T.conv2d_triton(x, wt, None, list(st), list(pad), list(dil), g), ref, torch.bfloat16)


@pytest.mark.parametrize("case", [CONV_CASES[1], CONV_CASES[3], CONV_CASES[11]], ids=["grouped", "packed", "depthwise"])
def test_wgrad_split_reduction(case, monkeypatch):
    """The weight gradients split their N*P*Q reduction across programs (fp32 atomics) on large
    problems: force the split on a tiny one."""
    monkeypatch.setattr(conv_igemm, "WGRAD_MIN_CHUNK", 16)
    monkeypatch.setattr(depthwise, "WGRAD_MIN_CHUNK", 16)
    n, c, h, w, k, (r, s), st, pad, dil, g = case
    x, gy_shape = rand(n, c, h, w), F.conv2d(torch.zeros(n, c, h, w), torch.zeros(k, c // g, r, s),
                                               None, st, pad, dil, g).shape
    gy = rand(*gy_shape)
    wr = torch.zeros(k, c // g, r, s, dtype=torch.float64, requires_grad=True)
    F.conv2d(x.double(), wr, None, st, pad, dil, g).backward(gy.double())
    got = T.conv2d_weight_grad_triton(gy, x, [k, c // g, r, s], list(st), list(pad), list(dil), g)
    close(got, wr.grad, torch.float32, "split wgrad")


def test_noncontiguous_and_empty():
    x = rand(2, 8, 9, 14)[:, :, :, ::2]                     # strided view, not a copy
    wt = rand(8, 4, 3, 3)
    close(T.conv2d_triton(x, wt, None, [1, 1], [1, 1], [1, 1], 2),
          F.conv2d(x.double(), wt.double(), None, 1, 1, 1, 2), torch.float32)
    x0 = rand(0, 8, 5, 5)
    assert T.conv2d_triton(x0, wt, None, [1, 1], [1, 1], [1, 1], 2).shape == (0, 8, 5, 5)
    gw = T.conv2d_weight_grad_triton(rand(0, 8, 5, 5), x0, [8, 4, 3, 3], [1, 1], [1, 1], [1, 1], 2)
    assert gw.shape == (8, 4, 3, 3) and not gw.any()


# (N, Cin, H, W, Cout, (R, S), stride, padding, output_padding, groups, dilation)
CONVT_CASES = [
    (2, 8, 5, 4, 12, (3, 3), (2, 2), (1, 1), (1, 1), 1, (1, 1)),
    (1, 8, 4, 5, 12, (3, 3), (3, 3), (2, 2), (2, 2), 4, (2, 2)),   # stride 3, output_padding 2
    (1, 6, 5, 5, 12, (3, 3), (2, 2), (0, 0), (1, 0), 6, (1, 1)),   # depthwise-transposed, mult 2
    (2, 4, 3, 6, 5, (4, 2), (2, 1), (1, 0), (0, 0), 1, (2, 3)),    # non-square, dilation
]


@pytest.mark.parametrize("case", CONVT_CASES, ids=_ids(CONVT_CASES))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
def test_conv_transpose2d(case, dtype):
    n, ci, h, w, co, (r, s), st, pad, opad, g, dil = case
    x, wt, b = rand(n, ci, h, w, dtype=dtype), rand(ci, co // g, r, s, dtype=dtype), rand(co, dtype=dtype)
    y = T.conv_transpose2d_triton(x, wt, b, list(st), list(pad), list(opad), g, list(dil))
    ref = F.conv_transpose2d(x.double(), wt.double(), b.double(), st, pad, opad, g, dil)
    close(y, ref, dtype, "conv_transpose2d")


# (N, C, H, W, multiplier, K, (R, S), stride, padding, dilation, mid_relu, out_relu, biases)
SEP_CASES = [
    (2, 4, 9, 8, 1, 8, (3, 3), (1, 1), (2, 2), (2, 2), True, True, True),
    (1, 3, 9, 7, 2, 5, (3, 3), (2, 2), (3, 3), (1, 1), False, True, False),
    (2, 6, 7, 7, 1, 4, (3, 3), (1, 1), (6, 6), (6, 6), True, False, True),
    (1, 40, 5, 6, 1, 70, (5, 5), (3, 3), (2, 2), (1, 1), False, False, True),  # > one tile both ways
]


@pytest.mark.parametrize("case", SEP_CASES, ids=_ids(SEP_CASES))
@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
def test_separable(case, cl, dtype, monkeypatch):
    if dtype != torch.float32 and (cl or case is not SEP_CASES[0]):
        pytest.skip("16-bit: one case is enough (the kernels are dtype-generic)")
    monkeypatch.setattr(separable, "PW_WGRAD_MIN_CHUNK", 32)   # exercise the split too
    n, c, h, w, mult, k, (r, s), st, pad, dil, mr, orl, biases = case
    x = rand(n, c, h, w, dtype=dtype, cl=cl)
    dw, pw = rand(c * mult, 1, r, s, dtype=dtype), rand(k, c * mult, 1, 1, dtype=dtype)
    db, pb = (rand(c * mult, dtype=dtype), rand(k, dtype=dtype)) if biases else (None, None)
    conf = (list(st), list(pad), list(dil), mr, orl)
    y = T.separable_conv2d_triton(x, dw, db, pw, pb, *conf)
    leaves = [d64(t) for t in (x, dw, db if biases else torch.zeros(c * mult), pw,
                               pb if biases else torch.zeros(k))]
    mid = F.conv2d(leaves[0], leaves[1], leaves[2], st, pad, dil, c)
    mid = mid.relu() if mr else mid
    if dtype != torch.float32:
        mid = mid.to(dtype).double()                       # the pair stores mid in `dtype`
    ref = F.conv2d(mid, leaves[3], leaves[4])
    ref = ref.relu() if orl else ref
    close(y, ref, dtype, "separable fwd")
    assert y.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
    gy = rand(*ref.shape, dtype=dtype, cl=cl)
    ref.backward(gy.double())
    grads = T.separable_conv2d_backward_triton(gy, x, dw, db, pw, pb, *conf)
    for name, got, leaf in zip(("input", "dw_weight", "dw_bias", "pw_weight", "pw_bias"), grads, leaves):
        close(got, leaf.grad, dtype, f"grad {name}")


def test_depthwise_wgrad_bias_split(monkeypatch):
    """dw_wgrad's fused bias gradient, through the atomic split path."""
    monkeypatch.setattr(depthwise, "WGRAD_MIN_CHUNK", 16)
    x, gy = rand(2, 6, 9, 9), rand(2, 12, 9, 9)
    dw, db = torch.empty(12, 1, 3, 3), torch.empty(12)
    depthwise.wgrad(gy, x, (1, 1), (2, 2), (2, 2), dw, bias_out=db)
    wr = torch.zeros(12, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    F.conv2d(x.double(), wr, None, 1, 2, 2, 6).backward(gy.double())
    close(dw, wr.grad, torch.float32, "dw")
    close(db, gy.double().sum((0, 2, 3)), torch.float32, "db")


# ---------------------------------------------------------------------------------------------
# integration: opcheck, autograd through the functional API, torch.compile, the backend


OPCHECK = [
    ("conv2d_triton", lambda: (rand(2, 8, 6, 5), rand(12, 4, 3, 3), rand(12), [2, 2], [1, 1], [2, 2], 2)),
    ("conv2d_triton", lambda: (rand(1, 4, 6, 5, cl=True), rand(8, 1, 3, 3), None, [1, 1], [2, 2], [2, 2], 4)),
    ("conv2d_input_grad_triton", lambda: (rand(1, 6, 4, 4), rand(6, 2, 3, 3), [1, 4, 8, 7], [2, 2], [1, 1], [1, 1], 2)),
    ("conv2d_weight_grad_triton", lambda: (rand(1, 6, 4, 4, cl=True), rand(1, 4, 8, 7, cl=True), [6, 2, 3, 3], [2, 2], [1, 1], [1, 1], 2)),
    ("conv_transpose2d_triton", lambda: (rand(1, 4, 3, 4), rand(4, 3, 3, 3), rand(6), [2, 2], [1, 1], [1, 1], 2, [1, 1])),
    ("separable_conv2d_triton", lambda: (rand(1, 4, 6, 6, cl=True), rand(8, 1, 3, 3), rand(8), rand(5, 8, 1, 1), None, [1, 1], [2, 2], [2, 2], True, False)),
    ("separable_conv2d_backward_triton", lambda: (rand(1, 5, 6, 6), rand(1, 4, 6, 6), rand(4, 1, 3, 3), None, rand(5, 4, 1, 1), rand(5), [1, 1], [1, 1], [1, 1], False, True)),
]


@pytest.mark.parametrize("name,make", OPCHECK, ids=[f"{n}{i}" for i, (n, _) in enumerate(OPCHECK)])
def test_opcheck(name, make):
    args = tuple(a.requires_grad_() if isinstance(a, torch.Tensor) and "backward" not in name else a
                 for a in make())
    torch.library.opcheck(getattr(T, name).default, args)


def test_autograd_through_functional_and_double_backward():
    x, wt, b = rand(2, 6, 7, 6), rand(9, 2, 3, 3), rand(9)
    x.requires_grad_(), wt.requires_grad_(), b.requires_grad_()
    y = dilconv.functional.conv2d(x, wt, b, stride=2, padding=2, dilation=2, groups=3, backend="triton")
    (gx, gw) = torch.autograd.grad(y.square().sum(), (x, wt), create_graph=True)
    xr, wr, br = d64(x), d64(wt), d64(b)
    yr = F.conv2d(xr, wr, br, 2, 2, 2, 3)
    (gxr, gwr) = torch.autograd.grad(yr.square().sum(), (xr, wr), create_graph=True)
    close(gx, gxr, torch.float32, "gx")
    close(gw, gwr, torch.float32, "gw")
    # second order: the backward is made of *_triton ops with their own autograd
    (ggx,) = torch.autograd.grad(gw.sum(), x)
    (ggxr,) = torch.autograd.grad(gwr.sum(), xr)
    close(ggx, ggxr, torch.float32, "double backward")


def test_torch_compile_fullgraph():
    x, wt = rand(1, 4, 7, 7).requires_grad_(), rand(4, 1, 3, 3).requires_grad_()
    pw = rand(6, 4, 1, 1).requires_grad_()

    def f(x, wt, pw):
        y = dilconv.functional.conv2d(x, wt, None, padding=2, dilation=2, groups=4, backend="triton")
        return torch.ops.dilconv.separable_conv2d_triton(y, wt, None, pw, None, [1, 1], [1, 1], [1, 1],
                                                         True, True).sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    got = compiled(x, wt, pw)
    got.backward()
    leaves = [d64(t) for t in (x, wt, pw)]
    y = F.conv2d(leaves[0], leaves[1], None, 1, 2, 2, 4)
    ref = F.conv2d(F.conv2d(y, leaves[1], None, 1, 1, 1, 4).relu(), leaves[2]).relu().sum()
    ref.backward()
    close(got.detach().reshape(1), ref.detach().reshape(1), torch.float32, "loss")
    for t, leaf in zip((x, wt, pw), leaves):
        close(t.grad, leaf.grad, torch.float32, "grad")


def test_backend_declares_its_domain():
    from dilconv import registry

    b = registry.get_backend("triton")
    assert b.available() is None and "triton" in dilconv.backends()
    assert b.device_types == (("cuda", "cpu") if INTERPRET else ("cuda",))
    p = registry.Problem(op="conv2d", device=DEV, dtype=torch.float64, n=1, c=4, h=5, w=5, k=4, r=3,
                         s=3, stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1,
                         channels_last=False, max_numel=100, requires_grad=False)
    assert "float64" in b.unsupported(p)
    assert "32-bit" in b.unsupported(dataclasses_replace(p, dtype=torch.float32, max_numel=2**31))
    assert b.unsupported(dataclasses_replace(p, dtype=torch.float16)) is None
    assert "CUDA" in b.unsupported(dataclasses_replace(p, device="meta"))
    bf16 = b.unsupported(dataclasses_replace(p, dtype=torch.bfloat16))
    assert (bf16 is not None and "interpreter" in bf16) if INTERPRET else bf16 is None


def dataclasses_replace(p, **kw):
    import dataclasses

    return dataclasses.replace(p, **kw)


def test_bad_input_raises():
    x, wt = rand(1, 4, 5, 5), rand(4, 4, 3, 3)
    with pytest.raises(RuntimeError, match="expected all tensors to be"):
        T.conv2d_triton(x, wt.half(), None, [1, 1], [1, 1], [1, 1], 1)
    with pytest.raises(RuntimeError, match="not supported"):
        T.conv2d_triton(x.double(), wt.double(), None, [1, 1], [1, 1], [1, 1], 1)
    with pytest.raises(RuntimeError, match="does not match 8 input channels"):
        T.conv2d_triton(rand(1, 8, 5, 5), wt, None, [1, 1], [1, 1], [1, 1], 1)
    with pytest.raises(RuntimeError, match="does not fit"):
        T.conv2d_triton(x, rand(4, 4, 9, 9), None, [1, 1], [1, 1], [1, 1], 1)
    with pytest.raises(RuntimeError, match="does not match the conv's output"):
        T.conv2d_input_grad_triton(rand(1, 4, 6, 6), wt, [1, 4, 20, 20], [1, 1], [0, 0], [1, 1], 1)
    with pytest.raises(RuntimeError, match="does not match the conv's output"):
        T.conv2d_weight_grad_triton(rand(1, 4, 6, 6), x, [4, 4, 3, 3], [1, 1], [0, 0], [1, 1], 1)
    with pytest.raises(RuntimeError, match="output_padding"):
        T.conv_transpose2d_triton(x, wt, None, [2, 2], [0, 0], [2, 2], 1, [1, 1])
    with pytest.raises(RuntimeError, match="1x1 weight"):
        T.separable_conv2d_triton(x, rand(4, 1, 3, 3), None, rand(5, 3, 1, 1), None, [1, 1], [1, 1],
                                  [1, 1], False, False)
    with pytest.raises(RuntimeError, match="grad_output"):
        T.separable_conv2d_backward_triton(rand(1, 5, 4, 4), x, rand(4, 1, 3, 3), None, rand(5, 4, 1, 1),
                                           None, [1, 1], [1, 1], [1, 1], False, False)
    if INTERPRET:
        with pytest.raises(RuntimeError, match="interpreter"):
            T.conv2d_triton(x.bfloat16(), wt.bfloat16(), None, [1, 1], [1, 1], [1, 1], 1)
