"""FickleNet (Lee et al., "FickleNet: Weakly and Semi-supervised Semantic
Image Segmentation using Stochastic Inference", CVPR 2019): a classifier
whose last convolution sees a random selection of hidden units, in training
and at inference, so N stochastic Grad-CAMs of one image cover more of the
object than a single deterministic CAM."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from python_models._checks import check_int
from python_models.heads.fickle import FickleHead, derive_seed
from python_models.pseudo.fickle import fickle_seeds
from python_models.methods.base import IGNORE_INDEX, Method, WSSSMethod
from python_models.methods.registry import register

__all__ = ["FickleNet"]

# Stream of derive_seed reserved for the stochastic inference (training uses the step).
_INFERENCE_STREAM = -1


@register
class FickleNet(WSSSMethod):
    """FickleNet's classification stage.

    backbone features x (conv5 / layer4) → expanded k x k windows → dropout
    of every unit but the window centres (p, train and inference) → k x k
    conv with stride k → global average pooling → multi-label soft-margin
    (sigmoid cross-entropy) loss. The expanded map is never built:
    :func:`wsss_ext.fickle_conv2d` computes the same conv from one bit mask
    per unit.

    Pseudo-labels (``pseudo_labels``): :func:`wsss_ext.fickle_gradcam` draws
    ``n_samples`` selections and computes each one's Grad-CAM on x; a pixel
    takes class c if one of its N normalised maps of c exceeds ``threshold``,
    the highest mean map among several classes, and is unlabelled if none
    does. Those are the foreground seeds. Background: FickleNet, following
    DSRG, takes it from a saliency map; without one, a pixel with no class
    whose every tagged mean map is below ``bg_threshold`` is background
    (:func:`python_models.pseudo.fickle_seeds`). The seeds are
    computed at the feature resolution and resized (nearest) to the image.
    ``cams``: the mean normalised stochastic Grad-CAMs, bilinearly resized.

    The segmentation stage is DSRG, trained on these seeds:
    ``segmentation_stage(**overrides)`` builds it.

    Defaults (Lee et al. 2019, sections 3-4; METHODS.md section 4):
        num_classes 20 (VOC); p 0.9 (the paper's ablation: 61.2 mIoU vs 56.3
        deterministic, VGG-16); n_samples 200 and threshold 0.35 (the
        stochastic inference); backbone ResNet-101 (the paper's headline
        64.9 / 65.3 with ResNet-101; "vgg16_largefov" is its VGG-16 model),
        at output stride 8 (DeepLab's 41 x 41 maps for 321-px crops, what the
        DSRG stage consumes; chosen here, the text we follow does not state it).
        kernel_size 3: **unverified** (the paper's window size is not in the
        material we follow; 3 is the smallest window with a centre, and
        wsss_ext's op takes 1, 3 or 5). rescale False (wsss_ext's choice: the selection is
        used at inference too, so no train/test scale needs matching).
        bg_threshold 0.05: not FickleNet's (saliency there); IRNet's
        ``conf_bg_thres`` on normalised CAMs. seed 0: the base of the
        per-step seeds (not a published value).

    Randomness: ``losses(batch, step)`` and ``forward(images, step=0)`` use
    the seed ``derive_seed(config.seed, step)``, so a run repeats and no
    hidden generator state changes; ``pseudo_labels`` and ``cams`` use a
    fixed stream of ``config.seed`` (or their ``seed=`` argument).

    Kernels: ``fickle_conv2d`` in ``losses``, ``fickle_gradcam`` in
    ``pseudo_labels`` (and ``cams``); the DSRG stage adds ``dense_crf``.
    """

    KEY = "ficklenet"
    PAPER = ("Lee et al., FickleNet: Weakly and Semi-supervised Semantic Image Segmentation using Stochastic "
             "Inference, CVPR 2019")
    DEFAULTS = dict(
        num_classes=20,
        backbone="resnet101",
        output_stride=8,
        kernel_size=3,
        p=0.9,
        rescale=False,
        n_samples=200,
        threshold=0.35,
        bg_threshold=0.05,
        seed=0,
    )
    KERNELS = ("fickle_conv2d", "fickle_gradcam")
    TINY_BACKBONE = "resnet_tiny"

    def __init__(self, **overrides: Any) -> None:
        super().__init__(**overrides)
        check_int(self.config.seed, "seed", minimum=0)
        check_int(self.config.n_samples, "n_samples", minimum=1)
        self.backbone = self.build_backbone(self.config.output_stride)
        self.head = FickleHead(self.backbone.out_channels, self.num_classes, self.config.kernel_size,
                               self.config.p, self.config.rescale)

    def step_seed(self, step: int) -> int:
        """The selection seed of training step ``step``."""
        return derive_seed(self.config.seed, step)

    def features(self, images: Tensor) -> Tensor:
        """B x C' x h x w backbone features (the stochastic layer's input) of images in [0, 1]."""
        return self.backbone(self.normalize(images))

    def raw_cams(self, images: Tensor) -> Tensor:
        """B x C x h x w deterministic class maps (nothing dropped) of normalised images."""
        return self.head.deterministic(self.backbone(images))

    def forward(self, images: Tensor, step: int = 0) -> Tensor:
        """Logits B x C of images in [0, 1] under the selection of ``step``."""
        return self.head.logits(self.features(images), self.step_seed(step))

    def losses(self, batch: Mapping[str, Any], step: int = 0) -> dict[str, Tensor]:
        self.check_batch(batch)
        images, labels = self.check_inputs(batch["images"], batch["labels"])
        classification = F.multilabel_soft_margin_loss(self(images, step=step), labels)
        return {"classification": classification, "loss": classification}

    @torch.no_grad()
    def localization(self, images: Tensor, labels: Tensor, seed: int | None = None) -> tuple[Tensor, Tensor]:
        """FickleNet's stochastic inference at the feature resolution:
        ``(maps, hits)`` of :func:`wsss_ext.fickle_gradcam` (B x C x h x w
        mean normalised Grad-CAMs; B x h x w tag column or 255), the
        backbone in eval mode (the mode is restored)."""
        images, labels = self.check_inputs(images, labels)
        seed = derive_seed(self.config.seed, _INFERENCE_STREAM) if seed is None else seed
        was_training = self.training
        self.eval()  # inference: BatchNorm's statistics are used, not updated
        try:
            features = self.features(images)
        finally:
            self.train(was_training)
        return self.head.localization(features, labels, seed, self.config.n_samples, self.config.threshold,
                                      IGNORE_INDEX)

    def cams(self, images: Tensor, labels: Tensor, seed: int | None = None) -> Tensor:  # type: ignore[override]
        """The mean normalised stochastic Grad-CAMs at the images' size: B x C x H x W in [0, 1],
        zero for classes not in the tags."""
        maps, _ = self.localization(images, labels, seed)
        maps = F.interpolate(maps, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return maps.clamp(0, 1) * labels.to(maps)[..., None, None]

    @torch.no_grad()
    def pseudo_labels(self, images: Tensor, labels: Tensor, seed: int | None = None,
                      size: tuple[int, int] | None = None) -> Tensor:
        """FickleNet's seeds (the DSRG stage's input): B x H x W int64, c + 1
        where the stochastic Grad-CAMs localise tag column c, 0 where no
        tagged map reaches ``bg_threshold``, 255 elsewhere.

        ``size``: the (h, w) to resize the seeds to (nearest), default the
        images'; DSRG takes its seeds at its output size
        (``size=stage(images).shape[-2:]``)."""
        images, labels = self.check_inputs(images, labels)
        maps, hits = self.localization(images, labels, seed)
        size = tuple(images.shape[-2:]) if size is None else tuple(int(s) for s in size)
        return fickle_seeds(maps, hits, labels, self.config.bg_threshold, size=size, ignore_index=IGNORE_INDEX)

    def segmentation_stage(self, **overrides: Any) -> Method:
        """FickleNet's segmentation stage: DSRG (``python_models.create("dsrg")``)
        with this method's ``num_classes``, to be trained on this method's
        ``pseudo_labels`` as its seeds."""
        import python_models.methods.dsrg  # noqa: F401  (lazy: registers "dsrg")
        from python_models.methods.registry import create

        return create("dsrg", **{"num_classes": self.num_classes, **overrides})
