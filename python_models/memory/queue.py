"""A FIFO queue of embeddings (MoCo's negatives, SwAV's and Leopart's queue).

Rows are staged during ``losses()`` (detached, kept outside the state dict)
and written by ``commit()`` in ``after_step``, so the queue a loss reads is
the same for every micro-batch of a step under gradient accumulation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from python_models._checks import check_int
from python_models.memory._common import check_rows, gather_rows

__all__ = ["Queue"]

_INITS = ("zeros", "unit")


class Queue(nn.Module):
    """A first-in first-out queue of ``size`` rows of ``dim`` features.

    Args:
        size: the number of rows (MoCo's K, 65536; SwAV's queue length).
        dim: the features of a row.
        init: ``"zeros"`` (SwAV: the queue counts as empty until it has been
            filled, see ``filled`` / ``is_full``) or ``"unit"`` (MoCo: random
            unit rows, so the queue is full from the start).
        batch_size: if given, every ``stage`` must bring this many rows and
            ``size`` must be divisible by it (MoCo's assertion, so a batch is
            never split across the end of the queue). Without it any number of
            rows is accepted and the write wraps around.
        generator: for the ``"unit"`` initialisation.

    Buffers (in the state dict): ``queue`` (size x dim), ``ptr`` (the next row
    to write, int64 scalar) and ``filled`` (rows written so far, at most size).

    >>> q = Queue(4, 2)
    >>> q.stage(torch.ones(3, 2)); q.commit(); q.stage(2 * torch.ones(2, 2)); q.commit()
    >>> q.tensor()[:, 0].tolist(), int(q.ptr)
    ([2.0, 1.0, 1.0, 2.0], 1)
    """

    def __init__(self, size: int, dim: int, *, init: str = "zeros", batch_size: int | None = None,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.size = check_int(size, "size", minimum=1)
        self.dim = check_int(dim, "dim", minimum=1)
        if init not in _INITS:
            raise ValueError(f"init must be one of {_INITS}, got {init!r}")
        self.batch_size = None if batch_size is None else check_int(batch_size, "batch_size", minimum=1)
        if self.batch_size is not None and self.size % self.batch_size:
            raise ValueError(f"size ({self.size}) must be divisible by batch_size ({self.batch_size})")
        if init == "unit":
            rows = F.normalize(torch.randn(self.size, self.dim, generator=generator), dim=1)
        else:
            rows = torch.zeros(self.size, self.dim)
        self.register_buffer("queue", rows)
        self.register_buffer("ptr", torch.zeros((), dtype=torch.int64))
        self.register_buffer("filled", torch.tensor(self.size if init == "unit" else 0, dtype=torch.int64))
        self._staged: list[Tensor] = []

    @property
    def is_full(self) -> bool:
        """Whether every row has been written (or initialised as a unit row)."""
        return int(self.filled) >= self.size

    def tensor(self) -> Tensor:
        """The current contents, size x dim (a copy, so later commits do not
        change a tensor a loss has kept for its backward). Row order is the
        storage order; the oldest row is at ``ptr`` once the queue is full."""
        return self.queue.clone()

    def stage(self, rows: Tensor) -> None:
        """Keep N x dim ``rows`` (detached) to be written at the next ``commit``."""
        rows = check_rows(rows, self.dim, "rows")
        if self.batch_size is not None and rows.shape[0] != self.batch_size:
            raise ValueError(f"rows must have batch_size = {self.batch_size} rows, got {rows.shape[0]}")
        self._staged.append(rows.detach())

    @property
    def staged(self) -> int:
        """The number of rows waiting for ``commit``."""
        return sum(rows.shape[0] for rows in self._staged)

    def clear_stage(self) -> None:
        """Drop the staged rows without writing them."""
        self._staged = []

    @torch.no_grad()
    def commit(self, process_group=None) -> None:
        """Write every staged row in the order staged (FIFO: each overwrites the
        oldest), then clear the stage. With ``process_group`` the rows of all
        its processes are written, in rank order, so every process keeps the
        same queue (MoCo's ``concat_all_gather`` before the enqueue). Writing
        more than ``size`` rows at once keeps the last ``size`` of them."""
        if self._staged:
            rows = torch.cat([r.to(device=self.queue.device, dtype=self.queue.dtype) for r in self._staged])
        else:
            rows = self.queue.new_zeros(0, self.dim)
        self._staged = []
        rows = gather_rows(rows, process_group)
        n = rows.shape[0]
        if n == 0:
            return
        ptr = int(self.ptr)
        if n >= self.size:
            # The last `size` rows survive; the newest is just before the pointer.
            end = (ptr + n) % self.size
            last = rows[n - self.size:]
            self.queue.copy_(torch.roll(last, shifts=end, dims=0))
        else:
            index = (ptr + torch.arange(n, device=self.queue.device)) % self.size
            self.queue.index_copy_(0, index, rows)
        self.ptr.fill_((ptr + n) % self.size)
        self.filled.fill_(min(self.size, int(self.filled) + n))

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}" + (
            f", batch_size={self.batch_size}" if self.batch_size is not None else "")
