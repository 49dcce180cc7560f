"""Random resized crops (the geometric part of the self-supervised views):
one box sampler, :func:`random_resized_box`, behind SwAV's and SimCLR's
light example crops (:func:`random_resized_crops`) and DINO's and Leopart's
multi-crop (:func:`multi_crop`, :func:`multi_crop_batch`), with the check of a
multi-crop batch (:func:`check_multi_crop_views`).

Colour jitter, blur and solarisation are left to the data pipeline. Every
draw comes from ``generator`` (a ``torch.Generator``; None: torch's global
generator, or a fixed seed where noted), so a seeded call is reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from python_models._checks import check_images

__all__ = [
    "check_multi_crop_views",
    "multi_crop",
    "multi_crop_batch",
    "random_resized_box",
    "random_resized_crops",
    "size_groups",
]

Box = tuple[int, int, int, int]


def random_resized_box(height: int, width: int, scale: tuple[float, float] = (0.08, 1.0),
                       generator: torch.Generator | None = None, ratio: tuple[float, float] = (3 / 4, 4 / 3),
                       *, clamp: bool = False) -> Box:
    """(x0, y0, x1, y1) (exclusive ends) of a random box of an H x W image: a
    fraction of the area uniform in ``scale``, an aspect ratio log-uniform in
    ``ratio``, a uniform position.

    ``clamp=False``: torchvision's ``RandomResizedCrop.get_params``: up to 10
    draws of a box that fits, then the central crop clamped to ``ratio``.
    ``clamp=True``: one draw, each side clamped to [1, the image's side] (the
    light crops of :func:`random_resized_crops`; its shares are drawn with
    ``Tensor.uniform_``, so its values stay those it always had).

    >>> g = torch.Generator().manual_seed(0)
    >>> x0, y0, x1, y1 = random_resized_box(32, 48, (0.25, 1.0), g)
    >>> 0 <= x0 < x1 <= 48 and 0 <= y0 < y1 <= 32
    True
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(1 if clamp else 10):
        if clamp:
            target = area * float(torch.empty(()).uniform_(*scale, generator=generator))
            aspect = math.exp(float(torch.empty(()).uniform_(*log_ratio, generator=generator)))
        else:
            target = area * (scale[0] + (scale[1] - scale[0]) * float(torch.rand((), generator=generator)))
            aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0])
                              * float(torch.rand((), generator=generator)))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if clamp:
            w, h = min(width, max(1, w)), min(height, max(1, h))
        if 0 < w <= width and 0 < h <= height:
            y0 = int(torch.randint(0, height - h + 1, (), generator=generator))
            x0 = int(torch.randint(0, width - w + 1, (), generator=generator))
            return x0, y0, x0 + w, y0 + h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    y0, x0 = (height - h) // 2, (width - w) // 2
    return x0, y0, x0 + w, y0 + h


def random_resized_crops(images: Tensor, size: int, scale: tuple[float, float] = (0.08, 1.0),
                         generator: torch.Generator | None = None,
                         ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: bool = True) -> Tensor:
    """One RandomResizedCrop per image (:func:`random_resized_box` with
    ``clamp=True``: area share in ``scale``, log-uniform aspect in ``ratio``;
    bilinear resize to ``size``), then, with ``flip``, a random horizontal
    flip: B x 3 x size x size in [0, 1].

    >>> crops = random_resized_crops(torch.rand(2, 3, 8, 8), 4, (0.5, 1.0), torch.Generator().manual_seed(0))
    >>> tuple(crops.shape)
    (2, 3, 4, 4)
    """
    _, _, height, width = images.shape
    out = []
    for image in images:
        x0, y0, x1, y1 = random_resized_box(height, width, scale, generator, ratio, clamp=True)
        crop = F.interpolate(image[None, :, y0:y1, x0:x1], size=(size, size), mode="bilinear",
                             align_corners=False)
        if flip and bool(torch.rand((), generator=generator) < 0.5):
            crop = crop.flip(-1)
        out.append(crop[0].clamp(0, 1))
    return torch.stack(out)


def _overlap(a: Box, b: Box) -> int:
    return max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))


