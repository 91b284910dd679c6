"""DeepLab v2 (ASPP as a sum of dilated classifiers), DeepLabV3 (ASPP with image pooling; the
torchvision layout, whose state_dicts load, or the paper's head) and DeepLabV3+ (encoder-decoder,
optionally with atrous separable convs), plus torchvision's FCNHead (auxiliary head, FCN-ResNet)."""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from dilconv._ops import output_memory_format
from dilconv.models._layers import (ConvBNAct, ConvNormActSequential, SepConvBN, backend_of,
                                     conv, rates_for, resize)
from dilconv.models.backbones import make_backbone


class ASPPPooling(ConvNormActSequential):
    """Image-level features: global average pool, 1x1 conv, BN, ReLU, bilinear upsample.
    (In training mode BatchNorm over a 1x1 map needs a batch of at least 2.)"""

    def __init__(self, cin, cout, *, backend=None):
        super().__init__(nn.AdaptiveAvgPool2d(1), conv(cin, cout, 1, bias=False, backend=backend),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    def forward(self, x):
        size = x.shape[-2:]
        fmt = output_memory_format(x)
        x = super().forward(x)
        # a 1x1 map reads as plain contiguous: keep the input's layout, or the ASPP concat of a
        # channels-last network mixes layouts and falls back to a contiguous copy
        return resize(x, size, backend=backend_of(self)).contiguous(memory_format=fmt)


class ASPP(nn.Module):
    """torchvision's ASPP layout: convs = [1x1, 3x3 at each rate, image pooling], then
    project = 1x1 conv, BN, ReLU, Dropout. separable=True makes the 3x3 branches atrous
    separable convs (DeepLabV3+ "SC": depthwise, BN, ReLU, pointwise, BN, ReLU)."""

    def __init__(self, cin, rates: Sequence[int], cout=256, *, separable=False,
                 image_pooling=True, dropout=0.5, backend=None):
        super().__init__()
        branches = [ConvBNAct(cin, cout, 1, backend=backend)]
        for r in rates:
            if separable:
                branches.append(SepConvBN(cin, cout, 3, dilation=r, backend=backend))
            else:
                branches.append(ConvBNAct(cin, cout, 3, dilation=r, backend=backend))
        if image_pooling:
            branches.append(ASPPPooling(cin, cout, backend=backend))
        self.convs = nn.ModuleList(branches)
        self.project = ConvNormActSequential(
            conv(len(branches) * cout, cout, 1, bias=False, backend=backend),
            nn.BatchNorm2d(cout), nn.ReLU(inplace=True), nn.Dropout(dropout))

    def forward(self, x):
        return self.project(torch.cat([b(x) for b in self.convs], dim=1))


class DeepLabHead(ConvNormActSequential):
    """torchvision's DeepLabHead: ASPP, 3x3 conv 256, BN, ReLU, 1x1 classifier."""

    def __init__(self, cin, num_classes, rates=(12, 24, 36), *, backend=None):
        super().__init__(ASPP(cin, rates, backend=backend),
                         conv(256, 256, 3, bias=False, backend=backend), nn.BatchNorm2d(256),
                         nn.ReLU(inplace=True), conv(256, num_classes, 1, backend=backend))


class DeepLabPaperHead(ConvNormActSequential):
    """DeepLabV3 paper / TF reference: ASPP (projection 1x1 256 + BN, dropout 0.1), 1x1 logits."""

    def __init__(self, cin, num_classes, rates=(6, 12, 18), *, separable=False, backend=None):
        super().__init__(ASPP(cin, rates, separable=separable, dropout=0.1, backend=backend),
                         conv(256, num_classes, 1, backend=backend))


class FCNHead(ConvNormActSequential):
    """torchvision's FCNHead: 3x3 conv to Cin/4, BN, ReLU, Dropout 0.1, 1x1 classifier."""

    def __init__(self, cin, num_classes, *, backend=None):
        inter = cin // 4
        super().__init__(conv(cin, inter, 3, bias=False, backend=backend), nn.BatchNorm2d(inter),
                         nn.ReLU(inplace=True), nn.Dropout(0.1),
                         conv(inter, num_classes, 1, backend=backend))


# `resize_output` (an attribute of DeepLabV2/V3/V3+ and the torchvision-layout FCN, True by
# default): False returns the logits ("out", "aux") at the classifier's resolution, for a loss
# that upsamples them itself:
# dilconv.losses.cross_entropy(out, target, upsample="bilinear") computes the same loss without
# the full-size logits in memory (a training step saves the resize's output and its gradient).
def _resized(model, y, size, backend):
    return resize(y, size, backend=backend) if getattr(model, "resize_output", True) else y


class _SegModel(nn.Module):
    """backbone + classifier (+ aux_classifier), torchvision's _SimpleSegmentationModel.
    resize_output = False: logits at the classifier's resolution (see _resized)."""

    def __init__(self, backbone, classifier, aux_classifier=None):
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier
        self.aux_classifier = aux_classifier
        self.resize_output = True

    def forward(self, x):
        size = x.shape[-2:]
        feats = self.backbone.forward_stages(x, upto=self.backbone.high_stage)
        result = OrderedDict()
        bk = backend_of(self.classifier)
        result["out"] = _resized(self, self.classifier(feats[self.backbone.high_stage]), size, bk)
        if self.aux_classifier is not None:
            result["aux"] = _resized(self, self.aux_classifier(feats[self.backbone.aux_stage]),
                                     size, bk)
        return result


class DeepLabV3(_SegModel):
    pass


class FCN(_SegModel):
    pass


class DeepLabV2(_SegModel):
    pass


class ASPPSum(nn.Module):
    """DeepLab v2 ASPP (ResNet-101 version): parallel 3x3 classifiers at rates 6/12/18/24, summed
    (`Classifier_Module`; weights N(0, 0.01), biases 0)."""

    def __init__(self, cin, num_classes, rates=(6, 12, 18, 24), *, backend=None):
        super().__init__()
        self.convs = nn.ModuleList(conv(cin, num_classes, 3, dilation=r, backend=backend)
                                   for r in rates)
        for m in self.convs:
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)

    def forward(self, x):
        out = self.convs[0](x)
        for m in self.convs[1:]:
            out = out + m(x)
        return out


