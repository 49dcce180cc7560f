"""Puzzle-CAM (Jo & Yu, "Puzzle-CAM: Improved localization via matching
partial and full features", ICIP 2021; shjo-april/PuzzleCAM): a CAM
classifier that also classifies the 2 x 2 tiles of each image and pulls the
merged tile CAMs towards the full image's CAMs."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from python_models.augment.puzzle import puzzle_merge, puzzle_tile
from python_models.losses.puzzle import puzzle_cam_loss
from python_models.methods.cam import CAM
from python_models.methods.registry import register
from python_models.pseudo.cams import cams_to_labels
from python_models.pseudo.crf import crf_labels, tag_unary_from_labels

__all__ = ["PUZZLE_CRF", "PuzzleCAM"]

# PuzzleCAM tools/ai/demo_utils.py crf_inference_label: gaussian sxy 3 compat 3, bilateral sxy 50 srgb 5
# compat 10; make_pseudo_labels.py --crf_iteration 1 in the README's command (the script's default is 10).
PUZZLE_CRF = dict(n_iters=1, gaussian_sxy=3.0, gaussian_weight=3.0, bilateral_sxy=50.0, bilateral_srgb=5.0,
                  bilateral_weight=10.0)


@register
class PuzzleCAM(CAM):
    """Puzzle-CAM's classifier: L = cls(full) + cls(GAP of merged tile CAMs) + alpha * re-loss.

    ``losses`` runs the backbone twice, on the normalised images and on their
    ``n_pieces`` tiles (:func:`python_models.augment.puzzle_tile`, the images
    are tiled, not the features), merges the tiles' raw CAMs
    (:func:`python_models.augment.puzzle_merge`) and applies
    :func:`python_models.losses.puzzle_cam_loss`. Where the merged map's size
    differs from the full one (image sides not multiples of
    ``n_pieces ** 0.5 * output_stride``; the repository trains on 512 crops,
    where they match) it is resized bilinearly to the full map's size.

    The re-loss weight ``alpha`` is a buffer: the losses of optimizer step
    ``i`` (0-based) use ``alpha * min(1, i / (alpha_schedule * max_steps))``,
    the repository's ``min(args.alpha * iteration / (max_iteration *
    args.alpha_schedule), args.alpha)``. It starts at 0 (the value of step 0)
    and ``after_step(step, max_steps)``, called after step ``step``, sets the
    value of step ``step + 1``; so it reaches ``alpha`` after half of training.
    ``alpha_schedule = 0`` keeps it at ``alpha`` throughout (the script's rule).

    ``pseudo_labels`` is Puzzle-CAM's ``make_pseudo_labels.py`` step: the
    argmax of [``threshold`` as the background score, the tagged CAMs], refined
    by ``unary_from_labels`` (gt_prob 0.7, no unsure label) and ``dense_crf``
    (``crf``) over the image's present labels. The repository feeds that step
    the random-walk output (``inference_rw.py``: IRNet's boundary network,
    "AffinityNet", with ``irnet_random_walk``, beta 10, exp_times 8); the
    boundary network is IRNet's and comes with that method, so here the
    multi-scale CAMs (:meth:`cams`) stand in for the walk's output.

    Defaults (PuzzleCAM README commands and scripts):
        num_classes 20 (VOC); backbone ResNet-50 at output stride 16
        (``core/networks.py``: strides (2, 2, 2, 1)); num_pieces 4
        (``--num_pieces``); alpha 4.0 with alpha_schedule 0.5 (README:
        ``--alpha 4.00 --alpha_schedule 0.50``; the script's default alpha is
        1.0); re_loss "l1" (``--re_loss L1_Loss``), re_loss_option "masking"
        (``--re_loss_option masking``), level "feature" (``--level``'s default:
        raw CAMs, not normalised); cam_scales (0.5, 1.0, 1.5, 2.0) with flips
        (``inference_classification.py --scales``); threshold 0.35 (README's
        ``make_pseudo_labels.py --threshold 0.35``; the script's default 0.25);
        gt_prob 0.7 (``crf_inference_label``); crf :data:`PUZZLE_CRF`: gaussian
        3/3, bilateral 50/5/10, 1 iteration (README's ``--crf_iteration 1``;
        the script's default 10).

    Kernels: ``dense_crf`` in ``pseudo_labels``.
    """

    KEY = "puzzle_cam"
    PAPER = "Jo & Yu, Puzzle-CAM: Improved localization via matching partial and full features, ICIP 2021"
    DEFAULTS = dict(
        num_classes=20,
        backbone="resnet50",
        output_stride=16,
        num_pieces=4,
        alpha=4.0,
        alpha_schedule=0.5,
        re_loss="l1",
        re_loss_option="masking",
        level="feature",
        cam_scales=(0.5, 1.0, 1.5, 2.0),
        cam_flip=True,
        threshold=0.35,
        gt_prob=0.7,
        crf=PUZZLE_CRF,
    )
    KERNELS = ("dense_crf",)

    def __init__(self, **overrides: Any) -> None:
        super().__init__(**overrides)
        config = self.config
        if config.alpha < 0 or config.alpha_schedule < 0:
            raise ValueError(f"alpha and alpha_schedule must be >= 0, got {config.alpha} and {config.alpha_schedule}")
        side = math.isqrt(config.num_pieces) if isinstance(config.num_pieces, int) and config.num_pieces > 0 else 0
        if side * side != config.num_pieces or side == 0:
            raise ValueError(f"num_pieces must be a square (4 for a 2 x 2 grid), got {config.num_pieces!r}")
        start = config.alpha if config.alpha_schedule == 0 else 0.0
        self.register_buffer("alpha", torch.tensor(float(start)))

    def alpha_at(self, step: int, max_steps: int) -> float:
        """The re-loss weight of (0-based) optimizer step ``step`` of ``max_steps``."""
        if self.config.alpha_schedule == 0:
            return float(self.config.alpha)
        ramp = step / (max_steps * self.config.alpha_schedule)
        return float(min(self.config.alpha * ramp, self.config.alpha))

    def after_step(self, step: int, max_steps: int) -> None:
        """Set ``alpha`` to the value of the next step, ``step + 1``."""
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.alpha.fill_(self.alpha_at(step + 1, max_steps))

    def puzzle_cams(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Raw CAMs of images in [0, 1] and the merged raw CAMs of their tiles,
        both B x C x h x w (the merged map resized to the full one's size if they differ)."""
        normalized = self.normalize(images)
        full = self.raw_cams(normalized)
        pieces = self.config.num_pieces
        merged = puzzle_merge(self.raw_cams(puzzle_tile(normalized, pieces)), pieces)
        if merged.shape[-2:] != full.shape[-2:]:
            merged = F.interpolate(merged, size=full.shape[-2:], mode="bilinear", align_corners=False)
        return full, merged

    def losses(self, batch: Mapping[str, Any], step: int = 0) -> dict[str, Tensor]:
        self.check_batch(batch)
        images, labels = self.check_inputs(batch["images"], batch["labels"])
        full, merged = self.puzzle_cams(images)
        terms = puzzle_cam_loss(full, merged, labels, self.alpha, distance=self.config.re_loss,
                                mode=self.config.re_loss_option, level=self.config.level)
        return terms

    @torch.no_grad()
    def pseudo_labels(self, images: Tensor, labels: Tensor) -> Tensor:
        """Puzzle-CAM's dCRF pseudo-labels: B x H x W int64 (0 background, c + 1 for tag column c).

        ``argmax([threshold, cams])`` over the tags, then ``dense_crf`` on
        ``tag_unary_from_labels(gt_prob)`` with ``crf`` (``n_iters = 0`` gives the
        argmax back, as ``--crf_iteration 0``)."""
        images, labels = self.check_inputs(images, labels)
        seeds = cams_to_labels(self.cams(images, labels), labels, self.config.threshold)
        unary = tag_unary_from_labels(seeds, labels, self.config.gt_prob, ignore_index=None)
        return crf_labels(images, unary, **self.config.crf)
