"""wsss_ext.correlation against a brute-force oracle of spatial-correlation-
sampler's formula and the plain shift-and-sum reference, with gradients,
half precision and bad input; wsss_ext.nn.Correlation as a module."""

import itertools

import pytest
import torch

import wsss_ext
from conftest import requires_cuda, with_nan
from wsss_ext.nn import Correlation
from wsss_ext.reference import correlation_shift


def brute_force(in1, in2, kernel_size, patch_size, stride, padding, dilation, dilation_patch):
    """The sampler's formula, output element by output element (vectorised over
    channels and batch only)."""
    batch, channels, height, width = in1.shape
    out_h = (height + 2 * padding - (dilation * (kernel_size - 1) + 1)) // stride + 1
    out_w = (width + 2 * padding - (dilation * (kernel_size - 1) + 1)) // stride + 1
    out = torch.zeros(batch, patch_size, patch_size, out_h, out_w, dtype=in1.dtype)
    radius = (patch_size - 1) // 2
    for ph, pw, h, w in itertools.product(range(patch_size), range(patch_size), range(out_h), range(out_w)):
        dy, dx = (ph - radius) * dilation_patch, (pw - radius) * dilation_patch
        for i, j in itertools.product(range(kernel_size), range(kernel_size)):
            y, x = -padding + h * stride + i * dilation, -padding + w * stride + j * dilation
            if 0 <= y < height and 0 <= x < width and 0 <= y + dy < height and 0 <= x + dx < width:
                out[:, ph, pw, h, w] += (in1[:, :, y, x] * in2[:, :, y + dy, x + dx]).sum(1)
    return out


# Every value of every parameter, in combinations that keep the brute force quick.
ORACLE_CASES = [
    # kernel, patch, stride, padding, dilation, dilation_patch, (H, W), C
    (1, 1, 1, 0, 1, 1, (5, 7), 3),
    (1, 3, 1, 0, 1, 1, (6, 5), 33),
    (1, 7, 2, 1, 1, 2, (7, 9), 5),
    (3, 1, 1, 1, 1, 1, (5, 8), 4),
    (3, 3, 2, 0, 2, 1, (9, 7), 7),
    (3, 7, 1, 5, 2, 2, (4, 6), 3),
    (1, 25, 1, 0, 1, 1, (6, 8), 2),
    (3, 25, 2, 5, 1, 2, (5, 5), 3),
    (3, 3, 1, 1, 1, 2, (1, 9), 65),
    (1, 3, 2, 5, 2, 1, (8, 3), 1),
]


@pytest.mark.parametrize("kernel, patch, stride, padding, dilation, dilation_patch, size, channels", ORACLE_CASES)
def test_matches_the_brute_force_oracle(kernel, patch, stride, padding, dilation, dilation_patch, size, channels):
    generator = torch.Generator().manual_seed(kernel * 100 + patch)
    in1 = torch.randn(2, channels, *size, generator=generator, dtype=torch.float64)
    in2 = torch.randn(2, channels, *size, generator=generator, dtype=torch.float64)
    args = (kernel, patch, stride, padding, dilation, dilation_patch)
    ours = wsss_ext.correlation(in1, in2, *args)
    expected = brute_force(in1, in2, *args)
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(correlation_shift(in1, in2, *args), expected, rtol=1e-12, atol=1e-12)


def test_rectangular_parameters():
    in1, in2 = torch.randn(1, 4, 9, 11, dtype=torch.float64), torch.randn(1, 4, 9, 11, dtype=torch.float64)
    ours = wsss_ext.correlation(in1, in2, (3, 1), (5, 3), (2, 1), (1, 0), (1, 2), (2, 1))
    expected = correlation_shift(in1, in2, (3, 1), (5, 3), (2, 1), (1, 0), (1, 2), (2, 1))
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("args", [(1, 3, 1, 0, 1, 1), (3, 3, 2, 1, 1, 2), (3, 5, 1, 2, 2, 1)])
def test_gradcheck(args):
    in1 = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    in2 = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: wsss_ext.correlation(a, b, *args), (in1, in2))


