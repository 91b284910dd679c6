"""dilconv.models networks: output dict and shapes at input resolution for odd sizes (meta device
for the big ones, real small/reduced models otherwise), FCN/DilatedNet/U-Net reference shapes,
bilinear and identity initialisations, fixed upsampling, every conv a dilconv module carrying the
backend, and backend "cpu" against "torch" on a small network."""
import math
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import dilconv
from dilconv import models as M
from dilconv.models import _layers as L
from test_models import (META, _torch_backend, assert_all_dilconv, nparams, on_meta,  # noqa: F401
                         randomize_bn, seeded)

# every builder with a configuration that exercises it; forward on the meta device (shapes only)
BUILDS = {
    "fcn32s": dict(),
    "fcn16s": dict(),
    "fcn8s": dict(),
    "fcn8s_at_once_depthwise": dict(name="fcn8s", at_once=True, depthwise_upsampling=True),
    "dilatednet": dict(),
    "dilatednet_basic": dict(name="dilatednet", context="basic"),
    "dilatednet_large": dict(name="dilatednet", context="large"),
    "deeplabv2": dict(aux_loss=True),
    "deeplabv3": dict(aux_loss=True),
    "deeplabv3_os8": dict(name="deeplabv3", output_stride=8, backbone="resnet50"),
    "deeplabv3_tvhead_sep": dict(name="deeplabv3", torchvision_head=True, backbone="resnext50_32x4d"),
    "deeplabv3plus_x65": dict(name="deeplabv3plus", aux_loss=True),
    "deeplabv3plus_x65_os8": dict(name="deeplabv3plus", output_stride=8),
    "deeplabv3plus_r101": dict(name="deeplabv3plus", backbone="resnet101", aux_loss=True),
    "deeplabv3plus_r50_sep": dict(name="deeplabv3plus", backbone="resnet50", separable=True),
    "deeplabv3plus_mnv2": dict(name="deeplabv3plus", backbone="mobilenet_v2", output_stride=8),
    "deeplabv3_resnet50": dict(aux_loss=True),
    "fcn_resnet101": dict(aux_loss=True),
    "pspnet": dict(aux_loss=True),
    "pspnet_r101": dict(name="pspnet", backbone="resnet101", deep_stem=False),
    "unet": dict(in_channels=3, num_classes=21),
    "unet_padded_upsample": dict(name="unet", padding=True, up_mode="upsample", in_channels=3,
                                 num_classes=21),
    "hypercolumns": dict(grid=5),
    "hypercolumns_r50": dict(name="hypercolumns", backbone="resnet50"),
    "multigrid": dict(layers=2),
    "progressive_multigrid": dict(),
}


@pytest.mark.parametrize("key", list(BUILDS))
def test_every_network_on_meta(key):
    kw = dict(BUILDS[key])
    name = kw.pop("name", key)
    aux = kw.get("aux_loss", False)
    m = on_meta(M.build, name, backend="torch", **kw)
    assert_all_dilconv(m, "torch")
    for size in ((1, 1), (37, 61), (64, 48)):
        out = m(torch.empty(2, 3, *size, device=META))
        assert list(out) == (["out", "aux"] if aux else ["out"])
        for v in out.values():
            assert v.shape == (2, 21, *size), (key, size, v.shape)


# ---- reference shapes ----------------------------------------------------------------------

