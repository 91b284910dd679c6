"""Segmentation networks and backbones built on dilconv modules: every convolution is a dilconv
module carrying the builder's `backend=` (None follows `dilconv.use_backend`, default "auto"), so
switching backend switches the whole network.

Networks return an OrderedDict with "out" (and "aux" when asked) at the input's resolution, for
inputs of any size:
  fcn32s / fcn16s / fcn8s (VGG16), dilatednet (front end, context "basic"/"large"),
  deeplabv2, deeplabv3, deeplabv3plus, pspnet, unet, hypercolumns, multigrid /
  progressive_multigrid, and torchvision's deeplabv3_resnet50/101 and fcn_resnet50/101 layouts.
Backbones (stage outputs via `forward_stages`): vgg16, resnet50, resnet101, resnext50_32x4d,
mobilenet_v2, xception65, alexnet (torchvision layouts where torchvision has the model).
`build(name, **kw)` builds any of them by name (MODELS lists the names)."""
from dilconv.models._layers import bilinear_kernel, count_params
from dilconv.models.alexnet import AlexNet, AlexNetCaffe, alexnet
from dilconv.models.backbones import BACKBONES, make_backbone
from dilconv.models.deeplab import (ASPP, DeepLabV3, DeepLabV3Plus, deeplabv2, deeplabv3,
                                    deeplabv3_resnet50, deeplabv3_resnet101, deeplabv3plus,
                                    fcn_resnet50, fcn_resnet101)
from dilconv.models.dilatednet import ContextModule, DilatedNet, dilatednet
from dilconv.models.fcn import FCNVGG16, fcn8s, fcn16s, fcn32s
from dilconv.models.hypercolumns import HypercolumnHead, Hypercolumns, hypercolumns
from dilconv.models.mobilenetv2 import MobileNetV2, mobilenet_v2
from dilconv.models.multigrid import MGConv, MultigridNet, multigrid, progressive_multigrid
from dilconv.models.pspnet import PSPNet, pspnet
from dilconv.models.resnet import ResNet, resnet50, resnet101, resnext50_32x4d
from dilconv.models.unet import UNet, unet
from dilconv.models.vgg import VGG16, vgg16
from dilconv.models.xception import Xception65, xception65

MODELS = {
    "fcn32s": fcn32s, "fcn16s": fcn16s, "fcn8s": fcn8s, "dilatednet": dilatednet,
    "deeplabv2": deeplabv2, "deeplabv3": deeplabv3, "deeplabv3plus": deeplabv3plus,
    "deeplabv3_resnet50": deeplabv3_resnet50, "deeplabv3_resnet101": deeplabv3_resnet101,
    "fcn_resnet50": fcn_resnet50, "fcn_resnet101": fcn_resnet101, "pspnet": pspnet,
    "unet": unet, "hypercolumns": hypercolumns, "multigrid": multigrid,
    "progressive_multigrid": progressive_multigrid,
}


def build(name: str, **kwargs):
    """Build a segmentation network by name (see MODELS) with the builder's keyword arguments."""
    try:
        fn = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}") from None
    return fn(**kwargs)


__all__ = [
    "ASPP", "AlexNet", "AlexNetCaffe", "BACKBONES", "ContextModule", "DeepLabV3", "DeepLabV3Plus",
    "DilatedNet", "FCNVGG16", "HypercolumnHead", "Hypercolumns", "MGConv", "MODELS",
    "MobileNetV2", "MultigridNet", "PSPNet", "ResNet", "UNet", "VGG16", "Xception65", "alexnet",
    "bilinear_kernel", "build", "count_params", "deeplabv2", "deeplabv3", "deeplabv3_resnet50",
    "deeplabv3_resnet101", "deeplabv3plus", "dilatednet", "fcn8s", "fcn16s", "fcn32s",
    "fcn_resnet50", "fcn_resnet101", "hypercolumns", "make_backbone", "mobilenet_v2",
    "multigrid", "progressive_multigrid", "pspnet", "resnet50", "resnet101", "resnext50_32x4d",
    "unet", "vgg16", "xception65",
]
