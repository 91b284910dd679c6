"""PASCAL VOC 2012 segmentation, read from the standard directory layout:

    ROOT/JPEGImages/<id>.jpg
    ROOT/SegmentationClass/<id>.png          palette PNG: pixel = class index, 255 = void border
    ROOT/ImageSets/Segmentation/<split>.txt  one id per line (train, val, trainval)

ROOT may also be the VOCdevkit folder (or its parent). `mask_dir="SegmentationClassAug"` reads
the SBD-augmented masks (plain 8-bit PNGs) with `split="train_aug"` lists placed alongside.
"""
from __future__ import annotations

import os
from typing import Callable, Optional

import numpy as np
import torch
from dilconv.data.base import SegmentationDataset

CLASS_NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)


def voc_colormap(n: int = 256) -> np.ndarray:
    """The VOC palette (n, 3) uint8: class c's colour from the bits of c (index 255 = (224, 224, 192))."""
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


def read_image(path: str) -> torch.Tensor:
    from PIL import Image  # Pillow: needed by the file loaders only

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def read_voc_mask(path: str) -> torch.Tensor:
    """Class indices from a palette ('P') or 8-bit ('L') PNG; an RGB PNG is decoded through the VOC
    palette (colours outside it raise)."""
    from PIL import Image

    with Image.open(path) as im:
        if im.mode in ("P", "L"):
            arr = np.asarray(im).astype(np.int64)
        elif im.mode in ("RGB", "RGBA"):
            rgb = np.asarray(im.convert("RGB")).astype(np.int64)
            cmap = voc_colormap().astype(np.int64)
            codes = {int(k): i for i, k in enumerate(cmap[:21] @ [65536, 256, 1])}
            codes[int(cmap[255] @ [65536, 256, 1])] = 255
            flat = rgb @ np.array([65536, 256, 1])
            keys, inv = np.unique(flat, return_inverse=True)
            unknown = [hex(int(k)) for k in keys if int(k) not in codes]
            if unknown:
                raise ValueError(f"{path}: RGB mask has colours outside the VOC palette: {unknown[:5]}")
            arr = np.array([codes[int(k)] for k in keys], dtype=np.int64)[inv].reshape(flat.shape)
        else:
            raise ValueError(f"{path}: unsupported mask mode {im.mode!r} (expected a palette PNG)")
    return torch.from_numpy(arr)


def _find_root(root: str) -> str:
    for cand in (root, os.path.join(root, "VOC2012"), os.path.join(root, "VOCdevkit", "VOC2012")):
        if os.path.isdir(os.path.join(cand, "JPEGImages")):
            return cand
    raise FileNotFoundError(
        f"no PASCAL VOC tree at {root!r}: expected JPEGImages/, SegmentationClass/ and "
        f"ImageSets/Segmentation/ in it (or in VOC2012/ or VOCdevkit/VOC2012/ below it)")


class VOCSegmentation(SegmentationDataset):
    num_classes = 21
    class_names = CLASS_NAMES
    ignore_index = 255

    def __init__(self, root: str, split: str = "train", transform: Optional[Callable] = None,
                 seed: int = 0, mask_dir: str = "SegmentationClass"):
        super().__init__(transform, seed)
        self.root = _find_root(root)
        lst = os.path.join(self.root, "ImageSets", "Segmentation", f"{split}.txt")
        if not os.path.isfile(lst):
            have = sorted(f[:-4] for f in os.listdir(os.path.dirname(lst))) if os.path.isdir(
                os.path.dirname(lst)) else []
            raise FileNotFoundError(f"no split list {lst} (splits here: {', '.join(have) or 'none'})")
        with open(lst) as f:
            self.ids = [line.split()[0] for line in f if line.strip()]
        self.images = [os.path.join(self.root, "JPEGImages", i + ".jpg") for i in self.ids]
        self.masks = [os.path.join(self.root, mask_dir, i + ".png") for i in self.ids]
        missing = [p for p in self.images + self.masks if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(f"{len(missing)} files listed by {lst} are missing, e.g. {missing[0]}")

    def __len__(self):
        return len(self.ids)

    def load(self, index):
        image, mask = read_image(self.images[index]), read_voc_mask(self.masks[index])
        if image.shape[-2:] != mask.shape:
            raise ValueError(f"{self.ids[index]}: image {tuple(image.shape[-2:])} and mask "
                             f"{tuple(mask.shape)} differ in size")
        return image, mask
