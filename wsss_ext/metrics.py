"""Segmentation metrics as PASCAL VOC evaluation computes them: one confusion
matrix accumulated over the whole dataset (ignored pixels left out), then
IoU_c = TP / (TP + FP + FN) per class and their mean over the classes that
occur (in the ground truth or the predictions).

Video object segmentation: DAVIS's region similarity J and contour accuracy F
per object and frame (:func:`davis_scores`) and the dataset's J&F
(:func:`davis_summary`), as davis2017-evaluation computes them."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "VideoScores",
    "boundary_map",
    "boundary_tolerance",
    "confusion_matrix",
    "contour_accuracy",
    "davis_scores",
    "davis_statistics",
    "davis_summary",
    "dilate_disk",
    "iou_from_confusion",
    "mean_iou",
    "region_similarity",
]


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


# --- video object segmentation: DAVIS's J and F -------------------------------------------------------
#
# As davis2017-evaluation (Pont-Tuset et al. 2017, davis2017/metrics.py and evaluation.py) computes them:
# J is the IoU of an object's predicted and true masks, 1 where both are empty; F is the F-measure of
# their boundary pixels (seg2bmap), a boundary pixel matching when the other mask's boundary lies within
# a disk of radius ceil(0.008 x the image diagonal), 1 where both boundaries are empty and 0 where just
# one is. Both are batched over any leading dimensions (frames, objects).


def _check_masks(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Boolean (or integer, non-zero = inside) masks ... x H x W of one shape, at least one pixel."""
    for name, mask in (("pred", pred), ("target", target)):
        if not isinstance(mask, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(mask).__name__}")
        if mask.dtype.is_floating_point or mask.dtype.is_complex:
            raise TypeError(f"{name} must be a bool or integer mask, got {mask.dtype}")
        if mask.dim() < 2:
            raise ValueError(f"{name} must be ... x H x W, got shape {tuple(mask.shape)}")
        if mask.shape[-1] == 0 or mask.shape[-2] == 0:
            raise ValueError(f"{name} must have at least one pixel, got shape {tuple(mask.shape)}")
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")
    return pred != 0, target.to(pred.device) != 0


def region_similarity(pred: Tensor, target: Tensor) -> Tensor:
    """DAVIS's region similarity J: |pred & target| / |pred | target|.

    Args:
        pred, target: ... x H x W masks (bool, or integers with non-zero inside).

    Returns:
        float64 of the leading shape ``...``; 1 where both masks are empty (DAVIS's convention).
    """
    pred, target = _check_masks(pred, target)
    intersection = (pred & target).flatten(-2).sum(-1).double()
    union = (pred | target).flatten(-2).sum(-1).double()
    return torch.where(union > 0, intersection / union.clamp(min=1), torch.ones_like(union))


def boundary_map(masks: Tensor) -> Tensor:
    """DAVIS's seg2bmap: the pixels of a mask whose east, south or south-east
    neighbour differs (a one-pixel boundary offset half a pixel towards the
    origin). On the last row only the east neighbour counts, on the last
    column only the south one, and the bottom-right pixel is never a
    boundary, so the image border is not a contour.

    Args:
        masks: ... x H x W (bool, or integers with non-zero inside).

    Returns:
        ... x H x W bool.
    """
    masks, _ = _check_masks(masks, masks)
    east, south, south_east = torch.zeros_like(masks), torch.zeros_like(masks), torch.zeros_like(masks)
    east[..., :, :-1] = masks[..., :, 1:]
    south[..., :-1, :] = masks[..., 1:, :]
    south_east[..., :-1, :-1] = masks[..., 1:, 1:]
    boundary = (masks ^ east) | (masks ^ south) | (masks ^ south_east)
    boundary[..., -1, :] = masks[..., -1, :] ^ east[..., -1, :]
    boundary[..., :, -1] = masks[..., :, -1] ^ south[..., :, -1]
    boundary[..., -1, -1] = False
    return boundary


