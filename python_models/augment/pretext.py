"""Input generators of the pretext tasks: rotations (RotNet), patch pairs
(context prediction), jigsaw tiles and permutation sets (Noroozi & Favaro),
exemplar transforms (Exemplar-CNN) and centre masking (context encoders).

Every random generator takes an explicit ``torch.Generator`` (``None``: a
fresh one seeded 0), so a batch is reproducible.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from python_models._checks import check_int, check_maps

__all__ = [
    "CONTEXT_NEIGHBOURS",
    "PATHAK_FILL",
    "JigsawTiles",
    "PatchPairs",
    "centre_box",
    "check_class_indices",
    "drop_channels",
    "exemplar_transforms",
    "jigsaw_permutations",
    "jigsaw_tiles",
    "mask_centre",
    "patch_pairs",
    "rotations",
    "shuffle_tiles",
    "standardize_tiles",
]

# The 8 neighbours of the centre cell of a 3 x 3 grid, (row, column) offsets in
# raster order: label k of context prediction is CONTEXT_NEIGHBOURS[k].
CONTEXT_NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))

# Pathak et al.'s fill of the erased region: the ImageNet mean RGB (117, 104, 123) / 255
# (context-encoder train.lua, written there as 2 * v / 255 - 1 for images in [-1, 1]).
PATHAK_FILL = (117.0 / 255.0, 104.0 / 255.0, 123.0 / 255.0)


def _generator(generator: torch.Generator | None) -> torch.Generator:
    return generator if generator is not None else torch.Generator().manual_seed(0)


def _randint(low: int, high: int, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    """Integers uniform in [low, high] (inclusive)."""
    return torch.randint(low, high + 1, shape, generator=generator)


def _uniform(low: float, high: float, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator)


# --------------------------------------------------------------------------- RotNet

def rotations(images: Tensor, quarter_turns: tuple[int, ...] = (0, 1, 2, 3)) -> tuple[Tensor, Tensor]:
    """Every image rotated by each of ``quarter_turns`` (RotNet, Gidaris et al. 2018).

    View ``k * B + b`` is ``torch.rot90(images[b], quarter_turns[k], (-2, -1))``
    (counter-clockwise, as RotNet's ``np.flipud(np.transpose(img))`` for 90
    degrees) and its label is ``k``: all rotations of an image in one batch, as
    the paper trains.

    Shape:
        images: B x C x S x S (square, so every view has the same size).
        Returns ``(views, labels)``: len(quarter_turns) * B x C x S x S and
        len(quarter_turns) * B int64.

    >>> views, labels = rotations(torch.arange(4.).view(1, 1, 2, 2))
    >>> labels.tolist(), views[1, 0].tolist()
    ([0, 1, 2, 3], [[1.0, 3.0], [0.0, 2.0]])
    """
    images = check_maps(images, "images")
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"images must be square to rotate by quarter turns, got {tuple(images.shape[-2:])}")
    if not quarter_turns or any(not isinstance(k, int) for k in quarter_turns):
        raise ValueError(f"quarter_turns must be a non-empty tuple of ints, got {quarter_turns!r}")
    views = torch.cat([torch.rot90(images, k, (-2, -1)) for k in quarter_turns])
    labels = torch.arange(len(quarter_turns), device=images.device).repeat_interleave(images.shape[0])
    return views, labels


# --------------------------------------------------------------------------- context prediction

class PatchPairs(NamedTuple):
    """Context prediction's pairs: ``centre`` and ``neighbour`` patches
    (B x C x P x P), ``positions`` (B int64, index into
    :data:`CONTEXT_NEIGHBOURS`), and each patch's top-left corner (B x 2,
    (row, column) in pixels)."""

    centre: Tensor
    neighbour: Tensor
    positions: Tensor
    centre_corners: Tensor
    neighbour_corners: Tensor


def _crop(images: Tensor, corners: Tensor, size: int) -> Tensor:
    """``images[b, :, y:y + size, x:x + size]`` for each row (y, x) of ``corners``."""
    return torch.stack([image[:, y:y + size, x:x + size]
                        for image, (y, x) in zip(images, corners.tolist())])


def patch_pairs(images: Tensor, patch_size: int, gap: int, jitter: int, *, positions: int = 8,
                generator: torch.Generator | None = None) -> PatchPairs:
    """One patch pair per image for context prediction (Doersch et al. 2015).

    A 3 x 3 grid of ``patch_size`` patches with ``gap`` pixels between
    neighbours is placed uniformly in the image (keeping ``jitter`` pixels of
    margin); the pair is the centre cell and one of its 8 neighbours, chosen
    uniformly, and each patch is moved independently by an integer offset
    uniform in [-jitter, jitter] per axis. The paper: 96-px patches, gap 48,
    jitter 7. ``positions`` < 8 draws only the first ``positions`` neighbours of
    :data:`CONTEXT_NEIGHBOURS` (a smaller task).

    Shape:
        images: B x C x H x W with 3 * patch_size + 2 * gap + 2 * jitter <= H, W.
    """
    images = check_maps(images, "images")
    patch_size = check_int(patch_size, "patch_size", minimum=1)
    gap, jitter = check_int(gap, "gap", minimum=0), check_int(jitter, "jitter", minimum=0)
    positions = check_int(positions, "positions", minimum=1)
    if positions > 8:
        raise ValueError(f"positions must be in [1, 8], got {positions}")
    span = 3 * patch_size + 2 * gap
    height, width = images.shape[-2:]
    if span + 2 * jitter > min(height, width):
        raise ValueError(f"images of {height} x {width} cannot hold a 3 x 3 grid of {patch_size}-px patches with "
                         f"gap {gap} and jitter {jitter} ({span + 2 * jitter} px)")
    g = _generator(generator)
    batch, pitch = images.shape[0], patch_size + gap
    origin = torch.stack([_randint(jitter, height - span - jitter, (batch,), g),
                          _randint(jitter, width - span - jitter, (batch,), g)], 1)
    labels = torch.randint(0, positions, (batch,), generator=g)
    offsets = torch.tensor(CONTEXT_NEIGHBOURS)[labels]
    centre = origin + pitch + _randint(-jitter, jitter, (batch, 2), g)
    neighbour = origin + pitch * (1 + offsets) + _randint(-jitter, jitter, (batch, 2), g)
    return PatchPairs(_crop(images, centre, patch_size), _crop(images, neighbour, patch_size),
                      labels.to(images.device), centre, neighbour)


def drop_channels(patches: Tensor, generator: torch.Generator | None = None, noise: float = 0.01) -> Tensor:
    """Doersch et al.'s colour dropping: keep one random channel of each patch
    and replace the other two by Gaussian noise of ``noise`` times the kept
    channel's standard deviation (against chromatic-aberration shortcuts).

    Shape: N x C x h x w -> the same."""
    patches = check_maps(patches, "patches")
    g = _generator(generator)
    count, channels = patches.shape[:2]
    keep = torch.randint(0, channels, (count,), generator=g)
    kept = patches[torch.arange(count), keep]
    scale = noise * kept.flatten(1).std(1, unbiased=False).view(count, 1, 1, 1)
    out = torch.randn(patches.shape, generator=g, dtype=patches.dtype).to(patches.device) * scale
    out[torch.arange(count), keep] = kept
    return out


# --------------------------------------------------------------------------- jigsaw

def _all_permutations(tiles: int) -> Tensor:
    return torch.tensor(list(itertools.permutations(range(tiles))), dtype=torch.int8)


@functools.lru_cache(maxsize=8)
def _cached_permutations(n: int, seed: int, tiles: int) -> Tensor:
    return _greedy_permutations(_all_permutations(tiles), n, seed)


def _greedy_permutations(candidates: Tensor, n: int, seed: int) -> Tensor:
    count = candidates.shape[0]
    first = int(torch.randint(0, count, (1,), generator=torch.Generator().manual_seed(seed)))
    chosen = [first]
    # numpy, one thread: torch's element-wise threads only contend on these small passes
    columns = np.ascontiguousarray(candidates.numpy().T)  # tiles x K: one fast pass per position
    # summed Hamming distance of every candidate to the chosen set; chosen ones pushed below any score
    total = np.zeros(count, dtype=np.int32)
    for _ in range(1, n):
        for position, value in enumerate(columns[:, chosen[-1]].tolist()):
            total += columns[position] != value
        total[chosen[-1]] = -(2 ** 30)
        # the largest mean distance among the candidates not chosen; argmax returns the first
        # maximal index, so ties go to the first in candidate order
        chosen.append(int(np.argmax(total)))
    return candidates[torch.tensor(chosen)].long()


def jigsaw_permutations(n: int, seed: int = 0, *, tiles: int = 9, candidates: Tensor | None = None) -> Tensor:
    """Noroozi & Favaro's maximal-Hamming permutation set (paper, Algorithm 1).

    The rule: the candidates are all ``tiles!`` permutations in lexicographic
    order (or the rows of ``candidates``); the first permutation is candidate
    ``torch.randint(len, (1,), generator=torch.Generator().manual_seed(seed))``;
    each next one is, among the candidates not chosen yet, the one with the
    largest mean (equivalently summed) Hamming distance to all chosen so far,
    ties going to the first in candidate order. 1000 permutations of 9 tiles
    is the paper's default (computed once, then cached: a few seconds).

    Returns n x tiles int64; row p maps puzzle position i to tile ``row[i]``.

    >>> jigsaw_permutations(3, tiles=3).tolist()
    [[1, 0, 2], [0, 2, 1], [2, 1, 0]]
    """
    n = check_int(n, "n", minimum=1)
    seed = check_int(seed, "seed", minimum=0)
    if candidates is None:
        tiles = check_int(tiles, "tiles", minimum=2)
        if n > math.factorial(tiles):
            raise ValueError(f"n must be at most {tiles}! = {math.factorial(tiles)}, got {n}")
        return _cached_permutations(n, seed, tiles).clone()
    if not isinstance(candidates, Tensor) or candidates.dtype.is_floating_point or candidates.dim() != 2:
        raise TypeError("candidates must be a K x tiles integer tensor of permutations")
    if n > candidates.shape[0]:
        raise ValueError(f"n must be at most the {candidates.shape[0]} candidates, got {n}")
    expected = torch.arange(candidates.shape[1])
    if not torch.equal(candidates.sort(1).values.cpu(), expected.expand_as(candidates)):
        raise ValueError("candidates must hold permutations of 0 .. tiles - 1 in each row")
    return _greedy_permutations(candidates.cpu(), n, seed)


class JigsawTiles(NamedTuple):
    """``tiles``: B x 9 x C x c x c crops in raster order of the 3 x 3 grid;
    ``corners``: B x 9 x 2 top-left (row, column) of each crop in the image."""

    tiles: Tensor
    corners: Tensor


def jigsaw_tiles(images: Tensor, crop_fraction: float = 64 / 75, *,
                 generator: torch.Generator | None = None) -> JigsawTiles:
    """Cut each image into a 3 x 3 grid and take a random crop inside every
    cell (Noroozi & Favaro: 75-px cells of a 225-px image, 64-px crops, so a
    gap of up to 11 px hides the tile edges). Cells are ``H // 3`` x ``W // 3``
    (the first 3 * (H // 3) rows and columns), crops
    ``round(crop_fraction * min(cell))`` square: the paper's proportions at any
    image size. Crop offsets are uniform per tile and axis.
    """
    images = check_maps(images, "images")
    if not 0 < crop_fraction <= 1:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
    g = _generator(generator)
    batch = images.shape[0]
    cell_h, cell_w = images.shape[-2] // 3, images.shape[-1] // 3
    crop = max(1, round(crop_fraction * min(cell_h, cell_w)))
    if min(cell_h, cell_w) < 1:
        raise ValueError(f"images must be at least 3 x 3 pixels, got {tuple(images.shape[-2:])}")
    cells = torch.tensor([(r * cell_h, c * cell_w) for r in range(3) for c in range(3)])
    offsets = torch.stack([_randint(0, cell_h - crop, (batch, 9), g), _randint(0, cell_w - crop, (batch, 9), g)], -1)
    corners = cells + offsets
    tiles = torch.stack([_crop(images, corners[:, t], crop) for t in range(9)], 1)
    return JigsawTiles(tiles, corners)


def shuffle_tiles(tiles: Tensor, permutations: Tensor, indices: Tensor) -> Tensor:
    """Puzzle ``b`` puts tile ``permutations[indices[b], i]`` at position ``i``:
    ``out[b, i] = tiles[b, permutations[indices[b], i]]``.

    Shape: tiles B x T x ..., permutations P x T, indices B int64 in [0, P)."""
    if not isinstance(tiles, Tensor) or tiles.dim() < 2:
        raise ValueError("tiles must be a B x T x ... tensor")
    if not isinstance(indices, Tensor) or indices.dtype.is_floating_point or indices.shape != tiles.shape[:1]:
        raise ValueError(f"indices must be {tiles.shape[0]} integer permutation indices")
    if permutations.dim() != 2 or permutations.shape[1] != tiles.shape[1]:
        raise ValueError(f"permutations must be P x {tiles.shape[1]}, got {tuple(permutations.shape)}")
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= permutations.shape[0]):
        raise ValueError(f"indices must be in [0, {permutations.shape[0]})")
    order = permutations.to(tiles.device).long()[indices.long()]
    return torch.stack([tile[o] for tile, o in zip(tiles, order)])


def standardize_tiles(tiles: Tensor, eps: float = 1e-5) -> Tensor:
    """Each tile and channel to zero mean and unit standard deviation on its
    own (Noroozi & Favaro normalise every tile independently, so the puzzle
    cannot be solved from low-level statistics). Shape: ... x C x h x w."""
    mean = tiles.mean((-2, -1), keepdim=True)
    std = tiles.std((-2, -1), keepdim=True, unbiased=False)
    return (tiles - mean) / (std + eps)


# --------------------------------------------------------------------------- Exemplar-CNN

def _rgb_to_hsv(rgb: Tensor) -> Tensor:
    r, g, b = rgb.unbind(-3)
    value, _ = rgb.max(-3)
    delta = value - rgb.min(-3).values
    saturation = torch.where(value > 0, delta / value.clamp(min=1e-12), torch.zeros_like(value))
    safe = delta.clamp(min=1e-12)
    hue = torch.where(value == r, ((g - b) / safe) % 6,
                      torch.where(value == g, (b - r) / safe + 2, (r - g) / safe + 4)) / 6
    hue = torch.where(delta > 0, hue, torch.zeros_like(hue))
    return torch.stack([hue, saturation, value], -3)


def _hsv_to_rgb(hsv: Tensor) -> Tensor:
    hue, saturation, value = hsv.unbind(-3)
    k = torch.stack([(5 + hue * 6) % 6, (3 + hue * 6) % 6, (1 + hue * 6) % 6], -3)
    ramp = torch.minimum(k, 4 - k).clamp(0, 1)
    return value.unsqueeze(-3) * (1 - saturation.unsqueeze(-3) * ramp)


def exemplar_transforms(patches: Tensor, count: int, *, generator: torch.Generator | None = None,
                        translation: float = 0.2, scale: tuple[float, float] = (0.7, 1.4),
                        rotation: float = 20.0, pca_factor: tuple[float, float] = (0.5, 2.0),
                        power: tuple[float, float] = (0.25, 4.0), value_factor: tuple[float, float] = (0.7, 1.4),
                        value_shift: float = 0.1, hue_shift: float = 0.1) -> tuple[Tensor, Tensor]:
    """``count`` random transforms of each seed patch: Exemplar-CNN's surrogate
    classes (Dosovitskiy et al. 2014; each seed patch and its transforms form
    one class).

    The paper's transformation family, each parameter uniform in its range:
    translation by up to ``translation`` of the patch size (each axis), scaling
    by ``scale``, rotation by up to ``rotation`` degrees (geometric ones as one
    bilinear affine warp, border pixels replicated); "contrast 1": the
    projection of each pixel on the principal components of all the seed
    patches' pixels multiplied by a factor in ``pca_factor`` per component;
    "contrast 2": saturation and value (HSV) raised to a power in ``power``,
    multiplied by ``value_factor`` and shifted by up to ``value_shift``;
    "colour": hue shifted by up to ``hue_shift``. Output clamped to [0, 1].

    Shape:
        patches: N x 3 x s x s RGB in [0, 1].
        Returns ``(views, classes)``: N * count x 3 x s x s and N * count
        int64, view ``n * count + k`` being transform ``k`` of patch ``n``
        (class ``n``).
    """
    patches = check_maps(patches, "patches")
    if patches.shape[1] != 3:
        raise ValueError(f"patches must be N x 3 x s x s RGB, got shape {tuple(patches.shape)}")
    count = check_int(count, "count", minimum=1)
    g = _generator(generator)
    n = patches.shape[0]
    total = n * count
    views = patches.repeat_interleave(count, 0)
    shape = (total,)
    # geometric: output pixel p samples the input at R(-θ) p / s - t (normalised coordinates)
    angle = torch.deg2rad(_uniform(-rotation, rotation, shape, g))
    factor = _uniform(*scale, shape, g)
    shift = _uniform(-translation, translation, (total, 2), g) * 2  # 2 = the normalised width
    cos, sin = torch.cos(angle) / factor, torch.sin(angle) / factor
    theta = torch.stack([torch.stack([cos, sin, -shift[:, 0]], 1), torch.stack([-sin, cos, -shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(views), list(views.shape), align_corners=False)
    views = F.grid_sample(views, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # contrast 1: principal components of the seed patches' pixel colours
    pixels = patches.permute(0, 2, 3, 1).reshape(-1, 3).double()
    mean = pixels.mean(0)
    _, basis = torch.linalg.eigh(torch.cov(pixels.T))
    factors = _uniform(*pca_factor, (total, 3), g).double()
    flat = views.permute(0, 2, 3, 1).double() - mean
    coords = flat @ basis
    flat = (coords * factors.view(total, 1, 1, 3)) @ basis.T + mean
    views = flat.to(patches.dtype).permute(0, 3, 1, 2).clamp(0, 1)
    # contrast 2 and colour in HSV
    hsv = _rgb_to_hsv(views)
    hue, saturation, value = hsv.unbind(1)
    p_s, p_v = _uniform(*power, (total, 1, 1), g), _uniform(*power, (total, 1, 1), g)
    m_s, m_v = _uniform(*value_factor, (total, 1, 1), g), _uniform(*value_factor, (total, 1, 1), g)
    a_s, a_v = _uniform(-value_shift, value_shift, (total, 1, 1), g), _uniform(-value_shift, value_shift,
                                                                                 (total, 1, 1), g)
    saturation = (saturation.clamp(0, 1) ** p_s.to(views) * m_s.to(views) + a_s.to(views)).clamp(0, 1)
    value = (value.clamp(0, 1) ** p_v.to(views) * m_v.to(views) + a_v.to(views)).clamp(0, 1)
    hue = (hue + _uniform(-hue_shift, hue_shift, (total, 1, 1), g).to(views)) % 1.0
    views = _hsv_to_rgb(torch.stack([hue, saturation, value], 1)).clamp(0, 1)
    classes = torch.arange(n, device=patches.device).repeat_interleave(count)
    return views, classes


# --------------------------------------------------------------------------- context encoders

def centre_box(height: int, width: int) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)`` of the centre region a context encoder predicts:
    the central half of each side (Pathak et al.: 64 x 64 in a 128 x 128 image)."""
    height, width = check_int(height, "height", minimum=2), check_int(width, "width", minimum=2)
    y0, x0 = height // 4, width // 4
    return y0, y0 + height // 2, x0, x0 + width // 2


def mask_centre(images: Tensor, overlap: int = 4, fill: tuple[float, ...] = PATHAK_FILL) -> tuple[Tensor, Tensor]:
    """Erase the centre of each image for a context encoder (Pathak et al. 2016).

    The erased square is :func:`centre_box` shrunk by ``overlap`` pixels on each
    side (``overlapPred`` 4 of context-encoder's README command): the network
    still predicts the whole centre box, so its border overlaps the context.
    Erased pixels take ``fill`` (the ImageNet mean colour by default).

    Returns ``(masked, erased)``: B x C x H x W images and an H x W bool map
    of the erased pixels.

    >>> masked, erased = mask_centre(torch.ones(1, 3, 8, 8), overlap=1)
    >>> erased.sum().item(), round(masked[0, 0, 3, 3].item() * 255)
    (4, 117)
    """
    images = check_maps(images, "images")
    overlap = check_int(overlap, "overlap", minimum=0)
    y0, y1, x0, x1 = centre_box(*images.shape[-2:])
    if 2 * overlap >= min(y1 - y0, x1 - x0):
        raise ValueError(f"overlap {overlap} leaves nothing to erase in a {y1 - y0} x {x1 - x0} centre")
    if len(fill) != images.shape[1]:
        raise ValueError(f"fill must give one value per channel ({images.shape[1]}), got {len(fill)}")
    erased = torch.zeros(images.shape[-2:], dtype=torch.bool, device=images.device)
    erased[y0 + overlap:y1 - overlap, x0 + overlap:x1 - overlap] = True
    colour = torch.tensor(fill, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return torch.where(erased, colour, images), erased


def check_class_indices(value: object, batch_size: int, num_classes: int, name: str) -> Tensor:
    """B int64 class indices in [0, num_classes)."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype.is_floating_point or value.dtype == torch.bool or value.is_complex():
        raise TypeError(f"{name} must be int64 class indices, got dtype {value.dtype}")
    if value.shape != (batch_size,):
        raise ValueError(f"{name} must be {batch_size} class indices, got shape {tuple(value.shape)}")
    if value.numel() and (int(value.min()) < 0 or int(value.max()) >= num_classes):
        raise ValueError(f"{name} must be in [0, {num_classes})")
    return value.long()
