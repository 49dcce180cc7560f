"""SeLa: defaults, balanced labels where argmax collapses, the labels against
SeLa's own scaling iteration (a numpy oracle) and wsss_ext's reference, the
loss with and without given labels, bad input, a training smoke test."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from method_support import one_thread, seeded_batch, traced_ops, train_losses  # noqa: F401

from python_models import create
from python_models.pseudo import sela_labels
from wsss_ext import reference

K = 4


def _model(**overrides):
    torch.manual_seed(0)
    return create("sela", **{**dict(backbone="tiny", num_classes=K, heads=2), **overrides})


def _degenerate_log_probs(n=300, k=3, seed=0, dtype=torch.float64):
    """Every sample prefers cluster 0: the plain argmax puts all of them there."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.zeros(k, dtype=torch.float64)
    logits[0] = 2.0
    return torch.log_softmax(logits + 0.3 * torch.randn(n, k, generator=g, dtype=torch.float64), 1).to(dtype)


def _sela_oracle(log_probs, lamb=25.0, iterations=3000):
    """SeLa's cpu_sk / optimize_L_sk in numpy (float64): P^lambda, r = (1/K) / (P c),
    c = (1/N) / (r^T P), then the argmax of diag(r) P diag(c) per sample."""
    p = np.exp(log_probs.double().numpy()).T ** lamb  # K x N
    k, n = p.shape
    r, c = np.ones((k, 1)) / k, np.ones((n, 1)) / n
    for _ in range(iterations):
        r = (1.0 / k) / (p @ c)
        c = (1.0 / n) / (r.T @ p).T
    plan = p * c.T * r
    return torch.from_numpy(np.argmax(plan, 0))


def test_defaults_are_selas():
    # yukimasano/self-label main.py and scripts/resnet.sh (hc=10, ncl=3000, lamb 25, nopts 100, 400 epochs)
    assert dict(create("sela", backbone="tiny").config.__dict__) == dict(
        num_classes=3000, backbone="tiny", heads=10, lamb=25.0, sinkhorn_tol=1e-5, sinkhorn_max_iters=1000,
        nopts=100, epochs=400, process_group=None)
    from python_models.methods.sela import SeLa
    assert SeLa.DEFAULTS["backbone"] == "resnet50" and SeLa.KERNELS == ("sinkhorn_knopp",)


def test_labels_are_balanced_where_argmax_collapses():
    log_probs = _degenerate_log_probs()
    assert log_probs.argmax(1).bincount(minlength=3).tolist() == [300, 0, 0]
    counts = sela_labels(log_probs).bincount(minlength=3)
    assert int(counts.min()) >= 95 and int(counts.max()) <= 105  # N / K = 100


def test_labels_equal_selas_iteration_and_the_reference():
    log_probs = _degenerate_log_probs(n=120, k=4, seed=1)
    ours = sela_labels(log_probs, 25.0, tol=1e-12, max_iters=5000)
    assert torch.equal(ours, _sela_oracle(log_probs))
    codes, _ = reference.sinkhorn_sela(log_probs, 1 / 25, tol=1e-10, max_iters=5000)
    assert torch.equal(ours, codes.argmax(1))
    # logits instead of log-probabilities: the same labels (rows are rescaled anyway)
    assert torch.equal(ours, sela_labels(log_probs + 3.0 * torch.arange(120.0, dtype=torch.float64)[:, None],
                                         25.0, tol=1e-12, max_iters=5000))


def test_sela_labels_stay_finite_in_float32_where_the_recipe_underflows():
    # 100 clusters and unsure samples: p ~ 1/100, so p^25 ~ 1e-50 is 0 in float32
    log_probs = torch.log_softmax(0.5 * torch.randn(400, 100, generator=torch.Generator().manual_seed(2)), 1)
    recipe, _ = reference.sinkhorn_sela(log_probs, 1 / 25, max_iters=50)
    assert not torch.isfinite(recipe).all()
    labels = sela_labels(log_probs)
    exact = sela_labels(log_probs.double())
    assert labels.dtype == torch.int64 and (labels == exact).float().mean() > 0.95
    assert int(labels.bincount(minlength=100).max()) <= 8  # N / K = 4, not collapsed


def test_self_label_runs_one_sinkhorn_per_head():
    model = _model()
    log_probs = torch.stack([_degenerate_log_probs(40, K, seed=s, dtype=torch.float32) for s in (3, 4)])
    ran, labels = traced_ops(model.self_label, log_probs)
    assert "wsss_ext::sinkhorn_codes" in ran
    assert labels.shape == (40, 2)
    for h in range(2):
        assert torch.equal(labels[:, h], sela_labels(log_probs[h], 25.0, 1e-5))
    assert model.self_label(log_probs[0]).shape == (40,)
    with pytest.raises(ValueError, match="log_probs"):
        model.self_label(torch.zeros(40, K + 1))


def test_losses_are_the_mean_cross_entropy_over_heads():
    model = _model().eval()
    images = seeded_batch(model)["images"]
    labels = torch.tensor([[0, 3], [2, 1]])
    logits = model(images)
    expected = (F.cross_entropy(logits[0], labels[:, 0]) + F.cross_entropy(logits[1], labels[:, 1])) / 2
    got = model.losses({"images": images, "labels": labels})["loss"]
    torch.testing.assert_close(got, expected)
    # without labels the batch is labelled by self_label on its own log-probabilities
    online = model.self_label(F.log_softmax(logits.detach(), -1))
    expected = (F.cross_entropy(logits[0], online[:, 0]) + F.cross_entropy(logits[1], online[:, 1])) / 2
    ran, terms = traced_ops(model.losses, {"images": images})
    torch.testing.assert_close(terms["loss"], expected)
    assert "wsss_ext::sinkhorn_codes" in ran


def test_initial_labels_and_label_schedule():
    model = _model(num_classes=3)
    labels = model.initial_labels(10, torch.Generator().manual_seed(0))
    assert labels.shape == (10, 2)
    for h in range(2):
        assert sorted(labels[:, h].bincount().tolist()) == [3, 3, 4]  # i mod K, shuffled
    steps = model.label_steps(dataset_size=1000, batch_size=100)
    # nopts = 100 times spaced quadratically over 401.01 epochs of 10 steps, from step 0
    assert steps[0] == 0 and steps == sorted(steps) and len(steps) <= 100 and steps[-1] == 4011


def test_bad_labels_are_named():
    model = _model()
    images = seeded_batch(model)["images"]
    with pytest.raises(ValueError, match="labels"):
        model.losses({"images": images, "labels": torch.zeros(2, dtype=torch.long)})  # 2 heads
    with pytest.raises(ValueError, match="labels"):
        model.losses({"images": images, "labels": torch.zeros(3, 2, dtype=torch.long)})
    with pytest.raises(TypeError, match="labels"):
        model.losses({"images": images, "labels": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match="labels"):
        model.losses({"images": images, "labels": torch.full((2, 2), K)})
    with pytest.raises(ValueError, match="images"):
        model.losses({"images": images[0]})
    with pytest.raises(ValueError, match="batch lacks"):
        model.losses({"labels": torch.zeros(2, 2, dtype=torch.long)})
    with pytest.raises(ValueError, match="log_probs"):
        sela_labels(torch.zeros(3))
    with pytest.raises(ValueError, match="lamb"):
        sela_labels(torch.zeros(3, 2), lamb=0)


def test_loss_falls():
    model = _model()
    batch = {**seeded_batch(model), "labels": torch.tensor([[0, 1], [2, 3]])}
    losses = train_losses(model, batch, steps=20, lr=1e-3)
    assert losses[-1] < 0.5 * losses[0]
