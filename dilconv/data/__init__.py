"""Segmentation data: a procedural data set for demos and tests, PASCAL VOC and Cityscapes
loaders, joint image/mask augmentations.

    from dilconv.data import build_dataset
    train = build_dataset("voc:/data/VOCdevkit", "train", crop_size=513)
    val = build_dataset("voc:/data/VOCdevkit", "val")
"""
from __future__ import annotations

from dilconv.data.base import SegmentationDataset, sample_generator
from dilconv.data.cityscapes import Cityscapes
from dilconv.data.synthetic import SyntheticShapes
from dilconv.data.transforms import (
    Compose, Normalize, RandomCrop, RandomHorizontalFlip, RandomScale, Resize, eval_transform,
    pad_collate, train_transform,
)
from dilconv.data.voc import VOCSegmentation

__all__ = [
    "Cityscapes", "Compose", "Normalize", "RandomCrop", "RandomHorizontalFlip", "RandomScale",
    "Resize", "SegmentationDataset", "SyntheticShapes", "VOCSegmentation", "build_dataset",
    "eval_transform", "pad_collate", "parse_data_spec", "sample_generator", "train_transform",
]


def parse_data_spec(spec: str):
    """'synthetic[:N_TRAIN[,N_VAL]]' | 'voc:PATH' | 'cityscapes:PATH' -> (kind, arg)."""
    kind, _, arg = spec.partition(":")
    if kind not in ("synthetic", "voc", "cityscapes"):
        raise ValueError(f"unknown data set {spec!r}: use synthetic[:N_TRAIN[,N_VAL]], voc:PATH "
                         f"or cityscapes:PATH")
    if kind != "synthetic" and not arg:
        raise ValueError(f"--data {kind} needs a path: {kind}:PATH")
    return kind, arg


def build_dataset(spec: str, split: str, crop_size=None, scale=(0.5, 2.0), seed: int = 0,
                  synthetic_classes: int = 6, synthetic_size=None):
    """The data set named by `spec` for `split` ("train" gets the training augmentations when a
    crop size is given, anything else the evaluation transform)."""
    kind, arg = parse_data_spec(spec)
    train = split == "train"
    if kind == "synthetic":
        counts = [int(x) for x in arg.split(",")] if arg else [1000, 100]
        n_train = counts[0]
        n_val = counts[1] if len(counts) > 1 else max(1, n_train // 10)
        size = synthetic_size or crop_size or 128
        # different seeds: the validation images are not training images
        return SyntheticShapes(n_train if train else n_val, size=size, num_classes=synthetic_classes,
                               seed=seed if train else seed + 7919)
    transform = (train_transform(crop_size, scale) if train and crop_size else eval_transform())
    if kind == "voc":
        return VOCSegmentation(arg, split, transform, seed)
    return Cityscapes(arg, split, transform, seed)
