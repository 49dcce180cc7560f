"""Dense CRF refinement restricted to each image's tags, batched.

The WSSS repositories run pydensecrf image by image over the labels present
in the image (background + its tags), so the label count varies per image.
Here absent classes get an energy so high that their probability is exactly
0 in float32: mean-field over all 1 + C labels then equals mean-field over
the present ones, and a whole batch goes through one ``wsss_ext.dense_crf``
call."""

from __future__ import annotations

import math

import torch
from torch import Tensor

import wsss_ext
from python_models._checks import check_real

__all__ = ["ABSENT_ENERGY", "crf_labels", "tag_unary_from_labels", "tag_unary_from_probs", "to_uint8"]

# exp(-1e4) underflows to 0 in float32 and float64: the label is never chosen.
ABSENT_ENERGY = 1.0e4


def to_uint8(images: Tensor) -> Tensor:
    """B x 3 x H x W float RGB in [0, 1] to uint8 (what ``dense_crf`` reads)."""
    return (images.detach().float() * 255).round().clamp(0, 255).to(torch.uint8)


def _present(labels: Tensor) -> Tensor:
    """B x (1 + C) bool: the background and the tagged classes."""
    return torch.cat([torch.ones_like(labels[:, :1], dtype=torch.bool), labels > 0], 1)


def tag_unary_from_labels(label_map: Tensor, labels: Tensor, gt_prob: float = 0.7,
                          ignore_index: int | None = 255) -> Tensor:
    """pydensecrf's ``unary_from_labels`` over each image's present labels (IRNet's call).

    A pixel labelled k gets ``-log(gt_prob)`` for k and ``-log((1 - gt_prob) / (n - 1))``
    for the other present labels, n = 1 + the image's tag count; an ignored pixel
    ``log n`` for each present label; absent classes :data:`ABSENT_ENERGY`.

    Args:
        label_map: B x H x W int64, 0 background, c + 1 for tag column c.
        labels: B x C tags.

    Returns:
        B x (1 + C) x H x W float32 energies.
    """
    gt_prob = check_real(gt_prob, "gt_prob")
    if not 0 < gt_prob < 1:
        raise ValueError(f"gt_prob must be in (0, 1), got {gt_prob}")
    present = _present(labels)
    n_present = present.sum(1).float().view(-1, 1, 1, 1)
    n_labels = present.shape[1]
    unsure = (label_map == ignore_index) if ignore_index is not None else torch.zeros_like(label_map, dtype=torch.bool)
    one_hot = torch.zeros(label_map.shape[0], n_labels, *label_map.shape[1:], device=label_map.device)
    one_hot.scatter_(1, label_map.masked_fill(unsure, 0).unsqueeze(1), 1.0)
    others = -torch.log((1 - gt_prob) / (n_present - 1).clamp(min=1))
    energy = torch.where(one_hot > 0, torch.full_like(one_hot, -math.log(gt_prob)), others.expand_as(one_hot))
    energy = torch.where(unsure.unsqueeze(1), torch.log(n_present).expand_as(energy), energy)
    return energy.masked_fill(~present[..., None, None], ABSENT_ENERGY)


def tag_unary_from_probs(probs: Tensor, labels: Tensor, clip: float = 1e-5) -> Tensor:
    """``-log(clamp(probs, clip, 1))`` with absent classes at :data:`ABSENT_ENERGY`.

    Args:
        probs: B x (1 + C) x H x W, background first. labels: B x C tags.
    """
    energy = wsss_ext.unary_from_probs(probs.detach().float(), clip)
    return energy.masked_fill(~_present(labels)[..., None, None], ABSENT_ENERGY)


def crf_labels(images: Tensor, unary: Tensor, **crf) -> Tensor:
    """``dense_crf(unary, images)`` argmax: B x H x W int64.

    Args:
        images: B x 3 x H x W float RGB in [0, 1] (or uint8).
        unary: B x L x H x W energies (e.g. :func:`tag_unary_from_labels`).
        crf: ``wsss_ext.dense_crf`` keywords (``n_iters``, the kernel widths and weights).
    """
    image = images if images.dtype == torch.uint8 else to_uint8(images)
    return wsss_ext.dense_crf(unary, image, **crf).argmax(1)
