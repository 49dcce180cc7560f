"""Where the random walk of a refinement chain takes its affinities from.

A walk source maps B x 3 x H x W uint8 images to the affinities of the walk
on a grid of stride ``stride`` (ceil(H / stride) x ceil(W / stride)):

- :class:`ImageGradientWalk`: the fallback when no trained network is at
  hand. IRNet's boundary affinities (``wsss_ext.boundary_affinity``) on the
  image's own colour-gradient magnitude (:func:`image_boundary`), an
  assumption of this pipeline, not IRNet's: colour edges stand in for the
  class boundaries its network learns.
- :class:`BoundaryNetworkWalk`: a trained IRNet's boundary branch
  (``IRNet.boundary``, stride 4), as IRNet and Puzzle-CAM walk.
- :class:`AffinityNetworkWalk`: a trained AffinityNet's features
  (``AffinityNet.features``, stride 8) and ``wsss_ext.feature_affinity``, as PSA
  and SEAM walk.

:func:`walk_of` picks the source a trained method offers, or None.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import wsss_ext

__all__ = ["AffinityNetworkWalk", "BoundaryNetworkWalk", "ImageGradientWalk", "WalkSource", "image_boundary",
           "walk_of"]


class WalkSource(Protocol):
    """``source(images, radius)`` -> (affinity B x T x h x w, keep B x 1 x h x w or None).

    ``keep`` multiplies the foreground scores before the walk (IRNet walks
    ``cams * (1 - boundary)``); ``name`` says what the affinities come from."""

    name: str
    stride: int

    def __call__(self, images: Tensor, radius: int) -> tuple[Tensor, Tensor | None]: ...


def image_boundary(images: Tensor, blur_sigma: float = 2.0) -> Tensor:
    """B x 1 x H x W boundary probabilities from the images' colour gradients:
    the images blurred (Gaussian, ``blur_sigma`` pixels, so that fine texture
    does not read as boundaries), the largest Sobel magnitude over R, G, B,
    divided by its 99th percentile per image, clipped to [0, 1]."""
    x = images.float() / 255
    if blur_sigma > 0:
        radius = int(3 * blur_sigma + 0.5)
        taps = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
        kernel = torch.exp(-0.5 * (taps / blur_sigma) ** 2)
        kernel = (kernel / kernel.sum()).view(1, 1, 1, -1).repeat(3, 1, 1, 1)
        x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), kernel, groups=3)
        x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), kernel.transpose(2, 3), groups=3)
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=x.device)
    kernels = torch.stack([sobel, sobel.T])[:, None].repeat(3, 1, 1, 1)  # [6, 1, 3, 3]
    gradients = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernels, groups=3)
    magnitude = gradients.view(x.shape[0], 3, 2, *x.shape[2:]).pow(2).sum(2).sqrt().amax(1, keepdim=True)
    scale = magnitude.flatten(1).quantile(0.99, dim=1).clamp(min=1e-6).view(-1, 1, 1, 1)
    return (magnitude / scale).clamp(0, 1)


class ImageGradientWalk:
    """Boundary affinities on :func:`image_boundary` max-pooled to ``stride``
    (a boundary anywhere in a cell cuts the cell)."""

    def __init__(self, stride: int = 4, blur_sigma: float = 2.0) -> None:
        self.stride, self.blur_sigma = int(stride), float(blur_sigma)
        self.name = "the image-gradient boundary (no trained boundary or affinity network)"

    def __call__(self, images: Tensor, radius: int) -> tuple[Tensor, Tensor | None]:
        boundary = F.max_pool2d(image_boundary(images, self.blur_sigma), self.stride, ceil_mode=True)
        return wsss_ext.boundary_affinity(boundary, radius), 1 - boundary


class BoundaryNetworkWalk:
    """A trained IRNet's boundary map (``model.boundary``, stride 4)."""

    stride = 4

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.name = f"the trained boundary network of {getattr(model, 'KEY', type(model).__name__)}"

    @torch.no_grad()
    def __call__(self, images: Tensor, radius: int) -> tuple[Tensor, Tensor | None]:
        boundary = self.model.boundary(images.float() / 255)
        return wsss_ext.boundary_affinity(boundary, radius), 1 - boundary


class AffinityNetworkWalk:
    """A trained AffinityNet's features (``model.features``, its feature stride)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.stride = int(model.config.feature_stride)
        self.name = f"the trained affinity network of {getattr(model, 'KEY', type(model).__name__)}"

    @torch.no_grad()
    def __call__(self, images: Tensor, radius: int) -> tuple[Tensor, Tensor | None]:
        return wsss_ext.feature_affinity(self.model.features(images.float() / 255), radius), None


def walk_of(model: nn.Module | None) -> WalkSource | None:
    """The walk source a trained method offers: IRNet's boundary branch, an
    AffinityNet's features, or None (CAM-only methods; the chains then use
    :class:`ImageGradientWalk`)."""
    if model is None:
        return None
    if callable(getattr(model, "boundary", None)):
        return BoundaryNetworkWalk(model)
    if callable(getattr(model, "features", None)) and hasattr(getattr(model, "config", None), "feature_stride"):
        return AffinityNetworkWalk(model)
    return None
