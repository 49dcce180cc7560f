"""SSSS's losses (Araslanov & Roth, "Single-Stage Semantic Segmentation from
Image Labels", CVPR 2020; 1-stage-wseg ``models/stage_net.py``).

The decoder's C foreground logits get a constant background logit (1) in
front; the masks are their softmax over the C + 1 channels. Image scores:

    nGWP     y_k = sum_i m_ik s_ik / (1 + sum_i m_ik)       (normalised global weighted pooling)
    focal    f_k = (1 - mean_i m_ik)^p * log(lambda + mean_i m_ik)     (p 3, lambda 0.01)
    score    y_c + f_c for the foreground channels c

trained with the multi-label soft margin loss against the tags. The
self-supervision is a class-balanced cross-entropy of the mask logits against
the PAMR pseudo-ground truth (:func:`python_models.pseudo.pseudo_gtmask`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from python_models._checks import check_label_map, check_maps, check_real, check_tags

__all__ = ["add_background_logit", "balanced_mask_loss", "focal_penalty", "ngwp", "ssss_class_scores"]


def _check_pair(logits: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    logits, masks = check_maps(logits, "logits"), check_maps(masks, "masks")
    if logits.shape != masks.shape:
        raise ValueError(f"logits and masks must have the same shape, got {tuple(logits.shape)} and "
                         f"{tuple(masks.shape)}")
    return logits, masks


def ngwp(logits: Tensor, masks: Tensor) -> Tensor:
    """Normalised global weighted pooling: ``sum_i m_i s_i / (1 + sum_i m_i)``
    per image and channel.

    Args:
        logits: B x K x h x w pixel scores s. masks: B x K x h x w
            non-negative weights m (SSSS: the softmax of the logits).

    Returns:
        B x K, at most ``max(0, max_i s_i)`` (the ``1 +`` pulls the weighted
        mean of the scores towards 0; it approaches that mean as the mask
        mass grows).

    >>> ngwp(torch.tensor([[[[2.0, 4.0]]]]), torch.tensor([[[[1.0, 1.0]]]])).tolist()
    [[2.0]]
    """
    logits, masks = _check_pair(logits, masks)
    logits, masks = logits.flatten(2), masks.flatten(2)
    return (logits * masks).sum(-1) / (1.0 + masks.sum(-1))


def focal_penalty(masks: Tensor, p: float = 3.0, lam: float = 0.01) -> Tensor:
    """SSSS's focal mask penalty ``(1 - mean m)^p * log(lam + mean m)`` per
    image and channel (1-stage-wseg ``focal_loss``; p ``FOCAL_P`` 3,
    lambda ``FOCAL_LAMBDA`` 0.01). Added to the class score it is strongly
    negative for a near-empty mask and 0 for a mask covering the image.

    Args:
        masks: B x K x h x w in [0, 1].

    Returns:
        B x K: ``log(lam)`` for an empty mask, 0 for a full one.

    >>> round(focal_penalty(torch.full((1, 1, 2, 2), 0.5)).item(), 6)   # 0.5**3 * log(0.51)
    -0.084168
    """
    masks = check_maps(masks, "masks")
    p = check_real(p, "p", positive=True)
    lam = check_real(lam, "lam", positive=True)
    mean = masks.flatten(2).mean(-1)
    return (1.0 - mean).pow(p) * torch.log(lam + mean)


def add_background_logit(logits: Tensor, bg_logit: float = 1.0) -> Tensor:
    """B x C x h x w foreground logits -> B x (C + 1) x h x w with a constant
    background logit (SSSS: 1) in channel 0."""
    logits = check_maps(logits, "logits")
    bg_logit = check_real(bg_logit, "bg_logit")
    return torch.cat([torch.full_like(logits[:, :1], bg_logit), logits], 1)


def ssss_class_scores(logits: Tensor, masks: Tensor, p: float = 3.0, lam: float = 0.01) -> Tensor:
    """SSSS's image scores: ``ngwp(logits, masks) + focal_penalty(masks)``
    without the background channel.

    Args:
        logits: B x (C + 1) x h x w with the background first.
        masks: their softmax over channels, same shape.

    Returns:
        B x C scores for the multi-label soft margin loss.
    """
    logits, masks = _check_pair(logits, masks)
    if logits.shape[1] < 2:
        raise ValueError(f"logits must have a background and at least one class (K >= 2), got {logits.shape[1]}")
    return (ngwp(logits, masks) + focal_penalty(masks, p, lam))[:, 1:]


def balanced_mask_loss(logits: Tensor, pseudo_gt: Tensor, labels: Tensor, ignore_index: int = 255) -> Tensor:
    """SSSS's class-balanced cross-entropy of the mask logits against a
    pseudo-ground truth (1-stage-wseg ``balanced_mask_loss_ce``).

    The logits are resized (bilinear, ``align_corners=True``) to the label
    map. With ``n_k`` the pixels of label k in an image and ``N = sum_k n_k``,
    a pixel of label k weighs ``(N - n_k) / (1 + N)``; the image's loss is
    the mean over ALL its pixels of weight x CE (ignored pixels count 0). An
    image whose pseudo-ground truth lacks one of its tags or the background
    (distinct labels != tags + 1) gets loss 0.

    Args:
        logits: B x (C + 1) x h x w, the background first.
        pseudo_gt: B x H x W int64 labels (0 background, c + 1 for tag column
            c) or ``ignore_index``.
        labels: B x C multi-hot tags.

    Returns:
        B per-image losses (the method averages them).
    """
    logits = check_maps(logits, "logits")
    batch, num_labels = logits.shape[:2]
    pseudo_gt = check_label_map(pseudo_gt, "pseudo_gt", num_labels=num_labels, ignore_index=ignore_index)
    if pseudo_gt.shape[0] != batch:
        raise ValueError(f"pseudo_gt must have the logits' batch size {batch}, got {pseudo_gt.shape[0]}")
    labels = check_tags(labels, batch, num_labels - 1)
    if logits.shape[-2:] != pseudo_gt.shape[-2:]:
        logits = F.interpolate(logits, size=pseudo_gt.shape[-2:], mode="bilinear", align_corners=True)
    valid = pseudo_gt != ignore_index
    onehot = F.one_hot(pseudo_gt.where(valid, 0), num_labels).permute(0, 3, 1, 2).to(logits.dtype)
    onehot = onehot * valid[:, None].to(logits.dtype)
    counts = onehot.flatten(2).sum(-1)  # B x K
    total = counts.sum(-1, keepdim=True)
    class_weight = (total - counts) / (1.0 + total)
    pixel_weight = (onehot * class_weight[..., None, None]).sum(1)  # 0 where ignored
    ce = F.cross_entropy(logits, pseudo_gt, ignore_index=ignore_index, reduction="none")
    complete = (labels.sum(-1) + 1 == (counts > 0).sum(-1)).to(logits.dtype)
    return complete * (pixel_weight * ce).flatten(1).mean(-1)
