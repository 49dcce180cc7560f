"""Patch correlation with the semantics of spatial-correlation-sampler
(Pinard's ``spatial_correlation_sample``, used by FlowNetC, PWC-Net and the
self-supervised video correspondence methods), so users can switch::

    out[b, ph, pw, h, w] = sum_c sum_{i < kH, j < kW} in1[b, c, y, x] * in2[b, c, y + dy, x + dx]
    y = -padding + h * stride + i * dilation,  dy = (ph - (patch - 1) // 2) * dilation_patch

(likewise x, dx); taps outside either input contribute 0. Forward and
backward are gathers over channels-last copies, accumulated in float32 for
float16 / bfloat16 inputs (float64 for float64), with no atomics: the backward
costs what the forward costs, where spatial-correlation-sampler's is 8-14x
slower.
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor

from wsss_ext import _C
from wsss_ext.ops._checks import (
    INT32_MAX,
    check_int,
    check_tensor,
    cuda_stream,
    fast_custom_op,
    require_finite,
    vmap_into_batch,
)

__all__ = ["correlation"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _pair(value: object, name: str, minimum: int) -> list[int]:
    if type(value) is int:  # the common case, first
        if not minimum <= value <= INT32_MAX:
            raise ValueError(f"{name} must be >= {minimum} (and <= {INT32_MAX}), got {value}")
        return [value, value]
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        values = [int(value), int(value)]
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        values = [check_int(v, name, maximum=INT32_MAX) for v in value]
    else:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(values) < minimum or max(values) > INT32_MAX:
        raise ValueError(f"{name} must be >= {minimum} (and <= {INT32_MAX}), got {value}")
    return values


def _output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - (dilation * (kernel - 1) + 1)) // stride + 1


def _channels_last(x: Tensor) -> Tensor:
    return x.permute(0, 2, 3, 1).contiguous()


@fast_custom_op("wsss_ext::correlation", differentiable=True)
def _correlation(in1: Tensor, in2: Tensor, sizes: list[int]) -> Tensor:
    """in1, in2 [B, C, H, W] of the compute dtype -> [B, pH, pW, oH, oW]."""
    batch, _, height, width = in1.shape
    kh, kw, ph, pw, sh, sw, padh, padw, dh, dw = sizes[:10]
    out = in1.new_empty((batch, ph, pw, _output_size(height, kh, sh, padh, dh), _output_size(width, kw, sw, padw, dw)))
    pairs = [sizes[i : i + 2] for i in range(0, 12, 2)]
    _C.correlation_forward(_channels_last(in1), _channels_last(in2), out, pairs, cuda_stream(in1))
    return out


@_correlation.register_fake
def _(in1, in2, sizes):
    batch, _, height, width = in1.shape
    kh, kw, ph, pw, sh, sw, padh, padw, dh, dw = sizes[:10]
    return in1.new_empty((batch, ph, pw, _output_size(height, kh, sh, padh, dh), _output_size(width, kw, sw, padw, dw)))


@fast_custom_op("wsss_ext::correlation_backward")
def _correlation_backward(grad: Tensor, in1: Tensor, in2: Tensor, sizes: list[int]) -> tuple[Tensor, Tensor]:
    a, b = _channels_last(in1), _channels_last(in2)
    grad_a, grad_b = torch.empty_like(a), torch.empty_like(b)
    pairs = [sizes[i : i + 2] for i in range(0, 12, 2)]
    _C.correlation_backward(a, b, grad.contiguous(), grad_a, grad_b, pairs, cuda_stream(in1))
    return grad_a.permute(0, 3, 1, 2).contiguous(), grad_b.permute(0, 3, 1, 2).contiguous()


@_correlation_backward.register_fake
def _(grad, in1, in2, sizes):
    return torch.empty_like(in1), torch.empty_like(in2)


def _setup(ctx, inputs, output):
    in1, in2, sizes = inputs
    ctx.save_for_backward(in1, in2)
    ctx.sizes = sizes


def _backward(ctx, grad):
    in1, in2 = ctx.saved_tensors
    grad_in1, grad_in2 = _correlation_backward(grad, in1, in2, ctx.sizes)
    return grad_in1, grad_in2, None


torch.library.register_autograd("wsss_ext::correlation", _backward, setup_context=_setup)
# vmap: the mapped dimension joins the batch (B x ...) of the inputs and outputs.
vmap_into_batch(_correlation)
vmap_into_batch(_correlation_backward)


def correlation(
    input1: Tensor,
    input2: Tensor,
    kernel_size: int | tuple[int, int] = 1,
    patch_size: int | tuple[int, int] = 1,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    dilation_patch: int | tuple[int, int] = 1,
) -> Tensor:
    """Correlation of ``input1`` with displaced patches of ``input2``, as
    ``spatial_correlation_sampler.spatial_correlation_sample`` computes it.

    Args:
        input1, input2: B x C x H x W, same shape and device; float16,
            bfloat16, float32 or float64 (accumulated in float32, or float64).
        kernel_size, patch_size, stride, padding, dilation, dilation_patch:
            ints or (h, w) pairs, with the sampler's meanings (module docstring).

    Returns:
        B x pH x pW x oH x oW in input1's dtype, differentiable in both inputs.

    Example:
        >>> import torch, wsss_ext
        >>> f1, f2 = torch.randn(2, 64, 48, 64), torch.randn(2, 64, 48, 64)
        >>> cost = wsss_ext.correlation(f1, f2, patch_size=21, dilation_patch=2)   # FlowNetC
        >>> cost.shape
        torch.Size([2, 21, 21, 48, 64])
        >>> bool(torch.allclose(cost[:, 10, 10], (f1 * f2).sum(1), atol=1e-4))    # zero displacement
        True
    """
    input1 = check_tensor(input1, "input1", ndim=4, layout="B x C x H x W", dtypes=_FLOAT_DTYPES)
    input2 = check_tensor(input2, "input2", ndim=4, layout="B x C x H x W", dtypes=_FLOAT_DTYPES)
    if input1.shape != input2.shape:
        raise ValueError(f"input1 {tuple(input1.shape)} and input2 {tuple(input2.shape)} must have the same shape")
    if input1.device != input2.device:
        raise ValueError(f"input1 is on {input1.device} but input2 is on {input2.device}")
    kernel = _pair(kernel_size, "kernel_size", 1)
    patch = _pair(patch_size, "patch_size", 1)
    strides = _pair(stride, "stride", 1)
    pads = _pair(padding, "padding", 0)
    dilations = _pair(dilation, "dilation", 1)
    patch_dilations = _pair(dilation_patch, "dilation_patch", 1)
    height, width = input1.shape[-2:]
    out_h = _output_size(height, kernel[0], strides[0], pads[0], dilations[0])
    out_w = _output_size(width, kernel[1], strides[1], pads[1], dilations[1])
    if out_h < 1 or out_w < 1:
        raise ValueError(
            f"kernel_size {kernel} with dilation {dilations} and padding {pads} does not fit a {height}x{width} input"
        )
    require_finite(input1, "input1 contains NaN or inf")
    require_finite(input2, "input2 contains NaN or inf")
    dtype = torch.float64 if torch.float64 in (input1.dtype, input2.dtype) else torch.float32
    sizes = kernel + patch + strides + pads + dilations + patch_dilations
    if input1.numel() == 0:
        return input1.new_zeros((input1.shape[0], patch[0], patch[1], out_h, out_w))
    out = _correlation(input1.to(dtype).contiguous(), input2.to(dtype).contiguous(), sizes)
    return out.to(input1.dtype)
