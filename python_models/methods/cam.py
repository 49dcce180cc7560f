"""CAM (Zhou et al., "Learning Deep Features for Discriminative Localization",
CVPR 2016) as the WSSS repositories train it: a backbone, a 1 x 1 classifier
without bias, global average pooling, multi-label soft-margin loss on the
image-level tags."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from python_models.heads import CAMHead
from python_models.methods.base import WSSSMethod
from python_models.methods.registry import register
from python_models.pseudo.confident import IRNET_CRF

__all__ = ["CAM", "build_cam_network"]


@register
class CAM(WSSSMethod):
    """The CAM classifier.

    ``forward(images) -> logits`` (B x C) equals the spatial mean of
    ``raw_cams`` (GAP and the bias-free classifier commute).

    Defaults (irn ``run_sample.py``, ``net/resnet50_cam.py``):
        num_classes 20 (VOC); backbone ResNet-50 at output stride 16;
        cam_scales (1.0, 0.5, 1.5, 2.0) with flips; IR labels at
        conf_fg_thres 0.30 / conf_bg_thres 0.05 with IRNet's CRF
        (gaussian 3/3, bilateral 50/5/10, 10 iterations, gt_prob 0.7).

    Kernels: ``dense_crf`` in ``pseudo_labels``.
    """

    KEY = "cam"
    PAPER = "Zhou et al., Learning Deep Features for Discriminative Localization, CVPR 2016"
    DEFAULTS = dict(
        num_classes=20,
        backbone="resnet50",
        output_stride=16,
        cam_scales=(1.0, 0.5, 1.5, 2.0),
        cam_flip=True,
        fg_threshold=0.30,
        bg_threshold=0.05,
        crf=IRNET_CRF,
    )
    KERNELS = ("dense_crf",)

    def __init__(self, **overrides: Any) -> None:
        super().__init__(**overrides)
        self.backbone = self.build_backbone(self.config.output_stride)
        self.head = CAMHead(self.backbone.out_channels, self.num_classes)

    def raw_cams(self, images: Tensor) -> Tensor:
        """B x C x h x w class activation maps of normalised images."""
        return self.head(self.backbone(images))

    def forward(self, images: Tensor) -> Tensor:
        """Logits B x C of images in [0, 1]."""
        return self.raw_cams(self.normalize(images)).mean((2, 3))

    def losses(self, batch: Mapping[str, Any], step: int = 0) -> dict[str, Tensor]:
        self.check_batch(batch)
        images, labels = self.check_inputs(batch["images"], batch["labels"])
        classification = F.multilabel_soft_margin_loss(self(images), labels)
        return {"classification": classification, "loss": classification}


def build_cam_network(spec: Any, num_classes: int, backbone: Any, **overrides: Any) -> nn.Module | None:
    """The first-stage CAM network of a two-stage method (PSA, IRNet): ``"cam"``
    builds a :class:`CAM` with the method's backbone name and ``overrides``
    (load its trained weights afterwards); a module with ``cams(images,
    labels)`` is used as given; None means the CAMs are always passed in.

    Raises:
        ValueError: ``"cam"`` with a backbone given as a module (its weights
            would be shared with the second stage).
        TypeError: anything else.
    """
    if isinstance(spec, str) and spec == "cam":
        if not isinstance(backbone, str):
            raise ValueError("cam_network='cam' builds a CAM network from the backbone's name; with a backbone "
                             "module pass cam_network=<a CAM method> or None")
        return CAM(num_classes=num_classes, backbone=backbone, **overrides)
    if spec is not None and not callable(getattr(spec, "cams", None)):
        raise TypeError(f"cam_network must be 'cam', None or a module with cams(images, labels), "
                        f"got {type(spec).__name__}")
    return spec
