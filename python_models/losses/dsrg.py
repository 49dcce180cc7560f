"""DSRG's losses (Huang et al., "Weakly-Supervised Semantic Segmentation Network
with Deep Seeded Region Growing", CVPR 2018), as speedinghzl/DSRG
``pylayers/pylayers/pylayers.py`` computes them: the balanced seeding loss on
the grown seeds and the CRF of its boundary loss, whose energy is −p.

The boundary loss itself is SEC's :func:`python_models.losses.constrain_loss`
with DSRG's ratio clip (:data:`DSRG_RATIO_CLIP`); the growing is
:func:`python_models.pseudo.dsrg_grow`.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from python_models._checks import check_label_map, check_probs, check_real
from python_models.losses.sec import MIN_PROB, SEC_CRF, _crf_target, _log

__all__ = ["DSRG_CRF", "DSRG_RATIO_CLIP", "balanced_seed_loss", "dsrg_crf_target"]

# pylayers.py CRFLayer / DSRGLayer.refinement: krahenbuhl2013.CRF(..., scale_factor=12.0), 10 iterations: SEC's.
DSRG_CRF: Mapping[str, float] = dict(SEC_CRF)

# pylayers.py ConstrainLossLayer: T.log(T.clip(probs_smooth / probs, 0.05, 20)).
DSRG_RATIO_CLIP = (0.05, 20.0)


def balanced_seed_loss(probs: Tensor, seeds: Tensor, ignore_index: int = 255) -> Tensor:
    r"""DSRG's balanced seeding loss (``BalancedSeedLossLayer``): the background
    and the foreground cross-entropies, each divided by its own pixel count per
    image, each averaged over the batch, summed:

    :math:`-\frac{1}{B}\sum_b \Big[\frac{1}{|S^0_b|}\sum_{u \in S^0_b} \log f_{u,0}
    + \frac{1}{|S^{fg}_b|}\sum_{u \in S^{fg}_b} \log f_{u,s_u}\Big]`.

    An empty set contributes 0 (DSRG divides by ``max(count, 1e-4)`` of a zero sum).

    Args:
        probs: B x (1 + C) x h x w probabilities, differentiable.
        seeds: B x h x w int64 (grown) seeds: 0 background, c + 1, ``ignore_index``.

    Returns:
        A scalar.

    Example:
        >>> import torch
        >>> from python_models.losses import balanced_seed_loss
        >>> probs = torch.tensor([[[[0.5, 0.5, 0.25]], [[0.5, 0.5, 0.75]]]])
        >>> balanced_seed_loss(probs, torch.tensor([[[0, 0, 1]]]))   # -log 0.5 - log 0.75
        tensor(0.9808)
    """
    probs = check_probs(probs, "probs")
    seeds = check_label_map(seeds, "seeds", num_labels=probs.shape[1], ignore_index=ignore_index,
                            shape=(probs.shape[0], *probs.shape[2:]))
    cued = seeds != ignore_index
    picked = _log(probs).gather(1, seeds.masked_fill(~cued, 0).unsqueeze(1)).squeeze(1)
    terms = []
    for region in (cued & (seeds == 0), cued & (seeds > 0)):
        terms.append(-((picked * region).flatten(1).sum(1) / region.flatten(1).sum(1).clamp(min=1)).mean())
    return terms[0] + terms[1]


def dsrg_crf_target(probs: Tensor, images: Tensor, labels: Tensor | None = None, *, mask_absent: bool = False,
                    min_prob: float = MIN_PROB, **crf: float) -> Tensor:
    r"""DSRG's CRF step (``CRFLayer`` and ``DSRGLayer.refinement``):
    :math:`Q = \mathrm{CRF}(\text{image}, f)` with energy :math:`-\max(p, \text{min\_prob})`
    (DSRG passes the probabilities themselves, which ``CRF.py`` negates, not their log).

    Otherwise as :func:`python_models.losses.crf_target`: the image downscaled
    to the map (corner-aligned bilinear, as ``zoom(order=1)``), every class
    given to the CRF unless ``mask_absent``, SEC's kernels at scale 12
    (:data:`DSRG_CRF`), Q floored at ``min_prob`` and renormalised.

    Args:
        probs: B x (1 + C) x h x w probabilities (DSRG: its floored softmax); detached.
        images: B x 3 x H x W float RGB in [0, 1] (or uint8).
        labels: B x C tags; used only with ``mask_absent``.

    Returns:
        Q: B x (1 + C) x h x w, detached, in ``probs``' dtype.
    """
    floor = check_real(min_prob, "min_prob")
    return _crf_target(probs, images, labels, mask_absent, floor, {**DSRG_CRF, **crf},
                       lambda p: -p.clamp_min(floor))
