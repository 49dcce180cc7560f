"""Fully connected CRF mean-field inference (Krähenbühl & Koltun, NIPS 2011),
the refinement step of AffinityNet, IRNet, SEAM, Puzzle-CAM and RecurSeed,
computing exactly what pydensecrf's ``DenseCRF2D`` computes with
``addPairwiseGaussian`` + ``addPairwiseBilateral`` and ``inference(n_iters)``,
for a batch of images in one call, on the CPU (OpenMP) or a GPU.

The update, with Potts compatibility and symmetric normalisation::

    Q = softmax(-U)
    repeat n_iters times:
        Q = softmax(-U + w_g * Kn_g(Q) + w_b * Kn_b(Q))

where ``Kn = D^-1/2 K D^-1/2``, ``K`` a Gaussian kernel over pixel features
(``(x, y) / sxy`` for the smoothness term; ``(x, y) / sxy, (r, g, b) / srgb``
for the appearance term; a pixel's own term included) and ``D = K 1``. ``K`` is
applied with the permutohedral lattice (Adams et al. 2010) built once per
image and kernel; ``wsss_ext.reference.dense_crf_dense`` applies it exactly in
O(N^2) for small images.
"""

from __future__ import annotations

import math

import torch
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
    require_all,
    require_finite,
    runs_on_cuda,
    vmap_into_batch,
)
from wsss_ext.ops._workspace import dense_crf_workspaces

__all__ = ["dense_crf", "unary_from_labels", "unary_from_probs"]

_UNARY_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# Lattice entries (pixels x (d + 1)) are indexed with int32.
_MAX_ENTRIES = 2**31 - 1
_MAX_PIXELS = _MAX_ENTRIES // 6  # d = 5: six corners per pixel
_MAX_FEATURE = 2**24  # scaled feature values stay exact-ish in float32 and far from int32 overflow
# Pixels per kernel call of the batched lattice on the CPU (the path the
# tests compare against), where batches run a few images at a time.
_CPU_CHUNK_PIXELS = 1 << 19
# Images up to this many pixels (all of them) run image by image on the CPU:
# one kernel call for the batch, each thread taking whole images, or all
# threads sharing each image when there are fewer images than threads. One
# image's lattices (built sequentially, with a hash table that stays in
# cache) and rows are the working set; the batched lattice, whose stages each
# spread over the whole batch, is slower at every size.
_CPU_IMAGE_PIXELS = _MAX_PIXELS
# ... as long as the workspace stays below this many bytes: its rows are
# sized for every lattice corner being its own vertex (the vertex count is
# known only once a lattice is built), and only the pages an image needs are
# touched, but an allocation far beyond memory would be refused. About 2 GB
# a thread for a 512 x 512 image with COCO's 81 labels; larger images or
# label counts take the batched lattice, whose buffers follow the vertex count.
_CPU_WORKSPACE_BYTES = 1 << 33


def _lattice_is_identity(dims: int, sxy: float) -> bool:
    """Whether the lattice filter of a kernel of spatial width ``sxy`` is
    exactly the identity, ``Kn q = q``, on any image.

    The embedding scales feature distances by ``(d + 1) sqrt(2/3)``, so two
    pixels (at least one pixel apart) lie at least that over ``sxy`` apart on
    the lattice's plane. A pixel writes only to the corners of its simplex
    (within one simplex diameter ``sqrt(k (d + 1 - k) (d + 1))``, ``k = (d + 1) // 2``,
    of it), the blur moves values only between existing vertices one step
    ``sqrt(d (d + 1))`` apart, and a pixel reads only its own corners. When
    pixels are more than two diameters and a step apart, no vertex is shared
    and no blur edge joins two pixels' vertices: ``K`` is diagonal and
    ``D^-1/2 K D^-1/2`` the identity. For the smoothness kernel (d = 2) that is
    ``sxy < 1/3``: SEC/DSRG's ``3 / 12`` on 41 x 41 maps. pydensecrf's lattice
    is the same (its message equals ``q`` to 1e-6 there); at ``sxy = 0.34`` it
    no longer is. (A 2% margin keeps float rounding off the boundary.)
    """
    k = (dims + 1) // 2
    diameter = math.sqrt(k * (dims + 1 - k) * (dims + 1))
    step = math.sqrt(dims * (dims + 1))
    spacing = (dims + 1) * math.sqrt(2.0 / 3.0) / sxy
    return spacing > 1.02 * (2 * diameter + step)


