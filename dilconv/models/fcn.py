"""FCN-32s / FCN-16s / FCN-8s on VGG16 (Long, Shelhamer, Darrell; shelhamer/fcn.berkeleyvision.org
voc-fcn*s/net.py): score layers (zero-initialised), fixed bilinear transposed-conv upsampling,
Caffe crops at the reference offsets, skip fusion by summation."""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import torch
import torch.nn as nn

from dilconv.models._layers import bilinear_upsampler, conv, crop
from dilconv.models.vgg import VGG16

# variant -> crop offsets of the reference nets
OFFSETS = {"32s": dict(score=19), "16s": dict(pool4=5, score=27),
           "8s": dict(pool4=5, pool3=9, score=31)}


class FCNVGG16(nn.Module):
    """state_dict: backbone.* (VGG16 fcn variant), score_fr, score_pool4 (16s/8s), score_pool3
    (8s) and the upsampling layers of the reference (upscore for 32s; upscore2 + upscore16 for
    16s; upscore2 + upscore_pool4 + upscore8 for 8s). The upsampling layers are Caffe
    Deconvolutions without bias, bilinear, fixed (requires_grad False) unless
    learnable_upsampling; depthwise_upsampling keeps only the diagonal of the C x C blob as a
    grouped transposed conv (same outputs, C times fewer weights). at_once: the "at-once" FCN-8s
    scaling of pool4 by 0.01 and pool3 by 1e-4 before scoring."""

    def __init__(self, variant: str = "8s", num_classes: int = 21, *,
                 learnable_upsampling: bool = False, depthwise_upsampling: bool = False,
                 at_once: bool = False, in_channels: int = 3, backend=None):
        super().__init__()
        if variant not in OFFSETS:
            raise ValueError(f"variant must be one of {list(OFFSETS)}, got {variant!r}")
        self.variant, self.at_once = variant, at_once
        self.backbone = VGG16("fcn", in_channels=in_channels, backend=backend)
        up = dict(depthwise=depthwise_upsampling, learnable=learnable_upsampling, backend=backend)
        n = num_classes
        self.score_fr = conv(4096, n, 1, backend=backend)
        if variant == "32s":
            self.upscore = bilinear_upsampler(n, 32, **up)
        else:
            self.upscore2 = bilinear_upsampler(n, 2, **up)
            self.score_pool4 = conv(512, n, 1, backend=backend)
            if variant == "16s":
                self.upscore16 = bilinear_upsampler(n, 16, **up)
            else:
                self.upscore_pool4 = bilinear_upsampler(n, 2, **up)
                self.score_pool3 = conv(256, n, 1, backend=backend)
                self.upscore8 = bilinear_upsampler(n, 8, **up)
        for m in (self.score_fr, getattr(self, "score_pool4", None), getattr(self, "score_pool3", None)):
            if m is not None:  # score layers start at zero (surgery / net.py)
                nn.init.zeros_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        off = OFFSETS[self.variant]
        s = self.backbone.forward_stages(x)
        score = self.score_fr(s["fc7"])
        if self.variant == "32s":
            out = crop(self.upscore(score), off["score"], x.shape)
        else:
            up2 = self.upscore2(score)
            p4 = s["pool4"] * 0.01 if self.at_once else s["pool4"]
            fuse = up2 + crop(self.score_pool4(p4), off["pool4"], up2.shape)
            if self.variant == "16s":
                out = crop(self.upscore16(fuse), off["score"], x.shape)
            else:
                up4 = self.upscore_pool4(fuse)
                p3 = s["pool3"] * 1e-4 if self.at_once else s["pool3"]
                fuse = up4 + crop(self.score_pool3(p3), off["pool3"], up4.shape)
                out = crop(self.upscore8(fuse), off["score"], x.shape)
        return OrderedDict(out=out)


def fcn32s(*, num_classes: int = 21, backend: Optional[str] = None, **kw) -> FCNVGG16:
    return FCNVGG16("32s", num_classes, backend=backend, **kw)


def fcn16s(*, num_classes: int = 21, backend: Optional[str] = None, **kw) -> FCNVGG16:
    return FCNVGG16("16s", num_classes, backend=backend, **kw)


def fcn8s(*, num_classes: int = 21, backend: Optional[str] = None, **kw) -> FCNVGG16:
    return FCNVGG16("8s", num_classes, backend=backend, **kw)
