"""SEC's three losses (Kolesnikov & Lampert, "Seed, Expand and Constrain: Three
Principles for Weakly-Supervised Image Segmentation", ECCV 2016), as
kolesman/SEC ``pylayers/pylayers.py`` computes them, and the CRF step of its
constrain-to-boundary loss (``CRFLayer``, ``CRF/krahenbuhl2013/CRF.py``).

All take probabilities ``B x (1 + C) x h x w`` at the network's output
resolution (41 x 41 for SEC's 321 x 321 crops), background first, as SEC's
``SoftmaxLayer`` gives them: :func:`floored_softmax` (softmax + 1e-4,
renormalised). Tags are ``B x C`` multi-hot; seeds (SEC's localisation cues)
``B x h x w`` label maps: 0 background, c + 1 for tag column c, 255 no cue.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

import wsss_ext
from python_models._checks import (
    check_images,
    check_label_map,
    check_probs,
    check_real,
    check_tags,
)
from python_models.losses.pooling import gwrp
from python_models.pseudo.crf import ABSENT_ENERGY, to_uint8

__all__ = ["MIN_PROB", "SEC_CRF", "SEC_TEST_CRF", "constrain_loss", "crf_target", "expand_loss", "floored_softmax",
           "map_image", "seed_loss"]

# pylayers.py ``min_prob``: the floor of the network's and the CRF's probabilities.
MIN_PROB = 1e-4

# CRF.py: add_pairwise_energy(10, 80 / s, 80 / s, 13, 13, 13, 3, 3 / s, 3 / s) with scale_factor s = 12
# (CRFLayer, 41 x 41 maps of 321 x 321 crops), 10 mean-field iterations: AffinityNet's preset / 12.
SEC_CRF: Mapping[str, float] = dict(n_iters=10, gaussian_sxy=3.0 / 12, gaussian_weight=3.0, bilateral_sxy=80.0 / 12,
                                    bilateral_srgb=13.0, bilateral_weight=10.0)

# deploy/demo.py: krahenbuhl2013.CRF(im, log(probs), scale_factor=1.0) on the full image, probabilities
# floored at 1e-5: gaussian 3/3, bilateral 80/13/10, 10 iterations (AffinityNet's preset at scale 1).
SEC_TEST_CRF: Mapping[str, float] = dict(n_iters=10, gaussian_sxy=3.0, gaussian_weight=3.0, bilateral_sxy=80.0,
                                         bilateral_srgb=13.0, bilateral_weight=10.0)


def floored_softmax(logits: Tensor, min_prob: float = MIN_PROB) -> Tensor:
    """SEC's ``SoftmaxLayer``: ``(softmax(logits) + min_prob) / (1 + L min_prob)`` over dim 1.

    Every probability is then at least ``min_prob / (1 + L min_prob)``, so the
    logarithms of the losses stay finite. ``logits``: B x L x h x w.

    Example:
        >>> import torch
        >>> from python_models.losses import floored_softmax
        >>> floored_softmax(torch.tensor([0.0, 100.0]).view(1, 2, 1, 1)).flatten()
        tensor([9.9980e-05, 9.9990e-01])
    """
    if not isinstance(logits, Tensor) or not logits.dtype.is_floating_point or logits.dim() != 4:
        raise TypeError(f"logits must be a B x L x h x w float tensor, got {type(logits).__name__} "
                        f"{getattr(logits, 'shape', '')}")
    min_prob = check_real(min_prob, "min_prob")
    probs = F.softmax(logits, 1) + min_prob
    return probs / probs.sum(1, keepdim=True)


def _log(probs: Tensor) -> Tensor:
    """log, kept finite where a caller passes an exact zero."""
    return torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))


def seed_loss(probs: Tensor, seeds: Tensor, ignore_index: int = 255) -> Tensor:
    r"""SEC's seeding loss (``SeedLossLayer``): cross-entropy on the localisation cues,
    each image's sum divided by its number of cues, then averaged over the batch:

    :math:`-\frac{1}{B} \sum_b \frac{1}{|S_b|} \sum_{u \in S_b} \log f_{u, s_u}`.

    An image without cues contributes 0 (SEC's layer would divide by zero).

    Args:
        probs: B x (1 + C) x h x w probabilities, differentiable.
        seeds: B x h x w int64 cues: 0 background, c + 1 for class c, ``ignore_index`` none.

    Returns:
        A scalar.

    Example:
        >>> import torch
        >>> from python_models.losses import seed_loss
        >>> probs = torch.tensor([[[[0.5, 0.2]], [[0.5, 0.8]]]])
        >>> seed_loss(probs, torch.tensor([[[1, 255]]]))   # -log 0.5
        tensor(0.6931)
    """
    probs = check_probs(probs, "probs")
    seeds = check_label_map(seeds, "seeds", num_labels=probs.shape[1], ignore_index=ignore_index,
                            shape=(probs.shape[0], *probs.shape[2:]))
    cued = seeds != ignore_index
    picked = _log(probs).gather(1, seeds.masked_fill(~cued, 0).unsqueeze(1)).squeeze(1)
    per_image = (picked * cued).flatten(1).sum(1) / cued.flatten(1).sum(1).clamp(min=1)
    return -per_image.mean()


def expand_loss(probs: Tensor, labels: Tensor, fg_decay: float = 0.996, bg_decay: float = 0.999) -> Tensor:
    r"""SEC's expansion loss (``ExpandLossLayer``) with global weighted rank pooling.

    Three terms, each averaged over the batch and summed:
    present classes :math:`-\frac{1}{|P_b|}\sum_{c \in P_b} \log \mathrm{GWRP}_{d_{fg}}(f_c)`;
    absent classes :math:`-\frac{1}{|A_b|}\sum_{c \in A_b} \log(1 - \max_u f_{u,c})`;
    the background, always present, :math:`-\log \mathrm{GWRP}_{d_{bg}}(f_0)`.
    An image with no present (or no absent) class gets 0 for that term.

    Args:
        probs: B x (1 + C) x h x w probabilities, background first, differentiable.
        labels: B x C tags.
        fg_decay, bg_decay: the GWRP decays d_fg = 0.996, d_bg = 0.999 (pylayers.py ``q_fg``, ``q_bg``).

    Returns:
        A scalar.

    Example:
        >>> import torch
        >>> from python_models.losses import expand_loss
        >>> probs = torch.tensor([[[[0.5, 1.0]], [[0.5, 0.0]]]])   # 1 + 1 classes on 1 x 2 pixels
        >>> expand_loss(probs, torch.ones(1, 1), 0.0, 1.0)   # -log max f_1 - log mean f_0 = -2 log 0.5 - log 0.75
        tensor(0.9808)
    """
    probs = check_probs(probs, "probs")
    labels = check_tags(labels, probs.shape[0], probs.shape[1] - 1).to(probs.dtype)
    fg_decay = check_real(fg_decay, "fg_decay")
    bg_decay = check_real(bg_decay, "bg_decay")
    foreground = probs[:, 1:]
    present = -(labels * _log(gwrp(foreground, fg_decay))).sum(1) / labels.sum(1).clamp(min=1)
    absent_tags = 1 - labels
    peak = foreground.flatten(2).amax(2)
    absent = -(absent_tags * _log(1 - peak)).sum(1) / absent_tags.sum(1).clamp(min=1)
    background = -_log(gwrp(probs[:, :1], bg_decay)).squeeze(1)
    return present.mean() + absent.mean() + background.mean()


def map_image(images: Tensor, size: tuple[int, int]) -> Tensor:
    """Images B x 3 x H x W in [0, 1] (or uint8) downscaled to the probability
    map's ``size`` as SEC and DSRG do (``scipy.ndimage.zoom(order=1)``: bilinear
    with the corner pixels aligned), rounded to uint8 for ``wsss_ext.dense_crf``.

    Float images have their values checked after the resize: those are the
    pixels the CRF reads, and a 41 x 41 map costs a fraction of a 321 x 321 image."""
    if images.dtype == torch.uint8:
        if tuple(images.shape[-2:]) == tuple(size):
            return images
        images = images.float() / 255
    else:
        images = check_images(images, values=False).detach()
    if tuple(images.shape[-2:]) != tuple(size):
        images = F.interpolate(images.float(), size=tuple(size), mode="bilinear", align_corners=True)
    return to_uint8(check_images(images))


def _crf_target(probs: Tensor, images: Tensor, labels: Tensor | None, mask_absent: bool, min_prob: float,
                crf: Mapping[str, float], energy: Callable[[Tensor], Tensor]) -> Tensor:
    """Mean-field on ``energy(probs)`` (SEC: -log p, DSRG: -p), absent classes
    optionally barred, the output floored and renormalised, in ``probs``' dtype."""
    probs = check_probs(probs, "probs")
    if not (isinstance(images, Tensor) and images.dtype == torch.uint8):
        images = check_images(images, values=False)  # map_image checks the values it resizes to
    if images.shape[0] != probs.shape[0]:
        raise ValueError(f"images hold {images.shape[0]} images but probs {probs.shape[0]}")
    min_prob = check_real(min_prob, "min_prob")
    unary = energy(probs.detach().float())
    if mask_absent:
        if labels is None:
            raise ValueError("labels are needed when mask_absent=True")
        labels = check_tags(labels, unary.shape[0], unary.shape[1] - 1)
        present = torch.cat([torch.ones_like(labels[:, :1]), labels], 1).bool()
        unary = unary.masked_fill(~present[..., None, None], ABSENT_ENERGY)
    settings = {**SEC_CRF, **crf}
    q = wsss_ext.dense_crf(unary, map_image(images, unary.shape[-2:]), **settings)
    q = q.clamp_min(min_prob)
    return (q / q.sum(1, keepdim=True)).to(probs.dtype)


