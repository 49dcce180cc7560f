"""Affinity random walk of AffinityNet (PSA, Ahn & Kwak, CVPR 2018) and IRNet
(Ahn et al., CVPR 2019) without the dense (HW)^2 transition matrix.

Both references build ``A`` (HW x HW, non-zero only within a radius-5
neighbourhood), take ``T = A^beta`` column-normalised, square it 8 times and
multiply: ``x <- x @ T^256``. The same walk is 256 gather steps over the
T = 69 taps of the neighbourhood::

    w_pt = a_pt^beta / sum_t' a_pt'^beta        (once; taps outside the map: 0)
    repeat n_steps times:  x_p <- sum_t w_pt x_(p + o_t)

with O(T * H * W) memory for the weights and two C x H x W buffers, instead of
552 MB and ~26 TFLOP for one 500 x 375 image at stride 4.
``wsss_ext.reference.random_walk_dense`` is the references' dense method.
"""

from __future__ import annotations

import functools
import math

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
    get_check_finite,
    plain_eager,
    require_all,
    require_finite,
    runs_on_cuda,
    vmap_into_batch,
)

__all__ = [
    "affinitynet_random_walk",
    "boundary_affinity",
    "cam_background",
    "feature_affinity",
    "irnet_random_walk",
    "neighbour_offsets",
    "random_walk",
    "walk_to_labels",
]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_MAX_RADIUS = 64


def _check_radius(radius: object) -> int:
    radius = check_int(radius, "radius", minimum=1)
    if radius > _MAX_RADIUS:
        raise ValueError(f"radius must be <= {_MAX_RADIUS}, got {radius}")
    return radius


@functools.lru_cache(maxsize=None)
def _offsets(radius: int) -> tuple[tuple[int, int], ...]:
    extent = radius - 1
    return tuple(
        (dy, dx)
        for dy in range(-extent, extent + 1)
        for dx in range(-extent, extent + 1)
        if dy * dy + dx * dx < radius * radius
    )


@functools.lru_cache(maxsize=None)
def _radius_of_tap_count(taps: int) -> int | None:
    for radius in range(1, _MAX_RADIUS + 1):
        if len(_offsets(radius)) == taps:
            return radius
    return None


def neighbour_offsets(radius: int = 5) -> Tensor:
    """The (dy, dx) taps of the random walk's neighbourhood: every offset with
    ``dy^2 + dx^2 < radius^2``, the centre included, row-major (dy, then dx).

    This order fixes the tap axis of every affinity tensor in wsss_ext; the
    centre is tap ``T // 2``.

    Example:
        >>> import wsss_ext
        >>> taps = wsss_ext.neighbour_offsets(5)
        >>> taps.shape, taps[34].tolist()
        (torch.Size([69, 2]), [0, 0])
    """
    return torch.tensor(_offsets(_check_radius(radius)), dtype=torch.int64)


_DEVICE_OFFSETS: dict[tuple[int, torch.device, torch.dtype], Tensor] = {}


def _device_offsets(radius: int, device: torch.device, dtype: torch.dtype = torch.int64) -> Tensor:
    """:func:`neighbour_offsets` on ``device``, cached: after the first call no
    copy; on CUDA the one copy is asynchronous (from pinned memory), no host sync."""
    if torch.compiler.is_compiling():
        return torch.tensor(_offsets(radius), dtype=dtype, device=device)
    key = (radius, device, dtype)
    offsets = _DEVICE_OFFSETS.get(key)
    if offsets is None:
        offsets = torch.tensor(_offsets(radius), dtype=dtype)
        if device.type == "cuda":
            offsets = offsets.pin_memory().to(device, non_blocking=True)
        _DEVICE_OFFSETS[key] = offsets
    return offsets


def _valid_taps(radius: int, height: int, width: int, device: torch.device) -> Tensor:
    """[T, H, W] bool: does tap t of pixel (y, x) fall inside the map?
    Cached per shape in eager calls (a training loop repeats one shape; it
    cost four small torch ops a call), built in the graph under compile."""
    if torch.compiler.is_compiling():
        return _build_valid_taps(radius, height, width, device)
    return _cached_valid_taps(radius, height, width, device)