def test_fcn_reference_shapes_and_fixed_upsampling():
    for variant, fixed in (("32s", 1_806_336), ("16s", 458_640), ("8s", 127_008)):
        m = on_meta(M.FCNVGG16, variant)
        # learnable counts (networks.md [computed]) and the fixed, lr_mult 0 deconv blobs
        learn = {"32s": 134_346_581, "16s": 134_357_354, "8s": 134_362_751}[variant]
        assert nparams(m, trainable_only=True) == learn
        assert nparams(m) - learn == fixed
        ups = [x for x in m.modules() if isinstance(x, dilconv.ConvTranspose2d)]
        assert ups and all(not u.weight.requires_grad and u.bias is None for u in ups)
        assert m(torch.empty(1, 3, 500, 500, device=META))["out"].shape == (1, 21, 500, 500)
    assert nparams(on_meta(M.fcn8s, depthwise_upsampling=True)) - 134_362_751 == 6_048
    assert all(u.weight.requires_grad for u in on_meta(M.fcn8s, learnable_upsampling=True).modules()
               if isinstance(u, dilconv.ConvTranspose2d))
    m = on_meta(M.fcn8s)
    assert m.backbone.features[0].padding == (100, 100)
    assert all(p.ceil_mode for p in m.backbone.features if isinstance(p, nn.MaxPool2d))
    assert (m.backbone.fc6.kernel_size, m.backbone.fc6.out_channels) == ((7, 7), 4096)
    assert [u.kernel_size[0] for u in (m.upscore2, m.upscore_pool4, m.upscore8)] == [4, 4, 16]
    assert [u.stride[0] for u in (m.upscore2, m.upscore_pool4, m.upscore8)] == [2, 2, 8]


def test_fcn_pool5_stride_and_score_layer_zero_init():
    m = on_meta(M.fcn16s)
    s = m.backbone.forward_stages(torch.empty(1, 3, 500, 500, device=META))
    # with pad 100 and ceil pooling: pool5 of a 500^2 input is 22^2, fc7 16^2 (Caffe's sizes)
    assert s["pool5"].shape[-1] == 22 and s["fc7"].shape[-1] == 16
    m = M.FCNVGG16("8s", 3)
    for layer in (m.score_fr, m.score_pool4, m.score_pool3):
        assert layer.weight.abs().sum() == 0 and layer.bias.abs().sum() == 0
    assert m.backbone.fc6.weight.std() > 0


def test_dilatednet_reference_shapes():
    fe = on_meta(M.VGG16, "dilated")
    # fyu/dilation: 900^2 in -> 66^2 out (label margin 186, output stride 8)
    assert fe.forward_stages(torch.empty(1, 3, 900, 900, device=META))["fc7"].shape == (1, 4096, 66, 66)
    assert not any(isinstance(x, nn.MaxPool2d) for x in fe.features[20:])
    convs = [x for x in fe.modules() if isinstance(x, nn.Conv2d)]
    assert all(c.padding == (0, 0) for c in convs)
    assert [c.dilation[0] for c in convs] == [1] * 10 + [2, 2, 2, 4, 1]
    cm = on_meta(M.ContextModule, 21, "large")
    assert [c.dilation[0] for c in cm.convs] == [1, 1, 2, 4, 8, 16, 1, 1]
    assert [c.out_channels for c in cm.convs] == [42, 42, 84, 168, 336, 672, 672, 21]
    assert cm.convs[0].padding == (33, 33) and all(c.padding == (0, 0) for c in cm.convs[1:])
    assert cm(torch.empty(1, 21, 66, 66, device=META)).shape == (1, 21, 66, 66)


def test_unet_classic_shapes():
    m = on_meta(M.unet, overlap_tile=False)
    convs = [x for x in m.modules() if isinstance(x, (nn.Conv2d, nn.ConvTranspose2d))]
    assert len(convs) == 23
    assert m(torch.empty(1, 1, 572, 572, device=META))["out"].shape == (1, 2, 388, 388)
    assert m.valid_input_size(388) == (572, 388)
    assert all(isinstance(u.up, dilconv.ConvTranspose2d) and u.up.kernel_size == (2, 2)
               and u.up.out_channels * 2 == u.up.in_channels for u in m.ups)


