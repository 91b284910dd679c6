"""dilconv.models backbones: torchvision layouts (torchvision's randomly initialised state_dicts
load with strict=True and give identical outputs), parameter counts against networks.md's
published / [computed] figures (counted on the meta device), dilation and stage outputs."""
import pytest
import torch
import torch.nn as nn
import torchvision

import dilconv
from dilconv import models as M
from dilconv.modules import ConvTranspose2d as DCConvT

META = torch.device("meta")


@pytest.fixture(autouse=True)
def _torch_backend():
    # modules built with backend=None follow the global backend: pin it to the reference one
    # (the conftest restores the previous backend after each test)
    dilconv.use_backend("torch")


def nparams(model, trainable_only=False):
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def on_meta(fn, *a, **kw):
    with META:
        return fn(*a, **kw)


def assert_all_dilconv(model, backend=None):
    """Every convolution is a dilconv module carrying the network's backend."""
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
tvm, tvs = torchvision.models, torchvision.models.segmentation
TV_MODELS = {
    # ours, torchvision, input size
    "resnet50": (lambda: M.resnet50(), lambda: tvm.resnet50(), 40),
    "resnet50_os8": (lambda: M.resnet50(replace_stride_with_dilation=[False, True, True]),
                     lambda: tvm.resnet50(replace_stride_with_dilation=[False, True, True]), 40),
    "resnext50_32x4d": (lambda: M.resnext50_32x4d(), lambda: tvm.resnext50_32x4d(), 40),
    "mobilenet_v2": (lambda: M.mobilenet_v2(), lambda: tvm.mobilenet_v2(), 40),
    "mobilenet_v2_w0.5": (lambda: M.mobilenet_v2(width_mult=0.5), lambda: tvm.mobilenet_v2(width_mult=0.5), 40),
    "alexnet": (lambda: M.alexnet(), lambda: tvm.alexnet(), 67),
    "deeplabv3_resnet50": (lambda: M.deeplabv3_resnet50(aux_loss=True),
                           lambda: tvs.deeplabv3_resnet50(weights=None, weights_backbone=None,
                                                          aux_loss=True), 33),
    "fcn_resnet50": (lambda: M.fcn_resnet50(aux_loss=True),
                     lambda: tvs.fcn_resnet50(weights=None, weights_backbone=None, aux_loss=True), 33),
}


@pytest.mark.parametrize("name", list(TV_MODELS))
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


def test_vgg16_torchvision_layout_and_fcn_surgery():
    tv = seeded(tvm.vgg16).eval()
    ours = on_meta(M.vgg16).eval()  # (meta + assign: skips a second 138M-parameter init)
    ours.load_state_dict(tv.state_dict(), strict=True, assign=True)
    assert_all_dilconv(ours)
    x = torch.randn(1, 3, 32, 35)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x), rtol=1e-5, atol=1e-5)
        # FCN surgery: fc6 (7x7 conv) / fc7 (1x1 conv) on a 7x7 pool5 window compute the
        # classifier's first two layers
        fcn = on_meta(M.VGG16, "fcn").eval()
        fcn.load_torchvision(tv.state_dict(), assign=True)
        assert_all_dilconv(fcn)
        # (float64: sums of 25088 products; fp32 summation order differs between the two)
        fcn.fc6.double(), fcn.fc7.double(), tv.classifier.double()
        pool5 = torch.randn(2, 512, 7, 7, dtype=torch.float64)
        ref = tv.classifier[:5](torch.flatten(pool5, 1))
        got = fcn.fc7(torch.relu(fcn.fc6(pool5))).relu()
        torch.testing.assert_close(got[:, :, 0, 0], ref, rtol=1e-10, atol=1e-12)


# ---- parameter counts (meta device) --------------------------------------------------------

COUNTS = {
    # networks.md: torchvision num_params and [computed] counts
    "vgg16": (lambda: M.vgg16(), 138_357_544),
    "resnext50_32x4d": (lambda: M.resnext50_32x4d(), 25_028_904),
    "mobilenet_v2": (lambda: M.mobilenet_v2(), 3_504_872),
    "alexnet_torchvision": (lambda: M.alexnet(), 61_100_840),
    "alexnet_caffe_grouped": (lambda: M.alexnet(variant="caffe"), 60_965_224),
    "alexnet_caffe_ungrouped": (lambda: M.alexnet(variant="caffe", groups=1), 62_378_344),
    "deeplabv3_resnet50+aux": (lambda: M.deeplabv3_resnet50(aux_loss=True), 42_004_074),
    "deeplabv3_resnet101+aux": (lambda: M.deeplabv3_resnet101(aux_loss=True), 60_996_202),
    "deeplabv3_resnet50": (lambda: M.deeplabv3_resnet50(), 39_638_869),
    "fcn_resnet50+aux": (lambda: M.fcn_resnet50(aux_loss=True), 35_322_218),
    "fcn_resnet101+aux": (lambda: M.fcn_resnet101(aux_loss=True), 54_314_346),
    "unet_classic": (lambda: M.unet(), 31_030_658),
    "unet_classic_rgb": (lambda: M.unet(in_channels=3), 31_031_810),
    "unet_upsample_conv": (lambda: M.unet(up_mode="upsample"), 31_030_658),
    "unet_padded": (lambda: M.unet(padding=True), 31_030_658),
    "dilatednet_frontend": (lambda: M.dilatednet(), 134_346_581),
    "context_basic": (lambda: M.ContextModule(21, "basic"), 28_392),
    "context_large": (lambda: M.ContextModule(21, "large"), 6_803_139),
}


@pytest.mark.parametrize("name", list(COUNTS))
def test_parameter_count(name):
    fn, expected = COUNTS[name]
    assert nparams(on_meta(fn), trainable_only=True) == expected