def _build_lattice(image: Tensor, dims: int, sxy: float, srgb: float, stream: int) -> tuple[dict, int]:
    """Embeds the batch in a d-dimensional lattice; returns its buffers and vertex count."""
    batch, _, height, width = image.shape
    entries = batch * height * width * (dims + 1)
    int32 = dict(dtype=torch.int32, device=image.device)
    lattice = {
        "dims": dims,
        "images": batch,
        "height": height,
        "width": width,
        "simplex": torch.empty((batch * height * width, dims), **int32),
        "weights": torch.empty(entries, dtype=torch.float32, device=image.device),
        "entry_rep": torch.empty(entries, **int32),
        "entry_vertex": torch.empty(entries, **int32),
        "vertex_entry": torch.empty(entries, **int32),
        # Load factor <= 3/4 even if every corner were distinct (images
        # have far fewer vertices than corners: typically 2-15%).
        "slots": torch.empty(1 << (4 * entries // 3).bit_length(), **int32),
        "counter": torch.empty(1, **int32),
    }
    vertices = _C.dense_crf_build_vertices(lattice, image, sxy, srgb, stream)
    return lattice, vertices


def _link_lattice(lattice: dict, vertices: int, values_a: Tensor, values_b: Tensor, stream: int) -> None:
    """Adds blur neighbours, splat lists and normalisation; drops the hash table."""
    device = lattice["weights"].device
    entries = lattice["weights"].numel()
    int32 = dict(dtype=torch.int32, device=device)
    lattice["neighbours"] = torch.empty((lattice["dims"] + 1, vertices, 2), **int32)
    lattice["splat_start"] = torch.empty(vertices + 1, **int32)
    lattice["splat_pixels"] = torch.empty(entries, **int32)
    lattice["splat_weights"] = torch.empty(entries, dtype=torch.float32, device=device)
    lattice["norm"] = torch.empty(entries // (lattice["dims"] + 1), dtype=torch.float32, device=device)
    scratch_bytes = _C.dense_crf_scratch_bytes(vertices, entries, runs_on_cuda(lattice["weights"]))
    lattice["scratch"] = torch.empty(scratch_bytes, dtype=torch.uint8, device=device)
    _C.dense_crf_link(lattice, vertices, values_a, values_b, stream)
    for build_only in ("simplex", "entry_rep", "vertex_entry", "slots", "counter", "scratch"):
        del lattice[build_only]


@fast_custom_op("wsss_ext::dense_crf")
def _dense_crf(
    unary: Tensor,
    image: Tensor,
    n_iters: int,
    gaussian_sxy: float,
    gaussian_weight: float,
    bilateral_sxy: float,
    bilateral_srgb: float,
    bilateral_weight: float,
) -> Tensor:
    """Mean-field on contiguous, checked inputs: unary [B, L, H, W], image [B, 3, H, W] uint8."""
    kernels = []  # (dims, sxy, srgb, weight) of the Gaussian kernels in use
    identity_weight = 0.0  # total weight of the kernels that are the identity
    for dims, sxy, srgb, weight in ((2, gaussian_sxy, 0.0, gaussian_weight),
                                    (5, bilateral_sxy, bilateral_srgb, bilateral_weight)):
        if n_iters == 0 or weight == 0:
            continue
        if _lattice_is_identity(dims, sxy):
            identity_weight += weight
        else:
            kernels.append((dims, sxy, srgb, weight))
    batch, _, height, width = unary.shape
    cuda = runs_on_cuda(unary)
    if not cuda and height * width <= _CPU_IMAGE_PIXELS:
        workers = max(1, min(batch, _C.cpu_threads()))
        row_bytes = _C.dense_crf_workspace_bytes(height * width, unary.shape[1], [dims for dims, *_ in kernels])
        if workers * row_bytes <= _CPU_WORKSPACE_BYTES:
            return _mean_field_by_image(unary, image, n_iters, kernels, identity_weight, workers, row_bytes)
    chunk_pixels = _MAX_PIXELS if cuda else _CPU_CHUNK_PIXELS
    if batch * height * width <= chunk_pixels:
        return _mean_field(unary, image, n_iters, kernels, identity_weight)
    # On the CPU a whole batch gains nothing over a few images at a time (each
    # image is already spread over the threads) and would hold every image's
    # buffers at once; on CUDA only batches beyond int32 indexing are split.
    # Each chunk writes its slice of one output (no concatenated copy).
    chunk = max(1, chunk_pixels // (height * width))
    out = torch.empty(unary.shape, dtype=torch.float32, device=unary.device)
    for i in range(0, batch, chunk):
        _mean_field(unary[i : i + chunk], image[i : i + chunk], n_iters, kernels, identity_weight, out[i : i + chunk])
    return out


def _mean_field_by_image(
    unary: Tensor,
    image: Tensor,
    n_iters: int,
    kernels: list[tuple[int, float, float, float]],
    identity_weight: float,
    workers: int,
    row_bytes: int,
) -> Tensor:
    """The CPU's path: one call, each thread running whole images in its own
    row of the workspace, or all threads each image in row 0 when the batch
    is smaller than the thread count (bit for bit the batched path's result
    either way). Rows are sized for every corner being its own vertex; only
    the pages an image needs are touched, so only those take memory. The
    workspace is the cached one (``wsss_ext.empty_cache()`` frees it)."""
    out = torch.empty(unary.shape, dtype=torch.float32)
    # Kept between calls (_workspace.py): a fresh buffer's pages fault in
    # again on every call, about a tenth of a VOC image's time.
    buffer = dense_crf_workspaces.take(workers * row_bytes)
    try:
        workspace = buffer[: workers * row_bytes].view(workers, row_bytes)
        _C.dense_crf_mean_field(unary, image, out, workspace, n_iters, kernels, identity_weight)
    finally:
        dense_crf_workspaces.give(buffer)
    return out


def _mean_field(
    unary: Tensor,
    image: Tensor,
    n_iters: int,
    kernels: list[tuple[int, float, float, float]],
    identity_weight: float,
    out: Tensor | None = None,
) -> Tensor:
    """Lattices of the batch, then n_iters of filter-and-softmax; q and the
    pairwise term are pixel-major rows, the result [B, L, H, W] (into ``out``,
    contiguous, if given). Kernels that are the identity add
    ``identity_weight * q`` to the pairwise term."""
    batch, n_labels, height, width = unary.shape
    stream = cuda_stream(unary)
    device = unary.device
    if out is None:
        out = torch.empty(unary.shape, dtype=torch.float32, device=device)
    # Pixel-major rows; on the CPU padded to whole 8-float vectors.
    row = n_labels if runs_on_cuda(unary) else -(-n_labels // 8) * 8
    q = torch.empty((batch * height * width, row), dtype=torch.float32, device=device)
    if not kernels and identity_weight == 0:
        _C.dense_crf_softmax(unary, None, q, out, stream)
        return out

    # One lattice after the other, so that the second reuses the memory of
    # the first one's hash table and build buffers.
    built = []
    for dims, sxy, srgb, weight in kernels:
        lattice, vertices = _build_lattice(image, dims, sxy, srgb, stream)
        ones_a = torch.empty(vertices, dtype=torch.float32, device=device)
        _link_lattice(lattice, vertices, ones_a, torch.empty_like(ones_a), stream)
        built.append(((lattice, vertices), weight))
    max_vertices = max((vertices for (_, vertices), _ in built), default=1)
    values_a = torch.empty(max_vertices * row, dtype=torch.float32, device=device)
    values_b = torch.empty_like(values_a)

    pairwise = torch.empty_like(q)
    _C.dense_crf_softmax(unary, None, q, None, stream)
    for iteration in range(n_iters):
        for k, ((lattice, vertices), weight) in enumerate(built):
            _C.dense_crf_filter(lattice, vertices, q, pairwise, weight, k > 0, values_a, values_b, stream)
        if identity_weight and built:
            pairwise.add_(q, alpha=identity_weight)
        elif identity_weight:
            torch.mul(q, identity_weight, out=pairwise)
        last = iteration == n_iters - 1
        _C.dense_crf_softmax(unary, pairwise, q, out if last else None, stream)
    return out


@_dense_crf.register_fake
def _(unary, image, n_iters, gaussian_sxy, gaussian_weight, bilateral_sxy, bilateral_srgb, bilateral_weight):
    return unary.new_empty(unary.shape, dtype=torch.float32)


# vmap: the mapped dimension joins the batch of images.
vmap_into_batch(_dense_crf)


def dense_crf(
    unary: Tensor,
    image: Tensor,
    n_iters: int = 10,
    *,
    gaussian_sxy: float = 3.0,
    gaussian_weight: float = 3.0,
    bilateral_sxy: float = 80.0,
    bilateral_srgb: float = 13.0,
    bilateral_weight: float = 10.0,
) -> Tensor:
    """Dense CRF mean-field inference, as pydensecrf's ``DenseCRF2D`` computes it.

    Equivalent pydensecrf calls, one image at a time::

        crf = dcrf.DenseCRF2D(W, H, L)
        crf.setUnaryEnergy(unary.reshape(L, -1))
        crf.addPairwiseGaussian(sxy=gaussian_sxy, compat=gaussian_weight)
        crf.addPairwiseBilateral(sxy=bilateral_sxy, srgb=bilateral_srgb, rgbim=image_hwc,
                                 compat=bilateral_weight)
        Q = crf.inference(n_iters)

    Args:
        unary: ``[B, L, H, W]`` (or ``[L, H, W]``) energies ``-log p``, any
            float dtype, finite. ``unary_from_probs`` and ``unary_from_labels``
            make them. Any label count (VOC 21, COCO 81, ...).
        image: ``[B, 3, H, W]`` (or ``[3, H, W]``) uint8 RGB, same device and
            size. From an ``H x W x 3`` numpy image:
            ``torch.from_numpy(img).permute(2, 0, 1)``.
        n_iters: mean-field iterations; 0 returns ``softmax(-unary)``.
        gaussian_sxy: smoothness kernel width in pixels.
        gaussian_weight: its Potts weight (pydensecrf's ``compat``); 0 drops it.
        bilateral_sxy: appearance kernel width in pixels.
        bilateral_srgb: appearance kernel width in colour levels.
        bilateral_weight: its Potts weight; 0 drops it.

    Returns:
        ``Q``: float32 probabilities, the shape of ``unary``; no gradient flows
        through it (use it as a target, as the SEC/DSRG losses do).

    Defaults are AffinityNet's; IRNet uses ``bilateral_sxy=50, bilateral_srgb=5``
    and RecurSeed ``gaussian_sxy=1, bilateral_sxy=67, bilateral_srgb=3,
    bilateral_weight=4``. On maps downscaled by ``s``, divide both ``sxy`` by
    ``s`` (``wsss_ext.nn.DenseCRF.preset`` does).

    The lattice filter approximates the Gaussian kernels (as pydensecrf's
    does); on CUDA the splat lists are sorted, so results repeat run to run,
    and differ from the CPU's by float rounding only.

    Example:
        >>> import torch, wsss_ext
        >>> image = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
        >>> image[..., 4:] = 255                      # two flat halves
        >>> probs = torch.full((1, 2, 8, 8), 0.4)
        >>> probs[:, 0, :, :4] = 0.6                  # weakly "label 0" on the left
        >>> probs[:, 1] = 1 - probs[:, 0]
        >>> q = wsss_ext.dense_crf(wsss_ext.unary_from_probs(probs), image, 5)
        >>> q.argmax(1)[0, 0].tolist()
        [0, 0, 0, 0, 1, 1, 1, 1]
    """
    unbatched = isinstance(unary, Tensor) and unary.dim() == 3
    check_tensor(unary, "unary", ndim=3 if unbatched else 4, layout="B x L x H x W", dtypes=_UNARY_DTYPES)
    check_tensor(image, "image", ndim=3 if unbatched else 4, layout="B x 3 x H x W", dtypes=(torch.uint8,))
    if unbatched:
        unary, image = unary.unsqueeze(0), image.unsqueeze(0)
    if image.device != unary.device:
        raise ValueError(f"image is on {image.device} but unary is on {unary.device}")
    if image.shape[1] != 3:
        raise ValueError(f"image must have 3 (RGB) channels, got shape {tuple(image.shape)}")
    batch, n_labels, height, width = unary.shape
    if image.shape[0] != batch or image.shape[2:] != unary.shape[2:]:
        raise ValueError(
            f"image {tuple(image.shape)} does not match unary {tuple(unary.shape)}: "
            "need the same batch size, height and width"
        )
    if n_labels < 1:
        raise ValueError(f"unary needs at least one label, got shape {tuple(unary.shape)}")
    n_iters = check_iterations(n_iters, "n_iters")
    gaussian_sxy = check_real(gaussian_sxy, "gaussian_sxy", positive=True)
    bilateral_sxy = check_real(bilateral_sxy, "bilateral_sxy", positive=True)
    bilateral_srgb = check_real(bilateral_srgb, "bilateral_srgb", positive=True)
    gaussian_weight = check_real(gaussian_weight, "gaussian_weight")
    bilateral_weight = check_real(bilateral_weight, "bilateral_weight")
    for name, weight in (("gaussian_weight", gaussian_weight), ("bilateral_weight", bilateral_weight)):
        if weight < 0:
            raise ValueError(f"{name} must be >= 0 (a Potts weight), got {weight}")
    # Lattice coordinates are int32 of features up to (extent / width) * (d + 1).
    for name, value, extent in (
        ("gaussian_sxy", gaussian_sxy, max(height, width)),
        ("bilateral_sxy", bilateral_sxy, max(height, width)),
        ("bilateral_srgb", bilateral_srgb, 255),
    ):
        if extent / value > _MAX_FEATURE:
            raise ValueError(f"{name}={value} is too small: features up to {extent / value:.3g} (limit {_MAX_FEATURE})")
    if height * width > _MAX_PIXELS:
        raise ValueError(f"images of {height}x{width} are too large (limit {_MAX_PIXELS} pixels per image)")

    unary = unary.detach()
    if unary.numel() == 0:
        result = unary.new_empty(unary.shape, dtype=torch.float32)
    else:
        require_finite(unary, "unary has NaN or infinite energies; clip probabilities first (unary_from_probs does)")
        result = _dense_crf(
            unary.contiguous(),
            image.contiguous(),
            n_iters,
            gaussian_sxy,
            gaussian_weight,
            bilateral_sxy,
            bilateral_srgb,
            bilateral_weight,
        )
    return result.squeeze(0) if unbatched else result


def unary_from_probs(probs: Tensor, clip: float = 1e-5) -> Tensor:
    """Unary energies ``-log(clamp(probs, clip, 1))``: pydensecrf's ``unary_from_softmax``.

    Args:
        probs: class probabilities, ``[B, L, H, W]`` or ``[L, H, W]``, floating.
        clip: smallest probability kept, in ``(0, 1]``; keeps energies finite.

    Returns:
        Energies of the same shape and dtype.
    """
    check_tensor(probs, "probs", dtypes=_UNARY_DTYPES)
    if probs.dim() not in (3, 4):
        raise ValueError(f"probs must be L x H x W or B x L x H x W, got shape {tuple(probs.shape)}")
    clip = check_real(clip, "clip", positive=True)
    if clip > 1:
        raise ValueError(f"clip must be in (0, 1], got {clip}")
    # min(-log p, -log clip) rather than -log(clamp(p, clip)): a clip below the
    # dtype's range (1e-300 in float32) would round to 0 in the clamp and give
    # inf; -log(clip) is a finite Python float for every positive clip.
    require_finite(probs, "probs contains NaN or inf")
    return (-torch.log(probs.clamp(0.0, 1.0))).clamp(max=-math.log(clip))


def unary_from_labels(labels: Tensor, n_labels: int, gt_prob: float = 0.7, ignore_index: int | None = None) -> Tensor:
    """Unary energies from a hard label map, as pydensecrf's ``unary_from_labels``.

    A pixel labelled ``c`` gets energy ``-log(gt_prob)`` for ``c`` and
    ``-log((1 - gt_prob) / (n_labels - 1))`` for every other label; a pixel
    labelled ``ignore_index`` is unsure: ``-log(1 / n_labels)`` everywhere.

    pydensecrf's default ``zero_unsure=True`` shifts labels by one (0 is
    unsure, 1..n are the classes): pass ``labels - 1`` with ``ignore_index=-1``.
    IRNet's call (``zero_unsure=False``) is ``unary_from_labels(labels, n, 0.7)``.

    Args:
        labels: integer map ``[B, H, W]`` or ``[H, W]``.
        n_labels: number of classes L.
        gt_prob: confidence in the given labels, in ``(0, 1)``.
        ignore_index: label value meaning "unsure", or None.

    Returns:
        float32 energies ``[B, L, H, W]`` (or ``[L, H, W]``).
    """
    check_tensor(labels, "labels", dtypes=(torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8))
    if labels.dim() not in (2, 3):
        raise ValueError(f"labels must be H x W or B x H x W, got shape {tuple(labels.shape)}")
    n_labels = check_int(n_labels, "n_labels", minimum=1)
    gt_prob = check_real(gt_prob, "gt_prob")
    if not 0 < gt_prob < 1:
        raise ValueError(f"gt_prob must be in (0, 1), got {gt_prob}")
    if ignore_index is not None:
        ignore_index = check_int(ignore_index, "ignore_index")
    check_allocation((*labels.shape, n_labels), torch.float32, labels.device, "n_labels")
    labels = labels.long()
    unsure = labels == ignore_index if ignore_index is not None else torch.zeros_like(labels, dtype=torch.bool)
    in_range = ((labels >= 0) & (labels < n_labels)) | unsure

    def out_of_range() -> str:
        sure = labels[~unsure]
        return (f"labels must be in [0, {n_labels}) or equal ignore_index={ignore_index}; "
                f"found values in [{int(sure.min())}, {int(sure.max())}]")

    require_all(in_range, lambda ok: ok, out_of_range)
    # Energies as float32 constants (no tensor round trip: nothing to read back from a device).
    sure_energy, other_energy = -math.log(gt_prob), -math.log((1.0 - gt_prob) / max(n_labels - 1, 1))
    classes = torch.arange(n_labels, device=labels.device)
    energies = torch.where(labels.unsqueeze(-1) == classes, sure_energy, other_energy).to(torch.float32)
    energies = torch.where(unsure.unsqueeze(-1), math.log(n_labels), energies).to(torch.float32)
    return energies.movedim(-1, -3).contiguous()
