"""SSSS's self-supervision target (Araslanov & Roth, CVPR 2020; 1-stage-wseg
``models/stage_net.py``): the decoder's masks refined by PAMR
(:func:`wsss_ext.pamr` on the detached masks, the image resized to the mask),
upsampled to the image, classes outside the tags zeroed
(:func:`ssss_refine`), then cut into a confident one-label-per-pixel
pseudo-ground truth (:func:`pseudo_gtmask`, :func:`gtmask_to_labels`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

import wsss_ext
from python_models._checks import check_images, check_maps, check_real, check_tags

__all__ = ["PAMR_DILATIONS", "gtmask_to_labels", "pseudo_gtmask", "ssss_refine"]

PAMR_DILATIONS = (1, 2, 4, 8, 12, 24)  # 1-stage-wseg core/config.py NET.PAMR_KERNEL


def pseudo_gtmask(masks: Tensor, cutoff_fg: float = 0.6, cutoff_bg: float = 0.7, cutoff_low: float = 0.2) -> Tensor:
    """Binary pseudo-ground truth from soft masks (1-stage-wseg ``pseudo_gtmask``).

    Per image and channel the threshold is the channel's max times
    ``cutoff_bg`` (channel 0, the background) or ``cutoff_fg`` (the classes),
    raised to at least ``cutoff_low``; a pixel is on for a channel where its
    mask value is strictly above the threshold; a pixel on for two or more
    channels (ambiguous) is turned off for all.

    Args:
        masks: B x (C + 1) x H x W masks, the background first (SSSS: the
            refined masks, absent classes zeroed).
        cutoff_fg: 0.6. cutoff_bg: 0.7. cutoff_low: 0.2.

    Returns:
        B x (C + 1) x H x W float in {0, 1}, at most one 1 per pixel (none:
        ignored, see :func:`gtmask_to_labels`).

    >>> m = torch.tensor([[[[0.9, 0.5, 0.1]], [[0.1, 0.5, 0.9]]]])   # 1 x 2 x 1 x 3
    >>> pseudo_gtmask(m)[0, :, 0].tolist()   # thresholds 0.63 and 0.54
    [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    """
    masks = check_maps(masks, "masks")
    cutoff_fg = check_real(cutoff_fg, "cutoff_fg")
    cutoff_bg = check_real(cutoff_bg, "cutoff_bg")
    cutoff_low = check_real(cutoff_low, "cutoff_low")
    if not torch.isfinite(masks).all():
        raise ValueError("masks has NaN or infinite values")
    peak = masks.flatten(2).amax(-1)  # B x K
    scale = torch.full_like(peak, cutoff_fg)
    scale[:, 0] = cutoff_bg
    threshold = (peak * scale).clamp_min(cutoff_low)
    on = (masks > threshold[..., None, None]).to(masks.dtype)
    unambiguous = (on.sum(1, keepdim=True) <= 1).to(masks.dtype)
    return on * unambiguous


def gtmask_to_labels(pseudo_gt: Tensor, ignore_index: int = 255) -> Tensor:
    """B x K x H x W one-label-per-pixel binary masks -> B x H x W int64
    label maps: the channel that is on, ``ignore_index`` where none is."""
    pseudo_gt = check_maps(pseudo_gt, "pseudo_gt")
    count = pseudo_gt.sum(1)
    if (count > 1).any():
        raise ValueError("pseudo_gt must have at most one channel on per pixel")
    return torch.where(count > 0, pseudo_gt.argmax(1), torch.full_like(count, ignore_index, dtype=torch.long))


def ssss_refine(images: Tensor, masks: Tensor, labels: Tensor, dilations: Sequence[int] = PAMR_DILATIONS,
                n_iters: int = 10, sigma: float = 0.1, size: Sequence[int] | None = None) -> Tensor:
    """SSSS's refined masks ("dec"): PAMR of the DETACHED masks at their own
    resolution with the images resized to it
    (:func:`wsss_ext.resize_image_to_mask`), upsampled (bilinear,
    ``align_corners=True``) to ``size`` (default: the images'), the channels
    of classes outside the tags zeroed (the background kept).

    Args:
        images: B x 3 x H x W RGB in [0, 1] (PAMR ignores per-channel affine
            maps, so the unnormalised image serves).
        masks: B x (C + 1) x h x w softmax masks, the background first.
        labels: B x C tags.
        dilations, n_iters, sigma: PAMR's settings (1-stage-wseg:
            (1, 2, 4, 8, 12, 24), 10, 0.1).

    Returns:
        B x (C + 1) x size refined masks, no gradient.
    """
    images = check_images(images)
    masks = check_maps(masks, "masks")
    if masks.shape[0] != images.shape[0]:
        raise ValueError(f"masks must have the images' batch size {images.shape[0]}, got {masks.shape[0]}")
    labels = check_tags(labels, images.shape[0], masks.shape[1] - 1)
    masks = masks.detach()
    refined = wsss_ext.pamr(wsss_ext.resize_image_to_mask(images, masks).to(masks.dtype), masks, dilations,
                            n_iters, sigma)
    size = tuple(images.shape[-2:]) if size is None else tuple(size)
    if tuple(refined.shape[-2:]) != size:
        refined = F.interpolate(refined, size=size, mode="bilinear", align_corners=True)
    keep = torch.cat([torch.ones_like(labels[:, :1]), labels], 1).to(refined.dtype)
    return refined * keep[..., None, None]
