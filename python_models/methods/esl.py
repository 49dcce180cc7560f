"""ESL (Saporta et al., "ESL: Entropy-guided Self-supervised Learning for
Domain Adaptation in Semantic Segmentation", CVPR Workshops 2020): a
segmentation network trained with cross-entropy on labelled source images and
on target pseudo-labels chosen by their entropy (or, as an option, BDL's
confidence rule)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from python_models._checks import check_images, check_label_map
from python_models.methods.base import IGNORE_INDEX, Method, synthetic_tagged_batch
from python_models.methods.registry import register
from python_models.pseudo.esl import esl_labels, ssl_labels

__all__ = ["ESL"]

_RULES = ("esl", "ssl")


class _DeepLabV2Classifier(nn.Module):
    """DeepLab-v2's ASPP classifier: the sum of 3 x 3 convolutions (with bias)
    at several dilations, each straight to the class scores."""

    def __init__(self, in_channels: int, num_classes: int, dilations: Sequence[int]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=int(d), dilation=int(d)) for d in dilations)
        for branch in self.branches:
            nn.init.normal_(branch.weight, 0.0, 0.01)  # DeepLab-v2's initialisation of its classifier

    def forward(self, x: Tensor) -> Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


@register
class ESL(Method):
    """A DeepLab-v2 segmentation network with entropy-guided self-training.

    Not a tag-based WSSS method (it subclasses :class:`Method`, has no
    ``cams``): labels are class indices 0 .. K - 1 of a segmentation dataset
    (no background-first convention), 255 ignored.

    Network: backbone (ResNet-101 at output stride 8), DeepLab-v2's ASPP
    classifier (dilations 6, 12, 18, 24, summed) on layer4 and, with
    ``multi_level``, a second one on layer3 (ADVENT's multi-level output);
    logits upsampled bilinearly (align_corners=True) to the image size.

    Loss (valeoai/ESL ``train_UDA.py`` with a pseudo-label directory):
    ``λ_main CE(main(source), masks) + λ_aux CE(aux(source), masks)`` plus
    the same two terms on ``target_images`` against ``target_pseudo``.
    The target pseudo-labels are precomputed, as in the paper (extracted
    once, over chunks of the target set, by the adapted model): batch key
    ``target_pseudo``, made by ``pseudo_labels(target_images)`` over a chunk
    (``example_batch`` does so with the current network). ADVENT's
    adversarial terms (λ 0.001 / 0.0002 with entropy-map discriminators),
    which the published script keeps during self-training, are left out: they
    need a second model and optimiser, outside a single method's losses.

    Pseudo-labels (``pseudo_labels(images)``): the softmax of the main
    output at the image size, then :func:`python_models.pseudo.esl_labels`
    (``rule="esl"``: normalised entropy above max(per-class median, 0.1) →
    255) or :func:`python_models.pseudo.ssl_labels` (``rule="ssl"``, BDL:
    max-probability below min(per-class median, 0.9) → 255), thresholds over
    all the images passed together (ESL's chunk: ``MAX_MEDIAN_BATCH`` 3000).

    Defaults (valeoai/ESL ``advent/domain_adaptation/config.py``,
    ``advent/scripts/configs/esl.yml``; BDL ``SSL.py``):
        num_classes 19 (GTA5 / Cityscapes); backbone DeepLab-v2 ResNet-101,
        output stride 8 (``TRAIN.MODEL DeepLabv2``); multi_level True,
        lambda_seg_main 1.0, lambda_seg_aux 0.1 (``LAMBDA_SEG_MAIN`` /
        ``_AUX``); rule "esl"; entropy_floor 0.1 (``ESL.THRESHOLD``);
        confidence_cap 0.9 (BDL's ``thres[thres > 0.9] = 0.9``);
        aspp_dilations (6, 12, 18, 24) (DeepLab-v2's classifier).

    Kernels: none (ESL needs no wsss_ext op).
    """

    KEY = "esl"
    PAPER = ("Saporta et al., ESL: Entropy-guided Self-supervised Learning for Domain Adaptation in Semantic "
             "Segmentation, CVPR Workshops 2020")
    DEFAULTS = dict(
        num_classes=19,
        backbone="resnet101",
        output_stride=8,
        multi_level=True,
        lambda_seg_main=1.0,
        lambda_seg_aux=0.1,
        rule="esl",
        entropy_floor=0.1,
        confidence_cap=0.9,
        aspp_dilations=(6, 12, 18, 24),
    )
    KERNELS = ()
    BATCH_KEYS = {
        "images": "B x 3 x H x W float RGB in [0, 1], labelled (source) images",
        "masks": "B x H x W int64 source labels, class index in [0, K) or 255 (ignore)",
        "target_images": "B' x 3 x H' x W' float RGB in [0, 1], unlabelled (target) images",
        "target_pseudo": "B' x H' x W' int64 target pseudo-labels (pseudo_labels(target_images)), 255 ignored",
    }
    TINY_BACKBONE = "resnet_tiny"

    def __init__(self, **overrides: Any) -> None:
        super().__init__(**overrides)
        if self.config.rule not in _RULES:
            raise ValueError(f"rule must be one of {_RULES}, got {self.config.rule!r}")
        if int(self.config.num_classes) < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.config.num_classes}")
        self.backbone = self.build_backbone(self.config.output_stride)
        classes, dilations = self.num_classes, self.config.aspp_dilations
        self.classifier = _DeepLabV2Classifier(self.backbone.out_channels, classes, dilations)
        self.aux_classifier = None
        if self.config.multi_level:
            stage_channels = getattr(self.backbone, "stage_channels", None)
            if not stage_channels or not hasattr(self.backbone, "stages"):
                raise TypeError("multi_level needs a backbone with stages() and stage_channels")
            self.aux_classifier = _DeepLabV2Classifier(stage_channels[-2], classes, dilations)

    @property
    def num_classes(self) -> int:
        return int(self.config.num_classes)

    def segment(self, images: Tensor) -> tuple[Tensor | None, Tensor]:
        """``(aux, main)`` logits B x K x H x W at the images' size (aux None
        without ``multi_level``) of images in [0, 1]."""
        x = self.normalize(images)
        size = images.shape[-2:]
        if self.aux_classifier is None:
            main, aux = self.classifier(self.backbone(x)), None
        else:
            stages = self.backbone.stages(x)
            main, aux = self.classifier(stages[-1]), self.aux_classifier(stages[-2])
            aux = F.interpolate(aux, size=size, mode="bilinear", align_corners=True)
        return aux, F.interpolate(main, size=size, mode="bilinear", align_corners=True)

    def forward(self, images: Tensor) -> Tensor:
        """Main logits B x K x H x W of images in [0, 1]."""
        return self.segment(images)[1]

    def _check_pair(self, images: object, masks: object, name: str, mask_name: str) -> tuple[Tensor, Tensor]:
        images = check_images(images, name)
        masks = check_label_map(masks, mask_name, num_labels=self.num_classes, ignore_index=IGNORE_INDEX,
                                shape=(images.shape[0], *images.shape[-2:]))
        return images, masks

    def _segmentation_terms(self, images: Tensor, masks: Tensor) -> tuple[Tensor, Tensor | None]:
        aux, main = self.segment(images)
        return _cross_entropy(main, masks), None if aux is None else _cross_entropy(aux, masks)

    def losses(self, batch: Mapping[str, Any], step: int = 0) -> dict[str, Tensor]:
        self.check_batch(batch)
        images, masks = self._check_pair(batch["images"], batch["masks"], "images", "masks")
        target, pseudo = self._check_pair(batch["target_images"], batch["target_pseudo"], "target_images",
                                          "target_pseudo")
        terms: dict[str, Tensor] = {}
        terms["source"], source_aux = self._segmentation_terms(images, masks)
        terms["target"], target_aux = self._segmentation_terms(target, pseudo)
        main, aux = float(self.config.lambda_seg_main), float(self.config.lambda_seg_aux)
        total = main * (terms["source"] + terms["target"])
        if source_aux is not None:
            terms["source_aux"], terms["target_aux"] = source_aux, target_aux
            total = total + aux * (source_aux + target_aux)
        terms["loss"] = total
        return terms

    @torch.no_grad()
    def probabilities(self, images: Tensor) -> Tensor:
        """Softmax of the main output, B x K x H x W, computed in eval mode
        (BatchNorm's statistics untouched; the mode is restored)."""
        images = check_images(images)
        was_training = self.training
        self.eval()
        try:
            return F.softmax(self(images).float(), dim=1)
        finally:
            self.train(was_training)

    @torch.no_grad()
    def pseudo_labels(self, images: Tensor, rule: str | None = None) -> Tensor:
        """Target pseudo-labels of a chunk of images: B x H x W int64, class
        index in [0, K) or 255, thresholds over the whole chunk.

        ``rule`` ("esl" or "ssl") defaults to ``config.rule``."""
        rule = self.config.rule if rule is None else rule
        if rule not in _RULES:
            raise ValueError(f"rule must be one of {_RULES}, got {rule!r}")
        probs = self.probabilities(images)
        if rule == "esl":
            return esl_labels(probs, self.config.entropy_floor, IGNORE_INDEX)
        return ssl_labels(probs, self.config.confidence_cap, IGNORE_INDEX)

    def example_batch(self, batch_size: int = 2, image_size: int = 32,
                      generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Synthetic source images with labels (class 0 the scene, 1 .. K - 1
        the objects), target images drawn the same way, and their pseudo-labels
        from the current network (``pseudo_labels``)."""
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        source = synthetic_tagged_batch(batch_size, image_size, self.num_classes - 1, g)
        target = synthetic_tagged_batch(batch_size, image_size, self.num_classes - 1, g)
        return {"images": source["images"], "masks": source["masks"], "target_images": target["images"],
                "target_pseudo": self.pseudo_labels(target["images"])}


def _cross_entropy(logits: Tensor, masks: Tensor) -> Tensor:
    """Mean cross-entropy over the labelled pixels; 0 (not NaN) when every pixel is ignored."""
    total = F.cross_entropy(logits, masks, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (masks != IGNORE_INDEX).sum().clamp(min=1)
