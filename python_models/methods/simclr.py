"""SimCLR (Chen, Kornblith, Norouzi & Hinton, "A Simple Framework for
Contrastive Learning of Visual Representations", ICML 2020): two augmented
views of each image, a ResNet encoder, a projection MLP and the NT-Xent loss
between the 2N projections of a batch.

The pieces the two-view methods share live in
:mod:`python_models.augment.views` (:func:`check_views`,
:func:`random_views`, :func:`two_view_batch`) and
:mod:`python_models.heads.encoder` (:class:`GlobalPoolEncoder`)."""

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
from python_models.losses.contrastive import nt_xent
from python_models.methods.base import Method
from python_models.methods.registry import register

__all__ = ["SimCLR"]


def _scale_only_batch_norm(features: int) -> nn.BatchNorm1d:
    """BatchNorm1d with a learnable scale and no shift: SimCLR's output layer
    (``linear_layer(use_bias=False, use_bn=True)`` → ``batch_norm_relu(center=False)``)."""
    norm = nn.BatchNorm1d(features)
    norm.register_parameter("bias", None)
    return norm


@register
class SimCLR(Method):
    """SimCLR: NT-Xent between the projections of two views.

    Network (google-research/simclr ``resnet.py``, ``model_util.py``): a
    ResNet-50 (output stride 32) → global average pooling → h (2048) →
    projection MLP 2048 → 2048 → 128 (:class:`python_models.heads.ProjectionMLP`,
    ``n_layers`` 2, ``head_proj_mode`` "nonlinear": linear with bias, BN,
    ReLU, linear without bias, BN with a scale and no shift, as the first
    release's ``model_util.projection_head``) → z. The loss compares the
    L2-normalised z (``hidden_norm`` True); h is the representation kept
    for downstream tasks (``features``).

    Both views go through the encoder as one batch of 2N (so BatchNorm's
    statistics cover both, as SimCLR's concatenated batch does; its global
    BN across TPU cores is a multi-device matter, not done here).

    Loss: :func:`python_models.losses.nt_xent` (the paper's mean over the
    2N anchors; the published ``objective.py`` returns twice it).

    Defaults (the paper's ImageNet setting, README of google-research/simclr:
    "reflects the default hyperparameters in our paper"):
        num_classes 128 — the projection's output size (``head_proj_dim``;
        SimCLR has no classes); backbone ResNet-50; hidden_dim 2048 (the
        hidden layer, the backbone's width in ``model_util.projection_head``);
        proj_layers 2; temperature 0.1 (``--temperature=0.1`` at batch 4096,
        also the ``run.py`` flag default; the README's CIFAR-10 recipe, batch
        512, uses 0.5, and the paper's Table 5 / Appendix B.9 show the best
        τ depends on the batch size and epochs).
    Training recipe, outside this module: LARS, lr 0.3 × batch / 256 (4.8 at
    4096), weight decay 1e-6, 10 warm-up epochs then cosine decay, 100
    epochs (``run.py`` flags); augmentation random resized crop, flip,
    colour jitter (strength 1.0, p 0.8), grayscale (p 0.2), Gaussian blur.

    Batch: ``views``, two augmented views of the same B images.
    Kernels: none.
    """

    KEY = "simclr"
    PAPER = ("Chen, Kornblith, Norouzi & Hinton, A Simple Framework for Contrastive Learning of Visual "
             "Representations, ICML 2020")
    DEFAULTS = dict(
        num_classes=128,
        backbone="resnet50",
        hidden_dim=2048,
        proj_layers=2,
        temperature=0.1,
    )
    KERNELS = ()
    BATCH_KEYS = {
        "views": "2 x B x 3 x H x W float RGB in [0, 1] (or a list of two B x 3 x H x W): two augmentations "
                 "of the same B images",
    }
    TINY_BACKBONE = "resnet_tiny"

    def __init__(self, **overrides: Any) -> None:
        super().__init__(**overrides)
        config = self.config
        out_dim = check_int(config.num_classes, "num_classes", minimum=1)
        hidden = check_int(config.hidden_dim, "hidden_dim", minimum=1)
        layers = check_int(config.proj_layers, "proj_layers", minimum=1)
        check_real(config.temperature, "temperature", positive=True)
        backbone = self.build_backbone(32)
        head = ProjectionMLP(backbone.out_channels, hidden, out_dim, layers, True)
        head.append(_scale_only_batch_norm(out_dim))
        self.encoder = GlobalPoolEncoder(backbone, head)

    def features(self, images: Tensor) -> Tensor:
        """The representation h, B x C (pooled backbone features), of images in [0, 1]."""
        return self.encoder.features(self.normalize(check_images(images)))

    def forward(self, images: Tensor) -> Tensor:
        """The L2-normalised projections z, B x num_classes, of images in [0, 1]."""
        return F.normalize(self.encoder(self.normalize(check_images(images))), dim=1)

    def losses(self, batch: Mapping[str, Any], step: int = 0) -> dict[str, Tensor]:
        self.check_batch(batch)
        first, second = check_views(batch["views"])
        if first.shape == second.shape:
            z1, z2 = self.encoder(self.normalize(torch.cat([first, second]))).chunk(2)
        else:  # views of different sizes cannot share one batch
            z1, z2 = self.encoder(self.normalize(first)), self.encoder(self.normalize(second))
        loss = nt_xent(z1, z2, self.config.temperature)
        return {"nt_xent": loss, "loss": loss}

    def example_batch(self, batch_size: int = 2, image_size: int = 32,
                      generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """``views``: two :func:`random_views` of synthetic images (also given
        as ``images``, which the loss does not read)."""
        return two_view_batch(batch_size, image_size, generator)