@pytest.mark.parametrize("padding", [False, True])
@pytest.mark.parametrize("up_mode", ["transpose", "upsample"])
def test_unet_forms_real(padding, up_mode):
    m = seeded(M.unet, in_channels=2, num_classes=3, base=4, padding=padding, up_mode=up_mode,
               batch_norm=padding, backend="torch")
    assert_all_dilconv(m, "torch")
    for size in ((1, 1), (13, 30)):
        x = torch.randn(2 if padding else 1, 2, *size)
        out = m(x)["out"]
        assert out.shape == (x.shape[0], 3, *size)
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())


def test_unet_overlap_tile_is_the_valid_net_on_the_mirrored_input():
    m = seeded(M.unet, base=2, depth=2).eval()
    x = torch.randn(1, 1, 25, 27)
    (ih, oh), (iw, ow) = m.valid_input_size(25), m.valid_input_size(27)
    mh, mw = (ih - oh) // 2, (iw - ow) // 2
    assert mh == mw == 20  # depth 2: each output pixel sees 20 more input pixels per side
    xp = F.pad(x, (mw, iw - 27 - mw, mh, ih - 25 - mh), mode="reflect")
    m.overlap_tile = False
    ref = m(xp)["out"][..., :25, :27]
    m.overlap_tile = True
    torch.testing.assert_close(m(x)["out"], ref, rtol=0, atol=0)


def test_mirror_pad_wider_than_the_image():
    np = pytest.importorskip("numpy")
    x = torch.randn(1, 2, 3, 5)
    pads = (7, 12, 2, 9)  # left, right, top, bottom
    ref = np.pad(x.numpy(), ((0, 0), (0, 0), (2, 9), (7, 12)), mode="reflect")
    torch.testing.assert_close(L.mirror_pad(x, pads), torch.from_numpy(ref), rtol=0, atol=0)
    one = torch.randn(1, 1, 1, 4)  # a single row cannot be reflected: replicated
    assert L.mirror_pad(one, (0, 0, 2, 1)).shape == (1, 1, 4, 4)


def test_unet_init_std():
    m = seeded(M.unet)
    w = m.down[3][2].weight  # 3x3, 512 -> 512: std sqrt(2 / (9 * 512))
    assert abs(w.std().item() / math.sqrt(2 / (9 * 512)) - 1) < 0.01


# ---- initialisations -----------------------------------------------------------------------

def test_bilinear_kernel_formula():
    # surgery.upsample_filt: k=4 -> f=2, c=1.5 -> [0.25, 0.75, 0.75, 0.25] per axis
    k4 = torch.tensor([0.25, 0.75, 0.75, 0.25])
    torch.testing.assert_close(L.bilinear_kernel(4), k4[:, None] * k4[None, :])
    k3 = torch.tensor([0.5, 1.0, 0.5])  # odd: f=2, c=1
    torch.testing.assert_close(L.bilinear_kernel(3), k3[:, None] * k3[None, :])
    k = L.bilinear_kernel(64)
    assert k.shape == (64, 64) and torch.allclose(k, k.T) and k.max() < 1


@pytest.mark.parametrize("depthwise", [False, True])
def test_bilinear_upsampler_interpolates(depthwise):
    up = L.bilinear_upsampler(3, 4, depthwise=depthwise).double()
    assert not up.weight.requires_grad
    if not depthwise:  # only the diagonal of the C x C blob is filled
        assert up.weight[0, 1].abs().sum() == 0 and up.weight[1, 1].abs().sum() > 0
    # a linear ramp is reproduced exactly away from the borders (bilinear interpolation)
    r = torch.arange(6, dtype=torch.float64)
    x = (r[:, None] * 2.0 + r[None, :] * -3.0 + 1.0).expand(1, 3, 6, 6).clone()
    x[:, 1] *= 2
    y = up(x)
    assert y.shape == (1, 3, 28, 28)  # (6 - 1) * 4 + 8
    # output pixel o sits at input coordinate (o - c) / 4, c = 3.5 the kernel centre (k=8, s=4)
    o = torch.arange(28, dtype=torch.float64)
    c = (o - 3.5) / 4
    ref = c[:, None] * 2.0 + c[None, :] * -3.0 + 1.0
    inner = slice(4, 24)
    torch.testing.assert_close(y[0, 0, inner, inner], ref[inner, inner])
    torch.testing.assert_close(y[0, 1, inner, inner], 2 * ref[inner, inner])


