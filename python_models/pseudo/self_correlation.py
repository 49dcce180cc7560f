"""SCG, self-correlation map generation (Wei et al., "Shallow Feature Matters
for Weakly Supervised Object Localization", CVPR 2021 (SPOL)), as RecurSeed
uses it to lower the false negatives of a map (shjo-april/RecurSeed_and_EdgePredictMix
``core/inferences.py``, class ``SCG``; thresholds from ``infer_rsepm.py``).

For each feature stage, with ``f_i`` the L2-normalised feature of pixel i
(N = h * w pixels) and every "column normalisation" ``X[:, j] / (sum_i X[i, j] + eps)``::

    SC   = relu(f_i . f_j), zeroed where < first_threshold (0.5)
    SC1  = column-normalised SC                                (first order)
    S    = column-normalised SC with a zero diagonal
    SC2  = column-normalised S @ S, zeroed where < second_threshold / N  (second order)
    HSC  = sum over stages of column-normalised max(SC1, SC2)

and for each map c (a CAM or a decoder output in [0, 1])::

    colnorm[:, j] = min-max of HSC[:, j]                     (over i)
    fg_c  = min-max over i of  sum_{j: cam_c(j) >= fg_threshold} colnorm[:, j]   (0 if no such j)
    bg_c  = min-max over i of  sum_{j: cam_c(j) <= bg_threshold} colnorm[:, j]   (0 if no such j)
    SCM_c = min-max of relu(fg_c - bg_c)

Every min-max is ``(x - min) / (max - min + eps)`` with eps 1e-10, so the
result is in [0, 1] and exactly 0 for a map without a foreground seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from python_models._checks import check_maps, check_real

__all__ = ["SCG_EPS", "scg", "self_correlation"]

SCG_EPS = 1e-10


def _column_normalize(x: Tensor, eps: float = SCG_EPS) -> Tensor:
    return x / (x.sum(1, keepdim=True) + eps)


def _minmax(x: Tensor, dim: int | tuple[int, ...], eps: float = SCG_EPS) -> Tensor:
    low = x.amin(dim, keepdim=True)
    return (x - low) / (x.amax(dim, keepdim=True) - low + eps)


def self_correlation(features: Tensor, first_threshold: float = 0.5, second_threshold: float = 0.1) -> Tensor:
    """One stage's high-order self-correlation ``max(SC1, SC2)``, column-normalised.

    Args:
        features: B x K x h x w.
        first_threshold: first-order cosine similarities below it are zeroed (0.5).
        second_threshold: second-order values below ``second_threshold / (h * w)`` are zeroed (0.1).

    Returns:
        B x N x N (N = h * w): entry ``[b, i, j]`` is pixel i's correlation with
        pixel j; every column sums to 1 (or is zero).
    """
    features = check_maps(features, "features")
    first_threshold = check_real(first_threshold, "first_threshold")
    second_threshold = check_real(second_threshold, "second_threshold")
    n = features.shape[2] * features.shape[3]
    f = features.flatten(2).transpose(1, 2)  # B x N x K
    f = f / (f.norm(dim=2, keepdim=True) + SCG_EPS)
    sc = F.relu(f @ f.transpose(1, 2))
    if first_threshold > 0:
        sc = sc.masked_fill(sc < first_threshold, 0.0)
    sc1 = _column_normalize(sc)
    eye = torch.eye(n, dtype=torch.bool, device=sc.device)
    s = _column_normalize(sc.masked_fill(eye, 0.0))
    sc2 = _column_normalize(s @ s)
    if second_threshold > 0:
        sc2 = sc2.masked_fill(sc2 < second_threshold / n, 0.0)
    return _column_normalize(torch.maximum(sc1, sc2))


def scg(features: Tensor | Sequence[Tensor], cams: Tensor, first_threshold: float = 0.5,
        second_threshold: float = 0.1, fg_threshold: float = 0.30, bg_threshold: float = 0.05) -> Tensor:
    """Self-correlation maps (SCM) of ``cams`` from the features' self-correlation.

    Args:
        features: one B x K x h' x w' tensor or a sequence of them (the stages,
            summed after :func:`self_correlation`); each is resized (bilinear,
            ``align_corners=False``) to the cams' h x w when it differs.
        cams: B x C x h x w maps in [0, 1] (zero for classes not in the image).
        first_threshold, second_threshold: see :func:`self_correlation` (0.5, 0.1).
        fg_threshold: pixels with ``cams >= fg_threshold`` are the class's seed (0.30).
        bg_threshold: pixels with ``cams <= bg_threshold`` are its background (0.05).

    Returns:
        B x C x h x w in [0, 1]; exactly 0 for a class whose map reaches no
        ``fg_threshold``. No gradient is meant to flow (call it under ``no_grad``).

    Example:
        >>> import torch
        >>> features = torch.zeros(1, 2, 4, 4); features[:, 0, :, :2] = 1; features[:, 1, :, 2:] = 1
        >>> cams = torch.zeros(1, 2, 4, 4); cams[0, 0, 0, 0] = 1.0   # one seed pixel; class 1 none
        >>> out = scg(features, cams)   # the seed's half grows, the other half and class 1 stay 0
        >>> round(out[0, 0, :, :2].min().item(), 4), out[0, 0, :, 2:].max().item(), out[0, 1].abs().max().item()
        (0.75, 0.0, 0.0)
    """
    cams = check_maps(cams, "cams")
    if not torch.isfinite(cams).all():
        raise ValueError("cams has NaN or infinite values")
    stages = [features] if isinstance(features, Tensor) else list(features)
    if not stages:
        raise ValueError("features must be a tensor or a non-empty sequence of tensors")
    fg_threshold = check_real(fg_threshold, "fg_threshold")
    bg_threshold = check_real(bg_threshold, "bg_threshold")
    batch, classes, height, width = cams.shape
    dtype = torch.float64 if cams.dtype == torch.float64 else torch.float32
    hsc = None
    for index, stage in enumerate(stages):
        stage = check_maps(stage, f"features[{index}]")
        if stage.shape[0] != batch:
            raise ValueError(f"features[{index}] has batch {stage.shape[0]}, cams has {batch}")
        stage = stage.detach().to(dtype)
        if tuple(stage.shape[-2:]) != (height, width):
            stage = F.interpolate(stage, size=(height, width), mode="bilinear", align_corners=False)
        term = self_correlation(stage, first_threshold, second_threshold)
        hsc = term if hsc is None else hsc + term
    colnorm = _minmax(hsc, 1)  # B x N x N, each column j min-max over i
    flat = cams.detach().to(dtype).flatten(2).transpose(1, 2)  # B x N x C
    fg_seed, bg_seed = (flat >= fg_threshold).to(dtype), (flat <= bg_threshold).to(dtype)
    # sum over the seed columns j, then min-max over i; zero where a class has no seed pixel
    fg = _minmax(colnorm @ fg_seed, 1) * (fg_seed.sum(1, keepdim=True) > 0)
    bg = _minmax(colnorm @ bg_seed, 1) * (bg_seed.sum(1, keepdim=True) > 0)
    scm = _minmax(F.relu(fg - bg), 1)
    return scm.transpose(1, 2).reshape(batch, classes, height, width).to(cams.dtype)
