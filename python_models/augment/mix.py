"""Mixing augmentations with an exact mixing rule: CutMix (Yun et al., ICCV
2019; clovaai/CutMix-PyTorch ``train.py``) and ClassMix (Olsson et al., WACV
2021; the ClassMix repository's ``trainUDA.py``), the baselines RecurSeed +
EdgePredictMix compares with.

Both draw their randomness from ``generator`` (a ``torch.Generator``; None:
torch's global generator), so a seeded call is reproducible.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from python_models._checks import check_real

__all__ = ["classmix", "classmix_masks", "cutmix", "cutmix_box"]


def _images(images: object, name: str = "images") -> Tensor:
    if not isinstance(images, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if not images.dtype.is_floating_point:
        raise TypeError(f"{name} must be a float tensor (B x C x H x W), got dtype {images.dtype}")
    if images.dim() != 4 or images.numel() == 0:
        raise ValueError(f"{name} must be a non-empty B x C x H x W tensor, got shape {tuple(images.shape)}")
    return images


def _device(generator: torch.Generator | None) -> torch.device:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return generator.device if generator is not None else torch.device("cpu")


def cutmix_box(height: int, width: int, lam: float, generator: torch.Generator | None = None
               ) -> tuple[int, int, int, int]:
    """CutMix's box: sides ``int(H * sqrt(1 - lam))`` and ``int(W * sqrt(1 - lam))``
    around a uniformly drawn centre (cy in [0, H), cx in [0, W)), each half-side
    ``side // 2``, clipped to the image (clovaai ``rand_bbox``).

    Returns:
        ``(y0, y1, x0, x1)``, exclusive ends; the box may be empty.
    """
    lam = check_real(lam, "lam")
    if not 0 <= lam <= 1:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    device = _device(generator)
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy = int(torch.randint(0, height, (), generator=generator, device=device))
    cx = int(torch.randint(0, width, (), generator=generator, device=device))
    y0, y1 = min(max(cy - cut_h // 2, 0), height), min(max(cy + cut_h // 2, 0), height)
    x0, x1 = min(max(cx - cut_w // 2, 0), width), min(max(cx + cut_w // 2, 0), width)
    return y0, y1, x0, x1


def cutmix(images: Tensor, targets: Tensor, lam: float | None = None,
           generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """CutMix: paste one box from a partner image into each image and mix the
    targets by the exact share of pixels each image keeps.

    As clovaai's ``train.py``: one ``lam ~ Beta(1, 1)`` (= uniform on [0, 1])
    and one box (:func:`cutmix_box`, side proportional to ``sqrt(1 - lam)``)
    for the whole batch; the partner of image ``i`` is ``perm[i]`` for a random
    permutation ``perm = torch.randperm(B, generator=generator)`` (it may be
    ``i`` itself). After clipping the box to the image, ``lam`` is recomputed as
    ``1 - box_area / (H * W)``, the exact share of pixels from image ``i``, so a
    given ``lam`` is honoured up to the box's rounding and clipping (the share
    kept is never below it). Random draws, in order: ``lam`` (when None), the
    box centre (y, x), the permutation.

    Args:
        images: B x C x H x W float.
        targets: B x K (multi-hot tags or soft labels); integers and bools are
            taken as floats.
        lam: the share of image ``i`` to keep, in [0, 1]; None draws it.
        generator: a ``torch.Generator``, or None for torch's global one.

    Returns:
        ``(mixed images B x C x H x W, mixed targets B x K)`` with
        ``targets' = lam * targets + (1 - lam) * targets[perm]``.

    Example:
        >>> import torch
        >>> from python_models.augment import cutmix
        >>> x = torch.stack([torch.zeros(1, 8, 8), torch.ones(1, 8, 8)])
        >>> t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> mixed, mixed_t = cutmix(x, t, generator=torch.Generator().manual_seed(0))
        >>> kept = (mixed == x).flatten(1).float().mean(1)   # share of each image's own pixels
        >>> bool(torch.allclose(mixed_t.diagonal(), kept))
        True
    """
    images = _images(images)
    if not isinstance(targets, Tensor):
        raise TypeError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
    if targets.dim() != 2 or targets.shape[0] != images.shape[0]:
        raise ValueError(f"targets must be B x K with B = {images.shape[0]} (the images' batch), "
                         f"got shape {tuple(targets.shape)}")
    if targets.is_complex():
        raise TypeError(f"targets must be real, got dtype {targets.dtype}")
    targets = targets if targets.dtype.is_floating_point else targets.to(images.dtype)
    if not torch.isfinite(targets).all():
        raise ValueError("targets has NaN or infinite values")
    device = _device(generator)
    if lam is None:
        lam = float(torch.rand((), generator=generator, device=device))
    batch, _, height, width = images.shape
    y0, y1, x0, x1 = cutmix_box(height, width, lam, generator)
    perm = torch.randperm(batch, generator=generator, device=device).to(images.device)
    mixed = images.clone()
    mixed[:, :, y0:y1, x0:x1] = images[perm, :, y0:y1, x0:x1]
    kept = 1.0 - (y1 - y0) * (x1 - x0) / (height * width)
    return mixed, kept * targets + (1.0 - kept) * targets[perm.to(targets.device)]


def _label_maps(label_maps: object, images: Tensor | None = None) -> Tensor:
    if not isinstance(label_maps, Tensor):
        raise TypeError(f"label_maps must be a torch.Tensor, got {type(label_maps).__name__}")
    if label_maps.dtype.is_floating_point or label_maps.dtype == torch.bool or label_maps.is_complex():
        raise TypeError(f"label_maps must be an integer label map (B x H x W), got dtype {label_maps.dtype}")
    expected = None if images is None else (images.shape[0], *images.shape[2:])
    if label_maps.dim() != 3 or (expected is not None and tuple(label_maps.shape) != expected):
        shape = "B x H x W" if expected is None else " x ".join(map(str, expected)) + " (the images' B, H, W)"
        raise ValueError(f"label_maps must be {shape}, got shape {tuple(label_maps.shape)}")
    if label_maps.numel() and label_maps.min() < 0:
        raise ValueError("label_maps must hold labels >= 0 (and the ignore index)")
    return label_maps


def classmix_masks(label_maps: Tensor, generator: torch.Generator | None = None,
                   ignore_index: int | None = 255) -> Tensor:
    """ClassMix's masks: the pixels of half of the classes present in each label map.

    Of the ``n`` labels present in map ``i`` (``ignore_index`` excluded),
    ``ceil(n / 2)`` are chosen at random without replacement (the ClassMix
    code's ``int((n + n % 2) / 2)``), in the order of a
    ``torch.randperm(n, generator=generator)`` per image; the background label
    0 counts as a class like any other.

    Args:
        label_maps: B x H x W integer labels (a segmentation's argmax or pseudo-labels).

    Returns:
        B x H x W bool, True where the pixel's label was chosen (never on ignored pixels).
    """
    label_maps = _label_maps(label_maps)
    device = _device(generator)
    masks = torch.zeros_like(label_maps, dtype=torch.bool)
    for i, label_map in enumerate(label_maps):
        classes = label_map.unique()
        if ignore_index is not None:
            classes = classes[classes != ignore_index]
        count = classes.numel()
        order = torch.randperm(count, generator=generator, device=device).to(classes.device)
        masks[i] = torch.isin(label_map, classes[order[: (count + 1) // 2]])
    return masks


def classmix(images: Tensor, label_maps: Tensor, generator: torch.Generator | None = None,
             ignore_index: int | None = 255) -> tuple[Tensor, Tensor]:
    """ClassMix: paste the pixels of half of image ``i``'s classes onto image ``(i + 1) mod B``.

    ``M_i`` = :func:`classmix_masks` of ``label_maps[i]``; with ``j = (i + 1) mod B``,
    ``images'[i] = M_i * images[i] + (1 - M_i) * images[j]`` and the label map is
    mixed by the same mask. (A batch of one mixes an image with itself: unchanged.)

    Args:
        images: B x C x H x W float.
        label_maps: B x H x W integer labels of the same images, ``ignore_index``
            for unlabelled pixels (never chosen, so they come from the partner).
        generator: a ``torch.Generator``, or None for torch's global one.

    Returns:
        ``(mixed images B x C x H x W, mixed label maps B x H x W)``.

    Example:
        >>> import torch
        >>> from python_models.augment import classmix
        >>> x = torch.stack([torch.zeros(1, 2, 2), torch.ones(1, 2, 2)])
        >>> y = torch.tensor([[[0, 1], [1, 1]], [[2, 2], [2, 2]]])
        >>> mixed, mixed_y = classmix(x, y, generator=torch.Generator().manual_seed(0))
        >>> bool(((mixed[:, 0] == 0) == (mixed_y != 2)).all())   # image and labels mixed alike
        True
    """
    images = _images(images)
    label_maps = _label_maps(label_maps, images)
    masks = classmix_masks(label_maps, generator, ignore_index).to(images.device)
    partner = (torch.arange(images.shape[0], device=images.device) + 1) % images.shape[0]
    mixed = torch.where(masks.unsqueeze(1), images, images[partner])
    mixed_labels = torch.where(masks.to(label_maps.device), label_maps, label_maps[partner.to(label_maps.device)])
    return mixed, mixed_labels
