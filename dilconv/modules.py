"""Drop-in modules. Each is a torch.nn conv subclass with the same constructor arguments,
parameters, state_dict keys and initialisation; only the computation goes through a dilconv
backend (`backend=None` follows `dilconv.use_backend`, default "auto")."""
from __future__ import annotations

import weakref
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from dilconv import registry as _backends
from dilconv import functional as DF
from dilconv._ops import conv_out_size


def _check_backend_name(backend: Optional[str]) -> Optional[str]:
    if backend is not None:
        _backends.get_backend(backend)  # unknown name -> ValueError
    return backend


class AtrousConv2d(nn.Conv2d):
    """`nn.Conv2d` (dense, grouped or depthwise; dilated or not) computed by a dilconv backend."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", device=None, dtype=None, *,
                 backend: Optional[str] = None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         bias, padding_mode, device, dtype)
        self.backend = _check_backend_name(backend)

    def _conv_forward(self, input, weight, bias, clamp=None):
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        else:
            padding = self.padding
        if clamp is not None:  # (min, max): conv_norm_act's activation
            return DF.conv2d_clamp(input, weight, bias, self.stride, padding, self.dilation,
                                   self.groups, *clamp, backend=self.backend)
        if not torch.is_grad_enabled():  # (padding modes other than zeros: not taken)
            y = _onednn_fused(self, weight, bias, None, input)
            if y is not None:
                return y
        return DF.conv2d(input, weight, bias, self.stride, padding, self.dilation, self.groups,
                         backend=self.backend)

    def extra_repr(self):
        s = super().extra_repr()
        return s + (f", backend={self.backend!r}" if self.backend else "")


class GroupedConv2d(AtrousConv2d):
    """Grouped convolution (ResNeXt, AlexNet's two-group layers): `nn.Conv2d` with `groups`."""


class DepthwiseConv2d(AtrousConv2d):
    """Depthwise convolution: groups = in_channels, out_channels = in_channels * multiplier.
    Same arguments as nn.Conv2d; `groups` may be left out (it can only be in_channels)."""

    def __init__(self, in_channels, out_channels=None, kernel_size=3, stride=1, padding=0,
                 dilation=1, groups=None, bias=True, padding_mode="zeros", device=None, dtype=None,
                 *, backend: Optional[str] = None):
        out_channels = in_channels if out_channels is None else out_channels
        if groups is not None and groups != in_channels:
            raise ValueError(f"DepthwiseConv2d: groups must equal in_channels ({in_channels}), got {groups}")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         in_channels, bias, padding_mode, device, dtype, backend=backend)


