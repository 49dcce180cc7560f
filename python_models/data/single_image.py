"""Single-image self-supervision (Asano, Rupprecht & Vedaldi, "A critical
analysis of self-supervision, or what we can learn from a single image",
ICLR 2020): a dataset of augmented crops of ONE image, long as an ImageNet
epoch, on which any self-supervised method trains.

The augmentation follows yukimasano/single_img_pretraining
``make_dataset_single.py`` (``MonoDataset`` and its argument defaults):

1. a random square crop of ``initial_crop`` (0.5) times the image's shorter
   side (``--cropfirst``, ``--initcrop 0.5``);
2. a random resized crop of area scale in ``scale`` = (1/500, 1) (``--scale
   500 1``, inverted) and aspect ratio in (3/4, 4/3), resized to
   sqrt(2) * ``size`` (bicubic there, bilinear here), redrawn until it fits
   (no centre-crop fallback, as the script);
3. a random affine map: rotation in +-``degrees`` (30) and shear in
   +-``shear`` (30) degrees along x, zeros outside (``RandomAffine``, fill 0);
4. a centre crop of ``size`` (256, ``--img_size``);
5. a horizontal flip with probability ``flip_p`` (0.5; the script leaves the
   flip to the training code, the brief's dataset does it here);
6. colour jitter (brightness, contrast, saturation 0.4, hue 0.1) with
   probability ``jitter_p`` (0.5), applied in that fixed order (torchvision
   draws a random order).

Every crop ``i`` is drawn from its own generator seeded from ``(seed, i)``,
so ``dataset[i]`` is the same tensor whatever the order of access or the
number of workers. Length: ``num_crops`` (1,281,167, ``--num_imgs``, the size of
ImageNet-1k's training set).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from python_models._checks import check_images, check_int, check_real

__all__ = ["SINGLE_IMAGE_CROPS", "SingleImageCrops", "color_jitter"]

SINGLE_IMAGE_CROPS = 1_281_167  # make_dataset_single.py --num_imgs


def _rgb_to_hsv(rgb: Tensor) -> Tensor:
    r, g, b = rgb.unbind(0)
    maxc, minc = rgb.max(0).values, rgb.min(0).values
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    hue = torch.where(maxc == r, (g - b) / safe % 6, torch.where(maxc == g, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = torch.where(delta > 0, hue / 6, torch.zeros_like(hue))
    sat = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    return torch.stack([hue, sat, maxc])


def _hsv_to_rgb(hsv: Tensor) -> Tensor:
    h, s, v = hsv.unbind(0)
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6])
    return v - v * s * (torch.minimum(k, 4 - k)).clamp(0, 1)


def color_jitter(image: Tensor, brightness: float, contrast: float, saturation: float, hue: float) -> Tensor:
    """Colour jitter of one 3 x H x W RGB image in [0, 1] with given factors
    (torchvision's definitions): brightness x b, contrast blended with the mean
    grey level by c, saturation blended with the grey image by s, hue rotated by
    ``hue`` turns; the result clamped to [0, 1]. Factors 1, 1, 1 and hue 0 give
    the image back.

    >>> x = torch.rand(3, 4, 4)
    >>> bool(torch.allclose(color_jitter(x, 1.0, 1.0, 1.0, 0.0), x, atol=1e-6))
    True
    """
    def grey(x: Tensor) -> Tensor:
        return (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]).unsqueeze(0)

    x = (image * brightness).clamp(0, 1)
    x = ((x - grey(x).mean()) * contrast + grey(x).mean()).clamp(0, 1)
    x = ((x - grey(x)) * saturation + grey(x)).clamp(0, 1)
    if hue != 0:
        hsv = _rgb_to_hsv(x)
        hsv = torch.stack([(hsv[0] + hue) % 1.0, hsv[1], hsv[2]])
        x = _hsv_to_rgb(hsv).clamp(0, 1)
    return x


class SingleImageCrops(Dataset):
    """``num_crops`` augmented crops (3 x ``size`` x ``size`` float RGB in [0, 1]) of one image.

    Args:
        image: 3 x H x W (or 1 x 3 x H x W) float RGB in [0, 1].
        num_crops: the dataset's length.
        size: the output side (256).
        initial_crop: side of the first random square crop relative to the
            shorter image side (0.5; None skips it).
        scale: area range of the random resized crop ((1/500, 1)).
        ratio: its aspect-ratio range ((3/4, 4/3)).
        degrees, shear: the affine map's limits in degrees (30, 30; 0 skips).
        flip_p: probability of a horizontal flip (0.5).
        jitter: brightness, contrast, saturation, hue strengths ((0.4, 0.4, 0.4, 0.1)).
        jitter_p: probability of the colour jitter (0.5).
        views: crops per item: 1 returns a tensor, k > 1 a tuple of k independent
            crops (e.g. SimCLR's two views) drawn from the item's generator.
        seed: the seed every item's generator derives from.

    ``params(i)`` gives the random choices of item ``i`` (crop boxes in
    pixels of the image and of the first crop, angles, flip, jitter factors).
    """

    def __init__(self, image: Tensor, num_crops: int = SINGLE_IMAGE_CROPS, size: int = 256,
                 initial_crop: float | None = 0.5, scale: tuple[float, float] = (1 / 500, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), degrees: float = 30.0, shear: float = 30.0,
                 flip_p: float = 0.5, jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
                 jitter_p: float = 0.5, views: int = 1, seed: int = 0) -> None:
        if isinstance(image, Tensor) and image.dim() == 3:
            image = image.unsqueeze(0)
        image = check_images(image, "image")
        if image.shape[0] != 1:
            raise ValueError(f"image must be one 3 x H x W image, got shape {tuple(image.shape)}")
        self.image = image[0].float()
        self.num_crops = check_int(num_crops, "num_crops", minimum=1)
        self.size = check_int(size, "size", minimum=1)
        if initial_crop is not None:
            initial_crop = check_real(initial_crop, "initial_crop")
            if not 0 < initial_crop <= 1:
                raise ValueError(f"initial_crop must be in (0, 1], got {initial_crop}")
        self.initial_crop = initial_crop
        self.scale = tuple(check_real(s, "scale") for s in scale)
        self.ratio = tuple(check_real(r, "ratio", positive=True) for r in ratio)
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"scale must be (low, high) with 0 < low <= high <= 1, got {scale}")
        if len(self.ratio) != 2 or self.ratio[0] > self.ratio[1]:
            raise ValueError(f"ratio must be (low, high) with low <= high, got {ratio}")
        self.degrees, self.shear = check_real(degrees, "degrees"), check_real(shear, "shear")
        self.flip_p, self.jitter_p = check_real(flip_p, "flip_p"), check_real(jitter_p, "jitter_p")
        for name, p in (("flip_p", self.flip_p), ("jitter_p", self.jitter_p)):
            if not 0 <= p <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        self.jitter = tuple(check_real(j, "jitter") for j in jitter)
        if len(self.jitter) != 4 or min(self.jitter) < 0 or self.jitter[3] > 0.5:
            raise ValueError(f"jitter must be 4 strengths >= 0 (hue <= 0.5), got {jitter}")
        self.views = check_int(views, "views", minimum=1)
        self.seed = check_int(seed, "seed")

    def __len__(self) -> int:
        return self.num_crops

    def generator(self, index: int) -> torch.Generator:
        """The generator of item ``index`` (seeded from ``seed`` and ``index``)."""
        return torch.Generator().manual_seed((self.seed * 2_654_435_761 + int(index) * 40_503 + 1) % (2 ** 63))

    def _uniform(self, g: torch.Generator, low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=g, dtype=torch.float64))

    def _draw(self, g: torch.Generator) -> dict[str, Any]:
        _, height, width = self.image.shape
        p: dict[str, Any] = {}
        top, left, h, w = 0, 0, height, width
        if self.initial_crop is not None:
            side = max(1, int(self.initial_crop * min(height, width)))
            top = int(torch.randint(0, height - side + 1, (), generator=g))
            left = int(torch.randint(0, width - side + 1, (), generator=g))
            h = w = side
        p["initial_box"] = (top, left, h, w)
        area = h * w
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(1000):
            target = area * self._uniform(g, *self.scale)
            aspect = math.exp(self._uniform(g, *log_ratio))
            cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < cw <= w and 0 < ch <= h:
                break
        else:  # practically unreachable for sane settings: the whole first crop
            ch, cw = h, w
        ct = int(torch.randint(0, h - ch + 1, (), generator=g))
        cl = int(torch.randint(0, w - cw + 1, (), generator=g))
        p["crop_box"] = (ct, cl, ch, cw)  # inside the first crop
        p["box"] = (top + ct, left + cl, ch, cw)  # inside the image
        p["angle"] = self._uniform(g, -self.degrees, self.degrees)
        p["shear"] = self._uniform(g, -self.shear, self.shear)
        p["flip"] = bool(torch.rand((), generator=g) < self.flip_p)
        p["jitter"] = None
        if bool(torch.rand((), generator=g) < self.jitter_p):
            b, c, s, hue = self.jitter
            p["jitter"] = (self._uniform(g, max(0.0, 1 - b), 1 + b), self._uniform(g, max(0.0, 1 - c), 1 + c),
                           self._uniform(g, max(0.0, 1 - s), 1 + s), self._uniform(g, -hue, hue))
        return p

    def params(self, index: int) -> dict[str, Any] | list[dict[str, Any]]:
        """The random choices of item ``index`` (a list of them when ``views > 1``)."""
        index = self._index(index)
        g = self.generator(index)
        draws = [self._draw(g) for _ in range(self.views)]
        return draws[0] if self.views == 1 else draws

    def _index(self, index: int) -> int:
        index = check_int(index, "index")
        if index < 0:
            index += self.num_crops
        if not 0 <= index < self.num_crops:
            raise IndexError(f"index {index} out of range for {self.num_crops} crops")
        return index

    def _render(self, p: dict[str, Any]) -> Tensor:
        top, left, h, w = p["box"]
        big = int(math.sqrt(2) * self.size)
        crop = self.image[:, top:top + h, left:left + w].unsqueeze(0)
        crop = F.interpolate(crop, size=(big, big), mode="bilinear", align_corners=False)
        if p["angle"] != 0 or p["shear"] != 0:
            a, s = math.radians(p["angle"]), math.radians(p["shear"])
            rotation = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
            shearing = torch.tensor([[1.0, math.tan(s)], [0.0, 1.0]])
            inverse = torch.linalg.inv(rotation @ shearing)  # output -> input coordinates
            theta = torch.cat([inverse, torch.zeros(2, 1)], 1).unsqueeze(0)
            grid = F.affine_grid(theta, list(crop.shape), align_corners=False)
            crop = F.grid_sample(crop, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        offset = (big - self.size) // 2
        out = crop[0, :, offset:offset + self.size, offset:offset + self.size]
        if p["flip"]:
            out = out.flip(-1)
        if p["jitter"] is not None:
            out = color_jitter(out, *p["jitter"])
        return out.clamp(0, 1).contiguous()

    def __getitem__(self, index: int) -> Tensor | tuple[Tensor, ...]:
        draws = self.params(index)
        if self.views == 1:
            return self._render(draws)
        return tuple(self._render(p) for p in draws)
