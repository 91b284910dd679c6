"""Base class of dilconv's segmentation data sets: per-sample randomness from (seed, epoch, index)."""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
from torch.utils.data import Dataset


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A generator that depends only on (seed, epoch, index), well mixed (SeedSequence)."""
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, index]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class SegmentationDataset(Dataset):
    """`__getitem__(i)` -> (image float32 (3, H, W), mask int64 (H, W)). Subclasses implement
    `__len__` and `load(i)` -> (image uint8 (3, H, W), mask int64 (H, W)); the transform receives a
    generator seeded from (seed, epoch, index), so augmentations are reproducible and independent
    of DataLoader workers and ranks. Call `set_epoch` before each epoch's iterator is created."""

    num_classes: int = 0
    class_names: tuple = ()
    ignore_index: int = 255

    def __init__(self, transform: Optional[Callable] = None, seed: int = 0):
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def load(self, index: int):
        raise NotImplementedError

    def __getitem__(self, index: int):
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a data set of {len(self)} samples")
        index %= len(self)
        image, mask = self.load(index)
        if self.transform is not None:
            image, mask = self.transform(image, mask, sample_generator(self.seed, self.epoch, index))
        return image, mask
