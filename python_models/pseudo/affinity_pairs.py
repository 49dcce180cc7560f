"""Pixel-pair labels for training an affinity network (PSA / AffinityNet, Ahn &
Kwak, CVPR 2018; IRNet, Ahn et al., CVPR 2019) from a label map at the
affinity map's resolution.

Each pixel p and each tap t of :func:`wsss_ext.neighbour_offsets` (every
offset with dy^2 + dx^2 < radius^2, the centre included, row-major) form the
pair (p, p + o_t). A pair is

- background-positive when both pixels are background (label 0),
- foreground-positive when both carry the same foreground label,
- negative when their labels differ,

and in none of the three when either pixel is ignored, the tap falls outside
the map, or t is the centre (a pixel paired with itself).

PSA's ``voc12/data.py`` (``ExtractAffinityLabelInRadius``) lists each
unordered pair once: it keeps the taps of the lower half plane (dy > 0, or
dy = 0 and dx > 0, so neither the centre nor a mirrored duplicate) and takes
as "from" pixels only those whose every tap lies in the map (the crop
``label[:-(r-1), r-1:-(r-1)]``). Here the tap layout is the full, symmetric
one of wsss_ext, so every unordered pair inside the map appears exactly twice
(p -> q and q -> p): a mean over the pairs of a class (what the affinity
loss takes) is the mean over unordered pairs. It keeps the pairs near the
border that PSA's crop drops, a small difference in which pairs are counted.

:func:`psa_affinity_label_map` makes the label map itself as PSA's
``VOC12AffDataset`` does: the low- and high-alpha CRF scores average-pooled to
the feature stride, then the confident rule. :func:`psa_random_walk` and
:func:`walked_labels` are the other end, PSA's ``infer_aff.py``: the walk of
the CAMs on the trained affinities and the pseudo-mask it gives.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

import wsss_ext
from python_models._checks import check_int, check_probs, check_tags
from python_models.pseudo.confident import PSA_CRF, alpha_crf_unary, psa_confident_labels
from python_models.pseudo.crf import to_uint8

__all__ = ["affinity_pair_labels", "psa_affinity_label_map", "psa_random_walk", "walked_labels"]


def affinity_pair_labels(label_map: Tensor, radius: int = 5,
                         ignore_index: int = 255) -> tuple[Tensor, Tensor, Tensor]:
    """The background-positive, foreground-positive and negative pairs of a label map.

    Args:
        label_map: B x h x w integer labels (0 background, c + 1 a class,
            ``ignore_index`` ignored) at the affinity map's resolution
            (PSA: stride 8; IRNet: stride 4).
        radius: neighbourhood radius (5: T = 69 taps, as ``wsss_ext.feature_affinity``).
        ignore_index: the label of pixels in no pair.

    Returns:
        ``(bg_pos, fg_pos, neg)``: three B x T x h x w bool masks over the taps of
        ``wsss_ext.neighbour_offsets(radius)``; mutually exclusive, false at the
        centre tap, at taps outside the map and at ignored pixels.

    Example:
        >>> import torch, wsss_ext
        >>> bg, fg, neg = affinity_pair_labels(torch.tensor([[[0, 0, 1]]]), radius=2)
        >>> right = wsss_ext.neighbour_offsets(2).tolist().index([0, 1])   # radius 2: the 3 x 3 taps
        >>> bg[0, right].tolist(), neg[0, right].tolist(), fg.any().item()
        ([[True, False, False]], [[False, True, False]], False)
    """
    if not isinstance(label_map, Tensor):
        raise TypeError(f"label_map must be a torch.Tensor, got {type(label_map).__name__}")
    if label_map.dtype.is_floating_point or label_map.dtype == torch.bool or label_map.is_complex():
        raise TypeError(f"label_map must be an integer label map, got dtype {label_map.dtype}")
    if label_map.dim() != 3 or label_map.shape[1] * label_map.shape[2] == 0:
        raise ValueError(f"label_map must be B x h x w with h, w >= 1, got shape {tuple(label_map.shape)}")
    if label_map.numel() and bool(label_map.min() < 0):
        raise ValueError("label_map must hold labels >= 0 (or ignore_index)")
    radius = check_int(radius, "radius", minimum=1)
    ignore_index = check_int(ignore_index, "ignore_index")
    offsets = wsss_ext.neighbour_offsets(radius).tolist()
    labels = label_map.long()
    height, width = labels.shape[-2:]
    extent = radius - 1
    # Outside the map reads as ignored, so out-of-map taps fall in no pair.
    padded = F.pad(labels, (extent, extent, extent, extent), value=ignore_index)
    valid_from = labels != ignore_index
    bg_pos, fg_pos, neg = [], [], []
    for dy, dx in offsets:
        to = padded[:, extent + dy: extent + dy + height, extent + dx: extent + dx + width]
        valid = valid_from & (to != ignore_index) & ((dy, dx) != (0, 0))
        same = labels == to
        bg_pos.append(valid & same & (labels == 0))
        fg_pos.append(valid & same & (labels != 0))
        neg.append(valid & ~same)
    return torch.stack(bg_pos, 1), torch.stack(fg_pos, 1), torch.stack(neg, 1)


def psa_affinity_label_map(cams: Tensor, images: Tensor, labels: Tensor, stride: int = 8,
                           alphas: Sequence[float] = (4.0, 24.0), crf: Mapping | None = None,
                           ignore_index: int = 255) -> Tensor:
    """PSA's affinity label map at the feature stride (``infer_cls.py`` ``_crf_with_alpha``,
    then ``voc12/data.py`` ``VOC12AffDataset``).

    The CRF probabilities of the CAMs with background ``(1 - max)^alpha`` at
    the low and the high alpha (:func:`python_models.pseudo.alpha_crf_unary`,
    ``wsss_ext.dense_crf`` over the present labels) are average-pooled in
    ``stride`` x ``stride`` blocks (``imutils.AvgPool2d(8)``: skimage's
    ``block_reduce``, partial blocks zero-padded), each argmaxed, and combined
    by :func:`python_models.pseudo.psa_confident_labels`; blocks without any
    score (padding) are ignored. PSA pools the probabilities, not the labels.

    Args:
        cams: B x C x H x W normalised CAMs in [0, 1], zero outside the tags.
        images: B x 3 x H x W float RGB in [0, 1] (or uint8).
        labels: B x C tags.
        stride: the affinity network's feature stride (8).
        alphas: (low, high) background powers (PSA ``infer_cls.py``: 4 and 32;
            the paper and SEAM: 4 and 24).
        crf: ``dense_crf`` settings (default :data:`python_models.pseudo.PSA_CRF`).

    Returns:
        B x ceil(H / stride) x ceil(W / stride) int64: 0 background, c + 1 for
        tag column c, ``ignore_index`` where the CRFs disagree about background.
    """
    cams = check_probs(cams, "cams")
    labels = check_tags(labels, cams.shape[0], cams.shape[1])
    stride = check_int(stride, "stride", minimum=1)
    if len(alphas) != 2:
        raise ValueError(f"alphas must be (low, high), got {tuple(alphas)}")
    if not isinstance(images, Tensor) or images.shape[0] != cams.shape[0] or images.shape[-2:] != cams.shape[-2:]:
        raise ValueError(f"images must be B x 3 x H x W at the cams' batch and size {tuple(cams.shape[-2:])}")
    unary = torch.cat([alpha_crf_unary(cams, labels, alpha) for alpha in alphas])
    image = images if images.dtype == torch.uint8 else to_uint8(images)
    q = wsss_ext.dense_crf(unary, image.repeat(len(alphas), 1, 1, 1), **dict(PSA_CRF if crf is None else crf))
    height, width = q.shape[-2:]
    q = F.pad(q, (0, -width % stride, 0, -height % stride))
    pooled = F.avg_pool2d(q, stride)
    low, high = pooled.chunk(len(alphas))
    no_score = torch.maximum(low.amax(1), high.amax(1)) < 1e-5
    combined = psa_confident_labels(low.argmax(1), high.argmax(1), ignore_index)
    return combined.masked_fill(no_score, ignore_index)


def psa_random_walk(cams: Tensor, labels: Tensor, features: Tensor, stride: int = 8, beta: float = 8.0,
                    n_steps: int = 256, bg_power: float = 16.0, radius: int = 5) -> Tensor:
    """PSA's random walk of CAMs on feature affinities (``infer_aff.py``).

    In PSA's order: the background ``(1 - max_c cam)^bg_power`` is computed at
    the image resolution (``wsss_ext.cam_background``), the B x (1 + C) scores
    are zero-padded to a multiple of ``stride`` (as PSA pads the image) and
    average-pooled by ``stride`` (``F.avg_pool2d(cam, 8, 8)``), walked
    ``n_steps`` times on ``wsss_ext.feature_affinity(features, radius)`` with
    ``wsss_ext.random_walk`` (T = A^beta column-normalised; PSA: squared
    ``logt`` = 8 times, 256 steps), upsampled bilinearly to the padded size
    and cropped. (``wsss_ext.affinitynet_random_walk`` takes CAMs already at
    the feature size and adds the background after pooling; PSA adds it
    before, which differs since the power is not linear.)

    Args:
        cams: B x C x H x W normalised CAMs in [0, 1] (those of the CAM network).
        labels: B x C tags; CAMs outside them are zeroed.
        features: B x D x ceil(H / stride) x ceil(W / stride) affinity features
            of the padded image (:class:`python_models.heads.AffinityHead`).
        stride, beta, n_steps, bg_power, radius: PSA's 8, 8, 256, 16, 5.

    Returns:
        B x (1 + C) x H x W walked scores, channel 0 the background.
    """
    cams = check_probs(cams, "cams")
    labels = check_tags(labels, cams.shape[0], cams.shape[1])
    stride = check_int(stride, "stride", minimum=1)
    height, width = cams.shape[-2:]
    size = (-(-height // stride), -(-width // stride))
    if not isinstance(features, Tensor) or features.dim() != 4 or features.shape[0] != cams.shape[0] \
            or tuple(features.shape[-2:]) != size:
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(f"features must be B x D x {size[0]} x {size[1]} (the cams' size / {stride}, "
                         f"rounded up), got {shape}")
    scores = wsss_ext.cam_background(cams * labels.to(cams.dtype)[..., None, None], bg_power)
    scores = F.pad(scores, (0, size[1] * stride - width, 0, size[0] * stride - height))
    pooled = F.avg_pool2d(scores, stride)
    walked = wsss_ext.random_walk(pooled.to(features.dtype), wsss_ext.feature_affinity(features, radius),
                                  beta, n_steps)
    upsampled = F.interpolate(walked, (size[0] * stride, size[1] * stride), mode="bilinear",
                               align_corners=False)
    return upsampled[..., :height, :width].to(cams.dtype)


def walked_labels(scores: Tensor, labels: Tensor) -> Tensor:
    """The argmax of walked scores B x (1 + C) x H x W over the background and
    each image's tags (``infer_aff.py``: ``torch.max(cam_rw, 1)``; absent
    classes, whose CAMs are zero, can win only ties, so they are excluded).
    Returns B x H x W int64: 0 background, c + 1 for tag column c."""
    if not isinstance(scores, Tensor) or scores.dim() != 4:
        raise ValueError(f"scores must be B x (1 + C) x H x W, got {getattr(scores, 'shape', type(scores))}")
    labels = check_tags(labels, scores.shape[0], scores.shape[1] - 1)
    allowed = torch.cat([torch.ones_like(labels[:, :1]), labels], 1).bool()[..., None, None]
    return scores.masked_fill(~allowed, float("-inf")).argmax(1)
