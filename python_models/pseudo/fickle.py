"""FickleNet's seeds (Lee et al., CVPR 2019) from its stochastic Grad-CAMs
(:func:`wsss_ext.fickle_gradcam`), in the contract's label convention."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from python_models._checks import check_real, check_tags

__all__ = ["fickle_seeds"]


def fickle_seeds(maps: Tensor, fickle_labels: Tensor, labels: Tensor, bg_threshold: float = 0.05,
                 size: tuple[int, int] | None = None, ignore_index: int = 255) -> Tensor:
    """Seeds in the method contract's convention from FickleNet's stochastic Grad-CAMs.

    Foreground: the class :func:`wsss_ext.fickle_gradcam` assigned (a pixel
    where one of the N maps of a tagged class exceeds the threshold; the
    highest mean map among several), as ``c + 1``. Background: FickleNet and
    DSRG take it from a saliency map, which this library does not compute;
    here a pixel is background (0) when no class hit and every tagged class's
    mean map is below ``bg_threshold`` (IRNet's low CAM threshold, 0.05,
    ``conf_bg_thres``). The rest is ``ignore_index``.

    Args:
        maps: B x C x h x w mean normalised maps (``fickle_gradcam``'s first output).
        fickle_labels: B x h x w tag columns or ``ignore_index`` (its second output).
        labels: B x C multi-hot tags.
        bg_threshold: the background rule's threshold.
        size: (H, W) to resize the seeds to (nearest neighbour); ``None`` keeps h x w.

    Returns:
        B x H x W int64: 0 background, c + 1 for tag column c, ``ignore_index``.

    Example:
        >>> import torch
        >>> maps = torch.tensor([[[[0.9, 0.2, 0.01]]]])
        >>> hits = torch.tensor([[[0, 255, 255]]])
        >>> fickle_seeds(maps, hits, torch.ones(1, 1))
        tensor([[[  1, 255,   0]]])
    """
    if not isinstance(maps, Tensor) or maps.dim() != 4:
        raise ValueError(f"maps must be a B x C x h x w tensor, got {getattr(maps, 'shape', type(maps))}")
    batch, classes, height, width = maps.shape
    labels = check_tags(labels, batch, classes)
    if not isinstance(fickle_labels, Tensor) or tuple(fickle_labels.shape) != (batch, height, width):
        raise ValueError(f"fickle_labels must be B x h x w = {batch} x {height} x {width}, got "
                         f"{getattr(fickle_labels, 'shape', type(fickle_labels))}")
    bg_threshold = check_real(bg_threshold, "bg_threshold")
    fickle_labels = fickle_labels.long()
    hit = fickle_labels != ignore_index
    if ((fickle_labels < 0) | (fickle_labels >= classes))[hit].any():
        raise ValueError(f"fickle_labels must hold tag columns in [0, {classes}) or {ignore_index}")
    present = labels.to(maps.device).bool()
    tagged = maps.masked_fill(~present[..., None, None], 0.0)
    background = ~hit & (tagged.amax(1) < bg_threshold)
    seeds = torch.where(hit, fickle_labels + 1, torch.full_like(fickle_labels, ignore_index))
    seeds = torch.where(background, torch.zeros_like(seeds), seeds)
    if size is not None and tuple(size) != (height, width):
        seeds = F.interpolate(seeds[:, None].float(), size=tuple(size), mode="nearest")[:, 0].long()
    return seeds
