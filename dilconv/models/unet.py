"""U-Net (Ronneberger et al., 1505.04597): classic valid-convolution form (572^2 -> 388^2,
crop-and-concat, 2x2 up-conv halving the channels; 23 convs) and a padded form (output = input
size); up-sampling by transposed conv or by nearest upsample + 2x2 conv."""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from dilconv.models._layers import (ConvNormActSequential, ConvTranspose2d, center_crop, conv,
                                    mirror_pad, pad_to_multiple)

VALID_MARGIN = 92  # classic U-Net: each output pixel sees 92 more pixels on every side


class DoubleConv(ConvNormActSequential):
    def __init__(self, cin, cout, padding: int, batch_norm: bool, backend=None):
        layers = []
        for c in (cin, cout):
            layers.append(conv(c, cout, 3, 1, padding, bias=not batch_norm, backend=backend))
            if batch_norm:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class UpConv(nn.Module):
    """2x up-sampling halving the channels: a 2x2 stride-2 transposed conv ("transpose") or
    nearest 2x upsample then a 2x2 conv ("upsample"; padded by one row/column at the bottom/right so
    the size is exactly doubled, as the transposed conv's)."""

    def __init__(self, cin, cout, mode: str, backend=None):
        super().__init__()
        if mode not in ("transpose", "upsample"):
            raise ValueError(f"up_mode must be 'transpose' or 'upsample', got {mode!r}")
        self.mode = mode
        if mode == "transpose":
            self.up = ConvTranspose2d(cin, cout, 2, 2, backend=backend)
        else:
            self.up = conv(cin, cout, 2, 1, 0, backend=backend)

    def forward(self, x):
        if self.mode == "transpose":
            return self.up(x)
        return self.up(F.pad(F.interpolate(x, scale_factor=2, mode="nearest"), (0, 1, 0, 1)))


class UNet(nn.Module):
    """padding=False: the classic valid form. Its raw output is smaller than the input (572 ->
    388); with overlap_tile=True (default) forward mirror-pads the input (the paper's overlap-tile
    strategy: 92 pixels plus what makes the size valid) and crops the output to the input size,
    so "out" is at input resolution for any size; overlap_tile=False returns the raw valid output
    (input sizes 16k + 12, k >= 8, e.g. 572). padding=True: 'same' convs; inputs are mirror-padded
    to a multiple of 2^depth and the output cropped back. Init: He normal, std sqrt(2 / (9 Cin))."""

    def __init__(self, in_channels: int = 1, num_classes: int = 2, base: int = 64, depth: int = 4,
                 padding: bool = False, up_mode: str = "transpose", batch_norm: bool = False,
                 overlap_tile: bool = True, *, backend=None):
        super().__init__()
        self.padding, self.depth, self.overlap_tile = padding, depth, overlap_tile
        p = 1 if padding else 0
        widths = [base * 2 ** i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        c = in_channels
        for w in widths[:-1]:
            self.down.append(DoubleConv(c, w, p, batch_norm, backend))
            c = w
        self.bottom = DoubleConv(widths[-2], widths[-1], p, batch_norm, backend)
        self.ups = nn.ModuleList()
        self.up_convs = nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.ups.append(UpConv(w * 2, w, up_mode, backend))
            self.up_convs.append(DoubleConv(w * 2, w, p, batch_norm, backend))
        self.final = conv(widths[0], num_classes, 1, backend=backend)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                fan_in = m.weight[0].numel() if isinstance(m, nn.Conv2d) else m.in_channels * 4
                nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_in))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def valid_input_size(self, out_size: int) -> tuple[int, int]:
        """(input, output) sizes of the valid form: the smallest valid input whose output covers
        out_size. Walks up from the bottleneck size b: output b-4 then (o*2-4) per level; input
        i*2+4 per level (572 <-> 388 for b = 32)."""
        b = 5
        while True:
            o = b - 4
            for _ in range(self.depth):
                o = o * 2 - 4
            if o >= max(out_size, 1):
                i = b
                for _ in range(self.depth):
                    i = i * 2 + 4
                return i, o
            b += 1

    def _forward(self, x):
        skips = []
        for m in self.down:
            x = m(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottom(x)
        for up, dc, s in zip(self.ups, self.up_convs, reversed(skips)):
            x = up(x)
            x = dc(torch.cat([center_crop(s, x.shape), x], 1))
        return self.final(x)

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        h, w = x.shape[-2:]
        if self.padding:
            xp, _ = pad_to_multiple(x, 2 ** self.depth)
            return OrderedDict(out=self._forward(xp)[..., :h, :w])
        if not self.overlap_tile:
            return OrderedDict(out=self._forward(x))
        (ih, oh), (iw, ow) = self.valid_input_size(h), self.valid_input_size(w)
        mh, mw = (ih - oh) // 2, (iw - ow) // 2
        xp = mirror_pad(x, (mw, iw - w - mw, mh, ih - h - mh))
        return OrderedDict(out=self._forward(xp)[..., :h, :w])


def unet(*, in_channels: int = 1, num_classes: int = 2, padding: bool = False,
         up_mode: str = "transpose", base: int = 64, depth: int = 4, batch_norm: bool = False,
         overlap_tile: bool = True, backend: Optional[str] = None) -> UNet:
    """The classic U-Net by default (1 input channel, 2 classes, valid convs, 31,030,658
    parameters); padding=True for the padded form."""
    return UNet(in_channels, num_classes, base, depth, padding, up_mode, batch_norm, overlap_tile,
                backend=backend)
