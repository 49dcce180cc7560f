"""Checks and the cross-process gather shared by the memory modules."""

from __future__ import annotations

import torch
from torch import Tensor

from python_models._checks import check_real

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_momentum(value: object, name: str = "momentum") -> float:
    """A real number in [0, 1]."""
    value = check_real(value, name)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def check_rows(value: object, dim: int, name: str) -> Tensor:
    """An N x dim floating-point tensor, finite."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in _FLOATS:
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    if value.dim() != 2 or value.shape[1] != dim:
        raise ValueError(f"{name} must be N x dim = N x {dim}, got shape {tuple(value.shape)}")
    if not torch.isfinite(value).all():
        raise ValueError(f"{name} has NaN or infinite values")
    return value


def gather_rows(rows: Tensor, process_group) -> Tensor:
    """The rows of every process of ``process_group`` concatenated in rank
    order (each process may hold a different number, zero included); ``rows``
    itself when ``process_group`` is None."""
    if process_group is None:
        return rows
    import torch.distributed as dist

    world = dist.get_world_size(process_group)
    count = torch.tensor([rows.shape[0]], dtype=torch.int64, device=rows.device)
    counts = [torch.empty_like(count) for _ in range(world)]
    dist.all_gather(counts, count, group=process_group)
    sizes = [int(c) for c in counts]
    longest = max(sizes)
    padded = rows.new_zeros((longest,) + tuple(rows.shape[1:]))
    padded[: rows.shape[0]] = rows
    pieces = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(pieces, padded.contiguous(), group=process_group)
    return torch.cat([piece[:size] for piece, size in zip(pieces, sizes)])
