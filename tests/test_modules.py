"""Drop-in modules and convert(): same constructor, parameters, state_dict, init and results as
torch.nn, on every usable backend."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

import dilconv
from tolerance import assert_close_rel

BACKENDS = [b for b in dilconv.backends()]


def _skip_unsupported(fn):
    try:
        return fn()
    except NotImplementedError as e:
        if str(e).startswith("dilconv backend"):
            pytest.skip(str(e))
        raise


CONV_ARGS = [
    dict(in_channels=4, out_channels=6, kernel_size=3, padding=2, dilation=2),
    dict(in_channels=4, out_channels=6, kernel_size=(1, 5), padding="same", dilation=(1, 2)),
    dict(in_channels=4, out_channels=8, kernel_size=3, stride=2, padding=1, groups=2, bias=False),
    dict(in_channels=4, out_channels=4, kernel_size=3, padding=3, dilation=3, groups=4),
    dict(in_channels=4, out_channels=6, kernel_size=3, padding=1, padding_mode="reflect"),
    dict(in_channels=4, out_channels=6, kernel_size=3, padding=2, padding_mode="replicate"),
    dict(in_channels=4, out_channels=6, kernel_size=4, padding="same", padding_mode="circular"),
    dict(in_channels=4, out_channels=4, kernel_size=3, padding="valid"),
]


def _cls_for(kw):
    g = kw.get("groups", 1)
    if g == kw["in_channels"] and g > 1:
        return dilconv.DepthwiseConv2d
    return dilconv.GroupedConv2d if g > 1 else dilconv.AtrousConv2d


@pytest.mark.parametrize("kw", CONV_ARGS, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_conv_module_matches_nn_conv2d(backend, kw):
    torch.manual_seed(1)
    ref = nn.Conv2d(**kw)
    torch.manual_seed(1)
    mod = _cls_for(kw)(**kw, backend=backend)
    # same initialisation from the same seed, same parameter names and shapes
    assert list(mod.state_dict()) == list(ref.state_dict())
    for k, v in ref.state_dict().items():
        assert torch.equal(mod.state_dict()[k], v)
    # a torch.nn state_dict loads and gives the same outputs and gradients
    mod.load_state_dict(copy.deepcopy(ref.state_dict()))
    x = torch.randn(2, 4, 11, 10, requires_grad=True)
    xr = x.detach().clone().requires_grad_()
    y = _skip_unsupported(lambda: mod(x))
    yr = ref(xr)
    assert_close_rel(y, yr)
    g = torch.randn_like(yr)
    y.backward(g)
    yr.backward(g)
    assert_close_rel(x.grad, xr.grad)
    assert_close_rel(mod.weight.grad, ref.weight.grad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_conv_transpose_module_matches_nn(backend):
    kw = dict(in_channels=4, out_channels=6, kernel_size=4, stride=2, padding=1, groups=2, dilation=1)
    torch.manual_seed(2)
    ref = nn.ConvTranspose2d(**kw)
    torch.manual_seed(2)
    mod = dilconv.ConvTranspose2d(**kw, backend=backend)
    assert list(mod.state_dict()) == list(ref.state_dict())
    assert torch.equal(mod.weight, ref.weight)
    x = torch.randn(2, 4, 5, 6)
    assert_close_rel(_skip_unsupported(lambda: mod(x)), ref(x))
    # output_size selects output_padding, as in torch
    y = _skip_unsupported(lambda: mod(x, output_size=[11, 13]))
    assert y.shape[-2:] == (11, 13)
    assert_close_rel(y, ref(x, output_size=[11, 13]))


def test_depthwise_module_arguments():
    m = dilconv.DepthwiseConv2d(8, 16, 3, padding=1)
    assert m.groups == 8 and m.weight.shape == (16, 1, 3, 3)
    with pytest.raises(ValueError):
        dilconv.DepthwiseConv2d(8, 16, 3, groups=2)
    with pytest.raises(ValueError):  # as nn.Conv2d: out_channels must be divisible by groups
        dilconv.DepthwiseConv2d(8, 12, 3)
    with pytest.raises(ValueError):  # nn.Conv2d's own constructor checks
        dilconv.AtrousConv2d(4, 6, 3, groups=3)
    with pytest.raises(ValueError):
        dilconv.AtrousConv2d(4, 6, 3, stride=2, padding="same")


@pytest.mark.parametrize("mid_norm", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_separable_module_matches_two_convs(backend, mid_norm):
    torch.manual_seed(3)
    dw = nn.Conv2d(6, 12, 3, padding=4, dilation=4, groups=6, bias=not mid_norm)
    bn = nn.BatchNorm2d(12) if mid_norm else None
    pw = nn.Conv2d(12, 5, 1)
    if bn is not None:  # non-trivial running statistics and affine parameters
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-1, 1)
    ref = nn.Sequential(dw, *(() if bn is None else (bn,)), nn.ReLU(), pw, nn.ReLU()).eval()
    mod = dilconv.DepthwiseSeparableConv2d.from_convs(dw, pw, mid_norm=bn, mid_relu=True,
                                                      out_relu=True, backend=backend).eval()
    assert mod.depthwise.weight is dw.weight  # shared, not copied
    x = torch.randn(2, 6, 13, 12)
    assert_close_rel(_skip_unsupported(lambda: mod(x)), ref(x))
    # its state_dict is that of the two convs (+ norm) under documented names
    keys = set(mod.state_dict())
    assert {"depthwise.weight", "pointwise.weight", "pointwise.bias"} <= keys
    assert ("mid_norm.running_mean" in keys) == mid_norm
    # a fresh module loads it and agrees
    fresh = dilconv.DepthwiseSeparableConv2d(6, 5, 3, padding=4, dilation=4, depth_multiplier=2,
                                             mid_norm=mid_norm, depthwise_bias=not mid_norm,
                                             mid_relu=True, out_relu=True, backend=backend).eval()
    fresh.load_state_dict(mod.state_dict())
    assert_close_rel(_skip_unsupported(lambda: fresh(x)), ref(x))


@pytest.mark.parametrize("backend", BACKENDS)
def test_separable_module_training_mode_uses_batch_statistics(backend):
    torch.manual_seed(4)
    m = dilconv.DepthwiseSeparableConv2d(4, 6, 3, padding=1, mid_norm=True, mid_relu=True,
                                         backend=backend).train()
    ref = nn.Sequential(copy.deepcopy(m.depthwise), copy.deepcopy(m.mid_norm), nn.ReLU(),
                        copy.deepcopy(m.pointwise))
    for mod in ref:
        if hasattr(mod, "backend"):
            mod.backend = "torch"
    x = torch.randn(3, 4, 9, 9)
    assert_close_rel(_skip_unsupported(lambda: m(x)), ref(x))
    assert torch.allclose(m.mid_norm.running_mean, ref[1].running_mean)


@pytest.mark.parametrize("backend", BACKENDS)
def test_convert_torchvision_model(backend):
    torch.manual_seed(5)
    model = torchvision.models.mobilenet_v3_small(num_classes=10).eval()
    ref = copy.deepcopy(model)
    params_before = {n: p for n, p in model.named_parameters()}
    converted = dilconv.convert(model, backend=backend)
    kinds = {type(m) for m in converted.modules()}
    assert nn.Conv2d not in kinds and dilconv.DepthwiseConv2d in kinds and dilconv.AtrousConv2d in kinds
    # the same Parameter objects, so optimisers and tied weights keep working
    assert all(p is params_before[n] for n, p in converted.named_parameters())
    assert converted.state_dict().keys() == ref.state_dict().keys()
    x = torch.randn(2, 3, 40, 40, requires_grad=True)  # 40: every stage's map at least 2x2
    xr = x.detach().clone().requires_grad_()
    y = _skip_unsupported(lambda: converted(x))
    yr = ref(xr)
    assert_close_rel(y, yr, 1e-4)  # a deep network: fp32 rounding accumulates over ~50 layers
    y.sum().backward()
    yr.sum().backward()
    assert_close_rel(x.grad, xr.grad, 1e-4)


def test_convert_transposed_and_bare_conv():
    m = nn.Sequential(nn.ConvTranspose2d(3, 4, 2, stride=2), nn.Conv2d(4, 4, 3, groups=2))
    dilconv.convert(m)
    assert isinstance(m[0], dilconv.ConvTranspose2d) and isinstance(m[1], dilconv.GroupedConv2d)
    bare = dilconv.convert(nn.Conv2d(3, 3, 3, groups=3), backend="torch")
    assert isinstance(bare, dilconv.DepthwiseConv2d) and bare.backend == "torch"


def test_module_pickles_and_deepcopies():
    import pickle

    m = dilconv.AtrousConv2d(2, 3, 3, dilation=2, backend="torch")
    m2 = pickle.loads(pickle.dumps(m))
    x = torch.randn(1, 2, 7, 7)
    assert torch.equal(m(x), m2(x)) and m2.backend == "torch"
    assert "backend='torch'" in repr(m)


@pytest.mark.parametrize("backend", BACKENDS)
def test_autocast_like_torch(backend):
    """Under torch.autocast a dilconv conv computes in the autocast dtype, as nn.Conv2d does, also
    when low-precision activations from a torch op meet fp32 weights."""
    torch.manual_seed(6)
    ref = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=2, dilation=2, groups=6))
    mod = copy.deepcopy(ref)
    dilconv.convert(mod, backend=backend)
    x = torch.randn(2, 4, 9, 9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        yr = ref(x)
        y = _skip_unsupported(lambda: mod(x))
    assert y.dtype == yr.dtype == torch.bfloat16
    assert_close_rel(y.float(), yr.float(), 2e-2)


# --- conv -> BatchNorm -> activation runs folded in inference (ConvNormActSequential) ---------

def _random_bn(n, eps=1e-5):
    bn = nn.BatchNorm2d(n, eps=eps)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.25, 4)
    bn.weight.data.uniform_(-1.5, 1.5)  # negative scales too: the fold flips those filters
    bn.bias.data.uniform_(-1, 1)
    return bn


def _conv_chain(kind, act, backend):
    """(dilconv ConvNormActSequential, the same layers as a plain nn.Sequential of torch.nn)."""
    if kind == "separable":
        conv = dilconv.DepthwiseSeparableConv2d(6, 7, 3, padding=2, dilation=2, bias=False,
                                                mid_norm=True, mid_relu=True, backend=backend)
        conv.mid_norm.load_state_dict(_random_bn(6).state_dict())
        k = 7
    else:
        kw = dict(dense=dict(groups=1, out_channels=7, kernel_size=(1, 5), padding="same",
                             dilation=(1, 3), bias=True),
                  depthwise=dict(groups=6, out_channels=12, kernel_size=3, stride=2, padding=2,
                                 dilation=2, bias=False),
                  grouped=dict(groups=2, out_channels=8, kernel_size=3, padding=1,
                               padding_mode="reflect", bias=False))[kind]
        conv = _cls_for(dict(in_channels=6, **kw))(6, backend=backend, **kw)
        k = kw["out_channels"]
    layers = [conv, _random_bn(k, eps=1e-3)] + ([] if act is None else [act(inplace=True)])
    fused = dilconv.modules.ConvNormActSequential(*layers)
    plain = copy.deepcopy(nn.Sequential(*layers))
    for m in plain.modules():
        if hasattr(m, "backend"):
            m.backend = "torch"
    return fused, plain


def _count_batch_norm_calls(monkeypatch):
    calls = []
    real = torch.nn.functional.batch_norm

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(torch.nn.functional, "batch_norm", counting)
    return calls


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("act", [None, nn.ReLU, nn.ReLU6], ids=["none", "relu", "relu6"])
@pytest.mark.parametrize("kind", ["dense", "depthwise", "grouped", "separable"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_conv_norm_act_folds_batchnorm_in_inference(backend, kind, act, channels_last,
                                                     monkeypatch):
    fused, plain = _conv_chain(kind, act, backend)
    fused.eval(), plain.eval()
    assert list(fused.state_dict()) == list(plain.state_dict())
    x = torch.randn(2, 6, 11, 13) * 30  # wide enough that ReLU6 clips on both sides
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ref = plain.double()(x.double())
    calls = _count_batch_norm_calls(monkeypatch)
    with torch.no_grad():
        y = _skip_unsupported(lambda: fused(x))
        y2 = fused(x)  # second call: the cached fold
    if backend != "torch":
        assert not calls, "BatchNorm ran: the fold did not happen"
    assert y.dtype == x.dtype and y.shape == ref.shape
    assert_close_rel(y.double(), ref, tol=1e-5)
    assert torch.equal(y, y2)
    if act is nn.ReLU6:
        assert (y == 6).any() and (y == 0).any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_conv_norm_act_fold_cache_follows_parameter_updates(backend):
    fused, plain = _conv_chain("dense", nn.ReLU, backend)
    fused.eval(), plain.eval()
    x = torch.randn(1, 6, 9, 9)
    with torch.no_grad():
        _skip_unsupported(lambda: fused(x))
        # in-place updates of the weight, the running statistics and the affine parameters
        for mod in (fused, plain):
            mod[0].weight.mul_(-0.5)
            mod[1].running_var.mul_(3.0)
            mod[1].running_mean.add_(0.25)
            mod[1].bias.sub_(0.5)
        assert_close_rel(fused(x), plain(x))
        # a state_dict load replaces them too
        other, _ = _conv_chain("dense", nn.ReLU, "torch")
        plain.load_state_dict(other.state_dict())
        fused.load_state_dict(other.state_dict())
        assert_close_rel(fused(x), plain(x))
        # so does a new Parameter object, even one allocated where the old one was
        for mod in (fused, plain):
            del mod[0].weight
        torch.manual_seed(7)
        fused[0].weight = nn.Parameter(torch.randn(7, 6, 1, 5))
        torch.manual_seed(7)
        plain[0].weight = nn.Parameter(torch.randn(7, 6, 1, 5))
        assert_close_rel(fused(x), plain(x))


@pytest.mark.parametrize("backend", BACKENDS)
def test_conv_norm_act_fold_is_differentiable(backend):
    """Frozen-BatchNorm fine-tuning: eval mode with gradients. The fold stays in the graph, so
    the conv weight and the BatchNorm's affine parameters get their true gradients."""
    fused, _ = _conv_chain("depthwise", nn.ReLU6, backend)
    fused = fused.double().eval()
    # 4x5 maps: the numerical Jacobian costs two forwards an element (8x9 took ~5 minutes of CI
    # on the emulated CUDA backend); not gradcheck's fast mode: it let one wrong element pass
    x = torch.randn(2, 6, 4, 5, dtype=torch.float64, requires_grad=True)
    params = [fused[0].weight, fused[1].weight, fused[1].bias]
    _skip_unsupported(lambda: fused(x))
    assert torch.autograd.gradcheck(lambda x, *p: fused(x), (x, *params), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_conv_norm_act_training_and_hooks_run_unfused(backend, monkeypatch):
    fused, plain = _conv_chain("dense", nn.ReLU, backend)
    x = torch.randn(3, 6, 7, 7)
    # training: batch statistics, running statistics updated exactly as nn.Sequential does
    y = _skip_unsupported(lambda: fused(x))
    assert_close_rel(y, plain(x))
    assert torch.allclose(fused[1].running_mean, plain[1].running_mean)
    assert torch.allclose(fused[1].running_var, plain[1].running_var)
    # eval with a forward hook on the norm: the hook must see the norm run
    fused.eval(), plain.eval()
    seen = []
    fused[1].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    calls = _count_batch_norm_calls(monkeypatch)
    with torch.no_grad():
        assert_close_rel(fused(x), plain(x))
    assert seen == [torch.Size([3, 7, 7, 7])] and calls


def test_conv_norm_act_under_torch_backend_is_plain_sequential(monkeypatch):
    fused, plain = _conv_chain("dense", nn.ReLU6, None)
    fused.eval(), plain.eval()
    x = torch.randn(2, 6, 9, 9)
    calls = _count_batch_norm_calls(monkeypatch)
    with dilconv.use_backend("torch"), torch.no_grad():
        y = fused(x)
    assert calls  # the reference keeps torch.nn's computation
    assert torch.equal(y, plain(x))


def test_models_fold_their_batchnorms_in_inference(monkeypatch):
    """The network builders use the folding blocks: DeepLabV3+ MobileNetV2 in eval mode under
    a dilconv backend runs no BatchNorm at all (the ASPP's image pooling included)."""
    from dilconv import models

    m = models.deeplabv3plus(backbone="mobilenet_v2", num_classes=5, backend="cpu").eval()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.load_state_dict(_random_bn(mod.num_features, mod.eps).state_dict())
    x = torch.randn(1, 3, 65, 65)
    ref_model = copy.deepcopy(m).double()
    for mod in ref_model.modules():
        if hasattr(mod, "backend"):
            mod.backend = "torch"
    ref = ref_model(x.double())["out"]
    calls = _count_batch_norm_calls(monkeypatch)
    with torch.no_grad():
        y = m(x)["out"]
    assert not calls
    assert_close_rel(y.double(), ref, tol=1e-4)


@pytest.mark.parametrize("act", [None, nn.ReLU, nn.ReLU6], ids=["none", "relu", "relu6"])
@pytest.mark.parametrize("conv_kw", [dict(kernel_size=3, padding=2, dilation=2),
                                     dict(kernel_size=(1, 3), stride=2, padding=(0, 1), groups=2),
                                     dict(kernel_size=1, padding=0)], ids=str)
def test_conv_norm_act_auto_channels_last_uses_packed_onednn(conv_kw, act):
    """Where "auto" sends a folded conv to oneDNN in channels_last inference, it runs oneDNN's
    inference convolution with packed weights and the activation fused: same values, same
    layout; repacked when the weights or the input shape change."""
    from dilconv.bench.ops import record_resolution

    dilconv.registry.AUTO_PICKS.clear()  # the first call must decide afresh
    conv = dilconv.AtrousConv2d(16, 32, bias=False, **conv_kw)
    layers = [conv, _random_bn(32)] + ([] if act is None else [act()])
    fused = dilconv.modules.ConvNormActSequential(*layers).eval()
    plain = copy.deepcopy(nn.Sequential(*layers)).eval()
    plain[0].backend = "torch"
    for size in (23, 18):
        x = (torch.randn(2, 16, size, size + 3) * 20).contiguous(memory_format=torch.channels_last)
        ref = plain.double()(x.double())
        with dilconv.use_backend("auto"), torch.no_grad(), record_resolution() as seen:
            ys = [fused(x) for _ in range(3)]
        if seen[0] not in ("torch", "onednn-packed"):
            pytest.skip(f"auto does not send this conv to torch here ({seen[0]})")
        assert seen == ["onednn-packed"] * 3  # from the first call on (its pick decided then)
        for y in ys:
            assert y.is_contiguous(memory_format=torch.channels_last)
            assert_close_rel(y.double(), ref)
        if act is nn.ReLU6:
            assert (ys[-1] == 6).any() and (ys[-1] == 0).any()
    with torch.no_grad():  # new weights: repacked
        fused[0].weight.mul_(-2)
        plain[0].weight.mul_(-2)
        with dilconv.use_backend("auto"):
            assert_close_rel(fused(x).double(), plain(x.double()))
    # grad mode on (or NCHW): the plain F.conv2d path
    with dilconv.use_backend("auto"), record_resolution() as seen:
        y = fused(x)
        y2 = fused(x.contiguous())
    assert "onednn-packed" not in seen
    assert_close_rel(y.double(), plain(x.double()))
    assert_close_rel(y2.double(), plain(x.double()))


@pytest.mark.parametrize("act", [None, nn.ReLU, nn.ReLU6], ids=["none", "relu", "relu6"])
def test_conv_norm_act_auto_nchw_fuses_the_activation_into_onednn(act, monkeypatch):
    """NCHW inference: where "auto" sends a folded conv followed by ReLU/ReLU6 to oneDNN, the
    activation runs inside oneDNN's call (plain weights: the output stays NCHW) if the output is
    large enough (here a small one, with the threshold lowered); without an activation, or below
    the threshold, the plain F.conv2d path."""
    from dilconv.bench.ops import record_resolution

    dilconv.registry.AUTO_PICKS.clear()
    monkeypatch.setattr(dilconv.modules, "_ONEDNN_NCHW_MIN_BYTES", 0)
    conv = dilconv.AtrousConv2d(16, 32, 3, stride=2, padding=1, bias=False)
    layers = [conv, _random_bn(32)] + ([] if act is None else [act()])
    fused = dilconv.modules.ConvNormActSequential(*layers).eval()
    plain = copy.deepcopy(nn.Sequential(*layers)).eval()
    plain[0].backend = "torch"
    x = torch.randn(2, 16, 21, 26) * 20
    ref = plain.double()(x.double())
    with dilconv.use_backend("auto"), torch.no_grad(), record_resolution() as seen:
        ys = [fused(x) for _ in range(3)]
    if seen[0] not in ("torch", "onednn-fused"):
        pytest.skip(f"auto does not send this conv to torch here ({seen[0]})")
    assert seen == (["torch"] if act is None else ["onednn-fused"]) * 3
    for y in ys:
        assert y.is_contiguous()
        assert_close_rel(y.double(), ref)
    if act is nn.ReLU6:
        assert (ys[-1] == 6).any() and (ys[-1] == 0).any()
    # an output one byte under the threshold: F.conv2d + the activation
    monkeypatch.setattr(dilconv.modules, "_ONEDNN_NCHW_MIN_BYTES",
                        ys[-1].numel() * ys[-1].element_size() + 1)
    with dilconv.use_backend("auto"), torch.no_grad(), record_resolution() as seen:
        y = fused(x)
    assert seen == ["torch"]
    assert_close_rel(y.double(), ref)


def test_plain_conv_auto_channels_last_inference_uses_packed_onednn():
    from dilconv.bench.ops import record_resolution

    dilconv.registry.AUTO_PICKS.clear()
    conv = dilconv.AtrousConv2d(16, 21, 1)
    ref = nn.Conv2d(16, 21, 1).double()
    ref.load_state_dict(conv.state_dict())
    x = torch.randn(1, 16, 19, 23).contiguous(memory_format=torch.channels_last)
    with dilconv.use_backend("auto"), torch.no_grad(), record_resolution() as seen:
        ys = [conv(x) for _ in range(3)]
    if seen[0] not in ("torch", "onednn-packed"):
        pytest.skip(f"auto does not send this conv to torch here ({seen[0]})")
    assert seen == ["onednn-packed"] * 3
    for y in ys:
        assert y.is_contiguous(memory_format=torch.channels_last)
        assert_close_rel(y.double(), ref(x.double()))
    with torch.no_grad():  # an in-place weight update is seen (the packed copy is redone)
        conv.weight.mul_(-1)
        ref.weight.mul_(-1)
        with dilconv.use_backend("auto"):
            assert_close_rel(conv(x).double(), ref(x.double()))


def test_packed_onednn_falls_back_when_the_private_op_fails(monkeypatch):
    """torch.ops.mkldnn._convolution_pointwise is private: if a torch build rejects the call,
    the module falls back to the plain path (same values) instead of raising."""
    import dilconv.modules as M

    def broken(*a, **k):
        raise RuntimeError("changed signature")

    dilconv.registry.AUTO_PICKS.clear()
    monkeypatch.setattr(M, "_ONEDNN_OK", M._ONEDNN_OK)  # restored after the test
    monkeypatch.setattr(torch.ops.mkldnn, "_convolution_pointwise", broken, raising=False)
    conv = dilconv.AtrousConv2d(16, 21, 1)
    ref = nn.Conv2d(16, 21, 1)
    ref.load_state_dict(conv.state_dict())
    x = torch.randn(1, 16, 9, 11).contiguous(memory_format=torch.channels_last)
    from dilconv.bench.ops import record_resolution

    with dilconv.use_backend("auto"), torch.no_grad(), record_resolution() as seen:
        for _ in range(3):
            assert_close_rel(conv(x), ref(x))
    assert "onednn-packed" not in seen
    if seen[0] == "torch":  # the packed path was tried on the second call, failed, switched off
        assert M._ONEDNN_OK is False


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_auto_unfused_separable_runs_as_two_auto_convs(channels_last, monkeypatch):
    """Where "auto" does not fuse a CPU separable conv (undilated inference on a machine whose
    GEMM paths lose to oneDNN's), it runs the depthwise and pointwise halves as two "auto" convs
    (NCHW: the depthwise half on dilconv's kernel), and a module's halves in channels_last
    inference as oneDNN's packed calls (NCHW: its pointwise half with the ReLU fused): the same
    values as torch.nn either way."""
    from dilconv import registry
    from dilconv.bench.ops import record_resolution

    monkeypatch.setattr(registry, "_AVX512", False)
    monkeypatch.setattr(dilconv.modules, "_ONEDNN_NCHW_MIN_BYTES", 0)  # (a small map here)
    registry.AUTO_PICKS.clear()
    sep = dilconv.DepthwiseSeparableConv2d(64, 48, 3, padding=1, bias=False, mid_norm=True,
                                           mid_relu=True)
    bn = _random_bn(48)
    for m in (sep.mid_norm, bn):
        m.running_mean.uniform_(-1, 1)
        m.running_var.uniform_(0.25, 4)
    fused = dilconv.modules.ConvNormActSequential(sep, bn, nn.ReLU()).eval()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = (torch.randn(1, 64, 17, 19) * 3).contiguous(memory_format=fmt)
    with dilconv.use_backend("torch"), torch.no_grad():
        ref = copy.deepcopy(fused).double()(x.double())
    with dilconv.use_backend("auto"), torch.no_grad(), record_resolution() as seen:
        ys = [fused(x) for _ in range(3)]
    if channels_last:  # both halves packed, from the first call on
        assert seen == ["onednn-packed"] * 6
    else:  # the pointwise half with its ReLU inside oneDNN's call
        assert seen == ["cpu", "onednn-fused"] * 3
    for y in ys:
        assert y.is_contiguous(memory_format=fmt)
        assert (y == 0).any() and (y > 0).any()
        assert_close_rel(y.double(), ref)

    # the functional op, with gradients (float64 gradcheck through both halves)
    g = torch.Generator().manual_seed(3)
    xd = torch.randn(2, 5, 9, 8, dtype=torch.float64, generator=g).contiguous(memory_format=fmt)
    dw = torch.randn(10, 1, 3, 3, dtype=torch.float64, generator=g)  # multiplier 2
    pw = torch.randn(4, 10, 1, 1, dtype=torch.float64, generator=g)
    db, pb = torch.randn(10, dtype=torch.float64, generator=g), torch.randn(4, dtype=torch.float64, generator=g)
    args = [t.requires_grad_() for t in (xd, dw, pw, db, pb)]

    def f(x, dw, pw, db, pb):
        return dilconv.functional.depthwise_separable_conv2d(
            x, dw, pw, db, pb, padding="same", mid_relu=True, out_relu=True, backend="auto")

    def f_ref(x, dw, pw, db, pb):
        return torch.relu(F.conv2d(torch.relu(F.conv2d(x, dw, db, 1, 1, 1, 5)), pw, pb))

    with record_resolution() as seen:
        y = f(*args)
    assert len(seen) == 2  # two convs, not one separable op
    assert_close_rel(y, f_ref(*args), tol=1e-12)
    assert torch.autograd.gradcheck(f, args, fast_mode=False)
