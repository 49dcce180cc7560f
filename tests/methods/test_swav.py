"""SwAV: defaults, codes against the SwAV recipe, the swapped-prediction loss
against a loop oracle, the queue re-scored by the current prototypes,
prototype normalisation and freezing, bad input, a training smoke test."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from method_support import one_thread, seeded_batch, train_losses  # noqa: F401

from python_models import create
from python_models.losses import swapped_prediction, swav_codes
from wsss_ext import reference

K = 5


def _model(**overrides):
    torch.manual_seed(0)
    settings = dict(backbone="tiny", num_classes=K, nmb_crops=(2, 2), hidden_mlp=32, feat_dim=8)
    return create("swav", **{**settings, **overrides})


def _cosine_scores(n, k, dim=16, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(n, dim, generator=g, dtype=torch.float64), dim=1)
    c = F.normalize(torch.randn(k, dim, generator=g, dtype=torch.float64), dim=1)
    return (z @ c.T).to(dtype)


def test_defaults_are_swavs():
    # facebookresearch/swav main_swav.py arguments; README 800-epoch multi-crop.
    assert dict(create("swav", backbone="tiny").config.__dict__) == dict(
        num_classes=3000, backbone="tiny", hidden_mlp=2048, feat_dim=128, nmb_crops=(2, 6),
        size_crops=(224, 96), min_scale_crops=(0.14, 0.05), max_scale_crops=(1.0, 0.14),
        crops_for_assign=(0, 1), temperature=0.1, epsilon=0.05, sinkhorn_iterations=3,
        freeze_prototypes_niters=313, queue_length=0, epoch_queue_starts=15, steps_per_epoch=312,
        process_group=None)
    from python_models.methods.swav import SwAV
    assert SwAV.DEFAULTS["backbone"] == "resnet50" and SwAV.KERNELS == ("sinkhorn_knopp",)


def test_network_shapes_and_unit_embeddings():
    model = _model().eval()
    images = seeded_batch(model)["images"]
    z, scores = model(images)
    assert z.shape == (2, 8) and scores.shape == (2, K)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(scores, z @ model.prototypes.weight.T)


def test_codes_equal_the_swav_recipe_and_are_balanced():
    scores = _cosine_scores(64, 8)
    codes = swav_codes(scores)
    torch.testing.assert_close(codes, reference.sinkhorn_swav(scores, 0.05, 3), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(codes.sum(1), torch.ones(64))
    mass = codes.sum(0) / (64 / 8)  # about B / K per prototype
    assert float(mass.min()) > 0.5 and float(mass.max()) < 1.5
    plain = torch.softmax(scores / 0.05, 1).sum(0) / (64 / 8)
    assert float((mass - 1).abs().sum()) < 0.8 * float((plain - 1).abs().sum())
    converged = swav_codes(scores, n_iters=200).sum(0) / (64 / 8)
    torch.testing.assert_close(converged, torch.ones(8), rtol=0, atol=1e-3)
    # the method's assignment is the same function with its settings
    model = _model(num_classes=8)
    torch.testing.assert_close(model.assign(scores), codes)


def test_codes_stay_finite_in_half_precision_where_the_recipe_overflows():
    scores = _cosine_scores(256, 30, seed=1)
    exact = swav_codes(scores.double())
    recipe = reference.sinkhorn_swav(scores.half(), 0.05, 3)
    assert not torch.isfinite(recipe).all()  # exp(1 / 0.05) > float16's max
    for dtype in (torch.float16, torch.bfloat16):
        ours = swav_codes(scores.to(dtype))
        assert ours.dtype == torch.float32 and torch.isfinite(ours).all()
        assert float((ours.double() - exact).abs().max()) < 0.05


def test_queue_scores_are_prepended_and_only_the_batch_rows_kept():
    scores, queued = _cosine_scores(6, K, seed=2), _cosine_scores(10, K, seed=3)
    codes = swav_codes(scores, queued)
    torch.testing.assert_close(codes, reference.sinkhorn_swav(torch.cat([queued, scores]), 0.05, 3)[-6:])
    assert (codes - swav_codes(scores)).abs().max() > 1e-3


def _loop_swapped_prediction(scores, codes, temperature):
    """Oracle: SwAV's loop over crops_for_assign and the other crops, in numpy."""
    scores = [s.detach().double().numpy() for s in scores]
    total = 0.0
    for crop, q in codes.items():
        q = q.double().numpy()
        subloss = 0.0
        for v in range(len(scores)):
            if v == crop:
                continue
            x = scores[v] / temperature
            log_p = x - x.max(1, keepdims=True) - np.log(np.exp(x - x.max(1, keepdims=True)).sum(1, keepdims=True))
            subloss -= np.mean([sum(q[b, k] * log_p[b, k] for k in range(q.shape[1])) for b in range(q.shape[0])])
        total += subloss / (len(scores) - 1)
    return total / len(codes)