def _build_valid_taps(radius: int, height: int, width: int, device: torch.device) -> Tensor:
    offsets = _device_offsets(radius, device)
    rows = torch.arange(height, device=device).view(1, height, 1) + offsets[:, 0].view(-1, 1, 1)
    cols = torch.arange(width, device=device).view(1, 1, width) + offsets[:, 1].view(-1, 1, 1)
    return (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)


# A few shapes at a time (69 x 94 x 125 bools, 0.8 MB, at IRNet's size).
_cached_valid_taps = functools.lru_cache(maxsize=16)(_build_valid_taps)


def _shift_reader(x: Tensor, radius: int, fill: float):
    """``read(dy, dx)`` -> x[..., y + dy, x + dx] (``fill`` outside), from one padded copy."""
    height, width = x.shape[-2:]
    extent = radius - 1
    padded = F.pad(x, (extent, extent, extent, extent), value=fill)

    def read(dy: int, dx: int) -> Tensor:
        return padded[..., extent + dy : extent + dy + height, extent + dx : extent + dx + width]

    return read


def _check_map(value: object, name: str, layout: str) -> Tensor:
    tensor = check_tensor(value, name, ndim=4, layout=layout, dtypes=_FLOAT_DTYPES)
    require_finite(tensor, f"{name} contains NaN or inf")
    return tensor


def feature_affinity(features: Tensor, radius: int = 5) -> Tensor:
    """AffinityNet's affinities ``a_pq = exp(-mean_c |f_p - f_q|)`` between each
    pixel p and its taps q (:func:`neighbour_offsets`); taps outside the map get 0.

    Args:
        features: B x C x H x W float features (AffinityNet's stride-8 maps).
        radius: neighbourhood radius (5 in the paper: 69 taps).

    Returns:
        B x T x H x W affinities in the features' dtype, differentiable in the
        features (AffinityNet trains on them).

    Example:
        >>> import torch, wsss_ext
        >>> a = wsss_ext.feature_affinity(torch.randn(2, 64, 20, 30))
        >>> a.shape, float(a[:, 34].min())    # the centre: exp(0)
        (torch.Size([2, 69, 20, 30]), 1.0)
    """
    radius = _check_radius(radius)
    features = _check_map(features, "features", "B x C x H x W")
    if features.shape[1] == 0:  # the mean over no channels is 0 / 0
        raise ValueError(f"features must have at least one channel, got shape {tuple(features.shape)}")
    read = _shift_reader(features, radius, 0.0)
    valid = _valid_taps(radius, *features.shape[-2:], features.device)
    taps = [torch.exp(-(features - read(dy, dx)).abs().mean(1)) for dy, dx in _offsets(radius)]
    return torch.stack(taps, 1) * valid


@functools.lru_cache(maxsize=None)
def _segment_cells(dy: int, dx: int) -> tuple[tuple[int, int], ...]:
    """Grid cells of the segment (0, 0) -> (dy, dx): those in its bounding box
    within distance 1 of the line (endpoints included), as IRNet's path index."""
    if dy == 0 and dx == 0:
        return ((0, 0),)
    length_sq = dy * dy + dx * dx
    return tuple(
        (cy, cx)
        for cy in range(min(0, dy), max(0, dy) + 1)
        for cx in range(min(0, dx), max(0, dx) + 1)
        if (dy * cx - dx * cy) ** 2 < length_sq
    )


