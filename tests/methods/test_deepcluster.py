"""DeepCluster: defaults, PCA-whitening against a numpy oracle, k-means against
Lloyd's loop and with no empty cluster, the uniform cluster sampler, the top
layer re-initialised at epoch boundaries, bad input, a training smoke test."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from method_support import one_thread, seeded_batch, train_losses  # noqa: F401

from python_models import create
from python_models.pseudo import (
    deepcluster_labels,
    kmeans,
    pca_whiten,
    uniform_cluster_sampler,
)


def _model(**overrides):
    torch.manual_seed(0)
    return create("deepcluster", **{**dict(backbone="tiny", num_classes=3), **overrides})


def _blobs(per_blob=20, centres=((0.0, 0.0), (6.0, 0.0), (0.0, 6.0)), seed=0):
    g = torch.Generator().manual_seed(seed)
    points = [torch.tensor(c, dtype=torch.float64) + 0.3 * torch.randn(per_blob, 2, generator=g, dtype=torch.float64)
              for c in centres]
    return torch.cat(points), torch.arange(len(centres)).repeat_interleave(per_blob)


def test_defaults_are_deepclusters():
    # facebookresearch/deepcluster main.py (--k 10000, --batch 256), clustering.py (pca 256, niter 20)
    assert dict(create("deepcluster", backbone="tiny").config.__dict__) == dict(
        num_classes=10000, backbone="tiny", pca_dim=256, kmeans_iters=20, top_layer_std=0.01, reassign=1.0,
        steps_per_epoch=5005)
    from python_models.methods.deepcluster import DeepCluster
    assert DeepCluster.KERNELS == ()


def test_pca_whitening_equals_a_numpy_oracle():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 6, generator=g, dtype=torch.float64) @ torch.randn(6, 6, generator=g, dtype=torch.float64)
    ours = pca_whiten(x, 3)
    # oracle: centre, eigenvectors of the covariance, top 3, divide by sqrt(eigenvalue), L2
    a = x.numpy() - x.numpy().mean(0)
    values, vectors = np.linalg.eigh(a.T @ a / len(a))
    top = np.argsort(values)[::-1][:3]
    white = a @ vectors[:, top] / np.sqrt(values[top])
    white /= np.linalg.norm(white, axis=1, keepdims=True)
    # eigenvectors are defined up to sign: compare column by column up to it
    for j in range(3):
        column = torch.from_numpy(white[:, j])
        sign = torch.sign((ours[:, j] * column).sum())
        torch.testing.assert_close(ours[:, j], sign * column)
    torch.testing.assert_close(ours.norm(dim=1), torch.ones(50, dtype=torch.float64))
    # before the L2 step the whitened features have identity covariance
    unnormalised = torch.from_numpy(a @ vectors[:, top] / np.sqrt(values[top]))
    torch.testing.assert_close(unnormalised.T @ unnormalised / 50, torch.eye(3, dtype=torch.float64))
    assert pca_whiten(x.float(), 256).shape == (50, 6)  # dim above D keeps D directions


def _lloyd_oracle(x, init, iterations):
    """Plain Lloyd iterations from given initial centroids (numpy, squared L2, ties to the lowest index)."""
    x, c = x.numpy(), init.numpy().copy()
    for _ in range(iterations):
        labels = np.argmin(((x[:, None, :] - c[None]) ** 2).sum(-1), 1)
        c = np.stack([x[labels == j].mean(0) for j in range(len(c))])
    return torch.from_numpy(np.argmin(((x[:, None, :] - c[None]) ** 2).sum(-1), 1)), torch.from_numpy(c)


def test_kmeans_equals_lloyds_loop_and_recovers_blobs():
    x, truth = _blobs()
    for seed in range(3):  # seed 0 starts two centroids in one blob: a local minimum, still Lloyd's
        centroids, labels = kmeans(x, 3, 20, torch.Generator().manual_seed(seed))
        start = torch.randperm(60, generator=torch.Generator().manual_seed(seed))[:3]
        expected_labels, expected_centroids = _lloyd_oracle(x, x[start], 20)
        assert torch.equal(labels, expected_labels)
        torch.testing.assert_close(centroids, expected_centroids)
    # from one centroid per blob, the blobs are the clusters (up to renaming)
    seed = next(s for s in range(100)
                if truth[torch.randperm(60, generator=torch.Generator().manual_seed(s))[:3]].unique().numel() == 3)
    _, labels = kmeans(x, 3, 20, torch.Generator().manual_seed(seed))
    for blob in range(3):
        assert labels[truth == blob].unique().numel() == 1
    assert labels.unique().numel() == 3


def test_kmeans_never_leaves_a_cluster_empty():
    # six copies of one point and four others: initial centroids on two copies leave one cluster empty
    x = torch.cat([torch.zeros(6, 2), torch.tensor([[5.0, 5.0], [5.0, 6.0], [9.0, 0.0], [9.0, 1.0]])])
    seeds_with_duplicates = 0
    for seed in range(20):
        start = torch.randperm(10, generator=torch.Generator().manual_seed(seed))[:5]
        seeds_with_duplicates += int((start < 6).sum() >= 2)
        _, labels = kmeans(x, 5, 20, torch.Generator().manual_seed(seed))
        assert labels.bincount(minlength=5).min() >= 1, seed
    assert seeds_with_duplicates > 0  # the case that needs the reassignment did occur
    # and through the whole DeepCluster pipeline (PCA-whitening + L2 + k-means)
    features = torch.randn(40, 16, generator=torch.Generator().manual_seed(1))
    labels = deepcluster_labels(features, 10, 8, 20, torch.Generator().manual_seed(1))
    assert labels.bincount(minlength=10).min() >= 1 and int(labels.max()) < 10
    with pytest.raises(ValueError, match="fewer than k"):
        kmeans(x, 11)


def test_uniform_sampler_draws_every_cluster_equally():
    labels = torch.tensor([0] * 50 + [1] * 5 + [3] * 1)  # cluster 2 empty
    picked = uniform_cluster_sampler(labels, 300, torch.Generator().manual_seed(0))
    assert picked.shape == (300,) and picked.dtype == torch.int64
    counts = labels[picked].bincount(minlength=4)
    assert counts[2] == 0
    # int(300 / 3) + 1 = 101 per cluster before the cut to 300
    assert all(98 <= int(counts[c]) <= 101 for c in (0, 1, 3))
    # a cluster with more members than its share is drawn without replacement
    labels2 = torch.tensor([0] * 200 + [1] * 3)
    picked2 = uniform_cluster_sampler(labels2, 100, torch.Generator().manual_seed(1))
    big = picked2[labels2[picked2] == 0]
    assert big.unique().numel() == big.numel() >= 49
    assert uniform_cluster_sampler(labels).shape == (56,)
    with pytest.raises(ValueError, match="labels"):
        uniform_cluster_sampler(torch.zeros(3))


def test_top_layer_is_reinitialised_at_epoch_boundaries():
    model = _model(steps_per_epoch=3, num_classes=200)
    with torch.no_grad():
        model.top_layer.weight.fill_(1.0)
        model.top_layer.bias.fill_(1.0)
    for step in (0, 1):
        model.after_step(step, 10)
        assert torch.all(model.top_layer.weight == 1.0)
    model.after_step(2, 10)
    weight = model.top_layer.weight.detach()
    assert torch.all(model.top_layer.bias == 0)
    assert abs(float(weight.std()) - 0.01) < 0.001 and abs(float(weight.mean())) < 0.001


def test_losses_are_cross_entropy_on_cluster_labels():
    model = _model().eval()
    batch = seeded_batch(model)
    assert batch["labels"].dtype == torch.int64 and sorted(batch["labels"].tolist()) == [0, 1]
    expected = F.cross_entropy(model(batch["images"]), batch["labels"])
    torch.testing.assert_close(model.losses(batch)["loss"], expected)
    # cluster() is the published pipeline on the model's features
    features = model.features(batch["images"]).detach()
    assert torch.equal(model.cluster(features, 2, torch.Generator().manual_seed(4)),
                       deepcluster_labels(features, 2, 256, 20, torch.Generator().manual_seed(4)))
    with pytest.raises(ValueError, match="num_clusters"):
        model.cluster(features, 4)


def test_bad_labels_are_named():
    model = _model()
    batch = seeded_batch(model)
    with pytest.raises(ValueError, match="labels"):
        model.losses({**batch, "labels": batch["labels"][:1]})
    with pytest.raises(ValueError, match="labels"):
        model.losses({**batch, "labels": torch.tensor([0, 3])})
    with pytest.raises(TypeError, match="labels"):
        model.losses({**batch, "labels": batch["labels"].float()})
    with pytest.raises(ValueError, match="features"):
        pca_whiten(torch.zeros(3))
    with pytest.raises(ValueError, match="features"):
        kmeans(torch.full((4, 2), float("nan")), 2)


def test_loss_falls():
    model = _model()
    losses = train_losses(model, seeded_batch(model), steps=20, lr=1e-3)
    assert losses[-1] < 0.5 * losses[0]