class ConvTranspose2d(nn.ConvTranspose2d):
    """`nn.ConvTranspose2d` computed by a dilconv backend."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, groups=1, bias=True, dilation=1, padding_mode="zeros",
                 device=None, dtype=None, *, backend: Optional[str] = None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, output_padding,
                         groups, bias, dilation, padding_mode, device, dtype)
        self.backend = _check_backend_name(backend)

    def forward(self, input: torch.Tensor, output_size: Optional[list[int]] = None) -> torch.Tensor:
        if self.padding_mode != "zeros":
            raise ValueError("Only `zeros` padding mode is supported for ConvTranspose2d")
        output_padding = self._output_padding(input, output_size, self.stride, self.padding,
                                              self.kernel_size, 2, self.dilation)
        return DF.conv_transpose2d(input, self.weight, self.bias, self.stride, self.padding,
                                   output_padding, self.groups, self.dilation, backend=self.backend)

    def extra_repr(self):
        s = super().extra_repr()
        return s + (f", backend={self.backend!r}" if self.backend else "")


def fold_batchnorm(weight: torch.Tensor, bias: Optional[torch.Tensor], bn: nn.BatchNorm2d):
    """(weight, bias) of a conv followed by `bn` in eval mode, as one conv: exact, differentiable."""
    var, mean = bn.running_var, bn.running_mean
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -mean * scale if bias is None else (bias - mean) * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return weight * scale.reshape(-1, 1, 1, 1).to(weight.dtype), shift.to(weight.dtype)


# Folded (weight, bias) per conv module, reused while the tensors they came from are the same
# objects at the same version (in-place updates bump it). Only filled with grad mode off: with it
# on, the fold must stay in the autograd graph (an eval-mode BatchNorm can still be trained
# through, e.g. frozen-BN fine-tuning), so it is recomputed per call.
_FOLD_CACHE: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def _fold_sources(conv: nn.Module, bn: nn.BatchNorm2d):
    return (conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.weight, bn.bias)


def _versions(ts):
    try:
        return tuple(t._version if t is not None else None for t in ts)
    except RuntimeError:  # inference-mode tensors have no version counter: no caching
        return None


def _folded(conv: nn.Module, bn: nn.BatchNorm2d):
    """fold_batchnorm(conv.weight, conv.bias, bn), cached while neither changes (grad mode off)."""
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        return fold_batchnorm(conv.weight, conv.bias, bn)
    src = _fold_sources(conv, bn)
    ver = _versions(src)
    hit = _FOLD_CACHE.get(conv)
    if (hit is not None and ver is not None and hit[0] is bn and hit[1] == bn.eps
            and hit[3] == ver and all(a is b for a, b in zip(hit[2], src))):
        return hit[4], hit[5]
    w, b = fold_batchnorm(conv.weight, conv.bias, bn)
    if ver is not None:
        # the sources are held (they are the modules' own tensors): identity stays meaningful
        _FOLD_CACHE[conv] = (bn, bn.eps, src, ver, w, b)
    return w, b


class DepthwiseSeparableConv2d(nn.Module):
    """Depthwise (possibly dilated) conv then pointwise 1x1 conv — the atrous-separable conv of
    Xception/DeepLabV3+/MobileNet — computed by one fused op where the backend has one.

    state_dict layout (that of the two nn.Conv2d it replaces, as submodules):
      depthwise.weight  [C*M, 1, R, S]      depthwise.bias  [C*M]  (if depthwise_bias)
      mid_norm.*        BatchNorm2d(C*M)    (if mid_norm)
      pointwise.weight  [K, C*M, 1, 1]      pointwise.bias  [K]    (if bias)
    Forward: out = act_out(pointwise(act_mid(mid_norm(depthwise(x))))) with act = ReLU when
    mid_relu / out_relu. With no mid_norm, or one in eval mode (folded into the depthwise weights,
    exactly), it runs as one fused op; a mid_norm in training mode needs batch statistics, so the
    two convs then run as separate ops with the norm between.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 bias=True, padding_mode="zeros", device=None, dtype=None, *, depth_multiplier=1,
                 depthwise_bias: Optional[bool] = None, mid_norm: bool = False,
                 mid_relu: bool = False, out_relu: bool = False, norm_eps: float = 1e-5,
                 norm_momentum: float = 0.1, backend: Optional[str] = None):
        super().__init__()
        mid = in_channels * depth_multiplier
        if depthwise_bias is None:
            depthwise_bias = bias and not mid_norm
        self.backend = _check_backend_name(backend)
        self.depthwise = DepthwiseConv2d(in_channels, mid, kernel_size, stride, padding, dilation,
                                         bias=depthwise_bias, padding_mode=padding_mode,
                                         device=device, dtype=dtype, backend=backend)
        self.mid_norm = (nn.BatchNorm2d(mid, eps=norm_eps, momentum=norm_momentum, device=device,
                                        dtype=dtype) if mid_norm else None)
        self.pointwise = AtrousConv2d(mid, out_channels, 1, bias=bias, device=device, dtype=dtype,
                                      backend=backend)
        self.mid_relu = mid_relu
        self.out_relu = out_relu

    @classmethod
    def from_convs(cls, depthwise: nn.Conv2d, pointwise: nn.Conv2d, *,
                   mid_norm: Optional[nn.BatchNorm2d] = None, mid_relu: bool = False,
                   out_relu: bool = False, backend: Optional[str] = None):
        """Wrap an existing (depthwise, pointwise) pair; the parameters are shared, not copied."""
        c = depthwise.in_channels
        if depthwise.groups != c or pointwise.kernel_size != (1, 1) or pointwise.groups != 1 \
                or pointwise.in_channels != depthwise.out_channels or pointwise.stride != (1, 1) \
                or pointwise.padding not in ((0, 0), "valid"):
            raise ValueError("from_convs expects a depthwise conv (groups == in_channels) and a 1x1, "
                             "stride-1, unpadded pointwise conv over its outputs")
        m = cls(c, pointwise.out_channels, depthwise.kernel_size, depthwise.stride, depthwise.padding,
                depthwise.dilation, bias=pointwise.bias is not None, padding_mode=depthwise.padding_mode,
                device="meta", depth_multiplier=depthwise.out_channels // c,
                depthwise_bias=depthwise.bias is not None, mid_relu=mid_relu, out_relu=out_relu,
                backend=backend)
        m.depthwise.weight, m.depthwise.bias = depthwise.weight, depthwise.bias
        m.pointwise.weight, m.pointwise.bias = pointwise.weight, pointwise.bias
        m.mid_norm = mid_norm
        return m

    def _fused(self) -> bool:
        n = self.mid_norm
        return n is None or not (n.training or n.running_mean is None)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        dw, pw = self.depthwise, self.pointwise
        if not self._fused():
            mid = dw(input)
            if _bn_trainable(self, self.mid_norm):
                mid = batch_norm_act_train(self.mid_norm, _RELU if self.mid_relu else None, mid,
                                           self.backend)
            else:
                mid = self.mid_norm(mid)
                if self.mid_relu:
                    mid = torch.relu(mid)
            out = pw(mid)
            return torch.relu(out) if self.out_relu else out
        return self._fused_forward(input)

    def _fused_forward(self, input, out_norm: Optional[nn.BatchNorm2d] = None,
                       out_relu: bool = False) -> torch.Tensor:
        """The fused op; `out_norm` (an eval-mode BatchNorm after this module, when out_relu is
        off) is folded into the pointwise weights and `out_relu` ORed with self.out_relu."""
        dw, pw = self.depthwise, self.pointwise
        x, padding = input, dw.padding
        if dw.padding_mode != "zeros":
            x, padding = F.pad(x, dw._reversed_padding_repeated_twice, mode=dw.padding_mode), 0
        w, b = dw.weight, dw.bias
        if self.mid_norm is not None:
            w, b = _folded(dw, self.mid_norm)
        pw_w, pw_b = (pw.weight, pw.bias) if out_norm is None else _folded(pw, out_norm)
        relu = self.out_relu or out_relu
        # where "auto" runs the two halves apart, each may be oneDNN's packed call
        return DF.depthwise_separable_conv2d(
            x, w, pw_w, b, pw_b, dw.stride, padding, dw.dilation, mid_relu=self.mid_relu,
            out_relu=relu, backend=self.backend,
            _halves=(lambda x: _onednn_fused(dw, w, b, _RELU if self.mid_relu else None, x),
                     lambda mid: _onednn_fused(pw, pw_w, pw_b, _RELU if relu else None, mid)))

    def extra_repr(self):
        return (f"mid_relu={self.mid_relu}, out_relu={self.out_relu}"
                + (f", backend={self.backend!r}" if self.backend else ""))