def boundary_affinity(boundary: Tensor, radius: int = 5) -> Tensor:
    """IRNet's affinities from a class-boundary map: ``a_pq = 1 - max B`` over the
    cells of the segment p -> q (those within distance 1 of it, endpoints
    included); ``a_pp = 1`` as in IRNet's transition matrix; taps outside the
    map get 0.

    Args:
        boundary: B x 1 x H x W (or B x H x W) boundary probabilities in [0, 1]
            (IRNet's stride-4 edge map).
        radius: neighbourhood radius (5 in the paper: 69 taps).

    Returns:
        B x T x H x W affinities, symmetric (a_pq = a_qp), differentiable in
        the boundary (IRNet trains its boundary branch through them).

    Example:
        >>> import torch, wsss_ext
        >>> wall = torch.zeros(1, 1, 9, 9); wall[..., 4] = 1.0   # a vertical boundary
        >>> a = wsss_ext.boundary_affinity(wall)
        >>> taps = wsss_ext.neighbour_offsets().tolist()
        >>> float(a[0, taps.index([0, 2]), 4, 3]), float(a[0, taps.index([0, 2]), 4, 5])  # across / beside it
        (0.0, 1.0)
    """
    radius = _check_radius(radius)
    if isinstance(boundary, Tensor) and boundary.dim() == 3:
        boundary = boundary.unsqueeze(1)
    boundary = _check_map(boundary, "boundary", "B x 1 x H x W")
    if boundary.shape[1] != 1:
        raise ValueError(f"boundary must have one channel, got shape {tuple(boundary.shape)}")
    require_all(boundary, lambda b: (b >= 0) & (b <= 1), "boundary must hold probabilities in [0, 1]")
    read = _shift_reader(boundary[:, 0], radius, 1.0)
    valid = _valid_taps(radius, *boundary.shape[-2:], boundary.device)
    taps = []
    for dy, dx in _offsets(radius):
        if dy == 0 and dx == 0:
            taps.append(torch.ones_like(boundary[:, 0]))
            continue
        cells = [read(cy, cx) for cy, cx in _segment_cells(dy, dx)]
        taps.append(1 - torch.stack(cells).amax(0))
    return torch.stack(taps, 1) * valid


# ---------------------------------------------------------------------------
# The walk: a custom op over checked, contiguous inputs
# ---------------------------------------------------------------------------


def _steps(weights: Tensor, x: Tensor, offsets: Tensor, n_steps: int, halo: int, transpose: bool) -> Tensor:
    """n_steps of P (or P^T) on x, between two buffers; x itself is not written."""
    stream = cuda_stream(x)
    if not runs_on_cuda(x):
        # The CPU backend runs every step in one call, its scratch in cache.
        out = torch.empty_like(x)
        _C.random_walk_step(weights, offsets, x, out, transpose, halo, stream, n_steps)
        return out
    buffers = [torch.empty_like(x) for _ in range(min(n_steps, 2))]
    current = x
    for step in range(n_steps):
        out = buffers[step % 2]
        _C.random_walk_step(weights, offsets, current, out, transpose, halo, stream)
        current = out
    return current


@fast_custom_op("wsss_ext::random_walk", differentiable=True)
def _walk(weights: Tensor, x: Tensor, offsets: Tensor, n_steps: int, halo: int, transpose: bool) -> Tensor:
    """n_steps of the walk with normalised weights [B, T, H, W] on x [B, C, H, W]."""
    if n_steps == 0:
        return x.clone()
    return _steps(weights, x, offsets, n_steps, halo, transpose)


@_walk.register_fake
def _(weights, x, offsets, n_steps, halo, transpose):
    return torch.empty_like(x)


def _walk_setup_context(ctx, inputs, output):
    weights, x, offsets, n_steps, halo, transpose = inputs
    ctx.save_for_backward(weights, x, offsets)
    ctx.n_steps, ctx.halo, ctx.transpose = n_steps, halo, transpose


