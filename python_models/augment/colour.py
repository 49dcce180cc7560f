"""Colour spaces and colour targets of the self-supervised video methods
(colorization, CorrFlow, MAST, SS-VOS), as plain functions.

- :func:`rgb_to_lab` / :func:`lab_to_rgb`: sRGB in [0, 1] <-> CIE Lab under
  D65 (L in [0, 100], a and b about [-128, 127]), the formulas of
  ``skimage.color.rgb2lab`` / ``lab2rgb`` (and of OpenCV's float ``COLOR_RGB2Lab``,
  which MAST and CorrFlow call), differentiable.
- :func:`normalize_lab`: MAST's network input and target, ``(L - 50) / 50``,
  ``a / 127``, ``b / 127`` (MAST ``YTVOSTrainLoader.py lab_preprocess``).
- :func:`channel_dropout`: the "information bottleneck" of CorrFlow and MAST:
  the same channels of every image zeroed, the rest rescaled by
  ``C / (C - dropped)``.
- :func:`colour_centroids` and :func:`quantize_colours`: k-means centroids of
  the ab plane and each pixel's nearest one (CorrFlow's 16 colour classes,
  Vondrick et al.'s 16 clusters).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from python_models._checks import check_int, check_real
from python_models.pseudo.clustering import kmeans
from wsss_ext.ops._checks import require_finite

__all__ = [
    "CORRFLOW_DROPOUT",
    "LAB_SCALE",
    "LAB_SHIFT",
    "MAST_DROPOUT",
    "ColourQuantizer",
    "channel_dropout",
    "colour_centroids",
    "denormalize_lab",
    "gamut_centroids",
    "grayscale_lab",
    "lab_to_rgb",
    "normalize_lab",
    "quantize_colours",
    "rgb_to_lab",
]

# skimage.color.colorconv: xyz_from_rgb (sRGB primaries, D65) and the D65 / 2-degree white point.
_XYZ_FROM_RGB = ((0.412453, 0.357580, 0.180423),
                 (0.212671, 0.715160, 0.072169),
                 (0.019334, 0.119193, 0.950227))
_WHITE_D65 = (0.95047, 1.0, 1.08883)
_EPSILON = 0.008856  # (6/29)^3, CIE's linear-segment threshold (skimage's constant)
_KAPPA = 7.787       # slope of the linear segment, 1 / (3 (6/29)^2)

LAB_SHIFT = (50.0, 0.0, 0.0)      # MAST lab_preprocess: Normalize([50, 0, 0], [50, 127, 127])
LAB_SCALE = (50.0, 127.0, 127.0)

# (channels that may be dropped, how many may be dropped, probability of dropping none)
MAST_DROPOUT = dict(channels=(1, 2), counts=(1,), keep_prob=0.0)      # MAST models/mast.py dropout2d_lab
CORRFLOW_DROPOUT = dict(channels=(0, 1, 2), counts=(1, 2), keep_prob=0.3)  # CorrFlow models/corrflow.py dropout2d


def _colour_images(images: object, name: str) -> Tensor:
    """... x 3 x H x W float (B x 3 x H x W or B x T x 3 x H x W), finite, non-empty."""
    if not isinstance(images, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if not images.dtype.is_floating_point:
        raise TypeError(f"{name} must be a float tensor, got dtype {images.dtype}")
    if images.dim() < 3 or images.shape[-3] != 3:
        raise ValueError(f"{name} must be ... x 3 x H x W (channels third from last), got shape {tuple(images.shape)}")
    if images.numel() == 0:
        raise ValueError(f"{name} is empty: shape {tuple(images.shape)}")
    require_finite(images, f"{name} has NaN or infinite values")
    return images


def _matrix(rows, like: Tensor) -> Tensor:
    return torch.tensor(rows, dtype=like.dtype, device=like.device)


def _channels(vector, like: Tensor) -> Tensor:
    return torch.tensor(vector, dtype=like.dtype, device=like.device).view(3, 1, 1)


def rgb_to_lab(images: Tensor) -> Tensor:
    """sRGB in [0, 1] to CIE Lab (D65): L in [0, 100], a and b roughly in [-128, 127].

    The sRGB gamma is undone, XYZ = M rgb (skimage's ``xyz_from_rgb``),
    divided by the D65 white, then ``f(t) = t^(1/3)`` above (6/29)^3 and
    ``7.787 t + 16/116`` below; ``L = 116 f(Y) - 16``, ``a = 500 (f(X) - f(Y))``,
    ``b = 200 (f(Y) - f(Z))``. Equal to ``skimage.color.rgb2lab`` to float
    precision; differentiable (both branches have finite gradients).

    Shape: ... x 3 x H x W -> the same (channels L, a, b).
    """
    images = _colour_images(images, "images")
    x = images.clamp(0, 1)
    # clamp inside each branch so that torch.where never differentiates x^p at 0
    linear = torch.where(x > 0.04045, ((x.clamp(min=0.04045) + 0.055) / 1.055) ** 2.4, x / 12.92)
    xyz = torch.einsum("ij,...jhw->...ihw", _matrix(_XYZ_FROM_RGB, x), linear) / _channels(_WHITE_D65, x)
    f = torch.where(xyz > _EPSILON, xyz.clamp(min=_EPSILON) ** (1.0 / 3.0), _KAPPA * xyz + 16.0 / 116.0)
    fx, fy, fz = f.unbind(-3)
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=-3)


def lab_to_rgb(lab: Tensor) -> Tensor:
    """CIE Lab (D65) to sRGB, clipped to [0, 1]: the inverse of :func:`rgb_to_lab`
    (``skimage.color.lab2rgb``'s formulas).

    Shape: ... x 3 x H x W -> the same.
    """
    lab = _colour_images(lab, "lab")
    lightness, a, b = lab.unbind(-3)
    fy = (lightness + 16.0) / 116.0
    f = torch.stack([fy + a / 500.0, fy, fy - b / 200.0], dim=-3)
    xyz = torch.where(f ** 3 > _EPSILON, f ** 3, (f - 16.0 / 116.0) / _KAPPA) * _channels(_WHITE_D65, lab)
    linear = torch.einsum("ij,...jhw->...ihw", torch.linalg.inv(_matrix(_XYZ_FROM_RGB, lab)), xyz).clamp(min=0)
    rgb = torch.where(linear > 0.0031308, 1.055 * linear.clamp(min=0.0031308) ** (1 / 2.4) - 0.055, 12.92 * linear)
    return rgb.clamp(0, 1)


def normalize_lab(lab: Tensor) -> Tensor:
    """MAST's scaling of Lab to about [-1, 1]: ``(L - 50) / 50, a / 127, b / 127``."""
    lab = _colour_images(lab, "lab")
    return (lab - _channels(LAB_SHIFT, lab)) / _channels(LAB_SCALE, lab)


def denormalize_lab(lab: Tensor) -> Tensor:
    """The inverse of :func:`normalize_lab`."""
    lab = _colour_images(lab, "lab")
    return lab * _channels(LAB_SCALE, lab) + _channels(LAB_SHIFT, lab)


def grayscale_lab(images: Tensor) -> Tensor:
    """The lightness of RGB images as a one-channel input in [-1, 1],
    ``L / 50 - 1`` (CorrFlow ``greyscale_preprocess``; Vondrick et al. feed
    the grayscale frames to the network). Shape: ... x 3 x H x W -> ... x 1 x H x W."""
    return rgb_to_lab(images)[..., :1, :, :] / 50.0 - 1.0


def channel_dropout(images: Tensor, channels: Sequence[int] = (1, 2), counts: Sequence[int] = (1,),
                    keep_prob: float = 0.0, generator: torch.Generator | None = None) -> tuple[Tensor, tuple[int, ...]]:
    """Zero the same randomly chosen channels of every image and rescale by
    ``C / (C - dropped)`` (the information bottleneck of CorrFlow and MAST:
    the network cannot match colours it does not see).

    With probability ``keep_prob`` nothing is dropped; otherwise ``n`` is
    drawn uniformly from ``counts`` and ``n`` distinct channels uniformly
    from ``channels``. The same channels go for the whole tensor, as both
    originals drop "the same layers for all images" of a batch.

    Presets: :data:`MAST_DROPOUT` (one of Lab's a, b; MAST ``dropout2d_lab``,
    scale 3/2) and :data:`CORRFLOW_DROPOUT` (one or two of the three input
    channels, none with probability 0.3; CorrFlow ``dropout2d``).

    Args:
        images: ... x C x H x W float (B x C x H x W or B x T x C x H x W).
        channels: the channels that may be dropped.
        counts: the possible numbers of dropped channels, each < C.
        keep_prob: probability of leaving the images unchanged.
        generator: the random draws (torch's global generator if None).

    Returns:
        ``(dropped images, the dropped channel indices, sorted)``; the input
        is not modified.
    """
    if not isinstance(images, Tensor) or not images.dtype.is_floating_point:
        raise TypeError(f"images must be a float tensor ... x C x H x W, got "
                        f"{type(images).__name__ if not isinstance(images, Tensor) else images.dtype}")
    if images.dim() < 3:
        raise ValueError(f"images must be ... x C x H x W, got shape {tuple(images.shape)}")
    total = images.shape[-3]
    channels = tuple(check_int(c, "channels[]", minimum=0) for c in channels)
    if not channels or len(set(channels)) != len(channels) or max(channels) >= total:
        raise ValueError(f"channels must be distinct indices below the {total} channels, got {channels}")
    counts = tuple(check_int(n, "counts[]", minimum=1) for n in counts)
    if not counts or max(counts) > len(channels) or max(counts) >= total:
        raise ValueError(f"counts must be in [1, {min(len(channels), total - 1)}], got {counts}")
    keep_prob = check_real(keep_prob, "keep_prob")
    if not 0.0 <= keep_prob <= 1.0:
        raise ValueError(f"keep_prob must be a probability in [0, 1], got {keep_prob}")
    if float(torch.rand((), generator=generator)) < keep_prob:
        return images.clone(), ()
    n = counts[int(torch.randint(len(counts), (), generator=generator))]
    order = torch.randperm(len(channels), generator=generator)[:n]
    dropped = tuple(sorted(channels[int(i)] for i in order))
    keep = torch.ones(total, dtype=images.dtype, device=images.device)
    keep[list(dropped)] = 0
    return images * (keep * total / (total - n)).view(total, 1, 1), dropped


def _ab(lab: object, name: str) -> Tensor:
    if not isinstance(lab, Tensor) or not lab.dtype.is_floating_point:
        raise TypeError(f"{name} must be a float Lab tensor ... x 3 x H x W (or ... x 2 x H x W ab)")
    if lab.dim() < 3 or lab.shape[-3] not in (2, 3):
        raise ValueError(f"{name} must be ... x 3 x H x W Lab or ... x 2 x H x W ab, got shape {tuple(lab.shape)}")
    require_finite(lab, f"{name} has NaN or infinite values")
    return lab[..., -2:, :, :]


def colour_centroids(lab: Tensor, k: int = 16, samples: int = 10000, n_iters: int = 20,
                     generator: torch.Generator | None = None) -> Tensor:
    """k-means centroids of the ab plane of Lab images (CorrFlow's
    ``centroids_16k_kinetics_10000samples.npy``: 16 clusters of 10000 pixels
    sampled from Kinetics; Vondrick et al. quantise to 16 clusters too).

    Args:
        lab: ... x 3 x H x W Lab (:func:`rgb_to_lab`, a and b unscaled) or ... x 2 x H x W ab.
        k: clusters (16 in both papers).
        samples: pixels drawn without replacement (all if fewer).
        n_iters: Lloyd iterations of :func:`python_models.pseudo.kmeans`.
        generator: the pixel draw and k-means' initial centroids.

    Returns:
        k x 2 centroids (a, b), in the order k-means returns them.
    """
    ab = _ab(lab, "lab").movedim(-3, -1).reshape(-1, 2)
    k = check_int(k, "k", minimum=1)
    samples = check_int(samples, "samples", minimum=1)
    if ab.shape[0] < k:
        raise ValueError(f"lab holds {ab.shape[0]} pixels, fewer than k = {k} clusters")
    if ab.shape[0] > samples:
        ab = ab[torch.randperm(ab.shape[0], generator=generator)[:samples].to(ab.device)]
    centroids, _ = kmeans(ab, k, n_iters, generator)
    return centroids


@functools.lru_cache(maxsize=4)
def _gamut_centroids(k: int, samples: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    rgb = torch.rand(1, 3, 1, samples, generator=g, dtype=torch.float64)
    return colour_centroids(rgb_to_lab(rgb), k, samples, 20, g).float()


def gamut_centroids(k: int = 16, samples: int = 10000, seed: int = 0) -> Tensor:
    """k ab centroids of ``samples`` sRGB colours drawn uniformly (seeded,
    cached): a data-free stand-in for CorrFlow's Kinetics centroids, which
    :func:`colour_centroids` on the training frames replaces. Returns k x 2."""
    return _gamut_centroids(check_int(k, "k", minimum=1), check_int(samples, "samples", minimum=1), int(seed)).clone()


def quantize_colours(lab: Tensor, centroids: Tensor) -> Tensor:
    """Each pixel's nearest ab centroid (Euclidean, CorrFlow ``quantized_color_preprocess``).

    Shape: ... x 3 x H x W Lab (or ... x 2 x H x W ab), K x 2 centroids -> ... x H x W int64 in [0, K).
    """
    ab = _ab(lab, "lab")
    if not isinstance(centroids, Tensor) or not centroids.dtype.is_floating_point:
        raise TypeError("centroids must be a float K x 2 tensor of (a, b)")
    if centroids.dim() != 2 or centroids.shape[1] != 2 or centroids.shape[0] == 0:
        raise ValueError(f"centroids must be K x 2 (a, b) with K >= 1, got shape {tuple(centroids.shape)}")
    points = ab.movedim(-3, -1)
    distance = ((points.unsqueeze(-2) - centroids.to(points)) ** 2).sum(-1)
    return distance.argmin(-1)


class ColourQuantizer(nn.Module):
    """Quantised colour targets: RGB in [0, 1] -> the index of each pixel's
    nearest ab centroid (:func:`quantize_colours`), with the centroids as a
    persistent buffer (saved with a checkpoint).

    Starts at :func:`gamut_centroids` (no data needed); :meth:`fit` replaces
    them by :func:`colour_centroids` of training frames, as CorrFlow and
    Vondrick et al. cluster their training videos' colours.

    Shape: ... x 3 x H x W -> ... x H x W int64 in [0, k).
    """

    def __init__(self, k: int = 16) -> None:
        super().__init__()
        self.register_buffer("centroids", gamut_centroids(k))

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    def forward(self, images: Tensor) -> Tensor:
        return quantize_colours(rgb_to_lab(images), self.centroids)

    @torch.no_grad()
    def fit(self, images: Tensor, samples: int = 10000, generator: torch.Generator | None = None) -> Tensor:
        """Set the centroids to k-means of the ab colours of RGB ``images``; returns them."""
        self.centroids.copy_(colour_centroids(rgb_to_lab(images), self.k, samples, generator=generator))
        return self.centroids
