"""SimCLR (Chen et al., ICML 2020): NT-Xent on hand-computed cases and
against a loop oracle of the paper's eq. 1, its symmetry, gradcheck, bad
inputs, and the method (two views in one batch, the loss falls)."""

from __future__ import annotations

import math

import pytest
import torch
from method_support import one_thread, train_losses  # noqa: F401  (autouse fixture)

import python_models
from python_models import Method
from python_models.augment.views import check_views, random_views
from python_models.losses.contrastive import nt_xent
from python_models.methods.simclr import SimCLR


def _model(**overrides) -> SimCLR:
    torch.manual_seed(0)
    return SimCLR(backbone="tiny", **{"num_classes": 16, "hidden_dim": 32, **overrides})


def _oracle(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> float:
    """Eq. 1 of the paper, anchor by anchor, in plain Python floats."""
    rows = [r.tolist() for r in torch.cat([z1, z2]).double()]
    n2 = len(rows)
    n = n2 // 2

    def cos(a, b):
        dot = sum(x * y for x, y in zip(a, b))
        return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))

    total = 0.0
    for i in range(n2):
        j = (i + n) % n2
        denominator = sum(math.exp(cos(rows[i], rows[k]) / tau) for k in range(n2) if k != i)
        total += -math.log(math.exp(cos(rows[i], rows[j]) / tau) / denominator)
    return total / n2


def test_defaults_are_the_published_values():
    # google-research/simclr README ImageNet command ("the default hyperparameters in our paper"):
    # --temperature=0.1, ResNet-50, projection 2048-2048-128 (model_util.projection_head, head_proj_dim 128).
    assert SimCLR.DEFAULTS == dict(num_classes=128, backbone="resnet50", hidden_dim=2048, proj_layers=2,
                                   temperature=0.1)
    assert SimCLR.KERNELS == () and SimCLR.KEY == "simclr"
    assert python_models.METHODS["simclr"] is SimCLR and issubclass(SimCLR, Method)


@pytest.mark.parametrize("n", [1, 2, 5])
@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0])
def test_identical_embeddings_give_log_2n_minus_1(n, tau):
    z = torch.randn(1, 7, generator=torch.Generator().manual_seed(n)).expand(n, 7)
    torch.testing.assert_close(nt_xent(z, z.clone(), tau), torch.tensor(math.log(2 * n - 1)))


def test_hand_computed_two_orthogonal_pairs():
    # Rows (1,0), (0,1), (1,0), (0,1): every anchor has its positive at cosine 1 and two negatives
    # at cosine 0 (its own row excluded), so each term is -log(e^(1/t) / (e^(1/t) + 2)).
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    for tau in (1.0, 0.5):
        expected = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + 2))
        assert math.isclose(float(nt_xent(z, z.clone(), tau)), expected, rel_tol=1e-6)


def test_matches_the_loop_oracle_and_is_symmetric_and_scale_invariant():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(4, 6, generator=g, dtype=torch.float64), torch.randn(4, 6, generator=g, dtype=torch.float64)
    for tau in (0.1, 0.5):
        value = nt_xent(z1, z2, tau)
        assert math.isclose(float(value), _oracle(z1, z2, tau), rel_tol=1e-10)
        torch.testing.assert_close(nt_xent(z2, z1, tau), value)  # symmetric in the views
        torch.testing.assert_close(nt_xent(3.0 * z1, 0.5 * z2, tau), value)  # cosine similarity
    # Aligned views score lower than random ones.
    assert float(nt_xent(z1, z1 + 0.01 * z2, 0.1)) < float(nt_xent(z1, z2, 0.1))


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(1)
    z1 = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: nt_xent(a, b, 0.5), (z1, z2))


def test_bad_inputs_are_named():
    z = torch.randn(4, 8)
    with pytest.raises(ValueError, match="z2"):
        nt_xent(z, torch.randn(3, 8), 0.1)  # views of unequal batch
    with pytest.raises(ValueError, match="z2"):
        nt_xent(z, torch.randn(4, 7), 0.1)  # wrong embedding size
    with pytest.raises(ValueError, match="z1"):
        nt_xent(z[0], z[0], 0.1)
    with pytest.raises(TypeError, match="z1"):
        nt_xent(z.long(), z.long(), 0.1)
    with pytest.raises(TypeError, match="z2"):
        nt_xent(z, z.double(), 0.1)
    bad = z.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="z2"):
        nt_xent(z, bad, 0.1)
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(z, z, 0.0)


def test_views_are_checked_by_name():
    model = _model()
    batch = model.example_batch()
    v1, v2 = batch["views"]
    with pytest.raises(ValueError, match="views"):
        model.losses({"views": [v1, v2[:1]]})  # unequal batch
    with pytest.raises(ValueError, match="views"):
        model.losses({"views": [v1]})
    with pytest.raises(ValueError, match="views"):
        model.losses({"views": v1})  # one view, not a list of two
    with pytest.raises(TypeError, match="views"):
        model.losses({"views": "v1"})
    bad = v2.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"views\[1\]"):
        model.losses({"views": [v1, bad]})
    with pytest.raises(ValueError, match="batch lacks"):
        model.losses({"images": v1})
    assert [v.shape for v in check_views(torch.stack([v1, v2]))] == [v1.shape, v2.shape]


def test_losses_compose_the_encoder_and_nt_xent():
    model = _model().eval()
    batch = model.example_batch(generator=torch.Generator().manual_seed(3))
    v1, v2 = batch["views"]
    assert not torch.equal(v1, v2) and v1.shape == (2, 3, 32, 32)
    terms = model.losses(batch)
    with torch.no_grad():
        z1, z2 = model(v1), model(v2)
    torch.testing.assert_close(terms["loss"].detach(), nt_xent(z1, z2, 0.1))
    assert terms["nt_xent"] is terms["loss"]
    assert z1.shape == (2, 16) and torch.allclose(z1.norm(dim=1), torch.ones(2))
    assert model.features(v1).shape == (2, model.encoder.backbone.out_channels)


def test_projection_head_is_hidden_then_output():
    model = _model()
    linears = [m for m in model.encoder.head.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(model.encoder.backbone.out_channels, 32), (32, 16)]
    norms = [m for m in model.encoder.head.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert len(norms) == 2 and norms[0].bias is not None
    # The output BN has a scale and no shift (model_util.linear_layer: batch_norm_relu(center=False)).
    assert norms[1].weight is not None and norms[1].bias is None


def test_random_views_are_reproducible_and_in_range():
    images = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    a = random_views(images, 2, torch.Generator().manual_seed(1))
    b = random_views(images, 2, torch.Generator().manual_seed(1))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(float(v.min()) >= 0 and float(v.max()) <= 1 for v in a)


def test_loss_falls_over_20_steps():
    model = _model(temperature=0.5)
    batch = model.example_batch(batch_size=4, generator=torch.Generator().manual_seed(0))
    totals = train_losses(model, batch, steps=20, lr=1e-3)
    assert all(math.isfinite(t) for t in totals)
    assert sum(totals[-5:]) / 5 < totals[0] - 0.05, totals
