"""MoCo v1/v2 (He et al., CVPR 2020; Chen et al., 2020): InfoNCE by hand and
against a loop oracle, gradcheck, the key encoder (never a gradient, momentum
update in after_step), the FIFO queue (changes only in after_step), bad
inputs and the loss falling."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from method_support import one_thread, train_losses  # noqa: F401  (autouse fixture)

import python_models
from python_models import Method
from python_models.losses.contrastive import info_nce
from python_models.methods.moco import MoCo


def _model(**overrides) -> MoCo:
    torch.manual_seed(0)
    return MoCo(backbone="tiny", **{"num_classes": 8, "queue_size": 4, "hidden_dim": 32, **overrides})


def _oracle(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, tau: float) -> float:
    """Eq. 1 of MoCo in plain Python: -log exp(q.k+/t) / (exp(q.k+/t) + sum_j exp(q.n_j/t)), averaged."""
    def unit(row):
        norm = math.sqrt(sum(x * x for x in row))
        return [x / norm for x in row]

    negatives = [unit(r) for r in queue.double().tolist()]
    total = 0.0
    for qi, ki in zip(q.double().tolist(), k.double().tolist()):
        qi, ki = unit(qi), unit(ki)
        positive = math.exp(sum(a * b for a, b in zip(qi, ki)) / tau)
        negative = sum(math.exp(sum(a * b for a, b in zip(qi, n)) / tau) for n in negatives)
        total += -math.log(positive / (positive + negative))
    return total / q.shape[0]


def test_defaults_are_the_published_values():
    # facebookresearch/moco main_moco.py: --moco-dim 128, --moco-k 65536, --moco-m 0.999, --moco-t 0.07;
    # v2 (README): --mlp --moco-t 0.2; the MLP's hidden layer is the backbone width (2048).
    assert MoCo.DEFAULTS == dict(num_classes=128, backbone="resnet50", version=1, queue_size=65536,
                                 momentum=0.999, temperature=None, mlp=None, hidden_dim=2048)
    assert MoCo.KERNELS == () and python_models.METHODS["moco"] is MoCo and issubclass(MoCo, Method)
    v1, v2 = _model(), _model(version=2)
    assert (v1.config.temperature, v1.config.mlp) == (0.07, False)
    assert (v2.config.temperature, v2.config.mlp) == (0.2, True)
    assert isinstance(v1.encoder.head, torch.nn.Linear)
    linears = [m for m in v2.encoder.head.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(v2.encoder.backbone.out_channels, 32), (32, 8)]
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in v2.encoder.head.modules())  # MoCo v2: no BN
    with pytest.raises(ValueError, match="version"):
        _model(version=3)


def test_info_nce_by_hand():
    # q = k = (1, 0); negatives (0, 1) and (-1, 0): logits [1, 0, -1] / t, target 0.
    q, k = torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 0.0]])
    queue = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    for tau in (1.0, 0.5):
        logits = [1 / tau, 0.0, -1 / tau]
        expected = -logits[0] + math.log(sum(math.exp(x) for x in logits))
        assert math.isclose(float(info_nce(q, k, queue, tau)), expected, rel_tol=1e-6)
    # An empty queue: only the positive, loss 0.
    assert float(info_nce(q, k, queue[:0], 0.07)) == 0.0


def test_info_nce_matches_the_loop_oracle_and_gradcheck():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(3, 5, generator=g, dtype=torch.float64), torch.randn(3, 5, generator=g, dtype=torch.float64)
    queue = F.normalize(torch.randn(6, 5, generator=g, dtype=torch.float64), dim=1)
    for tau in (0.07, 0.2):
        assert math.isclose(float(info_nce(q, k, queue, tau)), _oracle(q, k, queue, tau), rel_tol=1e-10)
    q.requires_grad_(True)
    k.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: info_nce(a, b, queue, 0.2), (q, k))
    # The queue is used detached.
    held = queue.clone().requires_grad_(True)
    info_nce(q, k, held, 0.2).backward()
    assert held.grad is None


def test_info_nce_bad_inputs_are_named():
    q = torch.randn(2, 4)
    with pytest.raises(ValueError, match="k"):
        info_nce(q, torch.randn(3, 4), torch.randn(5, 4), 0.07)
    with pytest.raises(ValueError, match="queue"):
        info_nce(q, q, torch.randn(5, 3), 0.07)  # wrong embedding size
    with pytest.raises(ValueError, match="queue"):
        info_nce(q, q, torch.randn(5), 0.07)
    with pytest.raises(TypeError, match="q"):
        info_nce(q.int(), q.int(), torch.randn(5, 4), 0.07)
    with pytest.raises(ValueError, match="temperature"):
        info_nce(q, q, torch.randn(5, 4), -1.0)


def test_key_encoder_starts_as_a_copy_and_never_gets_a_gradient():
    model = _model().train()
    for (name, pq), (_, pk) in zip(model.encoder.named_parameters(), model.key_encoder.module.named_parameters()):
        assert torch.equal(pq, pk), name
        assert not pk.requires_grad
    model.losses(model.example_batch())["loss"].backward()
    assert all(p.grad is None for p in model.key_encoder.parameters())
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.encoder.parameters())


def test_key_encoder_momentum_update_in_after_step():
    model = _model(momentum=0.9).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model.losses(model.example_batch())["loss"].backward()
    key_before = [p.detach().clone() for p in model.key_encoder.module.parameters()]
    optimizer.step()
    # The optimizer moved the query encoder only.
    assert all(torch.equal(a, b) for a, b in zip(key_before, model.key_encoder.module.parameters()))
    model.after_step(0, 10)
    for before, pq, pk in zip(key_before, model.encoder.parameters(), model.key_encoder.module.parameters()):
        torch.testing.assert_close(pk, 0.9 * before + 0.1 * pq.detach())
    assert not torch.equal(key_before[0], next(model.key_encoder.module.parameters()))


def test_queue_is_fifo_and_changes_only_in_after_step():
    model = _model(queue_size=4).train()
    initial = model.queue.tensor()
    torch.testing.assert_close(initial.norm(dim=1), torch.ones(4))  # normalised at init
    batches = [model.example_batch(generator=torch.Generator().manual_seed(s)) for s in range(3)]
    written, previous = [], initial
    for step, batch in enumerate(batches):
        with torch.no_grad():
            keys = model.keys(batch["views"][1])  # what losses() stages (train mode: batch statistics)
            model.losses(batch, step)
        assert torch.equal(model.queue.tensor(), previous)  # losses() writes nothing
        model.after_step(step, 3)
        after = previous = model.queue.tensor()
        written.append(keys)
        if step == 0:
            torch.testing.assert_close(after[:2], keys)
            torch.testing.assert_close(after[2:], initial[2:])
        if step == 1:
            torch.testing.assert_close(after, torch.cat([written[0], written[1]]))
        if step == 2:  # the oldest rows (step 0's) were overwritten
            torch.testing.assert_close(after, torch.cat([written[2], written[1]]))
    assert int(model.queue.ptr) == 2


def test_the_logits_use_the_queue_before_this_step_keys():
    model = _model(queue_size=4).eval()
    batch = model.example_batch(generator=torch.Generator().manual_seed(5))
    q_view, k_view = batch["views"]
    with torch.no_grad():
        expected = info_nce(model(q_view), model.keys(k_view), model.queue.tensor(), 0.07)
        torch.testing.assert_close(model.losses(batch)["loss"], expected)


def test_views_and_queue_size_are_checked():
    model = _model(queue_size=4)
    v1, v2 = model.example_batch(batch_size=2)["views"]
    with pytest.raises(ValueError, match="views"):
        model.losses({"views": [v1, v2[:1]]})
    with pytest.raises(ValueError, match="views"):
        model.losses({"views": [v1, v2, v1]})
    three = model.example_batch(batch_size=3)
    with pytest.raises(ValueError, match="divisible"):
        model.losses(three)
    with pytest.raises(ValueError, match="batch lacks"):
        model.losses({"images": v1})


def test_loss_falls_over_20_steps():
    model = _model(queue_size=4, momentum=0.99, temperature=0.2)
    batch = model.example_batch(batch_size=4, generator=torch.Generator().manual_seed(0))
    totals = train_losses(model, batch, steps=20, lr=1e-3)
    assert all(math.isfinite(t) for t in totals)
    assert sum(totals[-5:]) / 5 < totals[0] - 0.05, totals
