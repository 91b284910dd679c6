"""DilatedNet (Yu & Koltun, 1511.07122; fyu/dilation): the dilated VGG16 front end and the
context module (basic / large) with the paper's identity initialisations (eq. 4 / eq. 5)."""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import torch
import torch.nn as nn

from dilconv.models._layers import bilinear_upsampler, conv, mirror_pad
from dilconv.models.vgg import VGG16

DILATIONS = (1, 1, 2, 4, 8, 16, 1)  # layers 1-7 (3x3); layer 8 is 1x1
LABEL_MARGIN = 186  # front end: input reflection-padded by this much on each side
CONTEXT_PAD = 33  # context module: its receptive field is 67


class ContextModule(nn.Module):
    """Table 1: seven 3x3 convs (dilations 1,1,2,4,8,16,1) with ReLU, then a 1x1 conv. Basic:
    C channels throughout; large: 2C,2C,4C,8C,16C,32C,32C,C. The input is padded by 33 on the
    first layer only (the released VOC model's ct_conv1_1); the others are unpadded, so the
    output has the input's size. init="identity": eq. 4 (basic) / eq. 5 (large), with noise of
    std noise_std * C / c_{i+1} on the non-identity weights of the large module."""

    def __init__(self, channels: int = 21, kind: str = "basic", *, init: str = "identity",
                 noise_std: float = 1e-3, backend=None):
        super().__init__()
        if kind not in ("basic", "large"):
            raise ValueError(f"kind must be 'basic' or 'large', got {kind!r}")
        c = channels
        mult = (1,) * 8 if kind == "basic" else (2, 2, 4, 8, 16, 32, 32, 1)
        widths = [c] + [m * c for m in mult]
        self.kind, self.channels = kind, c
        convs = []
        for i, d in enumerate(DILATIONS):
            convs.append(conv(widths[i], widths[i + 1], 3, 1, CONTEXT_PAD if i == 0 else 0, d,
                              backend=backend))
        convs.append(conv(widths[7], widths[8], 1, backend=backend))
        self.convs = nn.ModuleList(convs)
        if init == "identity":
            self.reset_identity(noise_std)
        elif init != "default":
            raise ValueError(f"init must be 'identity' or 'default', got {init!r}")

    @torch.no_grad()
    def reset_identity(self, noise_std: float = 1e-3) -> None:
        """eq. 4: k(t, a) = 1[t=0] 1[a=b]; eq. 5: C / c_{i+1} where t = 0 and
        floor(a C / c_i) = floor(b C / c_{i+1}), else N(0, sigma^2), sigma = noise_std * C / c_{i+1}
        (sigma << C / c_{i+1}). Biases 0. With noise_std=0 both modules pass a nonnegative input
        through unchanged."""
        C = self.channels
        for m in self.convs:
            if m.weight.device.type == "meta":
                continue
            ci, co = m.in_channels, m.out_channels
            w = m.weight
            if self.kind == "basic":
                w.zero_()
            else:
                w.normal_(0, noise_std * C / co)
            a = torch.arange(ci)
            b = torch.arange(co)
            mask = (a[None, :] * C // ci) == (b[:, None] * C // co)  # [co, ci]
            r, s = w.shape[-2] // 2, w.shape[-1] // 2
            centre = w[:, :, r, s]
            centre[mask] = 1.0 if self.kind == "basic" else C / co  # other taps keep the noise
            m.bias.zero_()

    def forward(self, x):
        for m in self.convs[:-1]:
            x = torch.relu(m(x))
        return self.convs[-1](x)


class DilatedNet(nn.Module):
    """Front end (+ optional context module) with 8x upsampling (depthwise bilinear transposed
    conv, kernel 16, stride 8, pad 4, fixed, as the released deploy nets) to the input size.
    Any input size: reflection-padded by the label margin 186 (and to a multiple of 8), the output
    cropped back. state_dict: frontend.* (VGG16 dilated variant: features.*, fc6, fc7),
    final (fc-final), context.* (if any), upsample."""

    def __init__(self, num_classes: int = 21, context: Optional[str] = None, *,
                 in_channels: int = 3, context_init: str = "identity", noise_std: float = 1e-3,
                 backend=None):
        super().__init__()
        self.frontend = VGG16("dilated", in_channels=in_channels, backend=backend)
        self.final = conv(4096, num_classes, 1, backend=backend)
        nn.init.normal_(self.final.weight, 0, 1e-3)
        nn.init.zeros_(self.final.bias)
        self.context = (ContextModule(num_classes, context, init=context_init, noise_std=noise_std,
                                      backend=backend) if context else None)
        self.upsample = bilinear_upsampler(num_classes, 8, depthwise=True, padding=4, backend=backend)

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        h, w = x.shape[-2:]
        m = LABEL_MARGIN
        xp = mirror_pad(x, (m, m + (-w) % 8, m, m + (-h) % 8))
        y = self.final(self.frontend.forward_stages(xp)["fc7"])
        if self.context is not None:
            y = self.context(y)
        return OrderedDict(out=self.upsample(y)[..., :h, :w])


def dilatednet(*, num_classes: int = 21, context: Optional[str] = None,
               backend: Optional[str] = None, **kw) -> DilatedNet:
    """context: None (front end only), "basic" or "large"."""
    return DilatedNet(num_classes, context, backend=backend, **kw)