def multi_crop(images: Tensor, sizes: Sequence[int], scales: Sequence[tuple[float, float]], n_global: int = 2,
               generator: torch.Generator | None = None,
               min_intersection: float | None = None) -> tuple[list[Tensor], Tensor]:
    """Random resized crops of each image (the geometric part of DINO's and
    Leopart's multi-crop; their colour jitter, blur and solarisation are left
    to the data pipeline), with the crops' boxes.

    Args:
        images: B x 3 x H x W.
        sizes: the output side of each of the V crops (e.g. 2 x 224 + 8 x 96).
        scales: the area fraction range of each crop (DINO: (0.4, 1) global,
            (0.05, 0.4) local; Leopart: (0.25, 1), (0.05, 0.25)).
        n_global: the first ``n_global`` crops are global.
        generator: the random source (None: a generator seeded with 0).
        min_intersection: Leopart's rule (``leopart_transforms.py``): every crop
            must overlap each earlier global crop by more than this fraction of
            the image area (twice that between global crops), resampled until
            it does (after 100 tries the whole image is taken). None: no rule.

    Returns:
        ``(crops, boxes)``: V tensors B x 3 x s_v x s_v (bilinear resize,
        antialiased) and B x V x 4 boxes (x0, y0, x1, y1, exclusive ends) in
        the images' pixel coordinates (:func:`random_resized_box`).
    """
    images = check_images(images)
    if len(sizes) != len(scales):
        raise ValueError(f"sizes ({len(sizes)}) and scales ({len(scales)}) must give one value per crop")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    b, _, height, width = images.shape
    boxes = torch.zeros(b, len(sizes), 4)
    crops: list[list[Tensor]] = [[] for _ in sizes]
    for i in range(b):
        chosen: list[Box] = []
        for v, (size, scale) in enumerate(zip(sizes, scales)):
            box = random_resized_box(height, width, tuple(scale), g)
            if min_intersection is not None and v > 0:
                need = int(height * width * min_intersection) * (2 if v < n_global else 1)
                tries = 0
                while not all(_overlap(box, other) > need for other in chosen[:min(v, n_global)]):
                    tries += 1
                    box = random_resized_box(height, width, tuple(scale), g) if tries < 100 else (0, 0, width, height)
            chosen.append(box)
            x0, y0, x1, y1 = box
            patch = images[i:i + 1, :, y0:y1, x0:x1]
            crops[v].append(F.interpolate(patch, size=(size, size), mode="bilinear", align_corners=False,
                                          antialias=True).clamp(0, 1))
            boxes[i, v] = torch.tensor(box, dtype=torch.float)
    return [torch.cat(c) for c in crops], boxes


def multi_crop_batch(images: Tensor, n_global: int, n_local: int, global_scale: tuple[float, float],
                     local_scale: tuple[float, float], generator: torch.Generator,
                     min_intersection: float | None = None) -> dict[str, Tensor]:
    """A small multi-crop batch of ``images`` (B x 3 x S x S): ``crops``
    (n_global x B x 3 x S x S), ``small_crops`` (n_local x B x 3 x S/2 x S/2)
    and ``crop_boxes`` (B x V x 4, :func:`multi_crop`), with ``images``."""
    size = images.shape[-1]
    sizes = [size] * n_global + [max(size // 2, 1)] * n_local
    scales = [tuple(global_scale)] * n_global + [tuple(local_scale)] * n_local
    views, boxes = multi_crop(images, sizes, scales, n_global, generator, min_intersection)
    small = torch.stack(views[n_global:]) if n_local else images.new_zeros(0, images.shape[0], 3, *sizes[-1:] * 2)
    return {"images": images, "crops": torch.stack(views[:n_global]), "small_crops": small, "crop_boxes": boxes}


def _crop_group(value: object, name: str) -> list[Tensor]:
    if isinstance(value, Tensor):
        if value.dim() != 5:
            raise ValueError(f"{name} must be V x B x 3 x H x W (or a list of B x 3 x H x W), got shape "
                             f"{tuple(value.shape)}")
        value = list(value.unbind(0))
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise TypeError(f"{name} must be a V x B x 3 x H x W tensor or a list of B x 3 x H x W tensors, "
                        f"got {type(value).__name__}")
    return [check_images(v, f"{name}[{i}]") for i, v in enumerate(value)]


def check_multi_crop_views(crops: object, small_crops: object = None, n_global: int | None = None) -> list[Tensor]:
    """The V views of a multi-crop batch as one list, the global ``crops``
    first (SwAV's batch keys: ``crops`` G x B x 3 x H x W, ``small_crops``
    L x B x 3 x h x w, each also accepted as a list, ``small_crops`` possibly
    empty or None). Checks: images in [0, 1], one batch size, the global crops
    of one size, G = ``n_global`` when given, V >= 2."""
    views = _crop_group(crops, "crops")
    if n_global is not None and len(views) != n_global:
        raise ValueError(f"crops must hold the {n_global} global crops (global_crops), got {len(views)}")
    if not views:
        raise ValueError("crops must hold at least one global crop")
    for i, view in enumerate(views):
        if view.shape != views[0].shape:
            raise ValueError(f"the global crops must share one size: crops[{i}] is {tuple(view.shape)}, "
                             f"crops[0] is {tuple(views[0].shape)}")
    small = [] if small_crops is None else _crop_group(small_crops, "small_crops")
    for i, view in enumerate(small):
        if view.shape[0] != views[0].shape[0]:
            raise ValueError(f"small_crops[{i}] has batch {view.shape[0]} but crops have {views[0].shape[0]}")
    if len(views) + len(small) < 2:
        raise ValueError("crops and small_crops must hold at least 2 views together: a view is never "
                         "compared with itself")
    return views + small


def size_groups(views: Sequence[Tensor]) -> list[tuple[int, int]]:
    """(start, end) of each run of consecutive views of one size (DINO's
    ``MultiCropWrapper`` runs each run through the backbone as one batch)."""
    groups, start = [], 0
    for i in range(1, len(views) + 1):
        if i == len(views) or views[i].shape[-2:] != views[start].shape[-2:]:
            groups.append((start, i))
            start = i
    return groups
