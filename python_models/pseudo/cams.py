"""From raw class activation maps to normalised CAMs and label maps, as the
WSSS repositories compute them (irn ``step/make_cam.py``): ReLU, sum over
scales and flips, each class divided by its max, classes outside the image's
tags zeroed, a background score, argmax."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from python_models._checks import check_real

__all__ = ["cams_to_labels", "localisation_cues", "multiscale_cams", "normalize_cams", "synthetic_cams"]


def normalize_cams(cams: Tensor, labels: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """``relu(cams) / (max + eps)`` per image and class, times the tags.

    Args:
        cams: B x C x H x W raw maps. labels: B x C multi-hot tags or None.

    Returns:
        B x C x H x W in [0, 1]; zero for classes not in ``labels``.
    """
    cams = F.relu(cams)
    cams = cams / (cams.flatten(2).amax(2)[..., None, None] + eps)
    return cams if labels is None else cams * labels.to(cams.dtype)[..., None, None]


def multiscale_cams(raw_cams: Callable[[Tensor], Tensor], images: Tensor, scales: Sequence[float] = (1.0,),
                    flip: bool = True, size: tuple[int, int] | None = None) -> Tensor:
    """The sum over scales (and horizontal flips) of ``relu(raw_cams(x))``, each
    resized bilinearly to ``size`` (default: the images').

    Args:
        raw_cams: maps B x 3 x h x w images to B x C x h' x w' raw CAMs.
        images: B x 3 x H x W, as ``raw_cams`` takes them.
        scales: image scales (IRNet and RecurSeed: 1, 0.5, 1.5, 2).
        flip: add each scale's flipped image, flipped back.

    Returns:
        B x C x size, non-negative, not normalised (see :func:`normalize_cams`).
    """
    if not scales:
        raise ValueError("scales must name at least one scale")
    size = tuple(size or images.shape[-2:])
    total = None
    for scale in scales:
        scale = check_real(scale, "scales", positive=True)
        scaled = images if scale == 1 else F.interpolate(images, scale_factor=scale, mode="bilinear",
                                                         align_corners=False, recompute_scale_factor=False)
        batch = torch.cat([scaled, scaled.flip(-1)]) if flip else scaled
        maps = F.relu(raw_cams(batch))
        if flip:
            maps = maps[: len(images)] + maps[len(images):].flip(-1)
        maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
        total = maps if total is None else total + maps
    return total


def cams_to_labels(cams: Tensor, labels: Tensor, bg_threshold: float) -> Tensor:
    """Argmax of [constant background score, tagged CAMs]: B x H x W int64,
    0 the background, c + 1 for tag column c.

    Args:
        cams: B x C x H x W normalised CAMs. labels: B x C tags.
        bg_threshold: the background's score (IRNet's CAM step: 0.25 to 0.3).
    """
    scores = cams * labels.to(cams.dtype)[..., None, None]
    background = torch.full_like(scores[:, :1], check_real(bg_threshold, "bg_threshold"))
    return torch.cat([background, scores], 1).argmax(1)


def localisation_cues(cams: Tensor, labels: Tensor, fg_fraction: float = 0.2, bg_threshold: float = 0.05,
                      ignore_index: int = 255) -> Tensor:
    """SEC's / DSRG's seeds from a classification network's CAMs: B x H x W int64.

    Foreground cues are the pixels where a tagged class's CAM reaches
    ``fg_fraction`` of its maximum (SEC section 3.3: 20 % of the maximum
    score; the class with the highest normalised score where cues overlap).
    The papers take the background cues from a saliency model (SEC: the
    saliency of Jiang et al.; DSRG: DRFI), which this library does not
    compute; here the background is where every tagged CAM is below
    ``bg_threshold`` of its maximum (IRNet's background threshold, 0.05),
    a CAM-only stand-in. Every other pixel is ``ignore_index`` (no cue).

    Args:
        cams: B x C x H x W CAMs (non-negative; normalised or not: each is
            divided by its maximum here). labels: B x C tags.
        fg_fraction: foreground threshold, in (0, 1]. bg_threshold: background
            threshold, in [0, fg_fraction).

    Returns:
        0 background, c + 1 for tag column c, ``ignore_index`` no cue.

    Example:
        >>> import torch
        >>> cams = torch.tensor([[[[1.0, 0.5, 0.1, 0.0]]]])
        >>> localisation_cues(cams, torch.ones(1, 1))
        tensor([[[  1,   1, 255,   0]]])
    """
    fg_fraction = check_real(fg_fraction, "fg_fraction", positive=True)
    bg_threshold = check_real(bg_threshold, "bg_threshold")
    if fg_fraction > 1 or not 0 <= bg_threshold < fg_fraction:
        raise ValueError(f"need 0 <= bg_threshold < fg_fraction <= 1, got bg_threshold={bg_threshold}, "
                         f"fg_fraction={fg_fraction}")
    if cams.dim() != 4 or labels.shape != cams.shape[:2]:
        raise ValueError(f"cams must be B x C x H x W and labels B x C, got {tuple(cams.shape)} and "
                         f"{tuple(labels.shape)}")
    scores = F.relu(cams) * labels.to(cams.dtype)[..., None, None]
    peak = scores.flatten(2).amax(2)[..., None, None]
    shares = torch.where(peak > 0, scores / peak.clamp_min(torch.finfo(scores.dtype).tiny), torch.zeros_like(scores))
    best, best_class = shares.max(1)
    seeds = torch.full_like(best_class, ignore_index)
    seeds = torch.where(best >= fg_fraction, best_class + 1, seeds)
    untagged = ~labels.bool().any(1)[:, None, None]  # no class to cue: all background
    return torch.where((best < bg_threshold) | untagged, torch.zeros_like(seeds), seeds)


def synthetic_cams(masks: Tensor, labels: Tensor, blur: int = 5) -> Tensor:
    """CAM-like maps from label maps, for tests and examples: each tagged
    class's mask box-blurred by ``blur`` x ``blur`` and divided by its max
    (:func:`python_models.pseudo.normalize_cams`), so they peak inside the
    object and fade across its border. B x H x W masks (c + 1 for tag column
    c) -> B x C x H x W in [0, 1], zero outside the tags."""
    classes = labels.shape[1]
    masks = torch.where((masks >= 0) & (masks <= classes), masks, torch.zeros_like(masks)).long()
    one_hot = F.one_hot(masks, classes + 1)[..., 1:].permute(0, 3, 1, 2).float()
    blurred = F.avg_pool2d(one_hot, blur, 1, blur // 2, count_include_pad=False)
    return normalize_cams(blurred, labels)
