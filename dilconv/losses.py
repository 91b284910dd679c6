"""Segmentation losses: pixel-wise cross-entropy, soft Dice, and the U-Net border-weighted loss.

Conventions: `logits` are (N, C, H, W) scores; `target` is (N, H, W) int64 class labels where
`ignore_index` (default 255, the VOC/Cityscapes "void") marks pixels that take no part.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from dilconv import _ext
from dilconv import functional as DF
from dilconv import registry as _backends

IGNORE_INDEX = 255


def _check(logits: torch.Tensor, target: torch.Tensor, ignore_index: int,
           values: bool = True, resized: bool = False) -> None:
    """resized: the logits are resized to the target's (H, W) (only the batch sizes must agree)"""
    if logits.dim() != 4:
        raise ValueError(f"expected logits of shape (N, C, H, W), got {tuple(logits.shape)}")
    if resized and (target.dim() != 3 or target.shape[0] != logits.shape[0]):
        raise ValueError(f"target of shape {tuple(target.shape)} does not match logits "
                         f"{tuple(logits.shape)}: expected (N, H, W) with the batch size "
                         f"N = {logits.shape[0]}")
    if not resized and (target.dim() != 3 or target.shape[0] != logits.shape[0]
                        or target.shape[1:] != logits.shape[2:]):
        raise ValueError(f"target of shape {tuple(target.shape)} does not match logits "
                         f"{tuple(logits.shape)}: expected (N, H, W) = "
                         f"{(logits.shape[0], *logits.shape[2:])}")
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        raise ValueError(f"target must hold integer class labels, got {target.dtype}")
    if not values:  # the caller's kernel checks the labels itself
        return
    valid = target[target != ignore_index]
    if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= logits.shape[1]):
        raise ValueError(f"target labels must be in [0, {logits.shape[1]}) or ignore_index "
                         f"{ignore_index}; found {int(valid.min())}..{int(valid.max())}")


# ------------------------------------------------------------------------------------------------
# cross-entropy

def cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor] = None,
                  ignore_index: int = IGNORE_INDEX, reduction: str = "mean",
                  label_smoothing: float = 0.0, *, upsample: Optional[str] = None,
                  align_corners: bool = False, backend: Optional[str] = None) -> torch.Tensor:
    """Pixel-wise cross-entropy; the mean runs over the non-ignored pixels (class-weighted when
    `weight` is given, as in torch). A batch with no valid pixel gives 0 (not NaN), so a crop that
    is all void does not poison training.

    Under a dilconv backend (`backend`, else dilconv's current one) CPU logits (float32/64,
    fp16/bf16 computed in float32) without class weights or label smoothing run
    `dilconv::cross_entropy`: one pass over the logits forward (log-sum-exp and the target's term
    per pixel) and one backward, where torch makes four (log_softmax, nll_loss, a zero-filled
    gradient, log_softmax's backward), in NCHW and channels-last alike; the sums run in float32
    for fp16/bf16. Backend "torch", other devices, CPU autocast and the other options run
    F.cross_entropy.

    upsample="bilinear": logits smaller (or larger) than the target are first resized to its
    (H, W) as F.interpolate(mode="bilinear", align_corners=align_corners) does: a segmentation
    network's final upsampling moved into the loss (the models' `resize_output = False` hands
    over the logits before it). Where `dilconv::cross_entropy` would run, `dilconv::
    resize_cross_entropy` does both without the full-size logits in memory: per block of output
    rows it resizes the logits into a scratch in cache and takes the loss there; the backward
    recomputes each block, turns it into its gradient and resizes that back. Otherwise
    dilconv.functional.resize_bilinear (F.interpolate under "torch"), then the loss as above."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if upsample not in (None, "bilinear"):
        raise ValueError(f"upsample must be None or 'bilinear', got {upsample!r}")
    name = backend or _backends._current
    if name != "torch":
        _backends.get_backend(name)  # unknown name -> ValueError
    fused = (name != "torch" and _ext.loaded and logits.device.type == "cpu"
             and logits.dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16)
             and weight is None and label_smoothing == 0.0 and not torch.is_autocast_enabled("cpu"))
    resize = (upsample is not None and logits.dim() == 4 and target.dim() == 3
              and tuple(logits.shape[2:]) != tuple(target.shape[1:]))
    if resize and not fused:
        if target.shape[0] != logits.shape[0]:
            raise ValueError(f"target of shape {tuple(target.shape)} and logits "
                             f"{tuple(logits.shape)} differ in the batch size")
        logits = DF.resize_bilinear(logits, tuple(target.shape[1:]), align_corners, backend=name)
        resize = False
    _check(logits, target, ignore_index, values=not fused, resized=resize)
    target = target.long()
    valid = (target != ignore_index).sum() if reduction == "mean" else None
    if valid is not None and int(valid) == 0:
        return logits.sum() * 0.0  # keeps the graph (and DDP's gradient hooks) intact
    if not fused:
        return F.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index,
                               reduction=reduction, label_smoothing=label_smoothing)
    if resize:
        loss, _ = torch.ops.dilconv.resize_cross_entropy(logits, target, align_corners,
                                                         ignore_index)
    else:
        loss, _ = torch.ops.dilconv.cross_entropy(logits, target, ignore_index)  # float32/64
    if reduction == "sum":
        loss = loss.sum()
    elif reduction == "mean":
        loss = loss.sum() / valid
    return loss.to(logits.dtype)


class CrossEntropyLoss(nn.Module):
    def __init__(self, weight: Optional[torch.Tensor] = None, ignore_index: int = IGNORE_INDEX,
                 reduction: str = "mean", label_smoothing: float = 0.0):
        super().__init__()
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing

    def forward(self, logits, target):
        return cross_entropy(logits, target, self.weight, self.ignore_index, self.reduction,
                             self.label_smoothing)


# ------------------------------------------------------------------------------------------------
# soft Dice

def dice_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX,
              smooth: float = 1.0, per_image: bool = False, include_background: bool = True,
              eps: float = 1e-7) -> torch.Tensor:
    """Soft Dice loss 1 - mean_c (2|P_c ∩ T_c| + s) / (|P_c| + |T_c| + s), with P = softmax(logits)
    and T the one-hot target, over the non-ignored pixels. Sums run over the whole batch (or per
    image with `per_image`, then averaged). `include_background=False` drops class 0."""
    _check(logits, target, ignore_index)
    n, c = logits.shape[:2]
    valid = (target != ignore_index)
    # fp16/bf16 logits (autocast) are summed in fp32; fp64 stays fp64
    work = torch.float64 if logits.dtype == torch.float64 else torch.float32
    prob = torch.softmax(logits.to(work), dim=1) * valid.unsqueeze(1)
    onehot = F.one_hot(torch.where(valid, target.long(), 0), c).permute(0, 3, 1, 2)
    onehot = onehot.to(prob.dtype) * valid.unsqueeze(1)
    dims = (2, 3) if per_image else (0, 2, 3)
    inter = (prob * onehot).sum(dims)
    denom = prob.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + smooth) / (denom + smooth).clamp_min(eps)
    if not include_background:
        dice = dice[..., 1:]
    return 1 - dice.mean()


class DiceLoss(nn.Module):
    def __init__(self, ignore_index: int = IGNORE_INDEX, smooth: float = 1.0, per_image: bool = False,
                 include_background: bool = True):
        super().__init__()
        self.ignore_index, self.smooth = ignore_index, smooth
        self.per_image, self.include_background = per_image, include_background

    def forward(self, logits, target):
        return dice_loss(logits, target, self.ignore_index, self.smooth, self.per_image,
                         self.include_background)


# ------------------------------------------------------------------------------------------------
# U-Net border-weighted loss (Ronneberger et al. 2015, eq. 2):
#   w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))
# d1, d2: distances to the nearest and second-nearest cell. The border term is applied to
# background pixels only: it exists to make the network learn the thin background gaps between
# touching cells (inside a cell d1 = 0 and the term would only re-weight the cell interior).

def _boundary(mask: torch.Tensor) -> torch.Tensor:
    """Pixels of `mask` with a 4-neighbour outside it. From any pixel outside the mask, the
    nearest mask pixel is one of these, so distances to the mask need only them."""
    m = F.pad(mask[None, None].float(), (1, 1, 1, 1), value=1.0)[0, 0]
    inner = (m[:-2, 1:-1] > 0) & (m[2:, 1:-1] > 0) & (m[1:-1, :-2] > 0) & (m[1:-1, 2:] > 0)
    # image edges count as "inside" above, which is right: no outside pixel lies beyond them
    return mask & ~inner


def nearest_two_distances(instances: torch.Tensor, points: torch.Tensor,
                          chunk: int = 1 << 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distances (in pixels) from each of `points` (M, 2) (row, col) to the nearest and
    the second-nearest instance of the label map `instances` (H, W) (0 = background). Exact; inf
    where fewer than 1 / 2 instances exist."""
    m = points.shape[0]
    d1 = torch.full((m,), float("inf"), dtype=torch.float64, device=points.device)
    d2 = d1.clone()
    pts = points.to(torch.float64)
    for k in torch.unique(instances):
        if int(k) == 0:
            continue
        border = _boundary(instances == k).nonzero().to(torch.float64)
        dk = torch.empty(m, dtype=torch.float64, device=points.device)
        step = max(1, chunk // max(1, border.shape[0]))
        for s in range(0, m, step):
            dk[s:s + step] = torch.cdist(pts[s:s + step], border).min(dim=1).values
        # keep the two smallest per point
        d2 = torch.minimum(d2, torch.maximum(d1, dk))
        d1 = torch.minimum(d1, dk)
    return d1, d2


def class_balance_weights(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """w_c(x) = total / (K * count(class(x))), K the number of classes present: every present class
    gets the same total weight and the mean weight over the valid pixels is 1. 0 on ignored pixels."""
    valid = labels != ignore_index
    w = torch.zeros(labels.shape, dtype=torch.float32, device=labels.device)
    if not bool(valid.any()):
        return w
    classes, counts = torch.unique(labels[valid], return_counts=True)
    total = counts.sum().to(torch.float64)
    for cl, cnt in zip(classes.tolist(), counts.tolist()):
        w[labels == cl] = float(total / (len(classes) * cnt))
    return w


def unet_weight_map(instances: torch.Tensor, labels: Optional[torch.Tensor] = None, w0: float = 10.0,
                    sigma: float = 5.0, balance: bool = True,
                    ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """The U-Net weight map for one (H, W) or a batch (N, H, W) of instance maps (0 = background,
    k > 0 = cell k). `labels` are the class labels for the balancing term (default: cell vs
    background); `balance=False` uses w_c = 1. Returns float32 of the same shape."""
    if instances.dim() == 3:
        return torch.stack([
            unet_weight_map(instances[i], None if labels is None else labels[i], w0, sigma, balance,
                            ignore_index) for i in range(instances.shape[0])])
    if instances.dim() != 2:
        raise ValueError(f"expected an (H, W) or (N, H, W) instance map, got {tuple(instances.shape)}")
    if instances.dtype.is_floating_point or instances.dtype == torch.bool:
        raise ValueError(f"instance map must be integer, got {instances.dtype}")
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    if labels is None:
        labels = (instances > 0).long()
    elif labels.shape != instances.shape:
        raise ValueError(f"labels {tuple(labels.shape)} and instances {tuple(instances.shape)} differ")
    if balance:
        w = class_balance_weights(labels, ignore_index)
    else:
        w = (labels != ignore_index).float()
    bg = (instances == 0) & (labels != ignore_index)
    pts = bg.nonzero()
    if pts.numel():
        d1, d2 = nearest_two_distances(instances, pts)
        border = w0 * torch.exp(-(d1 + d2) ** 2 / (2 * sigma ** 2))  # inf -> 0
        w[bg] += border.to(w.dtype)
    return w


def unet_weighted_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                       ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Per-pixel weighted cross-entropy, sum_x w(x) * CE(x) / #valid pixels (the paper's energy
    with a per-pixel weight map, e.g. from `unet_weight_map`)."""
    _check(logits, target, ignore_index)
    if weight.shape != target.shape:
        raise ValueError(f"weight map {tuple(weight.shape)} does not match target {tuple(target.shape)}")
    valid = target != ignore_index
    ce = F.cross_entropy(logits, target.long(), ignore_index=ignore_index, reduction="none")
    return (ce * weight.to(ce.dtype) * valid).sum() / valid.sum().clamp_min(1)


class UNetWeightedLoss(nn.Module):
    """U-Net border-weighted cross-entropy. Call with a precomputed `weight` map (what a data
    pipeline would cache) or with `instances` (then the map is computed here, on the CPU)."""

    def __init__(self, w0: float = 10.0, sigma: float = 5.0, balance: bool = True,
                 ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.w0, self.sigma, self.balance, self.ignore_index = w0, sigma, balance, ignore_index

    def forward(self, logits, target, instances=None, weight=None):
        if weight is None:
            if instances is None:
                raise ValueError("UNetWeightedLoss needs either `instances` (cell labels) or a "
                                 "precomputed `weight` map")
            weight = unet_weight_map(instances.cpu(), target.cpu(), self.w0, self.sigma,
                                     self.balance, self.ignore_index).to(logits.device)
        return unet_weighted_loss(logits, target, weight, self.ignore_index)
