"""Masks of masked image modelling: MAE's per-sample random patch masking
(a random shuffle of the patches, the first ones kept) and SimMIM's random
masking of large mask patches (32 px) on the model's patch grid.

Every draw takes a ``torch.Generator``, so a mask is reproducible from a seed.
Convention (MAE's): 1 = masked (removed / to reconstruct), 0 = visible.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from python_models._checks import check_int, check_real

__all__ = [
    "MAE_MASK_RATIO",
    "SIMMIM_MASK_PATCH_SIZE",
    "SIMMIM_MASK_RATIO",
    "PatchMasking",
    "gather_tokens",
    "random_masking",
    "restore_tokens",
    "simmim_mask",
    "upsample_mask",
]

MAE_MASK_RATIO = 0.75  # facebookresearch/mae main_pretrain.py --mask_ratio
SIMMIM_MASK_PATCH_SIZE = 32  # microsoft/SimMIM config.py DATA.MASK_PATCH_SIZE
SIMMIM_MASK_RATIO = 0.6  # microsoft/SimMIM config.py DATA.MASK_RATIO


class PatchMasking(NamedTuple):
    """MAE's random masking of N patches per sample.

    keep: B x N_keep int64, the kept (visible) patch indices, in shuffled order;
    mask: B x N float, 1 for the removed patches, 0 for the kept ones, in the
    original patch order; restore: B x N int64, the inverse of ``shuffle``
    (``shuffle.gather(1, restore)`` is ``arange(N)``); shuffle: B x N int64, the
    random permutation whose first N_keep entries are ``keep``.
    """

    keep: Tensor
    mask: Tensor
    restore: Tensor
    shuffle: Tensor


def _ratio(value: object, name: str) -> float:
    value = check_real(value, name)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return value


def random_masking(batch_size: int, num_patches: int, mask_ratio: float = MAE_MASK_RATIO,
                   generator: torch.Generator | None = None,
                   device: torch.device | str | None = None) -> PatchMasking:
    """MAE's ``random_masking`` (``models_mae.py``): per sample, uniform noise
    over the N patches, ``shuffle = argsort(noise)`` (small noise kept),
    ``restore = argsort(shuffle)``, the first ``int(N (1 - mask_ratio))``
    shuffled patches kept (at least one).

    ``generator`` (CPU) makes the draw reproducible; the indices are moved to ``device``.

    >>> m = random_masking(2, 16, 0.75, torch.Generator().manual_seed(0))
    >>> m.keep.shape, m.mask.sum(1).tolist()
    (torch.Size([2, 4]), [12.0, 12.0])
    """
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    num_patches = check_int(num_patches, "num_patches", minimum=1)
    mask_ratio = _ratio(mask_ratio, "mask_ratio")
    keep_count = max(1, int(num_patches * (1 - mask_ratio)))
    noise = torch.rand(batch_size, num_patches, generator=generator)
    shuffle = noise.argsort(dim=1).to(device)
    restore = shuffle.argsort(dim=1)
    mask = torch.ones(batch_size, num_patches, device=shuffle.device)
    mask[:, :keep_count] = 0
    return PatchMasking(shuffle[:, :keep_count], mask.gather(1, restore), restore, shuffle)


def gather_tokens(tokens: Tensor, indices: Tensor) -> Tensor:
    """Rows ``indices`` (B x N') of each sample's tokens (B x N x D): B x N' x D."""
    if tokens.dim() != 3 or indices.dim() != 2 or indices.shape[0] != tokens.shape[0]:
        raise ValueError(f"tokens must be B x N x D and indices B x N', got shapes {tuple(tokens.shape)} and "
                         f"{tuple(indices.shape)}")
    return tokens.gather(1, indices.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def restore_tokens(kept: Tensor, fill: Tensor, restore: Tensor) -> Tensor:
    """MAE's decoder input: the kept tokens (B x N_keep x D, in shuffled order)
    followed by ``fill`` (the mask token, broadcastable to D) for the removed
    ones, put back in the original patch order with ``restore``: B x N x D.

    ``restore_tokens(gather_tokens(x, keep), t, restore)`` equals ``x`` at the
    kept patches and ``t`` at the masked ones.
    """
    if kept.dim() != 3 or restore.dim() != 2 or restore.shape[0] != kept.shape[0] \
            or restore.shape[1] < kept.shape[1]:
        raise ValueError(f"kept must be B x N_keep x D and restore B x N with N >= N_keep, got shapes "
                         f"{tuple(kept.shape)} and {tuple(restore.shape)}")
    b, n_keep, d = kept.shape
    filler = fill.reshape(1, 1, -1).to(kept.dtype).expand(b, restore.shape[1] - n_keep, d)
    return gather_tokens(torch.cat([kept, filler], dim=1), restore)


def simmim_mask(batch_size: int, size: tuple[int, int] | int, model_patch_size: int,
                mask_patch_size: int = SIMMIM_MASK_PATCH_SIZE, mask_ratio: float = SIMMIM_MASK_RATIO,
                generator: torch.Generator | None = None) -> Tensor:
    """SimMIM's ``MaskGenerator`` (``data/data_simmim.py``): the image is cut
    into ``mask_patch_size`` squares, ``ceil(count * mask_ratio)`` of them
    masked at random per sample, and the mask expanded to the model's patch
    grid (H / model_patch_size x W / model_patch_size).

    Returns B x h x w float, 1 = masked. ``size`` is the image's (H, W) (or one
    int); both must be divisible by ``mask_patch_size``, itself divisible by
    ``model_patch_size``.

    >>> m = simmim_mask(2, 64, 16, generator=torch.Generator().manual_seed(0))
    >>> m.shape, m.mean(dim=(1, 2)).tolist()  # ceil(4 * 0.6) = 3 of the 4 32-px squares
    (torch.Size([2, 4, 4]), [0.75, 0.75])
    """
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    model_patch_size = check_int(model_patch_size, "model_patch_size", minimum=1)
    mask_patch_size = check_int(mask_patch_size, "mask_patch_size", minimum=1)
    mask_ratio = _ratio(mask_ratio, "mask_ratio")
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if height % mask_patch_size or width % mask_patch_size:
        raise ValueError(f"size {height} x {width} must be divisible by mask_patch_size {mask_patch_size}")
    if mask_patch_size % model_patch_size:
        raise ValueError(f"mask_patch_size {mask_patch_size} must be divisible by model_patch_size "
                         f"{model_patch_size}")
    rows, cols = height // mask_patch_size, width // mask_patch_size
    count = math.ceil(rows * cols * mask_ratio)
    mask = torch.zeros(batch_size, rows * cols)
    for b in range(batch_size):
        mask[b, torch.randperm(rows * cols, generator=generator)[:count]] = 1
    return upsample_mask(mask.view(batch_size, rows, cols), mask_patch_size // model_patch_size)


def upsample_mask(mask: Tensor, factor: int) -> Tensor:
    """Each cell of a B x h x w mask repeated ``factor`` x ``factor`` times:
    B x (h * factor) x (w * factor) (SimMIM's ``repeat_interleave`` to pixels)."""
    factor = check_int(factor, "factor", minimum=1)
    if not isinstance(mask, Tensor) or mask.dim() != 3:
        raise ValueError(f"mask must be a B x h x w tensor, got {getattr(mask, 'shape', type(mask).__name__)}")
    return mask.repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2)