@fast_custom_op("wsss_ext::random_walk_backward")
def _walk_backward_both(
    weights: Tensor, x: Tensor, offsets: Tensor, grad: Tensor, n_steps: int, halo: int, transpose: bool
) -> tuple[Tensor, Tensor]:
    """Gradients of the weights and of x for the walk of x, given the output's gradient."""
    grad_weights = torch.zeros_like(weights)
    stream = cuda_stream(x)
    # The weight gradient needs every step's input. They are recomputed from
    # checkpoints every ~sqrt(n) steps: memory 2 sqrt(n) maps instead of n.
    interval = max(1, math.isqrt(n_steps))
    checkpoints = [x]
    for _ in range(interval, n_steps, interval):
        checkpoints.append(_steps(weights, checkpoints[-1], offsets, interval, halo, transpose))
    for index in reversed(range(len(checkpoints))):
        start = index * interval
        inputs = [checkpoints[index]]
        for _ in range(start + 1, min(start + interval, n_steps)):
            inputs.append(_steps(weights, inputs[-1], offsets, 1, halo, transpose))
        for step_input in reversed(inputs):
            # Step y = P x: grad_w += grad_y (x) shifted x. Step y = P^T x: the roles swap.
            if transpose:
                _C.random_walk_weight_grad(step_input, grad, offsets, grad_weights, stream)
            else:
                _C.random_walk_weight_grad(grad, step_input, offsets, grad_weights, stream)
            grad = _steps(weights, grad, offsets, 1, halo, not transpose)
    return grad_weights, grad.clone() if n_steps == 0 else grad


@_walk_backward_both.register_fake
def _(weights, x, offsets, grad, n_steps, halo, transpose):
    return torch.empty_like(weights), torch.empty_like(x)


def _walk_backward(ctx, grad):
    weights, x, offsets = ctx.saved_tensors
    grad = grad.contiguous()
    if not ctx.needs_input_grad[0]:
        # (P^n)^T = (P^T)^n, itself a walk, so this backward is differentiable too.
        return None, _walk(weights, grad, offsets, ctx.n_steps, ctx.halo, not ctx.transpose), None, None, None, None
    grad_weights, grad_x = _walk_backward_both(weights, x, offsets, grad, ctx.n_steps, ctx.halo, ctx.transpose)
    return grad_weights, grad_x, None, None, None, None


torch.library.register_autograd("wsss_ext::random_walk", _walk_backward, setup_context=_walk_setup_context)
# vmap: the mapped dimension joins the batch (B x ...) of the maps; the offsets are shared.
vmap_into_batch(_walk, shared=(2,))
vmap_into_batch(_walk_backward_both, shared=(2,))


def _transition_weights(affinity: Tensor, radius: int, beta: float) -> Tensor:
    """w_pt = a_pt^beta / sum_t a_pt^beta over the taps inside the map. A pixel
    whose taps all have zero affinity keeps its value (weight 1 on its centre),
    where the dense references divide 0 by 0."""
    valid = _valid_taps(radius, *affinity.shape[-2:], affinity.device)
    # Out-of-map taps are set to 1 before the power, not after: a^beta at a = 0
    # has an infinite derivative for beta < 1, and where() would multiply it by
    # the zero gradient of the unselected branch (NaN).
    one = torch.ones((), dtype=affinity.dtype, device=affinity.device)
    powered = torch.where(valid, affinity, one).pow(beta) * valid
    total = powered.sum(1, keepdim=True)
    isolated = total == 0
    weights = powered / torch.where(isolated, torch.ones_like(total), total)
    centre = len(_offsets(radius)) // 2
    return torch.cat([weights[:, :centre], weights[:, centre : centre + 1] + isolated, weights[:, centre + 1 :]], 1)


_NEGATIVE_AFFINITY = "affinity must be non-negative"
_NON_FINITE = 1  # _C.random_walk_weights' status (csrc/random_walk/random_walk.h AffinityStatus)


def _fused_weights_apply(affinity: Tensor) -> bool:
    """Whether the weights may come from ``_C.random_walk_weights``: a plain
    eager CPU call (no tracer, mode or transform) whose affinities need no
    gradient. It saves about ten small torch ops, most of a small walk's call."""
    return plain_eager((affinity,), differentiable=True) and affinity.is_cpu and not runs_on_cuda(affinity)


