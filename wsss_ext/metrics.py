"""Segmentation metrics as PASCAL VOC evaluation computes them: one confusion
matrix accumulated over the whole dataset (ignored pixels left out), then
IoU_c = TP / (TP + FP + FN) per class and their mean over the classes that
occur (in the ground truth or the predictions)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["confusion_matrix", "iou_from_confusion", "mean_iou"]


def confusion_matrix(pred: Tensor, target: Tensor, n_classes: int, ignore_index: int | None = 255) -> Tensor:
    """n_classes x n_classes int64 counts, rows the ground truth, columns the
    prediction. ``pred`` and ``target`` are integer label maps of one shape;
    pixels whose target is ``ignore_index`` are left out. A predicted or target
    label outside [0, n_classes) raises ValueError."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")
    if pred.dtype.is_floating_point or target.dtype.is_floating_point:
        raise TypeError("pred and target must be integer label maps")
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    if ignore_index is not None:
        keep = target != ignore_index
        pred, target = pred[keep], target[keep]
    for name, labels in (("target", target), ("pred", pred)):
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
            raise ValueError(f"{name} holds labels outside [0, {n_classes}) (and not ignore_index={ignore_index})")
    counts = torch.bincount(target * n_classes + pred, minlength=n_classes * n_classes)
    return counts.view(n_classes, n_classes).cpu()


def iou_from_confusion(confusion: Tensor) -> Tensor:
    """Per-class IoU (float64); NaN for a class absent from both ground truth
    and predictions."""
    confusion = confusion.double()
    true_positive = confusion.diagonal()
    union = confusion.sum(0) + confusion.sum(1) - true_positive
    return torch.where(union > 0, true_positive / union.clamp(min=1), torch.full_like(union, float("nan")))


def mean_iou(confusion: Tensor) -> float:
    """Mean of the per-class IoUs over the classes that occur."""
    iou = iou_from_confusion(confusion)
    return float(iou[~iou.isnan()].mean()) if bool((~iou.isnan()).any()) else float("nan")
