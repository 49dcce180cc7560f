"""``Correlation``: ``wsss_ext.correlation`` as a module, a drop-in for
spatial-correlation-sampler's ``SpatialCorrelationSampler``."""

from __future__ import annotations

from torch import Tensor, nn

from wsss_ext.ops.correlation import correlation


class Correlation(nn.Module):
    """``forward(input1, input2) -> B x pH x pW x oH x oW``, with the arguments
    of :func:`wsss_ext.correlation` (and of ``SpatialCorrelationSampler``).

    Example:
        >>> import torch
        >>> from wsss_ext.nn import Correlation
        >>> sampler = Correlation(kernel_size=1, patch_size=21, stride=1, padding=0, dilation_patch=2)
        >>> sampler(torch.randn(1, 32, 24, 32), torch.randn(1, 32, 24, 32)).shape
        torch.Size([1, 21, 21, 24, 32])
    """

    def __init__(self, kernel_size=1, patch_size=1, stride=1, padding=0, dilation=1, dilation_patch=1) -> None:
        super().__init__()
        self.kernel_size, self.patch_size, self.stride = kernel_size, patch_size, stride
        self.padding, self.dilation, self.dilation_patch = padding, dilation, dilation_patch

    def forward(self, input1: Tensor, input2: Tensor) -> Tensor:
        return correlation(input1, input2, self.kernel_size, self.patch_size, self.stride, self.padding,
                           self.dilation, self.dilation_patch)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, patch_size={self.patch_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, dilation_patch={self.dilation_patch}")
