"""VGG16 in torchvision's layout, its FCN variant (conv1_1 pad 100, ceil-mode pooling, fc6/fc7 as
7x7 and 1x1 convs) and the DilatedNet front end (pool4/pool5 removed, conv5 dilation 2, fc6
dilation 4, no padding anywhere)."""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from dilconv.models._layers import conv

CFG_D = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
# features index -> stage name (torchvision indices: pools at 4, 9, 16, 23, 30)
POOLS = OrderedDict([(4, "pool1"), (9, "pool2"), (16, "pool3"), (23, "pool4"), (30, "pool5")])


def _features(variant: str, in_channels: int, backend) -> nn.Sequential:
    layers, c, block = [], in_channels, 1
    for v in CFG_D:
        if v == "M":
            if variant == "dilated" and block >= 4:  # DilatedNet: pool4 and pool5 removed
                layers.append(nn.Identity())
            else:
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=variant != "torchvision"))
            block += 1
            continue
        if variant == "torchvision":
            pad, dil = 1, 1
        elif variant == "fcn":
            pad, dil = (100 if not layers else 1), 1  # FCN: conv1_1 pad 100
        else:  # dilated front end: unpadded, conv5 at dilation 2
            pad, dil = 0, (2 if block == 5 else 1)
        layers += [conv(c, v, 3, 1, pad, dil, backend=backend), nn.ReLU(inplace=True)]
        c = v
    return nn.Sequential(*layers)


class VGG16(nn.Module):
    """variant="torchvision": torchvision's vgg16 (features / avgpool / classifier; its
    state_dict loads strict). variant="fcn": FCN's VGG16 (fc6 = 7x7 conv 4096, fc7 = 1x1 conv
    4096, each + ReLU + Dropout 0.5; no classifier). variant="dilated": DilatedNet's front end
    trunk (fc6 7x7 at dilation 4). Stage outputs: pool1..pool5 (stride 2..32) and fc7.
    `load_torchvision(state_dict)` loads a torchvision vgg16 checkpoint into any variant,
    reshaping the first two fc layers into fc6/fc7 convs (FCN's net surgery)."""

    def __init__(self, variant: str = "torchvision", num_classes: int = 1000, dropout: float = 0.5,
                 in_channels: int = 3, *, backend=None):
        super().__init__()
        if variant not in ("torchvision", "fcn", "dilated"):
            raise ValueError(f"variant must be 'torchvision', 'fcn' or 'dilated', got {variant!r}")
        self.variant = variant
        self.features = _features(variant, in_channels, backend)
        self.stage_channels = OrderedDict(pool1=64, pool2=128, pool3=256, pool4=512, pool5=512)
        if variant == "torchvision":
            self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
            self.classifier = nn.Sequential(
                nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(dropout),
                nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(dropout),
                nn.Linear(4096, num_classes))
        else:
            dil = 4 if variant == "dilated" else 1
            self.fc6 = conv(512, 4096, 7, 1, 0, dil, backend=backend)
            self.fc7 = conv(4096, 4096, 1, backend=backend)
            self.drop6, self.drop7 = nn.Dropout(dropout), nn.Dropout(dropout)
            self.stage_channels["fc7"] = 4096
        for m in self.modules():  # torchvision's init; fc6/fc7 as the Linear layers they replace
            if isinstance(m, nn.Conv2d):
                if m.kernel_size == (3, 3):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                else:
                    nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_stages(self, x: torch.Tensor, upto: Optional[str] = None) -> "OrderedDict[str, torch.Tensor]":
        out = OrderedDict()
        for i, m in enumerate(self.features):
            x = m(x)
            if i in POOLS:
                out[POOLS[i]] = x
                if POOLS[i] == upto:
                    return out
        if self.variant != "torchvision":
            x = self.drop6(F.relu(self.fc6(x)))
            out["fc7"] = self.drop7(F.relu(self.fc7(x)))
        return out

    def forward(self, x):
        if self.variant != "torchvision":
            return self.forward_stages(x)["fc7"]
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))

    def load_torchvision(self, state_dict, strict: bool = True, assign: bool = False):
        """Load a torchvision vgg16 state_dict; for the fcn/dilated variants classifier.0/.3 become
        fc6/fc7 (Linear weights reshaped to 7x7 / 1x1 conv weights) and classifier.6 is dropped."""
        if self.variant == "torchvision":
            return self.load_state_dict(state_dict, strict=strict, assign=assign)
        sd = OrderedDict((k, v) for k, v in state_dict.items() if k.startswith("features."))
        sd["fc6.weight"] = state_dict["classifier.0.weight"].reshape(4096, 512, 7, 7)
        sd["fc6.bias"] = state_dict["classifier.0.bias"]
        sd["fc7.weight"] = state_dict["classifier.3.weight"].reshape(4096, 4096, 1, 1)
        sd["fc7.bias"] = state_dict["classifier.3.bias"]
        return self.load_state_dict(sd, strict=strict, assign=assign)


def vgg16(*, num_classes: int = 1000, variant: str = "torchvision", backend=None, **kw) -> VGG16:
    return VGG16(variant, num_classes, backend=backend, **kw)
