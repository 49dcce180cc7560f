"""MIL-seg (Pinheiro & Collobert, "From Image-level to Pixel-level Labeling
with Convolutional Networks", CVPR 2015): pixel class scores pooled into
image scores by log-sum-exp, trained from image labels; at inference each
pixel's posterior is weighted by the image-level prior."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from python_models.losses.pooling import lse_pool
from python_models.methods.base import WSSSMethod
from python_models.methods.registry import register
from python_models.pseudo.crf import crf_labels, tag_unary_from_probs
from python_models.pseudo.confident import IRNET_CRF

__all__ = ["MIL"]


@register
class MIL(WSSSMethod):
    """Log-sum-exp pooled segmentation network.

    Network: backbone, then a 1 x 1 segmentation layer to 1 + C pixel scores
    (background first). Training: image scores ``LSE_r`` of the pixel scores,
    multi-label soft-margin loss against [background, tags].

    Inference (the paper's "image-level prior"): ŷ_ij(k) = p_ij(k) · p(k),
    p_ij the per-pixel softmax over the background and the image's tags, p(k)
    the image-level probability of k; then the dense CRF as the smoothing prior.

    Deviations, stated: the paper trains on single-label ImageNet images with
    a softmax over 21 classes (background images included) and an Overfeat
    backbone; with multi-label tags this uses the multi-label soft-margin loss,
    the background counted present in every image, p(k) the sigmoid of the
    image score, and a ResNet-50. Its smoothing priors (superpixels, BBox,
    MCG) are replaced by the dense CRF (IRNet's settings). The value of r is
    unverified (no code of the paper was read): 5 here.

    Kernels: ``dense_crf`` in ``pseudo_labels``.
    """

    KEY = "mil"
    PAPER = "Pinheiro & Collobert, From Image-level to Pixel-level Labeling with Convolutional Networks, CVPR 2015"
    DEFAULTS = dict(
        num_classes=20,
        backbone="resnet50",
        output_stride=16,
        r=5.0,
        cam_scales=(1.0,),
        cam_flip=True,
        crf=IRNET_CRF,
    )
    KERNELS = ("dense_crf",)

    def __init__(self, **overrides: Any) -> None:
        super().__init__(**overrides)
        self.backbone = self.build_backbone(self.config.output_stride)
        self.segmentation = nn.Conv2d(self.backbone.out_channels, 1 + self.num_classes, 1)

    def pixel_scores(self, normalized: Tensor) -> Tensor:
        """B x (1 + C) x h x w scores of normalised images, background first."""
        return self.segmentation(self.backbone(normalized))

    def raw_cams(self, normalized: Tensor) -> Tensor:
        """The foreground pixel scores, B x C x h x w."""
        return self.pixel_scores(normalized)[:, 1:]

    def forward(self, images: Tensor) -> Tensor:
        """Image scores B x (1 + C), LSE-pooled; background first."""
        return lse_pool(self.pixel_scores(self.normalize(images)), self.config.r)

    def losses(self, batch: Mapping[str, Any], step: int = 0) -> dict[str, Tensor]:
        self.check_batch(batch)
        images, labels = self.check_inputs(batch["images"], batch["labels"])
        targets = torch.cat([torch.ones_like(labels[:, :1]), labels], 1)
        classification = F.multilabel_soft_margin_loss(self(images), targets)
        return {"classification": classification, "loss": classification}

    def posteriors(self, images: Tensor, labels: Tensor) -> Tensor:
        """ŷ = p_ij(k) · p(k) over the background and the tags, renormalised per
        pixel: B x (1 + C) x H x W at the images' size."""
        images, labels = self.check_inputs(images, labels)
        scores = self.pixel_scores(self.normalize(images))
        present = torch.cat([torch.ones_like(labels[:, :1]), labels], 1).bool()[..., None, None]
        pixel = scores.masked_fill(~present, float("-inf")).softmax(1)
        prior = torch.sigmoid(lse_pool(scores, self.config.r))[..., None, None]
        weighted = pixel * prior
        weighted = weighted / weighted.sum(1, keepdim=True).clamp(min=1e-12)
        return F.interpolate(weighted, size=images.shape[-2:], mode="bilinear", align_corners=False)

    @torch.no_grad()
    def pseudo_labels(self, images: Tensor, labels: Tensor) -> Tensor:
        """argmax of the dense CRF on the prior-weighted posteriors: B x H x W int64."""
        probs = self.posteriors(images, labels)
        return crf_labels(images, tag_unary_from_probs(probs, labels), **self.config.crf)