def _effective_backend(m: nn.Module) -> str:
    return getattr(m, "backend", None) or _backends.current_backend()


def _hooked(*mods) -> bool:
    return any(m is not None and (m._forward_hooks or m._forward_pre_hooks) for m in mods)


# oneDNN's inference convolution (the op Inductor's CPU freezing pass emits): weights reordered
# once into oneDNN's blocked layout and the activation fused as a post-op. Per conv module:
# (key, folded weight it was packed from, packed weight).
_ONEDNN_PACKED: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()
_ONEDNN_ACTS = {type(None): ("none", []), nn.ReLU: ("relu", []), nn.ReLU6: ("hardtanh", [0.0, 6.0])}
_ONEDNN_OK = (torch.backends.mkldnn.is_available()
              and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
              and hasattr(torch._C._nn, "mkldnn_reorder_conv2d_weight"))
_ONEDNN_NCHW_OK = True  # the op keeps NCHW for NCHW input and plain weights
# NCHW outputs smaller than this keep F.conv2d + the activation: with plain weights oneDNN's
# call costs ~50 us more than F.conv2d (2-core AVX-512 Xeon), which the saved activation pass
# repays only on large outputs (96->576 1x1: 7^2 0.43x, 13^2 0.57x, 25^2 1.00x, 33^2 (2.5 MiB)
# 1.02x; 32->192 1x1 65^2 (3.2 MiB) 1.08x; 16->96 1x1 257^2 1.20x)
_ONEDNN_NCHW_MIN_BYTES = 2 << 20


