"""NPID (Wu, Xiong, Yu & Lin, "Unsupervised Feature Learning via
Non-Parametric Instance Discrimination", CVPR 2018): every training image is
its own class; a memory bank holds one unit embedding per image and NCE
approximates the softmax over all of them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from python_models._checks import check_images, check_int, check_real
from python_models.heads.encoder import GlobalPoolEncoder
from python_models.losses.contrastive import nce_normalizer, npid_nce_loss
from python_models.memory import MemoryBank
from python_models.methods.base import Method, synthetic_tagged_batch
from python_models.methods.registry import register

__all__ = ["NPID", "noise_indices"]


def noise_indices(batch_size: int, num_negatives: int, data_size: int, step: int,
                  device: torch.device | str | None = None) -> Tensor:
    """NPID's noise samples: ``batch_size x num_negatives`` instance indices
    drawn uniformly (with replacement, as lemniscate's ``AliasMethod`` over
    uniform weights) from ``[0, data_size)``, by a generator seeded with
    ``step``, so a step's loss is reproducible (on the CPU, then moved).

    >>> noise_indices(2, 3, 10, step=5).shape, bool(noise_indices(2, 3, 10, 5).equal(noise_indices(2, 3, 10, 5)))
    (torch.Size([2, 3]), True)
    """
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    num_negatives = check_int(num_negatives, "num_negatives", minimum=1)
    data_size = check_int(data_size, "data_size", minimum=1)
    step = check_int(step, "step", minimum=0)
    g = torch.Generator().manual_seed(step)
    return torch.randint(0, data_size, (batch_size, num_negatives), generator=g).to(device)


@register
class NPID(Method):
    """NPID: instance discrimination with a memory bank and NCE.

    Network (zhirongw/lemniscate.pytorch ``models/resnet.py``): a ResNet
    (output stride 32) → global average pooling → a linear layer to
    ``embedding_dim`` = 128 → L2 normalisation: v.

    Loss: with the bank rows w (:class:`python_models.memory.MemoryBank`,
    one unit row per training image, ``num_classes`` rows),
    ``P(i|v) ∝ exp(w_iᵀ v / τ)``, τ 0.07, approximated by NCE
    (:func:`python_models.losses.npid_nce_loss`) against K = 4096 noise
    rows drawn uniformly (:func:`noise_indices`, seeded by ``step``) and the
    constant ``Z`` (:func:`python_models.losses.nce_normalizer`), estimated
    on the first batch and kept fixed, as ``lib/NCEAverage.py`` does
    (buffer ``normalizer``, -1 until set; the estimate staged in
    ``losses()`` is stored in ``after_step``).

    Bank update: ``w ← m w + (1 − m) v`` then renormalised, m = 0.5, for the
    batch's own indices, in ``after_step`` (lemniscate does it in the
    backward, after the loss read the old rows: the same order). The paper's
    text and implementations put m on different sides of the average; at
    m = 0.5 the two agree, so the default does not depend on it.

    Defaults (lemniscate ``main.py`` argparse and the paper, section 3):
        num_classes 1281167 — the number of instances, i.e. bank rows (each
        image is a class; ImageNet-1k's training set; set it to the size of
        your dataset); backbone ResNet-50 (the paper's ImageNet table; the
        script's ``--arch`` default is resnet18); embedding_dim 128
        (``--low-dim``); temperature 0.07 (``--nce-t``); num_negatives 4096
        (``--nce-k``); momentum 0.5 (``--nce-m``).
    Training recipe, outside this module (``main.py``): SGD lr 0.03,
    momentum 0.9, weight decay 1e-4, batch 256, 200 epochs, lr × 0.1 at
    epochs 120 and 160.

    Batch: ``images`` and ``indices`` (each image's index in the dataset,
    the bank row it owns).
    Kernels: none.
    """

    KEY = "npid"
    PAPER = ("Wu, Xiong, Yu & Lin, Unsupervised Feature Learning via Non-Parametric Instance Discrimination, "
             "CVPR 2018")
    DEFAULTS = dict(
        num_classes=1281167,
        backbone="resnet50",
        embedding_dim=128,
        temperature=0.07,
        num_negatives=4096,
        momentum=0.5,
    )
    KERNELS = ()
    BATCH_KEYS = {
        "images": "B x 3 x H x W float RGB in [0, 1], one augmented view of each image",
        "indices": "B int64 dataset indices of the images (their memory-bank rows), in [0, num_classes)",
    }
    TINY_BACKBONE = "resnet_tiny"

    def __init__(self, **overrides: Any) -> None:
        super().__init__(**overrides)
        config = self.config
        self.data_size = check_int(config.num_classes, "num_classes", minimum=1)
        dim = check_int(config.embedding_dim, "embedding_dim", minimum=1)
        check_int(config.num_negatives, "num_negatives", minimum=1)
        check_real(config.temperature, "temperature", positive=True)
        backbone = self.build_backbone(32)
        self.encoder = GlobalPoolEncoder(backbone, nn.Linear(backbone.out_channels, dim))
        self.bank = MemoryBank(self.data_size, dim, config.momentum)
        self.register_buffer("normalizer", torch.tensor(-1.0, dtype=torch.float64))
        self._staged_normalizer: Tensor | None = None

    def features(self, images: Tensor) -> Tensor:
        """The pooled backbone features, B x C, of images in [0, 1]."""
        return self.encoder.features(self.normalize(check_images(images)))

    def forward(self, images: Tensor) -> Tensor:
        """The unit embeddings v, B x embedding_dim, of images in [0, 1]."""
        return F.normalize(self.encoder(self.normalize(check_images(images))), dim=1)

    def _check_indices(self, indices: object, batch_size: int) -> Tensor:
        if not isinstance(indices, Tensor):
            raise TypeError(f"indices must be a torch.Tensor, got {type(indices).__name__}")
        if indices.dtype.is_floating_point or indices.dtype.is_complex or indices.dtype == torch.bool:
            raise TypeError(f"indices must be an integer tensor, got dtype {indices.dtype}")
        if indices.shape != (batch_size,):
            raise ValueError(f"indices must be 1-D with one index per image ({batch_size}), "
                             f"got shape {tuple(indices.shape)}")
        if int(indices.min()) < 0 or int(indices.max()) >= self.data_size:
            raise ValueError(f"indices must be in [0, num_classes = {self.data_size}), got values in "
                             f"[{int(indices.min())}, {int(indices.max())}]")
        return indices.long()

    def losses(self, batch: Mapping[str, Any], step: int = 0) -> dict[str, Tensor]:
        self.check_batch(batch)
        images = check_images(batch["images"])
        indices = self._check_indices(batch["indices"], images.shape[0])
        config = self.config
        v = F.normalize(self.encoder(self.normalize(images)), dim=1)
        bank = self.bank.bank  # read only; moved in after_step
        noise = noise_indices(images.shape[0], config.num_negatives, self.data_size, step, bank.device)
        positives, negatives = bank[indices.to(bank.device)], bank[noise]
        if float(self.normalizer) > 0:
            z = self.normalizer
        else:  # the first step's Monte-Carlo estimate, stored in after_step
            z = nce_normalizer(v, negatives, config.temperature, self.data_size)
            if self._staged_normalizer is None:
                self._staged_normalizer = z
        loss = npid_nce_loss(v, positives, negatives, config.temperature, z, self.data_size)
        self.bank.stage(indices, v.detach())
        return {"nce": loss, "loss": loss}

    def after_step(self, step: int, max_steps: int) -> None:
        """Move the bank rows of this step's images towards their embeddings;
        fix ``Z`` after the first step."""
        self.bank.commit()
        if self._staged_normalizer is not None and float(self.normalizer) <= 0:
            self.normalizer.fill_(float(self._staged_normalizer))
        self._staged_normalizer = None

    def example_batch(self, batch_size: int = 2, image_size: int = 32,
                      generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Synthetic ``images`` and distinct ``indices`` (a random subset of
        the dataset when it has at least ``batch_size`` images)."""
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        images = synthetic_tagged_batch(batch_size, image_size, 4, g)["images"]
        if batch_size <= self.data_size:
            indices = torch.randperm(self.data_size, generator=g)[:batch_size]
        else:
            indices = torch.randint(0, self.data_size, (batch_size,), generator=g)
        return {"images": images, "indices": indices}
