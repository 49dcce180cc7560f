"""PAMR, pixel-adaptive mask refinement (Araslanov & Roth, "Single-Stage
Semantic Segmentation from Image Labels", CVPR 2020), the self-supervision of
single-stage WSSS and half of RecurSeed, fused.

With ``T`` the taps (the 8 neighbours ``d * {-1,0,1}^2 \\ (0,0)`` of every
dilation ``d``, indices clamped to the map)::

    std_c(i)  = unbiased std of image channel c over the 9 taps of every
                dilation at i (centre included once per dilation)
    logit_ik  = -mean_c |I_c(i) - I_c(i + t_k)| / (1e-8 + sigma * std_c(i))
    w_ik      = softmax_k(logit_ik)                 (over all taps jointly)
    repeat n_iters times:  M_i <- sum_k w_ik M_(i + t_k)

The published code materialises a ``B x C x taps x H x W`` tensor on every
iteration; here the weights (``B x taps x H x W``) are computed once and each
iteration is one gather pass between two ``B x C x H x W`` buffers (on the
CPU all iterations run in one call, through cache-resident scratch). The
iteration is linear in the mask, so its backward is the transposed gather
(exact, deterministic, no atomics). ``wsss_ext.reference.pamr_unfold`` is the
published method, for reading and testing.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from wsss_ext import _C
from wsss_ext.ops._checks import (
    check_allocation,
    check_ints,
    check_iterations,
    check_int,
    check_real,
    check_tensor,
    cuda_stream,
    fast_custom_op,
    host_max_abs,
    require_all,
    require_finite,
    runs_on_cuda,
    vmap_into_batch,
)

__all__ = ["pamr", "pamr_affinity", "resize_image_to_mask"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_DEFAULT_DILATIONS = (1, 2, 4, 8, 12, 24)
_MAX_DILATIONS = 64  # csrc/pamr/pamr.h kMaxDilations
_MAX_DILATION = 2**30


def _compute_dtype(tensor: Tensor) -> torch.dtype:
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------------------
# Custom ops on checked, contiguous inputs
# ---------------------------------------------------------------------------


@fast_custom_op("wsss_ext::pamr_affinity")
def _affinity(image: Tensor, dilations: list[int], sigma: float) -> Tensor:
    """Softmax weights [B, 8 * len(dilations), H, W] of image [B, Ci, H, W]."""
    batch, _, height, width = image.shape
    weights = torch.empty(
        (batch, 8 * len(dilations), height, width), dtype=_compute_dtype(image), device=image.device
    )
    _C.pamr_affinity(image, weights, dilations, sigma, cuda_stream(image))
    return weights


@_affinity.register_fake
def _(image, dilations, sigma):
    batch, _, height, width = image.shape
    return image.new_empty((batch, 8 * len(dilations), height, width), dtype=_compute_dtype(image))


@fast_custom_op("wsss_ext::pamr_propagate", differentiable=True)
def _propagate(weights: Tensor, mask: Tensor, dilations: list[int], n_iters: int, transpose: bool) -> Tensor:
    """n_iters steps of P (or of its transpose) on mask [B, C, H, W] of the weights' dtype."""
    if n_iters == 0:
        return mask.clone()
    stream = cuda_stream(mask)
    if not runs_on_cuda(mask):
        # The CPU backend runs every step in one call, its scratch in cache.
        out = torch.empty_like(mask)
        _C.pamr_propagate(weights, mask, out, dilations, transpose, stream, n_iters)
        return out
    # CUDA: one launch per step, two buffers used in turn; the input mask is never written.
    buffers = [torch.empty_like(mask) for _ in range(min(n_iters, 2))]
    current = mask
    for step in range(n_iters):
        out = buffers[step % 2]
        _C.pamr_propagate(weights, current, out, dilations, transpose, stream)
        current = out
    return current


@_propagate.register_fake
def _(weights, mask, dilations, n_iters, transpose):
    return torch.empty_like(mask)


def _propagate_setup_context(ctx, inputs, output):
    weights, _, dilations, n_iters, transpose = inputs
    ctx.save_for_backward(weights)
    ctx.dilations, ctx.n_iters, ctx.transpose = dilations, n_iters, transpose


def _propagate_backward(ctx, grad):
    # (P^n)^T = (P^T)^n; it is a _propagate call itself, so double backward works.
    (weights,) = ctx.saved_tensors
    grad_mask = _propagate(weights, grad.contiguous(), ctx.dilations, ctx.n_iters, not ctx.transpose)
    return None, grad_mask, None, None, None


