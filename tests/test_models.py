"""dilconv.models: torchvision layouts (state_dicts load strict and give identical outputs),
parameter counts against networks.md's published/[computed] figures (meta device), output shapes,
every conv a dilconv module carrying the backend."""
import pytest
import torch
import torch.nn as nn
import torchvision

import dilconv
from dilconv import models as M
from dilconv.modules import ConvTranspose2d as DCConvT

META = torch.device("meta")


def nparams(model, trainable_only=False):
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def on_meta(fn, *a, **kw):
    with META:
        return fn(*a, **kw)


def assert_all_dilconv(model, backend=None):
    """Every convolution is a dilconv module and carries the network's backend."""
    n = 0
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            assert isinstance(m, (dilconv.AtrousConv2d, DCConvT)), f"{name} is a plain {type(m).__name__}"
            assert m.backend == backend, f"{name}: backend {m.backend!r} != {backend!r}"
            n += 1
        if isinstance(m, dilconv.DepthwiseSeparableConv2d):
            assert m.backend == backend, name
    assert n > 0


def seeded(fn, *a, seed=0, **kw):
    torch.manual_seed(seed)
    return fn(*a, **kw)


def randomize_bn(model, seed=1):
    """BatchNorm statistics/affine away from 1/0, so eval-mode comparisons exercise them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model


# ---- torchvision layouts -------------------------------------------------------------------

TV_MODELS = {
    # ours, torchvision, input size
    "resnet50": (lambda: M.resnet50(), lambda: torchvision.models.resnet50(), 40),
    "resnext50_32x4d": (lambda: M.resnext50_32x4d(), lambda: torchvision.models.resnext50_32x4d(), 40),
    "mobilenet_v2": (lambda: M.mobilenet_v2(), lambda: torchvision.models.mobilenet_v2(), 40),
    "deeplabv3_resnet50": (
        lambda: M.deeplabv3_resnet50(aux_loss=True),
        lambda: torchvision.models.segmentation.deeplabv3_resnet50(
            weights=None, weights_backbone=None, aux_loss=True), 33),
    "fcn_resnet50": (
        lambda: M.fcn_resnet50(aux_loss=True),
        lambda: torchvision.models.segmentation.fcn_resnet50(
            weights=None, weights_backbone=None, aux_loss=True), 33),
}


@pytest.mark.parametrize("name", sorted(TV_MODELS))
def test_torchvision_state_dict_loads_and_matches(name):
    ours_fn, tv_fn, size = TV_MODELS[name]
    tv = randomize_bn(seeded(tv_fn)).eval()
    ours = seeded(ours_fn, seed=123).eval()
    ours.load_state_dict(tv.state_dict(), strict=True)
    assert_all_dilconv(ours)
    x = torch.randn(1, 3, size, size + 3)
    with torch.no_grad():
        a, b = ours(x), tv(x)
    if isinstance(b, dict):
        assert list(a) == list(b)
        for k in b:
            assert a[k].shape == b[k].shape == (1, 21, size, size + 3)
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-5)
    else:
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# ---- parameter counts (meta device) --------------------------------------------------------

COUNTS = {
    # networks.md figures: torchvision num_params / [computed]
    "resnext50_32x4d": (lambda: M.resnext50_32x4d(), 25_028_904),
    "mobilenet_v2": (lambda: M.mobilenet_v2(), 3_504_872),
    "deeplabv3_resnet50+aux": (lambda: M.deeplabv3_resnet50(aux_loss=True), 42_004_074),
    "deeplabv3_resnet101+aux": (lambda: M.deeplabv3_resnet101(aux_loss=True), 60_996_202),
    "deeplabv3_resnet50": (lambda: M.deeplabv3_resnet50(), 39_638_869),
    "fcn_resnet50+aux": (lambda: M.fcn_resnet50(aux_loss=True), 35_322_218),
    "fcn_resnet101+aux": (lambda: M.fcn_resnet101(aux_loss=True), 54_314_346),
}


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_parameter_count(name):
    fn, expected = COUNTS[name]
    assert nparams(on_meta(fn)) == expected


def test_mobilenet_v2_deeplab_head_count():
    # MobileNetV2 paper: DeepLabV3 head (ASPP, OS 16) on the 320-channel map: 4.52M parameters
    m = on_meta(M.deeplabv3, backbone="mobilenet_v2")
    assert round(nparams(m) / 1e6, 2) == 4.52


# ---- DeepLabV3+ ----------------------------------------------------------------------------

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
    # the high-level feature has the requested output stride
    feats = m.eval().backbone.forward_stages(torch.randn(1, 3, 64, 64))
    assert feats["layer5"].shape[-1] == 64 // os_
    assert feats["layer2"].shape[-1] == 16


def test_mobilenet_output_stride_dilation():
    bb = M.make_backbone("mobilenet_v2", output_stride=8)
    dil = [m.conv[-3][0].dilation[0] for m in bb.features[1:]]
    strides = [m.stride for m in bb.features[1:]]
    # blocks 7 (64 ch) and 14 (160 ch) would stride: they run at stride 1, at the previous rate
    assert strides == [1, 2, 1, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    assert dil == [1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 4, 4, 4]