def _fused_transition_weights(affinity: Tensor, offsets: Tensor, beta: float) -> Tensor:
    """:func:`_transition_weights` and the affinities' checks in one C++ pass
    (contiguous float32 / float64 CPU affinities); raises as the checks do."""
    weights = torch.empty_like(affinity)
    status = _C.random_walk_weights(affinity, offsets, weights, beta)
    if status and get_check_finite() != "off":
        raise ValueError("affinity contains NaN or inf" if status == _NON_FINITE else _NEGATIVE_AFFINITY)
    return weights


def random_walk(x: Tensor, affinity: Tensor, beta: float = 8.0, n_steps: int = 256) -> Tensor:
    r"""Propagate ``x`` by a random walk on local affinities, as AffinityNet and
    IRNet turn CAMs into pseudo-masks.

    Each of ``n_steps`` steps sets :math:`x_p \leftarrow \sum_q a_{pq}^\beta x_q /
    \sum_q a_{pq}^\beta` over the taps q of p (:func:`neighbour_offsets`;
    those inside the map). For symmetric affinities (both helpers below) it
    equals the references' ``x @ T^n_steps`` with ``T = A^beta`` column-
    normalised, without ever forming the (HW)^2 matrix.

    Args:
        x: B x C x H x W scores to propagate, any C (21 VOC, 81 COCO ...).
        affinity: B x T x H x W non-negative affinities of each pixel to its
            taps (from :func:`feature_affinity` or :func:`boundary_affinity`);
            T fixes the radius (69 taps: radius 5). Values at taps outside the
            map are ignored. A pixel whose in-map affinities are all 0 keeps
            its value.
        beta: exponent sharpening the affinities (8 in AffinityNet, 10 in IRNet).
        n_steps: walk length (256 = 2^8: the references square T 8 times).

    Returns:
        B x C x H x W, in x's dtype. Computed in float32 (float64 if x or
        affinity is float64). Differentiable with respect to x and affinity;
        the affinity's backward recomputes the walk from sqrt(n_steps)
        checkpoints (about 3x the forward's time).

    Example:
        >>> import torch, wsss_ext
        >>> cams = torch.rand(1, 21, 47, 63)
        >>> affinity = wsss_ext.feature_affinity(torch.randn(1, 32, 47, 63))
        >>> out = wsss_ext.random_walk(cams, affinity, beta=8, n_steps=256)
        >>> out.shape, bool(out.min() >= cams.min() and out.max() <= cams.max())  # local averaging
        (torch.Size([1, 21, 47, 63]), True)
    """
    beta = check_real(beta, "beta")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    n_steps = check_iterations(n_steps, "n_steps")
    x = _check_map(x, "x", "B x C x H x W")
    affinity = check_tensor(affinity, "affinity", ndim=4, layout="B x T x H x W", dtypes=_FLOAT_DTYPES)
    # The weights in one C++ pass that also checks the affinities (below), or
    # in torch ops, differentiable, with the checks here.
    fused = n_steps > 0 and x.numel() > 0 and _fused_weights_apply(affinity)
    if not fused:
        require_finite(affinity, "affinity contains NaN or inf")
    if x.device != affinity.device:
        raise ValueError(f"x is on {x.device} but affinity is on {affinity.device}")
    if x.shape[0] != affinity.shape[0] or x.shape[2:] != affinity.shape[2:]:
        raise ValueError(
            f"x {tuple(x.shape)} and affinity {tuple(affinity.shape)} must have the same batch size and H x W"
        )
    radius = _radius_of_tap_count(affinity.shape[1])
    if radius is None:
        raise ValueError(
            f"affinity has {affinity.shape[1]} taps, which is no neighbourhood's tap count "
            f"(radius 5: 69; see wsss_ext.neighbour_offsets)"
        )
    if not fused:
        require_all(affinity, lambda a: a >= 0, _NEGATIVE_AFFINITY)
    dtype = torch.float64 if torch.float64 in (x.dtype, affinity.dtype) else torch.float32
    if x.numel() == 0 or n_steps == 0:
        return x.clone()
    offsets = _device_offsets(radius, x.device, torch.int32)
    if fused:
        weights = _fused_transition_weights(affinity.to(dtype).contiguous(), offsets, beta)
    else:
        weights = _transition_weights(affinity.to(dtype), radius, beta).contiguous()
    return _walk(weights, x.to(dtype).contiguous(), offsets, n_steps, radius - 1, False).to(x.dtype)