torch.library.register_autograd(
    "wsss_ext::pamr_propagate", _propagate_backward, setup_context=_propagate_setup_context
)
# vmap: the mapped dimension joins the batch (B x ...) of every input and output.
vmap_into_batch(_affinity)
vmap_into_batch(_propagate)


# ---------------------------------------------------------------------------
# The public functions
# ---------------------------------------------------------------------------


def _check_dilations(dilations: object) -> list[int]:
    if isinstance(dilations, (numbers.Integral, str, bytes)) or not isinstance(dilations, Sequence):
        raise TypeError(f"dilations must be a sequence of ints, got {type(dilations).__name__}")
    values = [check_int(d, "dilations[]") for d in dilations]
    if not values:
        raise ValueError("dilations must not be empty")
    if len(values) > _MAX_DILATIONS:
        raise ValueError(f"at most {_MAX_DILATIONS} dilations are supported, got {len(values)}")
    for d in values:
        if not 1 <= d <= _MAX_DILATION:
            raise ValueError(f"dilations must be positive (and at most 2**30), got {d}")
    return values


def _check_image(image: object) -> Tensor:
    image = check_tensor(image, "image", dtypes=_FLOAT_DTYPES)
    if image.dim() != 4:
        raise ValueError(f"image must be 4-D (B x Ci x H x W), or 3-D for one image; got shape {tuple(image.shape)}")
    if image.shape[1] == 0:
        raise ValueError(f"image must have at least one channel, got shape {tuple(image.shape)}")
    # The kernel takes differences of image values: they must not overflow the compute dtype.
    limit = torch.finfo(_compute_dtype(image)).max / 2
    message = lambda: (f"image values must be within +-{limit:.3g} (their differences must fit "  # noqa: E731
                       f"{_compute_dtype(image)}); got max |image| = {float(image.abs().amax()):.3g}")
    # Both checks in one C++ pass on eager CPU input (torch's abs and amax
    # here were two parallel regions of their own, which wait at their
    # barriers beside a busy process); torch ops elsewhere.
    maximum = host_max_abs(image)
    if maximum is not None:
        if not math.isfinite(maximum):
            raise ValueError("image contains NaN or inf")
        if maximum > limit:
            raise ValueError(message())
        return image
    require_finite(image, "image contains NaN or inf")
    if image.numel():
        require_all(image, lambda i: i.abs().amax() <= limit, message)
    return image


def pamr_affinity(image: Tensor, dilations: Sequence[int] = _DEFAULT_DILATIONS, sigma: float = 0.1) -> Tensor:
    """PAMR's local affinities: the weights each pixel gives its neighbours.

    Args:
        image: B x Ci x H x W (or Ci x H x W) float image, any number of
            channels, any per-channel affine scaling.
        dilations: neighbour distances; each contributes its 8 neighbours.
        sigma: the std multiplier (0.1 in the paper).

    Returns:
        B x (8 * len(dilations)) x H x W weights, each pixel's summing to 1
        (float32; float64 for float64 images). Tap ``8 * j + n`` is neighbour
        ``n`` (row-major over the 3 x 3 cells, centre skipped) at dilation
        ``dilations[j]``.

    Example:
        >>> import torch, wsss_ext
        >>> w = wsss_ext.pamr_affinity(torch.rand(2, 3, 20, 30), dilations=(1, 2))
        >>> w.shape, bool(torch.allclose(w.sum(1), torch.ones(2, 20, 30)))
        (torch.Size([2, 16, 20, 30]), True)
    """
    dilations = _check_dilations(dilations)
    sigma = check_real(sigma, "sigma", positive=True)
    batched = isinstance(image, Tensor) and image.dim() == 4
    if isinstance(image, Tensor) and image.dim() == 3:
        image = image.unsqueeze(0)
    image = _check_image(image)
    weights = _affinity(image.detach().contiguous(), dilations, sigma)
    return weights if batched else weights[0]


