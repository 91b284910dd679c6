"""dilconv.functional.resize_bilinear (dilconv::resize_bilinear and its backward, the upsampling of
the segmentation networks) against a float64 F.interpolate reference, forward and backward."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import dilconv
from dilconv import _ext
from dilconv import functional as DF

pytestmark = pytest.mark.skipif(not _ext.loaded, reason="needs the compiled extension")

TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}

# (input shape, output size): non-integer and integer factors, down-sampling, a 1x1 map (ASPP
# image pooling), same size (identity), an empty batch, a one-column output, and 17 channels (a
# channels-last row that is not a whole number of vectors)
CASES = [
    ((2, 3, 7, 9), (29, 35)),
    ((1, 4, 33, 33), (129, 129)),
    ((2, 21, 16, 12), (64, 48)),
    ((1, 5, 9, 10), (4, 3)),
    ((2, 3, 1, 1), (5, 7)),
    ((1, 2, 6, 7), (6, 7)),
    ((0, 3, 5, 5), (9, 9)),
    ((2, 1, 5, 6), (11, 1)),
    ((1, 17, 5, 4), (9, 13)),
]
BACKENDS = ["torch", "cpu", "auto"]


def make_input(shape, dtype, layout):
    x = torch.randn(shape, dtype=torch.float64)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "noncontiguous":  # every other column of a wider tensor
        n, c, h, w = shape
        x = torch.randn(n, c, h, 2 * w, dtype=torch.float64)[..., ::2]
    elif layout == "channel_slice":  # channels of a wider NCHW tensor: planes read in place
        n, c, h, w = shape
        x = torch.randn(n, c + 3, h, w, dtype=torch.float64)[:, 2:2 + c]
    return x.to(dtype)


def rel_err(got, ref):
    scale = ref.abs().max().item() if ref.numel() else 1.0
    return (got.double() - ref).abs().max().item() / max(scale, 1e-30) if ref.numel() else 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16],
                         ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "noncontiguous", "channel_slice"])
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}->{c[1]}")
@pytest.mark.parametrize("backend", BACKENDS)
def test_resize_matches_float64(backend, case, align_corners, layout, dtype):
    shape, size = case
    x = make_input(shape, dtype, layout).requires_grad_()
    y = DF.resize_bilinear(x, size, align_corners, backend=backend)
    xr = x.detach().double().requires_grad_()
    ref = F.interpolate(xr, size=size, mode="bilinear", align_corners=align_corners)
    assert y.shape == ref.shape and y.dtype == dtype
    assert rel_err(y, ref) <= TOL[dtype]
    if backend != "torch" and layout == "channels_last" and x.is_contiguous() is False:
        assert y.is_contiguous(memory_format=torch.channels_last)
    gy = torch.randn(ref.shape, dtype=torch.float64)
    if layout == "channels_last":
        gy = gy.contiguous(memory_format=torch.channels_last)
    elif layout == "channel_slice":  # the gradient a channel slice too (DeepLabV3+'s concat)
        gy = make_input(ref.shape, torch.float64, layout).copy_(gy)
    (gx,) = torch.autograd.grad(y, x, gy.to(dtype))
    (want,) = torch.autograd.grad(ref, xr, gy.to(dtype).double())
    assert gx.shape == x.shape
    assert rel_err(gx, want) <= TOL[dtype]


def test_resize_backends_run_the_op(monkeypatch):
    # every backend but "torch" resizes a CPU tensor with dilconv's op; "torch" never calls it
    calls = []
    real = torch.ops.dilconv.resize_bilinear

    class Spy:
        def __call__(self, *a):
            calls.append(a)
            return real(*a)

    monkeypatch.setattr(torch.ops.dilconv, "resize_bilinear", Spy())
    x = torch.randn(1, 3, 5, 6)
    DF.resize_bilinear(x, (9, 11), backend="torch")
    assert not calls
    for b in ("cpu", "auto"):
        DF.resize_bilinear(x, (9, 11), backend=b)
    with dilconv.use_backend("cpu"):
        DF.resize_bilinear(x, (9, 11))
    assert len(calls) == 3


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_resize_gradcheck(align_corners, layout):
    x = make_input((2, 3, 4, 5), torch.float64, layout).requires_grad_()
    fn = lambda t: torch.ops.dilconv.resize_bilinear(t, [7, 9], align_corners)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))
    g = make_input((2, 3, 7, 9), torch.float64, layout).requires_grad_()
    bwd = lambda t: torch.ops.dilconv.resize_bilinear_backward(t, [2, 3, 4, 5], align_corners)  # noqa: E731
    assert torch.autograd.gradcheck(bwd, (g,))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_resize_opcheck(layout):
    x = make_input((2, 3, 4, 5), torch.float32, layout).requires_grad_()
    g = make_input((2, 3, 7, 9), torch.float32, layout)
    torch.library.opcheck(torch.ops.dilconv.resize_bilinear.default, (x, [7, 9], False))
    torch.library.opcheck(torch.ops.dilconv.resize_bilinear_backward.default,
                          (g, [2, 3, 4, 5], True))


@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
@pytest.mark.parametrize("backend", ["cpu", "auto"])
def test_resize_gradient_from_a_channel_slice(backend, layout):
    # DeepLabV3+ concatenates the upsampled ASPP output with the low-level features: the
    # resize's gradient is a channel slice of the concat's (in channels-last neither layout, in
    # NCHW contiguous planes the kernel reads in place)
    x = make_input((2, 6, 5, 7), torch.float32, layout).requires_grad_()
    other = make_input((2, 3, 11, 13), torch.float32, layout)
    y = DF.resize_bilinear(x, (11, 13), backend=backend)
    z = torch.cat([y, other], dim=1)
    assert z.is_contiguous(memory_format=torch.channels_last if layout == "channels_last"
                           else torch.contiguous_format)
    g = torch.randn(z.shape, dtype=torch.float64)
    (gx,) = torch.autograd.grad(z, x, g.float())
    xr = x.detach().double().requires_grad_()
    (want,) = torch.autograd.grad(F.interpolate(xr, (11, 13), mode="bilinear"), xr, g[:, :6])
    assert (gx.double() - want).abs().max() <= 1e-5 * want.abs().max()
    assert gx.is_contiguous(memory_format=torch.channels_last if layout == "channels_last"
                            else torch.contiguous_format)


def test_resize_bad_input():
    x = torch.randn(1, 3, 5, 5)
    with pytest.raises(ValueError, match="two ints"):
        DF.resize_bilinear(x, (5,), backend="cpu")
    with pytest.raises(ValueError, match=">= 1"):
        DF.resize_bilinear(x, (0, 5), backend="cpu")
    with pytest.raises(ValueError, match="unknown|backend"):
        DF.resize_bilinear(x, (5, 5), backend="no-such-backend")
    op, bwd = torch.ops.dilconv.resize_bilinear, torch.ops.dilconv.resize_bilinear_backward
    with pytest.raises(RuntimeError, match="4-D"):
        op(torch.randn(3, 5, 5), [7, 7], False)
    with pytest.raises(RuntimeError, match="size"):
        op(x, [7, 0], False)
    with pytest.raises(RuntimeError, match="height and width"):
        op(torch.randn(1, 3, 0, 5), [7, 7], False)
    with pytest.raises(RuntimeError, match="dtype"):
        op(torch.ones(1, 3, 5, 5, dtype=torch.int32), [7, 7], False)
    with pytest.raises(RuntimeError, match="does not match"):
        bwd(torch.randn(1, 3, 7, 7), [2, 3, 5, 5], False)
    with pytest.raises(RuntimeError, match="input_size"):
        bwd(torch.randn(1, 3, 7, 7), [1, 3, 5], False)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_deeplab_resizes_follow_the_backend(layout):
    # the network's upsampling runs dilconv's resize under a dilconv backend and gives torch's
    # result up to float32 rounding
    from dilconv import models

    m = models.deeplabv3plus(backbone="mobilenet_v2", num_classes=5).eval()
    x = torch.randn(1, 3, 65, 65)
    if layout == "channels_last":
        m, x = m.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        with dilconv.use_backend("torch"):
            ref = m(x)["out"]
        with dilconv.use_backend("cpu"):
            out = m(x)["out"]
    assert out.shape == ref.shape == (1, 5, 65, 65)
    assert rel_err(out, ref.double()) <= 1e-4  # a whole network: convolutions' rounding adds up
