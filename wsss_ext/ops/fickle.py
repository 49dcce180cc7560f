"""FickleNet's random selection of hidden units (Lee et al., "FickleNet:
Weakly and Semi-supervised Semantic Image Segmentation using Stochastic
Inference", CVPR 2019), without the expanded feature map.

The paper expands x [B, C, H, W] to [B, C, kH, kW] so that the k x k window of
every position is its own block, drops units of the expanded map (the window
centres never), and applies its k x k classifier conv with stride k. Unit
(c, i, j, u, v) of the expanded map is ``x[c, i + u - k//2, j + v - k//2]``
(zero outside the map). Here the same masked conv is a sum over the k^2 taps
of a 1 x 1 conv (a matmul) of the masked, shifted input, a group of taps at
a time (one matmul over all k^2 taps when their units fit 32 MiB), so the
largest temporaries are one group's units (32 MiB, or one tap's where that
is more: one input-sized map per selection) and the keep decisions, one bit
per tap (an int32 per unit). The decisions come from a counter-based generator
(Philox4x32-10) keyed by (seed, row, channel, position, tap), so CPU and CUDA
draw the same ones, the faithful expanded op uses the same ones, and
``n_samples`` stochastic selections share one input.

Choices the paper leaves open, as decided here:

- The mask is per hidden unit: per channel, position and tap.
- Kept units are not rescaled by default (``rescale=False``): the selection is
  used at inference too, so no train/test scale needs matching, and the
  classifier sees the features' own scale. ``rescale=True`` multiplies the
  kept non-centre units by 1 / (1 - p), making each unit's expectation its value.
- Stochastic Grad-CAM aggregation: each map is divided by its maximum; a pixel
  belongs to a class of the image if any of the N maps of that class exceeds
  ``threshold``; among several such classes it takes the one with the highest
  mean (normalised) map; a pixel with none is ``ignore_index``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from wsss_ext import _C
from wsss_ext.ops._checks import (
    check_allocation,
    check_iterations,
    check_int,
    check_real,
    check_tensor,
    cuda_stream,
    fast_custom_op,
    refuse_under_compile,
    require_finite,
    torch_threads_capped,
    vmap_unsupported,
)

__all__ = ["expanded_dropout", "fickle_conv2d", "fickle_gradcam"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_MAX_SEED = 2**63


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _check_seed(seed: object) -> int:
    if seed is None:
        refuse_under_compile("a FickleNet op with seed=None (a seed drawn from torch's generator)",
                             "pass seed= explicitly (a Python int, e.g. one drawn per step outside the compiled region)")
        # Drawn from torch's default generator, so torch.manual_seed makes runs repeat.
        return int(torch.randint(0, _MAX_SEED - 1, (1,), dtype=torch.int64).item())
    seed = check_int(seed, "seed", minimum=0)
    if seed >= _MAX_SEED:
        raise ValueError(f"seed must be < 2**63, got {seed}")
    return seed


def _check_p(p: object) -> float:
    p = check_real(p, "p")
    if not 0 <= p < 1:
        raise ValueError(f"p must be in [0, 1), got {p}")
    return p


def _check_kernel_size(kernel_size: object) -> int:
    kernel_size = check_int(kernel_size, "kernel_size", minimum=1)
    if kernel_size % 2 == 0 or kernel_size > 5:
        raise ValueError(f"kernel_size must be odd (the window needs a centre) and at most 5, got {kernel_size}")
    return kernel_size


def _check_features(x: object) -> Tensor:
    x = check_tensor(x, "x", ndim=4, layout="B x C x H x W", dtypes=_FLOAT_DTYPES)
    require_finite(x, "x contains NaN or inf")
    return x


def _keep_scale(p: float, rescale: bool) -> float:
    return 1.0 / (1.0 - p) if rescale else 1.0


def _drop_threshold(p: float) -> int:
    """Drawn 24-bit values below it drop a unit: probability p (to 2^-24)."""
    return math.ceil(p * 2**24)


# ---------------------------------------------------------------------------
# Custom ops on checked, contiguous inputs of the compute dtype
# ---------------------------------------------------------------------------


@fast_custom_op("wsss_ext::fickle_mask_bits")
def _mask_bits(x: Tensor, seed: int, kernel_size: int, drop_threshold: int, rows: int, first_row: int) -> Tensor:
    """[rows, C, H, W] int32 keep bits (bit t: tap t kept) of selection rows first_row ..."""
    bits = torch.empty((rows, *x.shape[1:]), dtype=torch.int32, device=x.device)
    _C.fickle_mask_bits(bits, seed, kernel_size, drop_threshold, first_row, cuda_stream(x))
    return bits


@_mask_bits.register_fake
def _(x, seed, kernel_size, drop_threshold, rows, first_row):
    return x.new_empty((rows, *x.shape[1:]), dtype=torch.int32)


@fast_custom_op("wsss_ext::fickle_mask_counts")
def _mask_counts(bits: Tensor, kernel_size: int, keep_scale: float, dtype: torch.dtype) -> Tensor:
    """[R, C, k*k]: per row, channel and tap, the (scaled) count of kept units whose tap lies inside the map."""
    rows = torch.empty((bits.shape[0], bits.shape[1], kernel_size * kernel_size), dtype=dtype, device=bits.device)
    _C.fickle_mask_counts(bits, rows, kernel_size, keep_scale, cuda_stream(bits))
    return rows


@_mask_counts.register_fake
def _(bits, kernel_size, keep_scale, dtype):
    return bits.new_empty((bits.shape[0], bits.shape[1], kernel_size * kernel_size), dtype=dtype)


# The units of several taps are built at once, up to this many bytes (at
# least one tap's): small calls take one kernel call and one matmul instead
# of k^2 of each, large ones keep the temporary near one input-sized map.
_UNITS_BUDGET_BYTES = 32 * 2**20


def _tap_groups(kernel_size: int, bits: Tensor, x: Tensor) -> list[tuple[int, int]]:
    """(first tap, tap count) of each group of taps whose units fit the budget."""
    taps = kernel_size * kernel_size
    per_tap = bits.numel() * x.element_size()
    size = max(1, min(taps, _UNITS_BUDGET_BYTES // max(per_tap, 1)))
    return [(first, min(size, taps - first)) for first in range(0, taps, size)]


def _tap_units(x: Tensor, bits: Tensor, kernel_size: int, keep_scale: float, first: int, count: int) -> Tensor:
    """[R, C n, H, W]: the kept units of taps first .. first + n - 1 (channel c n + k: tap first + k)."""
    units = x.new_empty((bits.shape[0], bits.shape[1] * count, *bits.shape[2:]))
    _C.fickle_masked_tap(x, units, bits, kernel_size, keep_scale, first, False, cuda_stream(x), count)
    return units


@fast_custom_op("wsss_ext::fickle_masked_tap", differentiable=True)
def _masked_tap(x: Tensor, bits: Tensor, kernel_size: int, keep_scale: float, first_tap: int, tap_count: int) -> Tensor:
    """[R, C n, H, W]: the kept units of taps first_tap .. first_tap + n - 1, channel c n + k for tap
    first_tap + k (row r from image r % B)."""
    return _tap_units(x, bits, kernel_size, keep_scale, first_tap, tap_count)


@_masked_tap.register_fake
def _(x, bits, kernel_size, keep_scale, first_tap, tap_count):
    return x.new_empty((bits.shape[0], bits.shape[1] * tap_count, *bits.shape[2:]))


@fast_custom_op("wsss_ext::fickle_masked_tap_transpose")
def _masked_tap_transpose(grad: Tensor, bits: Tensor, kernel_size: int, keep_scale: float, first_tap: int,
                          tap_count: int, batch: int) -> Tensor:
    """The adjoint of _masked_tap: [batch, C, H, W] from grad [R, C n, H, W]."""
    grad_x = grad.new_zeros((batch, *bits.shape[1:]))
    _C.fickle_masked_tap(grad, grad_x, bits, kernel_size, keep_scale, first_tap, True, cuda_stream(grad), tap_count)
    return grad_x


@_masked_tap_transpose.register_fake
def _(grad, bits, kernel_size, keep_scale, first_tap, tap_count, batch):
    return grad.new_empty((batch, *bits.shape[1:]))


def _masked_tap_setup(ctx, inputs, output):
    x, bits, kernel_size, keep_scale, first_tap, tap_count = inputs
    ctx.save_for_backward(bits)
    ctx.settings, ctx.batch = (kernel_size, keep_scale, first_tap, tap_count), x.shape[0]


def _masked_tap_backward(ctx, grad):
    (bits,) = ctx.saved_tensors
    return _masked_tap_transpose(grad.contiguous(), bits, *ctx.settings, ctx.batch), None, None, None, None, None


torch.library.register_autograd("wsss_ext::fickle_masked_tap", _masked_tap_backward, setup_context=_masked_tap_setup)


@fast_custom_op("wsss_ext::fickle_conv2d", differentiable=True)
def _fickle_conv(x: Tensor, weight: Tensor, bias: Tensor | None, bits: Tensor, keep_scale: float) -> Tensor:
    """[R, O, H, W]: weight [O, C k^2] @ (kept units of every tap), a group of taps at a time."""
    height, width = x.shape[2:]
    classes, channels, kernel_size = weight.shape[0], weight.shape[1], weight.shape[-1]
    taps = weight.flatten(2)  # [O, C, k*k]
    out = None
    # The kernel keeps every thread; torch's GEMMs take no more than there are idle CPUs.
    with torch_threads_capped():
        for first, count in _tap_groups(kernel_size, bits, x):
            units = _tap_units(x, bits, kernel_size, keep_scale, first, count).flatten(2)
            group = taps[:, :, first : first + count].reshape(classes, channels * count)
            # bmm over the rows: matmul would fold a 2-D @ 3-D product through a copy of the transposed units.
            part = torch.bmm(group.expand(units.shape[0], -1, -1), units)
            out = part if out is None else out.add_(part)
        if bias is not None:
            out += bias.view(1, -1, 1)
    return out.view(bits.shape[0], classes, height, width)


@_fickle_conv.register_fake
def _(x, weight, bias, bits, keep_scale):
    return x.new_empty((bits.shape[0], weight.shape[0], *x.shape[2:]))


@fast_custom_op("wsss_ext::fickle_conv2d_backward")
def _fickle_conv_backward(grad: Tensor, x: Tensor, weight: Tensor, bits: Tensor,
                          keep_scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of x, weight and bias; the units are recomputed from the bits, a group of taps at a time."""
    height, width = x.shape[2:]
    rows, classes, channels, kernel_size = bits.shape[0], weight.shape[0], weight.shape[1], weight.shape[-1]
    taps = weight.flatten(2)
    grad_rows = grad.reshape(rows, classes, height * width)
    grad_x = torch.zeros_like(x)
    grad_taps = torch.empty_like(taps)
    with torch_threads_capped():
        for first, count in _tap_groups(kernel_size, bits, x):
            units = _tap_units(x, bits, kernel_size, keep_scale, first, count).flatten(2)
            grad_group = torch.matmul(grad_rows, units.transpose(1, 2)).sum(0)  # [O, C n]
            grad_taps[:, :, first : first + count] = grad_group.view(classes, channels, count)
            group = taps[:, :, first : first + count].reshape(classes, channels * count)
            grad_units = torch.bmm(group.T.expand(rows, -1, -1), grad_rows)  # [R, C n, H W]
            _C.fickle_masked_tap(grad_units.view(rows, channels * count, height, width), grad_x, bits, kernel_size,
                                 keep_scale, first, True, cuda_stream(x), count)
        grad_bias = grad_rows.sum((0, 2))
    return grad_x, grad_taps.view_as(weight), grad_bias


