"""The pieces of the self-supervised correspondence networks (colorization,
CorrFlow, MAST, SS-VOS): the encoder, the windowed pointer over reference
frames with either border rule, and MAST's long-term coarse search.

- :class:`CorrespondenceEncoder`: a stride-4 backbone and a 3 x 3 convolution
  to ``dim`` channels (MAST / CorrFlow ``post_convolution``: 256 -> 64).
- the pointer itself is ``wsss_ext.propagate_labels`` with its border rule:
  ``"zero"`` (MAST: an out-of-frame tap stays in the softmax with score 0 and
  label 0, so the label mass is below 1 near borders) or ``"exclude"``
  (CorrFlow: padded taps get score -1e10, the mass is exactly 1).
- :func:`coarse_offsets` / :func:`align`: MAST's long-term memory read; a
  dilated 25 x 25 correlation (``wsss_ext.correlation``), softmax, soft-argmax
  offset times the dilation, and the reference moved by it.
- :func:`read_memory`: short-term and aligned long-term references in one
  softmax over all references x taps (MAST ``colorizer.py``).
- :func:`reconstruct_dropped`: MAST's training read-out, a dropped Lab
  channel of the last frame rebuilt from the earlier frames'.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import wsss_ext

__all__ = [
    "CorrespondenceEncoder",
    "align",
    "coarse_offsets",
    "long_term_dilation",
    "read_memory",
    "reconstruct_dropped",
]

MAST_LONG_TERM_GAP = 15      # colorizer.py dil_int: references more than 15 frames back are searched
MAST_SEARCH_RADIUS = 12      # colorizer.py memory_patch_R: a 25 x 25 coarse search
MAST_MAX_DILATION = 4        # colorizer.py: "The maximum dilation rate is 4"


class CorrespondenceEncoder(nn.Module):
    """Frame features for matching: ``backbone`` (stride 4 in CorrFlow and
    MAST) then a 3 x 3 convolution to ``dim`` channels (their ``post_convolution``).

    Shape: B x C_in x H x W (normalised images) -> B x dim x H/stride x W/stride.
    """

    def __init__(self, backbone: nn.Module, dim: int = 64) -> None:
        super().__init__()
        self.backbone = backbone
        self.projection = nn.Conv2d(int(backbone.out_channels), dim, 3, padding=1)
        self.out_channels = dim
        self.stride = int(getattr(backbone, "output_stride", 4))

    def forward(self, x: Tensor) -> Tensor:
        return self.projection(self.backbone(x))


def _base_grid(height: int, width: int, like: Tensor) -> Tensor:
    ys, xs = torch.meshgrid(torch.arange(height, dtype=like.dtype, device=like.device),
                            torch.arange(width, dtype=like.dtype, device=like.device), indexing="ij")
    return torch.stack([xs, ys], -1)  # h x w x 2, (x, y) in pixels


def coarse_offsets(query: Tensor, key: Tensor, dilation: int, radius: int = MAST_SEARCH_RADIUS) -> Tensor:
    """MAST's coarse search of a long-term reference: the correlation of each
    query pixel with a (2 radius + 1)^2 grid of key pixels ``dilation`` apart
    (``wsss_ext.correlation``, patch 25, ``dilation_patch`` 2-4), a softmax
    over the grid, and the expected displacement, in pixels.

    Shape: B x C x h x w query and key -> B x h x w x 2 offsets (x, y).
    """
    b, _, h, w = query.shape
    side = 2 * radius + 1
    cost = wsss_ext.correlation(query, key, patch_size=side, dilation_patch=dilation)  # B x side x side x h x w
    weights = torch.softmax(cost.reshape(b, side * side, h, w), dim=1).reshape(b, side, side, h, w)
    steps = torch.arange(-radius, radius + 1, dtype=weights.dtype, device=weights.device) * dilation
    dy = (weights.sum(2) * steps.view(1, side, 1, 1)).sum(1)
    dx = (weights.sum(1) * steps.view(1, side, 1, 1)).sum(1)
    return torch.stack([dx, dy], -1)


def align(x: Tensor, offsets: Tensor) -> Tensor:
    """``x`` read at each pixel plus its offset (bilinear, zero outside the
    frame, as MAST's ``deform_im2col`` pads): out[p] = x[p + offsets[p]].

    Shape: B x C x h x w and B x h x w x 2 (x, y) -> B x C x h x w.

    Note: MAST samples the whole window at the centre's offset
    (x[p + offset(p) + d]); aligning first and then reading the window gives
    x[p + d + offset(p + d)], the same wherever the offset field is constant
    over the window, and lets the stride-free kernel read it.
    """
    h, w = x.shape[-2:]
    target = _base_grid(h, w, offsets) + offsets
    grid = torch.stack([2 * target[..., 0] / max(w - 1, 1) - 1, 2 * target[..., 1] / max(h - 1, 1) - 1], -1)
    return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="zeros", align_corners=True)


def long_term_dilation(gap: int, threshold: int = MAST_LONG_TERM_GAP) -> int:
    """MAST's dilation of the coarse search for a reference ``gap`` frames
    back: ``min(4, gap // 15 + 1)``; 0 (no search) when ``gap <= 15``."""
    return 0 if gap <= threshold else min(MAST_MAX_DILATION, gap // threshold + 1)


def read_memory(query: Tensor, keys: Sequence[Tensor], values: Sequence[Tensor], radius: int,
                dilations: Sequence[int] | None = None, temperature: float = 1.0, border: str = "zero",
                search_radius: int = MAST_SEARCH_RADIUS) -> Tensor:
    """MAST's memory read: every reference through its window, the long-term
    ones (``dilations[r] > 0``) first moved by their coarse-search offsets
    (:func:`coarse_offsets`, :func:`align`), then one softmax over all
    references x taps (``wsss_ext.propagate_labels``, its ``border`` rule).

    Args:
        query: B x C x h x w; keys: R tensors B x C x h x w; values: R tensors B x L x h x w.
        radius: the window radius (MAST: 6 in training, 12 at test).
        dilations: per reference, 0 (short-term) or the coarse search's dilation.

    Returns:
        B x L x h x w.
    """
    if len(keys) != len(values) or not keys:
        raise ValueError(f"keys and values must be equally long, non-empty lists, got {len(keys)} and {len(values)}")
    dilations = [0] * len(keys) if dilations is None else list(dilations)
    if len(dilations) != len(keys):
        raise ValueError(f"dilations must give one value per reference ({len(keys)}), got {len(dilations)}")
    aligned_keys, aligned_values = [], []
    for key, value, dilation in zip(keys, values, dilations):
        if dilation:
            offsets = coarse_offsets(query, key, int(dilation), search_radius)
            key, value = align(key, offsets), align(value, offsets)
        aligned_keys.append(key)
        aligned_values.append(value)
    return wsss_ext.propagate_labels(query, torch.stack(aligned_keys, 1), torch.stack(aligned_values, 1), radius,
                                     temperature, border=border)


def reconstruct_dropped(encoder: nn.Module, lab: Tensor, dropped: Sequence[int], radius: int,
                        dilations: Sequence[int] | None = None, temperature: float = 1.0, border: str = "zero",
                        search_radius: int = MAST_SEARCH_RADIUS) -> tuple[Tensor, Tensor]:
    """MAST's training read-out (``main.py compute_lphoto``): the clip's
    ``dropped`` Lab channels are zeroed in every frame and the rest rescaled
    (``channel_dropout``'s rule), all frames encoded, and the last frame's
    true dropped channels reconstructed from the earlier frames' ones,
    subsampled to the feature grid (``prep``: every stride-th pixel), by
    :func:`read_memory`.

    Args:
        encoder: normalised-Lab images B x 3 x H x W -> features B x D x h x w (with ``stride``).
        lab: B x T x 3 x H x W normalised Lab clip, T >= 2 (T - 1 references, then the target).
        dropped: the hidden channels.

    Returns:
        ``(reconstruction B x |dropped| x h x w, target B x |dropped| x H x W)``.
    """
    channels = list(dropped)
    total = lab.shape[2]
    keep = torch.ones(total, dtype=lab.dtype, device=lab.device)
    keep[channels] = 0
    seen = lab * (keep * total / (total - len(channels))).view(total, 1, 1)
    b, t = lab.shape[:2]
    features = encoder(seen.flatten(0, 1)).unflatten(0, (b, t))
    stride = int(getattr(encoder, "stride", 4))
    keys = [features[:, i] for i in range(t - 1)]
    values = [lab[:, i, channels, ::stride, ::stride] for i in range(t - 1)]
    out = read_memory(features[:, -1], keys, values, radius, dilations, temperature, border, search_radius)
    return out, lab[:, -1, channels]
