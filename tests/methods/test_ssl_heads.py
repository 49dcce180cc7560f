"""python_models.heads.ssl: the projection MLP, SwAV's prototypes and DINO's
head (weight-normalised last layer, L2-normalised bottleneck)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from python_models.heads import DINOHead, ProjectionMLP, Prototypes


def test_projection_mlp_layouts_and_shapes():
    swav = ProjectionMLP(8, 16, 4, n_layers=2, batch_norm=True)
    assert [type(m) for m in swav] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert set(swav.state_dict()) >= {"0.weight", "0.bias", "1.running_mean", "3.weight", "3.bias"}
    moco = ProjectionMLP(8, 16, 4, n_layers=2, batch_norm=False)
    assert [type(m) for m in moco] == [nn.Linear, nn.ReLU, nn.Linear]
    dino = ProjectionMLP(8, 16, 4, n_layers=3, batch_norm=False, activation="gelu")
    assert [type(m) for m in dino] == [nn.Linear, nn.GELU, nn.Linear, nn.GELU, nn.Linear]
    assert [type(m) for m in ProjectionMLP(8, 16, 4, n_layers=1)] == [nn.Linear]
    assert isinstance(ProjectionMLP(8, 16, 4, last_batch_norm=True)[-1], nn.BatchNorm1d)
    x = torch.randn(2, 8, generator=torch.Generator().manual_seed(0))
    assert swav(x).shape == (2, 4)
    # by hand for the MoCo layout
    with torch.no_grad():
        expected = moco[2](torch.relu(moco[0](x)))
    torch.testing.assert_close(moco(x), expected)


def test_projection_mlp_on_tokens_equals_flattened_rows():
    mlp = ProjectionMLP(6, 12, 3).train()
    tokens = torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(1))
    out = mlp(tokens)
    assert out.shape == (2, 5, 3)
    copy = ProjectionMLP(6, 12, 3).train()
    copy.load_state_dict(mlp.state_dict())
    copy[1].reset_running_stats()
    mlp[1].reset_running_stats()
    torch.testing.assert_close(mlp(tokens), copy(tokens.reshape(10, 6)).reshape(2, 5, 3))


def test_projection_mlp_bad_input():
    mlp = ProjectionMLP(8, 16, 4)
    with pytest.raises(ValueError, match="x"):
        mlp(torch.randn(2, 7))
    with pytest.raises(TypeError, match="x"):
        mlp([1.0] * 8)
    with pytest.raises(ValueError, match="n_layers"):
        ProjectionMLP(8, 16, 4, n_layers=0)
    with pytest.raises(ValueError, match="activation"):
        ProjectionMLP(8, 16, 4, activation="tanh")


def test_prototypes_no_bias_unit_rows_and_cosine_scores():
    protos = Prototypes(4, 5)
    assert protos.bias is None and set(protos.state_dict()) == {"weight"}
    torch.testing.assert_close(protos.weight.norm(dim=1), torch.ones(5))  # normalised at init
    with torch.no_grad():
        protos.weight.mul_(torch.arange(1.0, 6.0)[:, None])
    assert not torch.allclose(protos.weight.norm(dim=1), torch.ones(5))
    direction = protos.weight[2].detach() / protos.weight[2].norm()
    assert protos.normalize_() is protos
    torch.testing.assert_close(protos.weight.norm(dim=1), torch.ones(5))
    torch.testing.assert_close(protos.weight[2], direction)  # only rescaled
    z = F.normalize(torch.randn(3, 4, generator=torch.Generator().manual_seed(2)), dim=1)
    scores = protos(z)
    torch.testing.assert_close(scores, z @ protos.weight.T)
    assert scores.abs().max() <= 1 + 1e-6
    protos(z).sum().backward()  # normalize_ does not break the graph of a later forward
    assert protos.weight.grad is not None
    with pytest.raises(ValueError, match="n_prototypes"):
        Prototypes(4, 0)


def test_dino_head_layout_and_forward_by_hand():
    torch.manual_seed(0)
    head = DINOHead(8, out_dim=10, hidden_dim=16, bottleneck_dim=4)
    assert set(head.state_dict()) == {"mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias",
                                      "mlp.4.weight", "mlp.4.bias", "last_layer.weight_g", "last_layer.weight_v"}
    assert head.last_layer.weight_v.shape == (10, 4) and head.last_layer.weight_g.shape == (10, 1)
    assert all(float(m.bias.detach().abs().max()) == 0 for m in head.mlp if isinstance(m, nn.Linear))
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(3))
    out = head(x)
    assert out.shape == (3, 10)
    with torch.no_grad():
        h = head.mlp[4](F.gelu(head.mlp[2](F.gelu(head.mlp[0](x)))))
        h = h / h.norm(dim=1, keepdim=True)
        v = head.last_layer.weight_v
        expected = h @ (v / v.norm(dim=1, keepdim=True)).T
    torch.testing.assert_close(out, expected)
    assert out.abs().max() <= 1 + 1e-6  # unit bottleneck x unit rows: cosines
    assert head(torch.randn(2, 5, 8)).shape == (2, 5, 10)


def test_dino_head_norm_last_layer_fixes_g_to_one():
    head = DINOHead(8, out_dim=10, hidden_dim=16, bottleneck_dim=4, norm_last_layer=True)
    g = head.last_layer.weight_g
    assert not g.requires_grad and torch.equal(g, torch.ones(10, 1))
    optimizer = torch.optim.SGD([p for p in head.parameters() if p.requires_grad], lr=1.0)
    head(torch.randn(4, 8)).pow(2).sum().backward()
    assert g.grad is None and head.last_layer.weight_v.grad is not None
    optimizer.step()
    assert torch.equal(g, torch.ones(10, 1))
    torch.testing.assert_close(head.last_layer.weight.norm(dim=1), torch.ones(10))  # rows stay unit
    free = DINOHead(8, out_dim=10, hidden_dim=16, bottleneck_dim=4, norm_last_layer=False)
    assert free.last_layer.weight_g.requires_grad and torch.equal(free.last_layer.weight_g, torch.ones(10, 1))
    free(torch.randn(4, 8)).pow(2).sum().backward()
    assert free.last_layer.weight_g.grad is not None


def test_dino_head_with_batch_norm_and_bad_input():
    head = DINOHead(8, out_dim=6, hidden_dim=16, bottleneck_dim=4, batch_norm=True)
    assert [type(m) for m in head.mlp][:3] == [nn.Linear, nn.BatchNorm1d, nn.GELU]
    with pytest.raises(ValueError, match="x"):
        head(torch.randn(2, 7))
    with pytest.raises(ValueError, match="bottleneck_dim"):
        DINOHead(8, bottleneck_dim=0)
