"""AlexNet: torchvision's layout (its state_dict loads strict; no groups) and the original Caffe
net (BVLC/caffe models/bvlc_alexnet@310574f: 96/256/384/384/256 channels, two groups on conv2,
conv4 and conv5, LRN after conv1/conv2, ceil-mode pooling), optionally fully convolutional."""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from dilconv.models._layers import conv


class AlexNet(nn.Module):
    """torchvision.models.AlexNet's layout with dilconv convs."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5, in_channels: int = 3, *,
                 backend=None):
        super().__init__()
        b = dict(backend=backend)
        self.features = nn.Sequential(
            conv(in_channels, 64, 11, 4, 2, **b), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            conv(64, 192, 5, 1, 2, **b), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            conv(192, 384, 3, 1, 1, **b), nn.ReLU(inplace=True),
            conv(384, 256, 3, 1, 1, **b), nn.ReLU(inplace=True),
            conv(256, 256, 3, 1, 1, **b), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2))
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes))

    def forward(self, x):
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


class AlexNetCaffe(nn.Module):
    """The original AlexNet (Caffe bvlc_alexnet). groups=2 as published (conv2, conv4, conv5 are
    two-group GroupedConv2d); groups=1 for the ungrouped variant. fully_conv=True turns fc6/fc7
    into 6x6 / 1x1 convs (fc8 then a 1x1 conv) for dense prediction (FCN-AlexNet,
    Hypercolumns). Stage outputs: conv1..conv5 (after ReLU), pool1, pool2, pool5, fc6, fc7."""

    def __init__(self, num_classes: Optional[int] = 1000, groups: int = 2, fully_conv: bool = False,
                 dropout: float = 0.5, in_channels: int = 3, *, backend=None):
        super().__init__()
        b = dict(backend=backend)
        self.fully_conv = fully_conv
        self.conv1 = conv(in_channels, 96, 11, 4, 0, **b)
        self.conv2 = conv(96, 256, 5, 1, 2, groups=groups, **b)
        self.conv3 = conv(256, 384, 3, 1, 1, **b)
        self.conv4 = conv(384, 384, 3, 1, 1, groups=groups, **b)
        self.conv5 = conv(384, 256, 3, 1, 1, groups=groups, **b)
        self.norm = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)
        self.pool = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.drop = nn.Dropout(dropout)
        if fully_conv:
            self.fc6 = conv(256, 4096, 6, 1, 0, **b)
            self.fc7 = conv(4096, 4096, 1, **b)
            self.fc8 = conv(4096, num_classes, 1, **b) if num_classes else None
        else:
            self.fc6 = nn.Linear(256 * 6 * 6, 4096)
            self.fc7 = nn.Linear(4096, 4096)
            self.fc8 = nn.Linear(4096, num_classes) if num_classes else None
        self.stage_channels = OrderedDict(conv1=96, pool1=96, conv2=256, pool2=256, conv3=384,
                                          conv4=384, conv5=256, pool5=256, fc6=4096, fc7=4096)
        for m in self.modules():  # Caffe fillers: gaussian 0.01 (fc 0.005), biases 0 / 1 (0.1 fc)
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fc = isinstance(m, nn.Linear) or m.kernel_size[0] in (1, 6) and m is not self.conv1
                nn.init.normal_(m.weight, 0, 0.005 if fc else 0.01)
                nn.init.zeros_(m.bias)
        for m in (self.conv2, self.conv4, self.conv5):
            nn.init.ones_(m.bias)
        for m in (self.fc6, self.fc7):
            nn.init.constant_(m.bias, 0.1)

    def forward_stages(self, x, upto: Optional[str] = None) -> "OrderedDict[str, torch.Tensor]":
        out = OrderedDict()

        def put(name, v):
            out[name] = v
            return name == upto

        x = F.relu(self.conv1(x))
        if put("conv1", x) or put("pool1", x := self.pool(self.norm(x))):
            return out
        x = F.relu(self.conv2(x))
        if put("conv2", x) or put("pool2", x := self.pool(self.norm(x))):
            return out
        for name in ("conv3", "conv4", "conv5"):
            x = F.relu(getattr(self, name)(x))
            if put(name, x):
                return out
        if put("pool5", x := self.pool(x)):
            return out
        if not self.fully_conv:
            x = torch.flatten(x, 1)
        x = self.drop(F.relu(self.fc6(x)))
        if put("fc6", x):
            return out
        put("fc7", self.drop(F.relu(self.fc7(x))))
        return out

    def forward(self, x):
        x = self.forward_stages(x)["fc7"]
        return self.fc8(x) if self.fc8 is not None else x


def alexnet(*, num_classes: int = 1000, variant: str = "torchvision", groups: int = 2,
            fully_conv: bool = False, backend: Optional[str] = None, **kw) -> nn.Module:
    """variant="torchvision" (torchvision layout) or "caffe" (original, grouped)."""
    if variant == "torchvision":
        return AlexNet(num_classes, backend=backend, **kw)
    if variant == "caffe":
        return AlexNetCaffe(num_classes, groups, fully_conv, backend=backend, **kw)
    raise ValueError(f"variant must be 'torchvision' or 'caffe', got {variant!r}")
