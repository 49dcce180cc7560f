"""The affinity loss of PSA / AffinityNet (Ahn & Kwak, CVPR 2018, Eq. 7-9;
psa ``train_aff.py``), also IRNet's affinity term (irn ``step/train_irn.py``).

Positive pairs should have affinity 1, negative pairs 0::

    L_bg  = mean over background-positive pairs of -log(a)
    L_fg  = mean over foreground-positive pairs of -log(a)
    L_neg = mean over negative pairs of -log(1 - a)
    L     = L_bg / 4 + L_fg / 4 + L_neg / 2

(IRNet writes the same total as (pos_bg / 2 + pos_fg / 2 + neg) / 2.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from python_models._checks import check_float

__all__ = ["AFFINITY_EPS", "AFFINITY_LOSS_WEIGHTS", "affinity_loss"]

# psa train_aff.py: log(aff + 1e-5) and log(1 + 1e-5 - aff).
AFFINITY_EPS = 1e-5
# psa train_aff.py: loss = bg_loss/4 + fg_loss/4 + neg_loss/2.
AFFINITY_LOSS_WEIGHTS = (0.25, 0.25, 0.5)


def _mask(value: object, name: str, shape: torch.Size) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.shape != shape:
        raise ValueError(f"{name} must have the affinity's shape {tuple(shape)}, got {tuple(value.shape)}")
    if value.is_complex():
        raise TypeError(f"{name} must be a bool (or 0/1) mask, got dtype {value.dtype}")
    return value


def affinity_loss(affinity: Tensor, bg_pos: Tensor, fg_pos: Tensor, neg: Tensor,
                  weights: Sequence[float] = AFFINITY_LOSS_WEIGHTS, eps: float = AFFINITY_EPS) -> dict[str, Tensor]:
    """The three affinity terms and their weighted total.

    Args:
        affinity: B x T x h x w affinities in [0, 1] (``wsss_ext.feature_affinity``
            or ``wsss_ext.boundary_affinity``), differentiable.
        bg_pos, fg_pos, neg: B x T x h x w pair masks (bool, or float 0/1
            weights) from :func:`python_models.pseudo.affinity_pair_labels`.
        weights: weights of (bg, fg, neg): PSA's (1/4, 1/4, 1/2).
        eps: PSA's 1e-5 inside the logarithms, keeping them finite at a = 0 and 1.

    Returns:
        ``{"bg_pos": L_bg, "fg_pos": L_fg, "neg": L_neg, "loss": total}``, scalars.
        A term without pairs is 0 (not NaN) and contributes nothing; each term
        is the exact mean over its pairs (PSA divides by count + 1e-5).

    Example:
        >>> import torch
        >>> a = torch.tensor([0.5, 0.25]).view(1, 2, 1, 1)
        >>> bg = torch.tensor([True, False]).view(1, 2, 1, 1)
        >>> terms = affinity_loss(a, bg, torch.zeros_like(bg), ~bg, eps=0.0)
        >>> round(float(terms["bg_pos"]), 4), float(terms["fg_pos"]), round(float(terms["neg"]), 4)
        (0.6931, 0.0, 0.2877)
    """
    affinity = check_float(affinity, "affinity")
    if affinity.dim() != 4:
        raise ValueError(f"affinity must be B x T x h x w, got shape {tuple(affinity.shape)}")
    if not bool(torch.isfinite(affinity.detach()).all()):
        raise ValueError("affinity has NaN or infinite values")
    masks = [_mask(m, name, affinity.shape).to(affinity.dtype)
             for m, name in ((bg_pos, "bg_pos"), (fg_pos, "fg_pos"), (neg, "neg"))]
    if len(weights) != 3:
        raise ValueError(f"weights must be (bg, fg, neg), got {tuple(weights)}")
    terms = {}
    for name, mask, positive in zip(("bg_pos", "fg_pos", "neg"), masks, (True, True, False)):
        # Pairs outside the mask read a neutral affinity (1 for a positive term,
        # 0 for the negative one) before the log, so neither the loss nor its
        # gradient meets log(0) there (a product with the mask would: 0 * inf).
        picked = mask > 0
        neutral = torch.full((), 1.0 if positive else 0.0, dtype=affinity.dtype, device=affinity.device)
        a = torch.where(picked, affinity, neutral)
        loss = -torch.log(a + eps) if positive else -torch.log(1 + eps - a)
        count = mask.sum()
        terms[name] = (loss * mask).sum() / torch.where(count > 0, count, torch.ones_like(count))
    terms["loss"] = sum(float(w) * terms[name] for w, name in zip(weights, ("bg_pos", "fg_pos", "neg")))
    return terms
