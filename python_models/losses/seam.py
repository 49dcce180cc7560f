"""SEAM's losses (Wang et al., CVPR 2020; YudeWang/SEAM ``train_SEAM.py``,
``tool/visualization.py``) as plain functions.

Two views: the image and its rescale by 0.3 (bilinear, ``align_corners=True``).
For each view the network gives raw CAMs ŷ (foreground classes) and PCM-refined
scores ŷ° (background first). :func:`seam_losses` composes, as ``train_SEAM.py``:

- classification: multi-label soft margin on the GAP of ŷ, mean of the views;
- min pooling: the mean of the lowest 25 % of max_c(ŷ° · tags) after ReLU,
  mean of the views (SEAM's ``adaptive_min_pooling_loss``; the paper omits it,
  the code notes it only moves the best background score);
- ER: mean |T(max_norm(ŷ(I))) - max_norm(ŷ(T(I)))| over the foreground, T the rescale;
- ECR: the top-20 % mean of |max_onehot(ŷ_other) - max_norm(ŷ°)| per image,
  summed both ways, the target detached;
- total = classification + min pooling + ER + ECR (weights 1, as the code).

``max_norm`` is SEAM's min-max normalisation after a ReLU:
``relu(p - min - 1e-5) / (max - min + 1e-5)`` per image and channel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from python_models._checks import check_maps, check_real, check_tags
from python_models.augment.views import rescale

__all__ = [
    "equivariant_cross_regularization",
    "equivariant_regularization",
    "max_norm",
    "max_onehot",
    "min_pooling_loss",
    "seam_cross_term",
    "seam_losses",
    "with_background",
]


def _fraction(value: object, name: str) -> float:
    value = check_real(value, name, positive=True)
    if value > 1:
        raise ValueError(f"{name} must be in (0, 1], got {value}")
    return value


def max_norm(cams: Tensor, eps: float = 1e-5) -> Tensor:
    """SEAM's ``max_norm``: ``p = relu(cams)``, then ``relu(p - min - eps) / (max - min + eps)``
    per image and channel. Values in [0, 1); differentiable.

    Example:
        >>> import torch
        >>> max_norm(torch.tensor([-1.0, 1.0, 3.0]).view(1, 1, 1, 3), eps=0.0)
        tensor([[[[0.0000, 0.3333, 1.0000]]]])
    """
    cams = F.relu(check_maps(cams, "cams"))
    flat = cams.flatten(2)
    low = flat.amin(2)[..., None, None]
    high = flat.amax(2)[..., None, None]
    return F.relu(cams - low - eps) / (high - low + eps)


def with_background(cams: Tensor) -> Tensor:
    """``[1 - max_c cams, cams]``: B x C x H x W foreground to B x (1 + C) x H x W."""
    cams = check_maps(cams, "cams")
    return torch.cat([1 - cams.amax(1, keepdim=True), cams], 1)


def max_onehot(cams: Tensor) -> Tensor:
    """SEAM's ``max_onehot``: on B x (1 + C) x H x W scores (background first),
    every foreground value below its pixel's foreground maximum set to 0; the
    background channel and the maxima (ties: all of them) kept. Out of place.

    Example:
        >>> import torch
        >>> max_onehot(torch.tensor([0.9, 0.2, 0.5, 0.5]).view(1, 4, 1, 1)).flatten()
        tensor([0.9000, 0.0000, 0.5000, 0.5000])
    """
    cams = check_maps(cams, "cams")
    if cams.shape[1] < 2:
        raise ValueError(f"cams must be B x (1 + C) x H x W with C >= 1 (background first), "
                         f"got shape {tuple(cams.shape)}")
    foreground = cams[:, 1:]
    best = foreground.amax(1, keepdim=True)
    return torch.cat([cams[:, :1], torch.where(foreground != best, torch.zeros_like(foreground), foreground)], 1)


def equivariant_regularization(transformed_cams: Tensor, cams_of_transformed: Tensor) -> Tensor:
    """ER: ``mean |T(A(I)) - A(T(I))|`` over every element of two same-shaped
    foreground maps (SEAM averages over B x C x h x w, absent classes included
    as zeros). Zero exactly when the two agree.

    Args:
        transformed_cams: B x C x h x w, T applied to the CAMs of the image.
        cams_of_transformed: B x C x h x w, the CAMs of the transformed image.
    """
    a = check_maps(transformed_cams, "transformed_cams")
    b = check_maps(cams_of_transformed, "cams_of_transformed")
    if a.shape != b.shape:
        raise ValueError(f"transformed_cams {tuple(a.shape)} and cams_of_transformed {tuple(b.shape)} "
                         "must have the same shape")
    return (a - b).abs().mean()


def seam_cross_term(target: Tensor, refined: Tensor, top_fraction: float = 0.2) -> Tensor:
    """One direction of ECR: ``|max_onehot(target) - refined|`` per image, the mean
    of its ``int(L h w top_fraction)`` largest entries (at least one), then the
    mean over the batch. ``target`` is detached (SEAM's ``cam.detach()``).

    Args:
        target: B x L x h x w scores of the other view, background first.
        refined: B x L x h x w PCM-refined scores of this view, same frame.
        top_fraction: SEAM's 0.2 (``k = int(21 * hs * ws * 0.2)``).

    Example:
        >>> import torch
        >>> target = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(1, 2, 1, 2)   # background, one class
        >>> refined = torch.tensor([[0.5, 0.1], [0.9, 0.0]]).view(1, 2, 1, 2)
        >>> seam_cross_term(target, refined, 0.5)          # |.| = 0.5, 0.1, 0.9, 1.0: top 2 -> 0.95
        tensor(0.9500)
    """
    target = check_maps(target, "target")
    refined = check_maps(refined, "refined")
    if target.shape != refined.shape:
        raise ValueError(f"target {tuple(target.shape)} and refined {tuple(refined.shape)} must have the same shape")
    top_fraction = _fraction(top_fraction, "top_fraction")
    batch, labels, height, width = refined.shape
    k = max(1, int(labels * height * width * top_fraction))
    gap = (max_onehot(target.detach()) - refined).abs().view(batch, -1)
    return gap.topk(k, dim=1).values.mean()


def equivariant_cross_regularization(cams_a: Tensor, refined_a: Tensor, cams_b: Tensor, refined_b: Tensor,
                                     top_fraction: float = 0.2) -> Tensor:
    """ECR both ways: ``seam_cross_term(cams_b, refined_a) + seam_cross_term(cams_a, refined_b)``,
    all four B x L x h x w in the same frame (the rescaled view's), background first."""
    return seam_cross_term(cams_b, refined_a, top_fraction) + seam_cross_term(cams_a, refined_b, top_fraction)


def min_pooling_loss(scores: Tensor, fraction: float = 0.25) -> Tensor:
    """SEAM's ``adaptive_min_pooling_loss``: per image the max over classes,
    its ``h w // 4`` smallest pixels (at least one), ReLU, summed and divided
    by ``k B``. Pushes the weakest pixels' refined foreground scores to zero.

    Args:
        scores: B x C x h x w (SEAM: the refined foreground scores times the tags).
        fraction: SEAM's 0.25 (``k = h * w // 4``).

    Example:
        >>> import torch
        >>> min_pooling_loss(torch.tensor([-1.0, 0.2, 0.4, 3.0]).view(1, 1, 2, 2), 0.5)
        tensor(0.1000)
    """
    scores = check_maps(scores, "scores")
    fraction = _fraction(fraction, "fraction")
    batch, _, height, width = scores.shape
    k = max(1, int(height * width * fraction))  # = h * w // 4 at 0.25
    lowest = scores.amax(1).view(batch, -1).topk(k, dim=1, largest=False).values
    return F.relu(lowest).sum() / (k * batch)


def seam_losses(cams1: Tensor, refined1: Tensor, cams2: Tensor, refined2: Tensor, labels: Tensor,
                top_fraction: float = 0.2, min_fraction: float = 0.25) -> dict[str, Tensor]:
    """SEAM's training objective from the outputs on both views (``train_SEAM.py``).

    Args:
        cams1: B x C x H x W raw foreground CAMs of the image, at its size.
        refined1: B x (1 + C) x H x W raw PCM output of the image, background first.
        cams2, refined2: the same for the rescaled view, at the view's size h x w
            (smaller than H x W); view 1's maps are rescaled to it.
        labels: B x C multi-hot tags.
        top_fraction: ECR's 0.2. min_fraction: min pooling's 0.25.

    Returns:
        ``classification`` (mean of the views' soft-margin losses on GAP(cams)),
        ``min_pooling`` (mean of the views), ``er``, ``ecr`` and their sum ``loss``.
    """
    cams1, cams2 = check_maps(cams1, "cams1"), check_maps(cams2, "cams2")
    refined1, refined2 = check_maps(refined1, "refined1"), check_maps(refined2, "refined2")
    batch, classes = cams1.shape[:2]
    for name, value, extra in (("cams2", cams2, 0), ("refined1", refined1, 1), ("refined2", refined2, 1)):
        if value.shape[:2] != (batch, classes + extra):
            raise ValueError(f"{name} must be B x {'(1 + C)' if extra else 'C'} = {batch} x {classes + extra} "
                             f"like cams1 {tuple(cams1.shape)}, got shape {tuple(value.shape)}")
    if refined1.shape[2:] != cams1.shape[2:]:
        raise ValueError(f"refined1 {tuple(refined1.shape)} must have the size of cams1 {tuple(cams1.shape)}")
    if refined2.shape[2:] != cams2.shape[2:]:
        raise ValueError(f"refined2 {tuple(refined2.shape)} must have the size of cams2 {tuple(cams2.shape)}")
    labels = check_tags(labels, batch, classes).to(cams1.dtype)
    tags = labels[..., None, None]
    tags_bg = torch.cat([torch.ones_like(labels[:, :1]), labels], 1)[..., None, None]

    classification = (F.multilabel_soft_margin_loss(cams1.mean((2, 3)), labels)
                      + F.multilabel_soft_margin_loss(cams2.mean((2, 3)), labels)) / 2
    min_pooling = (min_pooling_loss(refined1[:, 1:] * tags, min_fraction)
                   + min_pooling_loss(refined2[:, 1:] * tags, min_fraction)) / 2

    size = tuple(cams2.shape[2:])
    view1 = rescale(max_norm(cams1), size=size) * tags
    view2 = max_norm(cams2) * tags
    refined_view1 = rescale(max_norm(refined1), size=size) * tags_bg
    refined_view2 = max_norm(refined2) * tags_bg
    er = equivariant_regularization(view1, view2)
    ecr = equivariant_cross_regularization(with_background(view1), refined_view1, with_background(view2),
                                           refined_view2, top_fraction)
    loss = classification + min_pooling + er + ecr
    return {"classification": classification, "min_pooling": min_pooling, "er": er, "ecr": ecr, "loss": loss}
