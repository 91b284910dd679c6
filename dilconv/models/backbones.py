"""Backbones by name for the segmentation networks: each returned module has
`forward_stages(x, upto=None) -> OrderedDict`, `stage_channels` and `stage_strides`, plus
`low_stage` (stride 4, DeepLabV3+'s decoder input), `aux_stage` (the auxiliary head's input) and
`high_stage` (the encoder output)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch.nn as nn

from dilconv.models._layers import check_output_stride

BACKBONES = ("resnet50", "resnet101", "resnext50_32x4d", "mobilenet_v2", "xception65")


def make_backbone(name: str, *, output_stride: int = 16, multi_grid: Optional[Sequence[int]] = None,
                  width_mult: float = 1.0, in_channels: int = 3, deep_stem: bool = False,
                  backend=None) -> nn.Module:
    check_output_stride(output_stride)
    if name in ("resnet50", "resnet101", "resnext50_32x4d"):
        from dilconv.models import resnet

        if width_mult != 1.0:
            raise ValueError(f"width_mult is a MobileNetV2 option, not {name}'s")
        m = getattr(resnet, name)(replace_stride_with_dilation=resnet.dilation_for(output_stride),
                                  multi_grid=multi_grid, deep_stem=deep_stem, include_top=False,
                                  in_channels=in_channels, backend=backend)
        m.low_stage, m.aux_stage, m.high_stage = "layer1", "layer3", "layer4"
        return m
    if multi_grid is not None or deep_stem:
        raise ValueError(f"multi_grid / deep_stem are ResNet options, not {name}'s")
    if name == "mobilenet_v2":
        from dilconv.models.mobilenetv2 import MobileNetV2

        m = MobileNetV2(width_mult=width_mult, output_stride=output_stride, include_top=False,
                        in_channels=in_channels, backend=backend)
        m.low_stage, m.aux_stage, m.high_stage = "layer2", "layer4", "layer5"
        return m
    if name == "xception65":
        from dilconv.models.xception import Xception65

        if width_mult != 1.0:
            raise ValueError("width_mult is a MobileNetV2 option, not xception65's")
        m = Xception65(output_stride=output_stride, include_top=False, in_channels=in_channels,
                       backend=backend)
        m.low_stage, m.aux_stage, m.high_stage = "entry2_low", "middle", "exit"
        return m
    raise ValueError(f"unknown backbone {name!r}; choose from {', '.join(BACKBONES)}")
