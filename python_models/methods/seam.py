"""SEAM (Wang et al., "Self-supervised Equivariant Attention Mechanism for
Weakly Supervised Semantic Segmentation", CVPR 2020; YudeWang/SEAM).

A CAM classifier trained on two views of each image, the image and its
rescale by 0.3, with a pixel correlation module (PCM) refining the CAMs by
feature similarity; equivariant regularisation (ER) ties the views' CAMs and
equivariant cross regularisation (ECR) ties each view's PCM output to the
other view's CAMs. Its CAMs (PCM-refined, 4 scales + flip) feed PSA's
low / high alpha dense CRF labels for the AffinityNet step.

Its pseudo-label rule is PSA's, in :mod:`python_models.pseudo.confident`
(:func:`alpha_crf_labels`, :func:`psa_confident_labels`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from python_models.heads import CAMHead
from python_models.heads.pcm import PCM
from python_models.augment.views import rescale
from python_models.losses.seam import max_norm, seam_losses
from python_models.methods.base import WSSSMethod
from python_models.methods.registry import register
from python_models.pseudo.cams import cams_to_labels, multiscale_cams
from python_models.pseudo.confident import PSA_CRF, alpha_crf_labels, psa_confident_labels

__all__ = ["SEAM"]

@register
class SEAM(WSSSMethod):
    """SEAM: CAMs with equivariant (cross) regularisation over a rescaled view and a PCM.

    ``forward(images) -> logits`` (B x C): GAP of the CAMs upsampled to the
    image (SEAM pools the upsampled map). ``losses`` runs both views and
    returns ``classification``, ``min_pooling``, ``er``, ``ecr`` and ``loss``
    (:func:`python_models.losses.seam_losses`). ``cams`` are the PCM-refined
    foreground maps summed over scales and flips, min-max normalised.
    ``pseudo_labels`` are PSA's confident labels from the alpha 4 / 24 CRFs.

    Defaults and their sources (YudeWang/SEAM):
        num_classes 20 (VOC; ``fc8`` has 21 outputs whose background channel
        no loss reads, so the head here has C outputs and the background is
        always 1 - max); ``dropout`` 0.5 (``dropout7`` before ``fc8``,
        ``network/resnet38_SEAM.py``); ``scale_factor`` 0.3, ``ecr_top_fraction``
        0.2, ``min_pool_fraction`` 0.25 (``k = h*w//4``), ``lr`` 0.01 (x10 for
        the new layers), ``weight_decay`` 5e-4, ``batch_size`` 8,
        ``max_epochs`` 8, ``crop_size`` 448 (``train_SEAM.py``); ``cam_scales``
        (0.5, 1.0, 1.5, 2.0) with flips, ``bg_score`` 0.26
        (``--out_cam_pred_alpha``), ``crf_alphas`` (4, 24), ``crf``
        :data:`python_models.pseudo.PSA_CRF` (``infer_SEAM.py``, ``tool/imutils.py``).

    Backbone: the paper's wide ResNet-38 at output stride 8
    (:class:`python_models.backbones.ResNet38d`, ``"resnet38d"``;
    ``backbone="tiny"``: ``resnet38d_tiny``). The PCM reads the last three
    stages, ``stages(x)[-3:]``: ResNet-38's ``conv4`` / ``conv5`` (the
    pre-activated inputs of b5 and b6, 512 and 1024 channels at stride 8) and
    ``conv6`` (4096 channels) for the classifier, as ``network/resnet38_SEAM.py``
    does. A ResNet passed as a module (e.g. ``resnet50(output_stride=8)``) gives
    ``layer2`` / ``layer3`` (512 / 1024 channels in ResNet-50) and ``layer4``.
    Published weights: ``model.backbone.load_pretrained(path)`` with PSA's
    converted ``ilsvrc-cls_rna-a1_cls1000_ep-0001.params``.

    Deviations:
        - SEAM keeps its pretrained ResNet-38's BatchNorm frozen and ``conv1a``,
          ``b2``, ``b2_1``, ``b2_2`` fixed; here BatchNorm follows the module's
          train/eval mode (the backbone starts untrained): after loading
          weights call ``model.backbone.freeze(("conv1a", "b2", "b2_1", "b2_2"))``.
        - Inference resizes with bilinear interpolation (SEAM: PIL bicubic).

    Kernels: ``dense_crf`` in ``pseudo_labels``; the PCM is a dense matmul.
    """

    KEY = "seam"
    PAPER = ("Wang et al., Self-supervised Equivariant Attention Mechanism for Weakly Supervised "
             "Semantic Segmentation, CVPR 2020")
    DEFAULTS = dict(
        num_classes=20,
        backbone="resnet38d",
        output_stride=8,
        dropout=0.5,
        scale_factor=0.3,
        ecr_top_fraction=0.2,
        min_pool_fraction=0.25,
        lr=0.01,
        weight_decay=5e-4,
        batch_size=8,
        max_epochs=8,
        crop_size=448,
        cam_scales=(0.5, 1.0, 1.5, 2.0),
        cam_flip=True,
        bg_score=0.26,
        crf_alphas=(4, 24),
        crf=PSA_CRF,
    )
    KERNELS = ("dense_crf",)
    TINY_BACKBONE = "resnet38d_tiny"

    def __init__(self, **overrides: Any) -> None:
        super().__init__(**overrides)
        self.backbone = self.build_backbone(self.config.output_stride)
        channels = getattr(self.backbone, "stage_channels", None)
        if not callable(getattr(self.backbone, "stages", None)) or channels is None or len(channels) < 3:
            raise TypeError(f"SEAM's backbone needs stages(x) and stage_channels (>= 3 stages); "
                            f"{type(self.backbone).__name__} lacks them")
        self.dropout = nn.Dropout2d(self.config.dropout)
        self.head = CAMHead(self.backbone.out_channels, self.num_classes)
        nn.init.xavier_uniform_(self.head.weight)  # SEAM's fc8
        self.pcm = PCM(channels[-3], channels[-2])

    def _maps(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """SEAM's ``Net.forward`` on normalised images: raw CAMs B x C and PCM
        scores B x (1 + C), both upsampled to the images' size (``align_corners=True``).
        The last three stages are ResNet-38's conv4, conv5, conv6 (a ResNet's
        layer2, layer3, layer4)."""
        *_, conv4, conv5, conv6 = self.backbone.stages(images)
        cams = self.head(self.dropout(conv6))
        refined = self.pcm(cams, images, conv4, conv5)
        size = images.shape[2:]
        return (F.interpolate(cams, size, mode="bilinear", align_corners=True),
                F.interpolate(refined, size, mode="bilinear", align_corners=True))

    def forward(self, images: Tensor) -> Tensor:
        """Logits B x C of images in [0, 1]: GAP of the upsampled CAMs."""
        x = self.normalize(images)
        cams = self.head(self.dropout(self.backbone(x)))
        return F.interpolate(cams, x.shape[2:], mode="bilinear", align_corners=True).mean((2, 3))

    def raw_cams(self, images: Tensor) -> Tensor:
        """PCM-refined foreground maps B x C x H x W of normalised images, at their size."""
        return self._maps(images)[1][:, 1:]

    def losses(self, batch: Mapping[str, Any], step: int = 0) -> dict[str, Tensor]:
        self.check_batch(batch)
        images, labels = self.check_inputs(batch["images"], batch["labels"])
        x = self.normalize(images)
        cams1, refined1 = self._maps(x)
        cams2, refined2 = self._maps(rescale(x, self.config.scale_factor))
        return seam_losses(cams1, refined1, cams2, refined2, labels, self.config.ecr_top_fraction,
                           self.config.min_pool_fraction)

    def cams(self, images: Tensor, labels: Tensor, scales: Sequence[float] | None = None,
             flip: bool | None = None) -> Tensor:
        """``infer_SEAM.py``: the PCM-refined maps summed over scales and flips at
        the images' size, ReLU, min-max normalised per class
        (:func:`python_models.losses.max_norm`), zero outside the tags: B x C x H x W in [0, 1)."""
        images, labels = self.check_inputs(images, labels)
        scales = self.config.cam_scales if scales is None else scales
        flip = self.config.cam_flip if flip is None else flip
        total = multiscale_cams(self.raw_cams, self.normalize(images), scales, flip)
        return max_norm(total) * labels.to(total.dtype)[..., None, None]

    @torch.no_grad()
    def pseudo_labels(self, images: Tensor, labels: Tensor) -> Tensor:
        """SEAM's downstream labels: the CRFs at ``config.crf_alphas`` (4, 24) of
        :meth:`cams`, combined by :func:`psa_confident_labels` (255 where the
        low-alpha CRF says background and the high-alpha one does not).
        Returns B x H x W int64."""
        images, labels = self.check_inputs(images, labels)
        alphas = tuple(self.config.crf_alphas)
        if len(alphas) != 2:
            raise ValueError(f"crf_alphas must be (low, high), got {alphas}")
        low, high = alpha_crf_labels(images, self.cams(images, labels), labels, alphas, self.config.crf)
        return psa_confident_labels(low, high)

    @torch.no_grad()
    def cam_labels(self, images: Tensor, labels: Tensor) -> Tensor:
        """The CAM step's own segmentation (``--out_cam_pred``): argmax of
        [``config.bg_score`` (0.26), CAMs]. B x H x W int64."""
        images, labels = self.check_inputs(images, labels)
        return cams_to_labels(self.cams(images, labels), labels, self.config.bg_score)
