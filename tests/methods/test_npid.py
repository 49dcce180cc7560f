"""NPID (Wu et al., CVPR 2018): the NCE loss against a loop oracle of
lemniscate's criterion, the Monte-Carlo normaliser, gradcheck, the memory
bank's momentum update through after_step, noise seeded by step, bad inputs
and the loss falling."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from method_support import one_thread, train_losses  # noqa: F401  (autouse fixture)

import python_models
from python_models import Method
from python_models.losses.contrastive import nce_normalizer, npid_nce_loss
from python_models.methods.npid import NPID, noise_indices

DATA = 8


def _model(**overrides) -> NPID:
    torch.manual_seed(0)
    return NPID(backbone="tiny", **{"num_classes": DATA, "embedding_dim": 16, "num_negatives": 32, **overrides})


def _oracle(v, positives, negatives, tau, z, n) -> float:
    """lemniscate's NCECriterion on NCEAverage's outputs, in plain Python (eps 1e-7 as there)."""
    eps = 1e-7
    k = len(negatives[0])
    pn = 1.0 / n
    total = 0.0
    for vb, pb, nb in zip(v, positives, negatives):
        norm = math.sqrt(sum(x * x for x in vb))
        vb = [x / norm for x in vb]
        p_pos = math.exp(sum(a * b for a, b in zip(vb, pb)) / tau) / z
        total += math.log(p_pos / (p_pos + k * pn + eps))
        for row in nb:
            p_neg = math.exp(sum(a * b for a, b in zip(vb, row)) / tau) / z
            total += math.log(k * pn / (p_neg + k * pn + eps))
    return -total / len(v)


def _bank_case(seed=0, b=3, k=5, d=4, n=20):
    g = torch.Generator().manual_seed(seed)
    bank = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    v = torch.randn(b, d, generator=g, dtype=torch.float64)
    own = torch.randperm(n, generator=g)[:b]
    noise = torch.randint(0, n, (b, k), generator=g)
    return v, bank[own], bank[noise], n


def test_defaults_are_the_published_values():
    # lemniscate.pytorch main.py: --low-dim 128, --nce-t 0.07, --nce-k 4096, --nce-m 0.5; the bank has one
    # row per training image (ImageNet-1k: 1281167); ResNet-50 as in the paper's ImageNet results.
    assert NPID.DEFAULTS == dict(num_classes=1281167, backbone="resnet50", embedding_dim=128, temperature=0.07,
                                 num_negatives=4096, momentum=0.5)
    assert NPID.KERNELS == () and python_models.METHODS["npid"] is NPID and issubclass(NPID, Method)
    assert set(NPID.BATCH_KEYS) == {"images", "indices"}


def test_nce_loss_matches_the_loop_oracle():
    v, positives, negatives, n = _bank_case()
    for tau in (0.07, 0.5):
        z = float(nce_normalizer(v, negatives, tau, n))
        value = float(npid_nce_loss(v, positives, negatives, tau, z, n))
        expected = _oracle(v.tolist(), positives.tolist(), negatives.tolist(), tau, z, n)
        assert math.isclose(value, expected, rel_tol=1e-6), (value, expected)


def test_nce_loss_by_hand_and_the_normaliser():
    # One embedding (1, 0), its own row (1, 0), one noise row (0, 1); tau 1, n 2, Z 1:
    # P_pos = e, P_neg = 1, K P_n = 1/2: loss = -log(e / (e + 1/2)) - log((1/2) / (1 + 1/2)).
    v = torch.tensor([[1.0, 0.0]])
    loss = npid_nce_loss(v, torch.tensor([[1.0, 0.0]]), torch.tensor([[[0.0, 1.0]]]), 1.0, 1.0, 2)
    expected = -math.log(math.e / (math.e + 0.5)) - math.log(0.5 / 1.5)
    assert math.isclose(float(loss), expected, rel_tol=1e-6)
    # Z = n mean exp(w.v / tau): rows at cosine 1 and 0 with tau 1, n 10 -> 10 (e + 1) / 2.
    z = nce_normalizer(v, torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]), 1.0, 10)
    assert math.isclose(float(z), 10 * (math.e + 1) / 2, rel_tol=1e-6) and not z.requires_grad


def test_gradcheck_float64():
    v, positives, negatives, n = _bank_case(seed=1)
    v.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: npid_nce_loss(x, positives, negatives, 0.5, 3.0, n), (v,))


def test_nce_bad_inputs_are_named():
    v, positives, negatives, n = _bank_case(seed=2)
    with pytest.raises(ValueError, match="positives"):
        npid_nce_loss(v, positives[:, :3], negatives, 0.07, 1.0, n)  # wrong embedding size
    with pytest.raises(ValueError, match="negatives"):
        npid_nce_loss(v, positives, negatives[:2], 0.07, 1.0, n)
    with pytest.raises(ValueError, match="negatives"):
        npid_nce_loss(v, positives, negatives[0], 0.07, 1.0, n)
    with pytest.raises(ValueError, match="normalizer"):
        npid_nce_loss(v, positives, negatives, 0.07, 0.0, n)
    with pytest.raises(ValueError, match="data_size"):
        npid_nce_loss(v, positives, negatives, 0.07, 1.0, 0)
    with pytest.raises(TypeError, match="v"):
        npid_nce_loss(v.long(), positives, negatives, 0.07, 1.0, n)


def test_bank_moves_by_momentum_only_in_after_step():
    model = _model().train()
    batch = model.example_batch(generator=torch.Generator().manual_seed(1))
    indices = batch["indices"]
    before = model.bank.tensor()
    model.losses(batch, step=0)["loss"].backward()
    assert torch.equal(model.bank.tensor(), before) and float(model.normalizer) == -1.0  # losses() moved nothing
    with torch.no_grad():  # what losses() staged: same weights, train-mode batch statistics
        v = model(batch["images"])
    model.after_step(0, 20)
    after = model.bank.tensor()
    expected = F.normalize(0.5 * before[indices] + 0.5 * v, dim=1)
    torch.testing.assert_close(after[indices], expected)
    others = torch.ones(DATA, dtype=torch.bool)
    others[indices] = False
    assert torch.equal(after[others], before[others])
    torch.testing.assert_close(after.norm(dim=1), torch.ones(DATA, dtype=after.dtype))


def test_the_normaliser_is_fixed_after_the_first_step():
    model = _model().eval()
    batch = model.example_batch(generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        v = model(batch["images"])
        noise = model.bank.bank[noise_indices(2, 32, DATA, 0)]
        estimate = float(nce_normalizer(v, noise, 0.07, DATA))
        model.losses(batch, step=0)
    model.after_step(0, 3)
    assert math.isclose(float(model.normalizer), estimate, rel_tol=1e-5)
    with torch.no_grad():
        model.losses(batch, step=1)
    model.after_step(1, 3)
    assert math.isclose(float(model.normalizer), estimate, rel_tol=1e-5)


def test_noise_is_seeded_by_step():
    assert torch.equal(noise_indices(3, 7, 100, 4), noise_indices(3, 7, 100, 4))
    assert not torch.equal(noise_indices(3, 7, 100, 4), noise_indices(3, 7, 100, 5))
    draws = noise_indices(4, 4096, DATA, 0)
    assert int(draws.min()) == 0 and int(draws.max()) == DATA - 1  # uniform over the whole bank
    model = _model().eval()
    batch = model.example_batch()
    with torch.no_grad():
        first, again, other = (model.losses(batch, s)["loss"] for s in (3, 3, 4))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_indices_and_images_are_checked_by_name():
    model = _model()
    batch = model.example_batch()
    with pytest.raises(TypeError, match="indices"):
        model.losses({**batch, "indices": batch["indices"].float()})
    with pytest.raises(ValueError, match="indices"):
        model.losses({**batch, "indices": batch["indices"][:1]})
    with pytest.raises(ValueError, match="indices"):
        model.losses({**batch, "indices": torch.tensor([0, DATA])})
    with pytest.raises(ValueError, match="images"):
        model.losses({**batch, "images": batch["images"][0]})
    with pytest.raises(ValueError, match="batch lacks"):
        model.losses({"images": batch["images"]})


def test_loss_falls_over_20_steps():
    # tau 0.5: at 0.07 a bank of 8 rows makes each step's loss swing with which rows the noise hits.
    model = _model(temperature=0.5)
    batch = model.example_batch(batch_size=4, generator=torch.Generator().manual_seed(0))
    totals = train_losses(model, batch, steps=20, lr=1e-3)
    assert all(math.isfinite(t) for t in totals)
    assert sum(totals[-5:]) / 5 < totals[0] - 0.05, totals
