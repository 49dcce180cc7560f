"""SwAV (Caron et al., "Unsupervised Learning of Visual Features by
Contrasting Cluster Assignments", NeurIPS 2020): multi-crop views, codes of
the high-resolution crops by Sinkhorn-Knopp over the batch (and an optional
queue), each predicted from every other crop."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from python_models._checks import check_images
from python_models.augment.crops import random_resized_crops
from python_models.heads import ProjectionMLP, Prototypes
from python_models.losses.swav import swapped_prediction, swav_codes
from python_models.memory import Queue
from python_models.methods.base import Method, synthetic_tagged_batch
from python_models.methods.registry import register

__all__ = ["SwAV"]


@register
class SwAV(Method):
    """SwAV: swapped prediction of Sinkhorn codes between multi-crop views.

    Network (swav ``src/resnet50.py``): ResNet-50 (stride 32, global average
    pooling), projection head Linear(2048, 2048) - BatchNorm - ReLU -
    Linear(2048, 128), L2-normalised embeddings ``z``, prototypes ``C``: a
    linear layer without bias of ``num_classes`` (3000) rows, re-normalised
    to unit rows at construction and in every ``after_step`` (SwAV does it
    at the start of each iteration, before the forward: the same sequence).

    Loss (``main_swav.py`` ``train``): for each crop ``s`` in
    ``crops_for_assign``, codes ``q_s = sinkhorn_knopp(z_s^T C, epsilon,
    sinkhorn_iterations)`` (:func:`python_models.losses.swav_codes`, the
    queue's scores prepended when the queue is in use), then
    :func:`python_models.losses.swapped_prediction` with τ ``temperature``:
    ``-Σ_{v≠s} mean_b Σ_k q_s log softmax(z_v^T C / τ) / (V - 1)`` averaged
    over the assigned crops. ``V`` is the number of crops in the batch.

    Prototype freezing: SwAV drops the prototypes' gradients (``p.grad =
    None``) for the first ``freeze_prototypes_niters`` iterations. Here the
    buffer ``iteration`` (optimizer steps done, set in ``after_step``) decides
    it and, while it is below the setting, ``losses()`` scores the crops with
    a *detached* copy of the prototypes: their ``.grad`` stays None, so the
    optimizer skips them (no weight decay either), exactly as in SwAV, and
    ``losses()`` itself changes no state.

    Queue (``--queue_length``, 0 by default; 3840 in the 800-epoch recipe):
    one :class:`python_models.memory.Queue` of embeddings per assigned crop,
    ``queue_length // world size`` rows per process (SwAV's per-GPU queue).
    From step ``epoch_queue_starts * steps_per_epoch`` on, ``losses()`` stages
    the batch's detached embeddings and ``after_step`` commits them; once a
    queue is full its rows are scored with the *current* prototypes and
    prepended to the batch's scores before the Sinkhorn step, of which the
    last B rows (the batch's) are kept.

    Multi-crop (``MultiCropDataset``): ``nmb_crops`` (2, 6) crops of
    ``size_crops`` (224, 96) pixels, RandomResizedCrop scales
    ``min_scale_crops`` (0.14, 0.05) to ``max_scale_crops`` (1, 0.14).
    Crops of one resolution go through the backbone together.

    Distributed: ``process_group`` (None: this process alone) is handed to
    ``sinkhorn_knopp``, so the codes balance prototypes over the global batch
    as SwAV's ``distributed_sinkhorn`` does.

    Defaults (facebookresearch/swav ``main_swav.py`` arguments; the
    multi-crop and queue values of the README's 800-epoch ResNet-50 run):
        num_classes 3000 (``--nmb_prototypes``: the prototype count);
        backbone ResNet-50 (``--arch``); hidden_mlp 2048, feat_dim 128;
        nmb_crops (2, 6), size_crops (224, 96), min_scale_crops (0.14, 0.05),
        max_scale_crops (1.0, 0.14) (README); crops_for_assign (0, 1);
        temperature 0.1; epsilon 0.05; sinkhorn_iterations 3;
        freeze_prototypes_niters 313; queue_length 0 (``main_swav.py``;
        the README's queue run uses 3840); epoch_queue_starts 15;
        steps_per_epoch 312 (ImageNet's 1281167 images over 64 GPUs x 64
        per GPU with ``drop_last``: the unit of ``epoch_queue_starts``);
        process_group None.
        Optimiser (not a method setting): LARS-SGD, base lr 4.8, cosine to 0,
        10 warm-up epochs, weight decay 1e-6, batch 64 per GPU x 64.

    Kernels: ``sinkhorn_knopp`` in ``losses()``.

    Batch: ``crops`` and ``small_crops`` (each V x B x 3 x H x W, or a list
    of B x 3 x H x W tensors; ``small_crops`` may be empty), RGB in [0, 1].
    """

    KEY = "swav"
    PAPER = ("Caron et al., Unsupervised Learning of Visual Features by Contrasting Cluster Assignments, "
             "NeurIPS 2020")
    DEFAULTS = dict(
        num_classes=3000,
        backbone="resnet50",
        hidden_mlp=2048,
        feat_dim=128,
        nmb_crops=(2, 6),
        size_crops=(224, 96),
        min_scale_crops=(0.14, 0.05),
        max_scale_crops=(1.0, 0.14),
        crops_for_assign=(0, 1),
        temperature=0.1,
        epsilon=0.05,
        sinkhorn_iterations=3,
        freeze_prototypes_niters=313,
        queue_length=0,
        epoch_queue_starts=15,
        steps_per_epoch=312,
        process_group=None,
    )
    KERNELS = ("sinkhorn_knopp",)
    BATCH_KEYS = {
        "crops": "V x B x 3 x H x W float RGB in [0, 1] high-resolution crops (or a list of B x 3 x H x W)",
        "small_crops": "V' x B x 3 x h x w low-resolution crops (or a list; may be empty)",
    }
    TINY_BACKBONE = "resnet_tiny"

    def __init__(self, **overrides: Any) -> None:
        super().__init__(**overrides)
        config = self.config
        if len(config.nmb_crops) != len(config.size_crops):
            raise ValueError(f"nmb_crops {config.nmb_crops} and size_crops {config.size_crops} differ in length")
        if not config.crops_for_assign or any(int(c) < 0 or int(c) >= sum(config.nmb_crops)
                                              for c in config.crops_for_assign):
            raise ValueError(f"crops_for_assign {config.crops_for_assign} must index the {sum(config.nmb_crops)} crops")
        self.backbone = self.build_backbone(32)
        self.projection = ProjectionMLP(self.backbone.out_channels, int(config.hidden_mlp), int(config.feat_dim),
                                        2, True)
        self.prototypes = Prototypes(int(config.feat_dim), int(config.num_classes))  # unit rows
        self.register_buffer("iteration", torch.zeros((), dtype=torch.int64))
        self.queues = None
        if int(config.queue_length) > 0:
            world = 1
            if config.process_group is not None:
                import torch.distributed as dist

                world = dist.get_world_size(config.process_group)
            length = int(config.queue_length) // world
            self.queues = nn.ModuleList(Queue(length, int(config.feat_dim)) for _ in config.crops_for_assign)

    # -- network ---------------------------------------------------------------------------------

    def embed(self, crops: Sequence[Tensor]) -> Tensor:
        """L2-normalised embeddings (V B) x feat_dim of crops in [0, 1], crop
        after crop; consecutive crops of one resolution share a backbone pass."""
        pooled, start = [], 0
        while start < len(crops):
            end = start
            while end < len(crops) and crops[end].shape[-2:] == crops[start].shape[-2:]:
                end += 1
            features = self.backbone(self.normalize(torch.cat(list(crops[start:end]))))
            pooled.append(features.mean((2, 3)))
            start = end
        return F.normalize(self.projection(torch.cat(pooled)), dim=1)

    def prototype_scores(self, embeddings: Tensor, detach_prototypes: bool = False) -> Tensor:
        """``z^T C``: N x num_classes scores of N x feat_dim embeddings."""
        if not isinstance(embeddings, Tensor) or not embeddings.dtype.is_floating_point:
            raise TypeError("embeddings must be a float tensor N x feat_dim")
        if embeddings.dim() != 2 or embeddings.shape[1] != int(self.config.feat_dim):
            raise ValueError(f"embeddings must be N x feat_dim = N x {self.config.feat_dim}, "
                             f"got shape {tuple(embeddings.shape)}")
        weight = self.prototypes.weight
        return F.linear(embeddings, weight.detach() if detach_prototypes else weight)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``(embeddings B x feat_dim, prototype scores B x num_classes)`` of images in [0, 1]."""
        images = check_images(images)
        z = self.embed([images])
        return z, self.prototype_scores(z)

    # -- assignment ------------------------------------------------------------------------------

    @property
    def prototypes_frozen(self) -> bool:
        """Whether the prototypes get no gradient at this step (SwAV's first 313 iterations)."""
        return int(self.iteration) < int(self.config.freeze_prototypes_niters)

    def _queue_started(self) -> bool:
        start = int(self.config.epoch_queue_starts) * int(self.config.steps_per_epoch)
        return self.queues is not None and int(self.iteration) >= start

    @torch.no_grad()
    def assign(self, scores: Tensor, queue_index: int | None = None) -> Tensor:
        """SwAV's codes of one crop's B x K scores: the full queue ``queue_index``
        (if given, started and full) scored by the current prototypes and
        prepended, Sinkhorn-Knopp over all rows (across ``process_group``),
        the batch's B rows returned."""
        queue_scores = None
        if queue_index is not None and self._queue_started() and self.queues[queue_index].is_full:
            rows = self.queues[queue_index].tensor().to(self.prototypes.weight.dtype)
            queue_scores = self.prototype_scores(rows)
        return swav_codes(scores, queue_scores, self.config.epsilon, self.config.sinkhorn_iterations,
                          self.config.process_group)

    def _crops(self, batch: Mapping[str, Any]) -> list[Tensor]:
        crops: list[Tensor] = []
        for key in ("crops", "small_crops"):
            value = batch[key]
            if isinstance(value, Tensor):
                if value.dim() != 5 or (value.shape[0] and value.shape[2] != 3):
                    raise ValueError(f"{key} must be V x B x 3 x H x W (or a list of B x 3 x H x W), "
                                     f"got shape {tuple(value.shape)}")
                value = list(value.unbind(0))
            elif not isinstance(value, Sequence):
                raise TypeError(f"{key} must be a V x B x 3 x H x W tensor or a list of crops, "
                                f"got {type(value).__name__}")
            for v, crop in enumerate(value):
                crop = check_images(crop, f"{key}[{v}]")
                if crops and crop.shape[0] != crops[0].shape[0]:
                    raise ValueError(f"{key}[{v}] has batch {crop.shape[0]} but the first crop has "
                                     f"{crops[0].shape[0]}: every view needs the same batch")
                crops.append(crop)
        if not crops or len(crops) < 2:
            raise ValueError("crops and small_crops together must hold at least 2 crops")
        bad = [c for c in self.config.crops_for_assign if int(c) >= len(crops)]
        if bad:
            raise ValueError(f"crops_for_assign {tuple(self.config.crops_for_assign)} needs more than the "
                             f"{len(crops)} crops of the batch")
        return crops

    def losses(self, batch: Mapping[str, Any], step: int = 0) -> dict[str, Tensor]:
        self.check_batch(batch)
        crops = self._crops(batch)
        b = crops[0].shape[0]
        z = self.embed(crops)
        scores = self.prototype_scores(z, detach_prototypes=self.prototypes_frozen).split(b)
        embeddings = z.detach().split(b)
        codes = {}
        for i, crop in enumerate(int(c) for c in self.config.crops_for_assign):
            codes[crop] = self.assign(scores[crop].detach(), i if self.queues is not None else None)
            if self._queue_started():
                self.queues[i].stage(embeddings[crop])
        loss = swapped_prediction(list(scores), codes, self.config.temperature)
        return {"swapped_prediction": loss, "loss": loss}

    @torch.no_grad()
    def after_step(self, step: int, max_steps: int) -> None:
        """Write the staged queue rows, count the step and re-normalise the prototypes."""
        if self.queues is not None:
            for queue in self.queues:
                queue.commit()
        self.iteration.fill_(int(step) + 1)
        self.prototypes.normalize_()

    # -- data ------------------------------------------------------------------------------------

    def example_batch(self, batch_size: int = 2, image_size: int = 32,
                      generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Synthetic ``images`` (B x 3 x S x S, not read by ``losses``) and their
        multi-crop views: ``nmb_crops[0]`` crops of S pixels in ``crops`` and
        the other resolutions, scaled like ``size_crops`` (96 / 224 of S), in
        ``small_crops``, with SwAV's RandomResizedCrop scales and random flips."""
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        images = synthetic_tagged_batch(batch_size, image_size, 20, g)["images"]
        config = self.config
        groups = []
        for count, size, low, high in zip(config.nmb_crops, config.size_crops, config.min_scale_crops,
                                          config.max_scale_crops):
            side = max(4, round(image_size * size / config.size_crops[0]))
            groups.append(torch.stack([random_resized_crops(images, side, (low, high), g) for _ in range(count)]))
        small = torch.cat(groups[1:]) if len(groups) > 1 and len({g.shape for g in groups[1:]}) == 1 else (
            groups[1] if len(groups) > 1 else images.new_zeros(0, batch_size, 3, 4, 4))
        return {"images": images, "crops": groups[0], "small_crops": small}

