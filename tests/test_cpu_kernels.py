"""Backend "cpu": every code path of csrc/cpu against a float64 torch reference.

The core matrix (tests/test_ops.py) covers the backend through the public API; these tests force
each internal path (direct stencil kernels / im2col+GEMM / per-tap GEMMs, via DILCONV_CPU_PATH) and each
instruction-set variant (AVX-512 / AVX2 / SSE2, via DILCONV_CPU_ISA), call the ops directly, and
check that bad direct calls raise instead of writing out of bounds."""
import dataclasses
import random
import zlib

import pytest
import torch
import torch.nn.functional as F

import dilconv
from dilconv import _ext
from tolerance import assert_close_rel

pytestmark = pytest.mark.skipif("cpu" not in dilconv.backends(), reason="backend 'cpu' not built")
ops = torch.ops.dilconv


@pytest.fixture(params=["native", "avx2", "base"])
def isa(request, monkeypatch):
    if request.param != "native":
        monkeypatch.setenv("DILCONV_CPU_ISA", request.param)
    return request.param


@pytest.fixture(params=["auto", "direct", "flat", "planar", "gemm", "taps", "pointwise", "bcast"])
def path(request, monkeypatch):
    # auto: the kernels' own choice (channels-last depthwise kernels included); direct: the
    # stencil kernels with their own choice (flattened-window depthwise for stride 1 included);
    # flat: the flattened-window kernels wherever they apply; planar: the general packed-plane
    # stencil only; gemm: BLAS's GEMMs (channels-last: on pixel rows, im2col_nhwc / col2im_nhwc);
    # bcast: dilconv's own small GEMM (gemm_bcast) on pixel rows wherever it applies
    if request.param != "auto":
        monkeypatch.setenv("DILCONV_CPU_PATH", request.param)
    return request.param


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


@pytest.mark.parametrize("forced", [None, "avx2", "base"])
def test_isa_variant_matches_this_cpu(forced):
    # A fresh process (the kernel tables are built once per process, on first use): the variant
    # picked is the best this CPU runs, capped by DILCONV_CPU_ISA, and running it (every
    # depthwise and GEMM path of a conv forward + backward) does not die. Building the AVX-512
    # table on an AVX2-only CPU used to kill the process with SIGILL at the first conv.
    import os
    import subprocess
    import sys
    flags = _cpu_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo flags here")
    if {"avx512f", "avx512dq", "avx512bw", "avx512vl"} <= flags:
        native = "avx512"
    elif {"avx2", "fma"} <= flags:
        native = "avx2"
    else:
        native = "base"
    order = ["base", "avx2", "avx512"]
    want = native if forced is None else order[min(order.index(native), order.index(forced))]
    env = dict(os.environ)
    env.pop("DILCONV_CPU_ISA", None)
    if forced:
        env["DILCONV_CPU_ISA"] = forced
    code = (
        "import torch, dilconv\n"
        "x = torch.randn(2, 24, 17, 19, requires_grad=True)\n"
        "for g, xx in ((24, x), (1, x), (24, x.contiguous(memory_format=torch.channels_last))):\n"
        "    w = torch.randn(24, 24 // g, 3, 3, requires_grad=True)\n"
        "    y = dilconv.functional.conv2d(xx, w, padding=2, dilation=2, groups=g, backend='cpu')\n"
        "    y.square().sum().backward()\n"
        "print(torch.ops.dilconv.cpu_isa())\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, f"rc {out.returncode}: {out.stderr[-2000:]}"
    assert out.stdout.strip().splitlines()[-1] == want


def test_cpu_vendor_matches_this_cpu():
    # the auto policy keys its GEMM-based choices on it (registry._cpu_gemm_paths_win)
    vendor = torch.ops.dilconv.cpu_vendor()
    assert vendor in ("intel", "amd", "other")
    try:
        with open("/proc/cpuinfo") as f:
            ids = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("vendor_id")]
    except OSError:
        ids = []
    if not ids:
        pytest.skip("no /proc/cpuinfo vendor_id here")
    assert vendor == {"GenuineIntel": "intel", "AuthenticAMD": "amd"}.get(ids[0], "other")


