"""PSPNet (Zhao et al., 1612.01105; hszhao/semseg model/pspnet.py): dilated ResNet (output stride
8, three-conv deep stem), pyramid pooling over bins 1, 2, 3, 6 (each 1x1 conv to 512, BN, ReLU,
bilinear upsample), concatenated with the input (4096 ch), 3x3 conv 512 + BN + ReLU + Dropout
0.1 + 1x1 classifier; auxiliary head on layer3 (res4b22; loss weight 0.4 in the paper)."""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional, Sequence

import torch
import torch.nn as nn

from dilconv.models._layers import ConvNormActSequential, backend_of, conv, resize
from dilconv.models.backbones import make_backbone


class PPM(nn.Module):
    """Pyramid pooling module. (In training mode, BN over the 1x1 bin needs a batch >= 2.)"""

    def __init__(self, cin: int, reduction: int, bins: Sequence[int] = (1, 2, 3, 6), *, backend=None):
        super().__init__()
        self.features = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), conv(cin, reduction, 1, bias=False, backend=backend),
                          nn.BatchNorm2d(reduction), nn.ReLU(inplace=True)) for b in bins)

    def forward(self, x):
        size = x.shape[-2:]
        bk = backend_of(self)
        return torch.cat([x] + [resize(f(x), size, align_corners=True, backend=bk)
                                for f in self.features], 1)


def _head(cin, mid, num_classes, backend):
    return ConvNormActSequential(conv(cin, mid, 3, bias=False, backend=backend),
                                 nn.BatchNorm2d(mid), nn.ReLU(inplace=True), nn.Dropout2d(0.1),
                                 conv(mid, num_classes, 1, backend=backend))


class PSPNet(nn.Module):
    def __init__(self, backbone: nn.Module, num_classes: int = 21, bins=(1, 2, 3, 6),
                 aux_loss: bool = False, *, backend=None):
        super().__init__()
        self.backbone = backbone
        cin = backbone.stage_channels[backbone.high_stage]
        self.ppm = PPM(cin, cin // len(bins), bins, backend=backend)
        self.cls = _head(cin * 2, 512, num_classes, backend)
        self.aux = (_head(backbone.stage_channels[backbone.aux_stage], 256, num_classes, backend)
                    if aux_loss else None)

    def forward(self, x):
        size = x.shape[-2:]
        b = self.backbone
        feats = b.forward_stages(x, upto=b.high_stage)
        out = OrderedDict()
        bk = backend_of(self.cls)
        out["out"] = resize(self.cls(self.ppm(feats[b.high_stage])), size, align_corners=True,
                            backend=bk)
        if self.aux is not None:
            out["aux"] = resize(self.aux(feats[b.aux_stage]), size, align_corners=True, backend=bk)
        return out


def pspnet(*, backbone: str = "resnet50", num_classes: int = 21, output_stride: int = 8,
           aux_loss: bool = False, bins: Sequence[int] = (1, 2, 3, 6), deep_stem: bool = True,
           in_channels: int = 3, backend: Optional[str] = None) -> PSPNet:
    """PSPNet on a dilated ResNet (resnet50 / resnet101 / resnext50_32x4d). deep_stem=True is the
    reference's three-conv stem; deep_stem=False gives torchvision's ResNet layout (so its
    checkpoints load into `backbone`)."""
    bb = make_backbone(backbone, output_stride=output_stride, deep_stem=deep_stem,
                       in_channels=in_channels, backend=backend)
    return PSPNet(bb, num_classes, tuple(bins), aux_loss, backend=backend)