@_fickle_conv_backward.register_fake
def _(grad, x, weight, bits, keep_scale):
    return torch.empty_like(x), torch.empty_like(weight), weight.new_empty(weight.shape[0])


def _fickle_conv_setup(ctx, inputs, output):
    x, weight, bias, bits, keep_scale = inputs
    ctx.save_for_backward(x, weight, bits)
    ctx.keep_scale, ctx.has_bias = keep_scale, bias is not None


def _fickle_conv_grad(ctx, grad):
    x, weight, bits = ctx.saved_tensors
    grad_x, grad_weight, grad_bias = _fickle_conv_backward(grad.contiguous(), x, weight, bits, ctx.keep_scale)
    return grad_x, grad_weight, grad_bias if ctx.has_bias else None, None, None


torch.library.register_autograd("wsss_ext::fickle_conv2d", _fickle_conv_grad, setup_context=_fickle_conv_setup)

# The selection rows (row s * B + b) and the seed's stream are defined over the
# op's own batch, so a mapped dimension has no meaning of its own.
for _op in (_mask_bits, _mask_counts, _masked_tap, _masked_tap_transpose, _fickle_conv, _fickle_conv_backward):
    vmap_unsupported(_op, "wsss_ext's FickleNet ops (fickle_conv2d, expanded_dropout, fickle_gradcam)",
                     "they are batched already (B x C x H x W, with n_samples selections per image); "
                     "stack the inputs along the batch dimension instead of mapping over them")


