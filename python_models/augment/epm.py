"""EdgePredictMix (Jo, Yu & Kim, "RecurSeed and EdgePredictMix", arXiv
2204.06754): mix two images and their refined masks, the masks' uncertain
pixels first filled by an edge prediction.

Three steps, each a function:

1. :func:`certain_labels`, the absolute-confidence rule (the official
   tag's ``CF(c=0.55, u=0.10)``): with ``s`` the largest foreground
   probability of a pixel and ``k`` its class, label ``k`` where
   ``s >= confident``, background where ``s <= uncertain``, ignore between.
2. :func:`canny_edges` + :func:`edge_predict`, the edge prediction. The
   published rule is **unverified** (the training code is not released);
   this implements the paper's description, "the probability difference
   between adjacent pixels": Canny edges of the foreground-probability map
   ``s`` (``cv2.Canny`` on ``round(255 s)``; its default thresholds 50 / 100
   put the strong threshold at about a 0.10 step between adjacent pixels, as
   Sobel's 3 x 3 response to a one-pixel step is 4 x the step), then the
   certain labels grow into the uncertain pixels over 8-neighbours, never onto
   an edge pixel, each newly reached pixel taking, of its labelled neighbours'
   labels, the one with the highest probability at that pixel (ties: the
   first neighbour in raster order). Pixels on an edge or not connected to a
   certain pixel through non-edge uncertain pixels stay ignored.
3. :func:`edge_predict_mix`: ClassMix over the edge-predicted labels
   (:func:`python_models.augment.classmix_masks`: half of image i's labels,
   background included, pasted onto image ``(i + 1) mod B``), the images and
   label maps mixed by the same mask.

Canny needs OpenCV: ``pip install opencv-python-headless`` (the ``epm`` extra).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from python_models._checks import check_maps, check_real
from python_models.augment.mix import classmix_masks

__all__ = ["EdgePredictMixResult", "canny_edges", "certain_labels", "edge_predict", "edge_predict_mix"]

# The 8 neighbours (dy, dx) in raster order.
_NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def _probs(probs: object) -> Tensor:
    probs = check_maps(probs, "probs")
    if probs.shape[1] < 2:
        raise ValueError(f"probs must be B x (1 + C) x H x W with C >= 1 (background first), got {tuple(probs.shape)}")
    if not torch.isfinite(probs).all():
        raise ValueError("probs has NaN or infinite values")
    return probs


def _thresholds(confident: float, uncertain: float) -> tuple[float, float]:
    confident, uncertain = check_real(confident, "confident"), check_real(uncertain, "uncertain")
    if not 0 <= uncertain < confident <= 1:
        raise ValueError(f"need 0 <= uncertain < confident <= 1, got uncertain {uncertain}, confident {confident}")
    return confident, uncertain


def certain_labels(probs: Tensor, confident: float = 0.55, uncertain: float = 0.10,
                   ignore_index: int = 255) -> Tensor:
    """The absolute-confidence labels of refined probabilities.

    Args:
        probs: B x (1 + C) x H x W, background first (only the foreground
            channels are read: absent classes must already be zero).
        confident: foreground where the largest foreground probability is >= it (0.55).
        uncertain: background where it is <= this (0.10).

    Returns:
        B x H x W int64: ``c + 1`` for the argmax foreground class, 0, or ``ignore_index``.

    Example:
        >>> p = torch.tensor([0.9, 0.3, 0.05]).view(1, 1, 1, 3)
        >>> certain_labels(torch.cat([1 - p, p], 1)).tolist()
        [[[1, 255, 0]]]
    """
    probs = _probs(probs)
    confident, uncertain = _thresholds(confident, uncertain)
    score, index = probs[:, 1:].max(1)
    out = torch.full_like(index, ignore_index)
    out = torch.where(score >= confident, index + 1, out)
    return torch.where(score <= uncertain, torch.zeros_like(out), out)


def canny_edges(maps: Tensor, low: float = 50.0, high: float = 100.0) -> Tensor:
    """``cv2.Canny`` of each map in [0, 1] (B x H x W), read as ``round(255 x)``.

    Args:
        maps: B x H x W float in [0, 1] (e.g. the largest foreground probability).
        low, high: Canny's hysteresis thresholds on the uint8 map (L1 Sobel 3 x 3).

    Returns:
        B x H x W bool, True on an edge.

    Raises:
        ImportError: without OpenCV (``pip install opencv-python-headless``, the ``epm`` extra).
    """
    try:
        import cv2
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("canny_edges needs OpenCV: pip install opencv-python-headless "
                          "(python_models' 'epm' extra)") from error
    if not isinstance(maps, Tensor):
        raise TypeError(f"maps must be a torch.Tensor, got {type(maps).__name__}")
    if not maps.dtype.is_floating_point:
        raise TypeError(f"maps must be float in [0, 1], got dtype {maps.dtype}")
    if maps.dim() != 3 or maps.numel() == 0:
        raise ValueError(f"maps must be a non-empty B x H x W tensor, got shape {tuple(maps.shape)}")
    low, high = check_real(low, "low"), check_real(high, "high")
    if not 0 <= low <= high:
        raise ValueError(f"need 0 <= low <= high, got {low}, {high}")
    levels = (maps.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    edges = [torch.from_numpy(cv2.Canny(level, low, high) > 0) for level in levels]
    return torch.stack(edges).to(maps.device)


def edge_predict(probs: Tensor, edges: Tensor, confident: float = 0.55, uncertain: float = 0.10,
                 ignore_index: int = 255) -> Tensor:
    """Fill the uncertain pixels of :func:`certain_labels` up to the edges.

    The certain labels grow, one 8-neighbour ring per pass, into uncertain
    pixels that are not on an edge; a reached pixel takes the label ``l`` of a
    labelled neighbour maximising ``probs[l]`` at the pixel. Certain pixels
    never change; edge pixels and uncertain pixels cut off from every certain
    pixel stay ``ignore_index`` (the module docstring says why this rule).

    Args:
        probs: B x (1 + C) x H x W refined probabilities, background first.
        edges: B x H x W bool (e.g. :func:`canny_edges` of the foreground map).
        confident, uncertain: :func:`certain_labels`'s thresholds (0.55, 0.10).

    Returns:
        B x H x W int64 labels.

    Example:
        >>> p = torch.tensor([0.9, 0.3, 0.3, 0.3, 0.05]).view(1, 1, 1, 5)
        >>> probs = torch.cat([1 - p, p], 1)
        >>> edge_predict(probs, torch.zeros(1, 1, 5, dtype=torch.bool)).tolist()   # pixels 1-3 uncertain
        [[[1, 1, 0, 0, 0]]]
        >>> edge_predict(probs, torch.tensor([[[False, False, True, False, False]]])).tolist()
        [[[1, 1, 255, 0, 0]]]
    """
    probs = _probs(probs)
    if not isinstance(edges, Tensor) or edges.dtype != torch.bool:
        raise TypeError(f"edges must be a bool tensor (B x H x W), got "
                        f"{edges.dtype if isinstance(edges, Tensor) else type(edges).__name__}")
    if edges.shape != (probs.shape[0], *probs.shape[2:]):
        raise ValueError(f"edges must be B x H x W = {(probs.shape[0], *probs.shape[2:])} (the probs' B, H, W), "
                         f"got shape {tuple(edges.shape)}")
    labels = certain_labels(probs, confident, uncertain, ignore_index)
    fillable = (labels == ignore_index) & ~edges.to(labels.device)
    height, width = labels.shape[-2:]
    while True:
        padded = F.pad(labels, (1, 1, 1, 1), value=ignore_index)
        best_score = torch.full(labels.shape, -torch.inf, dtype=probs.dtype, device=probs.device)
        best_label = torch.full_like(labels, ignore_index)
        for dy, dx in _NEIGHBOURS:
            neighbour = padded[:, 1 + dy:1 + dy + height, 1 + dx:1 + dx + width]
            known = neighbour != ignore_index
            score = probs.gather(1, neighbour.masked_fill(~known, 0).unsqueeze(1)).squeeze(1)
            better = known & (score > best_score)
            best_score = torch.where(better, score, best_score)
            best_label = torch.where(better, neighbour, best_label)
        reached = fillable & (best_label != ignore_index)
        if not reached.any():
            return labels
        labels = torch.where(reached, best_label, labels)
        fillable = fillable & ~reached


class EdgePredictMixResult(NamedTuple):
    """What :func:`edge_predict_mix` returns."""

    images: Tensor  # B x 3 x H x W mixed images
    label_maps: Tensor  # B x H x W mixed edge-predicted labels
    masks: Tensor  # B x H x W bool: True where the pixel comes from image i (else from its partner)
    partner: Tensor  # B int64: (i + 1) mod B
    source_labels: Tensor  # B x H x W the unmixed edge-predicted labels


def edge_predict_mix(images: Tensor, probs: Tensor, edges: Tensor | None = None, confident: float = 0.55,
                     uncertain: float = 0.10, canny_thresholds: tuple[float, float] = (50.0, 100.0),
                     generator: torch.Generator | None = None, ignore_index: int = 255) -> EdgePredictMixResult:
    """EdgePredictMix: :func:`edge_predict` the masks, then ClassMix image i onto ``(i + 1) mod B``.

    Args:
        images: B x 3 x H x W float.
        probs: B x (1 + C) x H x W refined probabilities of the same images
            (background first, absent classes zero), at the images' size.
        edges: B x H x W bool, or None for :func:`canny_edges` of the largest
            foreground probability with ``canny_thresholds``.
        confident, uncertain: the certain-label thresholds (0.55, 0.10).
        generator: for the class choice (a ``torch.Generator`` or None).

    Returns:
        :class:`EdgePredictMixResult`: with ``M = masks[i]`` and ``j = partner[i]``,
        ``images[i] = M * images_in[i] + (1 - M) * images_in[j]`` and
        ``label_maps[i] = where(M, source_labels[i], source_labels[j])``;
        ``M`` is never True on an ignored pixel of image i.
    """
    probs = _probs(probs)
    if not isinstance(images, Tensor) or not images.dtype.is_floating_point or images.dim() != 4:
        raise TypeError("images must be a float B x C x H x W tensor")
    if images.shape[0] != probs.shape[0] or images.shape[2:] != probs.shape[2:]:
        raise ValueError(f"probs must have the images' B, H, W {(images.shape[0], *images.shape[2:])}, "
                         f"got shape {tuple(probs.shape)}")
    if edges is None:
        edges = canny_edges(probs[:, 1:].amax(1), *canny_thresholds)
    labels = edge_predict(probs, edges, confident, uncertain, ignore_index)
    masks = classmix_masks(labels, generator, ignore_index)
    partner = (torch.arange(images.shape[0], device=images.device) + 1) % images.shape[0]
    mixed = torch.where(masks.unsqueeze(1).to(images.device), images, images[partner])
    mixed_labels = torch.where(masks, labels, labels[partner.to(labels.device)])
    return EdgePredictMixResult(mixed, mixed_labels, masks, partner, labels)