def crf_target(probs: Tensor, images: Tensor, labels: Tensor | None = None, *, mask_absent: bool = False,
               min_prob: float = MIN_PROB, **crf: float) -> Tensor:
    r"""SEC's CRF step (``CRFLayer``): :math:`Q = \mathrm{CRF}(\text{image}, f)`, a constant target.

    SEC feeds the CRF the fc8 scores, which ``CRF.py`` negates: energy = −logit.
    Here the energy is :math:`-\log p`; for ``p = softmax(logits)`` this is
    −logit plus a per-pixel constant, which mean-field ignores, so pass the plain
    softmax (not :func:`floored_softmax`) to get SEC's target exactly. The image
    is downscaled to the map's size (:func:`map_image`); SEC gives the CRF every
    class, tags or not (``mask_absent=False``); ``mask_absent=True`` bars the
    classes outside ``labels``. As in ``CRFLayer`` the result is floored at
    ``min_prob`` and renormalised.

    Args:
        probs: B x (1 + C) x h x w probabilities (any gradient is dropped).
        images: B x 3 x H x W float RGB in [0, 1] (or uint8), any size.
        labels: B x C tags; used only with ``mask_absent``.
        crf: ``wsss_ext.dense_crf`` keywords overriding :data:`SEC_CRF`
            (gaussian 3/12 w 3, bilateral 80/12, 13, w 10, 10 iterations).

    Returns:
        Q: B x (1 + C) x h x w, detached, in ``probs``' dtype.
    """
    return _crf_target(probs, images, labels, mask_absent, min_prob, crf, lambda p: -_log(p))


