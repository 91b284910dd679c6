"""A procedurally generated segmentation data set: shapes of several classes on textured
backgrounds. Any size, any length, deterministic per (seed, index), generated on the fly.

The class of a shape is its geometry (disc, rectangle, triangle, ring, cross); each class also has
a loose colour family (jittered strongly, on top of a per-shape texture), and the background is a
textured low-saturation field. Shapes overlap (later ones occlude earlier ones). Besides the class
mask it can return the instance map (one id per painted shape), e.g. for the U-Net weight map.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from dilconv.data.base import SegmentationDataset, sample_generator

SHAPES = ("disc", "rectangle", "triangle", "ring", "cross")
CLASS_NAMES = ("background",) + SHAPES
# loose colour family per shape class (RGB in [0, 1]); jittered per shape
_BASE_COLOURS = torch.tensor([
    [0.85, 0.25, 0.20],
    [0.25, 0.75, 0.30],
    [0.25, 0.35, 0.85],
    [0.85, 0.80, 0.25],
    [0.75, 0.30, 0.80],
])


def _texture(g: torch.Generator, h: int, w: int, yy, xx) -> torch.Tensor:
    """(H, W) in about [-1, 1]: a random grating plus smooth value noise."""
    theta = float(torch.rand((), generator=g)) * math.pi
    freq = 2 * math.pi / (4 + 12 * float(torch.rand((), generator=g)))
    grating = torch.sin(freq * (xx * math.cos(theta) + yy * math.sin(theta)))
    cells = 2 + int(torch.randint(0, 6, (), generator=g))
    noise = torch.rand((1, 1, cells, cells), generator=g) * 2 - 1
    noise = torch.nn.functional.interpolate(noise, size=(h, w), mode="bicubic", align_corners=True)[0, 0]
    a = float(torch.rand((), generator=g))
    return a * grating + (1 - a) * noise


def _shape_mask(kind: str, g: torch.Generator, yy, xx, cy, cx, r) -> torch.Tensor:
    theta = float(torch.rand((), generator=g)) * 2 * math.pi
    dy, dx = yy - cy, xx - cx
    u = dx * math.cos(theta) + dy * math.sin(theta)
    v = -dx * math.sin(theta) + dy * math.cos(theta)
    if kind == "disc":
        return dx * dx + dy * dy <= r * r
    if kind == "rectangle":
        a = r * (0.55 + 0.45 * float(torch.rand((), generator=g)))
        b = r * (0.55 + 0.45 * float(torch.rand((), generator=g)))
        return (u.abs() <= a) & (v.abs() <= b)
    if kind == "triangle":  # equilateral, circumradius r: inside all three edges at inradius r/2
        inside = torch.ones_like(u, dtype=torch.bool)
        for k in range(3):
            phi = 2 * math.pi * k / 3
            inside &= u * math.cos(phi) + v * math.sin(phi) <= r / 2
        return inside
    if kind == "ring":
        inner = r * (0.45 + 0.2 * float(torch.rand((), generator=g)))
        d2 = dx * dx + dy * dy
        return (d2 <= r * r) & (d2 >= inner * inner)
    if kind == "cross":
        t = r * 0.33
        return ((u.abs() <= r) & (v.abs() <= t)) | ((v.abs() <= r) & (u.abs() <= t))
    raise ValueError(kind)


def render(g: torch.Generator, height: int, width: int, num_classes: int, max_shapes: int = 5,
           min_shapes: int = 1):
    """One sample: image uint8 (3, H, W), class mask int64 (H, W), instance map int64 (H, W)."""
    yy, xx = torch.meshgrid(torch.arange(height, dtype=torch.float32) + 0.5,
                            torch.arange(width, dtype=torch.float32) + 0.5, indexing="ij")
    # background: a grey level with a slight tint, textured
    grey = 0.25 + 0.5 * float(torch.rand((), generator=g))
    tint = (torch.rand(3, generator=g) - 0.5) * 0.2
    bg_amp = 0.08 + 0.12 * float(torch.rand((), generator=g))
    image = (grey + tint).reshape(3, 1, 1) + bg_amp * _texture(g, height, width, yy, xx)
    image = image.expand(3, height, width).clone()
    mask = torch.zeros(height, width, dtype=torch.int64)
    instances = torch.zeros(height, width, dtype=torch.int64)
    side = min(height, width)
    n = int(torch.randint(min_shapes, max_shapes + 1, (), generator=g))
    for k in range(1, n + 1):
        cls = 1 + int(torch.randint(0, num_classes - 1, (), generator=g))
        r = side * (0.1 + 0.15 * float(torch.rand((), generator=g)))
        cy = float(torch.rand((), generator=g)) * height
        cx = float(torch.rand((), generator=g)) * width
        inside = _shape_mask(SHAPES[cls - 1], g, yy, xx, cy, cx, r)
        colour = (_BASE_COLOURS[cls - 1] + (torch.rand(3, generator=g) - 0.5) * 0.5).clamp(0.05, 0.95)
        amp = 0.05 + 0.15 * float(torch.rand((), generator=g))
        fill = colour.reshape(3, 1, 1) + amp * _texture(g, height, width, yy, xx)
        image = torch.where(inside, fill, image)
        mask[inside] = cls
        instances[inside] = k
    image = image + 0.03 * torch.randn(image.shape, generator=g)
    image = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    return image, mask, instances


class SyntheticShapes(SegmentationDataset):
    """`length` samples of `size` (int or (H, W)) with `num_classes` classes (background + up to
    5 shape classes). Sample i depends only on (seed, i): the same on every call, worker and rank.
    Without a transform, images come normalised with the ImageNet statistics (like the other data
    sets after their transforms)."""

    ignore_index = 255

    def __init__(self, length: int = 1000, size=128, num_classes: int = 6, seed: int = 0,
                 transform: Optional[Callable] = None, max_shapes: int = 5,
                 return_instances: bool = False):
        if not 2 <= num_classes <= 1 + len(SHAPES):
            raise ValueError(f"num_classes must be in [2, {1 + len(SHAPES)}], got {num_classes}")
        if length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        size = (size, size) if isinstance(size, int) else tuple(size)
        if len(size) != 2 or min(size) < 8:
            raise ValueError(f"size must be >= 8 pixels on each side, got {size}")
        if transform is None and not return_instances:
            from dilconv.data.transforms import eval_transform

            transform = eval_transform()
        if return_instances and transform is not None:
            raise ValueError("return_instances gives the raw (uint8 image, mask, instances); "
                             "it cannot be combined with a transform")
        super().__init__(transform, seed)
        self.length, self.size, self.num_classes = length, size, num_classes
        self.class_names = CLASS_NAMES[:num_classes]
        self.max_shapes = max_shapes
        self.return_instances = return_instances

    def __len__(self):
        return self.length

    def _render(self, index):
        # the content depends on (seed, index) only; epoch-dependent randomness is the transform's
        return render(sample_generator(self.seed, -1 & 0xFFFFFFFF, index), *self.size,
                      self.num_classes, self.max_shapes)

    def load(self, index):
        image, mask, _ = self._render(index)
        return image, mask

    def __getitem__(self, index):
        if self.return_instances:
            if not -len(self) <= index < len(self):
                raise IndexError(f"index {index} out of range for a data set of {len(self)} samples")
            return self._render(index % len(self))
        return super().__getitem__(index)
