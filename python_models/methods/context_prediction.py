"""Context prediction (Doersch, Gupta & Efros, "Unsupervised Visual
Representation Learning by Context Prediction", ICCV 2015): predict the
relative position (one of 8) of a patch with respect to the centre patch of a
3 x 3 grid."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from python_models._checks import check_images, check_int
from python_models.augment.pretext import check_class_indices, patch_pairs
from python_models.heads.pretext import PRETEXT_OUTPUT_STRIDE, mlp, pooled_features
from python_models.methods.base import Method, synthetic_tagged_batch
from python_models.methods.registry import register

__all__ = ["ContextPrediction", "scaled_grid"]


def scaled_grid(image_size: int, patch_size: int, gap: int, jitter: int) -> tuple[int, int, int]:
    """``(patch_size, gap, jitter)`` as given when the 3 x 3 grid fits in
    ``image_size`` pixels, else all three scaled down in proportion (floored;
    a jitter stays >= 1 if it was > 0) so the grid fits."""
    if 3 * patch_size + 2 * gap + 2 * jitter <= image_size:
        return patch_size, gap, jitter
    scale = image_size / (3 * patch_size + 2 * gap + 2 * jitter)
    patch, space = max(1, int(patch_size * scale)), int(gap * scale)
    shake = max(1, int(jitter * scale)) if jitter > 0 else 0
    while patch > 1 and 3 * patch + 2 * space + 2 * shake > image_size:
        patch -= 1
    if 3 * patch + 2 * space + 2 * shake > image_size:
        raise ValueError(f"image_size {image_size} is too small for a 3 x 3 patch grid")
    return patch, space, shake


@register
class ContextPrediction(Method):
    """Relative patch location: the centre patch and one of its 8 neighbours
    in a 3 x 3 grid (gap between patches, each patch jittered; see
    :func:`python_models.augment.patch_pairs`) go through one shared tower
    (siamese, late fusion); the two pooled features are concatenated and an
    MLP (the paper's fc7 and fc8) classifies the neighbour's position;
    cross-entropy (``position`` = ``loss``).

    The pairs are made by the data pipeline (``example_batch`` shows how):
    ``patches`` B x 2 x 3 x P x P (centre first) and ``positions`` B int64.
    ``forward(images)`` returns the tower's pooled features B x D (the
    representation); ``position_logits(centre, neighbour)`` the classifier.

    Defaults (paper, Sec. 3 and 4):
        num_classes 8: the relative positions (fewer: the first of
            :data:`python_models.augment.CONTEXT_NEIGHBOURS`, a smaller task);
        patch_size 96, gap 48, jitter 7 (up to 7 px per axis), at the paper's
            image scale of 150K-450K pixels; ``example_batch`` scales the three
            down in proportion for small images (:func:`scaled_grid`);
        hidden_dim 4096 (fc7); the paper's per-tower fc6 (4096) is replaced by
            the backbone's pooled features;
        backbone "resnet50": the paper's tower is AlexNet-like; Kolesnikov et
            al. (CVPR 2019) re-implement relative patch location on ResNet-50.
        Not implemented: the paper's colour projection against chromatic
        aberration (colour dropping is :func:`python_models.augment.drop_channels`)
        and random pixelation of patches.

    Kernels: none (none of wsss_ext's six kernels applies to context prediction).
    """

    KEY = "context_prediction"
    PAPER = ("Doersch, Gupta & Efros, Unsupervised Visual Representation Learning by Context Prediction, "
             "ICCV 2015")
    DEFAULTS = dict(num_classes=8, backbone="resnet50", patch_size=96, gap=48, jitter=7, hidden_dim=4096)
    KERNELS = ()
    BATCH_KEYS = {
        "patches": "B x 2 x 3 x P x P float RGB in [0, 1]: the centre patch, then its neighbour",
        "positions": "B int64 in [0, num_classes): the neighbour's relative position (CONTEXT_NEIGHBOURS)",
    }
    TINY_BACKBONE = "resnet_tiny"

    def __init__(self, **overrides: Any) -> None:
        super().__init__(**overrides)
        count = check_int(self.config.num_classes, "num_classes", minimum=2)
        if count > 8:
            raise ValueError(f"num_classes (relative positions) must be in [2, 8], got {count}")
        self.backbone = self.build_backbone(PRETEXT_OUTPUT_STRIDE)
        self.classifier = mlp(2 * self.backbone.out_channels, int(self.config.hidden_dim), count)

    def forward(self, images: Tensor) -> Tensor:
        """Pooled tower features B x D of images (or patches) in [0, 1]."""
        return pooled_features(self.backbone, self.normalize(check_images(images)))

    def position_logits(self, centre: Tensor, neighbour: Tensor) -> Tensor:
        """B x num_classes logits of the neighbour's position, one tower pass for both patches."""
        features = self(torch.cat([centre, neighbour]))
        first, second = features.chunk(2)
        return self.classifier(torch.cat([first, second], 1))

    def losses(self, batch: Mapping[str, Any], step: int = 0) -> dict[str, Tensor]:
        self.check_batch(batch)
        patches, positions = batch["patches"], batch["positions"]
        if not isinstance(patches, Tensor) or patches.dim() != 5 or patches.shape[1:3] != (2, 3):
            raise ValueError(f"patches must be B x 2 x 3 x P x P, got "
                             f"{tuple(patches.shape) if isinstance(patches, Tensor) else type(patches).__name__}")
        patches = check_images(patches.flatten(0, 1), "patches").view_as(patches)
        positions = check_class_indices(positions, patches.shape[0], self.config.num_classes, "positions")
        loss = F.cross_entropy(self.position_logits(patches[:, 0], patches[:, 1]), positions)
        return {"position": loss, "loss": loss}

    def example_batch(self, batch_size: int = 2, image_size: int = 32,
                      generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Synthetic images and one patch pair from each (grid scaled to the image size)."""
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        images = synthetic_tagged_batch(batch_size, image_size, 3, g)["images"]
        size, gap, jitter = scaled_grid(image_size, self.config.patch_size, self.config.gap, self.config.jitter)
        pairs = patch_pairs(images, size, gap, jitter, positions=self.config.num_classes, generator=g)
        return {"images": images, "patches": torch.stack([pairs.centre, pairs.neighbour], 1),
                "positions": pairs.positions}