def _cases(seed, n):
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        cg, kg, g = rng.choice([(1, 1, 6), (1, 1, 19), (1, 2, 4), (2, 3, 2), (3, 5, 1), (4, 4, 3), (9, 2, 1)])
        r, s = rng.choice([(1, 1), (3, 3), (5, 5), (1, 7), (7, 1), (2, 4)])
        st = (rng.randint(1, 3), rng.randint(1, 3))
        d = rng.choice([(1, 1), (2, 2), (3, 1), (6, 6), (24, 24)])
        h, w = rng.randint(1, 20), rng.randint(1, 37)
        p = (rng.randint(0, d[0] * (r - 1) // 2 + 2), rng.randint(0, d[1] * (s - 1) // 2 + 2))
        if h + 2 * p[0] < d[0] * (r - 1) + 1 or w + 2 * p[1] < d[1] * (s - 1) + 1:
            continue
        layout = rng.choice(["nchw", "nhwc", "strided"])
        out.append((rng.randint(1, 2), cg * g, kg * g, g, (r, s), st, p, d, h, w, layout))
    return out


def _layout(t, layout):
    if layout == "nhwc":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # every stride unusual: a slice of a bigger tensor
        big = torch.randn(t.shape[0], t.shape[1] + 1, t.shape[2], t.shape[3] * 2 + 1, dtype=t.dtype)
        v = big[:, 1:, :, 1::2]
        v.copy_(t)
        return v
    return t


def _close(a, ref, tol):
    assert_close_rel(a, ref, tol, floor=1.0)


def _expected_format(t):
    return dilconv._ops.output_memory_format(t)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_conv_paths(isa, path, dtype):
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    count = 12 if isa == "native" else 5  # the other variants share the source: a smaller sample
    for (n, c, k, g, (r, s), st, p, d, h, w, layout) in _cases(zlib.crc32(f"{isa}{path}{dtype}".encode()), count):
        x = _layout(torch.randn(n, c, h, w, dtype=dtype), layout)
        wt = torch.randn(k, c // g, r, s, dtype=dtype)
        b = torch.randn(k, dtype=dtype)
        xr, wr = x.double().requires_grad_(), wt.double().requires_grad_()
        yr = F.conv2d(xr, wr, b.double(), st, p, d, g)
        gy = _layout(torch.randn(yr.shape, dtype=dtype), layout)
        yr.backward(gy.double())
        conf = (list(st), list(p), list(d), g)
        y = ops.conv2d(x, wt, b, *conf)
        # the clamp applied as the kernels store: ReLU-like and two-sided
        for lo, hi in ((0.0, float("inf")), (-0.5, 0.7)):
            yc = ops.conv2d_clamp(x, wt, b, *conf, lo, hi)
            _close(yc, yr.detach().clamp(lo, hi), tol)
            assert yc.is_contiguous(memory_format=_expected_format(x))
        gx = ops.conv2d_input_grad(gy, wt, list(x.shape), *conf)
        gw = ops.conv2d_weight_grad(gy, x, list(wt.shape), *conf)
        case = (n, c, k, g, (r, s), st, p, d, h, w, layout)
        for name, got, ref in (("y", y, yr.detach()), ("gx", gx, xr.grad), ("gw", gw, wr.grad)):
            assert got.dtype == dtype and got.shape == ref.shape, (name, case)
            try:
                _close(got, ref, tol)
            except AssertionError as e:
                raise AssertionError(f"{name} {case}: {e}") from None
        assert y.is_contiguous(memory_format=_expected_format(x))
        assert gx.is_contiguous(memory_format=_expected_format(gy))
        assert gw.is_contiguous()


@pytest.mark.parametrize("path_env", [None, "flat", "planar"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_depthwise_stride1_flat(isa, path_env, dtype, monkeypatch):
    """Stride-1 depthwise with <= 9 taps runs the flattened-window kernels in NCHW and the
    register-blocked channel-vectorised kernels in channels-last (forward, and the input
    gradient as a forward with flipped weights, and the weight gradient) where they compute fewer
    values than the general planar kernel; flat and planar force one or the other. Shapes: rows narrower and wider than a vector, 1xN and Nx1,
    multipliers, padding beyond what the taps need (negative padding in the input gradient),
    batch 2, planes split into several row units (P > L1 budget), 3x3 row bands (whole, partial, none),
    NCHW and strided views."""
    if path_env:
        monkeypatch.setenv("DILCONV_CPU_PATH", path_env)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    cases = [  # c, mult, (r, s), padding, dilation, h, w, layout
        (5, 1, (3, 3), (2, 2), (2, 2), 13, 33, "nchw"),
        (3, 2, (3, 3), (1, 1), (1, 1), 7, 5, "nchw"),
        (4, 1, (1, 7), (0, 3), (1, 1), 6, 40, "strided"),
        (2, 3, (7, 1), (6, 0), (2, 1), 17, 3, "nchw"),
        (3, 1, (3, 3), (5, 4), (1, 1), 9, 9, "nchw"),  # padding > (k - 1) * d
        (2, 1, (3, 2), (0, 0), (3, 4), 20, 19, "strided"),
        (1, 1, (3, 3), (1, 1), (1, 1), 160, 70, "nchw"),  # several row units per plane
        (6, 1, (2, 2), (1, 0), (1, 1), 1, 2, "nchw"),
        # 3x3 taps run bands of 4 * dilation output rows first: whole bands only, bands and
        # multiplier 2, fewer rows than a band
        (3, 1, (3, 3), (1, 1), (1, 1), 8, 21, "nchw"),
        (4, 2, (3, 3), (2, 2), (2, 2), 16, 19, "nchw"),
        (2, 1, (3, 3), (3, 3), (3, 3), 11, 10, "strided"),
        # channels-last, multiplier 1: the channel-vectorised kernels (register-blocked interior,
        # channel counts that are not a multiple of the vector, overlapping last vector)
        (19, 1, (3, 3), (2, 2), (2, 2), 11, 13, "nhwc"),
        (37, 1, (3, 3), (1, 1), (1, 1), 6, 9, "nhwc"),
        (40, 1, (1, 5), (0, 4), (1, 2), 5, 14, "nhwc"),
        (17, 1, (3, 3), (3, 3), (3, 3), 3, 12, "nhwc"),  # no row has every tap inside
    ]
    for c, mult, (r, s), p, d, h, w, layout in cases:
        x = _layout(torch.randn(2, c, h, w, dtype=dtype), layout)
        wt = torch.randn(c * mult, 1, r, s, dtype=dtype)
        b = torch.randn(c * mult, dtype=dtype)
        xr, wr = x.double().requires_grad_(), wt.double().requires_grad_()
        yr = F.conv2d(xr, wr, b.double(), 1, p, d, c)
        gy = _layout(torch.randn(yr.shape, dtype=dtype), layout)
        yr.backward(gy.double())
        conf = ([1, 1], list(p), list(d), c)
        got = {"y": ops.conv2d(x, wt, b, *conf),
               "gx": ops.conv2d_input_grad(gy, wt, list(x.shape), *conf),
               "gw": ops.conv2d_weight_grad(gy, x, list(wt.shape), *conf)}
        for name, ref in (("y", yr.detach()), ("gx", xr.grad), ("gw", wr.grad)):
            try:
                _close(got[name], ref, tol)
            except AssertionError as e:
                raise AssertionError(f"{name} {(c, mult, (r, s), p, d, h, w, layout)}: {e}") from None


@pytest.mark.parametrize("path_env", [None, "planar"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_conv2d_backward(isa, path_env, dtype, monkeypatch):
    """conv2d_backward, the whole backward in one call: stride-1 "same"-size depthwise convs take
    the fused kernels (NCHW: one packing of gy per channel serves all three gradients;
    channels-last: rows walked a few at a time, gy re-read from the L2), everything else the
    separate gradients. Every output_mask, against float64 autograd; shapes on both sides of
    every fused-path condition (multiplier, stride, output size, tap count, layout), batch 0 and 2,
    planes wider than a vector and narrower, 1xN and Nx1, strided views."""
    if path_env:
        monkeypatch.setenv("DILCONV_CPU_PATH", path_env)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    cases = [  # n, c, mult, (r, s), stride, padding, dilation, h, w, layout
        (1, 5, 1, (3, 3), 1, (2, 2), (2, 2), 13, 33, "nchw"),  # fused
        (2, 3, 1, (1, 3), 1, (0, 3), (1, 3), 7, 20, "strided"),  # fused, 1xN
        (2, 4, 1, (5, 1), 1, (4, 0), (2, 1), 9, 4, "nchw"),  # fused, Nx1, narrow rows
        (1, 6, 1, (3, 3), 1, (1, 1), (1, 1), 40, 70, "nchw"),  # fused, several vectors a row
        # fused, planes worked in chunks of rows (whole bands each, the last with a tail)
        (2, 3, 1, (3, 3), 1, (2, 2), (2, 2), 47, 61, "nchw"),
        (1, 4, 1, (3, 3), 1, (1, 1), (1, 1), 50, 45, "strided"),
        (1, 2, 1, (3, 3), 1, (1, 1), (1, 1), 300, 5, "nchw"),  # rows narrower than the overrun
        (2, 19, 1, (3, 3), 1, (2, 2), (2, 2), 11, 13, "nhwc"),  # fused channels-last
        (1, 40, 1, (1, 5), 1, (0, 4), (1, 2), 5, 14, "nhwc"),  # fused channels-last
        (2, 3, 2, (3, 3), 1, (1, 1), (1, 1), 7, 5, "nchw"),  # multiplier 2: separate
        (1, 4, 1, (3, 3), 2, (1, 1), (1, 1), 9, 9, "nchw"),  # stride 2: separate
        (1, 17, 1, (3, 3), 2, (2, 2), (2, 2), 9, 9, "nhwc"),  # stride 2: separate
        (1, 3, 1, (3, 3), 1, (3, 2), (1, 1), 6, 8, "nchw"),  # output larger than the input
        (1, 3, 1, (3, 3), 1, (0, 0), (1, 1), 6, 8, "nhwc"),  # output smaller
        (1, 2, 1, (5, 5), 1, (2, 2), (1, 1), 8, 8, "nchw"),  # 25 taps: separate
        (0, 4, 1, (3, 3), 1, (1, 1), (1, 1), 5, 5, "nchw"),  # empty batch
    ]
    for n, c, mult, (r, s), st, p, d, h, w, layout in cases:
        x = _layout(torch.randn(n, c, h, w, dtype=dtype), layout)
        wt = torch.randn(c * mult, 1, r, s, dtype=dtype)
        xr, wr = x.double().requires_grad_(), wt.double().requires_grad_()
        yr = F.conv2d(xr, wr, None, st, p, d, c)
        gy = _layout(torch.randn(yr.shape, dtype=dtype), layout)
        yr.backward(gy.double())
        refs = (xr.grad, wr.grad, gy.double().sum((0, 2, 3)))
        conf = ([st, st], list(p), list(d), c)
        for mask in ([True, True, True], [True, False, False], [False, True, False],
                     [False, False, True], [True, False, True], [False, True, True]):
            got = ops.conv2d_backward(gy, x, wt, *conf, mask)
            for i, (name, ref) in enumerate(zip(("gx", "gw", "gb"), refs)):
                if not mask[i]:
                    assert got[i] is None
                    continue
                assert got[i].dtype == dtype and got[i].shape == ref.shape
                if name == "gx":
                    assert got[i].is_contiguous(memory_format=_expected_format(gy))
                try:
                    _close(got[i], ref, tol)
                except AssertionError as e:
                    raise AssertionError(f"{name} {mask} {(n, c, mult, (r, s), st, p, d, h, w, layout)}: {e}") from None


@pytest.mark.parametrize("case", [
    # c, k, g, kernel, stride, padding, output_padding, dilation, h, w
    (4, 6, 1, (4, 4), (2, 2), (1, 1), (0, 0), (1, 1), 5, 7),
    (6, 6, 6, (3, 3), (2, 1), (1, 0), (1, 0), (1, 2), 6, 4),
    (4, 8, 2, (3, 5), (3, 2), (2, 1), (2, 1), (1, 1), 3, 5),
    (3, 2, 1, (3, 3), (1, 1), (0, 0), (1, 1), (2, 2), 4, 4),  # output_padding >= stride
    (2, 4, 2, (1, 7), (1, 1), (0, 3), (0, 0), (1, 1), 5, 9),
    # depthwise stride 2 (the input gradient by gathering), with and without output padding
    (6, 6, 6, (3, 3), (2, 2), (1, 1), (1, 1), (1, 1), 6, 5),
    (4, 4, 4, (2, 2), (2, 2), (0, 0), (0, 0), (1, 1), 5, 6),
    # FCN's upsampling (the channels-last GEMM path: 16 + 5 channels a pixel, whole vectors and
    # a tail), U-Net's 2x2 stride 2 (no two taps meet), grouped (19 output channels a group)
    (21, 21, 1, (4, 4), (2, 2), (1, 1), (0, 0), (1, 1), 9, 11),
    (40, 24, 1, (2, 2), (2, 2), (0, 0), (0, 0), (1, 1), 6, 7),
    (70, 38, 2, (3, 3), (3, 2), (1, 2), (2, 1), (2, 1), 5, 6),
    # 1x1 with output padding beyond the stride: the output has a column no input pixel reaches
    # (the pointwise GEMMs, taken for > 8 output channels, had read past the input there)
    (28, 16, 1, (1, 1), (1, 1), (0, 0), (0, 1), (3, 2), 6, 13),
])
def test_conv_transpose(path, case):
    c, k, g, ks, st, p, op, d, h, w = case
    x = torch.randn(2, c, h, w)
    wt = torch.randn(c, k // g, *ks)
    b = torch.randn(k)
    ref = F.conv_transpose2d(x.double(), wt.double(), b.double(), st, p, op, g, d)
    y = ops.conv_transpose2d(x, wt, b, list(st), list(p), list(op), g, list(d))
    _close(y, ref, 1e-5)
    ycl = ops.conv_transpose2d(x.contiguous(memory_format=torch.channels_last), wt, b, list(st),
                               list(p), list(op), g, list(d))
    _close(ycl, ref, 1e-5)
    assert ycl.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("case", [
    # c, k, kernel, stride, padding, dilation, h, w: channels-last gradients of strided convs
    # without groups (the GEMM paths: use_strided_gemm_nhwc), maps tall enough for several
    # row steps a thread in the weight gradient (partial sums carried over)
    (3, 32, (3, 3), (2, 2), (1, 1), (1, 1), 61, 203),  # a stem: more output channels than taps
    (4, 9, (5, 5), (2, 2), (2, 2), (1, 1), 90, 90),  # more taps (100) than output channels
    (3, 8, (2, 2), (2, 2), (0, 0), (1, 1), 20, 30),  # 12 taps, 8 outputs: under a vector
    (8, 16, (3, 1), (3, 2), (2, 0), (2, 1), 30, 41),
    (1, 16, (3, 3), (2, 2), (1, 1), (1, 1), 30, 31),  # one input channel (direct kernels)
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_strided_channels_last_gradients(isa, case, dtype):
    c, k, ks, st, p, d, h, w = case
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    x = torch.randn(2, c, h, w, dtype=dtype).contiguous(memory_format=torch.channels_last)
    wt = torch.randn(k, c, *ks, dtype=dtype)
    xr, wr = x.double().requires_grad_(), wt.double().requires_grad_()
    yr = F.conv2d(xr, wr, None, st, p, d)
    gy = torch.randn(yr.shape, dtype=dtype).contiguous(memory_format=torch.channels_last)
    yr.backward(gy.double())
    conf = (list(st), list(p), list(d), 1)
    gx = ops.conv2d_input_grad(gy, wt, list(x.shape), *conf)
    gw = ops.conv2d_weight_grad(gy, x, list(wt.shape), *conf)
    _close(gx, xr.grad, tol)
    _close(gw, wr.grad, tol)
    assert gx.is_contiguous(memory_format=torch.channels_last)
    # the transposed conv of the same geometry: its forward is this input gradient
    yt = ops.conv_transpose2d(gy, wt, None, list(st), list(p), [0, 0], 1, list(d))
    ref = F.conv_transpose2d(gy.double(), wt.double(), None, st, p, 0, 1, d)
    _close(yt, ref, tol)


@pytest.mark.parametrize("case", [
    # c, h, w, padding, dilation: channels-last depthwise 3x3, stride 1, where the interior
    # pixels (all nine taps inside) go by register blocks (kernels_impl.h nhwc_3x3_rows, AVX-512
    # on AMD): whole groups of 4 x dilation pixels and partial ones, rows of one phase in blocks
    # of 1-4, a last channel vector overlapping the one before (c not a multiple of 16 / 8)
    (64, 21, 35, (2, 2), (2, 2)),  # 31 interior pixels: 3 groups of 8, then 4 + 3 by phase
    (72, 13, 40, (1, 1), (1, 1)),
    (130, 19, 33, (3, 2), (3, 2)),  # rows and columns of different dilations
    (96, 17, 30, (0, 4), (1, 3)),  # no padding in rows: a smaller output
    (48, 9, 31, (2, 2), (2, 2)),  # (float32: three vectors, the row-blocked kernel)
    (1024, 40, 44, (2, 2), (2, 2)),  # x and y past 20 MiB: blocks prefetching the next one
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_channels_last_depthwise_blocks(isa, case, dtype):
    c, h, w, p, d = case
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    x = torch.randn(2, c, h, w, dtype=dtype).contiguous(memory_format=torch.channels_last)
    wt, b = torch.randn(c, 1, 3, 3, dtype=dtype), torch.randn(c, dtype=dtype)
    xr, wr = x.double().requires_grad_(), wt.double().requires_grad_()
    yr = F.conv2d(xr, wr, b.double(), 1, p, d, c)
    conf = ([1, 1], list(p), list(d), c)
    _close(ops.conv2d(x, wt, b, *conf), yr, tol)
    _close(ops.conv2d_clamp(x, wt, b, *conf, 0.0, 6.0), yr.clamp(0, 6), tol)
    gy = torch.randn(yr.shape, dtype=dtype).contiguous(memory_format=torch.channels_last)
    yr.backward(gy.double())
    gx, gw, _ = ops.conv2d_backward(gy, x, wt, *conf, [True, True, False])
    _close(gx, xr.grad, tol)  # (the input gradient: the same kernel on gy, flipped weights)
    _close(gw, wr.grad, tol)


def _sep_ref(x, dw, dwb, pw, pwb, st, p, d, mid_relu, out_relu):
    mid = F.conv2d(x, dw, dwb, st, p, d, x.shape[1])
    if mid_relu:
        mid = mid.relu()
    out = F.conv2d(mid, pw, pwb)
    return out.relu() if out_relu else out


@pytest.mark.parametrize("mid_relu,out_relu", [(False, False), (True, True), (True, False)])
@pytest.mark.parametrize("layout", ["nchw", "nhwc", "strided"])
def test_separable(mid_relu, out_relu, layout):
    # (40 mid channels: the pointwise half's gradients take conv2d's pointwise paths)
    for (c, m, k, ks, st, p, d, bias) in [(5, 1, 7, (3, 3), (1, 1), (2, 2), (2, 2), True),
                                           (4, 2, 3, (1, 7), (2, 1), (0, 3), (1, 1), False),
                                           (3, 1, 16, (5, 5), (1, 2), (6, 6), (3, 3), True),
                                           (20, 2, 24, (3, 3), (1, 1), (2, 2), (2, 2), True)]:
        x = _layout(torch.randn(2, c, 9, 11), layout)
        dw, pw = torch.randn(c * m, 1, *ks), torch.randn(k, c * m, 1, 1)
        dwb = torch.randn(c * m) if bias else None
        pwb = torch.randn(k) if bias else None
        args64 = [t.double().requires_grad_() if t is not None else None for t in (x, dw, dwb, pw, pwb)]
        ref = _sep_ref(*args64, st, p, d, mid_relu, out_relu)
        conf = (list(st), list(p), list(d), mid_relu, out_relu)
        y = ops.separable_conv2d(x, dw, dwb, pw, pwb, *conf)
        _close(y, ref.detach(), 1e-5)
        assert y.is_contiguous(memory_format=_expected_format(x))
        gy = _layout(torch.randn(ref.shape), layout)
        ref.backward(gy.double())
        grads = ops.separable_conv2d_backward(gy, x, dw, dwb, pw, pwb, *conf)
        for got, t in zip(grads, args64):
            if t is not None:
                _close(got, t.grad, 1e-5)
        assert grads[0].is_contiguous(memory_format=_expected_format(gy))


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("path_env", [None, "pointwise", "bcast"])
def test_separable_fused_forward_tiles(path_env, layout, monkeypatch):
    # the fused forward in 8 MB tiles of output rows (300 mid channels x 129 columns: 54 rows a
    # tile, 3 tiles), its NCHW tile's rows padded to an odd number of cache lines, the pointwise
    # GEMM by BLAS (pointwise) or gemm_bcast (bcast; the default off Intel) over sums of 300
    # channels (two passes) and 129-pixel rows (a last partial vector); channels-last, gemm_bcast
    # over chunks of a tile's pixels (64 chunks of ~108 pixels, edges at whole 6-row tiles) into
    # 21 output channels (a vector and a last partial one)
    if path_env:
        monkeypatch.setenv("DILCONV_CPU_PATH", path_env)
    x = _layout(torch.randn(1, 300, 120, 129), layout)
    dw, dwb = torch.randn(300, 1, 3, 3), torch.randn(300)
    pw, pwb = torch.randn(21, 300, 1, 1) / 10, torch.randn(21)
    ref = _sep_ref(*(t.double() for t in (x, dw, dwb, pw, pwb)), (1, 1), (2, 2), (2, 2), True, True)
    y = ops.separable_conv2d(x, dw, dwb, pw, pwb, [1, 1], [2, 2], [2, 2], True, True)
    _close(y, ref, 1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_fp32_accumulation(dtype):
    x = torch.randn(1, 8, 12, 12, dtype=dtype)
    for g, k in ((8, 8), (2, 6), (1, 16)):
        wt = torch.randn(k, 8 // g, 3, 3, dtype=dtype)
        ref = F.conv2d(x.double(), wt.double(), None, 1, 2, 2, g)
        y = ops.conv2d(x, wt, None, [1, 1], [2, 2], [2, 2], g)
        assert y.dtype == dtype
        _close(y, ref, 1e-2)


def test_batch_zero_and_empty():
    x = torch.randn(0, 4, 8, 8)
    wt = torch.randn(4, 1, 3, 3)
    assert ops.conv2d(x, wt, None, [1, 1], [1, 1], [1, 1], 4).shape == (0, 4, 8, 8)
    gy = torch.randn(0, 4, 8, 8)
    assert ops.conv2d_input_grad(gy, wt, [0, 4, 8, 8], [1, 1], [1, 1], [1, 1], 4).shape == (0, 4, 8, 8)
    gw = ops.conv2d_weight_grad(gy, x, [4, 1, 3, 3], [1, 1], [1, 1], [1, 1], 4)
    assert gw.shape == (4, 1, 3, 3) and (gw == 0).all()


@pytest.mark.parametrize("call", [
    lambda: ops.conv2d(torch.randn(1, 4, 8, 8), torch.randn(4, 2, 3, 3), None, [1, 1], [1, 1], [1, 1], 1),
    lambda: ops.conv2d(torch.randn(1, 4, 8), torch.randn(4, 4, 3, 3), None, [1, 1], [1, 1], [1, 1], 1),
    lambda: ops.conv2d(torch.randn(1, 4, 8, 8), torch.randn(4, 4, 3, 3), torch.randn(3), [1, 1], [1, 1], [1, 1], 1),
    lambda: ops.conv2d(torch.randn(1, 4, 8, 8), torch.randn(4, 4, 3, 3).double(), None, [1, 1], [1, 1], [1, 1], 1),
    lambda: ops.conv2d(torch.randn(1, 4, 8, 8), torch.randn(4, 4, 3, 3), None, [0, 1], [1, 1], [1, 1], 1),
    lambda: ops.conv2d(torch.randn(1, 4, 8, 8), torch.randn(4, 4, 3, 3), None, [1, 1], [-1, 1], [1, 1], 1),
    lambda: ops.conv2d(torch.randn(1, 4, 2, 2), torch.randn(4, 4, 3, 3), None, [1, 1], [0, 0], [1, 1], 1),
    lambda: ops.conv2d(torch.randn(1, 4, 8, 8), torch.randn(4, 4, 3, 3), None, [1, 1], [1, 1], [1, 1], 0),
    lambda: ops.conv2d(torch.randint(0, 3, (1, 4, 8, 8)), torch.randint(0, 3, (4, 4, 3, 3)), None, [1, 1], [1, 1], [1, 1], 1),
    lambda: ops.conv2d_input_grad(torch.randn(1, 4, 9, 9), torch.randn(4, 4, 3, 3), [1, 4, 8, 8], [1, 1], [1, 1], [1, 1], 1),
    lambda: ops.conv2d_input_grad(torch.randn(1, 4, 8, 8), torch.randn(4, 4, 3, 3), [1, 4, 8], [1, 1], [1, 1], [1, 1], 1),
    lambda: ops.conv2d_weight_grad(torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8), [4, 2, 3, 3], [1, 1], [1, 1], [1, 1], 1),
    lambda: ops.conv2d_weight_grad(torch.randn(2, 4, 8, 8), torch.randn(1, 4, 8, 8), [4, 4, 3, 3], [1, 1], [1, 1], [1, 1], 1),
    lambda: ops.conv_transpose2d(torch.randn(1, 4, 8, 8), torch.randn(3, 4, 3, 3), None, [1, 1], [0, 0], [0, 0], 1, [1, 1]),
    lambda: ops.conv_transpose2d(torch.randn(1, 4, 8, 8), torch.randn(4, 4, 3, 3), None, [1, 1], [0, 0], [1, 1], 1, [1, 1]),
    lambda: ops.separable_conv2d(torch.randn(1, 4, 8, 8), torch.randn(6, 1, 3, 3), None, torch.randn(5, 6, 1, 1), None, [1, 1], [1, 1], [1, 1], False, False),
    lambda: ops.separable_conv2d(torch.randn(1, 4, 8, 8), torch.randn(4, 1, 3, 3), None, torch.randn(5, 3, 1, 1), None, [1, 1], [1, 1], [1, 1], False, False),
    lambda: ops.separable_conv2d_backward(torch.randn(1, 5, 7, 8), torch.randn(1, 4, 8, 8), torch.randn(4, 1, 3, 3), None, torch.randn(5, 4, 1, 1), None, [1, 1], [1, 1], [1, 1], False, False),
])
def test_bad_direct_calls_raise(call):
    with pytest.raises(RuntimeError):
        call()


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_opcheck(layout):
    x = _layout(torch.randn(2, 4, 7, 9, dtype=torch.float64), layout).requires_grad_()
    wt = torch.randn(8, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(8, dtype=torch.float64, requires_grad=True)
    gy = _layout(torch.randn(2, 8, 4, 4, dtype=torch.float64), layout)
    conf = ([2, 2], [2, 1], [2, 2], 2)
    torch.library.opcheck(ops.conv2d.default, (x, wt, b, *conf))
    torch.library.opcheck(ops.conv2d_input_grad.default, (gy, wt, list(x.shape), *conf))
    torch.library.opcheck(ops.conv2d_weight_grad.default, (gy, x, list(wt.shape), *conf))
    torch.library.opcheck(ops.conv2d_backward.default, (gy, x, wt, *conf, [True, True, True]))
    torch.library.opcheck(ops.conv2d_backward.default, (gy, x, wt, *conf, [False, True, False]))
    # the fused depthwise kernels, and double backward through them
    dwx = _layout(torch.randn(2, 6, 9, 11, dtype=torch.float64), layout).requires_grad_()
    dww = torch.randn(6, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    dgy = _layout(torch.randn(2, 6, 9, 11, dtype=torch.float64), layout).requires_grad_()
    dconf = ([1, 1], [2, 2], [2, 2], 6)
    torch.library.opcheck(ops.conv2d_backward.default, (dgy, dwx, dww, *dconf, [True, True, True]))
    torch.library.opcheck(ops.conv2d_backward.default, (dgy, dwx, dww, *dconf, [True, False, True]))
    assert torch.autograd.gradgradcheck(
        lambda a, b: ops.conv2d(a, b, None, *dconf), (dwx, dww), fast_mode=True)
    wt_t = torch.randn(4, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(ops.conv_transpose2d.default,
                          (x, wt_t, None, [2, 2], [1, 1], [1, 0], 1, [1, 1]))
    dw = torch.randn(8, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    pw = torch.randn(5, 8, 1, 1, dtype=torch.float64, requires_grad=True)
    pb = torch.randn(5, dtype=torch.float64, requires_grad=True)
    sconf = ([1, 1], [2, 2], [2, 2], True, True)
    torch.library.opcheck(ops.separable_conv2d.default, (x, dw, None, pw, pb, *sconf))
    gs = _layout(torch.randn(2, 5, 7, 9, dtype=torch.float64), layout)
    torch.library.opcheck(ops.separable_conv2d_backward.default,
                          (gs, x.detach(), dw.detach(), None, pw.detach(), pb.detach(), *sconf),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("c,dtype", [(3, torch.float64), (19, torch.float64), (40, torch.float64),
                                     (64, torch.float64), (160, torch.float64), (256, torch.float64),
                                     (300, torch.float32), (512, torch.float32)],
                         ids=str)
def test_depthwise_channels_last(isa, c, dtype):
    """The channel-vectorised depthwise kernels: channel counts below, between and at multiples
    of the vector width (overlapping last vector), strides, dilation, padding beyond the kernel
    (output pixels that read no input: the bias alone), 7x7 and 3x11 (more taps than the kernels
    keep in registers: the weight gradient by tap rows, resp. 9 and 2 taps of a row, at a time;
    border runs of 4-6 columns and rows).
    Pixel strides of 2 KiB (256 doubles, 512 floats) take the channels-inner interior
    (nhwc_row_channels_inner); wide pixels (160 doubles, 300 floats: >= 1152 bytes) one row at a
    time in the AVX-512 variant, four rows of a phase elsewhere."""
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for (ks, st, p, d, h, w) in [((3, 3), (1, 1), (2, 2), (2, 2), 9, 11), ((5, 3), (2, 3), (1, 4), (1, 2), 10, 13),
                                 ((1, 7), (1, 1), (0, 3), (1, 1), 4, 9), ((3, 3), (1, 1), (24, 24), (24, 24), 5, 6),
                                 ((7, 7), (1, 1), (3, 3), (1, 1), 9, 10), ((3, 3), (1, 1), (3, 4), (1, 1), 4, 5),
                                 ((3, 11), (1, 1), (1, 5), (1, 1), 5, 14)]:
        x = torch.randn(2, c, h, w, dtype=dtype).contiguous(memory_format=torch.channels_last)
        wt = torch.randn(c, 1, *ks, dtype=dtype)
        b = torch.randn(c, dtype=dtype)
        xr, wr = x.double().requires_grad_(), wt.double().requires_grad_()
        br = b.double().requires_grad_()
        yr = F.conv2d(xr, wr, br, st, p, d, c)
        gy = torch.randn(yr.shape, dtype=dtype).contiguous(memory_format=torch.channels_last)
        yr.backward(gy.double())
        conf = (list(st), list(p), list(d), c)
        _close(ops.conv2d(x, wt, b, *conf), yr.detach(), tol)
        _close(ops.conv2d_input_grad(gy, wt, list(x.shape), *conf), xr.grad, tol)
        _close(ops.conv2d_weight_grad(gy, x, list(wt.shape), *conf), wr.grad, tol)
        # the backward op: fused (input gradient, then weight and bias gradients by chunks of
        # rows) where the output has the input's size, whichever gradients are asked for
        for mask in ([True, True, True], [False, True, True], [True, False, True]):
            got = ops.conv2d_backward(gy, x, wt, *conf, mask)
            for g, ref, m in zip(got, (xr.grad, wr.grad, br.grad), mask):
                assert (g is None) == (not m)
                if m:
                    _close(g, ref, tol)


def test_depthwise_channels_last_streaming(isa):
    """Tensors beyond the channels-last kernels' streaming threshold (x and y together over
    20 MiB: 8-pixel chunks with the next chunk prefetched, forward and weight gradient) against
    float64: 40 channels (an overlapping last vector), 3x3 dilation 2, a row of 260 pixels
    (32 whole chunks and a 4-pixel tail in the interior), the fused backward."""
    c, h, w = 40, 264, 260
    x = torch.randn(1, c, h, w).contiguous(memory_format=torch.channels_last)
    assert 2 * x.numel() * 4 > 20 << 20
    wt = torch.randn(c, 1, 3, 3)
    b = torch.randn(c)
    xr, wr, br = x.double().requires_grad_(), wt.double().requires_grad_(), b.double().requires_grad_()
    yr = F.conv2d(xr, wr, br, 1, 2, 2, c)
    gy = torch.randn(yr.shape).contiguous(memory_format=torch.channels_last)
    yr.backward(gy.double())
    conf = ([1, 1], [2, 2], [2, 2], c)
    _close(ops.conv2d(x, wt, b, *conf), yr.detach(), 1e-5)
    _close(ops.conv2d_weight_grad(gy, x, list(wt.shape), *conf), wr.grad, 1e-5)
    gx, gw, gb = ops.conv2d_backward(gy, x, wt, *conf, [True, True, True])
    _close(gx, xr.grad, 1e-5)
    _close(gw, wr.grad, 1e-5)
    _close(gb, br.grad, 1e-5)


@pytest.mark.parametrize("cg", [2, 4, 8, 16])
def test_grouped_channels_last(isa, cg):
    """The channel-vectorised grouped kernels (cg channels in and out a group, channels-last):
    forward, input gradient (stride 1 as a forward with flipped weights; stride 2 falls back)
    and weight gradient against float64 autograd, with channel counts below one vector (the
    planar fallback), at and between multiples of it (overlapping last vector, masked in the
    weight gradient), strides, dilation, 1xN, padding beyond the kernel, batch 2, float32 and
    float64, ReLU-like and two-sided clamps."""
    for dtype, tol in ((torch.float32, 1e-5), (torch.float64, 1e-12)):
        for c in (cg * 3, cg * 5, 48 if cg < 16 else 64, 80):
            for (ks, st, p, d, h, w) in [((3, 3), (1, 1), (1, 1), (1, 1), 9, 11),
                                         ((3, 3), (1, 1), (2, 2), (2, 2), 7, 13),
                                         ((3, 3), (2, 2), (1, 1), (1, 1), 10, 9),
                                         ((1, 5), (1, 2), (0, 4), (1, 2), 5, 14),
                                         ((3, 3), (1, 1), (4, 5), (1, 1), 4, 6)]:
                case = (dtype, c, ks, st, p, d, h, w)
                x = torch.randn(2, c, h, w, dtype=dtype).contiguous(memory_format=torch.channels_last)
                wt = torch.randn(c, cg, *ks, dtype=dtype)
                b = torch.randn(c, dtype=dtype)
                xr, wr = x.double().requires_grad_(), wt.double().requires_grad_()
                yr = F.conv2d(xr, wr, b.double(), st, p, d, c // cg)
                gy = torch.randn(yr.shape, dtype=dtype).contiguous(memory_format=torch.channels_last)
                yr.backward(gy.double())
                conf = (list(st), list(p), list(d), c // cg)
                got = {"y": ops.conv2d(x, wt, b, *conf),
                       "y relu": ops.conv2d_clamp(x, wt, b, *conf, 0.0, float("inf")),
                       "y clamp": ops.conv2d_clamp(x, wt, b, *conf, -0.5, 0.7),
                       "gx": ops.conv2d_input_grad(gy, wt, list(x.shape), *conf),
                       "gw": ops.conv2d_weight_grad(gy, x, list(wt.shape), *conf)}
                refs = {"y": yr.detach(), "y relu": yr.detach().clamp(0), "y clamp": yr.detach().clamp(-0.5, 0.7),
                        "gx": xr.grad, "gw": wr.grad}
                for name, ref in refs.items():
                    try:
                        _close(got[name], ref, tol)
                    except AssertionError as e:
                        raise AssertionError(f"{name} {case}: {e}") from None
                assert got["y"].is_contiguous(memory_format=torch.channels_last)
                assert got["gx"].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("avx512,intel", [(True, True), (True, False), (False, True),
                                          (False, False)])
def test_auto_policy_routes_by_measured_wins(avx512, intel, monkeypatch):
    from dilconv import registry
    from dilconv.registry import Problem, cpu_auto_policy
    # the GEMM-based choices (1x1, dense per-tap, transposed) follow the machine (an AVX-512
    # Intel CPU or not), and where oneDNN's depthwise is slow its ISA (AVX-512 or not)
    monkeypatch.setattr(registry, "_AVX512", avx512)
    monkeypatch.setattr(registry, "_INTEL", intel)
    gemm_wins = avx512 and intel

    def prob(c, k, hw, d, groups, grad=False, cl=False, stride=1, dtype=torch.float32, n=1):
        return Problem("conv2d", "cpu", dtype, n, c, hw, hw, k, 3, 3, (stride, stride), (d, d), (d, d),
                       groups, cl, n * c * hw * hw, grad)

    assert cpu_auto_policy(prob(2048, 256, 33, 24, 1)) == gemm_wins  # ASPP: most taps read padding
    assert not cpu_auto_policy(prob(2048, 256, 33, 24, 1, cl=True))  # ... but not channels-last
    assert not cpu_auto_policy(prob(2048, 256, 33, 6, 1))       # dense, small rate: oneDNN
    assert not cpu_auto_policy(prob(64, 64, 65, 16, 1))         # small GEMMs: oneDNN
    assert cpu_auto_policy(prob(728, 728, 65, 2, 728))          # NCHW depthwise: ours
    assert cpu_auto_policy(prob(728, 728, 65, 2, 728, grad=True))
    seven = dataclasses.replace(prob(96, 96, 65, 1, 96), r=7, s=7, padding=(3, 3))
    assert not cpu_auto_policy(seven)  # 7x7 forward: oneDNN, but not where it is slow
    assert cpu_auto_policy(dataclasses.replace(seven, dilation=(3, 3), padding=(9, 9)))
    # 7x7 rate 2, 5x5 rate 3 (padding 6): oneDNN's slow kernel with AVX2, its fast one with AVX-512
    assert cpu_auto_policy(dataclasses.replace(seven, dilation=(2, 2), padding=(6, 6))) != avx512
    five = dataclasses.replace(seven, r=5, s=5, dilation=(3, 3), padding=(6, 6))
    assert cpu_auto_policy(five) != avx512
    assert cpu_auto_policy(dataclasses.replace(five, dilation=(4, 4), padding=(8, 8)))
    # channels-last forward: oneDNN, but where x and y stream from memory (over 20 MiB) on maps
    # of 64x64 and more, and 3x3 in the cache (up to 16 MiB) with 4+ vectors of channels on maps
    # of 32x32 and more, ours on an AVX-512 CPU other than Intel's
    streams = blocks = avx512 and not intel
    assert cpu_auto_policy(prob(728, 728, 65, 2, 728, cl=True)) == streams  # 24.6 MB
    assert cpu_auto_policy(prob(144, 144, 129, 1, 144, cl=True, n=16)) == streams
    assert not cpu_auto_policy(prob(960, 960, 33, 2, 960, cl=True, n=16))  # 33x33 map
    assert not cpu_auto_policy(prob(960, 960, 33, 2, 960, cl=True, n=4))  # 16.7 MB
    assert cpu_auto_policy(prob(960, 960, 33, 2, 960, cl=True)) == blocks  # 8.4 MB: in the cache
    assert cpu_auto_policy(prob(256, 256, 65, 4, 256, cl=True)) == blocks
    assert cpu_auto_policy(prob(384, 384, 33, 1, 384, cl=True, n=2)) == blocks
    assert not cpu_auto_policy(prob(2048, 2048, 17, 2, 2048, cl=True))  # a 17x17 map
    assert not cpu_auto_policy(prob(48, 48, 65, 1, 48, cl=True))  # three vectors of channels
    assert not cpu_auto_policy(prob(144, 144, 129, 1, 144, cl=True))  # 19 MB
    # ... and where oneDNN's is slow: dilated with padding >= 5 (AVX2) or >= 7 (AVX-512)
    assert cpu_auto_policy(prob(256, 256, 65, 5, 256, cl=True)) == (not avx512 or blocks)
    assert cpu_auto_policy(prob(256, 256, 65, 6, 256, cl=True)) == (not avx512 or blocks)
    assert cpu_auto_policy(prob(256, 256, 65, 7, 256, cl=True))
    assert cpu_auto_policy(prob(64, 64, 65, 5, 64, cl=True, stride=2)) != avx512
    assert cpu_auto_policy(prob(64, 64, 65, 7, 64, cl=True, stride=2))
    assert cpu_auto_policy(prob(728, 728, 65, 2, 728, cl=True, grad=True))  # its backward: ours
    assert not cpu_auto_policy(prob(144, 144, 129, 1, 144, cl=True, grad=True))  # undilated: oneDNN
    assert cpu_auto_policy(prob(144, 144, 129, 1, 144, cl=True, grad=True, n=2))  # ... at batch 1
    assert cpu_auto_policy(prob(96, 96, 257, 1, 96, stride=2))    # stride 2, NCHW: ours
    assert cpu_auto_policy(prob(144, 144, 129, 1, 144, stride=2, grad=True, n=2))
    assert not cpu_auto_policy(prob(96, 96, 13, 1, 96, stride=2))  # 7x7 output: oneDNN
    assert not cpu_auto_policy(prob(96, 96, 257, 1, 96, stride=3))  # not measured: oneDNN
    assert not cpu_auto_policy(prob(96, 96, 257, 1, 96, stride=2, cl=True))  # channels-last
    assert not cpu_auto_policy(prob(96, 96, 257, 1, 96, stride=2, grad=True, cl=True))
    # grouped: NCHW <= 4 channels a group; channels-last 2 or 4 in and out a group (stride-2
    # backward, 8 a group and 7x7 maps: oneDNN)
    assert cpu_auto_policy(prob(128, 128, 56, 1, 32))
    assert cpu_auto_policy(prob(128, 128, 56, 1, 32, cl=True, grad=True))
    assert cpu_auto_policy(prob(64, 64, 56, 1, 32, cl=True))
    assert cpu_auto_policy(prob(128, 128, 56, 1, 32, cl=True, stride=2))
    assert not cpu_auto_policy(prob(128, 128, 56, 1, 32, cl=True, stride=2, grad=True))
    assert not cpu_auto_policy(prob(256, 256, 56, 1, 32, cl=True))
    assert not cpu_auto_policy(prob(128, 256, 56, 1, 32, cl=True))  # 4 in, 8 out a group
    assert not cpu_auto_policy(prob(128, 128, 7, 1, 32, cl=True))
    assert cpu_auto_policy(prob(144, 144, 129, 1, 144, stride=2, grad=True, n=2, cl=True))
    assert cpu_auto_policy(prob(128, 128, 56, 1, 32))           # ResNeXt 32x4d stage 1
    assert not cpu_auto_policy(prob(256, 256, 28, 1, 32))       # 8 channels per group: oneDNN
    assert not cpu_auto_policy(prob(728, 728, 65, 2, 728, dtype=torch.bfloat16))

    def pointwise(c, k, hw, grad=False, cl=False, n=1):
        return Problem("conv2d", "cpu", torch.float32, n, c, hw, hw, k, 1, 1, (1, 1), (0, 0), (1, 1),
                       1, cl, max(c, k) * hw * hw, grad)

    # NCHW 1x1: MKL's GEMMs on an AVX-512 Intel CPU, the register-tiled kernel on an AVX-512
    # AMD one (training up to 1280 -> 256 channels), oneDNN elsewhere
    assert cpu_auto_policy(pointwise(16, 96, 257)) == cpu_auto_policy(pointwise(24, 144, 129)) == avx512
    assert cpu_auto_policy(pointwise(32, 192, 65, grad=True)) == avx512  # expansion, training
    assert cpu_auto_policy(pointwise(576, 160, 33, grad=True)) == avx512
    assert cpu_auto_policy(pointwise(32, 192, 65)) == avx512
    tiled = avx512 and not intel
    assert cpu_auto_policy(pointwise(960, 160, 33)) == (gemm_wins or tiled)
    assert cpu_auto_policy(pointwise(1280, 256, 33)) == tiled  # inference, widest (Intel: a tie)
    assert cpu_auto_policy(pointwise(1280, 256, 33, grad=True)) == avx512  # training: every 1x1
    assert cpu_auto_policy(pointwise(2048, 256, 33, grad=True)) == gemm_wins  # wider: not measured
    assert cpu_auto_policy(pointwise(304, 256, 129, grad=True)) == avx512
    assert cpu_auto_policy(pointwise(960, 320, 33, grad=True)) == avx512
    # channels-last 1x1: the kernel over pixel rows on an AVX-512 AMD CPU on 257^2 maps with
    # <= 32 channels a side (inference and training); oneDNN elsewhere
    assert cpu_auto_policy(pointwise(16, 96, 257, cl=True)) == tiled
    assert cpu_auto_policy(pointwise(32, 16, 257, cl=True)) == tiled
    assert cpu_auto_policy(pointwise(16, 96, 257, cl=True, grad=True)) == tiled
    assert not cpu_auto_policy(pointwise(24, 144, 129, cl=True))
    assert not cpu_auto_policy(pointwise(24, 144, 129, cl=True, grad=True))
    assert not cpu_auto_policy(pointwise(96, 48, 257, cl=True))

    def sep(d, grad=False, cl=False):
        return Problem("separable_conv2d", "cpu", torch.float32, 1, 728, 33, 33, 256, 3, 3, (1, 1),
                       (d, d), (d, d), 728, cl, 728 * 33 * 33, grad, 728)

    assert cpu_auto_policy(sep(12)) and cpu_auto_policy(sep(12, cl=True))
    assert cpu_auto_policy(sep(6, grad=True)) and cpu_auto_policy(sep(2, grad=True))
    # NCHW inference on small maps: the fused op on an AVX-512 AMD CPU (its register-tiled
    # pointwise half); channels-last, larger maps and wider pointwise halves not there
    tiled = avx512 and not intel
    # inference at rates 5-6: oneDNN's depthwise is slow there with AVX2 only
    assert cpu_auto_policy(sep(6)) == cpu_auto_policy(sep(5)) == (gemm_wins or not avx512 or tiled)
    assert cpu_auto_policy(sep(6, cl=True)) == (gemm_wins or not avx512)
    # inference at rates 1-4: the fused op where the GEMM wins, else oneDNN's pair
    assert cpu_auto_policy(sep(1)) == cpu_auto_policy(sep(4)) == (gemm_wins or tiled)
    assert cpu_auto_policy(sep(1, cl=True)) == gemm_wins
    decoder = dataclasses.replace(sep(1), c=304, h=129, w=129, groups=304, mid_channels=304)
    assert cpu_auto_policy(decoder) == gemm_wins
    assert cpu_auto_policy(dataclasses.replace(sep(1), k=1536)) == gemm_wins  # wide pointwise
    assert not cpu_auto_policy(sep(1, grad=True))  # undilated training: oneDNN
    convt = Problem("conv_transpose2d", "cpu", torch.float32, 1, 21, 34, 34, 21, 4, 4, (2, 2),
                    (1, 1), (1, 1), 1, False, 21 * 70 * 70, False)
    assert cpu_auto_policy(convt) == gemm_wins
    assert not cpu_auto_policy(dataclasses.replace(convt, channels_last=True))
    assert not cpu_auto_policy(dataclasses.replace(convt, requires_grad=True))  # training: oneDNN
    # "auto" computes the same thing whichever way it routes
    x, w = torch.randn(1, 4, 40, 40), torch.randn(4, 1, 3, 3)
    torch.testing.assert_close(dilconv.functional.conv2d(x, w, None, 1, 2, 2, 4, backend="auto"),
                               F.conv2d(x, w, None, 1, 2, 2, 4))


@pytest.mark.parametrize("path_env", [None, "pointwise", "bcast"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pointwise_gemm_on_planes(isa, path_env, dtype, monkeypatch):
    """1x1 stride-1 unpadded convs as GEMMs over the pixels, straight on NCHW planes or on
    channels-last pixel rows, in blocks (several blocks and a remainder when K * H * W is large)
    with the bias and the clamp applied per block; batch 2, groups, channel slices of bigger
    tensors (still matrices) in both layouts, few channels per group (forced path), and a layout
    that cannot use it; forward and both gradients. pointwise forces BLAS's GEMMs, bcast the
    register-tiled kernel (NCHW; the default off Intel; also the weight gradient, groups 1: the
    narrower operand transposed into vector-padded pixel rows, x or gy, chunks of pixels summed
    per thread, a single chunk below 256 pixels): row counts that leave 1-5 rows of a
    6-row tile, pixel counts that leave single vectors and a scalar tail, sums long enough for
    several column panels, maps split over the threads."""
    if path_env:
        monkeypatch.setenv("DILCONV_CPU_PATH", path_env)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    cases = [  # n, c, k, groups, h, w, layout
        (2, 16, 24, 1, 9, 10, "nchw"),
        (1, 20, 600, 1, 40, 30, "nchw"),  # 3 column blocks of 512, remainder 176
        (2, 36, 20, 2, 17, 13, "slice"),
        (1, 3, 32, 1, 11, 12, "nchw"),  # 3 channels: direct kernels unless forced
        (1, 18, 10, 1, 7, 9, "nhwc"),
        (1, 20, 600, 1, 40, 30, "nhwc"),
        (2, 36, 20, 2, 17, 13, "nhwc-slice"),
        (2, 18, 10, 1, 7, 9, "strided"),
        (1, 40, 7, 1, 33, 33, "nchw"),  # 6 + 1 rows, 1089 pixels in chunks over the threads
        (2, 300, 21, 1, 12, 11, "nchw"),  # 3 x 6 + 3 rows; 300-long sums: 64-pixel panels
        (1, 24, 5, 1, 3, 5, "nchw"),  # fewer rows than a tile and pixels than a vector
    ]
    for n, c, k, g, h, w, layout in cases:
        if layout == "slice":
            x = torch.randn(n, c + 3, h, w, dtype=dtype)[:, 3:]
        elif layout == "nhwc-slice":
            x = _layout(torch.randn(n, c + 3, h, w, dtype=dtype), "nhwc")[:, 3:]
        else:
            x = _layout(torch.randn(n, c, h, w, dtype=dtype), layout)
        wt = torch.randn(k, c // g, 1, 1, dtype=dtype)
        for b in (torch.randn(k, dtype=dtype), None):
            ref = F.conv2d(x.double(), wt.double(), None if b is None else b.double(), groups=g)
            conf = ([1, 1], [0, 0], [1, 1], g)
            y = ops.conv2d(x, wt, b, *conf)
            _close(y, ref, tol)
            assert y.is_contiguous(memory_format=_expected_format(x))
            for lo, hi in ((0.0, float("inf")), (-0.5, 6.0)):
                _close(ops.conv2d_clamp(x, wt, b, *conf, lo, hi), ref.clamp(lo, hi), tol)
            # the gradients: GEMMs on the planes too (batch summed into the weight gradient)
            gy = _layout(torch.randn(ref.shape, dtype=dtype),
                         {"slice": "nchw", "nhwc-slice": "nhwc"}.get(layout, layout))
            xr = x.detach().double().clone().requires_grad_()
            wr = wt.detach().double().clone().requires_grad_()
            F.conv2d(xr, wr, None, groups=g).backward(gy.double())
            gx, gw, gb = ops.conv2d_backward(gy, x, wt, *conf, [True, True, b is not None])
            _close(gx, xr.grad, tol)
            _close(gw, wr.grad, tol)
            _close(ops.conv2d_input_grad(gy, wt, list(x.shape), *conf), xr.grad, tol)
            _close(ops.conv2d_weight_grad(gy, x, list(wt.shape), *conf), wr.grad, tol)
            assert gx.is_contiguous(memory_format=_expected_format(gy))
    # no input channels, an empty sum: the bias, clamped (the forced tiled kernel divided by the
    # empty pass length). torch's F.conv2d returns no output channels here, so no reference.
    x0, w0 = torch.randn(2, 0, 5, 7, dtype=dtype), torch.randn(20, 0, 1, 1, dtype=dtype)
    b0 = torch.randn(20, dtype=dtype)
    expect = b0.view(1, -1, 1, 1).expand(2, 20, 5, 7)
    conf = ([1, 1], [0, 0], [1, 1], 1)
    _close(ops.conv2d(x0, w0, b0, *conf), expect, tol)
    _close(ops.conv2d_clamp(x0, w0, b0, *conf, 0.0, 6.0), expect.clamp(0.0, 6.0), tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("groups", [1, 3])
@pytest.mark.parametrize("pw", [0, 1, 2, 3])
@pytest.mark.parametrize("s,dw", [(1, 1), (3, 1), (3, 2), (5, 1)])
def test_stride2_column_phases(s, dw, pw, groups, dtype):
    # stride 2 along the width: the forward and weight gradient pack both column phases of a row
    # in one loop, the input gradient interleaves them back in one (csrc/cpu/kernels_impl.h);
    # widths from 1 (no pair) to 33 (pairs and an odd tail), pads even and odd
    ops = torch.ops.dilconv
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for width in (1, 2, 5, 8, 17, 33):
        x = torch.randn(2, 3, 6, width, dtype=torch.float64)
        w = torch.randn(3 if groups == 3 else 4, 3 // groups, 3, s, dtype=torch.float64)
        conf = ([2, 2], [1, pw], [1, dw], groups)
        if (width + 2 * pw - dw * (s - 1) - 1) < 0:
            continue  # no output column
        xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
        y = F.conv2d(xr, wr, None, (2, 2), (1, pw), (1, dw), groups)
        gy = torch.randn_like(y)
        y.backward(gy)
        xd, wd, gyd = x.to(dtype), w.to(dtype), gy.to(dtype)
        _close(ops.conv2d(xd, wd, None, *conf), y.detach(), tol)
        _close(ops.conv2d_input_grad(gyd, wd, list(x.shape), *conf), xr.grad, tol)
        _close(ops.conv2d_weight_grad(gyd, xd, list(w.shape), *conf), wr.grad, tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_depthwise_stride2_input_grad_gather(isa, dtype):
    """The depthwise stride-2 input gradient by gathering (multiplier 1, dilation 1, taps up to
    3x3: each output phase a stencil of up to 2 x 2 taps, interleaved into gx): kernel sizes 1-3
    each way (1xN, Nx1), paddings 0-3 each way, odd and even sizes below and above a vector,
    gy and gx strided, against float64 autograd; the multiplier-2 and dilated cases beside it
    take the scatter path."""
    ops = torch.ops.dilconv
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    rng = random.Random(7)
    cases = [(r, s, ph, pw, h, w, mult, d)
             for r, s in [(3, 3), (1, 3), (3, 1), (2, 2), (1, 1), (3, 2)]
             for ph, pw in [(1, 1), (0, 0), (2, 3), (3, 0)]
             for h, w, mult, d in [rng.choice([(7, 33, 1, 1), (20, 37, 1, 1), (2, 1, 1, 1),
                                                (5, 18, 1, 1), (9, 64, 1, 1)]),
                                   rng.choice([(8, 21, 2, 1), (9, 19, 1, 2)])]]
    skipped = 0
    for r, s, ph, pw, h, w, mult, d in cases:
        layout = rng.choice(["nchw", "strided"])
        c = 3
        x = torch.randn(2, c, h, w, dtype=torch.float64)
        wt = torch.randn(c * mult, 1, r, s, dtype=torch.float64)
        xr = x.clone().requires_grad_()
        try:
            y = F.conv2d(xr, wt, None, 2, (ph, pw), d, c)
        except RuntimeError:  # no output
            skipped += 1
            continue
        gy = torch.randn_like(y)
        y.backward(gy)
        conf = ([2, 2], [ph, pw], [d, d], c)
        gx = ops.conv2d_input_grad(_layout(gy.to(dtype), layout), wt.to(dtype), list(x.shape), *conf)
        try:
            _close(gx, xr.grad, tol)
        except AssertionError as e:
            raise AssertionError(f"{(r, s, ph, pw, h, w, mult, d, layout)}: {e}") from None
    assert skipped < len(cases) // 4, skipped
