"""A small deterministic segmentation dataset with image-level tags, for a
demo that needs no download.

Each image is a textured background (smooth colour field, fine grain, a few
faint streaks) with 1 to 3 objects. An object is an irregular star-shaped
region (a circle whose radius is a random low-order Fourier series) drawn
with an anti-aliased edge, filled with its class's appearance: a base colour
(jittered per object) and a class-specific texture (stripes, dots, checks,
rings). Later objects occlude earlier ones; the ground truth is the visible
label of each pixel (0 = background) and the tags are the classes covering at
least ``min_visible`` pixels; the pixels of a class below that are marked
``IGNORE_INDEX`` (255), as VOC marks its void pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["CLASS_NAMES", "IGNORE_INDEX", "SyntheticDataset", "make_dataset"]

IGNORE_INDEX = 255

CLASS_NAMES = ("background", "stripes", "dots", "checks", "rings")

# Base RGB colour of each foreground class (index 1..4), in [0, 1].
_CLASS_COLOURS = np.array([[0.85, 0.35, 0.25], [0.25, 0.6, 0.3], [0.3, 0.4, 0.85], [0.85, 0.75, 0.2]])


@dataclass
class SyntheticDataset:
    """images: N x 3 x H x W uint8; masks: N x H x W int64 (0 = background,
    1..4 the classes, 255 ignored); tags: N x 4 float (multi-hot over the foreground classes)."""

    images: torch.Tensor
    masks: torch.Tensor
    tags: torch.Tensor

    def __len__(self) -> int:
        return len(self.images)


def _texture(kind: int, ys: np.ndarray, xs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A [0, 1] pattern of class `kind` (1..4) over the pixel grid."""
    phase, period = rng.uniform(0, 2 * np.pi), rng.uniform(5.0, 7.0)
    if kind == 1:  # diagonal stripes
        return 0.5 + 0.5 * np.sin((ys + xs) * 2 * np.pi / period + phase)
    if kind == 2:  # dots
        return (np.cos(ys * 2 * np.pi / period + phase) * np.cos(xs * 2 * np.pi / period) > 0.5).astype(float)
    if kind == 3:  # checks
        return ((np.floor(ys / period * 1.3) + np.floor(xs / period * 1.3)) % 2).astype(float)
    return 0.5 + 0.5 * np.cos(np.hypot(ys - ys.mean(), xs - xs.mean()) * 2 * np.pi / period + phase)  # rings


def _object_alpha(size: int, rng: np.random.Generator) -> np.ndarray:
    """An irregular star-shaped region with an anti-aliased edge (coverage in [0, 1])."""
    cy, cx = rng.uniform(0.2, 0.8, 2) * size
    radius = rng.uniform(0.13, 0.24) * size
    ys, xs = np.mgrid[0:size, 0:size].astype(float)
    angle = np.arctan2(ys - cy, xs - cx)
    boundary = radius * (1 + sum(rng.uniform(-0.18, 0.18) * np.cos(k * angle + rng.uniform(0, 2 * np.pi))
                                 for k in range(2, 6)))
    distance = np.hypot(ys - cy, xs - cx)
    return np.clip(boundary - distance + 0.5, 0.0, 1.0)  # a one-pixel soft edge


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    coarse = rng.uniform(0.3, 0.7, (3, 4, 4))
    field = torch.nn.functional.interpolate(torch.from_numpy(coarse)[None], size=(size, size), mode="bicubic",
                                            align_corners=True)[0].numpy()
    grey = field.mean(0, keepdims=True)
    field = 0.6 * grey + 0.4 * field  # muted colours, unlike the objects'
    ys, xs = np.mgrid[0:size, 0:size].astype(float)
    streaks = 0.04 * np.sin((ys * rng.uniform(-1, 1) + xs) * rng.uniform(0.2, 0.5))
    return field + streaks + rng.normal(0, 0.03, (3, size, size))


def make_dataset(n_images: int, size: int = 96, seed: int = 0, max_objects: int = 3,
                 min_visible: int = 40) -> SyntheticDataset:
    """``n_images`` images of ``size`` x ``size``, identical for identical arguments."""
    rng = np.random.default_rng(seed)
    images = np.empty((n_images, 3, size, size), dtype=np.uint8)
    masks = np.zeros((n_images, size, size), dtype=np.int64)
    tags = np.zeros((n_images, len(CLASS_NAMES) - 1), dtype=np.float32)
    ys, xs = np.mgrid[0:size, 0:size].astype(float)
    for index in range(n_images):
        image = _background(size, rng)
        mask = np.zeros((size, size), dtype=np.int64)
        for _ in range(rng.integers(1, max_objects + 1)):
            kind = int(rng.integers(1, len(CLASS_NAMES)))
            alpha = _object_alpha(size, rng)
            colour = np.clip(_CLASS_COLOURS[kind - 1] + rng.normal(0, 0.06, 3), 0, 1)[:, None, None]
            pattern = _texture(kind, ys, xs, rng)[None]
            fill = colour * (0.65 + 0.35 * pattern) + rng.normal(0, 0.02, (3, size, size))
            image = alpha[None] * fill + (1 - alpha[None]) * image
            mask[alpha >= 0.5] = kind
        images[index] = np.clip(image * 255, 0, 255).round().astype(np.uint8)
        masks[index] = mask
        for kind in range(1, len(CLASS_NAMES)):
            visible = mask == kind
            if visible.sum() >= min_visible:
                tags[index, kind - 1] = 1.0
            else:  # a sliver too small to tag: ignored by the evaluation, as VOC's void
                mask[visible] = IGNORE_INDEX
    return SyntheticDataset(torch.from_numpy(images), torch.from_numpy(masks), torch.from_numpy(tags))