class DeepLabV3Plus(nn.Module):
    """Encoder: backbone + ASPP (optionally separable). Decoder: the stride-4 low-level feature,
    1x1 conv to 48 channels + BN + ReLU, concatenated with the 4x-upsampled encoder output, two
    3x3 convs of 256 (optionally separable), 1x1 classifier, upsampled to the input size
    (resize_output = False: not upsampled, see _resized)."""

    def __init__(self, backbone, num_classes, rates, *, separable=True, aux_loss=False,
                 low_channels=48, backend=None):
        super().__init__()
        self.backbone = backbone
        ch = backbone.stage_channels
        self.aspp = ASPP(ch[backbone.high_stage], rates, separable=separable, dropout=0.1,
                         backend=backend)
        self.reduce = ConvBNAct(ch[backbone.low_stage], low_channels, 1, backend=backend)
        block = SepConvBN if separable else ConvBNAct
        self.decoder = nn.Sequential(block(256 + low_channels, 256, 3, backend=backend),
                                     block(256, 256, 3, backend=backend))
        self.classifier = conv(256, num_classes, 1, backend=backend)
        self.aux_classifier = (FCNHead(ch[backbone.aux_stage], num_classes, backend=backend)
                               if aux_loss else None)
        self.resize_output = True

    def forward(self, x):
        size = x.shape[-2:]
        b = self.backbone
        feats = b.forward_stages(x, upto=b.high_stage)
        low = self.reduce(feats[b.low_stage])
        bk = backend_of(self.classifier)
        high = resize(self.aspp(feats[b.high_stage]), low.shape, backend=bk)
        y = self.classifier(self.decoder(torch.cat([high, low], dim=1)))
        result = OrderedDict()
        result["out"] = _resized(self, y, size, bk)
        if self.aux_classifier is not None:
            result["aux"] = _resized(self, self.aux_classifier(feats[b.aux_stage]), size, bk)
        return result


def deeplabv3plus(*, backbone: str = "xception65", num_classes: int = 21, output_stride: int = 16,
                  aux_loss: bool = False, separable: Optional[bool] = None,
                  multi_grid: Optional[Sequence[int]] = None, width_mult: float = 1.0,
                  atrous_rates: Optional[Sequence[int]] = None, in_channels: int = 3,
                  backend: Optional[str] = None) -> DeepLabV3Plus:
    """DeepLabV3+ (1802.02611). backbone: xception65, resnet50, resnet101, resnext50_32x4d or
    mobilenet_v2 (width_mult for a reduced width). separable=None: separable ASPP and decoder
    ("SC") for xception65 and mobilenet_v2, plain 3x3 convs for ResNets. ASPP rates (6, 12, 18)
    at output stride 16, scaled with 16 / output_stride."""
    if separable is None:
        separable = backbone in ("xception65", "mobilenet_v2")
    bb = make_backbone(backbone, output_stride=output_stride, multi_grid=multi_grid,
                       width_mult=width_mult, in_channels=in_channels, backend=backend)
    rates = tuple(atrous_rates) if atrous_rates is not None else rates_for(output_stride)
    return DeepLabV3Plus(bb, num_classes, rates, separable=separable, aux_loss=aux_loss,
                         backend=backend)


