"""NPID's memory bank (Wu et al., "Unsupervised Feature Learning via
Non-Parametric Instance Discrimination", CVPR 2018): one unit vector per
training sample, moved towards the sample's new embedding after each step."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from python_models._checks import check_int
from python_models.memory._common import check_momentum, check_rows, gather_rows

__all__ = ["MemoryBank"]


class MemoryBank(nn.Module):
    """``size`` unit vectors of ``dim`` features, indexed by sample.

    The update of a sample's row (NPID, ``lib/NCEAverage.py``) is
    ``w <- m w + (1 - m) v`` and then ``w <- w / |w|``, ``m = 0.5``
    (NPID's default; implementations disagree on which side ``m`` multiplies
    and agree at 0.5). Rows start as random unit vectors (NPID starts
    uniform in ``[-s, s]``, ``s = 1 / sqrt(dim / 3)``; normalising it makes
    every row a unit vector from the start, as the NCE scores assume).

    Args:
        size: the number of samples (rows).
        dim: the embedding size (128 in NPID).
        momentum: ``m`` in [0, 1].
        generator: for the initial rows.

    Buffer (in the state dict): ``bank`` (size x dim).

    >>> bank = MemoryBank(3, 2, momentum=0.5)
    >>> bank.bank[:] = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    >>> bank.stage(torch.tensor([0]), torch.tensor([[0.0, 1.0]])); bank.commit()
    >>> [round(v, 4) for v in bank.tensor()[0].tolist()]
    [0.7071, 0.7071]
    """

    def __init__(self, size: int, dim: int, momentum: float = 0.5, *,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.size = check_int(size, "size", minimum=1)
        self.dim = check_int(dim, "dim", minimum=1)
        self.momentum = check_momentum(momentum)
        stdv = 1.0 / (self.dim / 3) ** 0.5
        rows = torch.rand(self.size, self.dim, generator=generator).mul_(2 * stdv).sub_(stdv)
        self.register_buffer("bank", F.normalize(rows, dim=1))
        self._staged: list[tuple[Tensor, Tensor]] = []

    def tensor(self) -> Tensor:
        """The current rows, size x dim (a copy)."""
        return self.bank.clone()

    def stage(self, indices: Tensor, values: Tensor) -> None:
        """Keep the new embeddings ``values`` (N x dim, detached) of the samples
        ``indices`` (N integers in [0, size)) for the next ``commit``."""
        if not isinstance(indices, Tensor):
            raise TypeError(f"indices must be a torch.Tensor, got {type(indices).__name__}")
        if indices.dtype.is_floating_point or indices.dtype.is_complex or indices.dtype == torch.bool:
            raise TypeError(f"indices must be an integer tensor, got dtype {indices.dtype}")
        if indices.dim() != 1:
            raise ValueError(f"indices must be 1-D (N), got shape {tuple(indices.shape)}")
        values = check_rows(values, self.dim, "values")
        if values.shape[0] != indices.shape[0]:
            raise ValueError(f"values has {values.shape[0]} rows but indices has {indices.shape[0]}")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.size):
            raise ValueError(f"indices must be in [0, {self.size}), got values in "
                             f"[{int(indices.min())}, {int(indices.max())}]")
        self._staged.append((indices.detach().to(torch.int64), values.detach()))

    def clear_stage(self) -> None:
        """Drop the staged updates."""
        self._staged = []

    @torch.no_grad()
    def commit(self, process_group=None) -> None:
        """Apply every staged update, in the order staged (a sample staged twice
        is moved twice), then clear the stage. With ``process_group`` the
        updates of all its processes are applied, in rank order, on every
        process, so the banks stay equal."""
        device, dtype = self.bank.device, self.bank.dtype
        if self._staged:
            indices = torch.cat([i.to(device) for i, _ in self._staged])
            values = torch.cat([v.to(device=device, dtype=dtype) for _, v in self._staged])
        else:
            indices = torch.zeros(0, dtype=torch.int64, device=device)
            values = self.bank.new_zeros(0, self.dim)
        self._staged = []
        if process_group is not None:
            indices = gather_rows(indices[:, None], process_group)[:, 0]
            values = gather_rows(values, process_group)
        if indices.numel() == 0:
            return
        m = self.momentum
        if torch.unique(indices).numel() == indices.numel():
            rows = F.normalize(self.bank[indices] * m + values * (1 - m), dim=1)
            self.bank.index_copy_(0, indices, rows)
            return
        for index, value in zip(indices.tolist(), values):  # repeated samples: one after the other
            self.bank[index] = F.normalize(self.bank[index] * m + value * (1 - m), dim=0)

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}, momentum={self.momentum}"
