"""Simple Does It (Khoreva, Benenson, Hosang, Hein & Schiele, "Simple Does It:
Weakly Supervised Instance and Semantic Segmentation", CVPR 2017), box
supervision: a DeepLab network trained recursively on labels made from the
boxes, each round's output post-processed by the box rules and the dense CRF
(:mod:`python_models.pseudo.boxes`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from python_models._checks import check_label_map
from python_models.methods.base import IGNORE_INDEX, WSSSMethod
from python_models.methods.registry import register
from python_models.pseudo.boxes import (
    BOX_INNER_RATIO,
    BOX_MIN_IOU,
    DEEPLAB_LARGEFOV_CRF,
    box_pseudo_labels,
    box_tags,
    boxes_to_labels,
    check_boxes,
)

__all__ = ["SimpleDoesIt"]

_VARIANTS = ("box", "box_i")


@register
class SimpleDoesIt(WSSSMethod):
    """Recursive training from boxes (the paper's "Box" and "Box^i" variants).

    A DeepLab-v1 network (VGG-16 LargeFOV backbone, output stride 8, and a
    1 x 1 classifier ``fc8`` to 1 + C classes) is trained with per-pixel cross
    entropy (255 ignored) on ``batch["targets"]``, the current round's labels.
    Round 1's targets are :meth:`initial_labels` (``boxes_to_labels``); each
    next round's are :meth:`pseudo_labels` of the trained network: its
    probabilities at the image size -> ``wsss_ext.dense_crf`` -> the box rules
    (foreground only inside boxes of its class, boxes covered < 50 % reset to
    their initial label). The outer loop of rounds (train, relabel the
    training set, retrain) is the caller's.

    ``forward(images)`` returns the segmentation logits B x (1 + C) x h x w
    (h = ceil(H / 8)); ``cams`` the foreground probabilities at the image
    size over the tags; ``pseudo_labels(images, labels, boxes, box_classes)``
    needs the boxes.

    Defaults (Khoreva et al. 2017 unless said):
        num_classes 20 (PASCAL VOC 2012, Sec. 4); backbone DeepLab-v1 VGG-16
        LargeFOV (Sec. 4: "DeepLabv1"); variant "box_i" (Sec. 3.1, Table 1:
        Box^i above Box); inner_ratio 0.2: Box^i labels the inner 20 % of the
        box area, the ring ignored (Sec. 3.1 **(unverified in code; no code
        was released)**); min_iou 0.5: "outliers reset ... (e.g. IoU < 50 %)"
        (Sec. 3.1, **unverified**); crf: "DenseCRF with the DeepLabv1
        parameters" = DeepLab-CRF-LargeFOV's (deeplab-public
        ``run_densecrf.sh``): bilateral weight 4, sxy 121, srgb 5; gaussian
        weight 3, sxy 3; 10 iterations.

    Not included: GrabCut+ / GrabCut+^i / MCG / M∩G+ (they need GrabCut on
    HED boundaries and MCG proposals, external tools); pass their labels as
    ``targets`` to train on them.

    Training loss: the targets are subsampled to the output size by nearest
    neighbour, as DeepLab-v1 subsamples the ground truth by 8 in training.

    Kernels: ``dense_crf`` in ``pseudo_labels``.
    """

    KEY = "simple_does_it"
    PAPER = ("Khoreva et al., Simple Does It: Weakly Supervised Instance and Semantic Segmentation, "
             "CVPR 2017")
    DEFAULTS = dict(
        num_classes=20,
        backbone="vgg16_largefov",
        variant="box_i",
        inner_ratio=BOX_INNER_RATIO,
        min_iou=BOX_MIN_IOU,
        crf=DEEPLAB_LARGEFOV_CRF,
    )
    KERNELS = ("dense_crf",)
    TINY_BACKBONE = "vgg_tiny"
    BATCH_KEYS = {
        "images": "B x 3 x H x W float RGB in [0, 1]",
        "labels": "B x C multi-hot image-level tags (each box's class among them)",
        "boxes": "B x N x 4 float (x0, y0, x1, y1) pixels, exclusive ends",
        "box_classes": "B x N int64 tag column of each box, -1 padding",
        "targets": "B x H x W int64 current round's labels (0 background, c + 1, 255 ignore)",
    }

    def __init__(self, **overrides: Any) -> None:
        super().__init__(**overrides)
        variant = self.config.variant
        if variant not in _VARIANTS:
            raise ValueError(f"variant must be one of {_VARIANTS}, got {variant!r} (GrabCut+ and MCG need "
                             "external tools and are not included; pass their labels as targets)")
        self.backbone = self.build_backbone()
        self.classifier = nn.Conv2d(self.backbone.out_channels, self.num_classes + 1, 1)
        nn.init.normal_(self.classifier.weight, std=0.01)  # DeepLab's fc8: gaussian std 0.01, bias 0
        nn.init.zeros_(self.classifier.bias)

    @property
    def inner_ratio(self) -> float | None:
        """The share of a box labelled in the initial labels (None: the whole box)."""
        return self.config.inner_ratio if self.config.variant == "box_i" else None

    def forward(self, images: Tensor) -> Tensor:
        """Segmentation logits B x (1 + C) x h x w of images in [0, 1] (stride 8)."""
        return self.classifier(self.backbone(self.normalize(images)))

    def initial_labels(self, boxes: Tensor, box_classes: Tensor, size: tuple[int, int]) -> Tensor:
        """Round 1's targets: Box or Box^i labels, B x H x W int64."""
        return boxes_to_labels(boxes, box_classes, size, self.inner_ratio)

    def losses(self, batch: Mapping[str, Any], step: int = 0) -> dict[str, Tensor]:
        self.check_batch(batch)
        images, labels = self.check_inputs(batch["images"], batch["labels"])
        size = tuple(images.shape[2:])
        _, box_classes = check_boxes(batch["boxes"], batch["box_classes"], size, self.num_classes, images.shape[0])
        if (box_tags(box_classes, self.num_classes).to(labels.device) > labels).any():
            raise ValueError("box_classes has a class that is not in labels (the image's tags)")
        targets = check_label_map(batch["targets"], "targets", num_labels=self.num_classes + 1,
                                  ignore_index=IGNORE_INDEX, shape=(images.shape[0], *size))
        logits = self(images)
        small = F.interpolate(targets[:, None].float(), size=logits.shape[2:], mode="nearest")[:, 0].long()
        if (small == IGNORE_INDEX).all():
            segmentation = logits.sum() * 0.0  # nothing labelled at the output size
        else:
            segmentation = F.cross_entropy(logits, small, ignore_index=IGNORE_INDEX)
        return {"segmentation": segmentation, "loss": segmentation}

    def segment_probs(self, images: Tensor, labels: Tensor | None = None) -> Tensor:
        """B x (1 + C) x H x W softmax of the logits upsampled (bilinear) to the
        image size; with ``labels``, over the background and the tags only."""
        images, labels = self.check_inputs(images, labels)
        logits = F.interpolate(self(images), size=images.shape[2:], mode="bilinear", align_corners=False)
        if labels is not None:
            present = torch.cat([torch.ones_like(labels[:, :1]), labels], 1) > 0
            logits = logits.masked_fill(~present[..., None, None], float("-inf"))
        return logits.softmax(1)

    @torch.no_grad()
    def cams(self, images: Tensor, labels: Tensor, scales: Any = None, flip: Any = None) -> Tensor:
        """The network's foreground probabilities over the tags, B x C x H x W
        in [0, 1], zero for absent classes (``scales``/``flip`` are not used:
        the paper predicts at one scale)."""
        probs = self.segment_probs(images, labels)
        return probs[:, 1:]

    @torch.no_grad()
    def pseudo_labels(self, images: Tensor, labels: Tensor | None = None, boxes: Tensor | None = None,
                      box_classes: Tensor | None = None) -> Tensor:
        """The next round's labels: the network's probabilities at the image
        size over the box classes -> ``dense_crf`` (``config.crf``) -> the box
        rules (:func:`python_models.pseudo.box_pseudo_labels`). B x H x W int64.

        ``labels`` (B x C tags) is optional; if given, each box's class must be
        among the image's tags.

        Raises:
            ValueError: ``boxes`` or ``box_classes`` missing, or a box class not
                in ``labels``.
        """
        if boxes is None or box_classes is None:
            raise ValueError("SimpleDoesIt.pseudo_labels needs boxes (B x N x 4) and box_classes (B x N): "
                             "its labels come from the box rules")
        images, labels = self.check_inputs(images, labels)
        boxes, box_classes = check_boxes(boxes, box_classes, tuple(images.shape[2:]), self.num_classes,
                                         images.shape[0])
        tags = box_tags(box_classes, self.num_classes).to(images.device)
        if labels is not None and (tags > labels).any():
            raise ValueError("box_classes has a class that is not in labels (the image's tags)")
        probs = self.segment_probs(images, tags)
        return box_pseudo_labels(images, probs, boxes, box_classes, self.config.crf, self.inner_ratio,
                                 self.config.min_iou, IGNORE_INDEX)

    def example_batch(self, batch_size: int = 2, image_size: int = 32,
                      generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """The base synthetic batch plus ``targets``: round 1's labels from its boxes."""
        batch = super().example_batch(batch_size, image_size, generator)
        batch["targets"] = self.initial_labels(batch["boxes"], batch["box_classes"], (image_size, image_size))
        return batch
