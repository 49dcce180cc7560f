"""SEC (Kolesnikov & Lampert, "Seed, Expand and Constrain: Three Principles for
Weakly-Supervised Image Segmentation", ECCV 2016): a DeepLab-LargeFOV
segmentation network trained from localisation cues and image tags with
L = seed + expand + constrain, the CRF of the constrain loss run by
``wsss_ext.dense_crf`` inside ``losses()``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from python_models._checks import check_label_map
from python_models.backbones.vgg import VGGLargeFOV, _fc8
from python_models.losses.sec import (
    MIN_PROB,
    SEC_CRF,
    SEC_TEST_CRF,
    constrain_loss,
    crf_target,
    expand_loss,
    floored_softmax,
    seed_loss,
)
from python_models.methods.base import IGNORE_INDEX, WSSSMethod
from python_models.methods.registry import register
from python_models.pseudo.crf import crf_labels, tag_unary_from_probs

__all__ = ["SEC", "largefov_map_size", "synthetic_seeds"]


def largefov_map_size(size: int) -> int:
    """The output side of DeepLab-LargeFOV for an input side ``size``: three
    3 x 3 / stride 2 / pad 1 poolings in Caffe's ceil mode (321 -> 41, 32 -> 5)."""
    for _ in range(3):
        size = size // 2 + 1
    return size


