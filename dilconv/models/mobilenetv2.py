"""MobileNetV2 in torchvision's layout (its state_dicts load with strict=True), with `width_mult`
and an output stride of 32/16/8 (DeepLab: the would-be strided block runs at stride 1 with the
current rate; later blocks' depthwise convs use the multiplied rate)."""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import torch
import torch.nn as nn

from dilconv.models._layers import ConvBNAct, ConvNormActSequential, check_output_stride, conv

# t (expansion), c (channels), n (blocks), s (stride of the first block)
SETTINGS = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1],
            [6, 160, 3, 2], [6, 320, 1, 1]]


def _make_divisible(v: float, divisor: int, min_value: Optional[int] = None) -> int:
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class InvertedResidual(nn.Module):
    def __init__(self, inp, oup, stride, expand_ratio, dilation=1, *, backend=None):
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.stride = stride
        self.use_res_connect = stride == 1 and inp == oup
        layers = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(inp, hidden, 1, act=nn.ReLU6, backend=backend))
        # ReLU6 sits between depthwise and pointwise: the fused separable op (ReLU only) does not
        # apply, and the torchvision state_dict layout is kept.
        layers += [ConvBNAct(hidden, hidden, 3, stride, dilation, groups=hidden, act=nn.ReLU6,
                             backend=backend),
                   conv(hidden, oup, 1, bias=False, backend=backend),
                   nn.BatchNorm2d(oup)]
        self.conv = ConvNormActSequential(*layers)
        self.out_channels = oup

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """Stage outputs (`forward_stages`), strides before dilation: layer1 (2; features[1]),
    layer2 (4; features[3]), layer3 (8; features[6]), layer4 (16; features[13]),
    layer5 (32; features[17], the 320-channel map DeepLab uses) and, with include_top, last
    (features[18], 1280 channels). include_top=False drops features[18] and the classifier."""

    stage_strides = OrderedDict(layer1=2, layer2=4, layer3=8, layer4=16, layer5=32)
    _stage_ends = OrderedDict(layer1=1, layer2=3, layer3=6, layer4=13, layer5=17)

    def __init__(self, num_classes=1000, width_mult=1.0, round_nearest=8, dropout=0.2,
                 output_stride=32, include_top=True, in_channels=3, *, backend=None):
        super().__init__()
        check_output_stride(output_stride)
        input_channel = _make_divisible(32 * width_mult, round_nearest)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult), round_nearest)
        features = [ConvBNAct(in_channels, input_channel, 3, 2, act=nn.ReLU6, backend=backend)]
        stride, rate = 2, 1
        self.stage_channels = OrderedDict()
        for t, c, n, s in SETTINGS:
            oc = _make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                st = s if i == 0 else 1
                r = rate
                if st > 1 and stride >= output_stride:
                    st, rate = 1, rate * st
                elif st > 1:
                    stride *= st
                features.append(InvertedResidual(input_channel, oc, st, t, r if i == 0 else rate,
                                                 backend=backend))
                input_channel = oc
        for name, end in self._stage_ends.items():
            self.stage_channels[name] = features[end].out_channels
        self.include_top = include_top
        if include_top:
            features.append(ConvBNAct(input_channel, self.last_channel, 1, act=nn.ReLU6,
                                      backend=backend))
            self.stage_channels["last"] = self.last_channel
        self.features = nn.Sequential(*features)
        if include_top:
            self.classifier = nn.Sequential(nn.Dropout(p=dropout),
                                            nn.Linear(self.last_channel, num_classes))
        for m in self.modules():  # torchvision's init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_stages(self, x: torch.Tensor, upto: Optional[str] = None) -> "OrderedDict[str, torch.Tensor]":
        out = OrderedDict()
        ends = {v: k for k, v in self._stage_ends.items()}
        if self.include_top:
            ends[18] = "last"
        for i, m in enumerate(self.features):
            x = m(x)
            if i in ends:
                out[ends[i]] = x
                if ends[i] == upto:
                    break
        return out

    def forward(self, x):
        x = self.features(x)
        if not self.include_top:
            return x
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1))
        return self.classifier(torch.flatten(x, 1))


def mobilenet_v2(*, num_classes=1000, width_mult=1.0, backend=None, **kw) -> MobileNetV2:
    return MobileNetV2(num_classes, width_mult, backend=backend, **kw)
