"""RecurSeed + EdgePredictMix (Jo, Yu & Kim, "RecurSeed and EdgePredictMix:
Pseudo-Label Refinement Learning for Weakly Supervised Semantic Segmentation
across Single- and Multi-Stage Frameworks", arXiv 2204.06754, 2022/2024),
the single-stage framework: a CAM classifier and a DeepLabv3+ decoder trained
together, the decoder supervised by seeds that RecurSeed (RS) makes from the
CAMs or from the decoder's own output: SCG (lowers false negatives), then
PAMR (lowers false positives), then the absolute-confidence rule; with
EdgePredictMix (EPM), pairs of images of the batch mixed with their
edge-predicted seeds as a second, mixed sample."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

import wsss_ext
from python_models.augment.epm import certain_labels, edge_predict_mix
from python_models.heads.deeplab import DeepLabV3PlusDecoder
from python_models.methods.cam import CAM
from python_models.methods.registry import register
from python_models.pseudo.cams import multiscale_cams, normalize_cams
from python_models.pseudo.crf import crf_labels, tag_unary_from_probs
from python_models.pseudo.self_correlation import scg
from wsss_ext.nn.dense_crf import PRESETS

__all__ = ["RECURSEED_CRF", "RecurSeed"]

# convert_seed_to_pseudo_masks.py: iter_max 10, pos 1/3, bi 67/3/4 (= wsss_ext's "recurseed" preset).
RECURSEED_CRF = dict(n_iters=10, **PRESETS["recurseed"])

IGNORE_INDEX = 255


def _seg_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy over the labelled pixels (0 with a gradient path when none is labelled)."""
    if not (targets != IGNORE_INDEX).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX)


def _max_normalize(maps: Tensor, eps: float = 1e-5) -> Tensor:
    """Each map divided by its max + eps (the official ``torch_utils.normalize``)."""
    return maps / (maps.flatten(2).amax(2)[..., None, None] + eps)


