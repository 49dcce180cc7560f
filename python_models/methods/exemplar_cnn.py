"""Exemplar-CNN (Dosovitskiy, Springenberg, Riedmiller & Brox,
"Discriminative Unsupervised Feature Learning with Convolutional Neural
Networks", NIPS 2014): every seed patch with its random transforms is one
surrogate class; a classifier learns to tell the classes apart."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from python_models._checks import check_images, check_int
from python_models.augment.pretext import check_class_indices, exemplar_transforms
from python_models.heads.pretext import PRETEXT_OUTPUT_STRIDE, pooled_features
from python_models.methods.base import Method, synthetic_tagged_batch
from python_models.methods.registry import register

__all__ = ["ExemplarCNN"]


@register
class ExemplarCNN(Method):
    """Surrogate-class discrimination: ``views`` (transformed seed patches)
    are classified into num_classes surrogate classes (the seed each came
    from); cross-entropy (``surrogate`` = ``loss``).

    The surrogate data set is made once by the data pipeline (the paper
    precomputes it; ``example_batch`` shows how): N seed patches, each
    transformed ``transforms_per_class`` times by
    :func:`python_models.augment.exemplar_transforms` (translation within 0.2
    of the patch size, scale 0.7-1.4, rotation within 20 degrees, principal-
    component contrast 0.5-2, saturation / value power 0.25-4, factor 0.7-1.4,
    shift 0.1, hue shift 0.1). ``forward(images)`` returns pooled features B x D.

    Defaults (paper, Sec. 2 and 4; the counts **unverified**, from the paper's
    text as we recall it, not from code):
        num_classes 8000 surrogate classes (the paper studies 50-32000);
        transforms_per_class 100 (K, samples per surrogate class);
        patch_size 32 (32 x 32 seed patches);
        backbone "resnet50": the paper's networks are small 3-4-layer convnets
            (64c5-64c5-128f and larger); Kolesnikov et al. (CVPR 2019)
            re-implement Exemplar on ResNet-50.
        The paper samples seeds where the gradient is large; the seed choice
        is the data pipeline's.

    Kernels: none (none of wsss_ext's six kernels applies to Exemplar-CNN).
    """

    KEY = "exemplar_cnn"
    PAPER = ("Dosovitskiy, Springenberg, Riedmiller & Brox, Discriminative Unsupervised Feature Learning with "
             "Convolutional Neural Networks, NIPS 2014")
    DEFAULTS = dict(num_classes=8000, backbone="resnet50", transforms_per_class=100, patch_size=32)
    KERNELS = ()
    BATCH_KEYS = {
        "views": "N x 3 x s x s float RGB in [0, 1]: transformed seed patches",
        "classes": "N int64 in [0, num_classes): the surrogate class (seed patch) of each view",
    }
    TINY_BACKBONE = "resnet_tiny"

    def __init__(self, **overrides: Any) -> None:
        super().__init__(**overrides)
        count = check_int(self.config.num_classes, "num_classes", minimum=2)  # surrogate classes
        self.backbone = self.build_backbone(PRETEXT_OUTPUT_STRIDE)
        self.classifier = nn.Linear(self.backbone.out_channels, count)

    def forward(self, images: Tensor) -> Tensor:
        """Pooled features B x D of images in [0, 1]."""
        return pooled_features(self.backbone, self.normalize(check_images(images)))

    def losses(self, batch: Mapping[str, Any], step: int = 0) -> dict[str, Tensor]:
        self.check_batch(batch)
        views = check_images(batch["views"], "views")
        classes = check_class_indices(batch["classes"], views.shape[0], self.config.num_classes, "classes")
        loss = F.cross_entropy(self.classifier(self(views)), classes)
        return {"surrogate": loss, "loss": loss}

    def example_batch(self, batch_size: int = 2, image_size: int = 32,
                      generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """``batch_size`` synthetic seed patches (``images``, classes 0 .. B - 1)
        and ``transforms_per_class`` transforms of each (``views``, ``classes``)."""
        if batch_size > self.config.num_classes:
            raise ValueError(f"batch_size {batch_size} seeds need as many surrogate classes "
                             f"(num_classes {self.config.num_classes})")
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        images = synthetic_tagged_batch(batch_size, image_size, 3, g)["images"]
        views, classes = exemplar_transforms(images, self.config.transforms_per_class, generator=g)
        return {"images": images, "views": views, "classes": classes}
