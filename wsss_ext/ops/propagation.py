"""Label propagation for self-supervised video object segmentation (MAST,
CorrFlow, CRW): a target frame's labels as local attention over reference
frames, fused.

For query pixel p, the candidates are the (2 radius + 1)^2 window around p in
each of the R reference frames; score = q_p . k / temperature; one softmax
over all R x window candidates, or over the top-k scores only (CRW); the
output is the weighted sum of the candidates' values (labels or colours). A
tap outside the frame follows the border rule: ``"zero"`` (MAST) keeps it in
the softmax with score 0 and value 0, so label mass drops below 1 near the
border; ``"exclude"`` (CorrFlow) leaves it out, so one-hot labels keep mass 1
everywhere. An online softmax streams the candidates, so the
B x R x window x H x W affinity tensor MAST materialises (~22 GB at its test
size) never exists; the backward keeps the per-pixel softmax statistics and
recomputes scores, as flash attention does.
``wsss_ext.reference.propagate_labels_unfold`` is the unfold + softmax method.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from wsss_ext import _C
from wsss_ext.ops._checks import (
    check_allocation,
    check_ints,
    check_int,
    check_real,
    check_tensor,
    cuda_stream,
    fast_custom_op,
    host_max_abs,
    require_all,
    require_finite,
    vmap_into_batch,
)

__all__ = ["propagate_labels", "track_video"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_MAX_TOPK = 64  # csrc/propagation/propagation.h kMaxTopk
_MAX_RADIUS = 64
BORDERS = ("zero", "exclude")


def _last(x: Tensor) -> Tensor:
    """Channels to the last axis: [..., C, H, W] -> [..., H, W, C], contiguous."""
    return x.movedim(-3, -1).contiguous()


@fast_custom_op("wsss_ext::propagate_labels", differentiable=True)
def _propagate(query: Tensor, keys: Tensor, values: Tensor, radius: int, inv_temperature: float, topk: int,
               border: str) -> tuple[Tensor, Tensor, Tensor]:
    """out [B, L, H, W], stats [B, H, W, 2] (max dot, log sum) and top-k indices [B, H, W, max(topk, 1)]."""
    batch, _, height, width = query.shape
    labels = values.shape[2]
    out = query.new_empty((batch, height, width, labels))
    stats = query.new_empty((batch, height, width, 2))
    # Without top-k the index output is unused: zeros, so that the op's outputs are defined.
    make = torch.empty if topk else torch.zeros
    index = make((batch, height, width, max(topk, 1)), dtype=torch.int32, device=query.device)
    _C.propagation_forward(_last(query), _last(keys), _last(values), out, stats, index if topk else None, radius,
                           inv_temperature, topk, border, cuda_stream(query))
    return out.permute(0, 3, 1, 2).contiguous(), stats, index


@_propagate.register_fake
def _(query, keys, values, radius, inv_temperature, topk, border):
    batch, _, height, width = query.shape
    return (query.new_empty((batch, values.shape[2], height, width)), query.new_empty((batch, height, width, 2)),
            query.new_empty((batch, height, width, max(topk, 1)), dtype=torch.int32))


@fast_custom_op("wsss_ext::propagate_labels_backward")
def _propagate_backward(grad: Tensor, out: Tensor, stats: Tensor, index: Tensor, query: Tensor, keys: Tensor,
                        values: Tensor, radius: int, inv_temperature: float, topk: int,
                        border: str) -> tuple[Tensor, Tensor, Tensor]:
    q, k, v, g = _last(query), _last(keys), _last(values), _last(grad)
    delta = (grad * out).sum(1).contiguous()
    grad_q, grad_k, grad_v = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    _C.propagation_backward(q, k, v, g, stats, delta, index if topk else None, grad_q, grad_k, grad_v, radius,
                            inv_temperature, topk, border, cuda_stream(query))
    return grad_q.movedim(-1, -3).contiguous(), grad_k.movedim(-1, -3).contiguous(), grad_v.movedim(-1, -3).contiguous()


@_propagate_backward.register_fake
def _(grad, out, stats, index, query, keys, values, radius, inv_temperature, topk, border):
    return torch.empty_like(query), torch.empty_like(keys), torch.empty_like(values)


def _setup(ctx, inputs, output):
    query, keys, values, radius, inv_temperature, topk, border = inputs
    out, stats, index = output
    ctx.save_for_backward(query, keys, values, out, stats, index)
    ctx.settings = (radius, inv_temperature, topk, border)
    ctx.mark_non_differentiable(stats, index)


def _backward(ctx, grad, grad_stats, grad_index):
    query, keys, values, out, stats, index = ctx.saved_tensors
    grads = _propagate_backward(grad.contiguous(), out, stats, index, query, keys, values, *ctx.settings)
    return (*grads, None, None, None, None)


torch.library.register_autograd("wsss_ext::propagate_labels", _backward, setup_context=_setup)
# vmap: the mapped dimension joins the batch (B x ...) of every input and output.
vmap_into_batch(_propagate)
vmap_into_batch(_propagate_backward)


def propagate_labels(
    query: Tensor,
    keys: Tensor,
    values: Tensor,
    radius: int = 12,
    temperature: float = 1.0,
    topk: int | None = None,
    normalize: bool = False,
    border: str = "zero",
) -> Tensor:
    r"""Propagate reference frames' labels to a target frame by local attention.

    Args:
        query: B x C x H x W features of the target frame.
        keys: B x R x C x H x W features of R reference frames.
        values: B x R x L x H x W their labels (soft or one-hot) or colours.
        radius: window radius (MAST: 6 in training, 12 at test; (2r+1)^2 taps per frame).
        temperature: scores are divided by it (CRW: 0.07).
        topk: keep only the k best-scoring candidates of the R x window (CRW:
            10); ``None``: all of them (MAST). At most 64.
        normalize: L2-normalise query and key features over C first (CRW).
        border: the rule for window taps outside the frame. ``"zero"`` (MAST,
            the default): they stay in the softmax with score 0 and label 0,
            so the label mass is below 1 within ``radius`` of the border.
            ``"exclude"`` (CorrFlow): they leave the softmax (and the top-k),
            so one-hot labels keep mass exactly 1 everywhere.

    Returns:
        B x L x H x W, in float32 (float64 if an input is float64);
        differentiable in query, keys and values. One-hot (or normalised)
        labels stay normalised (everywhere with ``border="exclude"``, away
        from the border with ``"zero"``).

    Raises:
        ValueError: besides bad shapes and NaN/inf, for magnitudes the
            float32 (float64) computation cannot hold: ``1 / temperature``
            past the dtype's range, query and key magnitudes whose dot
            products could overflow, values whose weighted sum could.

    Example:
        >>> import torch, wsss_ext
        >>> q, k = torch.randn(1, 64, 30, 40), torch.randn(1, 5, 64, 30, 40)
        >>> labels = torch.softmax(torch.randn(1, 5, 3, 30, 40), dim=2)
        >>> out = wsss_ext.propagate_labels(q, k, labels, radius=12)                 # MAST
        >>> crw = wsss_ext.propagate_labels(q, k, labels, 12, 0.07, topk=10, normalize=True)
        >>> out.shape, bool(torch.allclose(out.sum(1)[:, 12:-12, 12:-12], torch.ones(1, 6, 16)))
        (torch.Size([1, 3, 30, 40]), True)
        >>> corrflow = wsss_ext.propagate_labels(q, k, labels, radius=12, border="exclude")
        >>> bool(torch.allclose(corrflow.sum(1), torch.ones(1, 30, 40)))
        True
    """
    query = check_tensor(query, "query", ndim=4, layout="B x C x H x W", dtypes=_FLOAT_DTYPES)
    keys = check_tensor(keys, "keys", ndim=5, layout="B x R x C x H x W", dtypes=_FLOAT_DTYPES)
    values = check_tensor(values, "values", ndim=5, layout="B x R x L x H x W", dtypes=_FLOAT_DTYPES)
    batch, channels, height, width = query.shape
    if keys.shape[0] != batch or keys.shape[2:] != query.shape[1:]:
        raise ValueError(f"keys {tuple(keys.shape)} must be B x R x C x H x W with query's B, C, H, W "
                         f"{(batch, channels, height, width)}")
    if values.shape[:2] != keys.shape[:2] or values.shape[3:] != keys.shape[3:]:
        raise ValueError(f"values {tuple(values.shape)} must be B x R x L x H x W with keys' B, R, H, W")
    if keys.shape[1] == 0:
        raise ValueError("keys must hold at least one reference frame")
    for name, tensor in (("keys", keys), ("values", values)):
        if tensor.device != query.device:
            raise ValueError(f"{name} is on {tensor.device} but query is on {query.device}")
    radius = check_int(radius, "radius", minimum=0)
    if radius > _MAX_RADIUS:
        raise ValueError(f"radius must be <= {_MAX_RADIUS}, got {radius}")
    temperature = check_real(temperature, "temperature", positive=True)
    border = _check_border(border)
    candidates = keys.shape[1] * (2 * radius + 1) ** 2
    if topk is not None:
        topk = check_int(topk, "topk", minimum=1)
        if topk > min(candidates, _MAX_TOPK):
            raise ValueError(f"topk must be at most the {candidates} candidates of the window (and at most "
                             f"{_MAX_TOPK}), got {topk}")
    dtype = torch.float64 if torch.float64 in (query.dtype, keys.dtype, values.dtype) else torch.float32
    query, keys, values = query.to(dtype), keys.to(dtype), values.to(dtype)  # widening: NaN and inf stay
    # max |.| of each input read on the spot (eager CPU): the finite check and
    # the overflow bound below in one pass; None elsewhere (torch checks).
    maxima = [host_max_abs(tensor) for tensor in (query, keys, values)]
    for name, tensor, maximum in zip(("query", "keys", "values"), (query, keys, values), maxima):
        if maximum is None:
            require_finite(tensor, f"{name} contains NaN or inf")
        elif not math.isfinite(maximum):
            raise ValueError(f"{name} contains NaN or inf")
    largest = torch.finfo(dtype).max
    if 1.0 / temperature > largest:
        raise ValueError(f"temperature must be >= {1.0 / largest:.3g} (1 / temperature must fit {dtype}), "
                         f"got {temperature}")
    if normalize:
        query, keys = F.normalize(query, dim=1), F.normalize(keys, dim=2)
        maxima[:2] = host_max_abs(query), host_max_abs(keys)
    if batch * height * width == 0:
        return values.new_zeros((batch, values.shape[2], height, width))
    _require_in_range(query, keys, values, candidates, largest, maxima)
    out, _, _ = _propagate(query.contiguous(), keys.contiguous(), values.contiguous(), radius, 1.0 / temperature,
                           topk or 0, border)
    return out


def _check_border(border: object) -> str:
    if not isinstance(border, str):
        raise TypeError(f"border must be a str ('zero' or 'exclude'), got {type(border).__name__}")
    if border not in BORDERS:
        raise ValueError(f"border must be 'zero' or 'exclude', got {border!r}")
    return border


def _require_in_range(query: Tensor, keys: Tensor, values: Tensor, candidates: int, largest: float,
                      maxima: list[float | None]) -> None:
    """Refuse magnitudes the kernel's dtype cannot hold, instead of returning a
    wrong answer: the softmax subtracts dot products (|q . k| <= C max|q| max|k|,
    twice that for a difference) and sums up to ``candidates`` weighted values.
    Computed in float64 so that the bound itself cannot overflow: from
    ``maxima`` (max |query|, |keys|, |values| read on the host) where given,
    else in torch ops, an async assertion on CUDA, as require_finite."""
    if query.numel() == 0 or keys.numel() == 0 or values.numel() == 0:
        return
    channels = query.shape[1]
    dots_message = lambda: (f"query and keys are too large for {query.dtype}: their dot products (up to {channels} x "  # noqa: E731
                            f"max|query| x max|keys|) could overflow; scale them down or pass float64")
    values_message = lambda: (f"values are too large for {values.dtype}: max|values| x the {candidates} candidates "  # noqa: E731
                              f"must stay below {largest:.3g}; scale them down or pass float64")
    if None not in maxima:
        query_max, keys_max, values_max = maxima
        if not 2 * channels * query_max * keys_max <= largest:
            raise ValueError(dots_message())
        if not values_max * candidates <= largest:
            raise ValueError(values_message())
        return

    def dots_fit(q: Tensor, k: Tensor) -> Tensor:
        return 2 * channels * q.abs().amax().double() * k.abs().amax().double() <= largest

    require_all((query, keys), dots_fit, dots_message)
    require_all(values, lambda v: v.abs().amax().double() * candidates <= largest, values_message)


def track_video(
    features: Tensor | Iterable[Tensor],
    first_labels: Tensor,
    n_labels: int | None = None,
    *,
    radius: int = 12,
    temperature: float = 1.0,
    topk: int | None = None,
    normalize: bool = False,
    n_recent: int = 4,
    size: tuple[int, int] | None = None,
    progress: bool = False,
    border: str = "zero",
) -> Tensor:
    """Propagate a first-frame mask through a video, as MAST and CRW evaluate.

    The memory holds the first frame and the ``n_recent`` latest frames (with
    their predicted soft labels); every new frame is :func:`propagate_labels`
    from that memory, then upsampled (bilinear) and argmaxed.

    Args:
        features: T x C x h x w per-frame features (or an iterable of C x h x w).
        first_labels: H x W integer label map of frame 0 (0 = background,
            objects 1..), at any resolution; it is one-hot encoded and
            resized to h x w (bilinear on the one-hot maps).
        n_labels: labels in the video (default: the first frame's maximum + 1,
            read back from the device: pass it to avoid that sync).
        radius, temperature, topk, normalize, border: as in :func:`propagate_labels`
            (``border="exclude"``: CorrFlow's rule, one-hot mass 1 at the border too).
        n_recent: recent frames kept besides the first.
        size: output H x W (default: first_labels' size).
        progress: show a progress bar (tqdm).

    Returns:
        T x H x W int64 label maps; frame 0 is ``first_labels`` itself.

    Example:
        >>> import torch, wsss_ext
        >>> frames = torch.randn(6, 16, 20, 24)
        >>> masks = wsss_ext.track_video(frames, torch.randint(0, 3, (80, 96)), radius=4)
        >>> masks.shape
        torch.Size([6, 80, 96])
    """
    frames = list(features) if not isinstance(features, Tensor) else list(features.unbind(0))
    if not frames:
        raise ValueError("features must hold at least one frame")
    for index, frame in enumerate(frames):
        check_tensor(frame, f"features[{index}]", ndim=3, layout="C x h x w", dtypes=_FLOAT_DTYPES)
        if frame.shape != frames[0].shape:
            raise ValueError(f"features[{index}] has shape {tuple(frame.shape)}, frame 0 {tuple(frames[0].shape)}")
    first_labels = check_tensor(first_labels, "first_labels", ndim=2, layout="H x W")
    if first_labels.dtype.is_floating_point or first_labels.dtype == torch.bool:
        raise ValueError("first_labels must be a map of non-negative integer labels")
    require_all(first_labels, lambda labels: labels >= 0, "first_labels must be a map of non-negative integer labels")
    if n_labels is None:  # a host value: one sync on CUDA (pass n_labels to avoid it)
        n_labels = int(first_labels.max()) + 1
    n_labels = check_int(n_labels, "n_labels", minimum=1)
    require_all(first_labels, lambda labels: labels < n_labels,
                lambda: f"first_labels holds label {int(first_labels.max())} but n_labels is {n_labels}")
    n_recent = check_int(n_recent, "n_recent", minimum=0)
    border = _check_border(border)
    size = tuple(first_labels.shape) if size is None else check_ints(size, "size", length=2, minimum=1)
    check_allocation((len(frames), *size), torch.int64, first_labels.device, "size")  # the output
    check_allocation((n_labels, *size), torch.float32, first_labels.device, "size")  # one frame's upsampled labels
    device, height, width = frames[0].device, *frames[0].shape[1:]

    one_hot = F.one_hot(first_labels.to(device).long(), n_labels).permute(2, 0, 1)[None].float()
    memory = [(frames[0], F.interpolate(one_hot, size=(height, width), mode="bilinear", align_corners=False)[0])]
    outputs = [first_labels.to(device).long() if tuple(first_labels.shape) == size else
               F.interpolate(one_hot, size=size, mode="bilinear", align_corners=False)[0].argmax(0)]
    steps = range(1, len(frames))
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="tracking", unit="frame", leave=False)
    recent: list[tuple[Tensor, Tensor]] = []
    for t in steps:
        references = memory + recent
        keys = torch.stack([f for f, _ in references])[None]
        values = torch.stack([v for _, v in references])[None]
        soft = propagate_labels(frames[t][None], keys, values, radius, temperature, topk, normalize, border)[0]
        if n_recent:
            recent = (recent + [(frames[t], soft)])[-n_recent:]
        outputs.append(F.interpolate(soft[None], size=size, mode="bilinear", align_corners=False)[0].argmax(0))
    return torch.stack(outputs)