@register
class RecurSeed(CAM):
    """RecurSeed + EdgePredictMix, single stage.

    ``forward(images) -> logits`` (B x C) as :class:`CAM`; ``segment(images)``
    the decoder's multi-scale probabilities (B x (1 + C) x H x W).

    Training (``losses``), on each batch:

    1. classification: multi-label soft margin on the GAP of the CAMs;
    2. RS seeds, without gradient: the map M (before ``warmup_fraction`` of
       training the CAMs divided by their max; afterwards the decoder's
       foreground softmax, each class divided by its max), both at the CAMs'
       resolution and zero outside the tags; ``SCM = scg(stages, M)``;
       upsampled to the decoder's stride-4 size, background ``1 - max SCM``;
       ``wsss_ext.pamr`` on the image resized to that size
       (``wsss_ext.resize_image_to_mask``); :func:`certain_labels` (c 0.55, u 0.10);
    3. segmentation: cross-entropy of the decoder (1 + C classes) on the seeds;
    4. EPM (after the warm-up, when ``epm``): the RS probabilities upsampled
       to the images' size, :func:`python_models.augment.edge_predict_mix`
       (image i mixed with ``(i + 1) mod B``), and the classification and
       segmentation losses again on the mixed images (mixed tags: the classes
       pasted from image i plus the partner's tags; the decoder output
       upsampled to the image size).

    ``pseudo_labels``: the decoder's probabilities averaged over
    ``cam_scales`` and flips (logits resized to each scaled input by nearest,
    softmax, resized bilinearly to the image, as ``infer_rsepm.py`` with its
    defaults ``same=True, interpolation='nearest'``), the tagged foreground
    divided by its max, background ``(1 - max)^bg_gamma``, then
    ``wsss_ext.dense_crf`` over the tags (``convert_seed_to_pseudo_masks.py``).
    ``predict_tags`` gives the classes whose mean sigmoid over scales and
    flips reaches ``class_threshold`` (the README's ``--conf_th 0.34``, used
    where no tags exist, e.g. on val).

    Defaults (shjo-april/RecurSeed_and_EdgePredictMix; ``core/networks.py``
    ``RSEPM``, ``core/layers.py``, ``infer_rsepm.py``, ``convert_seed_to_pseudo_masks.py``, README):
        num_classes 20; backbone ResNet-50, output stride 16; ASPP 256 channels,
        rates 6/12/18 (``ASPP_For_DeepLabv3`` at stride 16); decoder 48 low-level
        channels, 256, dropout 0.5/0.1, 3 x 3 classifier without bias over
        1 + C classes; cam_scales (1, 0.5, 1.5, 2) with flips; class_threshold
        0.34 (README); SCG first 0.50, second 0.10, fg 0.30, bg 0.05
        (``infer_rsepm.py``); confident 0.55 / uncertain 0.10 (the official
        tag ``CF(c=0.55, u=0.10)``); seg_weight 1.0 (tag ``seg=1.0``);
        bg_gamma 2.0 and the CRF (10 iterations, gaussian 1/3, bilateral 67/3/4)
        from ``convert_seed_to_pseudo_masks.py``; pamr_sigma 0.1 (``core/refinements/pamr.py``).

    Unverified (the training code is not released; choices documented here):
        scg_stages (3, 4): the last two stages, as SPOL (the inference script
        lists all five); pamr_iters 10 with dilations 1, 2, 4, 8, 12, 24 (the
        SSSS setting RecurSeed builds on; the repository's ``PAMR`` class
        defaults to 1 iteration, dilation 1); warmup_fraction 0.25 (the tag's
        ``RS(ep=5) ... CM(ep=15)``: CAM-driven seeds and no mixing for the first
        5 of 20 epochs); one SCG -> PAMR round per step (the recursion runs
        across steps through the decoder); the tag's ``cam=1.0`` term is not
        modelled; EPM's edge rule and canny_thresholds (50, 100): see
        :mod:`python_models.augment.epm`.

    Kernels: ``pamr`` in ``losses``, ``dense_crf`` in ``pseudo_labels``.
    EPM needs OpenCV (``pip install opencv-python-headless``).
    """

    KEY = "recurseed"
    PAPER = ("Jo, Yu & Kim, RecurSeed and EdgePredictMix: Pseudo-Label Refinement Learning for Weakly "
             "Supervised Semantic Segmentation across Single- and Multi-Stage Frameworks, arXiv 2204.06754")
    DEFAULTS = dict(
        num_classes=20,
        backbone="resnet50",
        output_stride=16,
        aspp_channels=256,
        aspp_rates=(6, 12, 18),
        low_reduced=48,
        cam_scales=(1.0, 0.5, 1.5, 2.0),
        cam_flip=True,
        class_threshold=0.34,
        scg_stages=(3, 4),
        scg_first_threshold=0.50,
        scg_second_threshold=0.10,
        scg_fg_threshold=0.30,
        scg_bg_threshold=0.05,
        pamr_iters=10,
        pamr_dilations=(1, 2, 4, 8, 12, 24),
        pamr_sigma=0.1,
        confident=0.55,
        uncertain=0.10,
        seg_weight=1.0,
        warmup_fraction=0.25,
        epm=True,
        canny_thresholds=(50.0, 100.0),
        bg_gamma=2.0,
        crf=RECURSEED_CRF,
    )
    KERNELS = ("pamr", "dense_crf")

    def __init__(self, **overrides: Any) -> None:
        super().__init__(**overrides)
        channels = getattr(self.backbone, "stage_channels", None)
        if channels is None or not hasattr(self.backbone, "stages"):
            raise TypeError(f"RecurSeed needs a backbone with stages() and stage_channels, got "
                            f"{type(self.backbone).__name__}")
        stages = tuple(self.config.scg_stages)
        if not stages or any(not isinstance(s, int) or not 1 <= s <= len(channels) for s in stages):
            raise ValueError(f"scg_stages must name stages 1..{len(channels)}, got {self.config.scg_stages}")
        self.decoder = DeepLabV3PlusDecoder(
            channels[0], channels[-1], self.num_classes + 1, aspp_channels=self.config.aspp_channels,
            low_reduced=self.config.low_reduced, decoder_channels=self.config.aspp_channels,
            rates=self.config.aspp_rates, classifier_kernel=3, classifier_bias=False)
        # Share of training done; after_step sets it, losses reads it (warm-up, EPM).
        self.register_buffer("progress", torch.zeros(()))

    # ----------------------------------------------------------------- inference
    def segment(self, images: Tensor) -> Tensor:
        """The decoder's probabilities B x (1 + C) x H x W, averaged over
        ``cam_scales`` and flips (see the class docstring)."""
        images, _ = self.check_inputs(images)

        def probabilities(x: Tensor) -> Tensor:
            stages = self.backbone.stages(x)
            logits = F.interpolate(self.decoder(stages[0], stages[-1]), size=x.shape[-2:], mode="nearest")
            return logits.softmax(1)

        scales, flip = self.config.cam_scales, self.config.cam_flip
        total = multiscale_cams(probabilities, self.normalize(images), scales, flip)
        return total / (len(scales) * (2 if flip else 1))

    @torch.no_grad()
    def predict_tags(self, images: Tensor) -> Tensor:
        """B x C float tags: mean sigmoid of the logits over ``cam_scales`` and
        flips >= ``class_threshold`` (0.34)."""
        images, _ = self.check_inputs(images)
        x = self.normalize(images)
        scores = []
        for scale in self.config.cam_scales:
            scaled = x if scale == 1 else F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False,
                                                        recompute_scale_factor=False)
            batch = torch.cat([scaled, scaled.flip(-1)]) if self.config.cam_flip else scaled
            scores.append(torch.sigmoid(self.head.logits(self.backbone(batch))).view(-1, *x.shape[:1],
                                                                                     self.num_classes))
        return (torch.cat(scores).mean(0) >= self.config.class_threshold).float()

    @torch.no_grad()
    def pseudo_labels(self, images: Tensor, labels: Tensor) -> Tensor:
        """The decoder's multi-scale prediction over the tags refined by
        ``wsss_ext.dense_crf``: B x H x W int64 (0 background, c + 1)."""
        images, labels = self.check_inputs(images, labels)
        foreground = _max_normalize(self.segment(images)[:, 1:] * labels[..., None, None])
        background = (1 - foreground.amax(1, keepdim=True)).clamp(min=0) ** self.config.bg_gamma
        unary = tag_unary_from_probs(torch.cat([background, foreground], 1), labels)
        return crf_labels(images, unary, **self.config.crf)

    # ------------------------------------------------------------------ training
    def recurseed_probs(self, images: Tensor, labels: Tensor, stages: list[Tensor], raw_cams: Tensor,
                        seg_logits: Tensor | None) -> Tensor:
        """RS: SCG then PAMR, without gradient. Returns B x (1 + C) x h4 x w4 at
        the decoder's size (``seg_logits``' or the first stage's), background first.

        ``seg_logits`` None (or before the warm-up ends) starts from the CAMs."""
        with torch.no_grad():
            tags = labels[..., None, None]
            if seg_logits is not None:
                seed = F.interpolate(seg_logits.detach().softmax(1)[:, 1:], size=raw_cams.shape[-2:],
                                     mode="bilinear", align_corners=False)
                seed = _max_normalize(seed) * tags
            else:
                seed = normalize_cams(raw_cams.detach(), labels)
            features = [stages[s - 1].detach() for s in self.config.scg_stages]
            scm = scg(features, seed, self.config.scg_first_threshold, self.config.scg_second_threshold,
                      self.config.scg_fg_threshold, self.config.scg_bg_threshold)
            size = tuple(stages[0].shape[-2:]) if seg_logits is None else tuple(seg_logits.shape[-2:])
            foreground = F.interpolate(scm, size=size, mode="bilinear", align_corners=False).clamp(0, 1) * tags
            background = 1 - foreground.amax(1, keepdim=True)
            probs = torch.cat([background, foreground], 1)
            image = wsss_ext.resize_image_to_mask(images, probs)
            return wsss_ext.pamr(image, probs, self.config.pamr_dilations, self.config.pamr_iters,
                                 self.config.pamr_sigma)

    def losses(self, batch: Mapping[str, Any], step: int = 0) -> dict[str, Tensor]:
        self.check_batch(batch)
        images, labels = self.check_inputs(batch["images"], batch["labels"])
        stages = self.backbone.stages(self.normalize(images))
        raw_cams = self.head(stages[-1])
        classification = F.multilabel_soft_margin_loss(raw_cams.mean((2, 3)), labels)
        seg_logits = self.decoder(stages[0], stages[-1])
        warm = bool(self.progress >= self.config.warmup_fraction)
        probs = self.recurseed_probs(images, labels, stages, raw_cams, seg_logits if warm else None)
        seeds = certain_labels(probs, self.config.confident, self.config.uncertain, IGNORE_INDEX)
        segmentation = _seg_loss(seg_logits, seeds)
        out = {"classification": classification, "segmentation": segmentation}
        loss = classification + self.config.seg_weight * segmentation
        if self.config.epm and warm and images.shape[0] > 1:
            with torch.no_grad():
                full = F.interpolate(probs, size=images.shape[-2:], mode="bilinear", align_corners=False)
                mix = edge_predict_mix(images, full, confident=self.config.confident,
                                       uncertain=self.config.uncertain,
                                       canny_thresholds=self.config.canny_thresholds)
                chosen = torch.where(mix.masks, mix.source_labels, 0).flatten(1)  # never 255 under the mask
                pasted = torch.zeros(len(images), self.num_classes + 1, device=labels.device)
                pasted = pasted.scatter(1, chosen, 1.0)[:, 1:].to(labels.dtype)
                mixed_tags = torch.maximum(pasted, labels[mix.partner])
            mixed_stages = self.backbone.stages(self.normalize(mix.images))
            out["classification_mix"] = F.multilabel_soft_margin_loss(
                self.head.logits(mixed_stages[-1]), mixed_tags)
            mixed_logits = F.interpolate(self.decoder(mixed_stages[0], mixed_stages[-1]), size=images.shape[-2:],
                                         mode="bilinear", align_corners=False)
            out["segmentation_mix"] = _seg_loss(mixed_logits, mix.label_maps)
            loss = loss + out["classification_mix"] + self.config.seg_weight * out["segmentation_mix"]
        out["loss"] = loss
        return out

    def after_step(self, step: int, max_steps: int) -> None:
        """Set ``progress`` to ``(step + 1) / max_steps`` (the warm-up switch)."""
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.progress.fill_(min(1.0, (step + 1) / max_steps))
