"""MoCo (He, Fan, Wu, Xie & Girshick, "Momentum Contrast for Unsupervised
Visual Representation Learning", CVPR 2020) and MoCo v2 (Chen, Fan,
Girshick & He, "Improved Baselines with Momentum Contrastive Learning",
arXiv 2003.04297): a query encoder trained with InfoNCE against the key of
the same image from a momentum encoder and a FIFO queue of earlier keys."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from python_models._checks import check_images, check_int, check_real
from python_models.augment.views import check_views, two_view_batch
from python_models.heads import ProjectionMLP
from python_models.heads.encoder import GlobalPoolEncoder
from python_models.losses.contrastive import info_nce
from python_models.memory import EMATeacher, Queue
from python_models.methods.base import Method
from python_models.methods.registry import register

__all__ = ["MoCo"]

_TEMPERATURE = {1: 0.07, 2: 0.2}  # main_moco.py --moco-t default; v2's README command --moco-t 0.2


@register
class MoCo(Method):
    """MoCo v1 / v2: InfoNCE of queries against momentum keys and a queue.

    Network (facebookresearch/moco ``moco/builder.py``): the query encoder
    is a ResNet-50 (output stride 32) → global average pooling → a linear
    layer to ``num_classes`` = 128 (v1: ``base_encoder(num_classes=dim)``),
    or, in v2 (``mlp=True``), a 2048 → 2048 → 128 MLP with ReLU and no batch
    norm (:class:`python_models.heads.ProjectionMLP`). The key encoder is a
    copy (:class:`python_models.memory.EMATeacher`, constant momentum): no
    gradient ever reaches it; after every optimizer step
    ``θ_k ← m θ_k + (1 − m) θ_q``, m = 0.999.

    Loss (:func:`python_models.losses.info_nce`): logits
    ``[q·k⁺, q·queue] / τ`` with q, k L2-normalised, cross-entropy with the
    positive; the queue (:class:`python_models.memory.Queue`, K = 65536
    random unit rows at the start) receives this step's keys, FIFO.

    When state moves: MoCo updates the key encoder at the start of each
    forward, just before computing the keys, and enqueues the keys after the
    loss. Here the update runs in ``after_step`` of the previous step, after
    its optimizer step, from the same query weights; at step 0 MoCo's update
    is a no-op (the copy equals the query encoder), so the keys of every step
    come from the same key weights as in MoCo. The keys staged in
    ``losses()`` are written to the queue in ``after_step`` (the same queue
    MoCo reads, since it enqueues after computing the logits).
    Differences: ``EMATeacher`` also averages the BatchNorm running
    statistics of the key encoder from the query encoder (MoCo lets the key
    encoder's own forward move them); in training both normalise keys with
    the batch's statistics, so the keys are the same.

    Shuffling BN (MoCo's ``_batch_shuffle_ddp``: keys computed on a batch
    shuffled across GPUs, so BatchNorm cannot leak which key matches a
    query) needs several processes; it is not done in a single process.

    Defaults (``main_moco.py`` argparse and the README's commands):
        num_classes 128 (``--moco-dim``: the embedding size; MoCo has no
        classes); backbone ResNet-50; version 1; queue_size 65536
        (``--moco-k``; must be divisible by the batch size, MoCo's
        assertion); momentum 0.999 (``--moco-m``); temperature None → 0.07 in
        v1 (``--moco-t``), 0.2 in v2 (README: ``--moco-t 0.2``); mlp None →
        False in v1, True in v2 (``--mlp``); hidden_dim 2048 (the MLP's
        hidden layer, ``dim_mlp`` = the backbone's width).
    Training recipe, outside this module: SGD lr 0.03 (batch 256), momentum
    0.9, weight decay 1e-4, 200 epochs; v1 divides the lr by 10 at epochs
    120 and 160, v2 uses a cosine schedule (``--cos``) and the stronger
    augmentation (``--aug-plus``: colour jitter p 0.8, grayscale p 0.2,
    Gaussian blur p 0.5).

    Batch: ``views`` [query view, key view] of the same B images.
    Kernels: none.
    """

    KEY = "moco"
    PAPER = ("He et al., Momentum Contrast for Unsupervised Visual Representation Learning, CVPR 2020; "
             "Chen et al., Improved Baselines with Momentum Contrastive Learning (MoCo v2), arXiv 2003.04297")
    DEFAULTS = dict(
        num_classes=128,
        backbone="resnet50",
        version=1,
        queue_size=65536,
        momentum=0.999,
        temperature=None,
        mlp=None,
        hidden_dim=2048,
    )
    KERNELS = ()
    BATCH_KEYS = {
        "views": "2 x B x 3 x H x W float RGB in [0, 1] (or a list of two B x 3 x H x W): the query view "
                 "and the key view of the same B images",
    }
    TINY_BACKBONE = "resnet_tiny"

    def __init__(self, **overrides: Any) -> None:
        super().__init__(**overrides)
        config = self.config
        if config.version not in _TEMPERATURE:
            raise ValueError(f"version must be 1 or 2, got {config.version!r}")
        if config.temperature is None:
            config.temperature = _TEMPERATURE[config.version]
        if config.mlp is None:
            config.mlp = config.version == 2
        check_real(config.temperature, "temperature", positive=True)
        dim = check_int(config.num_classes, "num_classes", minimum=1)
        size = check_int(config.queue_size, "queue_size", minimum=1)
        backbone = self.build_backbone(32)
        width = backbone.out_channels
        if config.mlp:
            head: nn.Module = ProjectionMLP(width, check_int(config.hidden_dim, "hidden_dim", minimum=1), dim, 2,
                                            False)
        else:
            head = nn.Linear(width, dim)
        self.encoder = GlobalPoolEncoder(backbone, head)
        self.key_encoder = EMATeacher(self.encoder, config.momentum, config.momentum)
        self.queue = Queue(size, dim, init="unit")

    def features(self, images: Tensor) -> Tensor:
        """The query encoder's pooled backbone features, B x C, of images in [0, 1]."""
        return self.encoder.features(self.normalize(check_images(images)))

    def forward(self, images: Tensor) -> Tensor:
        """The L2-normalised queries, B x num_classes, of images in [0, 1]."""
        return F.normalize(self.encoder(self.normalize(check_images(images))), dim=1)

    def keys(self, images: Tensor) -> Tensor:
        """The L2-normalised keys of the momentum encoder (no gradient), B x num_classes."""
        return F.normalize(self.key_encoder(self.normalize(check_images(images))), dim=1)

    def losses(self, batch: Mapping[str, Any], step: int = 0) -> dict[str, Tensor]:
        self.check_batch(batch)
        query_view, key_view = check_views(batch["views"])
        size = self.queue.size
        if size % query_view.shape[0]:
            raise ValueError(f"queue_size {size} must be divisible by the batch size of views "
                             f"({query_view.shape[0]}), as MoCo asserts")
        q = F.normalize(self.encoder(self.normalize(query_view)), dim=1)
        k = F.normalize(self.key_encoder(self.normalize(key_view)), dim=1)
        loss = info_nce(q, k, self.queue.tensor(), self.config.temperature)
        self.queue.stage(k)
        return {"info_nce": loss, "loss": loss}

    def after_step(self, step: int, max_steps: int) -> None:
        """Momentum update of the key encoder from the (just updated) query
        encoder, then the staged keys enqueued."""
        self.key_encoder.update(self.encoder, step, max_steps)
        self.queue.commit()

    def example_batch(self, batch_size: int = 2, image_size: int = 32,
                      generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """``views``: two random views of synthetic images (also given as
        ``images``, which the loss does not read)."""
        return two_view_batch(batch_size, image_size, generator)
