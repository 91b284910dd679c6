"""Cityscapes (fine annotations), read from the standard directory layout:

    ROOT/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png
    ROOT/gtFine/<split>/<city>/<name>_gtFine_labelIds.png

Label ids (0..33) are mapped to the 19 training ids of the benchmark; every other id becomes 255
(ignore). `label_kind="labelTrainIds"` reads the `_gtFine_labelTrainIds.png` files that
cityscapesScripts' createTrainIdLabelImgs writes instead (already mapped).
"""
from __future__ import annotations

import glob
import os
from typing import Callable, Optional

import numpy as np
import torch
from dilconv.data.base import SegmentationDataset
from dilconv.data.voc import read_image

# (labelId, trainId) of the 19 evaluated classes (cityscapesScripts helpers/labels.py)
TRAIN_IDS = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
    26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}
CLASS_NAMES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
    "bicycle",
)


def label_to_train_id_lut() -> torch.Tensor:
    lut = torch.full((256,), 255, dtype=torch.int64)
    for label_id, train_id in TRAIN_IDS.items():
        lut[label_id] = train_id
    return lut


_LUT = label_to_train_id_lut()


class Cityscapes(SegmentationDataset):
    num_classes = 19
    class_names = CLASS_NAMES
    ignore_index = 255

    def __init__(self, root: str, split: str = "train", transform: Optional[Callable] = None,
                 seed: int = 0, label_kind: str = "labelIds"):
        super().__init__(transform, seed)
        if label_kind not in ("labelIds", "labelTrainIds"):
            raise ValueError(f"label_kind must be 'labelIds' or 'labelTrainIds', got {label_kind!r}")
        self.root, self.split, self.label_kind = root, split, label_kind
        img_dir = os.path.join(root, "leftImg8bit", split)
        if not os.path.isdir(img_dir):
            raise FileNotFoundError(
                f"no Cityscapes split at {img_dir!r}: expected ROOT/leftImg8bit/{split}/<city>/"
                f"*_leftImg8bit.png and ROOT/gtFine/{split}/<city>/*_gtFine_{label_kind}.png")
        self.images = sorted(glob.glob(os.path.join(img_dir, "*", "*_leftImg8bit.png")))
        if not self.images:
            raise FileNotFoundError(f"no *_leftImg8bit.png images under {img_dir}/<city>/")
        self.masks = []
        for p in self.images:
            city = os.path.basename(os.path.dirname(p))
            name = os.path.basename(p)[: -len("_leftImg8bit.png")]
            self.masks.append(os.path.join(root, "gtFine", split, city, f"{name}_gtFine_{label_kind}.png"))
        missing = [m for m in self.masks if not os.path.isfile(m)]
        if missing:
            raise FileNotFoundError(f"{len(missing)} of {len(self.masks)} label files are missing, "
                                    f"e.g. {missing[0]}")

    def __len__(self):
        return len(self.images)

    def load(self, index):
        from PIL import Image

        image = read_image(self.images[index])
        with Image.open(self.masks[index]) as im:
            if im.mode not in ("L", "P", "I", "I;16"):
                raise ValueError(f"{self.masks[index]}: expected a single-channel label PNG, got {im.mode!r}")
            ids = torch.from_numpy(np.asarray(im).astype(np.int64))
        if self.label_kind == "labelIds":
            mask = _LUT[ids.clamp(0, 255)]
            mask[(ids < 0) | (ids > 255)] = 255
        else:
            mask = ids
        if image.shape[-2:] != mask.shape:
            raise ValueError(f"{self.images[index]}: image {tuple(image.shape[-2:])} and label "
                             f"{tuple(mask.shape)} differ in size")
        return image, mask