def test_gradient_equals_the_reference_autograd_gradient():
    in1 = torch.randn(2, 6, 8, 9, dtype=torch.float64, requires_grad=True)
    in2 = torch.randn(2, 6, 8, 9, dtype=torch.float64, requires_grad=True)
    args = (3, 7, 2, 1, 1, 2)
    upstream = torch.randn_like(wsss_ext.correlation(in1, in2, *args))
    ours = torch.autograd.grad(wsss_ext.correlation(in1, in2, *args), (in1, in2), upstream)
    theirs = torch.autograd.grad(correlation_shift(in1, in2, *args), (in1, in2), upstream)
    for mine, reference in zip(ours, theirs):
        torch.testing.assert_close(mine, reference, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_accumulates_in_float32(dtype):
    # 256 channels of products near 16 overflow a float16 accumulator's
    # precision long before its range; the output must match float32 and be finite.
    in1, in2 = torch.randn(2, 256, 12, 10) * 4, torch.randn(2, 256, 12, 10) * 4
    ours = wsss_ext.correlation(in1.to(dtype), in2.to(dtype), 1, 9, 1, 0, 1, 1)
    assert ours.dtype == dtype and bool(torch.isfinite(ours).all())
    expected = wsss_ext.correlation(in1.to(dtype).float(), in2.to(dtype).float(), 1, 9, 1, 0, 1, 1)
    torch.testing.assert_close(ours.float(), expected, rtol=1e-2, atol=0.5)


def test_module_equals_the_function():
    in1, in2 = torch.randn(1, 8, 10, 12), torch.randn(1, 8, 10, 12)
    module = Correlation(kernel_size=1, patch_size=9, stride=1, padding=0, dilation_patch=2)
    torch.testing.assert_close(module(in1, in2), wsss_ext.correlation(in1, in2, 1, 9, 1, 0, 1, 2), rtol=0, atol=0)
    assert "patch_size=9" in repr(module)


def test_empty_batch():
    assert wsss_ext.correlation(torch.zeros(0, 3, 5, 5), torch.zeros(0, 3, 5, 5), patch_size=3).shape == (0, 3, 3, 5, 5)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda a, b: (a, b[..., :5], {}), ValueError, "same shape"),
        (lambda a, b: (a[0], b[0], {}), ValueError, "input1 must be 4-D"),
        (lambda a, b: (a.long(), b, {}), TypeError, "input1 must have dtype"),
        (lambda a, b: (a, b, dict(kernel_size=0)), ValueError, "kernel_size must be >= 1"),
        (lambda a, b: (a, b, dict(patch_size=(3,))), TypeError, "patch_size must be an int or a pair"),
        (lambda a, b: (a, b, dict(stride=0)), ValueError, "stride must be >= 1"),
        (lambda a, b: (a, b, dict(padding=-1)), ValueError, "padding must be >= 0"),
        (lambda a, b: (a, b, dict(kernel_size=9)), ValueError, "does not fit"),
        (lambda a, b: (with_nan(a), b, {}), ValueError, "input1 contains NaN"),
        (lambda a, b: (a, b.to("meta"), {}), ValueError, "input2 is on meta"),
    ],
)
def test_bad_input(make, error, match):
    in1, in2, kwargs = make(torch.randn(1, 3, 6, 6), torch.randn(1, 3, 6, 6))
    with pytest.raises(error, match=match):
        wsss_ext.correlation(in1, in2, **kwargs)


def test_compiled_checks_catch_bad_buffers():
    from wsss_ext import _C

    a = torch.randn(1, 6, 6, 3)
    sizes = [[1, 1], [3, 3], [1, 1], [0, 0], [1, 1], [1, 1]]
    with pytest.raises(ValueError, match="out must have shape"):
        _C.correlation_forward(a, a, torch.empty(1, 3, 3, 6, 5), sizes)
    with pytest.raises(ValueError, match="in2 must have dtype float32"):
        _C.correlation_forward(a, a.double(), torch.empty(1, 3, 3, 6, 6), sizes)
    with pytest.raises(ValueError, match="patch_size must be >= 1"):
        _C.correlation_forward(a, a, torch.empty(1, 3, 3, 6, 6), [[1, 1], [0, 0], [1, 1], [0, 0], [1, 1], [1, 1]])


@requires_cuda
@pytest.mark.parametrize("args", [(1, 21, 1, 0, 1, 2), (3, 3, 2, 1, 1, 1), (3, 7, 1, 5, 2, 2)])
def test_cuda_matches_cpu(args):
    in1, in2 = torch.randn(2, 70, 17, 23, dtype=torch.float64), torch.randn(2, 70, 17, 23, dtype=torch.float64)
    cpu = wsss_ext.correlation(in1, in2, *args)
    a, b = in1.cuda().requires_grad_(), in2.cuda().requires_grad_()
    cuda = wsss_ext.correlation(a, b, *args)
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=1e-10, atol=1e-10)
    upstream = torch.randn_like(cpu)
    grads_cuda = torch.autograd.grad(cuda, (a, b), upstream.cuda())
    a, b = in1.clone().requires_grad_(), in2.clone().requires_grad_()
    grads_cpu = torch.autograd.grad(wsss_ext.correlation(a, b, *args), (a, b), upstream)
    for c, g in zip(grads_cuda, grads_cpu):
        torch.testing.assert_close(c.cpu(), g, rtol=1e-10, atol=1e-10)
    half = wsss_ext.correlation(in1.half().cuda(), in2.half().cuda(), *args)
    assert bool(torch.isfinite(half).all())
