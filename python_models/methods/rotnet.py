"""RotNet (Gidaris, Singh & Komodakis, "Unsupervised Representation Learning
by Predicting Image Rotations", ICLR 2018): classify which of four rotations
(0, 90, 180, 270 degrees) was applied to an image."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from python_models._checks import check_images, check_int
from python_models.augment.pretext import rotations
from python_models.heads.pretext import PRETEXT_OUTPUT_STRIDE, pooled_features
from python_models.methods.base import Method, synthetic_tagged_batch
from python_models.methods.registry import register

__all__ = ["RotNet"]

@register
class RotNet(Method):
    """Rotation prediction: every image of the batch in all four rotations
    (``torch.rot90`` k times, label k; the paper feeds the four rotated copies
    of each image together), a 4-way classifier on the pooled features, and the
    cross-entropy over the 4B views (``rotation`` = ``loss``).

    ``forward(images)`` returns the rotation logits B x num_classes of the
    images as given; ``features(images)`` the pooled representation B x D.

    Defaults:
        num_classes 4: the rotations (paper, Sec. 2.2 and Table 2: 4 beats 2 and 8);
            2 or 3 use the first quarter-turns of (0, 90, 180, 270), a smaller task.
        backbone "resnet50": the paper trains NIN / AlexNet; Kolesnikov et al.
            ("Revisiting Self-Supervised Visual Representation Learning", CVPR
            2019) and Goyal et al. (ICCV 2019) re-implement it on ResNet-50, the
            network later comparisons use. Pooled at full stride 32 with a
            linear classifier (no bias-free constraint). ``"tiny"``: resnet_tiny.
        The optimiser of FeatureLearningRotNet's configs (SGD, momentum 0.9,
        Nesterov, weight decay 5e-4, lr 0.1 stepped) is the caller's.

    Kernels: none (none of wsss_ext's six kernels applies to rotation prediction).
    """

    KEY = "rotnet"
    PAPER = ("Gidaris, Singh & Komodakis, Unsupervised Representation Learning by Predicting Image Rotations, "
             "ICLR 2018")
    DEFAULTS = dict(num_classes=4, backbone="resnet50")
    KERNELS = ()
    BATCH_KEYS = {"images": "B x 3 x S x S float RGB in [0, 1] (square), rotated inside losses()"}
    TINY_BACKBONE = "resnet_tiny"

    def __init__(self, **overrides: Any) -> None:
        super().__init__(**overrides)
        count = check_int(self.config.num_classes, "num_classes", minimum=2)
        if count > 4:
            raise ValueError(f"num_classes (the number of rotations) must be 2, 3 or 4, got {count}")
        self.quarter_turns = tuple(range(count))
        self.backbone = self.build_backbone(PRETEXT_OUTPUT_STRIDE)
        self.classifier = nn.Linear(self.backbone.out_channels, count)

    def features(self, images: Tensor) -> Tensor:
        """The pooled representation B x D of images in [0, 1]."""
        return pooled_features(self.backbone, self.normalize(check_images(images)))

    def forward(self, images: Tensor) -> Tensor:
        """Rotation logits B x num_classes of images in [0, 1]."""
        return self.classifier(self.features(images))

    def losses(self, batch: Mapping[str, Any], step: int = 0) -> dict[str, Tensor]:
        self.check_batch(batch)
        images = check_images(batch["images"])
        views, labels = rotations(images, self.quarter_turns)
        loss = F.cross_entropy(self(views), labels)
        return {"rotation": loss, "loss": loss}

    def example_batch(self, batch_size: int = 2, image_size: int = 32,
                      generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Synthetic images (:func:`synthetic_tagged_batch`); ``labels`` are unused tags."""
        batch = synthetic_tagged_batch(batch_size, image_size, 3, generator)
        return {"images": batch["images"], "labels": batch["labels"]}
