"""SSSS's stochastic gate (Araslanov & Roth, "Single-Stage Semantic
Segmentation from Image Labels", CVPR 2020; 1-stage-wseg ``models/mods/sg.py``).

It merges deep features ``x1`` (large receptive field) with shallow ones
``x2`` (GCI output) so the decoder cannot lean on the deep features alone::

    train:  x = m * (x1 - psi * x2) / (1 - psi) + (1 - m) * x2,
            m ~ Bernoulli(1 - psi) independently per element
    eval:   x = (1 - psi) * x1 + psi * x2

(1-stage-wseg draws ``m = (1 - psi) * dropout(ones, psi)``, a Bernoulli of
mean ``1 - psi``.) The shift keeps the training expectation at the deep
features, ``E[x] = x1``; the eval value is a different mixture: the two agree
only where ``x1 == x2``. With ``psi = 0`` both are ``x1``.

Randomness comes only from an explicit integer seed (a fresh
``torch.Generator`` per call), so a training run that derives the seed from
its step (:func:`python_models.heads.derive_seed`) repeats, and no global RNG
state changes. (The generator is the tensor's device's: one seed draws
different masks on the CPU and on CUDA.)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from python_models._checks import check_int, check_maps, check_real

__all__ = ["StochasticGate", "gate_mask", "stochastic_gate"]


def _check_psi(psi: float) -> float:
    psi = check_real(psi, "psi")
    if not 0.0 <= psi < 1.0:
        raise ValueError(f"psi must be in [0, 1), got {psi}")
    return psi


def gate_mask(like: Tensor, psi: float, seed: int) -> Tensor:
    """A {0, 1} mask shaped and typed like ``like``: 1 (keep the deep feature)
    with probability ``1 - psi``, drawn from ``torch.Generator`` seeded with ``seed``.

    >>> m = gate_mask(torch.zeros(1, 1, 100, 100), 0.3, seed=0)
    >>> sorted(m.unique().tolist()), bool(torch.equal(m, gate_mask(torch.zeros(1, 1, 100, 100), 0.3, seed=0)))
    ([0.0, 1.0], True)
    """
    psi = _check_psi(psi)
    seed = check_int(seed, "seed", minimum=0)
    generator = torch.Generator(device=like.device).manual_seed(seed)
    draws = torch.rand(like.shape, generator=generator, device=like.device, dtype=torch.float32)
    return (draws >= psi).to(like.dtype)


def stochastic_gate(x1: Tensor, x2: Tensor, psi: float = 0.3, mask: Tensor | None = None) -> Tensor:
    """The gate's formula: ``mask`` given, the training mix
    ``m (x1 - psi x2) / (1 - psi) + (1 - m) x2``; ``mask=None``, the eval mix
    ``(1 - psi) x1 + psi x2``.

    Args:
        x1: B x K x h x w deep features. x2: shallow features, same shape.
        psi: the share of shallow features (0.3 in the paper), in [0, 1).
        mask: {0, 1} tensor of x1's shape (:func:`gate_mask`), or None.

    Returns:
        B x K x h x w.

    >>> x1, x2 = torch.full((1, 1, 1, 2), 2.0), torch.full((1, 1, 1, 2), 5.0)
    >>> stochastic_gate(x1, x2, 0.5).flatten().tolist()
    [3.5, 3.5]
    >>> stochastic_gate(x1, x2, 0.5, mask=torch.tensor([[[[1.0, 0.0]]]])).flatten().tolist()
    [-1.0, 5.0]
    """
    x1, x2 = check_maps(x1, "x1"), check_maps(x2, "x2")
    psi = _check_psi(psi)
    if x1.shape != x2.shape:
        raise ValueError(f"x1 and x2 must have the same shape, got {tuple(x1.shape)} and {tuple(x2.shape)}")
    if mask is None:
        return (1.0 - psi) * x1 + psi * x2
    if mask.shape != x1.shape:
        raise ValueError(f"mask must have x1's shape {tuple(x1.shape)}, got {tuple(mask.shape)}")
    mask = mask.to(x1.dtype)
    return mask * (x1 - psi * x2) / (1.0 - psi) + (1.0 - mask) * x2


class StochasticGate(nn.Module):
    """:func:`stochastic_gate` as a module: the training mix in train mode
    (a fresh mask from ``seed``), the eval mix in eval mode.

    ``forward(x1, x2, seed=None)``: ``seed`` (a non-negative int) is required in
    train mode when ``psi > 0``; it is ignored in eval mode.

    >>> gate = StochasticGate(0.3).eval()
    >>> gate(torch.ones(1, 2, 3, 3), torch.zeros(1, 2, 3, 3)).unique().tolist()
    [0.699999988079071]
    """

    def __init__(self, psi: float = 0.3) -> None:
        super().__init__()
        self.psi = _check_psi(psi)

    def forward(self, x1: Tensor, x2: Tensor, seed: int | None = None) -> Tensor:
        if not self.training:
            return stochastic_gate(x1, x2, self.psi)
        if self.psi == 0.0:
            return stochastic_gate(x1, x2, 0.0, mask=torch.ones_like(x1))
        if seed is None:
            raise ValueError("seed is required in train mode (the gate draws its mask from it)")
        return stochastic_gate(x1, x2, self.psi, mask=gate_mask(x1, self.psi, seed))

    def extra_repr(self) -> str:
        return f"psi={self.psi}"
