"""The refinement chains that turn CAMs into pseudo-masks, as the WSSS papers
chain the kernels:

- ``cam``: a constant background score (``bg_threshold``) against the CAMs of
  the image's classes, argmax (Puzzle-CAM's CAM row).
- ``cam+crf``: dense CRF on the normalised [background, CAMs] scores
  (AffinityNet / IRNet's CRF step).
- ``cam+pamr``: PAMR on the same scores at full resolution (1-stage-wseg).
- ``cam+rw``: IRNet's random walk at stride 4 of ``cams * (1 - boundary)`` on
  boundary affinities, upsampled, divided by the max, background threshold.
  Without a trained boundary network, the boundary map is the image's own
  colour-gradient magnitude (an assumption of this pipeline, not IRNet's).
- ``cam+rw+crf``: the dense CRF on the random walk's scores (Puzzle-CAM's
  "+RW +dCRF" row).

A chain is also any comma-separated list of the steps ``rw``, ``pamr``,
``crf`` applied in order after the CAM ("pamr,crf": PAMR, then the CRF on its
output). Every chain takes a batch: images B x 3 x H x W uint8, CAMs
B x C x H x W in [0, 1] of the C foreground classes (zero for classes the
image is not tagged with), and returns B x H x W labels, 0 for background and
c + 1 for CAM channel c.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

import wsss_ext

__all__ = ["CHAINS", "STEPS", "ChainSettings", "image_boundary", "parse_chain", "refine"]

CHAINS = ("cam", "cam+crf", "cam+pamr", "cam+rw", "cam+rw+crf")
STEPS = ("rw", "pamr", "crf")


@dataclass
class ChainSettings:
    """Parameters of the chains (defaults: the papers' where they carry over to
    small images, spatial widths scaled down for them)."""

    bg_threshold: float = 0.25
    crf: dict = field(default_factory=lambda: dict(n_iters=10, gaussian_sxy=3.0, gaussian_weight=3.0,
                                                   bilateral_sxy=20.0, bilateral_srgb=13.0, bilateral_weight=10.0))
    pamr: dict = field(default_factory=lambda: dict(dilations=(1, 2, 4, 8, 12, 24), n_iters=10, sigma=0.1))
    rw_stride: int = 4
    rw_beta: float = 10.0
    rw_steps: int = 256
    rw_bg_threshold: float = 0.25
    boundary_blur: float = 2.0


def parse_chain(chain: str | list[str] | tuple[str, ...]) -> list[str]:
    """The steps of a chain: a name of CHAINS ("cam+rw+crf"), a comma-separated
    list ("pamr,crf"), or a sequence of steps. Raises ValueError for an unknown step."""
    if isinstance(chain, str):
        parts = chain.replace("+", ",").split(",")
        steps = [part.strip() for part in parts if part.strip() and part.strip() != "cam"]
    else:
        steps = list(chain)
    unknown = [step for step in steps if step not in STEPS]
    if unknown:
        raise ValueError(f"unknown refinement step(s) {unknown}; steps are {STEPS} (or a chain of {CHAINS})")
    return steps


def _normalised(scores: Tensor) -> Tensor:
    return scores / scores.sum(1, keepdim=True).clamp(min=1e-8)


def _with_background(foreground: Tensor, bg: float) -> Tensor:
    """[B, C, H, W] foreground scores -> [B, 1 + C, H, W] with a constant background channel."""
    return torch.cat([torch.full_like(foreground[:, :1], bg), foreground], 1)


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


def _random_walk(images: Tensor, foreground: Tensor, settings: ChainSettings) -> Tensor:
    """IRNet's walk of the foreground scores at stride rw_stride, upsampled and
    divided by each image's max, with the rw background threshold prepended."""
    stride = settings.rw_stride
    small = F.avg_pool2d(foreground, stride, ceil_mode=True)
    boundary = F.max_pool2d(image_boundary(images, settings.boundary_blur), stride, ceil_mode=True)
    walked = wsss_ext.irnet_random_walk(small, boundary, beta=settings.rw_beta, n_steps=settings.rw_steps)
    walked = F.interpolate(walked, size=foreground.shape[-2:], mode="bilinear", align_corners=False)
    walked = walked / walked.flatten(1).amax(1).clamp(min=1e-5).view(-1, 1, 1, 1)
    return _with_background(walked, settings.rw_bg_threshold)


def refine(images: Tensor, cams: Tensor, chain: str | list[str] = "cam+crf",
           settings: ChainSettings | None = None) -> Tensor:
    """Labels (B x H x W int64) of one chain; see the module docstring."""
    steps = parse_chain(chain)
    settings = settings or ChainSettings()
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be B x 3 x H x W uint8, got {images.dtype} {tuple(images.shape)}")
    if cams.dim() != 4 or cams.shape[0] != images.shape[0] or cams.shape[2:] != images.shape[2:]:
        raise ValueError(f"cams {tuple(cams.shape)} must be B x C x H x W with the images' B, H, W")
    # Non-negative scores, channel 0 the background's.
    scores = _with_background(cams.float(), settings.bg_threshold)
    for step in steps:
        if step == "rw":
            scores = _random_walk(images, scores[:, 1:], settings)
        elif step == "pamr":
            scores = wsss_ext.pamr(images.float() / 255, _normalised(scores), **settings.pamr)
        else:
            unary = wsss_ext.unary_from_probs(_normalised(scores))
            scores = wsss_ext.dense_crf(unary, images, **settings.crf)
    return scores.argmax(1)