def test_resnext_is_grouped_and_alexnet_caffe_has_two_groups():
    r = on_meta(M.resnext50_32x4d)
    assert isinstance(r.layer1[0].conv2, dilconv.GroupedConv2d) and r.layer1[0].conv2.groups == 32
    assert r.layer4[0].conv2.in_channels == 1024
    a = on_meta(M.alexnet, variant="caffe")
    assert [a.conv1.groups, a.conv2.groups, a.conv3.groups, a.conv4.groups, a.conv5.groups] == [1, 2, 1, 2, 2]
    assert isinstance(a.conv2, dilconv.GroupedConv2d)
    assert [a.conv1.out_channels, a.conv2.out_channels, a.conv3.out_channels,
            a.conv4.out_channels, a.conv5.out_channels] == [96, 256, 384, 384, 256]
    assert a(torch.empty(1, 3, 227, 227, device=META)).shape == (1, 1000)


def test_mobilenet_v2_is_depthwise():
    m = on_meta(M.mobilenet_v2)
    dw = [x for x in m.modules() if isinstance(x, dilconv.DepthwiseConv2d)]
    assert len(dw) == 17 and all(x.groups == x.in_channels == x.out_channels for x in dw)


def test_xception65_counts_and_structure():
    # networks.md [computed]: ~37.87M trunk; ~41.06M for X-65 DeepLabV3+ with separable convs
    x = on_meta(M.xception65, include_top=False)
    assert round(nparams(x) / 1e4) == 3787
    assert len(x.middle_flow) == 16
    seps = [m for m in x.modules() if isinstance(m, dilconv.DepthwiseSeparableConv2d)]
    assert len(seps) == 3 * (3 + 16 + 2) and all(s.mid_norm is not None for s in seps)
    # strided separable convs instead of max-pooling
    assert not any(isinstance(m, nn.MaxPool2d) for m in x.modules())
    assert [b.sep[2][0].depthwise.stride[0] for b in x.entry_flow] == [2, 2, 2]
    assert x.exit_flow[1].act_in_sep and x.exit_flow[1].sep[0][0].mid_relu
    assert not x.entry_flow[0].sep[0][0].mid_relu
    assert round(nparams(on_meta(M.deeplabv3plus)) / 1e4) == 4106


def test_mobilenet_v2_deeplab_counts():
    # MobileNetV2 paper (DeepLabV3 head on the 320-channel map, OS 16): with ASPP 4.52M,
    # without ASPP (1x1 + image pooling only) 2.11M
    assert round(nparams(on_meta(M.deeplabv3, backbone="mobilenet_v2")) / 1e4) == 452
    assert round(nparams(on_meta(M.deeplabv3, backbone="mobilenet_v2", atrous_rates=())) / 1e4) == 211


def test_pspnet_head_count():
    p = on_meta(M.pspnet)
    assert nparams(p.ppm) + nparams(p.cls) == 23_084_565  # networks.md [computed]: 23.08M
    assert len(p.ppm.features) == 4 and [f[0].output_size for f in p.ppm.features] == [1, 2, 3, 6]
    assert p.cls[0].in_channels == 4096


# ---- dilation / output stride --------------------------------------------------------------

@pytest.mark.parametrize("os_,expected", [(16, [2, 4, 8]), (8, [4, 8, 16])])
def test_resnet_multigrid(os_, expected):
    bb = on_meta(M.make_backbone, "resnet101", output_stride=os_, multi_grid=(1, 2, 4))
    assert [b.conv2.dilation[0] for b in bb.layer4] == expected
    assert all(b.conv2.stride == (1, 1) for b in bb.layer4)
    feats = bb.forward_stages(torch.empty(1, 3, 64, 64, device=META))
    assert feats["layer4"].shape == (1, 2048, 64 // os_, 64 // os_)
    assert feats["layer1"].shape == (1, 256, 16, 16)


def test_backbone_output_strides():
    x = torch.empty(1, 3, 64, 64, device=META)
    for os_ in (8, 16, 32):
        bb = on_meta(M.make_backbone, "xception65", output_stride=os_)
        f = bb.forward_stages(x)
        assert f["exit"].shape == (1, 2048, 64 // os_, 64 // os_)
        assert f["entry2_low"].shape == (1, 256, 16, 16)
        bb = on_meta(M.make_backbone, "resnet50", output_stride=os_)
        assert bb.forward_stages(x)["layer4"].shape[-1] == 64 // os_


def test_mobilenet_output_stride_dilation():
    bb = on_meta(M.make_backbone, "mobilenet_v2", output_stride=8)
    dil = [m.conv[-3][0].dilation[0] for m in bb.features[1:]]
    strides = [m.stride for m in bb.features[1:]]
    # blocks 7 (64 ch) and 14 (160 ch) would stride: they run at stride 1 at the previous rate
    assert strides == [1, 2, 1, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    assert dil == [1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 4, 4, 4]


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown backbone"):
        M.deeplabv3plus(backbone="resnet18")
    with pytest.raises(ValueError, match="output_stride"):
        on_meta(M.deeplabv3plus, backbone="mobilenet_v2", output_stride=4)
    with pytest.raises(ValueError, match="multi_grid"):
        on_meta(M.make_backbone, "resnet50", multi_grid=(1, 2))
    with pytest.raises(ValueError, match="width_mult"):
        on_meta(M.make_backbone, "resnet50", width_mult=0.5)
    with pytest.raises(ValueError, match="unknown model"):
        M.build("segnet")
    with pytest.raises(ValueError, match="backend"):
        on_meta(M.deeplabv3plus, backbone="mobilenet_v2", backend="nonsense")
