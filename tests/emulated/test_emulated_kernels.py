"""Every CUDA launcher, run on CPU tensors by the emulation build, against
the CPU backend on the same inputs: shapes at tile edges, partial warps and
blocks, empty inputs; tolerances as the GPU tests of tests/test_<k>.py use."""

import pytest
import torch

import wsss_ext

from emulation_helpers import assert_match, cuda_and_cpu, requires_emulation

pytestmark = requires_emulation


def generator(seed):
    return torch.Generator().manual_seed(seed)


# --- correlation: a warp per output pixel, shuffles over the channels ------------------------

@pytest.mark.parametrize("shape, args", [
    ((1, 40, 5, 6), (1, 21, 1, 0, 1, 2)),   # 441 patches; 40 channels = a full lane row and a partial one
    ((1, 32, 7, 6), (3, 3, 2, 1, 1, 1)),    # exactly one warp of channels, strided
    ((2, 33, 6, 7), (3, 7, 1, 5, 2, 2)),    # one lane past a warp
    ((1, 1, 5, 4), (1, 3, 1, 0, 1, 1)),     # a single channel: 31 idle lanes per shuffle
])
def test_correlation(shape, args):
    in1 = torch.randn(shape, generator=generator(0), dtype=torch.float64)
    in2 = torch.randn(shape, generator=generator(1), dtype=torch.float64)
    assert_match(lambda a, b: wsss_ext.correlation(a, b, *args), in1, in2, rtol=1e-10, atol=1e-10)


def test_correlation_float32_and_empty_batch():
    a, b = torch.randn(1, 40, 6, 5, generator=generator(2)), torch.randn(1, 40, 6, 5, generator=generator(3))
    assert_match(lambda x, y: wsss_ext.correlation(x, y, 1, 5), a, b, rtol=1e-5, atol=1e-5)
    empty = torch.randn(0, 8, 5, 5)
    assert_match(lambda x, y: wsss_ext.correlation(x, y, 1, 3), empty, empty, rtol=0, atol=0, backward=False)


# --- Sinkhorn: a warp per row, column partials over row chunks --------------------------------

def cosine_scores(n, k, seed, dtype):
    g = generator(seed)
    x = torch.nn.functional.normalize(torch.randn(n, 16, generator=g, dtype=torch.float64), dim=1)
    c = torch.nn.functional.normalize(torch.randn(k, 16, generator=g, dtype=torch.float64), dim=1)
    return (x @ c.T).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("n, k, kwargs", [
    (777, 65, dict(tol=1e-4)),        # 13 row chunks of 64 (the last partial); 65 prototypes: a partial block
    (3, 300, dict(epsilon=0.01)),     # fewer rows than a block's 8 warps
    (130, 33, {}),                    # 33 prototypes: one lane past a warp in the row kernels
    (1, 1, {}),
])
def test_sinkhorn(dtype, n, k, kwargs):
    scores = cosine_scores(n, k, seed=8, dtype=dtype)
    tolerance = 1e-10 if dtype == torch.float64 else 2e-5
    assert_match(lambda s: wsss_ext.sinkhorn_knopp(s, **kwargs), scores, rtol=tolerance, atol=tolerance * 1e-2,
                 backward=False)


# --- PAMR: a thread per pixel; a thread per (pixel, 4 channels) ---------------------------------

@pytest.mark.parametrize("channels", [1, 4, 5, 21])
@pytest.mark.parametrize("height, width", [(5, 3), (16, 16), (17, 23)])
def test_pamr(channels, height, width):
    image = torch.rand(2, 3, height, width, generator=generator(0))
    mask = torch.rand(2, channels, height, width, generator=generator(1)).softmax(1)
    assert_match(lambda i, m: wsss_ext.pamr(i, m, (1, 2, 4), 5), image, mask, rtol=0, atol=1e-6, backward=False)
    assert_match(lambda i: wsss_ext.pamr_affinity(i, (1, 3)), image, rtol=0, atol=1e-6, backward=False)


def test_pamr_gradient_in_float64():
    image = torch.rand(1, 3, 9, 7, generator=generator(2), dtype=torch.float64)
    mask = torch.rand(1, 3, 9, 7, generator=generator(3), dtype=torch.float64).softmax(1)
    assert_match(lambda i, m: wsss_ext.pamr(i, m, (1, 2), 3), image, mask, rtol=1e-10, atol=1e-12)


# --- random walk: 32 x 8 tiles in shared memory (or the global-memory path) --------------------

@pytest.mark.parametrize("channels", [1, 4, 5])
@pytest.mark.parametrize("height, width", [(8, 32), (9, 33), (3, 70), (20, 30)])
def test_random_walk(channels, height, width):
    x = torch.rand(2, channels, height, width, generator=generator(0)).softmax(1)
    affinity = wsss_ext.boundary_affinity(torch.rand(2, height, width, generator=generator(1)))
    assert_match(lambda v, a: wsss_ext.random_walk(v, a, 10.0, 6), x, affinity, rtol=1e-4, atol=1e-5,
                 backward=False)


@pytest.mark.parametrize("radius", [3, 5, 12, 30])  # 30: past the shared-memory tile, the global path
def test_random_walk_radii_and_gradients(radius):
    x = torch.rand(1, 3, 20, 34, generator=generator(2), dtype=torch.float64)
    features = torch.randn(1, 4, 20, 34, generator=generator(3), dtype=torch.float64)
    affinity = wsss_ext.feature_affinity(features, radius=radius)
    assert_match(lambda v, a: wsss_ext.random_walk(v, a, 8.0, 4), x, affinity, rtol=1e-10, atol=1e-12)


