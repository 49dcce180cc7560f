"""HN-labels pre-training (Lahoud & Ghanem, "RGB-based Semantic Segmentation
Using Self-Supervised Depth Pre-Training", 2020): a segmentation network
trained with cross-entropy to predict, from RGB alone, labels made from the
depth map (binned height above the floor x binned normal angle), then
fine-tuned on the real segmentation task."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from python_models._checks import check_batch, check_images, check_label_map
from python_models.heads.deeplab import ASPP
from python_models.methods.base import IGNORE_INDEX, Method
from python_models.methods.registry import register
from python_models.pseudo.hn_labels import hn_labels

__all__ = ["HNLabels", "synthetic_room"]


def synthetic_room(batch_size: int = 2, image_size: int = 32, generator: torch.Generator | None = None,
                   ) -> dict[str, Tensor]:
    """RGB-D views of a box room: a floor 1.2 - 1.6 m below a camera pitched
    down 0 - 20 degrees, a back wall 3 - 5 m ahead; returns ``images`` (floor
    and wall coloured differently, with noise), ``depth`` B x S x S metres
    and ``intrinsics`` B x 3 x 3 (focal length S, centre (S - 1) / 2)."""
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    s = image_size
    k = torch.tensor([[float(s), 0.0, (s - 1) / 2], [0.0, float(s), (s - 1) / 2], [0.0, 0.0, 1.0]])
    v, u = torch.meshgrid(torch.arange(s, dtype=torch.float32), torch.arange(s, dtype=torch.float32), indexing="ij")
    rays = torch.linalg.solve(k, torch.stack([u, v, torch.ones_like(u)]).reshape(3, -1))  # 3 x S*S, z = 1
    images, depths = [], []
    for _ in range(batch_size):
        height = 1.2 + 0.4 * float(torch.rand((), generator=g))
        pitch = math.radians(20.0 * float(torch.rand((), generator=g)))
        wall = 3.0 + 2.0 * float(torch.rand((), generator=g))
        rotation = torch.tensor([[1.0, 0.0, 0.0], [0.0, math.cos(pitch), math.sin(pitch)],
                                 [0.0, -math.sin(pitch), math.cos(pitch)]])
        world = rotation @ rays  # y down (gravity), camera at the origin
        t_floor = torch.where(world[1] > 1e-6, height / world[1].clamp_min(1e-6), torch.full_like(world[1], 1e9))
        t_wall = wall / world[2].clamp_min(1e-6)
        on_floor = t_floor < t_wall
        depths.append(torch.minimum(t_floor, t_wall).view(s, s))
        colours = torch.where(on_floor.view(1, s, s), torch.tensor([0.6, 0.45, 0.3]).view(3, 1, 1),
                              torch.tensor([0.85, 0.85, 0.8]).view(3, 1, 1))
        images.append((colours + 0.03 * torch.randn(3, s, s, generator=g)).clamp(0, 1))
    return {"images": torch.stack(images), "depth": torch.stack(depths),
            "intrinsics": k.unsqueeze(0).repeat(batch_size, 1, 1)}


@register
class HNLabels(Method):
    """A DeepLab-style segmentation network pre-trained on HN-labels.

    Network: backbone (ResNet-101 at output stride 8) -> ASPP (DeepLabv3,
    rates 12, 24, 36 at stride 8) -> 1 x 1 classifier to ``num_classes``
    HN-labels, upsampled bilinearly to the image. The paper pre-trains SegNet
    and DeepLab; which DeepLab version it used was not verified.
    Loss: cross-entropy over the labelled pixels (255 ignored), the labels
    from the batch's ``hn_labels`` when present, else made from ``depth`` and
    ``intrinsics`` by :func:`python_models.pseudo.hn_labels` (no gradient).

    Labels: ``num_classes`` = height bins x ``normal_bins``; the height bins
    are ``num_classes // normal_bins`` steps of ``bin_height`` metres above
    the floor (the last open), the angle of the normal to the up direction
    in ``normal_bins`` equal steps over [0, 180] degrees. The paper's bin
    counts are unverified; the defaults (6 x 0.5 m, 3 x 60 degrees: 18
    labels), the floor fit (RANSAC over the lowest 30 % of points along the
    camera's -y, 5 cm inliers, tilt <= 45 degrees, 200 hypotheses from a
    generator seeded ``ransac_seed``, then least squares) are this library's
    choices; see :mod:`python_models.pseudo.hn_labels`.

    Published numbers (NYUv2 mIoU): SegNet 18.24 (ImageNet 17.34), DeepLab
    33.49 (ImageNet 34.27).

    Kernels: none.
    """

    KEY = "hn_labels"
    PAPER = "Lahoud & Ghanem, RGB-based Semantic Segmentation Using Self-Supervised Depth Pre-Training, 2020"
    DEFAULTS = dict(
        num_classes=18,
        backbone="resnet101",
        output_stride=8,
        aspp_channels=256,
        aspp_rates=(12, 24, 36),
        normal_bins=3,
        bin_height=0.5,
        floor_quantile=0.3,
        inlier_threshold=0.05,
        max_tilt=45.0,
        ransac_iterations=200,
        ransac_seed=0,
    )
    KERNELS = ()
    BATCH_KEYS = {
        "images": "B x 3 x H x W float RGB in [0, 1]",
        "depth": "B x H x W float depth in metres (0 = missing); not read when the batch holds hn_labels",
        "intrinsics": "B x 3 x 3 pinhole camera matrices; not read when the batch holds hn_labels",
    }
    TINY_BACKBONE = "resnet_tiny"

    def __init__(self, **overrides: Any) -> None:
        super().__init__(**overrides)
        classes, bins = int(self.config.num_classes), int(self.config.normal_bins)
        if bins < 1 or classes < bins or classes % bins:
            raise ValueError(f"num_classes ({classes}) must be a positive multiple of normal_bins ({bins})")
        self.backbone = self.build_backbone(self.config.output_stride)
        channels = int(self.config.aspp_channels)
        self.aspp = ASPP(self.backbone.out_channels, channels, tuple(self.config.aspp_rates))
        self.classifier = nn.Conv2d(channels, classes, 1)

    @property
    def num_classes(self) -> int:
        return int(self.config.num_classes)

    def forward(self, images: Tensor) -> Tensor:
        """HN-label logits B x num_classes x H x W of images in [0, 1]."""
        images = check_images(images)
        logits = self.classifier(self.aspp(self.backbone(self.normalize(images))))
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)

    @torch.no_grad()
    def labels(self, depth: Tensor, intrinsics: Tensor) -> Tensor:
        """HN-labels of depth maps with this method's settings: B x H x W int64, 255 ignored."""
        c = self.config
        return hn_labels(depth, intrinsics, height_bins=self.num_classes // int(c.normal_bins),
                         normal_bins=int(c.normal_bins), bin_height=float(c.bin_height), ignore_index=IGNORE_INDEX,
                         floor_quantile=float(c.floor_quantile), inlier_threshold=float(c.inlier_threshold),
                         max_tilt=float(c.max_tilt), iterations=int(c.ransac_iterations),
                         generator=torch.Generator().manual_seed(int(c.ransac_seed)))

    def losses(self, batch: Mapping[str, Any], step: int = 0) -> dict[str, Tensor]:
        if isinstance(batch, Mapping) and "hn_labels" in batch:
            check_batch(batch, {"images": self.BATCH_KEYS["images"],
                                "hn_labels": "B x H x W int64 HN-labels, 255 ignored"}, type(self).__name__)
        else:
            self.check_batch(batch)
        images = check_images(batch["images"])
        shape = (images.shape[0], *images.shape[-2:])
        if "hn_labels" in batch:
            targets = batch["hn_labels"]
        else:
            depth = batch["depth"]
            if isinstance(depth, Tensor) and depth.dim() == 4 and depth.shape[1] == 1:
                depth = depth[:, 0]
            if isinstance(depth, Tensor) and tuple(depth.shape) != shape:
                raise ValueError(f"depth must be B x H x W = {' x '.join(map(str, shape))}, got shape "
                                 f"{tuple(depth.shape)}")
            targets = self.labels(depth, batch["intrinsics"])
        targets = check_label_map(targets, "hn_labels", num_labels=self.num_classes, ignore_index=IGNORE_INDEX,
                                  shape=shape)
        logits = self(images)
        total = F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")
        loss = total / (targets != IGNORE_INDEX).sum().clamp(min=1)
        return {"hn_cross_entropy": loss, "loss": loss}

    def example_batch(self, batch_size: int = 2, image_size: int = 32,
                      generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """:func:`synthetic_room` views (``images``, ``depth``, ``intrinsics``)."""
        return synthetic_room(batch_size, image_size, generator)
