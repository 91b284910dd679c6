"""Hypercolumns (Hariharan et al., 1411.5752): a pixel's feature is the stack of the upsampled
activations above it at several depths (e.g. AlexNet pool2 256 + conv4 384 + fc7 4096 = 4736).
A linear classifier on that stack is a 1x1 conv on each layer, upsampled and summed; with a
K x K grid of location-specific classifiers, each pixel interpolates the scores of the nearby
cells' classifiers (bilinearly)."""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from dilconv.models._layers import backend_of, conv, resize

MIN_ALEXNET_INPUT = 227  # the fully convolutional AlexNet's fc6 (6x6) needs pool5 >= 6x6


class HypercolumnHead(nn.Module):
    """Per layer: 1x1 conv to num_classes * grid^2 scores, bilinear upsampling to the output size,
    sum over layers (= one linear classifier per grid cell on the concatenated hypercolumn); then
    per pixel the bilinear interpolation of the cells' scores."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, grid: int = 1, *, backend=None):
        super().__init__()
        self.grid, self.num_classes = grid, num_classes
        self.scores = nn.ModuleList(conv(c, num_classes * grid * grid, 1, backend=backend)
                                    for c in in_channels)

    @staticmethod
    def cell_weights(grid: int, size, like: torch.Tensor) -> torch.Tensor:
        """[grid^2, H, W]: the bilinear weight of each cell's classifier at each pixel (cells'
        centres at the grid cells' centres, clamped at the borders; they sum to 1)."""
        eye = torch.eye(grid * grid, dtype=like.dtype, device=like.device).reshape(-1, 1, grid, grid)
        return F.interpolate(eye, size=tuple(size), mode="bilinear", align_corners=False)[:, 0]

    def forward(self, feats: Sequence[torch.Tensor], size) -> torch.Tensor:
        s = None
        bk = backend_of(self)
        for m, f in zip(self.scores, feats):
            y = resize(m(f), size, backend=bk)
            s = y if s is None else s + y
        if self.grid == 1:
            return s
        n, _, h, w = s.shape
        s = s.reshape(n, self.grid * self.grid, self.num_classes, h, w)
        wts = self.cell_weights(self.grid, (h, w), s)
        return (s * wts[None, :, None]).sum(1)


class Hypercolumns(nn.Module):
    def __init__(self, backbone: nn.Module, layers: Sequence[str], num_classes: int = 21,
                 grid: int = 1, min_size: int = 1, *, backend=None):
        super().__init__()
        self.backbone, self.layers, self.min_size = backbone, tuple(layers), min_size
        ch = backbone.stage_channels
        unknown = [l for l in self.layers if l not in ch]
        if unknown:
            raise ValueError(f"unknown layers {unknown}; the backbone has {list(ch)}")
        self.head = HypercolumnHead([ch[l] for l in self.layers], num_classes, grid, backend=backend)
        self._upto = max(self.layers, key=list(ch).index)

    def hypercolumns(self, x: torch.Tensor) -> torch.Tensor:
        """The stacked features themselves, [N, sum(channels), H, W]."""
        feats = self.backbone.forward_stages(x, upto=self._upto)
        bk = backend_of(self.head)
        return torch.cat([resize(feats[l], x.shape, backend=bk) for l in self.layers], 1)

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        h, w = x.shape[-2:]
        ph, pw = max(0, self.min_size - h), max(0, self.min_size - w)
        xp = F.pad(x, (0, pw, 0, ph)) if ph or pw else x  # zero (= mean) padding for tiny inputs
        feats = self.backbone.forward_stages(xp, upto=self._upto)
        out = self.head([feats[l] for l in self.layers], xp.shape[-2:])
        return OrderedDict(out=out[..., :h, :w])


def hypercolumns(*, backbone: str = "alexnet", layers: Optional[Sequence[str]] = None,
                 num_classes: int = 21, grid: int = 1, output_stride: int = 32,
                 in_channels: int = 3, backend: Optional[str] = None) -> Hypercolumns:
    """backbone "alexnet" (the paper's: the original grouped AlexNet, fully convolutional;
    default layers pool2, conv4, fc7 -> 4736-dim hypercolumns) or any make_backbone name
    (default layers: its stride-4, auxiliary and last stages). grid: K for the K x K
    location-specific classifiers (the paper uses 5 or 10; 1 = one classifier)."""
    if backbone == "alexnet":
        from dilconv.models.alexnet import AlexNetCaffe

        bb = AlexNetCaffe(None, 2, fully_conv=True, in_channels=in_channels, backend=backend)
        layers = layers or ("pool2", "conv4", "fc7")
        return Hypercolumns(bb, layers, num_classes, grid, MIN_ALEXNET_INPUT, backend=backend)
    from dilconv.models.backbones import make_backbone

    bb = make_backbone(backbone, output_stride=output_stride, in_channels=in_channels, backend=backend)
    layers = layers or (bb.low_stage, bb.aux_stage, bb.high_stage)
    return Hypercolumns(bb, layers, num_classes, grid, backend=backend)
