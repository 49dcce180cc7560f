"""A small deterministic video object segmentation set: textured shapes that
translate, rotate and occlude one another over a slowly panning textured
background, with per-frame instance masks. For ``wsss-ext demo --task
video`` and the tests; no download.

Every video is drawn from its own seed (``SeedSequence(seed).spawn``), so
video i is the same whatever the number of videos asked for. Its background
is a sum of sinusoids in continuous coordinates (a smooth colour field plus a
fainter, finer grain) evaluated at a position that drifts by up to half a
pixel a frame, so the camera seems to pan. Each of its 1 to ``max_objects``
objects is an irregular star-shaped region (a circle whose radius is a random
low-order Fourier series) filled with a base colour and one of four textures
(stripes, dots, checks, rings) written in the object's own coordinates, so
the texture moves and turns with it. An object moves at a constant velocity
(0.6 to 1.8 pixels a frame at 64 px, scaled with the size), bouncing off the
image's margins, and turns at a constant rate; the objects keep one depth
order, so crossing paths occlude. Edges are anti-aliased over one pixel; the
mask holds the label of the front-most object covering each pixel at least
half (0 = background, 1..K the objects in creation order). Every object
shows at least ``min_visible`` pixels in the first frame, so a first-frame
mask names them all; later frames may hide one entirely.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["SyntheticVideos", "make_videos"]

# Vivid base colours of the objects, unlike the muted background.
_COLOURS = np.array([[0.9, 0.3, 0.2], [0.2, 0.7, 0.3], [0.25, 0.4, 0.9], [0.9, 0.8, 0.15],
                     [0.8, 0.3, 0.8], [0.2, 0.8, 0.85]])


@dataclass
class SyntheticVideos:
    """frames: N x T x 3 x H x W uint8 RGB; masks: N x T x H x W int64 (0 =
    background, 1..K the objects); n_objects: N int64 (K of each video)."""

    frames: torch.Tensor
    masks: torch.Tensor
    n_objects: torch.Tensor

    def __len__(self) -> int:
        return len(self.frames)


@dataclass
class _Object:
    centre: np.ndarray  # (y, x) at frame 0
    velocity: np.ndarray  # pixels a frame
    angle: float
    spin: float  # radians a frame
    radius: float
    harmonics: np.ndarray  # (k, amplitude, phase) rows of the boundary's Fourier series
    texture: int
    period: float
    colour: np.ndarray


def _fold(position: np.ndarray, low: float, high: float) -> np.ndarray:
    """Reflect positions into [low, high]: a bounce off the margins."""
    span = high - low
    phase = np.mod(position - low, 2 * span)
    return low + np.where(phase > span, 2 * span - phase, phase)


def _background(ys: np.ndarray, xs: np.ndarray, waves: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """3 x H x W: sum of channel-wise sinusoids a sin(w . p + phase) at the shifted grid."""
    y, x = ys + offset[0], xs + offset[1]
    image = np.full((3, *ys.shape), 0.5)
    for channel, wy, wx, amplitude, phase in waves:
        image[int(channel)] += amplitude * np.sin(wy * y + wx * x + phase)
    return image


def _pattern(kind: int, u: np.ndarray, v: np.ndarray, period: float) -> np.ndarray:
    """A [0, 1] texture in object coordinates (u, v)."""
    if kind == 0:  # stripes
        return 0.5 + 0.5 * np.sin(2 * np.pi * u / period)
    if kind == 1:  # dots
        return (np.cos(2 * np.pi * u / period) * np.cos(2 * np.pi * v / period) > 0.4).astype(float)
    if kind == 2:  # checks
        return (np.mod(np.floor(u / period) + np.floor(v / period), 2)).astype(float)
    return 0.5 + 0.5 * np.cos(2 * np.pi * np.hypot(u, v) / period)  # rings


def _new_object(rng: np.random.Generator, size: int) -> _Object:
    scale = size / 64
    speed, heading = rng.uniform(0.6, 1.8) * scale, rng.uniform(0, 2 * np.pi)
    harmonics = np.stack([np.arange(2, 6), rng.uniform(-0.15, 0.15, 4), rng.uniform(0, 2 * np.pi, 4)], 1)
    return _Object(centre=rng.uniform(0.25, 0.75, 2) * size,
                   velocity=speed * np.array([np.sin(heading), np.cos(heading)]),
                   angle=rng.uniform(0, 2 * np.pi), spin=rng.uniform(-0.1, 0.1),
                   radius=rng.uniform(0.12, 0.2) * size, harmonics=harmonics, texture=int(rng.integers(4)),
                   period=rng.uniform(4.0, 7.0) * max(scale, 0.5),
                   colour=np.clip(_COLOURS[rng.integers(len(_COLOURS))] + rng.normal(0, 0.06, 3), 0, 1))


def _render_object(obj: _Object, t: int, ys: np.ndarray, xs: np.ndarray, size: int):
    """(coverage H x W in [0, 1], fill 3 x H x W) of ``obj`` at frame ``t``."""
    margin = 0.6 * obj.radius
    cy, cx = _fold(obj.centre + obj.velocity * t, margin, size - margin)
    angle = obj.angle + obj.spin * t
    dy, dx = ys - cy, xs - cx
    # object coordinates: the pixel offset turned back by the object's angle
    u = np.cos(angle) * dx + np.sin(angle) * dy
    v = -np.sin(angle) * dx + np.cos(angle) * dy
    polar = np.arctan2(v, u)
    boundary = obj.radius * (1 + sum(a * np.cos(k * polar + p) for k, a, p in obj.harmonics))
    coverage = np.clip(boundary - np.hypot(u, v) + 0.5, 0.0, 1.0)
    fill = obj.colour[:, None, None] * (0.55 + 0.45 * _pattern(obj.texture, u, v, obj.period))[None]
    return coverage, fill


def _video(rng: np.random.Generator, n_frames: int, size: int, max_objects: int, min_visible: int):
    ys, xs = np.mgrid[0:size, 0:size].astype(float)
    # (channel, wy, wx, amplitude, phase): 6 smooth colour waves, 9 finer grain waves
    smooth = np.column_stack([rng.integers(0, 3, 6), rng.uniform(-1, 1, (6, 2)) * 2 * np.pi / size * 2,
                              rng.uniform(0.05, 0.12, 6), rng.uniform(0, 2 * np.pi, 6)])
    grain = np.column_stack([rng.integers(0, 3, 9), rng.uniform(-1, 1, (9, 2)) * 2 * np.pi / 6,
                             rng.uniform(0.02, 0.05, 9), rng.uniform(0, 2 * np.pi, 9)])
    waves = np.concatenate([smooth, grain])
    drift = rng.uniform(-0.5, 0.5, 2)
    for _ in range(100):  # redraw the objects until each shows in the first frame
        objects = [_new_object(rng, size) for _ in range(int(rng.integers(1, max_objects + 1)))]
        depth = rng.permutation(len(objects))  # back to front
        frames = np.empty((n_frames, 3, size, size))
        masks = np.zeros((n_frames, size, size), dtype=np.int64)
        for t in range(n_frames):
            image = _background(ys, xs, waves, drift * t)
            for index in depth:
                coverage, fill = _render_object(objects[index], t, ys, xs, size)
                image = coverage[None] * fill + (1 - coverage[None]) * image
                masks[t][coverage >= 0.5] = index + 1
            frames[t] = image + rng.normal(0, 0.012, image.shape)  # sensor noise, new every frame
        if all((masks[0] == k).sum() >= min_visible for k in range(1, len(objects) + 1)):
            return np.clip(frames * 255, 0, 255).round().astype(np.uint8), masks, len(objects)
    raise ValueError(f"could not place {max_objects} objects with {min_visible} visible pixels each in a "
                     f"{size} x {size} frame; use a larger size or a smaller min_visible")


def make_videos(n_videos: int, n_frames: int = 12, size: int = 64, seed: int = 0, max_objects: int = 3,
                min_visible: int = 30) -> SyntheticVideos:
    """``n_videos`` videos of ``n_frames`` frames of ``size`` x ``size``
    (see the module docstring), identical for identical arguments.

    Example:
        >>> videos = make_videos(2, n_frames=4, size=32, seed=1, min_visible=10)
        >>> videos.frames.shape, videos.masks.shape
        (torch.Size([2, 4, 3, 32, 32]), torch.Size([2, 4, 32, 32]))
    """
    for name, value, low in (("n_videos", n_videos, 0), ("n_frames", n_frames, 1), ("size", size, 8),
                             ("max_objects", max_objects, 1), ("min_visible", min_visible, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if max_objects > 255:
        raise ValueError(f"max_objects must be at most 255 (labels of a palette PNG), got {max_objects}")
    frames = np.empty((n_videos, n_frames, 3, size, size), dtype=np.uint8)
    masks = np.zeros((n_videos, n_frames, size, size), dtype=np.int64)
    counts = np.zeros(n_videos, dtype=np.int64)
    for index, child in enumerate(np.random.SeedSequence(seed).spawn(n_videos)):
        frames[index], masks[index], counts[index] = _video(np.random.default_rng(child), n_frames, size,
                                                            max_objects, min_visible)
    return SyntheticVideos(torch.from_numpy(frames), torch.from_numpy(masks), torch.from_numpy(counts))
