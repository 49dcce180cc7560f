"""DSRG (Huang et al., "Weakly-Supervised Semantic Segmentation Network with
Deep Seeded Region Growing", CVPR 2018): SEC's setting with the seeds grown
during training from the CRF-refined predictions, a balanced seeding loss on
the grown seeds and SEC's constrain loss as the boundary loss; DeepLab-ASPP
on VGG-16."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from python_models.backbones.vgg import VGGLargeFOV, _fc8
from python_models.losses.dsrg import (
    DSRG_CRF,
    DSRG_RATIO_CLIP,
    balanced_seed_loss,
    dsrg_crf_target,
)
from python_models.losses.sec import (
    MIN_PROB,
    SEC_TEST_CRF,
    constrain_loss,
    floored_softmax,
)
from python_models.methods.registry import register
from python_models.methods.sec import SEC
from python_models.pseudo.grow import dsrg_grow

__all__ = ["DSRG"]


@register
class DSRG(SEC):
    """DSRG's segmentation network and losses (speedinghzl/DSRG).

    The network (``training/experiment/seed_mc/train-s.prototxt``) is VGG-16
    DeepLab-ASPP: conv1-conv5, pool5, ``pool5a`` (3 x 3 average), then four
    branches fc6 (3 x 3, dilation 6, 12, 18, 24, 1024) -> fc7 (1024) -> fc8
    (1 + C), dropout 0.5, whose scores are summed. The dilation-12 branch uses
    the backbone's own fc6 / fc7 (``VGGLargeFOV``'s); ``aspp_dilations=None``
    gives SEC's LargeFOV head. ``forward`` returns the summed fc8 scores
    B x (1 + C) x h x w.

    ``losses(batch)`` (``pylayers/pylayers.py``), on ``f = floored_softmax(fc8)``:

    1. ``Q = dsrg_crf_target(f, images)``: ``wsss_ext.dense_crf`` on the map,
       energy −f (DSRG gives the CRF the probabilities, not their log), SEC's
       kernels at scale 12, Q floored at 1e-4. ``CRFLayer`` (boundary loss)
       and ``DSRGLayer.refinement`` (growing) compute this same CRF of the same
       input; it runs once here.
    2. ``grown = dsrg_grow(seeds, Q, labels, 0.85, 0.99)``: the seeds grown on
       the CRF output (``DSRGLayer.generate_seed``), no gradient.
    3. ``seed``: :func:`python_models.losses.balanced_seed_loss` (f, grown);
       ``boundary``: :func:`python_models.losses.constrain_loss` (f, Q) with
       DSRG's clip of Q / f to [0.05, 20].

    ``cams`` and ``pseudo_labels`` as SEC's, with DSRG's test script
    (``training/tools/test-ms.py``): the image resized to 241, 321 and 401,
    fc8 scores resized to the image and summed, softmax, floor 1e-5, CRF at
    scale 1 (gaussian 3/3, bilateral 80/13/10), argmax over the tags.

    Defaults, with their sources in speedinghzl/DSRG:
        num_classes 20 (VOC); backbone ``vgg16_largefov`` with aspp_dilations
        (6, 12, 18, 24) (``train-s.prototxt``); fg_threshold 0.85 (``th2``),
        bg_threshold 0.99 (``th1``) (``train-s.prototxt`` ``update-seed``
        ``param_str``); min_prob 1e-4, ratio_clip (0.05, 20) (``pylayers.py``);
        crf: gaussian 3/12 compat 3, bilateral 80/12, 13, compat 10, 10
        iterations (``CRF/krahenbuhl2013/CRF.py``, ``scale_factor=12.0``);
        crf_mask_absent False (every class reaches the CRF); test_sizes
        (241, 321, 401), test_min_prob 1e-5, test_crf as above (``test-ms.py``);
        crop_size 321, batch_size 20 (``train-s.prototxt``); base_lr 5e-4,
        lr_gamma 0.33 every lr_step 1000, max_steps 8000, momentum 0.9,
        weight_decay 5e-4 (``solver-s.prototxt``); fc8 learning rate x10
        (``lr_mult``). The paper's second stage (retraining on the DSRG
        outputs, ``solver-f.prototxt``) is plain supervised training, not here.

    Kernels: ``dense_crf`` in ``losses`` (growing and boundary) and ``pseudo_labels``.
    """

    KEY = "dsrg"
    PAPER = ("Huang et al., Weakly-Supervised Semantic Segmentation Network with Deep Seeded Region Growing, "
             "CVPR 2018")
    DEFAULTS = dict(
        num_classes=20,
        backbone="vgg16_largefov",
        aspp_dilations=(6, 12, 18, 24),
        fg_threshold=0.85,
        bg_threshold=0.99,
        min_prob=MIN_PROB,
        ratio_clip=DSRG_RATIO_CLIP,
        crf=dict(DSRG_CRF),
        crf_mask_absent=False,
        test_sizes=(241, 321, 401),
        test_min_prob=1e-5,
        test_crf=dict(SEC_TEST_CRF),
        crop_size=321,
        batch_size=20,
        base_lr=5e-4,
        lr_gamma=0.33,
        lr_step=1000,
        max_steps=8000,
        momentum=0.9,
        weight_decay=5e-4,
        fc8_lr_mult=10.0,
    )
    _RESIZE_PROBS = False

    def build_head(self) -> None:
        """One fc6 -> fc7 -> fc8 branch per dilation (the backbone's fc6 / fc7 for its own, 12)."""
        dilations = tuple(self.config.aspp_dilations or ())
        backbone = self.backbone
        if not dilations or not isinstance(backbone, VGGLargeFOV):
            if dilations and not isinstance(backbone, VGGLargeFOV):
                raise ValueError("aspp_dilations need a VGGLargeFOV backbone; pass aspp_dilations=None "
                                 "to put fc8 on another module's output")
            self.classifier = _fc8(backbone.out_channels, self.num_classes + 1)
            self.branch_dilations = ()
            return
        if len(set(dilations)) != len(dilations) or any(int(d) < 1 for d in dilations):
            raise ValueError(f"aspp_dilations must be distinct positive integers, got {dilations}")
        own = backbone.fc6.dilation[0]
        self.branch_dilations = tuple(int(d) for d in dilations)
        self.fc6 = nn.ModuleDict()
        self.fc7 = nn.ModuleDict()
        for d in self.branch_dilations:
            if d != own:
                self.fc6[str(d)] = nn.Conv2d(backbone.fc6.in_channels, backbone.fc6.out_channels, 3,
                                             padding=d, dilation=d)
                self.fc7[str(d)] = nn.Conv2d(backbone.fc7.in_channels, backbone.fc7.out_channels, 1)
        self.fc8 = nn.ModuleDict({str(d): _fc8(backbone.out_channels, self.num_classes + 1)
                                  for d in self.branch_dilations})

    def scores(self, images: Tensor) -> Tensor:
        """The summed fc8 scores B x (1 + C) x h x w of normalised images."""
        if not self.branch_dilations:
            return super().scores(images)
        backbone = self.backbone
        pool5 = backbone.pool5(images)
        total = None
        for d in self.branch_dilations:
            key = str(d)
            fc6 = self.fc6[key] if key in self.fc6 else backbone.fc6
            fc7 = self.fc7[key] if key in self.fc7 else backbone.fc7
            x = backbone.dropout(F.relu(fc6(pool5)))
            x = self.fc8[key](backbone.dropout(F.relu(fc7(x))))
            total = x if total is None else total + x
        return total

    def losses(self, batch: Mapping[str, Any], step: int = 0) -> dict[str, Tensor]:
        self.check_batch(batch)
        images, labels = self.check_inputs(batch["images"], batch["labels"])
        config = self.config
        logits = self(images)
        seeds = self.check_seeds(batch["seeds"], logits)
        probs = floored_softmax(logits, config.min_prob)
        target = dsrg_crf_target(probs, images, labels, mask_absent=config.crf_mask_absent,
                                 min_prob=config.min_prob, **config.crf)
        grown = dsrg_grow(seeds, target, labels, config.fg_threshold, config.bg_threshold)
        seed = balanced_seed_loss(probs, grown)
        boundary = constrain_loss(probs, target, config.min_prob, config.ratio_clip)
        return {"seed": seed, "boundary": boundary, "loss": seed + boundary}