# ---------------------------------------------------------------------------
# The public functions
# ---------------------------------------------------------------------------


def expanded_dropout(
    x: Tensor, kernel_size: int = 3, p: float = 0.9, *, seed: int | None = None, training: bool = True,
    rescale: bool = False,
) -> Tensor:
    """FickleNet's faithful op: the expanded map with centre-preserving dropout.

    Each output position's k x k window becomes its own block (zero padding
    outside the map); every unit of it except the window centre is dropped
    with probability ``p``, independently per channel, position and tap.
    ``conv2d(expanded_dropout(x, k, p, seed=s), weight, bias, stride=k)``
    equals ``fickle_conv2d(x, weight, bias, p, seed=s)``, which never builds
    this k^2-times larger map: use this op to read or check the masks.

    Args:
        x: B x C x H x W features (float16/bfloat16/float32/float64).
        kernel_size: k, odd.
        p: drop probability in [0, 1) (0.9 in the paper).
        seed: the masks are a function of it (and of row, channel, position,
            tap); ``None`` draws one from torch's default generator.
        training: ``False`` keeps every unit (the plain expansion).
        rescale: multiply kept non-centre units by 1 / (1 - p).

    Returns:
        B x C x (H k) x (W k) in x's dtype; differentiable in x.

    Example:
        >>> import torch, wsss_ext
        >>> x = torch.ones(1, 2, 4, 4)
        >>> e = wsss_ext.expanded_dropout(x, 3, p=0.5, seed=0)
        >>> e.shape, bool((e[..., 1::3, 1::3] == 1).all())   # centres kept
        (torch.Size([1, 2, 12, 12]), True)
    """
    kernel_size = _check_kernel_size(kernel_size)
    p = _check_p(p) if training else 0.0
    seed = _check_seed(seed)
    x = _check_features(x)
    batch, channels, height, width = x.shape
    source = x.to(_compute_dtype(x)).contiguous()
    bits = _mask_bits(source, seed, kernel_size, _drop_threshold(p), batch, 0)
    scale = _keep_scale(p, rescale)
    units = _masked_tap(source, bits, kernel_size, scale, 0, kernel_size * kernel_size)
    # [B, C k*k, H, W] -> [B, C, u, v, H, W] -> [B, C, H, u, W, v] -> [B, C, H k, W k]
    expanded = units.view(batch, channels, kernel_size, kernel_size, height, width)
    expanded = expanded.permute(0, 1, 4, 2, 5, 3).reshape(batch, channels, height * kernel_size, width * kernel_size)
    return expanded.to(x.dtype)


