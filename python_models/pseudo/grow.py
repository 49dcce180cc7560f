"""DSRG's seeded region growing (Huang et al., CVPR 2018).

As speedinghzl/DSRG ``pylayers.py`` (``generate_seed_step``) does it: every
pixel's candidate class is the argmax of its probabilities over the background
and the image's tags; where that probability exceeds the class's threshold
(0.85 foreground, 0.99 background) the pixel's label becomes the candidate,
seeded or not, else it keeps its seed. For each class c, the 8-connected
components of the pixels so labelled c that hold a seed of c still labelled c
join c, except pixels seeded with another class: seeds never change. (A
flood fill by 3 x 3 dilation from those seeds inside the pixels labelled c
gives the same components as DSRG's connected-component labelling.)"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from python_models._checks import check_label_map, check_probs, check_real, check_tags

__all__ = ["dsrg_grow"]


def dsrg_grow(seeds: Tensor, probs: Tensor, labels: Tensor, fg_threshold: float = 0.85,
              bg_threshold: float = 0.99, ignore_index: int = 255) -> Tensor:
    """Grow seed label maps into confident, connected pixels.

    Args:
        seeds: B x H x W int64, 0 background, c + 1 for tag column c,
            ``ignore_index`` unlabelled.
        probs: B x (1 + C) x H x W probabilities, background first (DSRG feeds
            the CRF-refined softmax of the segmentation network, at the seeds'
            resolution: ``DSRGLayer.generate_seed`` calls ``refinement`` first).
        labels: B x C tags: only these classes (and the background) grow.
        fg_threshold, bg_threshold: θ_fg, θ_bg (0.85, 0.99 in DSRG).

    Returns:
        B x H x W grown seeds: every seed kept, no class outside the tags added.

    Example:
        >>> import torch
        >>> from python_models.pseudo import dsrg_grow
        >>> seeds = torch.tensor([[[1, 255, 255, 255]]])
        >>> probs = torch.tensor([[[[0.0, 0.05, 0.2, 0.05]], [[1.0, 0.95, 0.8, 0.95]]]])
        >>> dsrg_grow(seeds, probs, torch.ones(1, 1))   # into the first 0.95; 0.8 stops it before the second
        tensor([[[  1,   1, 255, 255]]])
    """
    probs = check_probs(probs, "probs")
    batch, n_labels = probs.shape[:2]
    labels = check_tags(labels, batch, n_labels - 1)
    seeds = check_label_map(seeds, "seeds", num_labels=n_labels, ignore_index=ignore_index,
                            shape=(batch, *probs.shape[2:]))
    fg_threshold = check_real(fg_threshold, "fg_threshold")
    bg_threshold = check_real(bg_threshold, "bg_threshold")
    present = torch.cat([torch.ones_like(labels[:, :1]), labels], 1).bool()
    if ((seeds != ignore_index) & ~present.gather(1, seeds.clamp(max=n_labels - 1).flatten(1)).view_as(seeds)).any():
        raise ValueError("seeds hold a class that is not in labels")

    masked = probs.detach().float().masked_fill(~present[..., None, None], -1.0)
    best, candidate = masked.max(1)
    thresholds = torch.where(candidate == 0, bg_threshold, fg_threshold)
    # DSRG's label map: confident pixels take their candidate (seeded ones too), the others keep their seed.
    label_map = torch.where(best > thresholds, candidate, seeds)
    # One channel per label: the pixels labelled with it, and the region grown so far from its
    # seeds that kept their label.
    allowed = F.one_hot(label_map.clamp(max=n_labels - 1), n_labels).permute(0, 3, 1, 2).bool()
    allowed &= (label_map != ignore_index).unsqueeze(1)
    region = allowed & (label_map == seeds).unsqueeze(1)
    while True:
        grown = region | (F.max_pool2d(region.float(), 3, stride=1, padding=1).bool() & allowed)
        if torch.equal(grown, region):
            break
        region = grown
    reached = region.any(1) & (seeds == ignore_index)
    return torch.where(reached, region.float().argmax(1), seeds)
