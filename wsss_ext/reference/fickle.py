"""FickleNet's stochastic head as the paper builds it: the expanded feature
map (every k x k window its own block, k^2 times the input), centre-preserving
dropout on it, a k x k conv with stride k. Plain PyTorch; its masks come from
torch's generator, not wsss_ext's counter-based one."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["expand_windows", "fickle_conv2d_expanded"]


def expand_windows(x: Tensor, kernel_size: int) -> Tensor:
    """[B, C, H, W] -> [B, C, H k, W k]: block (i, j) holds the k x k window
    centred on (i, j), zero-padded at the borders."""
    batch, channels, height, width = x.shape
    windows = F.unfold(x, kernel_size, padding=kernel_size // 2)  # [B, C k k, H W]
    windows = windows.view(batch, channels, kernel_size, kernel_size, height, width)
    return windows.permute(0, 1, 4, 2, 5, 3).reshape(batch, channels, height * kernel_size, width * kernel_size)


def fickle_conv2d_expanded(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, p: float = 0.9, generator: torch.Generator | None = None
) -> Tensor:
    """The expand-then-conv path: expansion, dropout of every unit but the
    window centres (kept units not rescaled), conv with stride k."""
    kernel_size = weight.shape[-1]
    expanded = expand_windows(x, kernel_size)
    keep = torch.rand(expanded.shape, generator=generator, device=x.device, dtype=x.dtype) >= p
    keep[..., kernel_size // 2 :: kernel_size, kernel_size // 2 :: kernel_size] = True
    return F.conv2d(expanded * keep, weight, bias, stride=kernel_size)
