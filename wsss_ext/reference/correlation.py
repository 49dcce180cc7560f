"""spatial-correlation-sampler's correlation in plain PyTorch: for every
patch displacement, the channel sum of input1 times the displaced input2,
then the kernel window summed by a conv with a ones kernel (stride, padding,
dilation). O(B H W) memory per displacement."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["correlation_shift"]


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def correlation_shift(input1: Tensor, input2: Tensor, kernel_size=1, patch_size=1, stride=1, padding=0, dilation=1,
                      dilation_patch=1) -> Tensor:
    """B x pH x pW x oH x oW, differentiable by autograd."""
    kernel, patch = _pair(kernel_size), _pair(patch_size)
    patch_dilation = _pair(dilation_patch)
    batch, _, height, width = input1.shape
    ones = input1.new_ones(1, 1, *kernel)
    rows = []
    for ph in range(patch[0]):
        dy = (ph - (patch[0] - 1) // 2) * patch_dilation[0]
        columns = []
        for pw in range(patch[1]):
            dx = (pw - (patch[1] - 1) // 2) * patch_dilation[1]
            # input2 displaced by (dy, dx), zero outside.
            shifted = torch.zeros_like(input2)
            rows_kept, cols_kept = height - abs(dy), width - abs(dx)
            if rows_kept > 0 and cols_kept > 0:
                shifted[:, :, max(0, -dy) : max(0, -dy) + rows_kept, max(0, -dx) : max(0, -dx) + cols_kept] = (
                    input2[:, :, max(0, dy) : max(0, dy) + rows_kept, max(0, dx) : max(0, dx) + cols_kept]
                )
            product = (input1 * shifted).sum(1, keepdim=True)
            columns.append(F.conv2d(product, ones, stride=stride, padding=padding, dilation=dilation)[:, 0])
        rows.append(torch.stack(columns, 1))
    return torch.stack(rows, 1)
