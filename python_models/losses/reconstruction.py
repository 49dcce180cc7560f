"""Masked image modelling losses: MAE's (He et al. 2022) mean squared error
on the masked patches, optionally against per-patch normalised pixels, and
SimMIM's (Xie et al. 2022) L1 on the masked pixels.

Both are ``masked_reconstruction(pred, target, mask)``: a per-position
distance (averaged over the feature / channel axis) weighted by the mask,
summed and divided by the mask's sum. Predictions at visible positions
(mask 0) have no effect on the value, nor a gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

from python_models._checks import check_float, check_int, check_real

__all__ = ["MAE_NORM_EPS", "SIMMIM_EPS", "masked_reconstruction", "normalized_patch_target", "patchify",
           "unpatchify"]

MAE_NORM_EPS = 1e-6  # facebookresearch/mae models_mae.py forward_loss: (var + 1.e-6) ** .5
SIMMIM_EPS = 1e-5  # microsoft/SimMIM models/simmim.py: / (mask.sum() + 1e-5) / in_chans

_DISTANCES = ("mse", "l1")


def _non_negative(value: object, name: str) -> float:
    value = check_real(value, name)
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """Cut B x C x H x W images into B x N x (p * p * C) patch rows, N = (H / p)(W / p)
    in raster order, each row ordered (row in patch, column in patch, channel)
    as MAE's ``patchify`` (``nchpwq -> nhwpqc``).

    >>> patchify(torch.arange(16.).view(1, 1, 4, 4), 2)[0, 1]
    tensor([2., 3., 6., 7.])
    """
    images = check_float(images, "images")
    p = check_int(patch_size, "patch_size", minimum=1)
    if images.dim() != 4:
        raise ValueError(f"images must be B x C x H x W, got shape {tuple(images.shape)}")
    b, c, h, w = images.shape
    if h % p or w % p:
        raise ValueError(f"images of size {h} x {w} are not divisible by patch_size {p}")
    x = images.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: Tensor, patch_size: int, size: tuple[int, int], channels: int = 3) -> Tensor:
    """The inverse of :func:`patchify`: B x N x (p * p * C) rows to B x C x H x W, ``size`` = (H, W)."""
    patches = check_float(patches, "patches")
    p = check_int(patch_size, "patch_size", minimum=1)
    h, w = (int(s) for s in size)
    if patches.dim() != 3 or h % p or w % p or patches.shape[1] != (h // p) * (w // p) \
            or patches.shape[2] != p * p * channels:
        raise ValueError(f"patches must be B x {(h // p) * (w // p)} x {p * p * channels} for size {size} and "
                         f"patch_size {p}, got shape {tuple(patches.shape)}")
    b = patches.shape[0]
    x = patches.reshape(b, h // p, w // p, p, p, channels).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, channels, h, w)


def normalized_patch_target(patches: Tensor, eps: float = MAE_NORM_EPS) -> Tensor:
    """MAE's ``norm_pix_loss`` target: each patch row (x - mean) / sqrt(var + eps),
    mean and variance over the row's p * p * C values; the variance is the
    unbiased one (``Tensor.var``'s default, as in ``models_mae.py``).

    Shape: B x N x D -> B x N x D.
    """
    patches = check_float(patches, "patches")
    if patches.dim() != 3 or patches.shape[-1] < 2:
        raise ValueError(f"patches must be B x N x D with D >= 2, got shape {tuple(patches.shape)}")
    eps = _non_negative(eps, "eps")
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + eps).sqrt()


def masked_reconstruction(pred: Tensor, target: Tensor, mask: Tensor, *, distance: str = "mse",
                          eps: float = 0.0, normalize_target: bool = False) -> Tensor:
    """Reconstruction error on the masked positions only.

    ``loss = sum(d * mask) / (sum(mask) + eps)`` where d is, per position, the
    mean over the feature axis of the squared (``distance="mse"``) or
    absolute (``"l1"``) error. Two layouts:

    - tokens (MAE): ``pred``, ``target`` B x N x D, ``mask`` B x N (1 = masked,
      0 = visible): MAE's ``forward_loss`` with ``eps=0``;
    - pixel maps (SimMIM): ``pred``, ``target`` B x C x H x W, ``mask`` B x H x W:
      with ``distance="l1", eps=SIMMIM_EPS`` it is SimMIM's
      ``(l1 * mask).sum() / (mask.sum() + 1e-5) / C``.

    ``normalize_target`` (tokens only) replaces the target by
    :func:`normalized_patch_target` (MAE's ``norm_pix_loss``). The target gets
    no gradient from this loss only if the caller detaches it (MAE's pixels
    need none). ``mask`` may be bool or float in [0, 1].

    Raises:
        TypeError: non-float ``pred`` / ``target``, a complex or non-tensor ``mask``.
        ValueError: mismatched shapes, NaN, a mask outside [0, 1], an
            unknown ``distance``, or (with ``eps=0``) a mask that selects nothing.

    >>> pred, target = torch.zeros(1, 2, 3), torch.ones(1, 2, 3)
    >>> pred[0, 0] = 1.0  # perfect on patch 0, which is visible: no effect
    >>> float(masked_reconstruction(pred, target, torch.tensor([[0.0, 1.0]])))
    1.0
    """
    pred, target = check_float(pred, "pred"), check_float(target, "target")
    if distance not in _DISTANCES:
        raise ValueError(f"distance must be one of {_DISTANCES}, got {distance!r}")
    eps = _non_negative(eps, "eps")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    if pred.dim() not in (3, 4) or pred.numel() == 0:
        raise ValueError(f"pred must be B x N x D (tokens) or B x C x H x W (pixels), got shape {tuple(pred.shape)}")
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    if mask.is_complex():
        raise TypeError(f"mask must be bool, integer or float, got {mask.dtype}")
    expected = pred.shape[:2] if pred.dim() == 3 else (pred.shape[0], *pred.shape[2:])
    if tuple(mask.shape) != tuple(expected):
        raise ValueError(f"mask must be {' x '.join(map(str, expected))} for pred of shape {tuple(pred.shape)}, "
                         f"got shape {tuple(mask.shape)}")
    for value, name in ((pred, "pred"), (target, "target")):
        if not torch.isfinite(value).all():
            raise ValueError(f"{name} has NaN or infinite values")
    weights = mask.to(pred.dtype)
    if not torch.isfinite(weights).all() or weights.min() < 0 or weights.max() > 1:
        raise ValueError("mask must hold values in [0, 1] (1 = masked)")
    if eps == 0 and not bool(weights.sum() > 0):
        raise ValueError("mask selects no position (all visible): the loss would be 0 / 0")
    if normalize_target:
        if pred.dim() != 3:
            raise ValueError("normalize_target needs the token layout (pred B x N x D with patch rows)")
        target = normalized_patch_target(target)
    error = pred - target
    error = error.square() if distance == "mse" else error.abs()
    per_position = error.mean(dim=-1 if pred.dim() == 3 else 1)
    return (per_position * weights).sum() / (weights.sum() + eps)
