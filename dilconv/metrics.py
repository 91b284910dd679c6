"""Segmentation metrics from a confusion matrix: per-class IoU, mIoU, pixel accuracy.

The confusion matrix is accumulated over batches (and summed over processes with
`all_reduce()`), so the metrics are exact over a whole data set, not averages of per-batch values.
"""
from __future__ import annotations

from typing import Optional

import torch

IGNORE_INDEX = 255


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """(K, K) int64 counts, rows = true class, columns = predicted class. `pred` is (N, H, W)
    labels or (N, K, H, W) scores (argmax taken); pixels whose target is `ignore_index` are
    skipped."""
    if pred.dim() == target.dim() + 1:
        if pred.shape[1] != num_classes:
            raise ValueError(f"scores have {pred.shape[1]} channels, expected num_classes={num_classes}")
        pred = pred.argmax(1)
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    if pred.dtype.is_floating_point or target.dtype.is_floating_point:
        raise ValueError("labels must be integers (pass scores as (N, K, H, W) to take the argmax)")
    valid = target != ignore_index
    t = target[valid].long()
    p = pred[valid].long()
    if t.numel():
        if int(t.min()) < 0 or int(t.max()) >= num_classes:
            raise ValueError(f"target labels must be in [0, {num_classes}) or {ignore_index}; "
                             f"found {int(t.min())}..{int(t.max())}")
        if int(p.min()) < 0 or int(p.max()) >= num_classes:
            raise ValueError(f"predicted labels must be in [0, {num_classes}); "
                             f"found {int(p.min())}..{int(p.max())}")
    return torch.bincount(t * num_classes + p, minlength=num_classes ** 2).reshape(
        num_classes, num_classes)


def iou_per_class(cm: torch.Tensor) -> torch.Tensor:
    """IoU_c = TP / (TP + FP + FN); NaN for a class absent from both targets and predictions."""
    cm = cm.to(torch.float64)
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))


def scores(cm: torch.Tensor) -> dict:
    """mIoU (mean over classes with a defined IoU), pixel accuracy, mean class accuracy, per-class IoU."""
    cmf = cm.to(torch.float64)
    iou = iou_per_class(cm)
    total = cmf.sum()
    per_class_acc = torch.where(cmf.sum(1) > 0, cmf.diag() / cmf.sum(1).clamp_min(1),
                                torch.full_like(iou, float("nan")))
    return {
        "miou": float(iou.nanmean()) if bool((~iou.isnan()).any()) else float("nan"),
        "pixel_acc": float(cmf.diag().sum() / total) if total > 0 else float("nan"),
        "mean_acc": float(per_class_acc.nanmean()) if bool((~per_class_acc.isnan()).any()) else float("nan"),
        "iou": iou.tolist(),
        "pixels": int(total),
    }


class ConfusionMatrix:
    """Accumulates a confusion matrix over batches.

        cm = ConfusionMatrix(21)
        for x, y in loader: cm.update(model(x)["out"], y)
        cm.all_reduce()          # under torch.distributed: sum over all processes
        print(cm.compute()["miou"])
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX,
                 device: Optional[torch.device] = None):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> "ConfusionMatrix":
        cm = confusion_matrix(pred.detach(), target, self.num_classes, self.ignore_index)
        self.mat += cm.to(self.mat.device)
        return self

    def reset(self) -> None:
        self.mat.zero_()

    def all_reduce(self, group=None) -> "ConfusionMatrix":
        """Sum the matrices of all processes (no-op outside torch.distributed). The matrix must be
        on a device the process group's backend handles (CPU for gloo, CUDA for NCCL)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.mat, op=dist.ReduceOp.SUM, group=group)
        return self

    def compute(self) -> dict:
        return scores(self.mat)