@pytest.mark.parametrize("kind", ["basic", "large"])
def test_context_module_identity_init(kind):
    cm = M.ContextModule(21, kind, noise_std=0.0).double()
    x = torch.rand(2, 21, 11, 14, dtype=torch.float64)  # nonnegative: ReLUs pass it
    torch.testing.assert_close(cm(x), x, rtol=1e-12, atol=1e-12)
    cm = seeded(M.ContextModule, 21, kind)
    for m in cm.convs:
        ci, co = m.in_channels, m.out_channels
        r = m.weight.shape[-1] // 2
        centre = m.weight[:, :, r, r]
        a, b = torch.arange(ci), torch.arange(co)
        mask = (a[None, :] * 21 // ci) == (b[:, None] * 21 // co)
        assert torch.all(centre[mask] == (1.0 if kind == "basic" else 21 / co))
        rest = torch.cat([m.weight.flatten()[~torch.nn.functional.pad(
            mask[:, :, None, None].expand(co, ci, 1, 1).float(), (r, r, r, r)).bool().flatten()]])
        if kind == "basic":
            assert rest.abs().sum() == 0  # eq. 4: exactly the identity
        else:  # eq. 5: noise with sigma << C / c_{i+1}
            assert 0 < rest.std() < 0.01 * 21 / co
        assert m.bias.abs().sum() == 0
    # with the default small noise the large module is still close to the identity
    x = torch.rand(1, 21, 9, 9)
    assert (cm(x) - x).abs().max() < 0.2


def test_dilatednet_upsampling_is_fixed_bilinear():
    m = on_meta(M.dilatednet, num_classes=5)
    u = m.upsample
    assert (u.kernel_size, u.stride, u.padding, u.groups) == ((16, 16), (8, 8), (4, 4), 5)
    assert not u.weight.requires_grad
    u = L.bilinear_upsampler(2, 8, depthwise=True, padding=4)
    torch.testing.assert_close(u.weight[1, 0], L.bilinear_kernel(16))
    assert u(torch.randn(1, 2, 5, 7)).shape == (1, 2, 40, 56)  # exactly 8x


# ---- real forward/backward on small networks -----------------------------------------------

@pytest.mark.parametrize("os_", [8, 16, 32])
def test_deeplabv3plus_mobilenet_reduced_width_any_size(os_):
    m = seeded(M.deeplabv3plus, backbone="mobilenet_v2", width_mult=0.25, num_classes=5,
               output_stride=os_, aux_loss=True, backend="torch")
    assert_all_dilconv(m, "torch")
    assert any(isinstance(x, dilconv.DepthwiseSeparableConv2d) for x in m.modules())
    x = torch.randn(2, 3, 37, 50)
    out = m(x)
    assert list(out) == ["out", "aux"]
    assert out["out"].shape == out["aux"].shape == (2, 5, 37, 50)
    (out["out"].mean() + out["aux"].mean()).backward()
    assert all(p.grad is not None for p in m.parameters())
    feats = m.eval().backbone.forward_stages(torch.randn(1, 3, 64, 64))
    assert feats["layer5"].shape[-1] == 64 // os_
    assert feats["layer2"].shape[-1] == 16


def test_deeplabv3plus_xception_eval_uses_fused_separable():
    torch.manual_seed(0)
    bb = M.Xception65(output_stride=16, include_top=False, middle_units=2, backend="torch")
    bb.low_stage, bb.aux_stage, bb.high_stage = "entry2_low", "middle", "exit"
    m = M.DeepLabV3Plus(bb, 4, (6, 12, 18), separable=True, backend="torch")
    m = randomize_bn(m).eval().double()
    seps = [x for x in m.modules() if isinstance(x, dilconv.DepthwiseSeparableConv2d)]
    assert len(seps) == 3 * (3 + 2 + 2) + 3 + 2 and all(s._fused() for s in seps)
    x = torch.randn(1, 3, 29, 35, dtype=torch.float64)
    with torch.no_grad():
        y = m(x)["out"]
        assert y.shape == (1, 4, 29, 35) and torch.isfinite(y).all()
        # the fused path (BN folded into the depthwise weights) computes the same function as
        # the two convs with the eval-mode BN between them
        for s in seps:
            s._fused = lambda: False
        torch.testing.assert_close(m(x)["out"], y, rtol=1e-10, atol=1e-10)


def test_multigrid_real():
    for prog in (False, True):
        m = seeded(M.multigrid, num_classes=4, progressive=prog, backend="torch")
        assert_all_dilconv(m, "torch")
        x = torch.randn(2, 3, 13, 22)
        out = m(x)["out"]
        assert out.shape == (2, 4, 13, 22)
        out.mean().backward()
        # as in the reference, a grid dropped by the next layer is computed but unused: the
        # coarsest conv of each layer before a dropping one gets no gradient
        dead = set()
        layers = list(m.layers)
        for a, b in zip(layers, layers[1:]):
            if isinstance(b, M.MGConv) and isinstance(a, M.MGConv) and b.n < a.n:
                dead |= {id(p) for p in a.convs[-1].parameters()}
        assert len(dead) == 3 * 4  # conv w+b, BN w+b; three dropping layers
        for n, p in m.named_parameters():
            assert (p.grad is None) == (id(p) in dead), n


def test_mgconv_wiring():
    mg = M.MGConv([4, 5, 6], [7, 8, 9])
    # level i sees pooled finer (i-1), itself and upsampled coarser (i+1)
    assert [c[0].in_channels for c in mg.convs] == [4 + 5, 4 + 5 + 6, 5 + 6]
    assert [c[0].out_channels for c in mg.convs] == [7, 8, 9]
    drop = M.MGConv([4, 5, 6], [7, 8], drop=True)
    assert [c[0].in_channels for c in drop.convs] == [4 + 5, 4 + 5]
    xs = [torch.randn(1, 4, 8, 8), torch.randn(1, 5, 4, 4), torch.randn(1, 6, 2, 2)]
    ys = mg(xs)
    assert [tuple(y.shape) for y in ys] == [(1, 7, 8, 8), (1, 8, 4, 4), (1, 9, 2, 2)]
    # level 1's conv input is exactly [maxpool(level 0), level 1, nearest-up(level 2)]
    seen = {}
    mg.convs[1][0].register_forward_hook(lambda mod, i, o: seen.update(x=i[0]))
    mg(xs)
    ref = torch.cat([F.max_pool2d(xs[0], 2), xs[1], xs[2].repeat_interleave(2, -1).repeat_interleave(2, -2)], 1)
    torch.testing.assert_close(seen["x"], ref, rtol=0, atol=0)
    with pytest.raises(ValueError, match="output grids"):
        M.MGConv([4, 5], [7, 8, 9])
    pm = M.progressive_multigrid(num_classes=2)
    # progressive: conv on the coarsest grid, then mg-convs over the 2, 3, 4 coarsest grids
    ks = [l.k for l in pm.layers if l.__class__.__name__ == "_Partial"]
    assert ks == [1, 2, 3, 4]


def test_hypercolumns_real():
    m = seeded(M.hypercolumns, num_classes=3, grid=2, backend="torch")
    assert_all_dilconv(m, "torch")
    assert isinstance(m.backbone.conv2, dilconv.GroupedConv2d)
    x = torch.randn(1, 3, 30, 41)
    assert m(x)["out"].shape == (1, 3, 30, 41)
    with torch.device("meta"):
        hc = on_meta(M.hypercolumns).hypercolumns(torch.empty(1, 3, 227, 227, device=META))
    assert hc.shape == (1, 256 + 384 + 4096, 227, 227)  # pool2 + conv4 + fc7 = 4736


def test_hypercolumn_head_is_a_linear_classifier_on_the_stack():
    g = 3
    head = seeded(M.HypercolumnHead, [4, 6], 2, grid=g).double()
    f1, f2 = torch.randn(1, 4, 8, 8, dtype=torch.float64), torch.randn(1, 6, 4, 4, dtype=torch.float64)
    out = head([f1, f2], (16, 16))
    stack = torch.cat([L.resize(f1, (16, 16)), L.resize(f2, (16, 16))], 1)  # the hypercolumns
    w = torch.cat([head.scores[0].weight, head.scores[1].weight], 1)[:, :, 0, 0]
    b = head.scores[0].bias + head.scores[1].bias
    per_cell = (torch.einsum("kc,nchw->nkhw", w, stack) + b[None, :, None, None]).reshape(1, g * g, 2, 16, 16)
    wts = M.HypercolumnHead.cell_weights(g, (16, 16), stack)
    torch.testing.assert_close(wts.sum(0), torch.ones(16, 16, dtype=torch.float64))
    torch.testing.assert_close(out, (per_cell * wts[None, :, None]).sum(1))
    # the top-left corner pixel uses only the top-left cell's classifier
    torch.testing.assert_close(out[..., 0, 0], per_cell[:, 0, :, 0, 0])


def test_backend_switches_whole_network():
    m = on_meta(M.deeplabv3plus, backbone="mobilenet_v2", backend="torch")
    assert_all_dilconv(m, "torch")
    m = on_meta(M.pspnet)
    assert_all_dilconv(m, None)


def test_cpu_backend_matches_torch():
    if "cpu" not in dilconv.backends():
        if os.environ.get("DILCONV_REQUIRE_EXT") == "1":  # CI: the extension must be there
            pytest.fail("backend 'cpu' is not usable although DILCONV_REQUIRE_EXT=1")
        pytest.skip("backend 'cpu' is not usable here (dilconv._C not built with the CPU kernels)")
    kw = dict(backbone="mobilenet_v2", width_mult=0.25, num_classes=4, aux_loss=True)
    a = seeded(M.deeplabv3plus, backend="torch", **kw)
    b = seeded(M.deeplabv3plus, backend="cpu", **kw)
    b.load_state_dict(a.state_dict())
    assert_all_dilconv(b, "cpu")
    # eval, fp32: every conv (dense, depthwise, fused separable) through the cpu kernels
    a.eval(), b.eval()
    x = torch.randn(2, 3, 33, 41)
    with torch.no_grad():
        ya, yb = a(x), b(x)
    for k in ya:
        torch.testing.assert_close(yb[k], ya[k], rtol=1e-5, atol=1e-6)
    # training mode in float64: batch-statistics BN over the 1x1 image-pooling branch with a
    # batch of 2 amplifies fp32 rounding differences far beyond fp32 tolerance, so compare
    # forward and gradients exactly-conditioned in float64
    a.double().train(), b.double().train()
    x = x.double()
    torch.manual_seed(7)  # same dropout masks for both
    ya = a(x)
    torch.manual_seed(7)
    yb = b(x)
    for k in ya:
        torch.testing.assert_close(yb[k], ya[k], rtol=1e-10, atol=1e-12)
    (ya["out"].square().mean() + ya["aux"].mean()).backward()
    (yb["out"].square().mean() + yb["aux"].mean()).backward()
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        # elementwise against each tensor's scale: BatchNorm's backward cancels most of a conv
        # weight's gradient, so some elements are ~1e-4 of the largest and carry float64 rounding
        # of the whole sum (a different summation order moves them by ~1e-12 of the scale)
        scale = pa.grad.abs().max().item()
        torch.testing.assert_close(pb.grad, pa.grad, rtol=1e-9, atol=1e-10 * scale + 1e-12, msg=n)
