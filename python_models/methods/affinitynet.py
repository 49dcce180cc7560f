"""AffinityNet / PSA (Ahn & Kwak, "Learning Pixel-level Semantic Affinity with
Image-level Supervision for Weakly Supervised Semantic Segmentation", CVPR
2018; jiwoon-ahn/psa).

PSA's pipeline has two networks: a CAM classifier (``train_cls.py``), whose
CAMs give confident affinity labels by dense CRFs at a low and a high
background power (``infer_cls.py``), and AffinityNet (``train_aff.py``),
trained to predict which neighbouring pixels share a label; its affinities
then drive a random walk that spreads the CAMs into pseudo-masks
(``infer_aff.py``). This module is the second network. Its CAMs come from the
first (``python_models.create("cam")``, SEAM, ...) and are passed in.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import wsss_ext
from python_models._checks import check_label_map, check_probs
from python_models.heads.affinity import AffinityHead
from python_models.losses.affinity import affinity_loss
from python_models.methods.base import WSSSMethod, synthetic_tagged_batch
from python_models.methods.cam import build_cam_network
from python_models.methods.registry import register
from python_models.pseudo.affinity_pairs import (
    affinity_pair_labels,
    psa_affinity_label_map,
    psa_random_walk,
    walked_labels,
)
from python_models.pseudo.cams import normalize_cams, synthetic_cams
from python_models.pseudo.confident import PSA_CRF

__all__ = ["AffinityNet"]


@register
class AffinityNet(WSSSMethod):
    """AffinityNet: pixel affinities learnt from CRF-confident CAM labels, and
    the random walk they drive.

    ``forward(images) -> affinities`` B x T x h x w (T = 69 taps of
    ``wsss_ext.neighbour_offsets(5)``, stride 8): ``wsss_ext.feature_affinity``
    of :class:`python_models.heads.AffinityHead` on the backbone's last three
    stages (ResNet-38 ``conv4``, ``conv5``, ``conv6``). ``losses`` returns
    ``bg_pos``, ``fg_pos``, ``neg`` and ``loss`` = bg/4 + fg/4 + neg/2
    (:func:`python_models.losses.affinity_loss`) on the pairs of
    ``batch["affinity_labels"]`` (:func:`python_models.pseudo.affinity_pair_labels`).

    ``pseudo_labels(images, labels, cams=None)`` and ``cams(images, labels,
    cams=None)`` walk the normalised CAMs of PSA's first network, the CAM
    classifier (B x C x H x W in [0, 1] at the images' size): the ``cams=``
    argument (e.g. ``create("cam").cams(images, labels)`` or SEAM's), else
    ``cam_network``'s: ``"cam"`` (default) builds a
    :class:`python_models.methods.CAM` with the same ``num_classes`` and
    ``backbone`` at output stride 8 (psa ``network/resnet38_cls.py``; its
    ``cam_scales`` (1, 0.5, 1.5, 2) with flips are ``infer_cls.py``'s) as
    ``self.cam_network``, kept in eval mode (load the trained stage-1
    weights into it); a module with ``cams(images, labels)`` is used as it
    is; ``None``: ``cams=`` is required (``ValueError`` without it).
    Both run :func:`python_models.pseudo.psa_random_walk` (background
    (1 - max)^16 at full size, pooled to stride 8, 256 steps at beta 8);
    ``pseudo_labels`` is the argmax over the background and the tags,
    ``cams`` the walked foreground scores divided by their max per class.

    Defaults and their sources (jiwoon-ahn/psa):
        num_classes 20 (VOC); backbone ``resnet38d`` at output stride 8,
        head channels (64, 128, 256) -> 448 (``network/resnet38_aff.py``);
        ``radius`` 5 (``train_aff.py``, ``VOC12AffDataset(radius=5)``;
        ``pyutils.get_indices_of_pairs(radius=5)``), ``loss_weights``
        (1/4, 1/4, 1/2), ``lr`` 0.1 (x2 biases, x10 / x20 for the new
        layers), ``weight_decay`` 5e-4, ``batch_size`` 8, ``max_epochs`` 8,
        ``crop_size`` 448, ``poly_power`` 0.9 (``tool/torchutils.py``
        ``PolyOptimizer``), ``color_jitter`` (brightness 0.3, contrast 0.3,
        saturation 0.3, hue 0.1) (``train_aff.py``; README: the same command);
        ``beta`` 8, ``n_steps`` 256 (``--logt 8``: T squared 8 times),
        ``bg_power`` 16 (``--alpha 16``) (``infer_aff.py``; README "beta=8,
        gamma=5, t=256"); ``crf_alphas`` (4, 32) (``infer_cls.py``
        ``--low_alpha 4 --high_alpha 32``; the README's released ResNet-38
        used 4/16/32, the CVPR submission 4/16/24), ``crf``
        :data:`python_models.pseudo.PSA_CRF` (``tool/imutils.py``).
        ``feature_stride`` 8 is the stride the labels are pooled to
        (``imutils.AvgPool2d(8)``) and the CAMs are walked at.
        ``lr`` ... ``color_jitter`` describe the training recipe; no method
        call reads them.

    Choices and deviations:
        - Pairs: wsss_ext's symmetric 69-tap layout counts each unordered pair
          twice, so each term's mean is the mean over unordered pairs; PSA
          lists each once and drops "from" pixels within radius - 1 of the
          left, right and bottom borders (see :mod:`python_models.pseudo.affinity_pairs`).
        - Each loss term is the exact mean over its pairs (PSA divides by
          count + 1e-5); an empty term is 0.
        - PSA freezes ``conv1a``, ``b2``, ``b2_1``, ``b2_2`` and every
          BatchNorm of its ImageNet-initialised ResNet-38; here the backbone
          starts untrained and follows the module's mode. After loading
          weights call :meth:`freeze_backbone`.
        - The walk runs at the CAMs' resolution with the images zero-padded
          (after normalisation, as PSA) to a multiple of 8.

    Kernels: ``random_walk`` in ``pseudo_labels`` / ``cams`` (through
    ``wsss_ext.random_walk`` on ``wsss_ext.feature_affinity``; the CRFs of
    the affinity labels run when the labels are made, e.g. in
    ``example_batch``, not in ``losses``).
    """

    KEY = "affinitynet"
    PAPER = ("Ahn & Kwak, Learning Pixel-level Semantic Affinity with Image-level Supervision for "
             "Weakly Supervised Semantic Segmentation, CVPR 2018")
    DEFAULTS = dict(
        num_classes=20,
        backbone="resnet38d",
        output_stride=8,
        feature_stride=8,
        head_channels=(64, 128, 256),
        radius=5,
        loss_weights=(0.25, 0.25, 0.5),
        lr=0.1,
        weight_decay=5e-4,
        batch_size=8,
        max_epochs=8,
        crop_size=448,
        poly_power=0.9,
        color_jitter=(0.3, 0.3, 0.3, 0.1),
        beta=8.0,
        n_steps=256,
        bg_power=16.0,
        crf_alphas=(4.0, 32.0),
        crf=PSA_CRF,
        cam_network="cam",
    )
    KERNELS = ("random_walk",)
    TINY_BACKBONE = "resnet38d_tiny"
    BATCH_KEYS = {
        **WSSSMethod.BATCH_KEYS,
        "affinity_labels": ("B x ceil(H / 8) x ceil(W / 8) int64 label map at the feature stride from "
                            "PSA's low / high alpha CRFs (0 background, c + 1, 255 ignored; "
                            "python_models.pseudo.psa_affinity_label_map)"),
    }

    def __init__(self, **overrides: Any) -> None:
        super().__init__(**overrides)
        self.backbone = self.build_backbone(self.config.output_stride)
        channels = getattr(self.backbone, "stage_channels", None)
        if not callable(getattr(self.backbone, "stages", None)) or channels is None or len(channels) < 3:
            raise TypeError(f"AffinityNet's backbone needs stages(x) and stage_channels (>= 3 stages); "
                            f"{type(self.backbone).__name__} lacks them")
        self.head = AffinityHead(channels[-3:], self.config.head_channels)
        self.cam_network = build_cam_network(self.config.cam_network, self.num_classes, self.config.backbone,
                                             output_stride=self.config.output_stride)
        self.train()

    def train(self, mode: bool = True) -> AffinityNet:
        """Train mode for AffinityNet; the CAM network (PSA's first, already trained stage) stays in eval mode."""
        super().train(mode)
        if isinstance(self.cam_network, nn.Module):
            self.cam_network.eval()
        return self

    def freeze_backbone(self) -> None:
        """PSA's training regime for a pretrained ResNet-38 (``resnet38_aff.py``
        ``not_training`` and ``resnet38d.Net.train``): ``conv1a``, ``b2``,
        ``b2_1``, ``b2_2`` fixed, every BatchNorm in eval mode and fixed."""
        freeze = getattr(self.backbone, "freeze", None)
        if not callable(freeze):
            raise TypeError(f"{type(self.backbone).__name__} has no freeze(); PSA's regime needs ResNet38d")
        freeze(("conv1a", "b2", "b2_1", "b2_2"))

    def _padded(self, images: Tensor) -> Tensor:
        """Normalised images zero-padded (right, bottom) to a multiple of the feature stride."""
        stride = int(self.config.feature_stride)
        height, width = images.shape[-2:]
        return F.pad(self.normalize(images), (0, -width % stride, 0, -height % stride))

    def features(self, images: Tensor) -> Tensor:
        """The head's B x 448 x ceil(H / 8) x ceil(W / 8) features of images in [0, 1]."""
        features = self.head(self.backbone.stages(self._padded(images))[-3:])
        size = tuple(-(-s // int(self.config.feature_stride)) for s in images.shape[-2:])
        if tuple(features.shape[-2:]) != size:
            raise ValueError(f"the backbone's features are {tuple(features.shape[-2:])}, not the images' size "
                             f"/ feature_stride = {size}; set feature_stride to the backbone's stride")
        return features

    def forward(self, images: Tensor) -> Tensor:
        """Affinities B x T x h x w of images in [0, 1] (``wsss_ext.feature_affinity``)."""
        images, _ = self.check_inputs(images)
        return wsss_ext.feature_affinity(self.features(images), self.config.radius)

    def losses(self, batch: Mapping[str, Any], step: int = 0) -> dict[str, Tensor]:
        self.check_batch(batch)
        images, _ = self.check_inputs(batch["images"], batch["labels"])   # AffinityNet's loss reads no tags
        affinity = self(images)
        label_map = check_label_map(batch["affinity_labels"], "affinity_labels", num_labels=self.num_classes + 1,
                                    shape=(images.shape[0], *affinity.shape[-2:]))
        return affinity_loss(affinity, *affinity_pair_labels(label_map, self.config.radius),
                             weights=self.config.loss_weights)

    def _walk(self, images: Tensor, labels: Tensor, cams: Tensor | None) -> Tensor:
        if cams is None:
            if self.cam_network is None:
                raise ValueError("cams: AffinityNet walks the CAMs of a CAM network; built with cam_network=None it "
                                 "needs cams=<B x C x H x W normalised CAMs>, e.g. "
                                 "python_models.create('cam').cams(images, labels)")
            cams = self.cam_network.cams(images, labels)
        cams = check_probs(cams, "cams")
        if cams.shape != (images.shape[0], self.num_classes, *images.shape[-2:]):
            raise ValueError(f"cams must be B x C x H x W = {images.shape[0]} x {self.num_classes} x "
                             f"{images.shape[2]} x {images.shape[3]}, got {tuple(cams.shape)}")
        config = self.config
        return psa_random_walk(cams, labels, self.features(images), config.feature_stride, config.beta,
                               config.n_steps, config.bg_power, config.radius)

    @torch.no_grad()
    def cams(self, images: Tensor, labels: Tensor, cams: Tensor | None = None) -> Tensor:
        """The walked foreground scores B x C x H x W, each class divided by its
        max, zero outside the tags. ``cams``: the CAM network's, as for
        :meth:`pseudo_labels`."""
        images, labels = self.check_inputs(images, labels)
        return normalize_cams(self._walk(images, labels, cams)[:, 1:], labels)

    @torch.no_grad()
    def pseudo_labels(self, images: Tensor, labels: Tensor, cams: Tensor | None = None) -> Tensor:
        """PSA's random-walk pseudo-masks (``infer_aff.py``): B x H x W int64,
        the argmax of the walked scores over the background and the tags.

        Args:
            images: B x 3 x H x W in [0, 1]. labels: B x C tags.
            cams: B x C x H x W normalised CAMs of the CAM network; default:
                ``cam_network``'s (``ValueError`` when that is None).
        """
        images, labels = self.check_inputs(images, labels)
        return walked_labels(self._walk(images, labels, cams), labels)

    def example_batch(self, batch_size: int = 2, image_size: int = 32,
                      generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """The base batch plus ``cams`` (:func:`synthetic_cams` of the masks,
        standing in for a CAM network's) and ``affinity_labels``
        (:func:`python_models.pseudo.psa_affinity_label_map` of those CAMs at
        ``crf_alphas``; runs ``dense_crf``)."""
        batch = synthetic_tagged_batch(batch_size, image_size, self.num_classes, generator)
        batch["cams"] = synthetic_cams(batch["masks"], batch["labels"])
        batch["affinity_labels"] = psa_affinity_label_map(
            batch["cams"], batch["images"], batch["labels"], self.config.feature_stride,
            self.config.crf_alphas, self.config.crf)
        return batch
