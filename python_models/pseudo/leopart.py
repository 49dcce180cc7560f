"""Leopart's spatial pieces (Ziegler & Asano, "Self-Supervised Learning of
Object Parts for Semantic Segmentation", CVPR 2022; MkuuWaUjinga/leopart):

- :func:`roi_align`: torchvision's ``roi_align`` (``aligned=True``
  semantics, adaptive sampling) written with ``F.grid_sample``, since
  torchvision does not import beside these machines' CPU torch.
- :func:`crop_intersections`: the boxes of every (global crop, crop)
  intersection in both crops' coordinates (``src/leopart_transforms.py``,
  ``calculate_bboxes``).
- :func:`cls_attention_map` and :func:`attention_foreground`: the
  foreground mask from a ViT's last attention, blurred (7 x 7, σ 0.6),
  keeping the smallest set of patches holding 60 % of the attention *mass*,
  8-connected components of at most 2 patches dropped
  (``experiments/utils.py``, ``process_attentions``).
- :func:`cluster_precisions`, :func:`cbfe_search_cut`, :func:`cbfe`:
  cluster-based foreground extraction (``experiments/fully_unsup_seg/
  fully_unsup_seg.py``): each cluster's precision against the attention
  mask; clusters below a cut become background.

Leopart's community detection (co-occurrence graph + Infomap) is not here: it
needs the ``infomap`` package and a dataset-level graph, outside a method's
training step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from python_models._checks import check_int, check_real

__all__ = [
    "attention_foreground",
    "cbfe",
    "cbfe_search_cut",
    "cls_attention_map",
    "cluster_precisions",
    "crop_intersections",
    "drop_small_components",
    "gaussian_blur",
    "keep_attention_mass",
    "roi_align",
]

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _float_tensor(value: object, name: str, ndim: int, layout: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in _FLOATS:
        raise TypeError(f"{name} must be a float tensor, got dtype {value.dtype}")
    if value.dim() != ndim:
        raise ValueError(f"{name} must be {layout}, got shape {tuple(value.shape)}")
    if not torch.isfinite(value).all():
        raise ValueError(f"{name} has NaN or infinite values")
    return value


def _integer_map(value: object, name: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype.is_floating_point or value.dtype == torch.bool or value.is_complex():
        raise TypeError(f"{name} must be an integer tensor, got dtype {value.dtype}")
    if value.dim() != 3:
        raise ValueError(f"{name} must be B x H x W, got shape {tuple(value.shape)}")
    return value.long()


# ---------------------------------------------------------------------------
# RoIAlign
# ---------------------------------------------------------------------------


def _roi_rows(boxes: object, batch: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """K x 5 (batch index, x1, y1, x2, y2) from either accepted box form."""
    if isinstance(boxes, Tensor):
        rows = _float_tensor(boxes, "boxes", 2, "K x 5 (batch index, x1, y1, x2, y2)")
        if rows.shape[1] != 5:
            raise ValueError(f"boxes must be K x 5 (batch index, x1, y1, x2, y2), got shape {tuple(rows.shape)}")
        index = rows[:, 0]
        if rows.shape[0] and (index.min() < 0 or index.max() >= batch or not torch.equal(index, index.round())):
            raise ValueError(f"boxes[:, 0] must hold batch indices in [0, {batch})")
        return rows.to(device=device, dtype=dtype)
    if not isinstance(boxes, Sequence) or isinstance(boxes, str):
        raise TypeError(f"boxes must be a K x 5 tensor or a sequence of B tensors K_i x 4, got {type(boxes).__name__}")
    if len(boxes) != batch:
        raise ValueError(f"boxes holds {len(boxes)} tensors but input has batch {batch}")
    rows = []
    for b, per_image in enumerate(boxes):
        per_image = _float_tensor(per_image, f"boxes[{b}]", 2, "K_i x 4 (x1, y1, x2, y2)")
        if per_image.shape[1] != 4:
            raise ValueError(f"boxes[{b}] must be K_i x 4 (x1, y1, x2, y2), got shape {tuple(per_image.shape)}")
        index = torch.full((per_image.shape[0], 1), float(b), dtype=dtype, device=device)
        rows.append(torch.cat([index, per_image.to(device=device, dtype=dtype)], 1))
    return torch.cat(rows) if rows else torch.zeros(0, 5, dtype=dtype, device=device)


def roi_align(input: Tensor, boxes: Tensor | Sequence[Tensor], output_size: int | tuple[int, int] = 7,
              spatial_scale: float = 1.0, sampling_ratio: int = -1, aligned: bool = True) -> Tensor:
    """RoIAlign (He et al., Mask R-CNN) with torchvision's semantics, by ``F.grid_sample``.

    For box ``(x1, y1, x2, y2)`` (scaled by ``spatial_scale``; minus half a
    pixel when ``aligned``, so a box's edges sit on pixel edges and pixel i's
    centre is at i + 0.5 in box coordinates), bin (i, j) of the
    ``output_size`` grid averages the bilinear samples at the centres of a
    ``g_h x g_w`` grid inside it, ``g = sampling_ratio`` or, for -1,
    ``ceil(box side / output side)`` per box (torchvision's adaptive rule).
    A sample further than one pixel outside the map counts as 0; closer ones
    are clamped to the border pixel (torchvision's ``bilinear_interpolate``).
    Differentiable in ``input`` (Leopart aligns the student's predictions).

    Args:
        input: N x C x H x W.
        boxes: K x 5 (batch index, x1, y1, x2, y2), or a sequence of N
            tensors K_i x 4 (torchvision's list form: box rows of image i).
        output_size: (h, w) of each output (7 in Leopart) or one int.
        spatial_scale: multiplies the box coordinates (Leopart passes boxes
            in crop pixels divided by the patch size, scale 1).
        sampling_ratio: samples per bin side; -1 adaptive.
        aligned: torchvision's ``aligned`` (Leopart: True).

    Returns:
        K x C x h x w, in the order of the box rows.

    Example (a full-map box returns the map):
        >>> import torch
        >>> grid = torch.arange(49.0).view(1, 1, 7, 7)
        >>> bool(torch.allclose(roi_align(grid, [torch.tensor([[0.0, 0.0, 7.0, 7.0]])], 7), grid))
        True
    """
    input = _float_tensor(input, "input", 4, "N x C x H x W")
    if isinstance(output_size, int) and not isinstance(output_size, bool):
        output_size = (output_size, output_size)
    if (not isinstance(output_size, Sequence) or len(output_size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in output_size)):
        raise ValueError(f"output_size must be a positive int or (h, w), got {output_size!r}")
    spatial_scale = check_real(spatial_scale, "spatial_scale", positive=True)
    sampling_ratio = check_int(sampling_ratio, "sampling_ratio", minimum=-1)
    if sampling_ratio == 0:
        raise ValueError("sampling_ratio must be -1 (adaptive) or >= 1, got 0")
    n, c, height, width = input.shape
    out_h, out_w = output_size
    rois = _roi_rows(boxes, n, input.dtype, input.device)
    k = rois.shape[0]
    if k == 0:
        return input.new_zeros(0, c, out_h, out_w)
    offset = 0.5 if aligned else 0.0
    x1, y1 = rois[:, 1] * spatial_scale - offset, rois[:, 2] * spatial_scale - offset
    roi_w, roi_h = rois[:, 3] * spatial_scale - offset - x1, rois[:, 4] * spatial_scale - offset - y1
    if not aligned:  # torchvision forces malformed boxes to 1 x 1 only in the legacy mode
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    bin_w, bin_h = roi_w / out_w, roi_h / out_h
    if sampling_ratio > 0:
        grid_h = torch.full((k,), sampling_ratio, dtype=torch.long, device=input.device)
        grid_w = grid_h.clone()
    else:
        grid_h, grid_w = torch.ceil(roi_h / out_h).long(), torch.ceil(roi_w / out_w).long()
    count = (grid_h * grid_w).clamp(min=1).to(input.dtype)
    grid_h, grid_w = grid_h.clamp(min=0), grid_w.clamp(min=0)
    most_h, most_w = max(int(grid_h.max()), 1), max(int(grid_w.max()), 1)

    def coordinates(start, bins, grid, most, out):
        # K x out x most sample positions and whether each is one of the box's samples.
        cell = torch.arange(out, dtype=input.dtype, device=input.device).view(1, out, 1)
        sub = torch.arange(most, dtype=input.dtype, device=input.device).view(1, 1, most)
        steps = grid.clamp(min=1).to(input.dtype).view(k, 1, 1)
        position = start.view(k, 1, 1) + cell * bins.view(k, 1, 1) + (sub + 0.5) * bins.view(k, 1, 1) / steps
        used = sub < grid.view(k, 1, 1).to(input.dtype)
        return position.reshape(k, out * most), used.expand(k, out, most).reshape(k, out * most)

    ys, y_used = coordinates(y1, bin_h, grid_h, most_h, out_h)
    xs, x_used = coordinates(x1, bin_w, grid_w, most_w, out_w)
    y_inside = y_used & (ys >= -1.0) & (ys <= height)
    x_inside = x_used & (xs >= -1.0) & (xs <= width)
    weight = (y_inside[:, :, None] & x_inside[:, None, :]).to(input.dtype) / count.view(k, 1, 1)
    # Clamp to the border as torchvision does, then sample with align_corners=True (pixel i at i).
    gy = 2.0 * ys.clamp(0, height - 1) / max(height - 1, 1) - 1.0
    gx = 2.0 * xs.clamp(0, width - 1) / max(width - 1, 1) - 1.0
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)
    sampled = F.grid_sample(input[rois[:, 0].long()], grid, mode="bilinear", padding_mode="border",
                            align_corners=True)
    sampled = sampled * weight[:, None]
    return sampled.view(k, c, out_h, most_h, out_w, most_w).sum((3, 5))


# ---------------------------------------------------------------------------
# Crop boxes
# ---------------------------------------------------------------------------


def crop_intersections(crop_boxes: Tensor, crop_sizes: Sequence[int | tuple[int, int]],
                       n_global: int = 2) -> tuple[Tensor, Tensor]:
    """The intersection of every global crop g with every crop v, as a box in
    g's pixel coordinates and as a box in v's (Leopart ``calculate_bboxes``).

    A point (x, y) of the original image is at ``(W_a (x - a_x0) / (a_x1 -
    a_x0), H_a (y - a_y0) / (a_y1 - a_y0))`` in crop a resized to H_a x W_a.

    Args:
        crop_boxes: B x V x 4 boxes (x0, y0, x1, y1) of the V crops in the
            original image's pixel coordinates, the ``n_global`` global
            crops first.
        crop_sizes: V crop sizes after resizing, each an int (square) or (h, w).
        n_global: G, the number of global crops.

    Returns:
        ``(in_global, in_crop)``: B x G x V x 4, the box of (g, v) in g's
        pixels (Leopart's ``bboxes["gc"]``), and B x V x G x 4, the same
        intersection in v's pixels (Leopart's ``bboxes["all"]``).

    Raises:
        ValueError: two crops that do not overlap (Leopart samples crops with
            a minimum intersection).

    >>> import torch
    >>> boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0]]])
    >>> in_global, in_crop = crop_intersections(boxes, [20, 20], n_global=1)
    >>> in_global[0, 0, 1].tolist(), in_crop[0, 1, 0].tolist()
    ([10.0, 0.0, 20.0, 20.0], [0.0, 0.0, 10.0, 20.0])
    """
    crop_boxes = _float_tensor(crop_boxes, "crop_boxes", 3, "B x V x 4 (x0, y0, x1, y1)")
    if crop_boxes.shape[2] != 4:
        raise ValueError(f"crop_boxes must be B x V x 4 (x0, y0, x1, y1), got shape {tuple(crop_boxes.shape)}")
    views = crop_boxes.shape[1]
    n_global = check_int(n_global, "n_global", minimum=1)
    if n_global > views:
        raise ValueError(f"n_global ({n_global}) exceeds the {views} crops of crop_boxes")
    if not isinstance(crop_sizes, Sequence) or len(crop_sizes) != views:
        raise ValueError(f"crop_sizes must give one size per crop ({views}), got {crop_sizes!r}")
    sizes = []
    for size in crop_sizes:
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        sizes.append((float(w), float(h)))
    if ((crop_boxes[..., 2:] - crop_boxes[..., :2]) <= 0).any():
        raise ValueError("crop_boxes must have x1 > x0 and y1 > y0")
    scale = crop_boxes.new_tensor(sizes)  # V x 2 (w, h)
    globals_ = crop_boxes[:, :n_global]
    top_left = torch.maximum(globals_[:, :, None, :2], crop_boxes[:, None, :, :2])  # B x G x V x 2
    bottom_right = torch.minimum(globals_[:, :, None, 2:], crop_boxes[:, None, :, 2:])
    if ((bottom_right - top_left) <= 0).any():
        raise ValueError("crop_boxes holds a crop that does not overlap a global crop")

    def to_crop(points, boxes, size):  # points ... x 2 in the image -> in the crops `boxes` (... x 4)
        return size * (points - boxes[..., :2]) / (boxes[..., 2:] - boxes[..., :2])

    g_origin, g_size = globals_[:, :, None], scale[:n_global].view(1, n_global, 1, 2)
    in_global = torch.cat([to_crop(top_left, g_origin, g_size), to_crop(bottom_right, g_origin, g_size)], -1)
    v_origin, v_size = crop_boxes[:, None], scale.view(1, 1, views, 2)
    in_crop = torch.cat([to_crop(top_left, v_origin, v_size), to_crop(bottom_right, v_origin, v_size)], -1)
    return in_global, in_crop.transpose(1, 2).contiguous()


# ---------------------------------------------------------------------------
# The attention foreground mask
# ---------------------------------------------------------------------------


def cls_attention_map(attention: Tensor, grid: tuple[int, int]) -> Tensor:
    """The [CLS] token's attention to the patches, averaged over the heads:
    B x heads x (1 + N) x (1 + N) (a ViT's last attention) -> B x h x w,
    ``N = h w`` (Leopart: ``attn[:, :, 0, 1:]`` averaged over heads)."""
    attention = _float_tensor(attention, "attention", 4, "B x heads x (1 + N) x (1 + N)")
    h, w = grid
    if attention.shape[-1] != attention.shape[-2] or attention.shape[-1] != 1 + h * w:
        raise ValueError(f"attention must be B x heads x (1 + N) x (1 + N) with N = {h} x {w}, "
                         f"got shape {tuple(attention.shape)}")
    return attention[:, :, 0, 1:].mean(1).reshape(attention.shape[0], h, w)


def gaussian_blur(maps: Tensor, kernel_size: int = 7, sigma: float = 0.6) -> Tensor:
    """torchvision's ``GaussianBlur(kernel_size, sigma)`` of B x H x W maps:
    the separable kernel ``exp(-x² / 2σ²)`` on ``x = -(k-1)/2 .. (k-1)/2``,
    normalised, with reflect padding (replicate padding on a side too short
    to reflect, where torchvision would fail)."""
    maps = _float_tensor(maps, "maps", 3, "B x H x W")
    kernel_size = check_int(kernel_size, "kernel_size", minimum=1)
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd, got {kernel_size}")
    sigma = check_real(sigma, "sigma", positive=True)
    half = kernel_size // 2
    x = torch.linspace(-half, half, kernel_size, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    image = maps[:, None]
    mode = "reflect" if min(maps.shape[-2:]) > half else "replicate"
    image = F.pad(image, (half, half, half, half), mode=mode)
    image = F.conv2d(image, kernel.view(1, 1, 1, -1))
    image = F.conv2d(image, kernel.view(1, 1, -1, 1))
    return image[:, 0]


def keep_attention_mass(maps: Tensor, fraction: float = 0.6) -> Tensor:
    """The smallest set of pixels whose values hold ``fraction`` of each map's
    mass: B x H x W non-negative maps -> B x H x W bool.

    DINO's / Leopart's rule: sort ascending, normalise, keep the pixels where
    the cumulative mass exceeds ``1 - fraction``. The kept mass is
    >= ``fraction`` and dropping the smallest kept pixel would leave less.
    """
    maps = _float_tensor(maps, "maps", 3, "B x H x W")
    fraction = check_real(fraction, "fraction")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    if (maps < 0).any():
        raise ValueError("maps must be non-negative (attention weights)")
    flat = maps.flatten(1).double()
    values, order = torch.sort(flat, dim=1)
    total = values.sum(1, keepdim=True)
    cumulative = torch.cumsum(values / torch.where(total > 0, total, torch.ones_like(total)), dim=1)
    kept_sorted = cumulative > (1.0 - fraction)
    kept = torch.empty_like(kept_sorted).scatter_(1, order, kept_sorted)
    return kept.view_as(maps)


def drop_small_components(masks: Tensor, max_size: int = 2) -> Tensor:
    """Remove the 8-connected components of at most ``max_size`` pixels from
    B x H x W boolean masks (Leopart: ``skimage.measure.label``, components of
    <= 2 pixels cleared)."""
    if not isinstance(masks, Tensor) or masks.dtype != torch.bool or masks.dim() != 3:
        raise ValueError(f"masks must be a B x H x W bool tensor, got "
                         f"{getattr(masks, 'dtype', type(masks).__name__)} {tuple(getattr(masks, 'shape', ()))}")
    max_size = check_int(max_size, "max_size", minimum=0)
    b, h, w = masks.shape
    if masks.numel() == 0 or max_size == 0:
        return masks.clone()
    # Label each component by the largest pixel index in it: propagate the max over 3 x 3 neighbourhoods.
    ids = torch.arange(1, h * w + 1, device=masks.device, dtype=torch.float64).view(1, 1, h, w).expand(b, 1, h, w)
    labels = torch.where(masks[:, None], ids, torch.zeros_like(ids))
    while True:
        grown = F.max_pool2d(labels, 3, stride=1, padding=1) * masks[:, None]
        if torch.equal(grown, labels):
            break
        labels = grown
    labels = labels[:, 0].long()
    offsets = torch.arange(b, device=masks.device).view(b, 1, 1) * (h * w + 1)
    sizes = torch.bincount((labels + offsets).flatten(), minlength=b * (h * w + 1))
    component_size = sizes[(labels + offsets).flatten()].view(b, h, w)
    return masks & (component_size > max_size)


def attention_foreground(attention: Tensor, fraction: float = 0.6, blur_sigma: float = 0.6,
                         blur_size: int = 7, max_component: int = 2) -> Tensor:
    """Leopart's foreground mask of B x h x w head-averaged [CLS] attention
    maps (``process_attentions``): Gaussian blur (7 x 7, σ 0.6), the minimal
    set of patches holding 60 % of the mass (:func:`keep_attention_mass`),
    8-connected components of <= 2 patches dropped. Returns B x h x w bool.

    >>> import torch
    >>> attention = torch.zeros(1, 6, 6); attention[0, 1:4, 1:4] = 1.0
    >>> attention_foreground(attention)[0, 2, 2].item(), attention_foreground(attention)[0, 5, 5].item()
    (True, False)
    """
    attention = _float_tensor(attention, "attention", 3, "B x h x w")
    blurred = gaussian_blur(attention, blur_size, blur_sigma)
    return drop_small_components(keep_attention_mass(blurred, fraction), max_component)


# ---------------------------------------------------------------------------
# Cluster-based foreground extraction
# ---------------------------------------------------------------------------


def cluster_precisions(clusters: Tensor, foreground: Tensor, num_clusters: int) -> Tensor:
    """Each cluster's precision against a (noisy) foreground mask, averaged over
    the images in which it occurs (Leopart ``get_cluster_precs``): for image i
    and cluster k present in it, ``|k ∧ fg| / |k|``; the mean over those images.

    Args:
        clusters: B x H x W cluster ids in [0, num_clusters).
        foreground: B x H x W bool (or 0/1) attention mask.
        num_clusters: K.

    Returns:
        K float64 precisions in [0, 1] (0 for a cluster that never occurs).
    """
    clusters = _integer_map(clusters, "clusters")
    num_clusters = check_int(num_clusters, "num_clusters", minimum=1)
    foreground = _mask(foreground, "foreground", clusters.shape)
    if clusters.numel() and (clusters.min() < 0 or clusters.max() >= num_clusters):
        raise ValueError(f"clusters must hold ids in [0, {num_clusters})")
    b = clusters.shape[0]
    index = (clusters + torch.arange(b, device=clusters.device).view(b, 1, 1) * num_clusters).flatten()
    size = torch.bincount(index, minlength=b * num_clusters).view(b, num_clusters).double()
    hits = torch.bincount(index, weights=foreground.flatten().double(), minlength=b * num_clusters)
    precision = hits.view(b, num_clusters) / size.clamp(min=1)
    present = size > 0
    occurrences = present.sum(0)
    return torch.where(occurrences > 0, (precision * present).sum(0) / occurrences.clamp(min=1),
                       torch.zeros_like(precision[0]))


def _mask(value: object, name: str, shape: torch.Size) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.shape != shape:
        raise ValueError(f"{name} must be B x H x W = {tuple(shape)}, got shape {tuple(value.shape)}")
    if value.dtype != torch.bool and not ((value == 0) | (value == 1)).all():
        raise ValueError(f"{name} must be a 0/1 mask")
    return value.bool()


def _foreground_iou(predicted: Tensor, ground_truth: Tensor) -> float:
    """Leopart's ``eval_jac`` (with_boundary): per-image IoU of the predicted
    foreground with ``ground_truth != 0`` (the 255 border counted as
    foreground), averaged over images; an image with an empty union counts 1."""
    truth = ground_truth != 0
    inter = (predicted & truth).flatten(1).sum(1).double()
    union = (predicted | truth).flatten(1).sum(1).double()
    return float(torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union)).mean())


def cbfe_search_cut(clusters: Tensor, precisions: Tensor, ground_truth: Tensor, low: float = 0.55,
                    high: float = 0.75, step: float = 0.05) -> float:
    """Leopart's search of the CBFE cut (``find_good_threshold``): for each
    ``start`` in ``range(int(low K), int(high K))`` the clusters from rank
    ``start`` of the ascending precisions are foreground; the cut whose
    foreground has the best mean IoU with ``ground_truth != 0`` (ties: the
    larger start) gives the precision ``sorted_precisions[start]``, rounded to
    the nearest multiple of ``step`` in [0, 1).

    Args:
        clusters: B x H x W cluster ids in [0, K).
        precisions: K precisions (:func:`cluster_precisions`).
        ground_truth: B x H x W labels of a labelled split, 0 background.

    Returns:
        the precision threshold for :func:`cbfe`.
    """
    clusters = _integer_map(clusters, "clusters")
    precisions = _float_tensor(precisions, "precisions", 1, "K")
    ground_truth = _integer_map(ground_truth, "ground_truth")
    if ground_truth.shape != clusters.shape:
        raise ValueError(f"ground_truth must be {tuple(clusters.shape)}, got {tuple(ground_truth.shape)}")
    low, high, step = check_real(low, "low"), check_real(high, "high"), check_real(step, "step", positive=True)
    k = precisions.shape[0]
    if clusters.numel() and (clusters.min() < 0 or clusters.max() >= k):
        raise ValueError(f"clusters must hold ids in [0, {k}) (one precision each)")
    starts = range(int(low * k), int(high * k))
    if len(starts) == 0:
        raise ValueError(f"no cut in [{low}, {high}) x {k} clusters: use more clusters")
    ordered, order = torch.sort(precisions.double(), stable=True)
    best_iou, best_start = -math.inf, starts[0]
    for start in starts:
        foreground_ids = torch.zeros(k, dtype=torch.bool, device=clusters.device)
        foreground_ids[order[start:]] = True
        iou = _foreground_iou(foreground_ids[clusters], ground_truth)
        if iou >= best_iou:
            best_iou, best_start = iou, start
    grid = torch.arange(0.0, 1.0, step, dtype=torch.float64)
    nearest = int(torch.argmin((grid - ordered[best_start].cpu()).abs()))
    return round(float(grid[nearest]), 10)


def cbfe(clusters: Tensor, foreground: Tensor, num_clusters: int, cut: float) -> tuple[Tensor, Tensor]:
    """Cluster-based foreground extraction: a cluster whose precision against
    the attention mask is below ``cut`` becomes background.

    Args:
        clusters: B x H x W cluster ids in [0, num_clusters) (Leopart: k-means
            of the patch embeddings, K = 200 on Pascal VOC).
        foreground: B x H x W attention mask (:func:`attention_foreground`).
        num_clusters: K.
        cut: the precision threshold (Leopart searches it on the training
            split with :func:`cbfe_search_cut`, over cuts sending 55 %-75 % of
            the clusters to the background).

    Returns:
        ``(mask, precisions)``: B x H x W bool, True where the pixel's cluster
        has precision >= ``cut``; and the K precisions.

    >>> import torch
    >>> clusters = torch.tensor([[[0, 0, 1, 1]]])
    >>> attention = torch.tensor([[[True, True, True, False]]])
    >>> mask, precisions = cbfe(clusters, attention, 2, cut=0.75)
    >>> precisions.tolist(), mask.tolist()
    ([1.0, 0.5], [[[True, True, False, False]]])
    """
    cut = check_real(cut, "cut")
    precisions = cluster_precisions(clusters, foreground, num_clusters)
    return (precisions >= cut)[clusters.long()], precisions
