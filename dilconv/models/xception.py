"""Modified aligned Xception-65 (DeepLabV3+; tensorflow/models research/deeplab/core/xception.py):
every module is three atrous separable convs with the stride on the third (strided separable
convs instead of max-pooling), BN after each depthwise and each pointwise conv. Separable convs
are DepthwiseSeparableConv2d with mid_norm (the fused op in eval mode)."""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional, Sequence

import torch
import torch.nn as nn

from dilconv.models._layers import ConvNormActSequential, SepConvBN, check_output_stride, conv

EPS = 1e-3  # TF batch_norm_epsilon


class XceptionModule(nn.Module):
    """skip: "conv" (1x1 strided conv + BN on the module input, added), "sum" (identity added) or
    "none". act_in_sep=False: ReLU before each separable conv, none inside (entry/middle/exit1);
    True: ReLU after the depthwise BN and after the pointwise BN (exit2)."""

    def __init__(self, cin, depths: Sequence[int], skip: str, stride: int, rate: int = 1,
                 unit_rates=(1, 1, 1), act_in_sep: bool = False, *, backend=None):
        super().__init__()
        self.skip, self.act_in_sep = skip, act_in_sep
        convs, c = [], cin
        for i, d in enumerate(depths):
            convs.append(SepConvBN(c, d, 3, stride if i == 2 else 1, rate * unit_rates[i],
                                   mid_relu=act_in_sep, out_relu=act_in_sep, backend=backend))
            c = d
        self.sep = nn.ModuleList(convs)
        if skip == "conv":
            self.shortcut = ConvNormActSequential(
                conv(cin, depths[-1], 1, stride, bias=False, backend=backend),
                nn.BatchNorm2d(depths[-1], eps=EPS))
        self.out_channels = depths[-1]

    def forward(self, x, keep: Optional[int] = None):
        """keep=i also returns the output of separable conv i (DeepLabV3+'s low-level feature)."""
        r, kept = x, None
        for i, m in enumerate(self.sep):
            if not self.act_in_sep:
                r = torch.relu(r)  # not in place: x feeds the shortcut
            r = m(r)
            if i == keep:
                kept = r
        if self.skip == "conv":
            r = r + self.shortcut(x)
        elif self.skip == "sum":
            r = r + x
        return (r, kept) if keep is not None else r


class Xception65(nn.Module):
    """Stage outputs (strides before dilation): stem (2, 64), entry1 (4, 128), entry2_low (4, 256;
    entry_flow/block2/unit_1 separable_conv2_pointwise, the V3+ decoder input), entry2 (8, 256),
    entry3 (16, 728), middle (16, 728), exit1 (32, 1024), exit (32, 2048).
    output_stride 8/16/32: as TF's stack_blocks_dense, a block that would exceed it runs at
    stride 1 with the current rate and multiplies the rate for the following blocks."""

    stage_strides = OrderedDict(stem=2, entry1=4, entry2_low=4, entry2=8, entry3=16, middle=16,
                                exit1=32, exit=32)

    def __init__(self, num_classes: int = 1000, output_stride: int = 32, include_top: bool = True,
                 in_channels: int = 3, middle_units: int = 16, exit_unit_rates=(1, 1, 1),
                 dropout: float = 0.5, *, backend=None):
        super().__init__()
        check_output_stride(output_stride)
        b = dict(backend=backend)
        self.conv1_1 = ConvNormActSequential(conv(in_channels, 32, 3, 2, bias=False, **b),
                                             nn.BatchNorm2d(32, eps=EPS), nn.ReLU(inplace=True))
        self.conv1_2 = ConvNormActSequential(conv(32, 64, 3, bias=False, **b),
                                             nn.BatchNorm2d(64, eps=EPS), nn.ReLU(inplace=True))
        stride, rate = 2, 1

        def unit(cin, depths, skip, s, unit_rates=(1, 1, 1), act_in_sep=False):
            nonlocal stride, rate
            if s > 1 and stride >= output_stride:
                m = XceptionModule(cin, depths, skip, 1, rate, unit_rates, act_in_sep, **b)
                rate *= s
            else:
                m = XceptionModule(cin, depths, skip, s, rate, unit_rates, act_in_sep, **b)
                stride *= s
            return m

        self.entry_flow = nn.Sequential(unit(64, [128] * 3, "conv", 2),
                                        unit(128, [256] * 3, "conv", 2),
                                        unit(256, [728] * 3, "conv", 2))
        self.middle_flow = nn.Sequential(*[unit(728, [728] * 3, "sum", 1) for _ in range(middle_units)])
        self.exit_flow = nn.Sequential(unit(728, [728, 1024, 1024], "conv", 2),
                                       unit(1024, [1536, 1536, 2048], "none", 1, exit_unit_rates,
                                            act_in_sep=True))
        self.stage_channels = OrderedDict(stem=64, entry1=128, entry2_low=256, entry2=256,
                                          entry3=728, middle=728, exit1=1024, exit=2048)
        self.include_top = include_top
        if include_top:  # TF: global pool, dropout, 1x1 conv logits
            self.drop = nn.Dropout(dropout)
            self.logits = conv(2048, num_classes, 1, **b)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_stages(self, x, upto: Optional[str] = None) -> "OrderedDict[str, torch.Tensor]":
        out = OrderedDict()
        x = self.conv1_2(self.conv1_1(x))
        out["stem"] = x
        e = self.entry_flow
        for name, step in (("entry1", lambda v: e[0](v)), ("entry2", None),
                           ("entry3", lambda v: e[2](v)), ("middle", self.middle_flow),
                           ("exit1", lambda v: self.exit_flow[0](v)),
                           ("exit", lambda v: self.exit_flow[1](v))):
            if upto is not None and upto in out:
                break
            if name == "entry2":
                x, low = e[1](x, keep=1)
                out["entry2_low"] = low
                if upto == "entry2_low":
                    break
            else:
                x = step(x)
            out[name] = x
        return out

    def forward(self, x):
        x = self.forward_stages(x)["exit"]
        if not self.include_top:
            return x
        x = self.logits(self.drop(x.mean((2, 3), keepdim=True)))
        return torch.flatten(x, 1)


def xception65(*, num_classes: int = 1000, output_stride: int = 32, backend: Optional[str] = None,
               **kw) -> Xception65:
    return Xception65(num_classes, output_stride, backend=backend, **kw)
