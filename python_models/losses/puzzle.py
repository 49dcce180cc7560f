"""Puzzle-CAM's losses (Jo & Yu, "Puzzle-CAM: Improved localization via
matching partial and full features", ICIP 2021; PuzzleCAM
``train_classification_with_puzzle.py``, ``tools/ai/torch_utils.py``).

With A the CAMs of the full images and Â the merged CAMs of their tiles
(:func:`python_models.augment.puzzle_merge`):

    L = cls(GAP(A)) + cls(GAP(Â)) + alpha * re(A, Â)

cls is the multi-label soft-margin loss (averaged over the batch), GAP the
spatial mean, re the reconstruction loss of :func:`puzzle_re_loss`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from python_models._checks import check_real, check_tags

__all__ = ["puzzle_cam_loss", "puzzle_make_cam", "puzzle_re_loss"]

_DISTANCES = ("l1", "l2")
_MODES = ("masking", "selection", "none")
_LEVELS = ("feature", "cam")


def _maps(value: object, name: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.dtype.is_floating_point:
        raise TypeError(f"{name} must be a float tensor (B x C x h x w), got dtype {value.dtype}")
    if value.dim() != 4 or value.numel() == 0:
        raise ValueError(f"{name} must be a non-empty B x C x h x w tensor, got shape {tuple(value.shape)}")
    if not torch.isfinite(value).all():
        raise ValueError(f"{name} has NaN or infinite values")
    return value


def _choice(value: object, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def puzzle_make_cam(cams: Tensor, eps: float = 1e-5) -> Tensor:
    """PuzzleCAM's ``make_cam``: ``relu(relu(x) - eps) / (max_hw relu(x) + eps)``
    per image and class (the re-loss's ``--level cam`` option).

    Args:
        cams: B x C x h x w raw CAMs. Returns: the same shape, in [0, 1).
    """
    positive = F.relu(cams)
    return F.relu(positive - eps) / (positive.flatten(2).amax(2)[..., None, None] + eps)


def puzzle_re_loss(cams: Tensor, merged_cams: Tensor, labels: Tensor, *, distance: str = "l1",
                   mode: str = "masking", level: str = "feature") -> Tensor:
    r"""Puzzle-CAM's reconstruction loss between the full CAMs and the merged tile CAMs.

    ``mode="masking"`` (the README's ``--re_loss_option masking``):
    :math:`\frac{1}{B C h w} \sum_{b,c,y,x} y_{bc}\, d(A_{bcyx}, \hat A_{bcyx})`,
    the mean over **all** B x C x h x w entries (absent classes count as zeros
    in the mean, as the repository's ``(re_loss_fn(A, Â) * mask).mean()``);
    ``"selection"``: per image the mean over its tagged classes' entries, then
    the mean over the batch (an image without tags adds 0); ``"none"``: the plain mean.
    ``d`` is ``|a - b|`` (``distance="l1"``, the README's ``L1_Loss``) or
    ``(a - b)^2`` (``"l2"``).

    ``level="feature"`` (the script's default, which the README's command keeps)
    compares the raw CAMs (classifier outputs before ReLU); ``"cam"`` first
    applies :func:`puzzle_make_cam` to both.

    Args:
        cams: B x C x h x w CAMs of the full images (differentiable).
        merged_cams: B x C x h x w merged CAMs of their tiles (differentiable).
        labels: B x C multi-hot tags.

    Returns:
        A scalar; 0 when ``merged_cams`` equals ``cams``.

    Example:
        >>> import torch
        >>> from python_models.losses import puzzle_re_loss
        >>> a = torch.zeros(1, 2, 1, 2)
        >>> b = torch.tensor([[[[1.0, 3.0]], [[5.0, 5.0]]]])
        >>> puzzle_re_loss(a, b, torch.tensor([[1.0, 0.0]]))   # (1 + 3) / 4
        tensor(1.)
    """
    cams = _maps(cams, "cams")
    merged_cams = _maps(merged_cams, "merged_cams")
    if merged_cams.shape != cams.shape:
        raise ValueError(f"merged_cams must have the shape of cams {tuple(cams.shape)}, "
                         f"got {tuple(merged_cams.shape)}")
    labels = check_tags(labels, cams.shape[0], cams.shape[1]).to(cams.dtype)
    _choice(distance, "distance", _DISTANCES)
    _choice(mode, "mode", _MODES)
    if _choice(level, "level", _LEVELS) == "cam":
        cams, merged_cams = puzzle_make_cam(cams), puzzle_make_cam(merged_cams)
    difference = cams - merged_cams
    loss = difference.abs() if distance == "l1" else difference.square()
    if mode == "none":
        return loss.mean()
    mask = labels[..., None, None]
    if mode == "masking":
        return (loss * mask).mean()
    per_class = loss.flatten(2).mean(2)  # B x C
    count = labels.sum(1)
    per_image = (per_class * labels).sum(1) / count.clamp(min=1)
    return per_image.mean()


def puzzle_cam_loss(cams: Tensor, merged_cams: Tensor, labels: Tensor, alpha: float | Tensor, *,
                    distance: str = "l1", mode: str = "masking", level: str = "feature") -> dict[str, Tensor]:
    """Puzzle-CAM's training loss from the full and merged raw CAMs.

    Args:
        cams: B x C x h x w raw CAMs of the full images; their spatial mean are the logits.
        merged_cams: B x C x h x w merged raw CAMs of the tiles.
        labels: B x C multi-hot tags.
        alpha: the re-loss weight (a float or a 0-d tensor; Puzzle-CAM ramps it,
            see :class:`python_models.methods.PuzzleCAM`).
        distance, mode, level: as :func:`puzzle_re_loss`.

    Returns:
        ``{"classification": cls(GAP(A)), "puzzle_classification": cls(GAP(Â)),
        "reconstruction": re(A, Â), "loss": their sum with alpha on the last}``.
    """
    cams = _maps(cams, "cams")
    merged_cams = _maps(merged_cams, "merged_cams")
    labels = check_tags(labels, cams.shape[0], cams.shape[1]).to(cams.dtype)
    if isinstance(alpha, Tensor):
        if alpha.numel() != 1 or not torch.isfinite(alpha).all():
            raise ValueError(f"alpha must be a finite scalar, got shape {tuple(alpha.shape)}")
        weight = alpha.detach().reshape(()).to(cams.dtype)
    else:
        weight = check_real(alpha, "alpha")
    if float(weight) < 0:
        raise ValueError(f"alpha must be >= 0, got {float(weight)}")
    classification = F.multilabel_soft_margin_loss(cams.mean((2, 3)), labels)
    puzzle_classification = F.multilabel_soft_margin_loss(merged_cams.mean((2, 3)), labels)
    reconstruction = puzzle_re_loss(cams, merged_cams, labels, distance=distance, mode=mode, level=level)
    return {
        "classification": classification,
        "puzzle_classification": puzzle_classification,
        "reconstruction": reconstruction,
        "loss": classification + puzzle_classification + weight * reconstruction,
    }
