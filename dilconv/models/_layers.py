"""Building blocks shared by the networks. Every convolution is a dilconv module carrying the
network's `backend`, so `backend=` on a builder switches the whole network."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from dilconv import functional as DF
from dilconv.modules import (AtrousConv2d, ConvNormActSequential, ConvTranspose2d,
                             DepthwiseConv2d, DepthwiseSeparableConv2d, GroupedConv2d)


def conv(cin: int, cout: int, k, stride=1, padding=None, dilation=1, groups=1, bias=True, *,
         backend: Optional[str] = None) -> nn.Conv2d:
    """The dilconv module for a conv: depthwise, grouped or dense. padding=None: 'same' for
    odd kernels at stride 1 (dilation * (k - 1) // 2)."""
    if padding is None:
        kk = k if isinstance(k, int) else k[0]
        padding = dilation * (kk - 1) // 2
    if groups > 1 and groups == cin:
        return DepthwiseConv2d(cin, cout, k, stride, padding, dilation, bias=bias, backend=backend)
    cls = GroupedConv2d if groups > 1 else AtrousConv2d
    return cls(cin, cout, k, stride, padding, dilation, groups, bias=bias, backend=backend)


class ConvBNAct(ConvNormActSequential):
    """conv, BatchNorm, activation: torchvision's Conv2dNormActivation layout (0, 1, 2). In
    inference under a dilconv backend it runs as one conv with the BatchNorm folded in."""

    def __init__(self, cin, cout, k=3, stride=1, dilation=1, groups=1, act=nn.ReLU, *,
                 padding=None, backend=None):
        layers = [conv(cin, cout, k, stride, padding, dilation, groups, bias=False, backend=backend),
                  nn.BatchNorm2d(cout)]
        if act is not None:
            layers.append(act(inplace=True))
        super().__init__(*layers)
        self.out_channels = cout


class SepConvBN(ConvNormActSequential):
    """Atrous separable conv as in DeepLab's `split_separable_conv2d` / Xception: depthwise, BN,
    [ReLU], pointwise, BN, [ReLU]. The depthwise+BN+pointwise part is one
    DepthwiseSeparableConv2d (fused op in eval mode, which then also takes in the
    outer BN and ReLU)."""

    def __init__(self, cin, cout, k=3, stride=1, dilation=1, *, mid_relu=True, out_relu=True,
                 backend=None):
        layers = [DepthwiseSeparableConv2d(cin, cout, k, stride, dilation * (k - 1) // 2, dilation,
                                           bias=False, mid_norm=True, mid_relu=mid_relu,
                                           norm_eps=1e-3, backend=backend),
                  nn.BatchNorm2d(cout, eps=1e-3)]
        if out_relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)
        self.out_channels = cout


def bilinear_kernel(k: int) -> torch.Tensor:
    """FCN surgery.upsample_filt: a k x k bilinear interpolation kernel."""
    f = (k + 1) // 2
    c = f - 1 if k % 2 == 1 else f - 0.5
    og = torch.arange(k, dtype=torch.float64)
    w = 1 - (og - c).abs() / f
    return (w[:, None] * w[None, :]).float()


def bilinear_upsampler(channels: int, factor: int, *, depthwise: bool = False,
                       learnable: bool = False, padding: int = 0, backend=None) -> ConvTranspose2d:
    """Transposed conv, kernel 2*factor, stride factor, no bias, initialised to bilinear
    interpolation per channel (FCN's Deconvolution; only the diagonal of the C x C blob is
    filled). Fixed (requires_grad False, Caffe lr_mult 0) unless learnable."""
    k = 2 * factor
    groups = channels if depthwise else 1
    up = ConvTranspose2d(channels, channels, k, factor, padding, bias=False, groups=groups,
                         backend=backend)
    init_bilinear_(up)
    up.weight.requires_grad_(learnable)
    return up


@torch.no_grad()
def init_bilinear_(up: nn.ConvTranspose2d) -> None:
    if up.weight.device.type == "meta":  # parameter counting: nothing to fill
        return
    filt = bilinear_kernel(up.kernel_size[0]).to(up.weight.dtype)
    up.weight.zero_()
    if up.groups == 1:
        for c in range(min(up.in_channels, up.out_channels)):
            up.weight[c, c] = filt
    else:
        up.weight[:, 0] = filt
    if up.bias is not None:
        up.bias.zero_()


def crop(x: torch.Tensor, offset: int, size) -> torch.Tensor:
    """Caffe Crop (axis 2): x[..., offset:offset+h, offset:offset+w]."""
    h, w = size[-2], size[-1]
    return x[..., offset:offset + h, offset:offset + w]


def center_crop(x: torch.Tensor, size) -> torch.Tensor:
    """U-Net's crop of a skip connection to the decoder's size."""
    h, w = size[-2], size[-1]
    dh, dw = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
    return x[..., dh:dh + h, dw:dw + w]


def mirror_pad(x: torch.Tensor, pads) -> torch.Tensor:
    """Reflection padding (left, right, top, bottom) of any width: pads wider than the image are
    done by repeated reflection (mirror tiling), a single-pixel side by replication."""
    pads = list(pads)
    while any(p > 0 for p in pads):
        h, w = x.shape[-2:]
        lim = [w - 1, w - 1, h - 1, h - 1]
        step = [min(p, m) for p, m in zip(pads, lim)]
        if all(s == 0 for s, p in zip(step, pads) if p > 0):
            return F.pad(x, pads, mode="replicate")
        x = F.pad(x, step, mode="reflect")
        pads = [p - s for p, s in zip(pads, step)]
    return x


def pad_to_multiple(x: torch.Tensor, m: int, mode: str = "reflect"):
    """Pad bottom/right so H and W are multiples of m; returns (padded, (H, W)) to crop back."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % m, (-w) % m
    if ph or pw:
        x = mirror_pad(x, (0, pw, 0, ph)) if mode == "reflect" else F.pad(x, (0, pw, 0, ph))
    return x, (h, w)


def backend_of(module: nn.Module) -> Optional[str]:
    """The `backend` of the first dilconv layer in `module` (None: the current backend)."""
    for m in module.modules():
        if hasattr(m, "backend"):
            return m.backend
    return None


def resize(x: torch.Tensor, size, align_corners: bool = False, *,
           backend: Optional[str] = None) -> torch.Tensor:
    """Bilinear resize to size[-2:] (dilconv.functional.resize_bilinear: F.interpolate under
    backend "torch", dilconv's CPU kernel under the others)."""
    if tuple(x.shape[-2:]) == tuple(size[-2:]):
        return x
    return DF.resize_bilinear(x, tuple(size[-2:]), align_corners, backend=backend)


def init_kaiming_(module: nn.Module, mode: str = "fan_out") -> None:
    """torchvision's ResNet/MobileNet init: convs kaiming-normal, BN 1/0, linear N(0, 0.01)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d,)):
            nn.init.kaiming_normal_(m.weight, mode=mode, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def rates_for(output_stride: int, base=(6, 12, 18)) -> tuple:
    """DeepLab ASPP rates are given for output stride 16 and scale with 16 / output_stride."""
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    return tuple(max(1, r * 16 // output_stride) for r in base)


def check_output_stride(output_stride: int) -> None:
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")


__all__ = ["conv", "ConvBNAct", "ConvNormActSequential", "SepConvBN", "bilinear_kernel",
           "bilinear_upsampler", "init_bilinear_", "crop", "center_crop", "mirror_pad",
           "pad_to_multiple", "resize", "backend_of",
           "init_kaiming_", "count_params", "rates_for", "check_output_stride"]
