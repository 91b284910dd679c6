"""ResNet-50/101 and ResNeXt-50 32x4d in torchvision's layout (its state_dicts load with
strict=True), with `replace_stride_with_dilation` (output stride 32/16/8), DeepLab multi-grid on
layer4 and an optional three-conv deep stem (PSPNet)."""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional, Sequence

import torch
import torch.nn as nn

from dilconv.models._layers import ConvNormActSequential, conv, init_kaiming_
from dilconv.modules import conv_norm_act


class Bottleneck(nn.Module):
    """torchvision's Bottleneck (ResNet v1.5: the stride is on the 3x3 conv)."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64,
                 dilation=1, *, backend=None):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = conv(inplanes, width, 1, bias=False, backend=backend)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv(width, width, 3, stride, dilation, dilation, groups, bias=False,
                          backend=backend)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv(width, planes * self.expansion, 1, bias=False, backend=backend)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        # conv_norm_act: one conv with the BatchNorm folded in, in inference under dilconv
        out = conv_norm_act(self.conv1, self.bn1, self.relu, x)
        out = conv_norm_act(self.conv2, self.bn2, self.relu, out)
        out = conv_norm_act(self.conv3, self.bn3, None, out)
        return self.relu(out + identity)


class ResNet(nn.Module):
    """Stage outputs (`forward_stages`): stem (stride 4, after the max-pool), layer1 (4),
    layer2 (8), layer3 (16), layer4 (32) — strides before dilation.

    replace_stride_with_dilation=[l2, l3, l4] as in torchvision (the first block of a dilated
    layer keeps the previous dilation). multi_grid=(1, 2, 4): layer4's blocks get dilation
    rate * multi_grid[i], all of them (DeepLabV3: (1,2,4) at rate 2 gives (2,4,8)).
    include_top=False drops avgpool/fc (the layout of torchvision's segmentation backbones)."""

    stage_strides = OrderedDict(stem=4, layer1=4, layer2=8, layer3=16, layer4=32)

    def __init__(self, layers: Sequence[int], num_classes=1000, groups=1, width_per_group=64,
                 replace_stride_with_dilation: Optional[Sequence[bool]] = None,
                 multi_grid: Optional[Sequence[int]] = None, deep_stem=False, include_top=True,
                 in_channels=3, *, backend=None):
        super().__init__()
        if replace_stride_with_dilation is None:
            replace_stride_with_dilation = [False, False, False]
        if len(replace_stride_with_dilation) != 3:
            raise ValueError("replace_stride_with_dilation should be None or a 3-element tuple, got "
                             f"{replace_stride_with_dilation}")
        if multi_grid is not None and len(multi_grid) != layers[3]:
            raise ValueError(f"multi_grid needs one unit rate per layer4 block ({layers[3]}), got "
                             f"{tuple(multi_grid)}")
        self.backend = backend
        self.groups, self.base_width = groups, width_per_group
        self.dilation = 1
        if deep_stem:  # PSPNet / hszhao semseg "deep base": three 3x3 convs
            self.inplanes = 128
            self.conv1 = ConvNormActSequential(
                conv(in_channels, 64, 3, 2, bias=False, backend=backend), nn.BatchNorm2d(64),
                nn.ReLU(inplace=True),
                conv(64, 64, 3, bias=False, backend=backend), nn.BatchNorm2d(64),
                nn.ReLU(inplace=True),
                conv(64, 128, 3, bias=False, backend=backend))
        else:
            self.inplanes = 64
            self.conv1 = conv(in_channels, 64, 7, 2, 3, bias=False, backend=backend)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], 2, replace_stride_with_dilation[0])
        self.layer3 = self._make_layer(256, layers[2], 2, replace_stride_with_dilation[1])
        self.layer4 = self._make_layer(512, layers[3], 2, replace_stride_with_dilation[2],
                                       multi_grid)
        self.include_top = include_top
        if include_top:
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(512 * Bottleneck.expansion, num_classes)
        self.stage_channels = OrderedDict(stem=self.layer1[0].conv1.in_channels, layer1=256,
                                          layer2=512, layer3=1024, layer4=2048)
        init_kaiming_(self)  # nn.Linear keeps PyTorch's default init, as in torchvision

    def _make_layer(self, planes, blocks, stride=1, dilate=False, multi_grid=None):
        downsample = None
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = ConvNormActSequential(
                conv(self.inplanes, planes * Bottleneck.expansion, 1, stride, bias=False,
                     backend=self.backend),
                nn.BatchNorm2d(planes * Bottleneck.expansion))
        if multi_grid is not None:
            dil = [self.dilation * g for g in multi_grid]
        else:
            dil = [previous_dilation] + [self.dilation] * (blocks - 1)
        layers = [Bottleneck(self.inplanes, planes, stride, downsample, self.groups,
                             self.base_width, dil[0], backend=self.backend)]
        self.inplanes = planes * Bottleneck.expansion
        for i in range(1, blocks):
            layers.append(Bottleneck(self.inplanes, planes, groups=self.groups,
                                     base_width=self.base_width, dilation=dil[i],
                                     backend=self.backend))
        return nn.Sequential(*layers)

    def forward_stages(self, x: torch.Tensor, upto: Optional[str] = None) -> "OrderedDict[str, torch.Tensor]":
        out = OrderedDict()
        x = self.maxpool(conv_norm_act(self.conv1, self.bn1, self.relu, x))
        out["stem"] = x
        for name in ("layer1", "layer2", "layer3", "layer4"):
            if upto == list(out)[-1]:
                break
            x = getattr(self, name)(x)
            out[name] = x
        return out

    def forward(self, x):
        if not self.include_top:
            return self.forward_stages(x)["layer4"]
        x = self.forward_stages(x)["layer4"]
        return self.fc(torch.flatten(self.avgpool(x), 1))


def dilation_for(output_stride: int):
    """replace_stride_with_dilation for an output stride (32, 16, 8)."""
    return {32: [False, False, False], 16: [False, False, True], 8: [False, True, True]}[output_stride]


def resnet50(*, num_classes=1000, backend=None, **kw) -> ResNet:
    return ResNet([3, 4, 6, 3], num_classes, backend=backend, **kw)


def resnet101(*, num_classes=1000, backend=None, **kw) -> ResNet:
    return ResNet([3, 4, 23, 3], num_classes, backend=backend, **kw)


def resnext50_32x4d(*, num_classes=1000, backend=None, **kw) -> ResNet:
    return ResNet([3, 4, 6, 3], num_classes, groups=32, width_per_group=4, backend=backend, **kw)