def dilate_disk(masks: Tensor, radius: int) -> Tensor:
    """Binary dilation by the disk {(dx, dy): dx^2 + dy^2 <= radius^2}
    (skimage's ``disk``; outside the image counts as empty, as cv2.dilate).

    The disk is a stack of rows: row dy is a horizontal segment of half-width
    floor(sqrt(r^2 - dy^2)), so the dilation is the union over dy of the rows
    shifted by dy, each a 1-D box count taken from one cumulative sum: O(r)
    passes per pixel instead of the O(r^2) of a 2-D structuring element.

    Args:
        masks: ... x H x W bool.
        radius: >= 0, in pixels.

    Returns:
        ... x H x W bool.
    """
    if isinstance(radius, bool) or not isinstance(radius, int) or radius < 0:
        raise ValueError(f"radius must be a non-negative int, got {radius!r}")
    masks, _ = _check_masks(masks, masks)
    height, width = masks.shape[-2:]
    # count[..., x] = number of set pixels left of x - radius on the row (x in [0, W + 2 radius]),
    # so the pixels of [x - half, x + half] number count[x + radius + half + 1] - count[x + radius - half].
    count = torch.nn.functional.pad(masks.to(torch.int32), (radius + 1, radius)).cumsum(-1)
    out = torch.zeros_like(masks)
    rows: dict[int, Tensor] = {}
    for dy in range(-radius, radius + 1):
        if abs(dy) >= height:
            continue
        half = math.isqrt(radius * radius - dy * dy)
        if half not in rows:
            right = count[..., radius + half + 1 : radius + half + 1 + width]
            rows[half] = right > count[..., radius - half : radius - half + width]
        row = rows[half]
        # out[y] |= row[y + dy]
        if dy >= 0:
            out[..., : height - dy, :] |= row[..., dy:, :]
        else:
            out[..., -dy:, :] |= row[..., : height + dy, :]
    return out


def boundary_tolerance(height: int, width: int, bound_th: float = 0.008) -> int:
    """DAVIS's match radius in pixels: ceil(bound_th x the image diagonal) for
    ``bound_th`` < 1, else ``bound_th`` itself (an integer number of pixels).
    A 480 x 854 frame: 8 pixels."""
    if not math.isfinite(bound_th) or bound_th <= 0:
        raise ValueError(f"bound_th must be a positive number, got {bound_th!r}")
    if bound_th >= 1:
        if bound_th != int(bound_th):
            raise ValueError(f"bound_th >= 1 is a radius in pixels and must be an integer, got {bound_th!r}")
        return int(bound_th)
    return math.ceil(bound_th * math.hypot(height, width))


def contour_accuracy(pred: Tensor, target: Tensor, bound_th: float = 0.008) -> Tensor:
    """DAVIS's contour accuracy F: the F-measure of the two masks' boundaries
    (:func:`boundary_map`), a boundary pixel counting as matched when the
    other boundary lies within :func:`boundary_tolerance` pixels (a disk).

    Args:
        pred, target: ... x H x W masks (bool, or integers with non-zero inside).
        bound_th: the tolerance as a fraction of the image diagonal (< 1) or
            in pixels (>= 1); DAVIS: 0.008.

    Returns:
        float64 of the leading shape ``...``: 2PR / (P + R); 1 where neither
        mask has a boundary, 0 where only one has (DAVIS's conventions).
    """
    pred, target = _check_masks(pred, target)
    radius = boundary_tolerance(pred.shape[-2], pred.shape[-1], float(bound_th))
    pred_boundary, target_boundary = boundary_map(pred), boundary_map(target)
    n_pred = pred_boundary.flatten(-2).sum(-1).double()
    n_target = target_boundary.flatten(-2).sum(-1).double()
    pred_matched = (pred_boundary & dilate_disk(target_boundary, radius)).flatten(-2).sum(-1).double()
    target_matched = (target_boundary & dilate_disk(pred_boundary, radius)).flatten(-2).sum(-1).double()
    # An empty boundary has precision (or recall) 1 by DAVIS's convention.
    precision = torch.where(n_pred > 0, pred_matched / n_pred.clamp(min=1), torch.ones_like(n_pred))
    recall = torch.where(n_target > 0, target_matched / n_target.clamp(min=1), torch.ones_like(n_target))
    precision = torch.where((n_pred > 0) & (n_target == 0), torch.zeros_like(precision), precision)
    recall = torch.where((n_pred == 0) & (n_target > 0), torch.zeros_like(recall), recall)
    total = precision + recall
    return torch.where(total > 0, 2 * precision * recall / total.clamp(min=1e-300), torch.zeros_like(total))


def davis_statistics(per_frame: Tensor) -> tuple[float, float, float]:
    """DAVIS's mean, recall (share of frames above 0.5) and decay (mean of the
    first quarter of the frames minus the last quarter, the quarters as
    davis2017's ``db_statistics`` bins them) of one object's per-frame J or F."""
    values = per_frame.double().flatten().cpu()
    if values.numel() == 0:
        raise ValueError("per_frame must hold at least one frame")
    n = values.numel()
    edges = [int(round(1 + (n - 1) * i / 4 + 1e-10)) - 1 for i in range(5)]
    first, last = values[edges[0] : edges[1] + 1], values[edges[3] : edges[4] + 1]
    return float(values.mean()), float((values > 0.5).double().mean()), float(first.mean() - last.mean())


