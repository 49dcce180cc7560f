"""Losses of the self-supervised video correspondence methods.

- :func:`lab_reconstruction_loss`: MAST's photometric loss, smooth-L1 of
  ``20 * out`` against ``20 * target`` after a bilinear upsampling of the
  stride-4 output (MAST ``main.py compute_lphoto``).
- :func:`colour_cross_entropy`: the negative log-likelihood of quantised
  colours under a propagated distribution, ``-log(p + 1e-8)`` after the
  same upsampling (CorrFlow ``main.py cross_entropy``; Vondrick et al.'s CE).
- :func:`scheduled_sampling_threshold`: CorrFlow's probability of using the
  true colours of a reference, 0.9 -> 0.6 over training.
- :func:`mast_clip_loss`: MAST's whole training loss of an RGB clip (Lab,
  channel dropout, the memory read-out, the photometric loss), shared by
  MAST and SS-VOS.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from python_models._checks import check_maps
from python_models.augment.colour import (
    MAST_DROPOUT,
    channel_dropout,
    normalize_lab,
    rgb_to_lab,
)
from python_models.heads.correspondence import (
    MAST_LONG_TERM_GAP,
    MAST_SEARCH_RADIUS,
    long_term_dilation,
    reconstruct_dropped,
)
from wsss_ext.ops._checks import require_all, require_finite

__all__ = [
    "CORRFLOW_EPS",
    "MAST_LOSS_SCALE",
    "colour_cross_entropy",
    "lab_reconstruction_loss",
    "mast_clip_loss",
    "scheduled_sampling_threshold",
]

MAST_LOSS_SCALE = 20.0  # compute_lphoto: F.smooth_l1_loss(outputs * 20, tar_y * 20)
CORRFLOW_EPS = 1e-8     # cross_entropy: F.nll_loss(torch.log(input + 1e-8), target)


def _upsample(x: Tensor, size: tuple[int, int]) -> Tensor:
    return x if tuple(x.shape[-2:]) == tuple(size) else F.interpolate(x, size=size, mode="bilinear",
                                                                       align_corners=False)


def lab_reconstruction_loss(pred: Tensor, target: Tensor, scale: float = MAST_LOSS_SCALE) -> Tensor:
    """MAST's reconstruction loss: ``smooth_l1(scale * up(pred), scale * target)``, mean over all entries.

    Args:
        pred: B x C x h x w reconstructed (normalised Lab) channels, at any resolution.
        target: B x C x H x W the true channels; ``pred`` is upsampled
            bilinearly to H x W first.
        scale: 20 in MAST (the smooth-L1 kink sits at 1/20 in Lab units).

    Returns:
        A scalar.
    """
    pred, target = check_maps(pred, "pred"), check_maps(target, "target")
    if pred.shape[:2] != target.shape[:2]:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must share B and C")
    require_finite(pred, "pred has NaN or infinite values")
    require_finite(target, "target has NaN or infinite values")
    return F.smooth_l1_loss(scale * _upsample(pred, target.shape[-2:]), scale * target)


def colour_cross_entropy(probs: Tensor, target: Tensor, eps: float = CORRFLOW_EPS) -> Tensor:
    """``mean -log(up(probs)[target] + eps)``: the cross-entropy of quantised
    colour labels under propagated class distributions.

    Args:
        probs: B x K x h x w distributions over K colours (a pointer's output: each
            pixel a convex combination of one-hot references), any resolution.
        target: B x H x W int64 colour indices in [0, K); ``probs`` is upsampled
            bilinearly to H x W first.
        eps: CorrFlow's 1e-8 inside the log.

    Returns:
        A scalar.
    """
    probs = check_maps(probs, "probs")
    if not hasattr(target, "dtype") or target.dtype.is_floating_point or target.dtype == torch.bool:
        raise TypeError(f"target must be an integer B x H x W colour-index map, got {getattr(target, 'dtype', type(target).__name__)}")
    if target.dim() != 3 or target.shape[0] != probs.shape[0]:
        raise ValueError(f"target must be B x H x W with probs' B = {probs.shape[0]}, got shape {tuple(target.shape)}")
    require_finite(probs, "probs has NaN or infinite values")
    k = probs.shape[1]
    require_all(target, lambda t: (t >= 0) & (t < k), f"target must hold colour indices in [0, {k})")
    up = _upsample(probs, target.shape[-2:])
    return F.nll_loss((up + eps).log(), target.long())


def scheduled_sampling_threshold(step: int, max_steps: int, start: float = 0.9, end: float = 0.6) -> float:
    """CorrFlow's probability of feeding the *true* reference colours (not the
    model's own previous prediction) at ``step`` of ``max_steps``: linear
    from ``start`` 0.9 to ``end`` 0.6 (``main.py compute_ls``:
    ``eps_s - (eps_s - eps_e) * current_batch / total_batch``); ``start``
    while ``max_steps`` is unknown (0)."""
    if max_steps <= 0:
        return float(start)
    fraction = min(max(step / max_steps, 0.0), 1.0)
    return float(start - (start - end) * fraction)


def mast_clip_loss(encoder: torch.nn.Module, frames: Tensor, dropped: Sequence[int] | None = None, *,
                   references: Sequence[int] = (0, 2), target: int = 4, radius: int = 6, temperature: float = 1.0,
                   border: str = "zero", long_term_gap: int = MAST_LONG_TERM_GAP,
                   search_radius: int = MAST_SEARCH_RADIUS, scale: float = MAST_LOSS_SCALE) -> Tensor:
    """MAST's training loss of RGB clips ``frames`` B x T x 3 x H x W in [0, 1]
    (the video frames ``references``, then ``target``): normalised Lab, the
    ``dropped`` channels hidden (drawn by MAST's dropout rule when None), the
    target's reconstructed from the references through ``encoder``'s
    features (:func:`python_models.heads.correspondence.reconstruct_dropped`,
    references further back than ``long_term_gap`` frames through the coarse
    search), and :func:`lab_reconstruction_loss` of it. A scalar."""
    lab = normalize_lab(rgb_to_lab(frames))
    if dropped is None:
        _, dropped = channel_dropout(lab[:1, :1], **MAST_DROPOUT)
    dropped = tuple(int(channel) for channel in dropped)
    if not dropped or any(c not in (0, 1, 2) for c in dropped) or len(set(dropped)) != len(dropped):
        raise ValueError(f"dropped_channels must be distinct Lab channels in (0, 1, 2), got {dropped}")
    dilations = [long_term_dilation(int(target) - int(r), int(long_term_gap)) for r in references]
    out, truth = reconstruct_dropped(encoder, lab, dropped, int(radius), dilations, float(temperature), border,
                                     int(search_radius))
    return lab_reconstruction_loss(out, truth, float(scale))