def deeplabv3(*, backbone: str = "resnet101", num_classes: int = 21, output_stride: int = 16,
              aux_loss: bool = False, multi_grid: Optional[Sequence[int]] = (1, 2, 4),
              atrous_rates: Optional[Sequence[int]] = None, separable: bool = False,
              torchvision_head: bool = False, width_mult: float = 1.0, in_channels: int = 3,
              backend: Optional[str] = None) -> DeepLabV3:
    """DeepLabV3 (1706.05587): ASPP (1x1 + 3x3 at (6, 12, 18) at output stride 16, doubled at 8;
    image pooling; 256 channels; BN), multi-grid (1, 2, 4) on ResNet layer4 (ignored for other
    backbones), the paper's head (projection, 1x1 logits). torchvision_head=True uses
    torchvision's DeepLabHead (extra 3x3 conv, dropout 0.5) instead."""
    if not backbone.startswith(("resnet", "resnext")):
        multi_grid = None
    bb = make_backbone(backbone, output_stride=output_stride, multi_grid=multi_grid,
                       width_mult=width_mult, in_channels=in_channels, backend=backend)
    rates = tuple(atrous_rates) if atrous_rates is not None else rates_for(output_stride)
    cin = bb.stage_channels[bb.high_stage]
    if torchvision_head:
        head = DeepLabHead(cin, num_classes, rates, backend=backend)
    else:
        head = DeepLabPaperHead(cin, num_classes, rates, separable=separable, backend=backend)
    aux = FCNHead(bb.stage_channels[bb.aux_stage], num_classes, backend=backend) if aux_loss else None
    return DeepLabV3(bb, head, aux)


def _tv_resnet_seg(name, num_classes, aux_loss, backend, head):
    bb = make_backbone(name, output_stride=8, backend=backend)
    cin = bb.stage_channels["layer4"]
    aux = FCNHead(1024, num_classes, backend=backend) if aux_loss else None
    if head == "deeplab":
        return DeepLabV3(bb, DeepLabHead(cin, num_classes, (12, 24, 36), backend=backend), aux)
    return FCN(bb, FCNHead(cin, num_classes, backend=backend), aux)


def deeplabv3_resnet50(*, num_classes=21, aux_loss=False, backend=None) -> DeepLabV3:
    """torchvision's deeplabv3_resnet50 (output stride 8, rates 12/24/36, no multi-grid): its
    state_dict loads with strict=True."""
    return _tv_resnet_seg("resnet50", num_classes, aux_loss, backend, "deeplab")


def deeplabv3_resnet101(*, num_classes=21, aux_loss=False, backend=None) -> DeepLabV3:
    return _tv_resnet_seg("resnet101", num_classes, aux_loss, backend, "deeplab")


def fcn_resnet50(*, num_classes=21, aux_loss=False, backend=None) -> FCN:
    """torchvision's fcn_resnet50 (output stride 8, FCNHead)."""
    return _tv_resnet_seg("resnet50", num_classes, aux_loss, backend, "fcn")


def fcn_resnet101(*, num_classes=21, aux_loss=False, backend=None) -> FCN:
    return _tv_resnet_seg("resnet101", num_classes, aux_loss, backend, "fcn")


def deeplabv2(*, backbone: str = "resnet101", num_classes: int = 21,
              rates: Sequence[int] = (6, 12, 18, 24), aux_loss: bool = False, in_channels: int = 3,
              backend: Optional[str] = None) -> DeepLabV2:
    """DeepLab v2 ASPP (1606.00915): dilated ResNet at output stride 8 with the sum of four 3x3
    classifiers at rates 6/12/18/24. (The backbone is torchvision's ResNet v1.5 layout; Caffe's
    original ResNet strides the first 1x1 conv of a block instead — same parameter count.)"""
    bb = make_backbone(backbone, output_stride=8, in_channels=in_channels, backend=backend)
    head = ASPPSum(bb.stage_channels[bb.high_stage], num_classes, rates, backend=backend)
    aux = FCNHead(bb.stage_channels[bb.aux_stage], num_classes, backend=backend) if aux_loss else None
    return DeepLabV2(bb, head, aux)