def pamr(
    image: Tensor,
    mask: Tensor,
    dilations: Sequence[int] = _DEFAULT_DILATIONS,
    n_iters: int = 10,
    sigma: float = 0.1,
) -> Tensor:
    r"""Refine class masks with local image affinities (PAMR).

    Each of ``n_iters`` steps replaces a pixel's mask values by the weighted
    mean of its neighbours' (8 per dilation), the weights coming from image
    similarity relative to the local image contrast (see the module docstring
    for the formulas). It equals 1-stage-wseg's ``PAMR(num_iter, dilations)``
    with ``0.1`` exposed as ``sigma``; RecurSeed's constructor defaults are
    ``n_iters=1, dilations=(1,)``, the paper's are the ones below.

    Computed in float32 whatever the input dtype (float64 for float64 masks):
    float16 inputs give no NaN on flat patches, where the reference's 1e-8
    underflows.

    Args:
        image: B x Ci x H x W float image at the mask's resolution (resize it
            with :func:`resize_image_to_mask`). Any number of channels; the
            result does not change under a per-channel affine map of the
            image. Not differentiated.
        mask: B x C x H x W float masks (usually class probabilities).
            Differentiable: the refinement is linear in the mask.
        dilations: neighbour distances; maps smaller than a dilation are fine
            (indices are clamped, as replicate padding does).
        n_iters: propagation steps; ``0`` returns the mask unchanged.
        sigma: the std multiplier (0.1 in the paper).

    Returns:
        B x C x H x W refined masks, in the mask's dtype. Masks summing to 1
        over C keep summing to 1.

    Shape:
        3-D ``image`` and ``mask`` are one image and give a 3-D result.

    Example:
        >>> import torch, wsss_ext
        >>> image = torch.rand(2, 3, 81, 81)
        >>> mask = torch.softmax(torch.randn(2, 21, 81, 81), dim=1).requires_grad_()
        >>> refined = wsss_ext.pamr(image, mask)
        >>> refined.shape, bool(torch.allclose(refined.sum(1), torch.ones(2, 81, 81), atol=1e-5))
        (torch.Size([2, 21, 81, 81]), True)
        >>> refined[:, 1].sum().backward()   # differentiable in the mask
    """
    dilations = _check_dilations(dilations)
    n_iters = check_iterations(n_iters, "n_iters")
    sigma = check_real(sigma, "sigma", positive=True)
    mask = check_tensor(mask, "mask", dtypes=_FLOAT_DTYPES)
    if not isinstance(image, Tensor):
        check_tensor(image, "image")
    if mask.dim() not in (3, 4) or image.dim() != mask.dim():
        raise ValueError(
            "image and mask must both be 4-D (B x Ci x H x W and B x C x H x W) or both 3-D; "
            f"got image {tuple(image.shape)} and mask {tuple(mask.shape)}"
        )
    batched = mask.dim() == 4
    if not batched:
        image, mask = image.unsqueeze(0), mask.unsqueeze(0)
    image = _check_image(image)
    if image.device != mask.device:
        raise ValueError(f"image is on {image.device} but mask is on {mask.device}")
    if image.shape[0] != mask.shape[0] or image.shape[2:] != mask.shape[2:]:
        raise ValueError(
            f"image {tuple(image.shape)} and mask {tuple(mask.shape)} must have the same batch size and H x W; "
            "resize the image with wsss_ext.resize_image_to_mask"
        )
    require_finite(mask, "mask contains NaN or inf")

    dtype = _compute_dtype(mask)
    if mask.numel() == 0 or n_iters == 0:
        refined = mask.clone()
    else:
        weights = _affinity(image.detach().to(dtype).contiguous(), dilations, sigma)
        refined = _propagate(weights, mask.to(dtype).contiguous(), dilations, n_iters, False).to(mask.dtype)
    return refined if batched else refined[0]


def resize_image_to_mask(image: Tensor, mask_or_size: Tensor | tuple[int, int]) -> Tensor:
    """Resize ``image`` (B x Ci x H x W, or Ci x H x W) to a mask's H x W the way
    1-stage-wseg feeds PAMR: bilinear, ``align_corners=True``, in float32
    (float64 kept). ``mask_or_size`` is the mask or its ``(H, W)``."""
    image = check_tensor(image, "image", dtypes=_FLOAT_DTYPES + (torch.uint8,))
    if image.dim() not in (3, 4):
        raise ValueError(f"image must be 3-D or 4-D, got shape {tuple(image.shape)}")
    if isinstance(mask_or_size, Tensor):
        size = tuple(mask_or_size.shape[-2:])
    else:
        size = check_ints(mask_or_size, "mask_or_size", length=2, minimum=1)
        check_allocation((*image.shape[:-2], *size), image.dtype, image.device, "mask_or_size")
    batched = image.dim() == 4
    image = image if batched else image.unsqueeze(0)
    image = image.to(_compute_dtype(image))
    resized = F.interpolate(image, size=size, mode="bilinear", align_corners=True)
    return resized if batched else resized[0]