def _out_bytes(conv, w, x) -> int:
    """Bytes of conv's output for input x (int padding)."""
    p, q = (max(0, conv_out_size(x.shape[i + 2], w.shape[i + 2], conv.stride[i], conv.padding[i],
                                 conv.dilation[i])) for i in (0, 1))
    return x.shape[0] * w.shape[0] * p * q * x.element_size()


def _onednn_fused(conv, w, b, act, x):
    """conv(x) with (w, b) (folded or the module's own) and act, by oneDNN's inference
    convolution where "auto" sends this conv to torch (oneDNN) anyway: float32 CPU inference
    (grad mode off) of a zero-padded conv. channels_last: weights packed once, the activation
    fused (removes the weight reorder torch does per call and the activation's pass). NCHW: only
    with an activation, with plain weights (the call then keeps NCHW; packed weights would
    return channels_last): the activation's pass removed (MobileNetV2's ReLU6 expansions on an
    AVX2 EPYC 1.02-1.33x, without an activation 0.95-0.98x, so not taken), on outputs of
    _ONEDNN_NCHW_MIN_BYTES or more. None where it does not apply."""
    global _ONEDNN_OK, _ONEDNN_NCHW_OK
    if not _ONEDNN_OK or torch.is_grad_enabled() or x.device.type != "cpu" \
            or x.dtype != torch.float32 or x.dim() != 4 \
            or conv.padding_mode != "zeros" or isinstance(conv.padding, str) \
            or _effective_backend(conv) != "auto" or torch.compiler.is_compiling() \
            or torch.is_autocast_enabled("cpu"):
        return None
    nchw = x.is_contiguous()
    if nchw:
        if act is None or not _ONEDNN_NCHW_OK or _out_bytes(conv, w, x) < _ONEDNN_NCHW_MIN_BYTES:
            return None
    elif not x.is_contiguous(memory_format=torch.channels_last):
        return None
    conf = (conv.stride, conv.padding, conv.dilation, conv.groups)
    pick = DF._auto_pick("conv2d", x, w, b, *conf)
    if pick is None:  # decided here, so that a signature's first call takes this path too
        DF._conv2d(x, w, b, *conf, "auto", None, decide_only=True)
        pick = DF._auto_pick("conv2d", x, w, b, *conf)
    if pick != "torch":
        return None  # "auto" runs this conv itself (or the call cannot be remembered)
    if nchw:
        packed = w
    else:
        key = (id(w), w._version, tuple(x.shape), *conf)
        hit = _ONEDNN_PACKED.get(conv)
        if hit is not None and hit[0] == key and hit[1] is w:
            packed = hit[2]
        else:
            try:
                packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
                    w.to_mkldnn(), list(conv.padding), list(conv.stride), list(conv.dilation),
                    conv.groups, list(x.shape))
            except RuntimeError:
                _ONEDNN_OK = False  # this torch build cannot: F.conv2d from now on
                return None
            _ONEDNN_PACKED[conv] = (key, w, packed)
    attr, scalars = _ONEDNN_ACTS[type(act)]
    try:
        y = torch.ops.mkldnn._convolution_pointwise(
            x, packed, b, list(conv.padding), list(conv.stride), list(conv.dilation),
            conv.groups, attr, scalars, "")
    except (RuntimeError, TypeError):  # a private op: a torch that changed it gets F.conv2d
        _ONEDNN_OK = False
        return None
    if nchw and not y.is_contiguous():  # a torch whose op answers in another layout
        _ONEDNN_NCHW_OK = False
        y = y.contiguous()
    if _backends.PICK_OBSERVERS:
        _backends.observe_pick("onednn-packed" if not nchw else "onednn-fused")
    return y


def _foldable(conv, bn) -> bool:
    if type(bn) is not nn.BatchNorm2d or bn.training or bn.running_mean is None \
            or _hooked(conv, bn):
        return False
    if isinstance(conv, DepthwiseSeparableConv2d):
        ok = conv._fused() and not conv.out_relu and bn.num_features == conv.pointwise.out_channels
    else:
        ok = isinstance(conv, AtrousConv2d) and bn.num_features == conv.out_channels
    return ok and _effective_backend(conv) != "torch"


_RELU = nn.ReLU()  # the activation a DepthwiseSeparableConv2d applies after its inner norm


def _bn_trainable(conv, bn) -> bool:
    """bn (after conv) runs as dilconv.functional.batch_norm_act in training: a plain
    BatchNorm2d in training mode, no hooks, and a dilconv backend."""
    return (type(bn) is nn.BatchNorm2d and bn.training and not _hooked(bn)
            and _effective_backend(conv) != "torch")