def _check_conv(x: Tensor, weight: object, bias: object) -> tuple[Tensor, Tensor | None]:
    weight = check_tensor(weight, "weight", ndim=4, layout="O x C x k x k", dtypes=_FLOAT_DTYPES)
    if weight.shape[1] != x.shape[1] or weight.shape[2] != weight.shape[3]:
        raise ValueError(
            f"weight must be O x C x k x k with C = {x.shape[1]} (x's channels) and a square kernel, "
            f"got shape {tuple(weight.shape)}"
        )
    _check_kernel_size(weight.shape[-1])
    if weight.device != x.device:
        raise ValueError(f"weight is on {weight.device} but x is on {x.device}")
    require_finite(weight, "weight contains NaN or inf")
    if bias is not None:
        bias = check_tensor(bias, "bias", ndim=1, dtypes=_FLOAT_DTYPES)
        if bias.shape[0] != weight.shape[0] or bias.device != x.device:
            raise ValueError(f"bias must have {weight.shape[0]} values on {x.device}, got {tuple(bias.shape)} on "
                             f"{bias.device}")
        require_finite(bias, "bias contains NaN or inf")
    return weight, bias


def fickle_conv2d(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, p: float = 0.9, *, seed: int | None = None,
    n_samples: int = 1, training: bool = True, rescale: bool = False,
) -> Tensor:
    """FickleNet's classifier conv over randomly selected hidden units, fused.

    Equal to ``conv2d(expanded_dropout(x, k, p, seed=seed), weight, bias,
    stride=k)`` for the same seed (``x`` repeated ``n_samples`` times), without
    the expanded map: the k x k conv is a sum of k^2 matmuls of the masked,
    shifted input, its backward regenerates the masks.

    Args:
        x: B x C x H x W features. weight: O x C x k x k (k odd); bias: O or None.
        p: drop probability in [0, 1). seed: as in :func:`expanded_dropout`.
        n_samples: stochastic selections per image, sharing one input; output
            row ``s * B + b`` is selection s of image b.
        training: ``False`` keeps every unit: ``conv2d(x, weight, bias,
            padding=k // 2)`` for each sample.
        rescale: multiply kept non-centre units by 1 / (1 - p).

    Returns:
        (n_samples B) x O x H x W in x's dtype (computed in float32, or
        float64); differentiable in x, weight and bias.

    Example:
        >>> import torch, wsss_ext
        >>> x, w = torch.randn(2, 16, 9, 9), torch.randn(20, 16, 3, 3)
        >>> out = wsss_ext.fickle_conv2d(x, w, p=0.9, seed=0, n_samples=4)
        >>> out.shape
        torch.Size([8, 20, 9, 9])
        >>> full = wsss_ext.fickle_conv2d(x, w, p=0.0, seed=0)   # nothing dropped: an ordinary conv
        >>> bool(torch.allclose(full, torch.nn.functional.conv2d(x, w, padding=1), atol=1e-4))
        True
    """
    x = _check_features(x)
    weight, bias = _check_conv(x, weight, bias)
    p = _check_p(p)
    seed = _check_seed(seed)
    n_samples = check_iterations(n_samples, "n_samples", minimum=1)
    dtype = _compute_dtype(x, weight)
    check_allocation((n_samples * x.shape[0], weight.shape[0], *x.shape[2:]), dtype, x.device, "n_samples")
    if not training:
        out = F.conv2d(x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype),
                       padding=weight.shape[-1] // 2)
        return out.repeat(n_samples, 1, 1, 1).to(x.dtype)
    if x.numel() == 0:
        return x.new_zeros((n_samples * x.shape[0], weight.shape[0], *x.shape[2:]))
    source = x.to(dtype).contiguous()
    bits = _mask_bits(source, seed, weight.shape[-1], _drop_threshold(p), n_samples * x.shape[0], 0)
    out = _fickle_conv(source, weight.to(dtype).contiguous(), None if bias is None else bias.to(dtype).contiguous(),
                       bits, _keep_scale(p, rescale))
    return out.to(x.dtype)