# --- label propagation: a thread per (pixel, 8 labels) --------------------------------------------

@pytest.mark.parametrize("border", ["zero", "exclude"])
@pytest.mark.parametrize("labels, topk", [(1, None), (3, None), (9, 10), (8, 64)])
def test_propagation(labels, topk, border):
    g = generator(0)
    query = torch.randn(2, 16, 7, 9, generator=g, dtype=torch.float64)
    keys = torch.randn(2, 3, 16, 7, 9, generator=g, dtype=torch.float64)
    values = torch.softmax(torch.randn(2, 3, labels, 7, 9, generator=g, dtype=torch.float64), 2)
    assert_match(lambda q, k, v: wsss_ext.propagate_labels(q, k, v, 3, 0.2, topk, border=border),
                 query, keys, values, rtol=1e-10, atol=1e-12, grad_rtol=1e-9, grad_atol=1e-11)


# --- FickleNet: a thread per unit; a block of 256 per (row, channel) for the counts --------------

@pytest.mark.parametrize("kernel_size", [1, 3, 5])
@pytest.mark.parametrize("height, width", [(7, 9), (17, 19)])  # 63 and 323 positions: under and over a block
def test_fickle(kernel_size, height, width):
    x = torch.randn(2, 6, height, width, generator=generator(0))
    weight = torch.randn(4, 6, kernel_size, kernel_size, generator=generator(1))
    (cuda, _), (cpu, _) = cuda_and_cpu(lambda v: wsss_ext.expanded_dropout(v, kernel_size, 0.9, seed=2**33 + 5), x,
                                       backward=False)
    assert torch.equal(cuda != 0, cpu != 0)
    assert_match(lambda v, w: wsss_ext.fickle_conv2d(v, w, p=0.9, seed=7, n_samples=3), x, weight, rtol=1e-4,
                 atol=1e-4, backward=False)
    # Grad-CAM's mask counts: a block of 256 per (row, channel), a shared-memory tree reduction.
    labels = torch.ones(2, 4)
    for output in range(2):
        (cuda, _), (cpu, _) = cuda_and_cpu(
            lambda v: wsss_ext.fickle_gradcam(v.abs(), weight, None, labels, n_samples=4, seed=3)[output], x,
            backward=False)
        if output == 0:
            torch.testing.assert_close(cuda, cpu, rtol=1e-4, atol=1e-4)
        else:
            assert torch.equal(cuda, cpu)


def test_fickle_gradients_and_gradcam():
    x = torch.randn(2, 5, 9, 10, generator=generator(2), dtype=torch.float64)
    weight = torch.randn(4, 5, 3, 3, generator=generator(3), dtype=torch.float64)
    bias = torch.randn(4, generator=generator(4), dtype=torch.float64)
    assert_match(lambda v, w, b: wsss_ext.fickle_conv2d(v, w, b, p=0.9, seed=5, n_samples=3), x, weight, bias,
                 rtol=1e-10, atol=1e-10)
    labels = torch.ones(2, 4)
    results = cuda_and_cpu(lambda v: wsss_ext.fickle_gradcam(v, weight, bias, labels, n_samples=6, seed=1)[0],
                           x.abs(), backward=False)
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-10, atol=1e-10)


# --- dense CRF: the lattice built and filtered on the "GPU", cub's scan and sort on the host ------

def cam_unary(batch, n_labels, height, width, seed=0):
    probs = torch.rand(batch, n_labels, height, width, generator=generator(seed)).softmax(1)
    return wsss_ext.unary_from_probs(probs)


@pytest.mark.parametrize("n_labels", [1, 2, 21, 81, 256])
def test_dense_crf(n_labels):
    unary = cam_unary(2, n_labels, 13, 21)
    image = torch.randint(0, 256, (2, 3, 13, 21), generator=generator(1), dtype=torch.uint8)
    (cuda, _), (cpu, _) = cuda_and_cpu(lambda u: wsss_ext.dense_crf(u, image, 5), unary, backward=False)
    assert (cuda.argmax(1) == cpu.argmax(1)).double().mean() >= 0.999
    torch.testing.assert_close(cuda, cpu, rtol=1e-4, atol=1e-4)


def test_dense_crf_smoothness_only_and_empty():
    unary = cam_unary(1, 4, 37, 9, seed=3)
    image = torch.zeros(1, 3, 37, 9, dtype=torch.uint8)
    assert_match(lambda u: wsss_ext.dense_crf(u, image, 3, bilateral_weight=0.0), unary, rtol=1e-4, atol=1e-4,
                 backward=False)
    assert_match(lambda u: wsss_ext.dense_crf(u, image[:0], 3), unary[:0], rtol=0, atol=0, backward=False)


def test_empty_inputs_match():
    assert_match(lambda m: wsss_ext.pamr(torch.rand(0, 3, 5, 5), m), torch.rand(0, 2, 5, 5), rtol=0, atol=0,
                 backward=False)
    assert_match(lambda v: wsss_ext.random_walk(v, wsss_ext.boundary_affinity(torch.rand(0, 5, 5)), 8.0, 3),
                 torch.rand(0, 2, 5, 5), rtol=0, atol=0, backward=False)
    assert_match(lambda q: wsss_ext.propagate_labels(q, torch.randn(0, 2, 4, 5, 5), torch.rand(0, 2, 3, 5, 5), 2),
                 torch.randn(0, 4, 5, 5), rtol=0, atol=0, backward=False)
    assert_match(lambda v: wsss_ext.expanded_dropout(v, 3, 0.5, seed=1), torch.randn(0, 4, 5, 5), rtol=0, atol=0,
                 backward=False)
