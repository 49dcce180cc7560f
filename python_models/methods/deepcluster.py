"""DeepCluster (Caron, Bojanowski, Joulin & Douze, "Deep Clustering for
Unsupervised Learning of Visual Features", ECCV 2018): alternate k-means on
the network's features and classification of the cluster labels."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from python_models._checks import check_images
from python_models.methods.base import Method, synthetic_tagged_batch
from python_models.methods.registry import register
from python_models.pseudo.clustering import deepcluster_labels, uniform_cluster_sampler

__all__ = ["DeepCluster"]


@register
class DeepCluster(Method):
    """DeepCluster: pseudo-labels from k-means on PCA-whitened features, a
    freshly initialised classifier trained on them, every epoch.

    Network: a backbone with global average pooling (the clustered features,
    :meth:`features`) and ``top_layer``, a linear classifier over the
    ``num_classes`` (k) clusters, initialised N(0, 0.01) with zero bias
    (``main.py``). DeepCluster's AlexNet / VGG-16 with a Sobel input and an
    fc6-fc7 MLP are not among python_models' backbones: this uses a ResNet-50
    and clusters its pooled features (the published recipe otherwise).

    Clustering (``clustering.py`` ``Kmeans.cluster``), per epoch over the
    data set's features (:meth:`cluster`, eval mode): PCA to ``pca_dim`` 256
    with whitening, L2 normalisation, k-means with ``num_classes`` clusters
    and ``kmeans_iters`` 20 iterations
    (:func:`python_models.pseudo.deepcluster_labels`; a torch k-means, no
    cluster left empty, where DeepCluster uses faiss). The epoch's loader
    draws every non-empty cluster equally
    (:func:`python_models.pseudo.uniform_cluster_sampler`, ``UnifLabelSampler``,
    ``reassign`` x N samples; :meth:`epoch_indices`).

    Loss: cross-entropy of ``top_layer(features)`` against the batch's cluster
    ``labels``. The top layer is re-initialised N(0, 0.01) at every epoch
    boundary, in ``after_step`` after each ``steps_per_epoch``-th step (the
    new clusters' classifier starts from scratch, as ``main.py`` rebuilds it
    after each clustering; the optimiser's state for it should be reset too).

    Defaults (facebookresearch/deepcluster ``main.py``, ``main.sh``,
    ``clustering.py``):
        num_classes 10000 (``--k``: the cluster count); backbone ResNet-50
        (the paper: AlexNet, VGG-16); pca_dim 256; kmeans_iters 20;
        top_layer_std 0.01; reassign 1.0 (epochs' worth of samples per
        clustering); steps_per_epoch 5005 (ImageNet's 1281167 images in
        batches of 256, ``--batch``).
        Optimiser (not a method setting): SGD lr 0.05, momentum 0.9,
        weight decay 1e-5, 200 epochs.

    Kernels: none (k-means is outside wsss_ext's six kernels).
    """

    KEY = "deepcluster"
    PAPER = ("Caron, Bojanowski, Joulin & Douze, Deep Clustering for Unsupervised Learning of Visual "
             "Features, ECCV 2018")
    DEFAULTS = dict(
        num_classes=10000,
        backbone="resnet50",
        pca_dim=256,
        kmeans_iters=20,
        top_layer_std=0.01,
        reassign=1.0,
        steps_per_epoch=5005,
    )
    KERNELS = ()
    BATCH_KEYS = {
        "images": "B x 3 x H x W float RGB in [0, 1]",
        "labels": "B int64 cluster labels in [0, num_classes) from cluster()",
    }
    TINY_BACKBONE = "resnet_tiny"

    def __init__(self, **overrides: Any) -> None:
        super().__init__(**overrides)
        if int(self.config.num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.config.num_classes}")
        self.backbone = self.build_backbone(32)
        self.top_layer = nn.Linear(self.backbone.out_channels, int(self.config.num_classes))
        self.reset_top_layer()

    @torch.no_grad()
    def reset_top_layer(self) -> None:
        """``top_layer`` weights N(0, top_layer_std), bias 0 (``main.py``)."""
        self.top_layer.weight.normal_(0.0, float(self.config.top_layer_std))
        self.top_layer.bias.zero_()

    def features(self, images: Tensor) -> Tensor:
        """Pooled backbone features B x D of images in [0, 1] (what k-means clusters)."""
        return self.backbone(self.normalize(check_images(images))).mean((2, 3))

    def forward(self, images: Tensor) -> Tensor:
        """Cluster logits B x num_classes of images in [0, 1]."""
        return self.top_layer(self.features(images))

    @torch.no_grad()
    def cluster(self, features: Tensor, num_clusters: int | None = None,
                generator: torch.Generator | None = None) -> Tensor:
        """N int64 cluster labels of N x D features (``features`` of the data
        set, taken in eval mode): PCA-whitening, L2, k-means. ``num_clusters``
        defaults to ``num_classes``."""
        k = int(self.config.num_classes) if num_clusters is None else int(num_clusters)
        if k > int(self.config.num_classes):
            raise ValueError(f"num_clusters {k} exceeds the top layer's {self.config.num_classes} classes")
        return deepcluster_labels(features, k, self.config.pca_dim, self.config.kmeans_iters, generator)

    def epoch_indices(self, labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The epoch's sample order: ``reassign`` x N indices, every non-empty cluster equally often."""
        return uniform_cluster_sampler(labels, max(1, int(float(self.config.reassign) * labels.numel())), generator)

    def losses(self, batch: Mapping[str, Any], step: int = 0) -> dict[str, Tensor]:
        self.check_batch(batch)
        images = check_images(batch["images"])
        labels = batch["labels"]
        if not isinstance(labels, Tensor) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise TypeError("labels must be an int64 tensor of B cluster labels")
        if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(f"labels must be B = {images.shape[0]} cluster labels, got shape {tuple(labels.shape)}")
        if int(labels.min()) < 0 or int(labels.max()) >= int(self.config.num_classes):
            raise ValueError(f"labels must be cluster indices in [0, {self.config.num_classes})")
        loss = F.cross_entropy(self(images), labels.long())
        return {"cross_entropy": loss, "loss": loss}

    def after_step(self, step: int, max_steps: int) -> None:
        """Re-initialise the top layer at each epoch boundary (every ``steps_per_epoch`` steps)."""
        if (int(step) + 1) % int(self.config.steps_per_epoch) == 0:
            self.reset_top_layer()

    def example_batch(self, batch_size: int = 2, image_size: int = 32,
                      generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Synthetic ``images`` and their ``labels`` from :meth:`cluster` on the
        batch's own features (eval mode, ``min(num_classes, B)`` clusters)."""
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        images = synthetic_tagged_batch(batch_size, image_size, 20, g)["images"]
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                features = self.features(images)
        finally:
            self.train(was_training)
        labels = self.cluster(features, min(int(self.config.num_classes), batch_size), g)
        return {"images": images, "labels": labels}
