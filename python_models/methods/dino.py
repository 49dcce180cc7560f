"""DINO (Caron et al., "Emerging Properties in Self-Supervised Vision
Transformers", ICCV 2021): self-distillation with no labels. A student ViT
and its EMA teacher see several crops of each image; the student predicts
the teacher's centred, sharpened output of the other global crops."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import wsss_ext
from python_models._checks import check_images
from python_models.augment.crops import (
    check_multi_crop_views,
    multi_crop_batch,
    size_groups,
)
from python_models.backbones.vit import vit_backbone
from python_models.heads import DINOHead
from python_models.losses.dino import dino_loss, dino_teacher_targets
from python_models.losses.swav import swapped_prediction
from python_models.memory import Centre
from python_models.memory.ema import ema_teacher
from python_models.methods.base import Method, synthetic_tagged_batch
from python_models.methods.registry import register

__all__ = ["DINO", "teacher_temperature_at"]

_TEACHERS = ("centering", "sinkhorn")


def teacher_temperature_at(step: int, warmup: float, final: float, warmup_steps: int) -> float:
    """DINO's teacher temperature schedule (``DINOLoss.teacher_temp_schedule``,
    per step here): ``linspace(warmup, final, warmup_steps)[step]`` during the
    warm-up, then ``final``.

    >>> teacher_temperature_at(0, 0.04, 0.07, 4), teacher_temperature_at(3, 0.04, 0.07, 4)
    (0.04, 0.07)
    """
    if step >= warmup_steps:
        return float(final)
    if warmup_steps == 1:
        return float(warmup)
    return float(warmup + (final - warmup) * step / (warmup_steps - 1))


class _DINONetwork(nn.Module):
    """Backbone + DINO head on the class token; ``frozen_last_layer`` runs the
    head's last layer with a detached weight (no gradient reaches it)."""

    def __init__(self, backbone: nn.Module, head: DINOHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def features(self, x: Tensor) -> Tensor:
        return self.backbone.tokens(x)[0]

    def forward(self, views: Sequence[Tensor], frozen_last_layer: bool = False) -> list[Tensor]:
        """Head outputs (B x K) of each of the (normalised) views."""
        cls = torch.cat([self.features(torch.cat(list(views[s:e]))) for s, e in size_groups(views)])
        z = F.normalize(self.head.mlp(cls), dim=-1)
        weight = self.head.last_layer.weight
        out = F.linear(z, weight.detach() if frozen_last_layer else weight)
        return list(out.chunk(len(views)))


@register
class DINO(Method):
    """DINO: a ViT student distilled from its EMA teacher over multi-crop views.

    Network (facebookresearch/dino ``vision_transformer.py``, ``main_dino.py``):
    ViT-S/16 (:func:`python_models.backbones.vit_small`; stochastic depth
    ``drop_path_rate`` in the student only) → class token →
    :class:`python_models.heads.DINOHead` (3-layer GELU MLP 384 → 2048 → 2048
    → 256, L2 normalisation, weight-normalised last layer to K = 65536 with its
    norm fixed, ``norm_last_layer``). The teacher is an
    :class:`python_models.memory.EMATeacher` copy of backbone and head (no
    stochastic depth, no gradient ever).

    Loss (``DINOLoss``; :func:`python_models.losses.dino_loss`): the teacher
    sees the ``global_crops`` first views, the student every view;
    ``H(softmax((g_t - c) / τ_t), softmax(g_s / τ_s))`` over every pair of
    different views, averaged. The centre c is a
    :class:`python_models.memory.Centre` (momentum 0.9) fed with the
    teacher's outputs of the step, all-reduced over ``process_group``.

    State, all moved in ``after_step(step, max_steps)`` only: the teacher
    (``EMATeacher.update``, cosine 0.996 → 1 over ``max_steps``), the centre
    (``commit``), and the buffer ``steps_done`` (= step + 1), which sets the
    teacher temperature's warm-up and the freezing of the head's last layer:
    while ``steps_done < freeze_last_layer`` the last layer's weight enters the
    loss detached, so it gets no gradient (DINO's
    ``cancel_gradients_last_layer`` sets its grad to None for the first epoch).

    Options: ``teacher="sinkhorn"`` is the paper's ablation (Table 6 / 11,
    "SK"): the teacher's targets are ``wsss_ext.sinkhorn_knopp`` codes of each
    global view's outputs over the batch (ε = the teacher temperature,
    ``sinkhorn_iterations`` 3, as SwAV) instead of centring and sharpening; the
    centre is then unused. The published code has no Sinkhorn teacher, so
    these settings are the paper's description read with SwAV's recipe
    (unverified). ``KERNELS`` stays empty because the default teacher runs
    no kernel; with the option on, ``wsss_ext::sinkhorn_codes`` runs in
    ``losses()`` (tests/methods/test_dino.py checks it).

    Batch (SwAV's keys): ``crops``, the ``global_crops`` global crops
    (G x B x 3 x H x W in [0, 1]), and ``small_crops``, the local ones
    (L x B x 3 x h x w, possibly empty); the student sees the global crops
    first, then the local ones. DINO's data pipeline makes 2 x 224 + 8 x 96
    (:func:`python_models.augment.crops.multi_crop` gives the geometric part). ``example_batch`` gives
    2 x S + 2 x S/2.

    ``forward(images)`` returns the student's class token B x D (the
    representation).

    Defaults (``main_dino.py`` argparse defaults unless noted):
        num_classes 65536 (``--out_dim``, the head's K); backbone
        "vit_small" (``--arch vit_small --patch_size 16``); drop_path_rate
        0.1; hidden_dim 2048, bottleneck_dim 256, head_layers 3
        (``DINOHead``); use_bn_in_head False; norm_last_layer True;
        momentum_teacher 0.996 (→ final_momentum_teacher 1.0, cosine);
        teacher_temperature 0.04 (``--teacher_temp``), warmup_teacher_temperature
        0.04 (``--warmup_teacher_temp``) over warmup_teacher_temperature_steps
        0 (``--warmup_teacher_temp_epochs 0``; the README's ViT-S/16 300-epoch
        recipe uses 0.07 after 30 epochs); student_temperature 0.1
        (``DINOLoss``); centre_momentum 0.9; global_crops 2, local_crops 8
        (``--local_crops_number``); global_crop_size 224, local_crop_size 96;
        global_crops_scale (0.4, 1.0), local_crops_scale (0.05, 0.4);
        freeze_last_layer 2502 steps (``--freeze_last_layer 1`` epoch = ImageNet's
        1,281,167 images // (8 GPUs x 64)); optimiser settings lr 0.0005
        (per 256 images), min_lr 1e-6, warmup_epochs 10, weight_decay 0.04 →
        weight_decay_end 0.4, clip_grad 3.0, batch_size 64 per GPU, epochs 100,
        optimizer "adamw" (for the training loop; the method does not read
        them); teacher "centering"; sinkhorn_iterations 3 (the ablation);
        process_group None (one process).

    Kernels: none by default (see ``teacher="sinkhorn"``).
    """

    KEY = "dino"
    PAPER = "Caron et al., Emerging Properties in Self-Supervised Vision Transformers, ICCV 2021"
    DEFAULTS = dict(
        num_classes=65536,
        backbone="vit_small",
        drop_path_rate=0.1,
        hidden_dim=2048,
        bottleneck_dim=256,
        head_layers=3,
        use_bn_in_head=False,
        norm_last_layer=True,
        momentum_teacher=0.996,
        final_momentum_teacher=1.0,
        teacher_temperature=0.04,
        warmup_teacher_temperature=0.04,
        warmup_teacher_temperature_steps=0,
        student_temperature=0.1,
        centre_momentum=0.9,
        global_crops=2,
        local_crops=8,
        global_crop_size=224,
        local_crop_size=96,
        global_crops_scale=(0.4, 1.0),
        local_crops_scale=(0.05, 0.4),
        freeze_last_layer=2502,
        lr=0.0005,
        min_lr=1e-6,
        warmup_epochs=10,
        weight_decay=0.04,
        weight_decay_end=0.4,
        clip_grad=3.0,
        batch_size=64,
        epochs=100,
        optimizer="adamw",
        teacher="centering",
        sinkhorn_iterations=3,
        process_group=None,
    )
    KERNELS = ()
    BATCH_KEYS = {
        "crops": "G x B x 3 x H x W float RGB in [0, 1], the global_crops global crops of the B images "
                 "(or a list of B x 3 x H x W; DINO: 2 x 224)",
        "small_crops": "L x B x 3 x h x w local crops (or a list; may be empty; DINO: 8 x 96)",
    }
    TINY_BACKBONE = "vit_tiny"

    def __init__(self, **overrides: Any) -> None:
        super().__init__(**overrides)
        config = self.config
        if config.teacher not in _TEACHERS:
            raise ValueError(f"teacher must be one of {_TEACHERS}, got {config.teacher!r}")
        backbone = vit_backbone(self, "tokens")
        head = DINOHead(backbone.out_channels, int(config.num_classes), int(config.hidden_dim),
                        int(config.bottleneck_dim), int(config.head_layers), bool(config.use_bn_in_head),
                        bool(config.norm_last_layer))
        self.student = _DINONetwork(backbone, head)
        self.teacher = ema_teacher(self.student, config)
        self.centre = Centre(int(config.num_classes), config.centre_momentum)
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.int64))

    @property
    def num_classes(self) -> int:
        return int(self.config.num_classes)

    def forward(self, images: Tensor) -> Tensor:
        """The student's class token B x D of images in [0, 1]."""
        return self.student.features(self.normalize(check_images(images)))

    def current_teacher_temperature(self) -> float:
        c = self.config
        return teacher_temperature_at(int(self.steps_done), c.warmup_teacher_temperature, c.teacher_temperature,
                                      int(c.warmup_teacher_temperature_steps))

    def teacher_targets(self, teacher_out: Sequence[Tensor]) -> list[Tensor]:
        """The distributions the student predicts: centred and sharpened
        teacher outputs, or their Sinkhorn codes (``teacher="sinkhorn"``)."""
        temperature = self.current_teacher_temperature()
        if self.config.teacher == "sinkhorn":
            return [wsss_ext.sinkhorn_knopp(t.detach(), temperature, int(self.config.sinkhorn_iterations),
                                            process_group=self.config.process_group).to(t.dtype)
                    for t in teacher_out]
        return dino_teacher_targets(teacher_out, self.centre.value, temperature)

    def losses(self, batch: Mapping[str, Any], step: int = 0) -> dict[str, Tensor]:
        self.check_batch(batch)
        n_global = int(self.config.global_crops)
        views = [self.normalize(v) for v in check_multi_crop_views(batch["crops"], batch["small_crops"], n_global)]
        frozen = int(self.steps_done) < int(self.config.freeze_last_layer)
        student_out = self.student(views, frozen_last_layer=frozen)
        teacher_out = self.teacher(views[:n_global])
        if self.config.teacher == "sinkhorn":
            loss = swapped_prediction(student_out, self.teacher_targets(teacher_out),
                                      self.config.student_temperature)
        else:
            loss = dino_loss(student_out, teacher_out, self.centre.value, self.config.student_temperature,
                             self.current_teacher_temperature())
            self.centre.stage(torch.cat(teacher_out))
        return {"dino": loss, "loss": loss}

    def after_step(self, step: int, max_steps: int) -> None:
        """EMA update of the teacher (cosine momentum at ``step`` of
        ``max_steps``), the centre's commit (all-reduced over
        ``process_group``), and ``steps_done = step + 1``."""
        self.teacher.update(self.student, step, max_steps)
        self.centre.commit(self.config.process_group)
        self.steps_done.fill_(int(step) + 1)

    def example_batch(self, batch_size: int = 2, image_size: int = 32,
                      generator: torch.Generator | None = None) -> dict[str, Any]:
        """``crops``: 2 global crops of ``image_size``, ``small_crops``: 2 local
        crops of half of it (DINO's scales), of synthetic ``images`` (not read
        by the loss), and the crops' boxes (``crop_boxes``, unused by DINO)."""
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        images = synthetic_tagged_batch(batch_size, image_size, 4, g)["images"]
        return multi_crop_batch(images, int(self.config.global_crops), 2, self.config.global_crops_scale,
                                self.config.local_crops_scale, g)
