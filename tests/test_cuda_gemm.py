"""The implicit-GEMM CUDA kernels (csrc/kernels/gemm_conv.cuh) beyond the common matrix:
ResNeXt-style narrow groups, large dilations, 1x7/7x1, transposed stride 2 with output_padding,
deterministic split-K wgrad, the 16-bit vector/tensor-core paths and the coalescing of the
channels_last tile loads (emulated sector counts).

Runs on "cuda-emu" (the kernels compiled against the CUDA emulation, on CPU tensors) and on
"cuda" when a GPU is present. References are float64 torch.nn.functional on the same inputs.
Shapes are tiny: every emulated CUDA thread is an OS thread.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import dilconv
from dilconv import functional as DF

BACKENDS = [b for b in ("cuda-emu", "cuda") if b in dilconv.backends()]
pytestmark = pytest.mark.skipif(not BACKENDS, reason="no CUDA kernels (cuda / cuda-emu) built")
TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}


def device(backend):
    return "cuda" if backend == "cuda" else "cpu"


def rand(*shape, dtype=torch.float32, backend="cuda-emu", cl=False, grad=False):
    t = torch.randn(*shape, dtype=torch.float64).to(dtype).to(device(backend))
    if cl:
        t = t.contiguous(memory_format=torch.channels_last)
    return t.requires_grad_(grad)


def close(out, ref, dtype, what):
    assert out.shape == ref.shape, f"{what}: {tuple(out.shape)} != {tuple(ref.shape)}"
    err = (out.detach().double().cpu() - ref.detach().cpu()).abs().max().item()
    scale = max(ref.abs().max().item(), 1e-30)
    assert err <= TOL[dtype] * scale, f"{what}: max error {err:.3e} > {TOL[dtype]:.0e} x {scale:.3e}"


def check_conv(backend, n, c, h, w, k, kernel, stride=1, padding=0, dilation=1, groups=1,
               dtype=torch.float32, cl=False):
    """forward and all three gradients against float64 torch"""
    x = rand(n, c, h, w, dtype=dtype, backend=backend, cl=cl, grad=True)
    wt = rand(k, c // groups, *kernel, dtype=dtype, backend=backend, grad=True)
    b = rand(k, dtype=dtype, backend=backend, grad=True)
    y = DF.conv2d(x, wt, b, stride, padding, dilation, groups, backend=backend)
    xr, wr, br = (t.detach().double().cpu().requires_grad_() for t in (x, wt, b))
    yr = F.conv2d(xr, wr, br, stride, padding, dilation, groups)
    close(y, yr, dtype, "forward")
    if cl and c > 1 and h * w > 1:
        assert y.is_contiguous(memory_format=torch.channels_last)
    gy = torch.randn_like(yr)
    y.backward(gy.to(dtype).to(y.device))
    yr.backward(gy.to(dtype).double())
    close(x.grad, xr.grad, dtype, "grad input")
    close(wt.grad, wr.grad, dtype, "grad weight")
    close(b.grad, br.grad, dtype, "grad bias")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("cpg,stride", [(4, 1), (4, 2), (8, 1)], ids=["4ch", "4ch_s2", "8ch"])
def test_resnext_narrow_groups(backend, cl, cpg, stride):
    # ResNeXt 32x4d's grouped 3x3: 4 (or 8) channels per group, several groups packed per tile
    g = 8
    check_conv(backend, 2, g * cpg, 6, 7, g * cpg, (3, 3), stride, 1, 1, g, cl=cl)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("d", [12, 24, 36])
def test_large_dilation_33x33(backend, d):
    # ASPP rates on a 33x33 map: with d=24/36 most taps fall in the padding
    check_conv(backend, 1, 3, 33, 33, 4, (3, 3), 1, d, d, cl=(d == 24))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kernel,padding,dilation", [((1, 7), (0, 6), (1, 2)), ((7, 1), (3, 0), 1)],
                         ids=["1x7_d2", "7x1"])
def test_1x7_7x1(backend, kernel, padding, dilation):
    check_conv(backend, 2, 4, 9, 11, 6, kernel, 1, padding, dilation, cl=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stride,outpad,groups,dilation,cl", [
    (2, 1, 1, 1, False), (2, 1, 2, 2, True), (2, 1, 4, 1, True),
    (1, 1, 1, 2, True),  # output_padding >= stride (allowed because < dilation)
    (3, 2, 2, 2, False)])
def test_transposed_stride2_output_padding(backend, stride, outpad, groups, dilation, cl):
    n, c, h, w, k = 2, 8, 5, 4, 8
    x = rand(n, c, h, w, backend=backend, cl=cl, grad=True)
    wt = rand(c, k // groups, 3, 3, backend=backend, grad=True)
    b = rand(k, backend=backend, grad=True)
    args = (stride, 1, outpad, groups, dilation)  # stride, padding, output_padding, groups, dilation
    y = DF.conv_transpose2d(x, wt, b, *args, backend=backend)
    xr, wr, br = (t.detach().double().cpu().requires_grad_() for t in (x, wt, b))
    yr = F.conv_transpose2d(xr, wr, br, *args)
    close(y, yr, torch.float32, "forward")
    if outpad >= stride:
        # forward only: the autograd formula (dilconv/_ops.py) does not yet crop the conv2d of the
        # gradient back to the input size when output_padding >= stride
        return
    gy = torch.randn_like(yr)
    y.backward(gy.float().to(y.device))
    yr.backward(gy)
    close(x.grad, xr.grad, torch.float32, "grad input")
    close(wt.grad, wr.grad, torch.float32, "grad weight")
    close(b.grad, br.grad, torch.float32, "grad bias")


def op(backend, name):
    return getattr(torch.ops.dilconv, name + ("_emu" if backend == "cuda-emu" else ""))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_wgrad_split_k_is_bitwise_deterministic(backend, dtype):
    # n*p*q = 2*16*16 = 512 rows of the reduction: several split-K slices summed in fixed order
    x = rand(2, 8, 16, 16, dtype=dtype, backend=backend, cl=True)
    gy = rand(2, 8, 16, 16, dtype=dtype, backend=backend, cl=True)
    wgrad = op(backend, "conv2d_weight_grad")
    a = wgrad(gy, x, [8, 8, 3, 3], [1, 1], [2, 2], [2, 2], 1)
    b = wgrad(gy, x, [8, 8, 3, 3], [1, 1], [2, 2], [2, 2], 1)
    assert torch.equal(a, b), "two runs of wgrad differ"
    xr = x.double().cpu()
    ref = torch.nn.grad.conv2d_weight(xr, (8, 8, 3, 3), gy.double().cpu(), 1, 2, 2, 1)
    close(a, ref, dtype, "wgrad")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "nhwc"])
def test_16bit_paths(backend, dtype, cl):
    # >= 32 output and >= 16 reduction channels per group: the tensor-core config on a GPU (and
    # in the emulation once dc::wmma exists); channels_last takes 16-byte vector tile loads
    check_conv(backend, 1, 16, 5, 6, 32, (3, 3), 1, 2, 2, dtype=dtype, cl=cl)


@pytest.mark.parametrize("backend", BACKENDS)
def test_transposed_bad_output_padding(backend):
    x = rand(1, 4, 5, 5, backend=backend)
    w = rand(4, 4, 3, 3, backend=backend)
    with pytest.raises(RuntimeError, match="output padding"):
        op(backend, "conv_transpose2d")(x, w, None, [2, 2], [1, 1], [2, 2], 1, [1, 1])


def test_channels_last_fprop_tile_loads_are_coalesced():
    emu_traffic = pytest.importorskip("dilconv.emu_traffic")
    if "cuda-emu" not in BACKENDS:
        pytest.skip("needs cuda-emu")
    x = rand(1, 32, 8, 8, cl=True)
    w = rand(32, 32, 3, 3)
    with emu_traffic.counting() as t:
        torch.ops.dilconv.conv2d_emu(x, w, None, [1, 1], [1, 1], [2, 2], 1)
    eff = t.efficiency(function="igemm_conv_kernel", kind="load")
    assert eff >= 0.9, f"sector efficiency of the fprop tile loads {eff:.3f} < 0.9"
