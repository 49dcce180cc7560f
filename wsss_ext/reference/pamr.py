"""PAMR as the published method computes it (Araslanov & Roth, CVPR 2020):
every tap of every dilation gathered into one stacked tensor, the mask's
``B x C x taps x H x W`` included, on every iteration."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["pamr_affinity_unfold", "pamr_unfold"]


def _taps(x: Tensor, dilations: Sequence[int], with_centre: bool) -> Tensor:
    """[B, K, H, W] -> [B, K, P, H, W]: the 3 x 3 cells of every dilation
    (row-major, dilation-major; the centre only if ``with_centre``), read
    from a replicate-padded copy."""
    height, width = x.shape[-2:]
    taps = []
    for d in dilations:
        padded = F.pad(x, (d, d, d, d), mode="replicate")
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if dy == 0 and dx == 0 and not with_centre:
                    continue
                top, left = d + dy * d, d + dx * d
                taps.append(padded[:, :, top : top + height, left : left + width])
    return torch.stack(taps, dim=2)


def pamr_affinity_unfold(image: Tensor, dilations: Sequence[int] = (1, 2, 4, 8, 12, 24), sigma: float = 0.1) -> Tensor:
    """Softmax weights ``[B, 8 * len(dilations), H, W]``, computed in the image's dtype."""
    local_std = _taps(image, dilations, with_centre=True).std(dim=2, keepdim=True)  # unbiased
    differences = (image.unsqueeze(2) - _taps(image, dilations, with_centre=False)).abs()
    logits = -(differences / (1e-8 + sigma * local_std)).mean(dim=1)
    return torch.softmax(logits, dim=1)


def pamr_unfold(
    image: Tensor,
    mask: Tensor,
    dilations: Sequence[int] = (1, 2, 4, 8, 12, 24),
    n_iters: int = 10,
    sigma: float = 0.1,
) -> Tensor:
    """``n_iters`` refinement steps of ``mask`` [B, C, H, W] with the affinities of
    ``image`` [B, Ci, H, W] (same H x W). Differentiable in ``mask`` by autograd."""
    weights = pamr_affinity_unfold(image, dilations, sigma).unsqueeze(1)  # [B, 1, taps, H, W]
    for _ in range(n_iters):
        mask = (_taps(mask, dilations, with_centre=False) * weights).sum(dim=2)
    return mask