# ---------------------------------------------------------------------------
# The references' pipelines around the walk
# ---------------------------------------------------------------------------


def cam_background(cams: Tensor, alpha: float = 16.0) -> Tensor:
    """Prepend AffinityNet's background channel ``(1 - max_c cam)^alpha`` to
    B x C x H x W CAMs normalised to [0, 1]; returns B x (C + 1) x H x W."""
    cams = _check_map(cams, "cams", "B x C x H x W")
    alpha = check_real(alpha, "alpha", positive=True)
    if cams.shape[1] == 0:
        raise ValueError("cams must have at least one class channel")
    background = (1 - cams.amax(1, keepdim=True)).clamp(min=0).pow(alpha)
    return torch.cat([background, cams], 1)


def affinitynet_random_walk(
    cams: Tensor, features: Tensor, beta: float = 8.0, n_steps: int = 256, alpha: float = 16.0, radius: int = 5
) -> Tensor:
    """AffinityNet (PSA) inference at the feature resolution: the background
    channel prepended (:func:`cam_background`), then the walk on
    :func:`feature_affinity`. ``cams`` B x C x H x W in [0, 1] at the features'
    H x W (PSA average-pools them to stride 8). Returns B x (C + 1) x H x W,
    channel 0 the background."""
    return random_walk(cam_background(cams, alpha), feature_affinity(features, radius), beta, n_steps)


def irnet_random_walk(
    cams: Tensor, boundary: Tensor, beta: float = 10.0, n_steps: int = 256, radius: int = 5
) -> Tensor:
    """IRNet inference at the boundary map's resolution (stride 4): the walk of
    ``cams * (1 - boundary)`` on :func:`boundary_affinity`. ``cams`` B x C x H x W
    (foreground classes), ``boundary`` B x 1 x H x W. Returns B x C x H x W;
    :func:`walk_to_labels` with ``bg_threshold=0.25`` makes the pseudo-mask."""
    cams = _check_map(cams, "cams", "B x C x H x W")
    if isinstance(boundary, Tensor) and boundary.dim() == 3:
        boundary = boundary.unsqueeze(1)
    affinity = boundary_affinity(boundary, radius)
    if cams.shape[0] != boundary.shape[0] or cams.shape[2:] != boundary.shape[2:]:
        raise ValueError(f"cams {tuple(cams.shape)} and boundary {tuple(boundary.shape)} must have the same batch "
                         "size and H x W")
    return random_walk(cams * (1 - boundary), affinity, beta, n_steps)


def walk_to_labels(scores: Tensor, size: tuple[int, int], bg_threshold: float | None = None) -> Tensor:
    """Upsample walked scores B x C x h x w to ``size`` (bilinear,
    align_corners=False) and take the argmax per pixel, as the references do.

    With ``bg_threshold`` (IRNet: 0.25) the scores are foreground classes:
    each image's scores are divided by their maximum, a constant background
    channel of ``bg_threshold`` is put first, and labels are 0 (background)
    .. C. Without it the argmax is over the given channels (AffinityNet,
    whose channel 0 is its background). Returns B x H x W int64 labels."""
    scores = _check_map(scores, "scores", "B x C x h x w")
    size = check_ints(size, "size", length=2, minimum=1)
    check_allocation((*scores.shape[:2], *size), torch.float32, scores.device, "size")
    upsampled = F.interpolate(scores.float(), size=size, mode="bilinear", align_corners=False)
    if bg_threshold is None:
        return upsampled.argmax(1)
    bg_threshold = check_real(bg_threshold, "bg_threshold")
    peak = upsampled.flatten(1).amax(1).clamp(min=1e-5).view(-1, 1, 1, 1)
    background = torch.full_like(upsampled[:, :1], bg_threshold)
    return torch.cat([background, upsampled / peak], 1).argmax(1)
