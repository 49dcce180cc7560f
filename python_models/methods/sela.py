"""SeLa (Asano, Rupprecht & Vedaldi, "Self-labelling via simultaneous
clustering and representation learning", ICLR 2020): a network with several
classification heads trained with cross-entropy on pseudo-labels that a
Sinkhorn-Knopp step keeps balanced over the clusters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from python_models._checks import check_images
from python_models.methods.base import Method, synthetic_tagged_batch
from python_models.methods.registry import register
from python_models.pseudo.clustering import sela_labels

__all__ = ["SeLa"]


@register
class SeLa(Method):
    """SeLa: simultaneous clustering (balanced Sinkhorn labels) and
    representation learning (cross-entropy on them).

    Network (self-label ``models/resnetv2.py``): a ResNet-50 (stride 32,
    global average pooling) and ``heads`` linear heads (with bias) of
    ``num_classes`` clusters each on the pooled features; ``forward`` returns
    their logits, heads x B x K.

    Labels (``sinkhornknopp.py`` ``cpu_sk`` / ``optimize_L_sk``): for each
    head, P = softmax of its logits over the *whole data set*, Sinkhorn-Knopp
    on ``P^lambda`` and the argmax of the plan, i.e.
    :func:`python_models.pseudo.sela_labels` (``sinkhorn_knopp(log P,
    epsilon=1/lambda, tol)`` then argmax). :meth:`self_label` does this on
    the log-probabilities a user collected over the data set (SeLa repeats it
    ``nopts`` times, at epochs spaced quadratically: :meth:`label_steps`).
    SeLa starts from a random balanced labelling: :meth:`initial_labels`.

    Loss (``main.py`` ``optimize_epoch``): the mean over heads of
    ``CrossEntropy(logits_h, labels_h)`` against the batch's ``labels`` (B x
    heads int64, or B for one head), from the last :meth:`self_label`. A batch
    without ``labels`` is labelled on the spot by :meth:`self_label` over its
    own (detached) log-probabilities: an online variant, and what
    ``example_batch`` exercises (so ``sinkhorn_knopp`` runs inside
    ``losses()``); SeLa's published procedure passes dataset-wide labels.

    Defaults (yukimasano/self-label ``main.py`` arguments and
    ``scripts/resnet.sh``):
        num_classes 3000 (``--ncl``, clusters per head); backbone ResNet-50
        (``ARCH=resnetv2``; AlexNet in ``scripts/alexnet.sh``); heads 10
        (``hc=10`` in both scripts, "SeLa [3k x 10]"; ``main.py``'s default
        is 1); lamb 25 (``--lamb``); sinkhorn_tol 1e-5 (our stopping rule, see
        :func:`python_models.pseudo.sela_labels`; SeLa's is ``sum |c / c_new
        - 1| < 0.1`` every 10 iterations); sinkhorn_max_iters 1000; nopts 100
        (``--nopts``); epochs 400 (script); process_group None.
        Optimiser (not a method setting): SGD, lr 0.05, momentum 0.9,
        weight decay 1e-5, batch 256, lr x 0.1 every 150 epochs.

    Kernels: ``sinkhorn_knopp`` in ``losses()`` when the batch has no
    ``labels``, and in :meth:`self_label`.
    """

    KEY = "sela"
    PAPER = ("Asano, Rupprecht & Vedaldi, Self-labelling via simultaneous clustering and representation "
             "learning, ICLR 2020")
    DEFAULTS = dict(
        num_classes=3000,
        backbone="resnet50",
        heads=10,
        lamb=25.0,
        sinkhorn_tol=1e-5,
        sinkhorn_max_iters=1000,
        nopts=100,
        epochs=400,
        process_group=None,
    )
    KERNELS = ("sinkhorn_knopp",)
    BATCH_KEYS = {
        "images": "B x 3 x H x W float RGB in [0, 1]; optional 'labels': B x heads int64 cluster "
                  "labels from self_label (without them the batch is labelled on the spot)",
    }
    TINY_BACKBONE = "resnet_tiny"

    def __init__(self, **overrides: Any) -> None:
        super().__init__(**overrides)
        if int(self.config.heads) < 1 or int(self.config.num_classes) < 1:
            raise ValueError(f"heads and num_classes must be >= 1, got {self.config.heads}, {self.config.num_classes}")
        self.backbone = self.build_backbone(32)
        self.heads = nn.ModuleList(nn.Linear(self.backbone.out_channels, int(self.config.num_classes))
                                   for _ in range(int(self.config.heads)))

    @property
    def num_heads(self) -> int:
        return len(self.heads)

    def features(self, images: Tensor) -> Tensor:
        """Pooled backbone features B x D of images in [0, 1]."""
        return self.backbone(self.normalize(check_images(images))).mean((2, 3))

    def forward(self, images: Tensor) -> Tensor:
        """Logits heads x B x K of images in [0, 1]."""
        x = self.features(images)
        return torch.stack([head(x) for head in self.heads])

    @torch.no_grad()
    def self_label(self, log_probs: Tensor, process_group=None) -> Tensor:
        """SeLa's label step: heads x N x K (or N x K) log-probabilities of a
        data set to N x heads (or N) balanced labels, one Sinkhorn-Knopp per
        head. ``process_group`` defaults to ``config.process_group`` (each
        process passes its shard)."""
        if not isinstance(log_probs, Tensor):
            raise TypeError(f"log_probs must be a torch.Tensor, got {type(log_probs).__name__}")
        single = log_probs.dim() == 2
        stacked = log_probs[None] if single else log_probs
        if stacked.dim() != 3 or stacked.shape[-1] != int(self.config.num_classes):
            raise ValueError(f"log_probs must be heads x N x K or N x K with K = {self.config.num_classes}, "
                             f"got shape {tuple(log_probs.shape)}")
        group = self.config.process_group if process_group is None else process_group
        labels = torch.stack([
            sela_labels(head, self.config.lamb, self.config.sinkhorn_tol, self.config.sinkhorn_max_iters, group)
            for head in stacked], dim=1)
        return labels[:, 0] if single else labels

    def initial_labels(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """SeLa's start: for each head, ``i mod K`` over the N samples, shuffled. N x heads int64."""
        k = int(self.config.num_classes)
        return torch.stack([(torch.arange(n) % k)[torch.randperm(n, generator=generator)]
                            for _ in range(self.num_heads)], dim=1)

    def label_steps(self, dataset_size: int, batch_size: int) -> list[int]:
        """The steps before which SeLa re-labels (``main.py`` ``optimize_times``:
        ``nopts`` times spaced quadratically over ``epochs + 1.01`` epochs of
        ``dataset_size`` samples), ascending."""
        import numpy as np

        n = int(dataset_size)
        times = ((int(self.config.epochs) + 1.01) * n * np.linspace(0, 1, int(self.config.nopts)) ** 2).tolist()
        return sorted({int(np.ceil(t / int(batch_size))) for t in times})

    def losses(self, batch: Mapping[str, Any], step: int = 0) -> dict[str, Tensor]:
        self.check_batch(batch)
        images = check_images(batch["images"])
        logits = self(images)
        labels = batch.get("labels")
        if labels is None:
            labels = self.self_label(F.log_softmax(logits.detach().float(), dim=-1))
        labels = self._check_labels(labels, images.shape[0])
        terms = [F.cross_entropy(logits[h], labels[:, h]) for h in range(self.num_heads)]
        loss = torch.stack(terms).mean()
        return {"cross_entropy": loss, "loss": loss}

    def _check_labels(self, labels: object, batch_size: int) -> Tensor:
        if not isinstance(labels, Tensor) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise TypeError("labels must be an int64 tensor B x heads of cluster indices")
        if labels.dim() == 1 and self.num_heads == 1:
            labels = labels[:, None]
        if labels.dim() != 2 or tuple(labels.shape) != (batch_size, self.num_heads):
            raise ValueError(f"labels must be B x heads = {batch_size} x {self.num_heads}, "
                             f"got shape {tuple(labels.shape)}")
        labels = labels.long()
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= int(self.config.num_classes)):
            raise ValueError(f"labels must be cluster indices in [0, {self.config.num_classes})")
        return labels

    def example_batch(self, batch_size: int = 2, image_size: int = 32,
                      generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Synthetic ``images`` only: ``losses`` then labels the batch itself."""
        return {"images": synthetic_tagged_batch(batch_size, image_size, 20, generator)["images"]}