def batch_norm_act_train(bn: nn.BatchNorm2d, act: Optional[nn.Module], input: torch.Tensor,
                         backend: Optional[str] = None) -> torch.Tensor:
    """act(bn(input)) for a training-mode BatchNorm2d and act None / ReLU / ReLU6, through
    dilconv.functional.batch_norm_act, with nn.BatchNorm2d's bookkeeping (num_batches_tracked,
    momentum None = cumulative average, track_running_stats=False = no running statistics)."""
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    lo, hi = float("-inf"), float("inf")
    if act is not None:
        lo, hi = 0.0, (6.0 if type(act) is nn.ReLU6 else float("inf"))
    return DF.batch_norm_act(input, bn.running_mean, bn.running_var, bn.weight, bn.bias, factor,
                             bn.eps, lo, hi, backend=backend)


def _train_act(mod) -> bool:
    return mod is not None and type(mod) in (nn.ReLU, nn.ReLU6) and not _hooked(mod)


def conv_norm_act(conv: nn.Module, bn: nn.Module, act: Optional[nn.Module], input: torch.Tensor):
    """act(bn(conv(input))) (act may be None), as one conv where that is possible: `conv` a
    dilconv conv module, `bn` an eval-mode nn.BatchNorm2d (folded into the conv's weight and
    bias, exact up to rounding, cached while parameters and running statistics are unchanged),
    `act` nn.ReLU / nn.ReLU6 (dilconv.functional.conv2d_clamp: the CPU kernels clamp as they
    store, other backends clamp the fresh output in place; a DepthwiseSeparableConv2d takes a
    ReLU into its fused op), no forward hooks, and a backend other than "torch" (the reference
    keeps plain torch.nn semantics). In training mode (a training-mode BatchNorm2d, act None /
    ReLU / ReLU6, a dilconv backend) the conv runs, then `batch_norm_act_train`. Otherwise the
    three modules run one after the other. Folding removes BatchNorm's pass over the activations,
    the largest non-conv cost of CPU inference."""
    if isinstance(conv, (AtrousConv2d, DepthwiseSeparableConv2d)) and _bn_trainable(conv, bn) \
            and (act is None or _train_act(act)):
        return batch_norm_act_train(bn, act, conv(input), conv.backend)
    if not _foldable(conv, bn) or (act is not None and (type(act) not in (nn.ReLU, nn.ReLU6)
                                                        or _hooked(act))):
        y = bn(conv(input))
        return y if act is None else act(y)
    if isinstance(conv, DepthwiseSeparableConv2d):
        y = conv._fused_forward(input, bn, out_relu=type(act) is nn.ReLU)
        return F.hardtanh_(y, 0.0, 6.0) if type(act) is nn.ReLU6 else y
    w, b = _folded(conv, bn)
    y = _onednn_fused(conv, w, b, act, input)
    if y is not None:
        return y
    clamp = None if act is None else (0.0, float("inf") if type(act) is nn.ReLU else 6.0)
    return conv._conv_forward(input, w, b, clamp)


class ConvNormActSequential(nn.Sequential):
    """`nn.Sequential` (same children, same state_dict) that runs each conv -> BatchNorm2d
    [-> ReLU / ReLU6] run of its children through `conv_norm_act`: in inference under a dilconv
    backend, one conv with the BatchNorm folded in; in training under a dilconv backend, the conv
    then `batch_norm_act_train` (BatchNorm and activation in one op). Under backend "torch", or
    where a child has forward hooks, it is exactly nn.Sequential."""

    def forward(self, input):
        mods = list(self._modules.values())
        i, n = 0, len(mods)
        while i < n:
            m = mods[i]
            bn = mods[i + 1] if i + 1 < n else None
            if bn is not None and (_foldable(m, bn) or (
                    isinstance(m, (AtrousConv2d, DepthwiseSeparableConv2d))
                    and _bn_trainable(m, bn))):
                act = mods[i + 2] if i + 2 < n and type(mods[i + 2]) in (nn.ReLU, nn.ReLU6) \
                    and not _hooked(mods[i + 2]) else None
                input = conv_norm_act(m, bn, act, input)
                i += 2 if act is None else 3
            else:
                input = m(input)
                i += 1
        return input
