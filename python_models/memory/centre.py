"""DINO's centre (Caron et al., "Emerging Properties in Self-Supervised Vision
Transformers", ICCV 2021): a running mean of the teacher's outputs,
subtracted before the teacher's sharpened softmax to avoid collapse."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from python_models._checks import check_int
from python_models.memory._common import check_momentum, check_rows

__all__ = ["Centre"]


class Centre(nn.Module):
    """``c <- m c + (1 - m) mean(g_t)`` over the rows staged since the last
    commit (DINO ``DINOLoss.update_center``, ``m = 0.9``), the mean taken over
    the rows of every process when a process group is given.

    Args:
        dim: the teacher's output size (DINO's out_dim, 65536).
        momentum: ``m`` in [0, 1].

    Buffer (in the state dict): ``value``, 1 x dim (DINO's ``center``
    shape), starting at zero.

    >>> centre = Centre(2, momentum=0.5)
    >>> centre.stage(torch.tensor([[1.0, 2.0], [3.0, 4.0]])); centre.commit()
    >>> centre.value.tolist()
    [[1.0, 1.5]]
    """

    def __init__(self, dim: int, momentum: float = 0.9) -> None:
        super().__init__()
        self.dim = check_int(dim, "dim", minimum=1)
        self.momentum = check_momentum(momentum)
        self.register_buffer("value", torch.zeros(1, self.dim))
        self._sum: Tensor | None = None
        self._count = 0

    def stage(self, teacher_output: Tensor) -> None:
        """Add the N x dim ``teacher_output`` (detached) to the mean of the next commit."""
        rows = check_rows(teacher_output, self.dim, "teacher_output").detach()
        total = rows.to(torch.float64).sum(dim=0)
        self._sum = total if self._sum is None else self._sum + total.to(self._sum.device)
        self._count += rows.shape[0]

    def clear_stage(self) -> None:
        """Drop the staged rows."""
        self._sum, self._count = None, 0

    @torch.no_grad()
    def commit(self, process_group=None) -> None:
        """Move the centre towards the mean of the staged rows and clear the
        stage; nothing moves when no row was staged (on any process). With
        ``process_group`` the sums and counts are all-reduced first, so every
        process computes the same centre (exact for unequal shards too)."""
        device = self.value.device
        total = torch.zeros(self.dim + 1, dtype=torch.float64, device=device)
        if self._sum is not None:
            total[: self.dim] = self._sum.to(device)
            total[self.dim] = self._count
        self.clear_stage()
        if process_group is not None:
            import torch.distributed as dist

            dist.all_reduce(total, group=process_group)
        count = float(total[self.dim])
        if count == 0:
            return
        mean = (total[: self.dim] / count).to(self.value.dtype)
        self.value.mul_(self.momentum).add_(mean[None], alpha=1 - self.momentum)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, momentum={self.momentum}"
