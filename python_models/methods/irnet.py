"""IRNet (Ahn, Cho & Kwak, "Weakly Supervised Learning of Instance
Segmentation with Inter-pixel Relations", CVPR 2019; jiwoon-ahn/irn).

A frozen ResNet-50 feeds two branches at stride 4: a class-boundary map B
and a displacement field towards instance centroids
(:mod:`python_models.heads.irnet`). They learn from inter-pixel relations
mined from CAMs (the IR labels: confident foreground / background from CRFs
of the CAMs at thresholds 0.30 / 0.05, unsure pixels ignored): affinities
``1 - max B`` along each pair's path should be 1 within a class and 0
across classes; displacements of a class's pairs should differ by the pairs'
offsets. Semantic pseudo-masks are the CAMs random-walked with the
boundary's affinities (``wsss_ext.irnet_random_walk``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import wsss_ext
from python_models._checks import check_images, check_label_map, check_probs
from python_models.heads.irnet import (
    DisplacementBranch,
    EdgeBranch,
    resnet_stage_features,
    resnet_stage_strides,
)
from python_models.losses.irnet import irnet_losses, reduce_label_map
from python_models.methods.base import WSSSMethod, synthetic_tagged_batch
from python_models.methods.cam import CAM, build_cam_network
from python_models.methods.registry import register
from python_models.pseudo.cams import multiscale_cams, normalize_cams, synthetic_cams
from python_models.pseudo.confident import IRNET_CRF, ir_labels

__all__ = ["IRNet"]


@register
class IRNet(WSSSMethod):
    """IRNet: class boundaries and displacements from inter-pixel relations.

    ``forward(images) -> (boundary, displacement)``: B x 1 x h x w boundary
    probabilities (sigmoid of the edge branch) and the B x 2 x h x w field
    (dy, dx), h x w = ceil(H / 4) x ceil(W / 4). The backbone runs without
    gradient and stays in eval mode (irn detaches its five stages and keeps the
    backbone in eval mode); only the two branches train.

    ``losses`` reads ``ir_labels`` at the boundary map's size and returns
    :func:`python_models.losses.irnet_losses`: ``bg_pos``, ``fg_pos``, ``neg``,
    ``affinity`` (= bg_pos/4 + fg_pos/4 + neg/2 on ``wsss_ext.boundary_affinity``
    at ``radius`` 10), ``displacement_fg``, ``displacement_bg`` and
    ``loss = affinity + (displacement_fg + displacement_bg) / 2`` (``train_irn.py``).

    ``pseudo_labels(images, labels, cams=None)`` is ``make_sem_seg_labels.py``:
    the seed CAMs at stride 4, normalised per class and zero outside the tags,
    times ``1 - B`` and walked (``wsss_ext.irnet_random_walk``: radius 5,
    beta 10, 2^8 steps) on the affinities of the inference boundary
    (:meth:`boundary`: images zero-padded to ``crop_size``, the edge logits of
    the image and its flip averaged, then the sigmoid), up-sampled
    bilinearly, divided by the image's maximum, argmax against a background
    of 0.25 (``wsss_ext.walk_to_labels``) over the tags. ``cams()`` are those
    walked scores at the image size divided by the image's maximum, so
    ``pseudo_labels == argmax([0.25, cams])``.

    Seed CAMs: the ``cams=`` argument (B x C x H x W normalised CAMs of a
    CAM network, e.g. ``python_models.create("cam").cams(images, labels)``;
    any size, resized bilinearly to stride 4 and normalised again), else the
    method's ``cam_network``: ``"cam"`` (default) builds a
    :class:`python_models.methods.CAM` with the same ``num_classes`` and
    ``backbone`` as ``self.cam_network`` (load the trained stage-1 weights
    into it; irn's ``make_cam.py``: 4 scales + flips, resized to stride 4,
    divided by the max); a module with ``cams(images, labels)`` is used as it
    is; ``None``: ``cams=`` is required (ValueError without it).

    Defaults and their sources (jiwoon-ahn/irn):
        num_classes 20 (VOC); backbone ResNet-50 at output stride 16
        (``net/resnet50_irn.py``: ``strides=[2, 2, 2, 1]``); ``radius`` 10
        of the training pairs at stride 4 (``step/train_irn.py``:
        ``PathIndex(radius=10, default_size=(crop // 4, crop // 4))``);
        ``crop_size`` 512, ``batch_size`` 32, ``epochs`` 3, ``lr`` 0.1,
        ``weight_decay`` 1e-4 (``run_sample.py`` ``--irn_*``),
        ``displacement_lr_mult`` 10 (``train_irn.py``: the displacement
        branch's parameter group at 10 x lr), ``rescale`` (0.5, 1.5) and
        ``hor_flip`` (``train_irn.py``'s dataset); ``fg_threshold`` 0.30 and
        ``bg_threshold`` 0.05 (``--conf_fg_thres`` / ``--conf_bg_thres``) with
        ``crf`` :data:`python_models.pseudo.IRNET_CRF` for the IR labels
        (``step/cam_to_ir_label.py``, ``misc/imutils.py``); ``walk_radius`` 5
        (``make_sem_seg_labels.py``: ``propagate_to_edge(..., radius=5)``),
        ``beta`` 10, ``exp_times`` 8 (2^8 = 256 steps), ``sem_seg_bg_threshold``
        0.25 (``run_sample.py``); ``boundary_flip`` True (``EdgeDisplacement``
        averages the edge logits of the image and its flip; the inference
        padding to ``crop_size`` is ``EdgeDisplacement(crop_size=512)``).
        ``crop_size`` (as a training crop), ``batch_size``, ``epochs``, ``lr``,
        ``weight_decay``, ``displacement_lr_mult``, ``rescale``, ``hor_flip``
        describe the training recipe (:meth:`param_groups` uses the lrs).
        ``freeze_backbone`` True: irn trains only the two branches, on an
        ImageNet-pretrained ResNet-50 kept in eval mode without gradient;
        ``False`` trains the backbone too (for a backbone without pretrained
        weights, where frozen random or classification-only features give a
        weak boundary map: ``benchmarks/pseudo_labels.py``).

    Kernels and sizes: ``wsss_ext.boundary_affinity`` (no custom op of its
    own) in ``losses``; ``irnet_random_walk`` (``wsss_ext::random_walk``) in
    ``pseudo_labels`` / ``cams``. The kernels take any radius up to 64, with
    every tap of the radius (the full symmetric set of
    ``wsss_ext.neighbour_offsets``: 305 taps at radius 10, 69 at 5).

    Choices and deviations:
        - Pairs: every in-map pair counts, irn drops sources within 9 pixels
          of the left, right and bottom borders (see :mod:`python_models.losses.irnet`).
        - The walked map is resized to the image size (``walk_to_labels``);
          irn up-samples by 4 and crops, the same where H and W are multiples of 4.
        - Images larger than ``crop_size`` are not cropped at inference
          (irn's negative pad would crop them; VOC images never are).
        - The displacement mean (irn's ``MeanShift``) is computed by
          :meth:`displacement_mean` and is the user's to copy into
          ``self.displacement.running_mean`` after training.
        - Instance masks from the displacement field (irn
          ``make_ins_seg_labels.py``) are not implemented.
    """

    KEY = "irnet"
    PAPER = ("Ahn, Cho & Kwak, Weakly Supervised Learning of Instance Segmentation with Inter-pixel "
             "Relations, CVPR 2019")
    DEFAULTS = dict(
        num_classes=20,
        backbone="resnet50",
        output_stride=16,
        radius=10,
        crop_size=512,
        batch_size=32,
        epochs=3,
        lr=0.1,
        weight_decay=1e-4,
        displacement_lr_mult=10.0,
        rescale=(0.5, 1.5),
        hor_flip=True,
        fg_threshold=0.30,
        bg_threshold=0.05,
        crf=IRNET_CRF,
        walk_radius=5,
        beta=10.0,
        exp_times=8,
        sem_seg_bg_threshold=0.25,
        boundary_flip=True,
        freeze_backbone=True,
        cam_network="cam",
    )
    KERNELS = ("irnet_random_walk",)
    BATCH_KEYS = {
        **WSSSMethod.BATCH_KEYS,
        "ir_labels": ("B x ceil(H / 4) x ceil(W / 4) int64 IR labels at the boundary map's size "
                      "(0 background, c + 1 for tag column c, 255 unsure; python_models.pseudo.ir_labels "
                      "of the CAMs, reduced by python_models.losses.reduce_label_map)"),
    }

    def __init__(self, **overrides: Any) -> None:
        super().__init__(**overrides)
        config = self.config
        for name in ("radius", "walk_radius"):
            value = getattr(config, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 64:
                raise ValueError(f"{name} must be an int in [1, 64] (wsss_ext's neighbourhoods), got {value!r}")
        self.backbone = self.build_backbone(config.output_stride)
        stem = getattr(getattr(self.backbone, "conv1", None), "out_channels", None)
        stages = getattr(self.backbone, "stage_channels", None)
        if stem is None or stages is None or len(stages) != 4:
            raise TypeError(f"IRNet needs a ResNet backbone (conv1 and four stages); got {type(self.backbone).__name__}")
        channels = (stem, *stages)
        strides = resnet_stage_strides(getattr(self.backbone, "output_stride", config.output_stride))
        self.edge = EdgeBranch(channels, strides)
        self.displacement = DisplacementBranch(channels, strides)
        self.cam_network = build_cam_network(config.cam_network, self.num_classes, config.backbone)
        self.train()

    def train(self, mode: bool = True) -> IRNet:
        """Train mode for the branches; the backbone (unless ``freeze_backbone`` is
        False) and the CAM network stay in eval mode, as irn's."""
        super().train(mode)
        if self.config.freeze_backbone:
            self.backbone.eval()
        if isinstance(self.cam_network, nn.Module):
            self.cam_network.eval()
        return self

    def param_groups(self) -> list[dict[str, Any]]:
        """irn's two optimizer groups: the edge branch at ``lr``, the displacement
        branch at ``displacement_lr_mult * lr``, both with ``weight_decay``."""
        config = self.config
        return [
            {"params": list(self.edge.parameters()), "lr": config.lr, "weight_decay": config.weight_decay},
            {"params": list(self.displacement.parameters()), "lr": config.lr * config.displacement_lr_mult,
             "weight_decay": config.weight_decay},
        ]

    def stage_features(self, images: Tensor) -> list[Tensor]:
        """The backbone's five stages of images in [0, 1] (without gradient while
        ``freeze_backbone``)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_backbone):
            return resnet_stage_features(self.backbone, self.normalize(images))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(boundary B x 1 x h x w in [0, 1], displacement B x 2 x h x w) of images in [0, 1]."""
        images = check_images(images)
        features = self.stage_features(images)
        return torch.sigmoid(self.edge(features)), self.displacement(features)

    def losses(self, batch: Mapping[str, Any], step: int = 0) -> dict[str, Tensor]:
        self.check_batch(batch)
        images, _ = self.check_inputs(batch["images"], batch["labels"])
        boundary, displacement = self(images)
        targets = check_label_map(batch["ir_labels"], "ir_labels", num_labels=self.num_classes + 1,
                                  shape=(images.shape[0], *boundary.shape[-2:]))
        return irnet_losses(boundary, displacement, targets, self.config.radius)

    # -- inference ---------------------------------------------------------

    def _padded(self, images: Tensor) -> Tensor:
        """Images zero-padded (after normalisation, right and bottom) to ``crop_size``, as ``EdgeDisplacement``."""
        crop = self.config.crop_size or 0
        height, width = images.shape[-2:]
        return F.pad(images, (0, max(0, crop - width), 0, max(0, crop - height)))

    @staticmethod
    def boundary_size(height: int, width: int) -> tuple[int, int]:
        """The stride-4 size of the maps of an H x W image: ceil(H / 4) x ceil(W / 4)."""
        return (height - 1) // 4 + 1, (width - 1) // 4 + 1

    @torch.no_grad()
    def boundary(self, images: Tensor, flip: bool | None = None) -> Tensor:
        """The inference boundary map B x 1 x h x w in [0, 1] (irn ``EdgeDisplacement``):
        the normalised images (and, with ``flip``, their mirror images) zero-padded
        to ``crop_size``, the edge logits cropped to ceil(H / 4) x ceil(W / 4),
        the flipped one flipped back, averaged, sigmoid."""
        images = check_images(images)
        flip = self.config.boundary_flip if flip is None else flip
        normalized = self.normalize(images)
        batch = torch.cat([normalized, normalized.flip(-1)]) if flip else normalized
        padded = self._padded(batch)
        features = resnet_stage_features(self.backbone, padded)
        height, width = self.boundary_size(*images.shape[-2:])
        logits = self.edge(features)[..., :height, :width]
        if flip:
            logits = (logits[: len(images)] + logits[len(images):].flip(-1)) / 2
        return torch.sigmoid(logits)

    @torch.no_grad()
    def displacement_mean(self, images: Tensor) -> Tensor:
        """The mean (dy, dx) of the raw displacement field over images padded to
        ``crop_size`` (irn ``train_irn.py``'s last pass, its ``MeanShift``
        ``running_mean``). Returns a (2,) tensor; changes nothing."""
        images = check_images(images)
        field = self.displacement(resnet_stage_features(self.backbone, self._padded(self.normalize(images))))
        if not self.displacement.training:
            field = field + self.displacement.running_mean.to(field.dtype).view(1, 2, 1, 1)
        return field.mean((0, 2, 3))

    @torch.no_grad()
    def seed_cams(self, images: Tensor, labels: Tensor, cams: Tensor | None, size: tuple[int, int]) -> Tensor:
        """The seed CAMs at ``size`` (stride 4): B x C x h x w in [0, 1], each
        class divided by its max, zero outside the tags (irn ``make_cam.py``'s
        ``cam``). From ``cams`` if given, else from ``cam_network``."""
        if cams is None:
            network = self.cam_network
            if network is None:
                raise ValueError("cams: IRNet walks the CAMs of a CAM network; built with cam_network=None it "
                                 "needs cams=<B x C x H x W normalised CAMs>, e.g. "
                                 "python_models.create('cam').cams(images, labels)")
            if isinstance(network, CAM):
                raw = multiscale_cams(network.raw_cams, network.normalize(images), network.config.cam_scales,
                                      network.config.cam_flip, size=size)
                return normalize_cams(raw, labels)
            cams = network.cams(images, labels)
        cams = check_probs(cams, "cams")
        if cams.shape[:2] != (images.shape[0], self.num_classes):
            raise ValueError(f"cams must be B x C x H x W with B x C = {images.shape[0]} x {self.num_classes}, "
                             f"got shape {tuple(cams.shape)}")
        cams = cams.to(images.dtype)
        if tuple(cams.shape[-2:]) != tuple(size):
            cams = F.interpolate(cams, size=size, mode="bilinear", align_corners=False)
        return normalize_cams(cams, labels)

    @torch.no_grad()
    def walk(self, images: Tensor, labels: Tensor, cams: Tensor | None = None,
             boundary: Tensor | None = None) -> Tensor:
        """The walked seed CAMs at stride 4, B x C x h x w: ``wsss_ext.irnet_random_walk``
        of :meth:`seed_cams` on ``boundary`` (default :meth:`boundary`; or a given
        B x 1 x h x w map in [0, 1] at ceil(H / 4) x ceil(W / 4)), radius
        ``walk_radius``, ``beta``, ``2 ** exp_times`` steps."""
        images, labels = self.check_inputs(images, labels)
        size = self.boundary_size(*images.shape[-2:])
        if boundary is None:
            boundary = self.boundary(images)
        else:
            boundary = check_probs(boundary.unsqueeze(1) if isinstance(boundary, Tensor) and boundary.dim() == 3
                                   else boundary, "boundary")
            if tuple(boundary.shape) != (images.shape[0], 1, *size):
                raise ValueError(f"boundary must be B x 1 x h x w = {images.shape[0]} x 1 x {size[0]} x {size[1]}, "
                                 f"got {tuple(boundary.shape)}")
            boundary = boundary.to(images.dtype)
        seeds = self.seed_cams(images, labels, cams, size)
        config = self.config
        return wsss_ext.irnet_random_walk(seeds, boundary, config.beta, 2 ** config.exp_times, config.walk_radius)

    @torch.no_grad()
    def cams(self, images: Tensor, labels: Tensor, cams: Tensor | None = None,
             boundary: Tensor | None = None) -> Tensor:
        """The walked scores (:meth:`walk`) up-sampled bilinearly to the image size
        and divided by each image's maximum: B x C x H x W in [0, 1], zero outside the tags."""
        images, labels = self.check_inputs(images, labels)
        walked = F.interpolate(self.walk(images, labels, cams, boundary), size=images.shape[-2:], mode="bilinear",
                               align_corners=False)
        peak = walked.flatten(1).amax(1).clamp(min=1e-5).view(-1, 1, 1, 1)
        return (walked / peak).clamp(0, 1) * labels.to(walked.dtype)[..., None, None]

    @torch.no_grad()
    def pseudo_labels(self, images: Tensor, labels: Tensor, cams: Tensor | None = None,
                      boundary: Tensor | None = None) -> Tensor:
        """IRNet's semantic pseudo-masks (``make_sem_seg_labels.py``): B x H x W int64,
        0 background, c + 1 for tag column c (never a class outside the tags).

        Args:
            images: B x 3 x H x W in [0, 1]. labels: B x C tags.
            cams: the CAM network's normalised CAMs (B x C x H x W, any H x W);
                default: ``cam_network``'s.
            boundary: a B x 1 x h x w boundary map at stride 4; default :meth:`boundary`.
        """
        images, labels = self.check_inputs(images, labels)
        walked = self.walk(images, labels, cams, boundary)
        # Classes outside the tags below every tagged score and the background.
        scores = torch.where(labels[..., None, None] > 0, walked, torch.full_like(walked, -1.0))
        return wsss_ext.walk_to_labels(scores, tuple(images.shape[-2:]), self.config.sem_seg_bg_threshold)

    def ir_targets(self, images: Tensor, labels: Tensor, cams: Tensor) -> Tensor:
        """The ``ir_labels`` of a batch (irn ``cam_to_ir_label.py``, then the
        dataset's reduction to stride 4): :func:`python_models.pseudo.ir_labels`
        of ``cams`` (B x C x H x W normalised, at the image size) at
        ``fg_threshold`` / ``bg_threshold`` with ``crf`` (runs ``dense_crf``),
        reduced to ceil(H / 4) x ceil(W / 4) (:func:`python_models.losses.reduce_label_map`)."""
        images, labels = self.check_inputs(images, labels)
        config = self.config
        full = ir_labels(cams, images, labels, config.fg_threshold, config.bg_threshold, config.crf)
        return reduce_label_map(full, self.boundary_size(*images.shape[-2:]))

    def example_batch(self, batch_size: int = 2, image_size: int = 32,
                      generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """The base batch plus ``cams`` (CAM-like maps of the masks,
        :func:`python_models.pseudo.cams.synthetic_cams`, standing in for a
        CAM network's) and ``ir_labels`` (:meth:`ir_targets` of those CAMs)."""
        batch = synthetic_tagged_batch(batch_size, image_size, self.num_classes, generator)
        batch["cams"] = synthetic_cams(batch["masks"], batch["labels"])
        batch["ir_labels"] = self.ir_targets(batch["images"], batch["labels"], batch["cams"])
        return batch
