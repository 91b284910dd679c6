"""Neural Multigrid (Ke, Maire, Yu; 1611.07661; buttomnutstoast/Multigrid-Neural-Architectures).
A network whose layers act on a pyramid of grids (finest first). mg-conv: level i concatenates
the 2x2 max-pool of the finer level i-1, level i and the 2x nearest-upsample of the coarser level
i+1, then 3x3 conv, BN, ReLU. The input pyramid average-pools the image by 2^i. The progressive
variant (PMG, models/pnmg.mnist.lua) starts on the coarsest grid and adds finer grids one by one;
later blocks drop the coarsest grids and the output is read from the finest."""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from dilconv.models._layers import ConvNormActSequential, conv, pad_to_multiple

EPS = 1e-3


class ConvBN(ConvNormActSequential):
    """cudnn.SpatialConvolution (3x3, pad 1, with bias) + SpatialBatchNormalization(eps 1e-3)
    [+ ReLU]."""

    def __init__(self, cin, cout, relu=True, backend=None):
        layers = [conv(cin, cout, 3, backend=backend), nn.BatchNorm2d(cout, eps=EPS)]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class MGConv(nn.Module):
    """One multigrid conv layer: pyramid (list, finest first) in, pyramid out. drop=True drops the
    coarsest input grid (ResampleConcat's isDrop): len(out_channels) = len(in_channels) - 1 and
    the last kept grid sees no coarser one. relu=False: conv + BN only (the output layer)."""

    def __init__(self, in_channels: Sequence[int], out_channels: Sequence[int], drop: bool = False,
                 relu: bool = True, *, backend=None):
        super().__init__()
        n = len(in_channels) - (1 if drop else 0)
        if len(out_channels) != n or n < 1:
            raise ValueError(f"MGConv: {len(in_channels)} input grids{' (dropping one)' if drop else ''} "
                             f"give {n} output grids, got out_channels={list(out_channels)}")
        self.n = n
        cins = []
        for i in range(n):
            c = in_channels[i]
            if i > 0:
                c += in_channels[i - 1]
            if i + 1 < n:
                c += in_channels[i + 1]
            cins.append(c)
        self.convs = nn.ModuleList(ConvBN(c, o, relu, backend) for c, o in zip(cins, out_channels))

    def forward(self, xs: Sequence[torch.Tensor]) -> list:
        out = []
        for i, m in enumerate(self.convs):
            parts = []
            if i > 0:
                parts.append(F.max_pool2d(xs[i - 1], 2, ceil_mode=True))
            parts.append(xs[i])
            if i + 1 < self.n:
                parts.append(F.interpolate(xs[i + 1], scale_factor=2, mode="nearest"))
            out.append(m(torch.cat(parts, 1)))
        return out


class MGInput(nn.Module):
    """The input pyramid: level i = avg-pool of the image by 2^i, then 3x3 conv + BN + ReLU."""

    def __init__(self, in_channels: int, out_channels: Sequence[int], *, backend=None):
        super().__init__()
        self.convs = nn.ModuleList(ConvBN(in_channels, c, True, backend) for c in out_channels)

    def forward(self, x):
        return [m(x if i == 0 else F.avg_pool2d(x, 2 ** i)) for i, m in enumerate(self.convs)]


class _Partial(nn.Module):
    """Applies `inner` (a conv or mg-conv) to the coarsest `k` grids only; the finer grids pass."""

    def __init__(self, inner: nn.Module, k: int):
        super().__init__()
        self.inner, self.k = inner, k

    def forward(self, xs):
        n = len(xs)
        sub = list(xs[n - self.k:])
        y = self.inner(sub) if isinstance(self.inner, MGConv) else [self.inner(sub[0])]
        return list(xs[:n - self.k]) + list(y)


class MultigridNet(nn.Module):
    """A multigrid segmentation network. blocks: a list of (channels per grid, drop) as in the
    reference; each block has `layers` mg-conv layers (drop applies to the first); the last
    block's last layer is conv + BN without ReLU and gives the logits on the finest grid.
    progressive=True (PMG): the first block is built progressively — `layers` convs on the
    coarsest grid, then `layers` mg-convs on the 2, 3, ... coarsest grids. Any input size: the
    input is mirror-padded to a multiple of 2^(grids-1), the output cropped back.
    Init: MSR (normal, std sqrt(2 / (k*k*Cout))), biases 0."""

    def __init__(self, in_channels: int = 3, num_classes: int = 21,
                 blocks: Optional[Sequence] = None, layers: int = 1, progressive: bool = False,
                 *, backend=None):
        super().__init__()
        if blocks is None:
            g = (64, 32, 16, 8)
            blocks = [(g, False)] * 4 + [((64, 32, 16), True), ((64, 32), True)]
        blocks = [(tuple(c), bool(d)) for c, d in blocks] + [((num_classes,), True)]
        self.grids = len(blocks[0][0])
        b = dict(backend=backend)
        seq = [MGInput(in_channels, blocks[0][0], **b)]
        chans = list(blocks[0][0])
        if progressive:
            g = self.grids
            for k in range(1, g + 1):
                for _ in range(layers):
                    sub = chans[g - k:]
                    inner = ConvBN(sub[0], sub[0], True, backend) if k == 1 else MGConv(sub, sub, **b)
                    seq.append(_Partial(inner, k))
            first = 1
        else:
            first = 0
        for bi, (out, drop) in enumerate(blocks):
            if bi < first:
                continue
            for li in range(layers):
                last = bi == len(blocks) - 1 and li == layers - 1
                if bi == 0 and li == 0:
                    continue  # the input layer is MGInput
                d = drop and li == 0
                seq.append(MGConv(chans, out, d, relu=not last, **b))
                chans = list(out)
        if len(chans) != 1:
            raise ValueError("the blocks must end on the finest grid only")
        self.layers = nn.ModuleList(seq)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        h, w = x.shape[-2:]
        xp, _ = pad_to_multiple(x, 2 ** (self.grids - 1))
        xs = xp
        for m in self.layers:
            xs = m(xs)
        return OrderedDict(out=xs[0][..., :h, :w])


def multigrid(*, in_channels: int = 3, num_classes: int = 21, blocks: Optional[Sequence] = None,
              layers: int = 1, progressive: bool = False,
              backend: Optional[str] = None) -> MultigridNet:
    """Neural Multigrid segmentation network; default blocks are the reference's PMG MNIST net
    (4 grids of 64, 32, 16, 8 channels x 4 blocks, then 3 grids, 2 grids, the output grid)."""
    return MultigridNet(in_channels, num_classes, blocks, layers, progressive, backend=backend)


def progressive_multigrid(**kw) -> MultigridNet:
    return multigrid(progressive=True, **kw)
