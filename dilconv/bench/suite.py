"""The op suite: layer shapes the seeds' networks run (513x513 inputs unless noted).

A spec is one layer; `expand` crosses specs with batch, dtype, layout and pass into cases.
Spatial sizes: output stride 16 on 513 -> 33x33, output stride 8 -> 65x65.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
LAYOUTS = ("nchw", "nhwc")  # nhwc = torch.channels_last
PASSES = ("fwd", "fwd+bwd")


@dataclasses.dataclass(frozen=True)
class OpSpec:
    name: str
    group: str
    op: str  # "conv2d" | "conv_transpose2d" | "separable_conv2d"
    c: int
    h: int
    w: int
    k: int  # output channels
    r: int = 3
    s: int = 3
    stride: int = 1
    padding: tuple = (0, 0)
    dilation: int = 1
    groups: int = 1
    output_padding: int = 0
    bias: bool = False
    mid: int = 0  # separable: depthwise outputs (C * multiplier); 0 -> C
    train_batch: int = 8
    quick: bool = False  # in --quick

    def desc(self) -> str:
        kind = {"conv_transpose2d": "convT", "separable_conv2d": "sep"}.get(self.op, "conv")
        g = f" g{self.groups}" if self.groups > 1 else ""
        d = f" d{self.dilation}" if self.dilation > 1 else ""
        st = f" s{self.stride}" if self.stride > 1 else ""
        return f"{kind} {self.r}x{self.s}{d}{st}{g} {self.c}->{self.k} @{self.h}x{self.w}"


def _same(r, s, d):
    return (d * (r - 1) // 2, d * (s - 1) // 2)


def conv(name, group, c, hw, k, r=3, s=None, stride=1, d=1, g=1, bias=False, tb=8, quick=False):
    s = r if s is None else s
    return OpSpec(name, group, "conv2d", c, hw, hw, k, r, s, stride, _same(r, s, d), d, g,
                  bias=bias, train_batch=tb, quick=quick)


def dw(name, group, c, hw, r=3, stride=1, d=1, tb=8, quick=False):
    return conv(name, group, c, hw, c, r, r, stride, d, c, tb=tb, quick=quick)


def sep(name, group, c, hw, k, stride=1, d=1, tb=8, quick=False):
    return OpSpec(name, group, "separable_conv2d", c, hw, hw, k, 3, 3, stride, _same(3, 3, d), d,
                  c, train_batch=tb, quick=quick)


def convT(name, group, c, hw, k, r, stride, padding=0, g=1, tb=8, quick=False):
    return OpSpec(name, group, "conv_transpose2d", c, hw, hw, k, r, r, stride, (padding, padding),
                  1, g, train_batch=tb, quick=quick)


SPECS = [
    # DeepLabV3 ASPP on ResNet-101 (2048 -> 256): rates 6/12/18 at OS16, 12/24/36 at OS8
    *[conv(f"aspp_os16_r{d}", "ASPP", 2048, 33, 256, d=d) for d in (6, 12, 18)],
    *[conv(f"aspp_os8_r{d}", "ASPP", 2048, 65, 256, d=d) for d in (12, 24, 36)],
    # DeepLabV3+ separable ASPP (Xception-65: depthwise rate r on 2048 ch + pointwise to 256)
    *[sep(f"sepaspp_os16_r{d}", "ASPP", 2048, 33, 256, d=d) for d in (6, 12, 18)],
    *[sep(f"sepaspp_os8_r{d}", "ASPP", 2048, 65, 256, d=d) for d in (12, 24, 36)],
    conv("aspp_anchor_256_d12", "ASPP", 256, 64, 256, d=12, quick=True),
    sep("sep_anchor_728_d6", "ASPP", 728, 33, 256, d=6, quick=True),
    # DeepLabV3+ decoder 3x3 on the stride-4 map (304 = 256 + 48 channels)
    conv("decoder_304", "DeepLabV3+ decoder", 304, 129, 256, tb=4),
    sep("decoder_sep_304", "DeepLabV3+ decoder", 304, 129, 256, tb=4),
    # aligned Xception-65 separable layers
    sep("xc65_entry1", "Xception-65", 128, 129, 128),
    sep("xc65_entry2", "Xception-65", 256, 65, 256),
    sep("xc65_entry3_s2", "Xception-65", 728, 65, 728, stride=2),
    sep("xc65_middle_os16", "Xception-65", 728, 33, 728),
    sep("xc65_middle_os8", "Xception-65", 728, 65, 728, d=2),
    sep("xc65_exit_os16", "Xception-65", 1024, 33, 1536, d=2),
    sep("xc65_exit2_os16", "Xception-65", 1536, 33, 2048, d=2),
    dw("xc65_dw728_d2", "Xception-65", 728, 65, d=2, quick=True),
    # MobileNetV2 depthwise 3x3 (expanded channels), DeepLab at OS16 then OS8
    dw("mnv2_dw32", "MobileNetV2", 32, 257, tb=16),
    dw("mnv2_dw96_s2", "MobileNetV2", 96, 257, stride=2, tb=16),
    dw("mnv2_dw144", "MobileNetV2", 144, 129, tb=16),
    dw("mnv2_dw192", "MobileNetV2", 192, 65, tb=16),
    dw("mnv2_dw384", "MobileNetV2", 384, 33, tb=16),
    dw("mnv2_dw576_d2", "MobileNetV2", 576, 33, d=2, tb=16),
    dw("mnv2_dw960_d2", "MobileNetV2", 960, 33, d=2, tb=16, quick=True),
    dw("mnv2_dw384_os8_d2", "MobileNetV2", 384, 65, d=2, tb=16),
    dw("mnv2_dw960_os8_d4", "MobileNetV2", 960, 65, d=4, tb=16),
    # ResNeXt-50 32x4d grouped 3x3 (224 input), and dilated at OS8 for segmentation
    conv("rx50_g32_128", "ResNeXt-50 32x4d", 128, 56, 128, g=32, tb=32, quick=True),
    conv("rx50_g32_256_s2", "ResNeXt-50 32x4d", 256, 56, 256, stride=2, g=32, tb=32),
    conv("rx50_g32_256", "ResNeXt-50 32x4d", 256, 28, 256, g=32, tb=32),
    conv("rx50_g32_512", "ResNeXt-50 32x4d", 512, 14, 512, g=32, tb=32),
    conv("rx50_g32_1024", "ResNeXt-50 32x4d", 1024, 7, 1024, g=32, tb=32),
    conv("rx50_g32_512_os8_d2", "ResNeXt-50 32x4d", 512, 65, 512, d=2, g=32),
    conv("rx50_g32_1024_os8_d4", "ResNeXt-50 32x4d", 1024, 65, 1024, d=4, g=32),
    # DilatedNet context module, large (C = 21 classes, 66x66 map), dilations 1..16
    *[conv(f"ctx_large_{i}_d{d}", "DilatedNet context", ci, 66, co, d=d, bias=True, tb=14,
           quick=(d == 8))
      for i, (ci, co, d) in enumerate([(21, 42, 1), (42, 42, 1), (42, 84, 2), (84, 168, 4),
                                       (168, 336, 8), (336, 672, 16), (672, 672, 1)], 1)],
    conv("ctx_basic_d16", "DilatedNet context", 21, 66, 21, d=16, bias=True, tb=14),
    # FCN-8s/32s fixed bilinear upsampling (500 input) and U-Net 2x2 up-convs (572 input)
    convT("fcn_upscore2", "FCN / U-Net upsampling", 21, 16, 21, 4, 2, tb=8),
    convT("fcn_upscore_pool4", "FCN / U-Net upsampling", 21, 34, 21, 4, 2, tb=8, quick=True),
    convT("fcn_upscore8", "FCN / U-Net upsampling", 21, 70, 21, 16, 8, tb=8),
    convT("fcn_upscore8_dw", "FCN / U-Net upsampling", 21, 70, 21, 16, 8, g=21, tb=8),
    convT("fcn32s_upscore", "FCN / U-Net upsampling", 21, 16, 21, 64, 32, tb=8),
    convT("unet_up1024", "FCN / U-Net upsampling", 1024, 28, 512, 2, 2, tb=4),
    convT("unet_up512", "FCN / U-Net upsampling", 512, 52, 256, 2, 2, tb=4),
    convT("unet_up256", "FCN / U-Net upsampling", 256, 100, 128, 2, 2, tb=4),
    convT("unet_up128", "FCN / U-Net upsampling", 128, 196, 64, 2, 2, tb=4),
    # factorised 1x7 / 7x1 (Inception-v3 mixed_6, 17x17) and a 7x7 depthwise (ConvNeXt-T)
    conv("incep_1x7", "1x7 / 7x1", 128, 17, 128, r=1, s=7, tb=32),
    conv("incep_7x1", "1x7 / 7x1", 128, 17, 192, r=7, s=1, tb=32, quick=True),
    conv("incep_1x7_768", "1x7 / 7x1", 768, 17, 192, r=1, s=7, tb=32),
    dw("convnext_dw7", "1x7 / 7x1", 96, 56, r=7, tb=32),
]


@dataclasses.dataclass(frozen=True)
class OpCase:
    spec: OpSpec
    n: int
    dtype: str
    layout: str
    pass_: str

    @property
    def id(self) -> str:
        return f"{self.spec.name}/n{self.n}/{self.dtype}/{self.layout}/{self.pass_}"


def select(names: Optional[str]) -> list[OpSpec]:
    """--ops: comma-separated op names, or substrings of names or groups ('' or None: all)."""
    if not names:
        return list(SPECS)
    keys = [k.strip().lower() for k in names.split(",") if k.strip()]
    exact = {s.name.lower() for s in SPECS} & set(keys)  # a full name selects only that op

    def hit(s, k):
        return s.name.lower() == k if k in exact else (k in s.name.lower() or k in s.group.lower())
    return [s for s in SPECS if any(hit(s, k) for k in keys)]


def expand(specs, batches=("1", "train"), dtypes=("fp32", "fp16", "bf16"), layouts=LAYOUTS,
           passes=PASSES) -> list[OpCase]:
    out = []
    for s in specs:
        for b in batches:
            n = s.train_batch if b == "train" else int(b)
            for dt in dtypes:
                for lay in layouts:
                    # fwd+bwd first: its float64 reference also serves the forward case
                    for p in sorted(passes, key=lambda p: p != "fwd+bwd"):
                        out.append(OpCase(s, n, dt, lay, p))
    return out


def quick_cases() -> list[OpCase]:
    """--quick: the anchor shapes, batch 1, fp32, both layouts, forward and forward+backward."""
    return expand([s for s in SPECS if s.quick], batches=("1",), dtypes=("fp32",))
