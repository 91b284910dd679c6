"""Joint image/mask augmentations for segmentation.

Every transform is called as `t(image, mask, g)`: `image` a (3, H, W) uint8 (or float) tensor,
`mask` an (H, W) int64 label map, `g` a torch.Generator that supplies all the randomness. The data
sets seed `g` from (seed, epoch, index), so a sample is the same whatever the worker count, the
rank or a resume, and the masks always receive exactly the geometry the images receive.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

IGNORE_INDEX = 255
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def resize(image: torch.Tensor, mask: torch.Tensor, size: tuple[int, int]):
    """Bilinear (antialiased when shrinking) for the image, nearest for the mask: labels are never
    blended."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image, mask
    dtype = image.dtype
    img = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False,
                        antialias=True)[0]
    if dtype == torch.uint8:
        img = img.round().clamp(0, 255).to(torch.uint8)
    m = F.interpolate(mask[None, None].float(), size=size, mode="nearest-exact")[0, 0].to(mask.dtype)
    return img, m


class Compose:
    def __init__(self, transforms: Sequence):
        self.transforms = list(transforms)

    def __call__(self, image, mask, g):
        for t in self.transforms:
            image, mask = t(image, mask, g)
        return image, mask

    def __repr__(self):
        return f"Compose({self.transforms})"


class RandomScale:
    """Resize by a factor drawn uniformly from [lo, hi] (DeepLab uses 0.5-2.0)."""

    def __init__(self, lo: float = 0.5, hi: float = 2.0):
        if not 0 < lo <= hi:
            raise ValueError(f"need 0 < lo <= hi, got {lo}, {hi}")
        self.lo, self.hi = lo, hi

    def __call__(self, image, mask, g):
        s = _uniform(g, self.lo, self.hi)
        h, w = image.shape[-2:]
        return resize(image, mask, (max(1, round(h * s)), max(1, round(w * s))))

    def __repr__(self):
        return f"RandomScale({self.lo}, {self.hi})"


class Resize:
    """Resize to a fixed (H, W)."""

    def __init__(self, size):
        self.size = (size, size) if isinstance(size, int) else tuple(size)

    def __call__(self, image, mask, g):
        return resize(image, mask, self.size)


class RandomCrop:
    """Random (H, W) crop. Smaller inputs are first padded at the bottom/right: the image with
    `fill` (per channel, in the image's units), the mask with `ignore_index`, so padding never
    counts in the loss or the metrics."""

    def __init__(self, size, fill=0, ignore_index: int = IGNORE_INDEX):
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.fill = fill
        self.ignore_index = ignore_index

    def __call__(self, image, mask, g):
        ch, cw = self.size
        h, w = image.shape[-2:]
        ph, pw = max(0, ch - h), max(0, cw - w)
        if ph or pw:
            fill = torch.as_tensor(self.fill, dtype=image.dtype).reshape(-1, 1, 1)
            padded = fill.expand(image.shape[0], h + ph, w + pw).clone()
            padded[:, :h, :w] = image
            image = padded
            pm = torch.full((h + ph, w + pw), self.ignore_index, dtype=mask.dtype)
            pm[:h, :w] = mask
            mask = pm
            h, w = h + ph, w + pw
        top = int(torch.randint(0, h - ch + 1, (), generator=g))
        left = int(torch.randint(0, w - cw + 1, (), generator=g))
        return image[:, top:top + ch, left:left + cw], mask[top:top + ch, left:left + cw]

    def __repr__(self):
        return f"RandomCrop({self.size}, ignore_index={self.ignore_index})"


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image, mask, g):
        if float(torch.rand((), generator=g)) < self.p:
            return image.flip(-1), mask.flip(-1)
        return image, mask

    def __repr__(self):
        return f"RandomHorizontalFlip({self.p})"


class Normalize:
    """uint8 [0, 255] (or float [0, 1]) -> float32 (x - mean) / std; the mask becomes int64."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.mean = torch.tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).reshape(-1, 1, 1)

    def __call__(self, image, mask, g):
        x = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
        return (x - self.mean) / self.std, mask.long()

    def __repr__(self):
        return f"Normalize(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"


def train_transform(crop_size, scale=(0.5, 2.0), flip: bool = True, mean=IMAGENET_MEAN,
                    std=IMAGENET_STD, ignore_index: int = IGNORE_INDEX) -> Compose:
    """The standard training pipeline: random scale, crop (padding the image with the mean colour
    and the mask with ignore), horizontal flip, normalisation."""
    fill = [round(255 * m) for m in mean]
    ts = []
    if scale is not None:
        ts.append(RandomScale(*scale))
    ts.append(RandomCrop(crop_size, fill=fill, ignore_index=ignore_index))
    if flip:
        ts.append(RandomHorizontalFlip())
    ts.append(Normalize(mean, std))
    return Compose(ts)


def eval_transform(mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Compose:
    """Evaluation: the full image, normalised."""
    return Compose([Normalize(mean, std)])


def pad_collate(batch, ignore_index: int = IGNORE_INDEX):
    """Collate samples of different sizes: pad images with 0 (the mean after normalisation) and
    masks with `ignore_index` at the bottom/right up to the largest size in the batch."""
    h = max(s[0].shape[-2] for s in batch)
    w = max(s[0].shape[-1] for s in batch)
    images = batch[0][0].new_zeros((len(batch), batch[0][0].shape[0], h, w))
    masks = torch.full((len(batch), h, w), ignore_index, dtype=torch.int64)
    for i, (img, m) in enumerate(batch):
        images[i, :, :img.shape[-2], :img.shape[-1]] = img
        masks[i, :m.shape[-2], :m.shape[-1]] = m
    return images, masks