def test_swapped_prediction_equals_the_loop_oracle():
    scores = [_cosine_scores(4, K, seed=s, dtype=torch.float64) for s in range(4)]
    codes = {0: swav_codes(scores[0]), 1: swav_codes(scores[1])}
    expected = _loop_swapped_prediction(scores, codes, 0.1)
    assert float(swapped_prediction(scores, codes, 0.1)) == pytest.approx(expected, rel=1e-10)
    # a sequence of codes means crops 0, 1, ...; a V x B x K tensor of scores is accepted
    assert float(swapped_prediction(torch.stack(scores), [codes[0], codes[1]], 0.1)) == pytest.approx(expected)
    # uniform predictions cost log K whatever the codes
    flat = [torch.zeros(3, K), torch.zeros(3, K)]
    assert float(swapped_prediction(flat, [torch.eye(K)[:3]], 0.1)) == pytest.approx(math.log(K))


def test_swapped_prediction_gradcheck():
    scores = [_cosine_scores(3, 4, seed=s, dtype=torch.float64).requires_grad_() for s in range(3)]
    codes = {0: swav_codes(scores[0].detach()), 2: swav_codes(scores[2].detach())}
    assert torch.autograd.gradcheck(lambda *s: swapped_prediction(list(s), codes, 0.1), tuple(scores))


def test_swapped_prediction_names_bad_input():
    a, b = torch.zeros(4, K), torch.zeros(3, K)
    with pytest.raises(ValueError, match=r"scores\[1\]"):
        swapped_prediction([a, b], [torch.zeros(4, K)])
    with pytest.raises(ValueError, match="at least 2"):
        swapped_prediction([a], [a])
    with pytest.raises(ValueError, match=r"codes\[0\]"):
        swapped_prediction([a, a], [torch.zeros(4, K + 1)])
    with pytest.raises(ValueError, match="crop 2"):
        swapped_prediction([a, a], {2: a})
    with pytest.raises(ValueError, match="temperature"):
        swapped_prediction([a, a], [a], 0.0)
    with pytest.raises(ValueError, match="queue_scores"):
        swav_codes(a, torch.zeros(2, K + 1))


def test_losses_use_the_codes_of_the_assigned_crops():
    model = _model().eval()
    batch = seeded_batch(model)
    crops = list(batch["crops"]) + list(batch["small_crops"])
    z = model.embed(crops)
    scores = (z @ model.prototypes.weight.T).split(2)
    codes = {c: reference.sinkhorn_swav(scores[c].detach(), 0.05, 3) for c in (0, 1)}
    expected = _loop_swapped_prediction(list(scores), codes, 0.1)
    assert float(model.losses(batch)["loss"].detach()) == pytest.approx(expected, rel=1e-4)


