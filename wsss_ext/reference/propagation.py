"""Label propagation as MAST and CRW compute it: every candidate's key and
value unfolded (zero padding), the B x R x window x H x W affinities
materialised, one softmax (optionally over the top-k), the weighted sum.
``border="exclude"`` is CorrFlow's rule: taps outside the frame get score
-inf, so they leave the softmax and the top-k."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["propagate_labels_unfold"]


def _unfold_window(x: Tensor, radius: int) -> Tensor:
    """[B, R, C, H, W] -> [B, R, C, window, H, W] (zero padding)."""
    batch, refs, channels, height, width = x.shape
    side = 2 * radius + 1
    windows = F.unfold(x.reshape(batch * refs, channels, height, width), side, padding=radius)
    return windows.view(batch, refs, channels, side * side, height, width)


def propagate_labels_unfold(query: Tensor, keys: Tensor, values: Tensor, radius: int = 12, temperature: float = 1.0,
                            topk: int | None = None, normalize: bool = False, border: str = "zero") -> Tensor:
    """B x L x H x W, differentiable by autograd; border "zero" (MAST) or "exclude" (CorrFlow)."""
    if border not in ("zero", "exclude"):
        raise ValueError(f"border must be 'zero' or 'exclude', got {border!r}")
    if normalize:
        query, keys = F.normalize(query, dim=1), F.normalize(keys, dim=2)
    batch, _, height, width = query.shape
    scores = torch.einsum("bchw,brcthw->brthw", query, _unfold_window(keys, radius)) / temperature
    if border == "exclude":  # the unfolded ones mark the taps inside the frame
        inside = _unfold_window(torch.ones_like(keys[:, :, :1]), radius)[:, :, 0] > 0
        scores = scores.masked_fill(~inside, float("-inf"))
    scores = scores.reshape(batch, -1, height, width)  # candidates r * T + t
    if topk is not None:
        top, index = scores.topk(topk, dim=1)
        weights = torch.zeros_like(scores).scatter(1, index, torch.softmax(top, dim=1))
    else:
        weights = torch.softmax(scores, dim=1)
    windows = _unfold_window(values, radius)  # [B, R, L, T, H, W]
    windows = windows.permute(0, 2, 1, 3, 4, 5).reshape(batch, values.shape[2], -1, height, width)
    return (windows * weights[:, None]).sum(2)