def fickle_gradcam(
    x: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor, p: float = 0.9, n_samples: int = 200,
    seed: int | None = None, threshold: float = 0.35, *, rescale: bool = False, ignore_index: int = 255,
    chunk_samples: int = 16,
) -> tuple[Tensor, Tensor]:
    r"""FickleNet's stochastic inference: N Grad-CAM maps, aggregated.

    The head is the masked conv (:func:`fickle_conv2d`) then global average
    pooling, which is linear in ``x``, so the Grad-CAM weights of class o on
    channel c have a closed form: :math:`\alpha_{oc} = \frac{1}{(HW)^2}
    \sum_t W_{oct} K_{ct}`, K the sum of the mask over the positions whose tap
    t lies inside the map. Each map is ``relu(sum_c alpha_oc x_c)``; no
    autograd, no per-sample backward pass.

    Args:
        x: B x C x H x W features (the classifier's input). weight, bias: the
            classifier conv (O x C x k x k, O).
        labels: B x O image-level labels (multi-hot, bool or 0/1); only
            these classes get maps and pixels.
        p, seed, rescale: as in :func:`fickle_conv2d`. n_samples: N (200 in
            the paper).
        threshold: a pixel belongs to class o if one of its N normalised maps
            exceeds it (0.35 in the paper).
        ignore_index: the pseudo-label of pixels with no class.
        chunk_samples: selections processed together (bounds memory).

    Returns:
        ``(maps, pseudo_label)``: B x O x H x W mean normalised Grad-CAM maps
        (zero for absent classes), and B x H x W int64 labels (class index or
        ``ignore_index``), where several classes hit, the one with the
        highest mean map.

    Example:
        >>> import torch, wsss_ext
        >>> x, w = torch.rand(1, 32, 21, 21), torch.randn(20, 32, 3, 3)
        >>> labels = torch.zeros(1, 20); labels[0, [3, 7]] = 1
        >>> maps, label = wsss_ext.fickle_gradcam(x, w, None, labels, n_samples=16, seed=0)
        >>> maps.shape, label.shape, sorted(set(label.unique().tolist()) - {255}) <= [3, 7]
        (torch.Size([1, 20, 21, 21]), torch.Size([1, 21, 21]), True)
    """
    x = _check_features(x)
    weight, bias = _check_conv(x, weight, bias)
    p = _check_p(p)
    seed = _check_seed(seed)
    n_samples = check_iterations(n_samples, "n_samples", minimum=1)
    chunk_samples = check_iterations(chunk_samples, "chunk_samples", minimum=1)
    threshold = check_real(threshold, "threshold")
    ignore_index = check_int(ignore_index, "ignore_index")
    labels = check_tensor(labels, "labels", ndim=2, layout="B x O")
    batch, channels, height, width = x.shape
    classes, kernel_size = weight.shape[0], weight.shape[-1]
    if labels.shape != (batch, classes):
        raise ValueError(f"labels must be B x O = {batch} x {classes}, got {tuple(labels.shape)}")
    present = labels.to(device=x.device) > 0

    dtype = _compute_dtype(x, weight)
    features = x.detach().to(dtype).reshape(batch, channels, height * width)
    taps = weight.detach().to(dtype).flatten(2)  # [O, C, T]
    scale, threshold_bits = _keep_scale(p, rescale), _drop_threshold(p)
    source = x.detach().to(dtype).contiguous()
    sums = torch.zeros(batch, classes, height * width, dtype=dtype, device=x.device)
    hits = torch.zeros(batch, classes, height * width, dtype=torch.bool, device=x.device)
    for first in range(0, n_samples, chunk_samples):
        count = min(chunk_samples, n_samples - first)
        # Rows first B .. of the n_samples B selections: the masks of
        # fickle_conv2d(n_samples=n_samples, seed=seed), whatever the chunking.
        bits = _mask_bits(source, seed, kernel_size, threshold_bits, count * batch, first * batch)
        rows = _mask_counts(bits, kernel_size, scale, dtype)
        del bits
        alpha = torch.einsum("oct,rct->roc", taps, rows) / float(height * width) ** 2  # [count B, O, C]
        cams = torch.relu(torch.matmul(alpha.view(count, batch, classes, channels), features))  # [count, B, O, HW]
        cams = cams / cams.amax(3, keepdim=True).clamp(min=1e-5)
        sums += cams.sum(0)
        hits |= (cams > threshold).any(0)
    maps = (sums / n_samples) * present.unsqueeze(2)
    hits &= present.unsqueeze(2)
    scores = torch.where(hits, maps, torch.full_like(maps, -1.0))
    best = scores.argmax(1)
    pseudo = torch.where(hits.any(1), best, torch.full_like(best, ignore_index))
    return maps.view(batch, classes, height, width).to(x.dtype), pseudo.view(batch, height, width)
