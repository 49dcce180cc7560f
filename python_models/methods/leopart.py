"""Leopart (Ziegler & Asano, "Self-Supervised Learning of Object Parts for
Semantic Segmentation", CVPR 2022): a DINO ViT fine-tuned with a spatial,
dense SwAV objective. The teacher's patch tokens of each global crop are
assigned to prototypes by Sinkhorn-Knopp; the student predicts those codes
from every other crop, both maps RoIAligned onto the crops' intersection and
the loss restricted to the teacher's attention foreground."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from python_models._checks import check_images
from python_models.augment.crops import (
    check_multi_crop_views,
    multi_crop_batch,
    size_groups,
)
from python_models.backbones.vit import vit_backbone
from python_models.heads import ProjectionMLP, Prototypes
from python_models.losses.leopart import leopart_spatial_loss
from python_models.losses.swav import swav_codes
from python_models.memory import Queue
from python_models.memory.ema import ema_teacher
from python_models.methods.base import Method, synthetic_tagged_batch
from python_models.methods.registry import register
from python_models.pseudo.leopart import (
    attention_foreground,
    cls_attention_map,
    crop_intersections,
)

__all__ = ["Leopart"]

_LOSS_MASKS = ("fg", "all", "bg")


class _LeopartNetwork(nn.Module):
    """ViT patch tokens → projection MLP → L2 normalisation (embeddings) →
    prototypes (scores), Leopart ``vit.py`` ``forward_head``."""

    def __init__(self, backbone: nn.Module, projection: nn.Module, prototypes: Prototypes) -> None:
        super().__init__()
        self.backbone = backbone
        self.projection = projection
        self.prototypes = prototypes

    def forward(self, views: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """(embeddings B x N_v x d, scores B x N_v x K) of each normalised view."""
        embeddings, scores = [], []
        for start, end in size_groups(views):
            _, patches = self.backbone.tokens(torch.cat(list(views[start:end])))
            z = nn.functional.normalize(self.projection(patches), dim=-1)
            s = self.prototypes(z)
            embeddings.extend(z.chunk(end - start))
            scores.extend(s.chunk(end - start))
        return embeddings, scores


def _grid_map(rows: Tensor, grid: tuple[int, int]) -> Tensor:
    """B x N x K rows of a row-major h x w grid → B x K x h x w."""
    return rows.transpose(1, 2).reshape(rows.shape[0], rows.shape[2], *grid)


@register
class Leopart(Method):
    """Leopart: spatial SwAV on a DINO ViT's patch tokens with an EMA teacher.

    Network (MkuuWaUjinga/leopart ``src/vit.py``, ``src/leopart.py``): ViT-S/16
    started from DINO's weights (``weights``: a local file, loaded with
    :meth:`VisionTransformer.load_pretrained`; stochastic depth 0.1 in the
    student) → patch tokens → projection MLP 384 → 2048 → 2048 → 256 (GELU,
    no BatchNorm) → L2 normalisation → 300 prototypes
    (:class:`python_models.heads.Prototypes`). The teacher is an
    :class:`python_models.memory.EMATeacher` copy of the whole network
    (momentum 0.9995 → 1, cosine).

    Loss (``Leopart.spatial_loss``): for each global crop g, the codes
    ``python_models.losses.swav_codes`` (``wsss_ext.sinkhorn_knopp``, ε
    0.05, 3 iterations) of the teacher's patch scores of the whole batch —
    with the queued embeddings, scored by the student's current prototypes,
    prepended once the queue is full — RoIAligned (7 x 7, aligned) onto
    g's intersection with every other crop v; the student's scores of v
    RoIAligned onto the same intersection in v; cross-entropy with the
    student's softmax at τ 0.1 over the aligned cells inside the teacher's
    attention foreground (``loss_mask="fg"``; :func:`python_models.losses.
    leopart_spatial_loss`), divided by V - 1, averaged over the global crops.
    The foreground: the teacher's last [CLS] attention averaged over heads,
    :func:`python_models.pseudo.attention_foreground` (7 x 7 blur, σ 0.6, 60 %
    of the mass, components <= 2 patches dropped); a cell counts when its
    aligned mask is 1 (every sample foreground).

    State, moved in ``after_step`` only: the teacher's EMA update; the
    queues (one :class:`python_models.memory.Queue` per global crop, 8192 x
    256) receive up to ``queue_rows_per_image`` x B of the step's teacher
    foreground embeddings (a random subset, staged in ``losses``); both
    networks' prototypes are re-normalised (Leopart normalises them before
    every step). Leopart splits the queue over GPUs
    (``queue_length // gpus`` each, never gathered); here each process keeps
    ``queue_length`` rows of its own, committed without a gather.

    Batch: ``crops`` (the global crops, G x B x 3 x H x W in [0, 1]),
    ``small_crops`` (the local ones, L x B x 3 x h x w) and ``crop_boxes``
    (B x V x 4, V = G + L: each crop's (x0, y0, x1, y1) in its original
    image's pixels, global crops first);
    :func:`python_models.augment.crops.multi_crop` with ``min_intersection``
    makes them. ``example_batch`` gives 2 x S + 2 x S/2 crops.

    ``forward(images)`` returns the student backbone's patch-token map
    B x D x h x w (what Leopart evaluates).

    The teacher runs its global crops twice, once for the tokens and once for
    the last attention (:meth:`VisionTransformer.tokens` and
    ``last_attention``); Leopart takes both from one pass.

    Cluster-based foreground extraction and community detection are
    evaluation steps on a whole dataset, not training: CBFE is
    :func:`python_models.pseudo.cbfe` / ``cbfe_search_cut``; community detection
    (Infomap on the cluster co-occurrence graph) is not implemented.

    Defaults (``experiments/configs/train_coco_config.yml`` and ``Leopart.__init__``):
        num_classes 300 (``nmb_prototypes``); backbone "vit_small"
        (``arch vit-small``, ``patch_size 16``); weights None (a path to
        DINO's ViT-S/16 weights, ``pretrained_weights 'dino'``);
        drop_path_rate 0.1; projection_hidden_dim 2048, projection_dim 256,
        projection_layers 3; temperature 0.1; epsilon 0.05;
        sinkhorn_iterations 3; global_crops 2 (``crops_for_assign [0, 1]``),
        local_crops 4 (``nmb_samples [2, 4]``), global_crop_size 224,
        local_crop_size 96 (``size_crops``), global_crops_scale (0.25, 1.0),
        local_crops_scale (0.05, 0.25) (``min_scale_crops`` / ``max_scale_crops``),
        min_intersection 0.01 (``min_intersection_crops``); roi_align_size 7;
        momentum_teacher 0.9995, final_momentum_teacher 1.0; queue_length
        8192; queue_rows_per_image 10 (``bs * 10`` rows stored per step);
        loss_mask "fg"; attention_fraction 0.6, attention_blur_sigma 0.6,
        attention_blur_size 7, attention_min_component 3
        (``process_attentions``: components of <= 2 patches dropped);
        optimiser settings lr_backbone 1e-5, lr_heads 1e-4, final_lr 0,
        weight_decay 0.04 → weight_decay_end 0.5, batch_size 32 per GPU,
        max_epochs 50, optimizer "adamw", exclude_norm_bias True (for the
        training loop; the method does not read them); process_group None.

    Kernels: ``sinkhorn_knopp`` (the teacher's codes, in ``losses``).
    """

    KEY = "leopart"
    PAPER = "Ziegler & Asano, Self-Supervised Learning of Object Parts for Semantic Segmentation, CVPR 2022"
    DEFAULTS = dict(
        num_classes=300,
        backbone="vit_small",
        weights=None,
        drop_path_rate=0.1,
        projection_hidden_dim=2048,
        projection_dim=256,
        projection_layers=3,
        temperature=0.1,
        epsilon=0.05,
        sinkhorn_iterations=3,
        global_crops=2,
        local_crops=4,
        global_crop_size=224,
        local_crop_size=96,
        global_crops_scale=(0.25, 1.0),
        local_crops_scale=(0.05, 0.25),
        min_intersection=0.01,
        roi_align_size=7,
        momentum_teacher=0.9995,
        final_momentum_teacher=1.0,
        queue_length=8192,
        queue_rows_per_image=10,
        loss_mask="fg",
        attention_fraction=0.6,
        attention_blur_sigma=0.6,
        attention_blur_size=7,
        attention_min_component=3,
        lr_backbone=1e-5,
        lr_heads=1e-4,
        final_lr=0.0,
        weight_decay=0.04,
        weight_decay_end=0.5,
        batch_size=32,
        max_epochs=50,
        optimizer="adamw",
        exclude_norm_bias=True,
        process_group=None,
    )
    KERNELS = ("sinkhorn_knopp",)
    BATCH_KEYS = {
        "crops": "G x B x 3 x H x W float RGB in [0, 1], the global_crops global crops of the B images "
                 "(or a list of B x 3 x H x W; Leopart: 2 x 224)",
        "small_crops": "L x B x 3 x h x w local crops (or a list; may be empty; Leopart: 4 x 96)",
        "crop_boxes": "B x V x 4 float boxes (x0, y0, x1, y1) of the V = G + L crops (global first) in "
                      "their original image's pixels",
    }
    TINY_BACKBONE = "vit_tiny"

    def __init__(self, **overrides: Any) -> None:
        super().__init__(**overrides)
        config = self.config
        if config.loss_mask not in _LOSS_MASKS:
            raise ValueError(f"loss_mask must be one of {_LOSS_MASKS}, got {config.loss_mask!r}")
        backbone = vit_backbone(self, "tokens", "last_attention")
        if config.weights is not None:
            backbone.load_pretrained(config.weights)
        projection = ProjectionMLP(backbone.out_channels, int(config.projection_hidden_dim),
                                   int(config.projection_dim), int(config.projection_layers), batch_norm=False,
                                   activation="gelu")
        self.student = _LeopartNetwork(backbone, projection,
                                       Prototypes(int(config.projection_dim), int(config.num_classes)))
        self.teacher = ema_teacher(self.student, config)
        self.queues = nn.ModuleList(Queue(int(config.queue_length), int(config.projection_dim))
                                    for _ in range(int(config.global_crops)))

    @property
    def num_classes(self) -> int:
        return int(self.config.num_classes)

    @property
    def patch_size(self) -> int:
        return int(self.student.backbone.output_stride)

    def forward(self, images: Tensor) -> Tensor:
        """The student backbone's patch-token map B x D x h x w of images in [0, 1]."""
        return self.student.backbone(self.normalize(check_images(images)))

    def _check_boxes(self, boxes: object, batch: int, views: int) -> Tensor:
        if not isinstance(boxes, Tensor):
            raise TypeError(f"crop_boxes must be a torch.Tensor B x V x 4, got {type(boxes).__name__}")
        if not boxes.dtype.is_floating_point:
            raise TypeError(f"crop_boxes must be a float tensor, got dtype {boxes.dtype}")
        if tuple(boxes.shape) != (batch, views, 4):
            raise ValueError(f"crop_boxes must be B x V x 4 = {batch} x {views} x 4, got shape {tuple(boxes.shape)}")
        if not torch.isfinite(boxes).all():
            raise ValueError("crop_boxes has NaN or infinite values")
        return boxes

    def foreground(self, views: Sequence[Tensor]) -> list[Tensor]:
        """The teacher's attention foreground (B x h x w bool) of each
        normalised global crop."""
        c = self.config
        masks = []
        with torch.no_grad():
            for view in views:
                attention = self.teacher.module.backbone.last_attention(view)
                grid = self.teacher.module.backbone.grid(view)
                masks.append(attention_foreground(cls_attention_map(attention, grid), c.attention_fraction,
                                                  c.attention_blur_sigma, c.attention_blur_size,
                                                  int(c.attention_min_component) - 1))
        return masks

    def codes(self, teacher_scores: Tensor, crop: int) -> Tensor:
        """Sinkhorn codes (B N x K) of one global crop's teacher scores (B x N x
        K), the queue's embeddings (scored by the student's prototypes)
        prepended once queue ``crop`` is full."""
        queue = self.queues[crop]
        queue_scores = None
        if queue.is_full:
            queue_scores = queue.tensor() @ self.student.prototypes.weight.detach().t()
        rows = teacher_scores.reshape(-1, teacher_scores.shape[-1])
        return swav_codes(rows, queue_scores, self.config.epsilon, int(self.config.sinkhorn_iterations),
                          self.config.process_group)

    def losses(self, batch: Mapping[str, Any], step: int = 0) -> dict[str, Tensor]:
        self.check_batch(batch)
        c = self.config
        n_global = int(c.global_crops)
        raw = check_multi_crop_views(batch["crops"], batch["small_crops"], n_global)
        b = raw[0].shape[0]
        boxes = self._check_boxes(batch["crop_boxes"], b, len(raw))
        views = [self.normalize(v) for v in raw]
        grids = [self.student.backbone.grid(v) for v in views]
        with torch.no_grad():
            teacher_embeddings, teacher_scores = self.teacher(views[:n_global])
        _, student_scores = self.student(views)
        masks = None if c.loss_mask == "all" else self.foreground(views[:n_global])
        if masks is not None and c.loss_mask == "bg":
            masks = [~m for m in masks]
        codes = []
        for g in range(n_global):
            q = self.codes(teacher_scores[g], g).to(teacher_scores[g].dtype)
            codes.append(_grid_map(q.view(b, -1, q.shape[-1]), grids[g]))
            # Leopart stores up to 10 B of the crop's (foreground) teacher embeddings per step.
            rows = teacher_embeddings[g].reshape(-1, teacher_embeddings[g].shape[-1])
            if masks is not None:
                rows = rows[masks[g].flatten()]
            keep = min(int(c.queue_rows_per_image) * b, int(c.queue_length))
            self.queues[g].stage(rows[torch.randperm(rows.shape[0], device=rows.device)[:keep]])
        in_global, in_crop = crop_intersections(boxes.float(), [tuple(v.shape[-2:]) for v in views], n_global)
        scale = float(self.patch_size)
        loss = leopart_spatial_loss(codes, [_grid_map(s, grid) for s, grid in zip(student_scores, grids)],
                                    in_global / scale, in_crop / scale, c.temperature, masks,
                                    int(c.roi_align_size))
        return {"spatial": loss, "loss": loss}

    @torch.no_grad()
    def after_step(self, step: int, max_steps: int) -> None:
        """The teacher's EMA update at ``step`` of ``max_steps``, the queues'
        commit, and both networks' prototypes re-normalised."""
        self.teacher.update(self.student, step, max_steps)
        for queue in self.queues:
            queue.commit()
        self.student.prototypes.normalize_()
        self.teacher.module.prototypes.normalize_()

    def example_batch(self, batch_size: int = 2, image_size: int = 32,
                      generator: torch.Generator | None = None) -> dict[str, Any]:
        """``crops``: 2 global crops of ``image_size``, ``small_crops``: 2 local
        ones of half of it (Leopart's scales and minimum intersection),
        ``crop_boxes`` their boxes, and the synthetic ``images`` they are cut from."""
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        images = synthetic_tagged_batch(batch_size, image_size, 4, g)["images"]
        return multi_crop_batch(images, int(self.config.global_crops), 2, self.config.global_crops_scale,
                                self.config.local_crops_scale, g, self.config.min_intersection)