def test_prototypes_are_unit_rows_after_each_step_and_frozen_at_first():
    model = _model(freeze_prototypes_niters=2).train()
    batch = seeded_batch(model)
    torch.testing.assert_close(model.prototypes.weight.norm(dim=1), torch.ones(K))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(3):
        frozen = model.prototypes_frozen
        before = model.prototypes.weight.detach().clone()
        optimizer.zero_grad()
        model.losses(batch, step)["loss"].backward()
        assert (model.prototypes.weight.grad is None) == frozen == (step < 2)
        optimizer.step()
        assert torch.equal(model.prototypes.weight, before) == frozen
        model.after_step(step, 3)
        torch.testing.assert_close(model.prototypes.weight.norm(dim=1), torch.ones(K))
    assert int(model.iteration) == 3
    # SwAV's published count
    assert _model().prototypes_frozen and _model().config.freeze_prototypes_niters == 313


def test_queue_fills_in_after_step_only_and_is_rescored_by_the_current_prototypes():
    model = _model(queue_length=4, epoch_queue_starts=0).train()
    batch = seeded_batch(model)
    crops = list(batch["crops"]) + list(batch["small_crops"])
    for step in range(2):
        before = [q.queue.clone() for q in model.queues]
        model.losses(batch, step)
        assert all(torch.equal(q.queue, b) for q, b in zip(model.queues, before))  # staged only
        assert [q.staged for q in model.queues] == [2, 2]
        model.after_step(step, 2)
    z = model.embed(crops).detach().split(2)
    for i, crop in enumerate((0, 1)):
        assert model.queues[i].is_full
        torch.testing.assert_close(model.queues[i].tensor(), torch.cat([z[crop], z[crop]]), rtol=1e-5, atol=1e-6)
    # change the prototypes: the queue is scored with the new ones
    with torch.no_grad():
        model.prototypes.weight.copy_(F.normalize(torch.randn(K, 8, generator=torch.Generator().manual_seed(5)), dim=1))
    scores = _cosine_scores(2, K, dim=8, seed=6)
    queued = model.queues[0].tensor()
    expected = reference.sinkhorn_swav(torch.cat([queued @ model.prototypes.weight.T, scores]), 0.05, 3)[-2:]
    torch.testing.assert_close(model.assign(scores, 0), expected, rtol=1e-4, atol=1e-6)
    stale = reference.sinkhorn_swav(torch.cat([queued @ F.normalize(torch.ones(K, 8), dim=1).T, scores]), 0.05, 3)
    assert (model.assign(scores, 0) - stale[-2:]).abs().max() > 1e-3
    # before epoch_queue_starts nothing is staged
    late = _model(queue_length=4, epoch_queue_starts=15)
    late.losses(batch)
    assert [q.staged for q in late.queues] == [0, 0]


def test_bad_batches_are_named():
    model = _model()
    batch = seeded_batch(model)
    with pytest.raises(ValueError, match="same batch"):
        model.losses({**batch, "small_crops": batch["small_crops"][:, :1]})
    with pytest.raises(ValueError, match="crops"):
        model.losses({**batch, "crops": batch["crops"][0]})
    with pytest.raises(ValueError, match="at least 2 crops"):
        model.losses({"crops": batch["crops"][:1], "small_crops": batch["small_crops"][:0]})
    with pytest.raises(ValueError, match="crops_for_assign"):
        _model(crops_for_assign=(0, 3)).losses({**batch, "small_crops": batch["small_crops"][:1]})
    with pytest.raises(ValueError, match="embeddings"):
        model.prototype_scores(torch.zeros(2, 9))
    with pytest.raises(ValueError, match="batch lacks"):
        model.losses({"crops": batch["crops"]})
    with pytest.raises(ValueError, match="crops_for_assign"):
        _model(crops_for_assign=(0, 9))


def test_example_batch_is_multi_crop():
    model = _model(nmb_crops=(2, 6))
    batch = seeded_batch(model)
    assert batch["crops"].shape == (2, 2, 3, 32, 32) and batch["small_crops"].shape == (6, 2, 3, 14, 14)
    assert float(batch["crops"].min()) >= 0 and float(batch["crops"].max()) <= 1


def test_loss_falls():
    model = _model()
    losses = train_losses(model, seeded_batch(model), steps=20, lr=1e-3)
    assert losses[-1] < 0.8 * losses[0]