def constrain_loss(probs: Tensor, target: Tensor, min_prob: float = MIN_PROB,
                   ratio_clip: tuple[float, float] | None = None) -> Tensor:
    r"""SEC's constrain-to-boundary loss (``ConstrainLossLayer``):
    :math:`\frac{1}{B h w} \sum_{b,u} \sum_c Q_{uc} \log \frac{Q_{uc}}{f_{uc}}`,
    the KL divergence from the CRF output Q (a constant: no gradient reaches it)
    to the network's f, averaged over pixels.

    f is floored at ``min_prob`` (SEC's probabilities never go below it). SEC
    does not clip the ratio; DSRG's layer clips ``Q / f`` to [0.05, 20]
    (``ratio_clip=(0.05, 20)``, which stops the gradient outside).

    Args:
        probs: B x (1 + C) x h x w probabilities f, differentiable.
        target: Q, the same shape (e.g. :func:`crf_target`); detached here.

    Returns:
        A scalar, >= 0 when both sum to 1 per pixel, 0 where f = Q.

    Example:
        >>> import torch
        >>> from python_models.losses import constrain_loss
        >>> f = torch.tensor([0.5, 0.5]).view(1, 2, 1, 1)
        >>> constrain_loss(f, torch.tensor([1.0, 0.0]).view(1, 2, 1, 1))   # log 2
        tensor(0.6931)
    """
    probs = check_probs(probs, "probs")
    target = check_probs(target, "target")
    if target.shape != probs.shape:
        raise ValueError(f"target must have probs' shape {tuple(probs.shape)}, got {tuple(target.shape)}")
    min_prob = check_real(min_prob, "min_prob")
    q = target.detach().to(probs.dtype)
    f = probs.clamp_min(min_prob)
    if ratio_clip is None:
        terms = torch.xlogy(q, q) - q * torch.log(f)
    else:
        low, high = (check_real(v, "ratio_clip") for v in ratio_clip)
        terms = q * torch.log((q / f).clamp(low, high))
    return terms.sum(1).mean()