@dataclass
class VideoScores:
    """Per-object, per-frame J and F of one video (each K x T', float64, the
    T' evaluated frames), with the indices of those frames."""

    j: Tensor
    f: Tensor
    frames: list[int]

    @property
    def n_objects(self) -> int:
        return self.j.shape[0]

    def summary(self) -> dict:
        """DAVIS's figures of the video: J and F mean, recall and decay per object; their means over objects
        and J&F, the mean of the two means (fractions in [0, 1])."""
        return davis_summary([self])


def davis_scores(pred: Tensor, target: Tensor, n_objects: int | None = None, skip_first_last: bool = True,
                 bound_th: float = 0.008) -> VideoScores:
    """J and F of every object in every frame of one video, by the DAVIS 2017
    semi-supervised protocol.

    The objects are labels 1..K, K = ``n_objects`` or the largest label of
    the first ground-truth frame (DAVIS reads K there); each is scored as the
    binary masks ``pred == k`` against ``target == k``. Ground-truth label 255
    counts as background, as davis2017's loader sets it. The first frame (the
    given mask) and the last are left out, as davis2017-evaluation does for
    the semi-supervised task (``skip_first_last=False`` scores every frame).

    Args:
        pred, target: T x H x W integer label maps (0 background).

    Returns:
        :class:`VideoScores` with K x T' tables (T' = T - 2 by default).
    """
    if not isinstance(pred, Tensor) or not isinstance(target, Tensor):
        raise TypeError("pred and target must be torch.Tensors")
    for name, labels in (("pred", pred), ("target", target)):
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer label map, got {labels.dtype}")
        if labels.dim() != 3:
            raise ValueError(f"{name} must be T x H x W, got shape {tuple(labels.shape)}")
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")
    frames = pred.shape[0]
    if frames < (3 if skip_first_last else 1) or pred[0].numel() == 0:
        raise ValueError(f"need at least {3 if skip_first_last else 1} non-empty frames "
                         f"(skip_first_last={skip_first_last}), got shape {tuple(pred.shape)}")
    target = torch.where(target == 255, torch.zeros_like(target), target).long()
    pred = pred.long().to(target.device)
    for name, labels in (("pred", pred), ("target", target)):
        if int(labels.min()) < 0:
            raise ValueError(f"{name} holds negative labels")
    if n_objects is None:
        n_objects = int(target[0].max())
    elif isinstance(n_objects, bool) or not isinstance(n_objects, int) or n_objects < 0:
        raise ValueError(f"n_objects must be a non-negative int, got {n_objects!r}")
    if int(pred.max()) > n_objects:
        # davis2017-evaluation refuses such a result too: an object id the sequence lacks.
        raise ValueError(f"pred holds label {int(pred.max())} but the video has {n_objects} objects")
    index = list(range(1, frames - 1)) if skip_first_last else list(range(frames))
    pred, target = pred[index], target[index]
    objects = torch.arange(1, n_objects + 1, device=pred.device)[:, None, None, None]
    pred_masks, target_masks = pred[None] == objects, target[None] == objects  # K x T' x H x W
    return VideoScores(region_similarity(pred_masks, target_masks).cpu(),
                       contour_accuracy(pred_masks, target_masks, bound_th).cpu(), index)


def davis_summary(videos: Iterable[VideoScores]) -> dict:
    """DAVIS's dataset figures: every object of every video is one entry (its
    J and F mean, recall and decay over its frames); ``J``, ``F`` and their
    recall and decay are means over the entries, ``J&F`` = (J + F) / 2.
    Fractions in [0, 1]; ``per_object`` lists each entry's J and F mean."""
    rows = []
    for video, scores in enumerate(videos):
        for k in range(scores.n_objects):
            rows.append((video, k + 1, davis_statistics(scores.j[k]), davis_statistics(scores.f[k])))
    if not rows:
        raise ValueError("no object to score: every video has zero objects")

    def mean(values) -> float:
        values = list(values)
        return sum(values) / len(values)

    j_mean, f_mean = mean(r[2][0] for r in rows), mean(r[3][0] for r in rows)
    return {
        "J&F": (j_mean + f_mean) / 2,
        "J": j_mean,
        "J_recall": mean(r[2][1] for r in rows),
        "J_decay": mean(r[2][2] for r in rows),
        "F": f_mean,
        "F_recall": mean(r[3][1] for r in rows),
        "F_decay": mean(r[3][2] for r in rows),
        "objects": len(rows),
        "per_object": [{"video": v, "object": k, "J": j[0], "F": f[0]} for v, k, j, f in rows],
    }
