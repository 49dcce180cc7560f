"""Heads of the self-supervised methods: the projection MLP (SimCLR, MoCo v2,
SwAV), SwAV's prototypes and DINO's head.

Module names follow the published code, so their checkpoints load:
``ProjectionMLP`` is a ``Sequential`` (SwAV's ``projection_head.0`` ...,
DINO's ``head.mlp.0`` ...), ``Prototypes`` has SwAV's ``prototypes.weight``,
``DINOHead`` has DINO's ``mlp.*`` and ``last_layer.weight_g`` /
``last_layer.weight_v``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from python_models._checks import check_int

__all__ = ["DINOHead", "ProjectionMLP", "Prototypes", "WeightNormLinear"]

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


class ProjectionMLP(nn.Sequential):
    """``n_layers`` linear layers, each but the last followed by [BatchNorm] and
    the activation: SimCLR / SwAV ``Linear-BN-ReLU-Linear`` (n_layers 2,
    batch_norm True), MoCo v2 ``Linear-ReLU-Linear`` (batch_norm False),
    DINO's ``Linear-GELU-Linear-GELU-Linear`` (n_layers 3, activation "gelu").

    Args:
        in_dim, hidden_dim, out_dim: the sizes (hidden_dim unused with one layer).
        n_layers: linear layers, >= 1.
        batch_norm: BatchNorm1d after every hidden linear layer.
        activation: "relu" or "gelu".
        last_batch_norm: a BatchNorm1d (without affine) after the last layer too
            (MoCo v3 / SimCLR v2 style; off by default).

    Input ... x in_dim (any leading dimensions, e.g. B x N patch tokens:
    BatchNorm then normalises over all of them), output ... x out_dim.

    >>> ProjectionMLP(8, 16, 4)(torch.randn(3, 8)).shape
    torch.Size([3, 4])
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, n_layers: int = 2, batch_norm: bool = True,
                 *, activation: str = "relu", last_batch_norm: bool = False) -> None:
        in_dim = check_int(in_dim, "in_dim", minimum=1)
        out_dim = check_int(out_dim, "out_dim", minimum=1)
        n_layers = check_int(n_layers, "n_layers", minimum=1)
        hidden_dim = check_int(hidden_dim, "hidden_dim", minimum=1)
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(n_layers - 1):
            layers.append(nn.Linear(width, hidden_dim))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(_ACTIVATIONS[activation]())
            width = hidden_dim
        layers.append(nn.Linear(width, out_dim))
        if last_batch_norm:
            layers.append(nn.BatchNorm1d(out_dim, affine=False))
        super().__init__(*layers)
        self.in_dim, self.out_dim = in_dim, out_dim

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() < 1 or x.shape[-1] != self.in_dim:
            raise ValueError(f"x must be ... x in_dim = ... x {self.in_dim}, got shape {tuple(x.shape)}")
        lead = x.shape[:-1]
        return super().forward(x.reshape(-1, self.in_dim)).reshape(*lead, self.out_dim)


class Prototypes(nn.Linear):
    """SwAV's prototypes: a linear layer without bias whose ``n_prototypes``
    rows are kept unit vectors by ``normalize_()`` (SwAV re-normalises them
    before every step; a method calls it in ``after_step``). Scores are
    ``z @ weight.T``, cosine similarities for unit ``z``. Freezing them for
    the first iterations is the method's business.

    >>> p = Prototypes(4, 3)
    >>> p.normalize_().weight.norm(dim=1).allclose(torch.ones(3))
    True
    """

    def __init__(self, dim: int, n_prototypes: int) -> None:
        super().__init__(check_int(dim, "dim", minimum=1), check_int(n_prototypes, "n_prototypes", minimum=1),
                         bias=False)
        self.normalize_()

    @torch.no_grad()
    def normalize_(self) -> Prototypes:
        """Scale every row of ``weight`` to unit length, in place; returns self."""
        self.weight.copy_(F.normalize(self.weight, dim=1))
        return self


class WeightNormLinear(nn.Module):
    """A linear layer without bias with weight ``g v / |v|`` per output row
    (Salimans & Kingma 2016), with the parameter names of
    ``torch.nn.utils.weight_norm``: ``weight_g`` (out x 1), ``weight_v``
    (out x in).

    Args:
        in_features, out_features: the sizes.
        fix_norm: g is set to 1 and gets no gradient (DINO's ``norm_last_layer``).
    """

    def __init__(self, in_features: int, out_features: int, fix_norm: bool = True) -> None:
        super().__init__()
        v = torch.empty(out_features, in_features)
        nn.init.kaiming_uniform_(v, a=math.sqrt(5))  # nn.Linear's initialisation, as DINO's layer
        self.weight_v = nn.Parameter(v)
        self.weight_g = nn.Parameter(torch.ones(out_features, 1), requires_grad=not fix_norm)
        self.in_features, self.out_features = in_features, out_features

    @property
    def weight(self) -> Tensor:
        return self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"fix_norm={not self.weight_g.requires_grad}")


class DINOHead(nn.Module):
    """DINO's projection head (``vision_transformer.py`` ``DINOHead``):
    ``mlp`` (n_layers linear layers, GELU, optional BatchNorm, down to
    ``bottleneck_dim``), L2 normalisation, then a weight-normalised linear
    ``last_layer`` without bias to ``out_dim``; with ``norm_last_layer`` (DINO's
    default for ViT-S) its norm ``g`` is fixed to 1. Freezing the last layer
    during the first epoch (``freeze_last_layer``) is the method's business.

    Args:
        in_dim: the backbone's output (384 for ViT-S).
        out_dim: K (65536 in DINO).
        hidden_dim, bottleneck_dim: 2048 and 256 in DINO.
        n_layers: the MLP's linear layers (3 in DINO).
        batch_norm: BatchNorm in the MLP (DINO's ``use_bn_in_head``, False).
        norm_last_layer: fix the last layer's ``weight_g`` to 1 (True in DINO).

    Input ... x in_dim, output ... x out_dim.
    """

    def __init__(self, in_dim: int, out_dim: int = 65536, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 n_layers: int = 3, batch_norm: bool = False, norm_last_layer: bool = True) -> None:
        super().__init__()
        bottleneck_dim = check_int(bottleneck_dim, "bottleneck_dim", minimum=1)
        out_dim = check_int(out_dim, "out_dim", minimum=1)
        self.mlp = ProjectionMLP(in_dim, hidden_dim, bottleneck_dim, n_layers, batch_norm, activation="gelu")
        for module in self.mlp.modules():  # DINO: truncated normal (std 0.02), zero biases
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, fix_norm=norm_last_layer)

    def forward(self, x: Tensor) -> Tensor:
        x = F.normalize(self.mlp(x), dim=-1)
        return self.last_layer(x)
