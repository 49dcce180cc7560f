"""SSSS (Araslanov & Roth, "Single-Stage Semantic Segmentation from Image
Labels", CVPR 2020; visinf/1-stage-wseg).

One network trained from image-level tags: a backbone, an ASPP + DeepLabv3+
style decoder with global cue injection and a stochastic gate
(:class:`python_models.heads.ssss.SSSSDecoder`), a constant background logit,
softmax masks; image scores by normalised global weighted pooling plus a
focal mask penalty (:mod:`python_models.losses.ssss`); after a warm-up, a
class-balanced cross-entropy against the PAMR-refined masks cut into a
confident pseudo-ground truth (:mod:`python_models.pseudo.pamr_gt`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from python_models._checks import check_int, check_real
from python_models.heads.fickle import derive_seed
from python_models.heads.ssss import SSSSDecoder
from python_models.losses.ssss import (
    add_background_logit,
    balanced_mask_loss,
    ssss_class_scores,
)
from python_models.methods.base import IGNORE_INDEX, WSSSMethod
from python_models.methods.registry import register
from python_models.pseudo.pamr_gt import (
    PAMR_DILATIONS,
    gtmask_to_labels,
    pseudo_gtmask,
    ssss_refine,
)

__all__ = ["SSSS"]

_PSEUDO_RULES = ("argmax", "pseudo_gt")


@register
class SSSS(WSSSMethod):
    """SSSS: single-stage segmentation from image labels.

    ``forward(images, step=0) -> scores`` (B x C): nGWP + focal penalty of the
    foreground masks (:func:`python_models.losses.ssss_class_scores`).
    ``masks(images, step=0) -> (logits, masks)``: B x (C + 1) x h x w at
    stride 4, the constant background logit first, masks their softmax.

    ``losses(batch, step)`` returns ``classification`` (multi-label soft
    margin on the scores), ``mask`` (the class-balanced CE of the mask logits
    against the pseudo-ground truth, averaged over the batch) and ``loss`` =
    classification + ``mask_loss_weight`` x ``mask_loss_on`` x mask. The
    pseudo-ground truth is computed on every step, as 1-stage-wseg does (PAMR
    on the detached masks, :func:`python_models.pseudo.ssss_refine`; the
    confident cut :func:`python_models.pseudo.pseudo_gtmask`); the buffer
    ``mask_loss_on`` (0 or 1) switches its term into the total and is set
    ONLY by ``after_step(step, max_steps)``: to 1 once ``step + 1 >=
    mask_loss_start_step``.

    ``cams``: the foreground masks (eval mode: the deterministic gate) summed
    over ``cam_scales`` and flips at the image size, each class divided by its
    max, zero outside the tags. ``pseudo_labels``: the refined masks ("dec":
    PAMR, upsampled, absent classes zeroed) at scale 1, then ``pseudo_rule``
    ``"argmax"`` (the argmax over background and tagged classes) or
    ``"pseudo_gt"`` (the training target: confident pixels only, 255 elsewhere).

    Randomness: the gate's mask in ``losses(batch, step)`` and ``forward(images,
    step)`` comes from ``derive_seed(config.seed, step)`` (no global RNG state);
    the decoder's dropout layers use torch's global generator as usual.

    Defaults and their sources (visinf/1-stage-wseg):
        num_classes 20 (VOC); backbone ``resnet38d`` (``configs/voc_resnet38.yaml``
        ``BACKBONE: resnet38``; output stride 8); ``aspp_rates`` (12, 24, 36)
        (``models/mods/aspp.py`` at output stride 8; 256 channels, image
        pooling, dropout 0.5), ``decoder_channels`` 256, skip 48
        (``models/stage_net.py``); ``psi`` 0.3 (``SG_PSI``); ``bg_logit`` 1
        (``stage_net.py``: ``torch.ones_like``); ``focal_p`` 3, ``focal_lambda``
        0.01 (``FOCAL_P``, ``FOCAL_LAMBDA``); ``pamr_iters`` 10,
        ``pamr_dilations`` (1, 2, 4, 8, 12, 24) (``PAMR_ITER``, ``PAMR_KERNEL``),
        ``pamr_sigma`` 0.1 (``models/mods/pamr.py``); ``cutoff_bg`` 0.7,
        ``cutoff_fg`` 0.6, ``cutoff_low`` 0.2 (``pseudo_gtmask``);
        ``mask_loss_weight`` 1 (``MASK_LOSS_BCE``); ``mask_loss_start_step``
        3305 = 5 epochs (``TRAIN.PRETRAIN``, ``train.py``: ``epoch <
        PRETRAIN``) x 661 steps (10582 train_aug images, batch 16, drop_last);
        ``lr`` 0.001 constant, SGD ``momentum`` 0.9, ``weight_decay`` 5e-4,
        ``new_lr_mult`` 10 for the new layers (x20 for their biases, x2 for
        the backbone's; ``base_net.py`` ``_lr_mult``); ``batch_size`` 16,
        ``max_epochs`` 24, ``crop_size`` 321, ``scale_range`` (0.9, 1.0)
        (``voc_resnet38.yaml``); ``cam_scales`` (1, 0.5, 1.5, 2) with flips
        (``TEST.SCALES``, ``TEST.FLIP``). ``seed`` 0 and ``pseudo_rule``
        ``"argmax"`` are this library's.

    Deviations:
        - 1-stage-wseg keeps the backbone's and the ASPP's BatchNorm in eval
          mode (the ASPP's at its initial statistics) and fixes the backbone's
          first blocks; here BatchNorm follows the module's mode (the
          backbones start untrained): use ``ResNet38d.freeze`` after loading
          weights.
        - ``pseudo_labels`` refines the scale-1 masks with PAMR (the training
          target); 1-stage-wseg's ``infer_val.py`` takes the argmax of the
          multi-scale masks without PAMR (background raised to the power
          ``TEST.BG_POW`` 3), optionally with a dense CRF.
        - The backbone's stride-4 stage (``stage_strides``; else the first
          stage) gives the shallow features: ResNet-38's ``conv3`` as in the
          paper, ResNet's ``layer1``.

    Kernels: ``pamr`` in ``losses`` (every step) and ``pseudo_labels``.
    """

    KEY = "ssss"
    PAPER = "Araslanov & Roth, Single-Stage Semantic Segmentation from Image Labels, CVPR 2020"
    DEFAULTS = dict(
        num_classes=20,
        backbone="resnet38d",
        output_stride=8,
        aspp_rates=(12, 24, 36),
        decoder_channels=256,
        psi=0.3,
        bg_logit=1.0,
        focal_p=3.0,
        focal_lambda=0.01,
        pamr_iters=10,
        pamr_dilations=PAMR_DILATIONS,
        pamr_sigma=0.1,
        cutoff_bg=0.7,
        cutoff_fg=0.6,
        cutoff_low=0.2,
        mask_loss_weight=1.0,
        mask_loss_start_step=3305,
        lr=0.001,
        momentum=0.9,
        weight_decay=5e-4,
        new_lr_mult=10.0,
        batch_size=16,
        max_epochs=24,
        crop_size=321,
        scale_range=(0.9, 1.0),
        cam_scales=(1.0, 0.5, 1.5, 2.0),
        cam_flip=True,
        pseudo_rule="argmax",
        seed=0,
    )
    KERNELS = ("pamr",)
    TINY_BACKBONE = "resnet38d_tiny"

    def __init__(self, **overrides: Any) -> None:
        super().__init__(**overrides)
        cfg = self.config
        check_int(cfg.seed, "seed", minimum=0)
        start = check_int(cfg.mask_loss_start_step, "mask_loss_start_step", minimum=0)
        check_real(cfg.mask_loss_weight, "mask_loss_weight")
        if cfg.pseudo_rule not in _PSEUDO_RULES:
            raise ValueError(f"pseudo_rule must be one of {_PSEUDO_RULES}, got {cfg.pseudo_rule!r}")
        self.backbone = self.build_backbone(cfg.output_stride)
        channels = getattr(self.backbone, "stage_channels", None)
        if not callable(getattr(self.backbone, "stages", None)) or not channels:
            raise TypeError(f"SSSS's backbone needs stages(x) and stage_channels; "
                            f"{type(self.backbone).__name__} lacks them")
        strides = tuple(getattr(self.backbone, "stage_strides", ()))
        self.shallow_stage = strides.index(4) if 4 in strides else 0
        self.decoder = SSSSDecoder(self.backbone.out_channels, channels[self.shallow_stage], self.num_classes,
                                   cfg.psi, cfg.aspp_rates, cfg.decoder_channels)
        self.register_buffer("mask_loss_on", torch.tensor(float(start <= 0)))

    def step_seed(self, step: int) -> int:
        """The gate's seed at training step ``step``."""
        return derive_seed(self.config.seed, step)

    def _logits(self, normalized: Tensor, step: int = 0) -> Tensor:
        stages = self.backbone.stages(normalized)
        foreground = self.decoder(stages[-1], stages[self.shallow_stage], self.step_seed(step))
        return add_background_logit(foreground, self.config.bg_logit)

    def masks(self, images: Tensor, step: int = 0) -> tuple[Tensor, Tensor]:
        """``(logits, masks)`` of images in [0, 1]: B x (C + 1) x h x w at
        stride 4, the background first; masks = softmax(logits)."""
        logits = self._logits(self.normalize(images), step)
        return logits, torch.softmax(logits, 1)

    def _scores(self, logits: Tensor, masks: Tensor) -> Tensor:
        return ssss_class_scores(logits, masks, self.config.focal_p, self.config.focal_lambda)

    def forward(self, images: Tensor, step: int = 0) -> Tensor:
        """Image scores B x C (the gate of ``step`` in train mode)."""
        return self._scores(*self.masks(images, step))

    def raw_cams(self, images: Tensor) -> Tensor:
        """Foreground masks B x C x h x w of normalised images (stride 4)."""
        return torch.softmax(self._logits(images), 1)[:, 1:]

    def refine(self, images: Tensor, masks: Tensor, labels: Tensor) -> Tensor:
        """The refined masks ("dec") at the images' size:
        :func:`python_models.pseudo.ssss_refine` with this method's PAMR settings."""
        cfg = self.config
        return ssss_refine(images, masks, labels, cfg.pamr_dilations, cfg.pamr_iters, cfg.pamr_sigma)

    def pseudo_gt(self, refined: Tensor) -> Tensor:
        """B x H x W labels of the confident cut of refined masks, 255 elsewhere."""
        cfg = self.config
        return gtmask_to_labels(pseudo_gtmask(refined, cfg.cutoff_fg, cfg.cutoff_bg, cfg.cutoff_low), IGNORE_INDEX)

    def losses(self, batch: Mapping[str, Any], step: int = 0) -> dict[str, Tensor]:
        self.check_batch(batch)
        images, labels = self.check_inputs(batch["images"], batch["labels"])
        logits, masks = self.masks(images, step)
        classification = F.multilabel_soft_margin_loss(self._scores(logits, masks), labels)
        target = self.pseudo_gt(self.refine(images, masks, labels))
        mask = balanced_mask_loss(logits, target, labels, IGNORE_INDEX).mean()
        weight = self.mask_loss_on.to(mask.dtype) * self.config.mask_loss_weight
        return {"classification": classification, "mask": mask, "loss": classification + weight * mask}

    def after_step(self, step: int, max_steps: int) -> None:
        """Switch the mask loss on for step ``step + 1`` once it reaches ``mask_loss_start_step``."""
        step = check_int(step, "step", minimum=0)
        check_int(max_steps, "max_steps", minimum=1)
        self.mask_loss_on.fill_(float(step + 1 >= self.config.mask_loss_start_step))

    @torch.no_grad()
    def pseudo_labels(self, images: Tensor, labels: Tensor, rule: str | None = None) -> Tensor:
        """B x H x W int64 labels (0 background, c + 1, 255 ignored) from the
        refined scale-1 masks: ``rule`` (default ``config.pseudo_rule``)
        ``"argmax"`` or ``"pseudo_gt"`` (see the class docstring)."""
        rule = self.config.pseudo_rule if rule is None else rule
        if rule not in _PSEUDO_RULES:
            raise ValueError(f"rule must be one of {_PSEUDO_RULES}, got {rule!r}")
        images, labels = self.check_inputs(images, labels)
        refined = self.refine(images, self.masks(images)[1], labels)
        return refined.argmax(1) if rule == "argmax" else self.pseudo_gt(refined)