def synthetic_seeds(masks: Tensor, size: tuple[int, int], radius: int = 2,
                    ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Localisation cues for tests: the ground-truth label at each map pixel's
    centre (corner-aligned, as SEC's ``zoom``) where the mask is constant within
    ``radius`` image pixels of it (confident interiors), ``ignore_index`` elsewhere.

    Args:
        masks: B x H x W int64 ground truth. size: (h, w) of the network's output.

    Returns:
        B x h x w int64 seeds.
    """
    height, width = masks.shape[-2:]
    rows = torch.linspace(0, height - 1, size[0]).round().long()
    cols = torch.linspace(0, width - 1, size[1]).round().long()
    padded = F.pad(masks.float().unsqueeze(1), (radius,) * 4, mode="replicate")
    high = F.max_pool2d(padded, 2 * radius + 1, stride=1).squeeze(1)
    low = -F.max_pool2d(-padded, 2 * radius + 1, stride=1).squeeze(1)
    pure = (high == low)[:, rows][:, :, cols]
    labels = masks[:, rows][:, :, cols]
    return torch.where(pure, labels, torch.full_like(labels, ignore_index))


@register
class SEC(WSSSMethod):
    """SEC's segmentation network and losses.

    The network is DeepLab-LargeFOV on VGG-16 (``training/train.prototxt``):
    conv1-conv5, pool5, the 3 x 3 average pooling ``pool5a``, fc6 (3 x 3,
    dilation 12, 1024) and fc7 (1024) with dropout 0.5, then ``fc8-SEC``, a
    1 x 1 convolution to 1 + C scores (weights N(0, 0.01), bias 0) at stride 8
    (41 x 41 for 321 x 321 crops). ``forward(images)`` returns these fc8
    scores, B x (1 + C) x h x w (background first).

    ``losses(batch)`` (``pylayers/pylayers.py``), on ``f = floored_softmax(fc8)``
    (``SoftmaxLayer``: softmax + 1e-4, renormalised):

    - ``seed``: :func:`python_models.losses.seed_loss` on ``batch["seeds"]``;
    - ``expand``: :func:`python_models.losses.expand_loss`, GWRP decays 0.996 / 0.999;
    - ``constrain``: :func:`python_models.losses.constrain_loss` against
      ``Q = crf_target(softmax(fc8), images)``: ``wsss_ext.dense_crf`` on the
      41 x 41 map with the image downscaled to it, energy −fc8 (``CRFLayer``
      feeds fc8 and ``CRF.py`` negates it), every class given to the CRF
      (``crf_mask_absent`` False), Q floored at 1e-4, no gradient through Q.

    ``cams(images, labels)``: the network's class probabilities
    ``softmax(fc8)[1:]`` at the image size (``deploy/demo.py``: the image
    resized to ``test_sizes``, softmax, probabilities resized back
    bilinearly), zero outside the tags. They are probabilities, not
    max-normalised CAMs: a pixel's values over the background and classes sum to 1.
    ``pseudo_labels(images, labels)``: those probabilities floored at 1e-5,
    restricted to the background and tags, refined by ``wsss_ext.dense_crf``
    at full resolution (``test_crf``; None: plain argmax), argmax.

    Defaults, with their sources in kolesman/SEC:
        num_classes 20 (VOC); backbone ``vgg16_largefov`` (``train.prototxt``);
        fg_decay 0.996, bg_decay 0.999, min_prob 1e-4 (``pylayers.py``
        ``q_fg``, ``q_bg``, ``min_prob``); crf: gaussian sxy 3/12 compat 3,
        bilateral sxy 80/12, srgb 13, compat 10, 10 iterations
        (``CRF/krahenbuhl2013/CRF.py`` with ``scale_factor=12``); crf_mask_absent
        False (``CRFLayer`` passes all 21 channels); test_sizes (321,), test
        probability floor 1e-5 and test_crf gaussian 3/3, bilateral 80/13/10
        (``deploy/demo.py``, ``scale_factor=1``); crop_size 321, batch_size 15
        (``train.prototxt``); base_lr 1e-3, lr_gamma 0.1 every lr_step 2000,
        max_steps 8000, momentum 0.9, weight_decay 5e-4 (``solver.prototxt``),
        fc8 learning rate x10 (bias x20) (``train.prototxt`` ``lr_mult``).

    Kernels: ``dense_crf`` in ``losses`` (constrain) and ``pseudo_labels``.
    """

    KEY = "sec"
    PAPER = ("Kolesnikov & Lampert, Seed, Expand and Constrain: Three Principles for Weakly-Supervised "
             "Image Segmentation, ECCV 2016")
    DEFAULTS = dict(
        num_classes=20,
        backbone="vgg16_largefov",
        fg_decay=0.996,
        bg_decay=0.999,
        min_prob=MIN_PROB,
        crf=dict(SEC_CRF),
        crf_mask_absent=False,
        test_sizes=(321,),
        test_min_prob=1e-5,
        test_crf=dict(SEC_TEST_CRF),
        crop_size=321,
        batch_size=15,
        base_lr=1e-3,
        lr_gamma=0.1,
        lr_step=2000,
        max_steps=8000,
        momentum=0.9,
        weight_decay=5e-4,
        fc8_lr_mult=10.0,
    )
    KERNELS = ("dense_crf",)
    TINY_BACKBONE = "vgg_tiny"
    BATCH_KEYS = {
        "images": "B x 3 x H x W float RGB in [0, 1]",
        "labels": "B x C multi-hot image-level tags",
        "seeds": "B x h x w int64 localisation cues at the network's output size "
                 "(0 background, c + 1 for tag column c, 255 no cue)",
    }
    # deploy/demo.py resizes the softmax probabilities; DSRG's test-ms.py sums resized scores.
    _RESIZE_PROBS = True

    def __init__(self, **overrides: Any) -> None:
        super().__init__(**overrides)
        self.backbone = self.build_backbone()
        self.build_head()

    def build_head(self) -> None:
        """``fc8-SEC``: a 1 x 1 convolution to 1 + C scores, N(0, 0.01) weights, zero bias."""
        self.classifier = _fc8(self.backbone.out_channels, self.num_classes + 1)

    def scores(self, images: Tensor) -> Tensor:
        """fc8 scores B x (1 + C) x h x w of normalised images."""
        return self.classifier(self.backbone(images))

    def forward(self, images: Tensor) -> Tensor:
        """fc8 scores B x (1 + C) x h x w of images in [0, 1] (background first)."""
        return self.scores(self.normalize(images))

    def map_size(self, height: int, width: int) -> tuple[int, int]:
        """The output size for H x W inputs (VGG-LargeFOV's; else a dry forward)."""
        if isinstance(self.backbone, VGGLargeFOV):
            return largefov_map_size(height), largefov_map_size(width)
        with torch.no_grad():
            return tuple(self.scores(torch.zeros(1, 3, height, width, device=self.pixel_mean.device)).shape[-2:])

    def check_seeds(self, seeds: Any, logits: Tensor) -> Tensor:
        return check_label_map(seeds, "seeds", num_labels=self.num_classes + 1, ignore_index=IGNORE_INDEX,
                               shape=(logits.shape[0], *logits.shape[2:]))

    def losses(self, batch: Mapping[str, Any], step: int = 0) -> dict[str, Tensor]:
        self.check_batch(batch)
        images, labels = self.check_inputs(batch["images"], batch["labels"])
        config = self.config
        logits = self(images)
        seeds = self.check_seeds(batch["seeds"], logits)
        probs = floored_softmax(logits, config.min_prob)
        seed = seed_loss(probs, seeds)
        expand = expand_loss(probs, labels, config.fg_decay, config.bg_decay)
        target = crf_target(F.softmax(logits.detach(), 1), images, labels, mask_absent=config.crf_mask_absent,
                            min_prob=config.min_prob, **config.crf)
        constrain = constrain_loss(probs, target, config.min_prob)
        return {"seed": seed, "expand": expand, "constrain": constrain, "loss": seed + expand + constrain}

    def test_probs(self, images: Tensor) -> Tensor:
        """B x (1 + C) x H x W class probabilities at the images' size: each
        image resized to every ``test_sizes`` square (None: as it is), as the
        test scripts do."""
        normalized = self.normalize(images)
        size = tuple(images.shape[-2:])
        total = None
        for side in self.config.test_sizes or (None,):
            scaled = normalized if side is None or (side, side) == size else F.interpolate(
                normalized, size=(int(side), int(side)), mode="bilinear", align_corners=True)
            scores = self.scores(scaled)
            if self._RESIZE_PROBS:
                scores = F.softmax(scores, 1)
            scores = F.interpolate(scores, size=size, mode="bilinear", align_corners=True)
            total = scores if total is None else total + scores
        if self._RESIZE_PROBS:
            return total / len(self.config.test_sizes or (None,))
        return F.softmax(total, 1)

    @torch.no_grad()
    def cams(self, images: Tensor, labels: Tensor) -> Tensor:
        """The class probabilities (see the class docstring), B x C x H x W in [0, 1],
        zero outside the tags."""
        images, labels = self.check_inputs(images, labels)
        return self.test_probs(images)[:, 1:] * labels.to(images.dtype)[..., None, None]

    @torch.no_grad()
    def pseudo_labels(self, images: Tensor, labels: Tensor) -> Tensor:
        """Argmax over the background and the tags of the (CRF-refined) probabilities:
        B x H x W int64, 0 background, c + 1 for tag column c."""
        images, labels = self.check_inputs(images, labels)
        probs = self.test_probs(images)
        unary = tag_unary_from_probs(probs, labels, clip=self.config.test_min_prob)
        if self.config.test_crf is None:
            return unary.argmin(1)
        return crf_labels(images, unary, **self.config.test_crf)

    def example_batch(self, batch_size: int = 2, image_size: int = 32,
                      generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """The base batch plus ``seeds``: :func:`synthetic_seeds` of the masks at the output size."""
        batch = super().example_batch(batch_size, image_size, generator)
        batch["seeds"] = synthetic_seeds(batch["masks"], self.map_size(image_size, image_size))
        return batch
