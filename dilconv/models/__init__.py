"""Segmentation networks and backbones built on dilconv modules: every convolution is a dilconv
module carrying the builder's `backend=` (None follows `dilconv.use_backend`, default "auto").

Builders return models whose forward gives an OrderedDict with "out" (and "aux" when asked) at
the input's resolution, torchvision-style."""
from dilconv.models.backbones import BACKBONES, make_backbone
from dilconv.models.deeplab import (deeplabv2, deeplabv3, deeplabv3_resnet50, deeplabv3_resnet101,
                                    deeplabv3plus, fcn_resnet50, fcn_resnet101)
from dilconv.models.mobilenetv2 import MobileNetV2, mobilenet_v2
from dilconv.models.resnet import ResNet, resnet50, resnet101, resnext50_32x4d

__all__ = [
    "BACKBONES", "make_backbone", "MobileNetV2", "ResNet", "mobilenet_v2", "resnet50",
    "resnet101", "resnext50_32x4d", "deeplabv2", "deeplabv3", "deeplabv3_resnet50",
    "deeplabv3_resnet101", "deeplabv3plus", "fcn_resnet50", "fcn_resnet101",
]
