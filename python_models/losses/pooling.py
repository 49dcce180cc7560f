"""Poolings that turn pixel scores into image scores for multi-label
classification losses: global weighted rank pooling (SEC) and log-sum-exp
pooling (MIL-seg)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from python_models._checks import check_maps, check_real

__all__ = ["gwrp", "lse_pool"]


def gwrp(scores: Tensor, decay: float) -> Tensor:
    r"""Global weighted rank pooling (Kolesnikov & Lampert, ECCV 2016, SEC's expand loss).

    Each class's n pixel scores, sorted in descending order :math:`s_1 \ge ... \ge s_n`,
    are averaged with weights :math:`d^{j-1}`:
    :math:`\mathrm{GWRP} = \sum_j d^{j-1} s_j / \sum_j d^{j-1}`. ``decay = 1`` is
    global average pooling; as ``decay -> 0`` it tends to global max pooling.
    SEC uses 0.996 for foreground classes and 0.999 for the background.

    Args:
        scores: B x C x H x W (probabilities in SEC), differentiable.
        decay: d in [0, 1].

    Returns:
        B x C.

    Example:
        >>> import torch
        >>> from python_models.losses import gwrp
        >>> s = torch.tensor([1.0, 3.0, 2.0]).view(1, 1, 1, 3)
        >>> gwrp(s, 0.5)   # (3 + 0.5 * 2 + 0.25 * 1) / 1.75
        tensor([[2.4286]])
    """
    scores = check_maps(scores, "scores")
    decay = check_real(decay, "decay")
    if not 0 <= decay <= 1:
        raise ValueError(f"decay must be in [0, 1], got {decay}")
    flat = scores.flatten(2).sort(dim=2, descending=True).values
    weights = decay ** torch.arange(flat.shape[2], device=scores.device, dtype=torch.float64)
    weights = (weights / weights.sum()).to(scores.dtype)
    return flat @ weights


def lse_pool(scores: Tensor, r: float = 5.0) -> Tensor:
    r"""Log-sum-exp pooling (Pinheiro & Collobert, CVPR 2015, MIL-seg):
    :math:`\frac{1}{r} \log \frac{1}{n} \sum_p e^{r s_p}`, computed stably.
    It lies between the mean (r -> 0) and the max (r -> infinity).

    Args:
        scores: B x C x H x W, differentiable.
        r: sharpness, > 0. The paper's value is not verified here (no code
            of it was read); 5 is this package's default.

    Returns:
        B x C.

    Example:
        >>> import torch
        >>> from python_models.losses import lse_pool
        >>> s = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2)
        >>> lse_pool(s, 1.0)   # log((1 + e) / 2)
        tensor([[0.6201]])
    """
    scores = check_maps(scores, "scores")
    r = check_real(r, "r", positive=True)
    flat = scores.flatten(2)
    return (torch.logsumexp(r * flat, dim=2) - math.log(flat.shape[2])) / r
