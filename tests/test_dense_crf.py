"""dense_crf against pydensecrf (the peer library) and the exact O(N^2)
oracle; its properties, the unary helpers, the module form and bad input."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import wsss_ext
from conftest import DEVICES, requires_cuda
from wsss_ext.nn import DenseCRF
from wsss_ext.reference import dense_crf_dense

AFFINITYNET = dict(gaussian_sxy=3.0, gaussian_weight=3.0, bilateral_sxy=80.0, bilateral_srgb=13.0, bilateral_weight=10.0)
SCALE_12 = dict(AFFINITYNET, gaussian_sxy=3.0 / 12, bilateral_sxy=80.0 / 12)  # SEC/DSRG's 41 x 41 maps
IRNET = dict(AFFINITYNET, bilateral_sxy=50.0, bilateral_srgb=5.0)
RECURSEED = dict(gaussian_sxy=1.0, gaussian_weight=3.0, bilateral_sxy=67.0, bilateral_srgb=3.0, bilateral_weight=4.0)


# --- test data --------------------------------------------------------------


def photo(height, width, name="chelsea"):
    """A scikit-image photograph resized to [1, 3, H, W] uint8."""
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image ships the test photographs")
    image = torch.from_numpy(np.ascontiguousarray(getattr(skimage_data, name)()[..., :3]))
    image = image.permute(2, 0, 1)[None].float()
    image = F.interpolate(image, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return image.round().clamp(0, 255).to(torch.uint8)


def piecewise_constant(height, width, n_labels, *, seed=0):
    """Rectangles of flat colours, and noisy unaries that weakly prefer each
    rectangle's label: (image [1, 3, H, W] uint8, labels [H, W], unary [1, L, H, W])."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.zeros(height, width, dtype=torch.long)
    for label in range(1, n_labels):
        y0, x0 = torch.randint(0, height, (1,), generator=gen).item(), torch.randint(0, width, (1,), generator=gen).item()
        labels[y0 : y0 + height // 2, x0 : x0 + width // 2] = label
    palette = torch.randint(0, 256, (n_labels, 3), generator=gen, dtype=torch.uint8)
    image = palette[labels].permute(2, 0, 1)[None].contiguous()
    logits = 1.5 * F.one_hot(labels, n_labels).permute(2, 0, 1).float() + torch.randn(n_labels, height, width, generator=gen)
    return image, labels, wsss_ext.unary_from_probs(torch.softmax(logits, 0))[None]


def cam_unary(batch, n_labels, height, width, *, seed=0):
    """Blurry, noisy class maps as energies (CAM-like)."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(batch, n_labels, max(1, height // 8), max(1, width // 8), generator=gen) * 3
    logits = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    logits = logits + torch.randn(batch, n_labels, height, width, generator=gen)
    return wsss_ext.unary_from_probs(torch.softmax(logits, 1))


def random_image(batch, height, width, *, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, height, width), generator=gen, dtype=torch.uint8)


# --- pydensecrf ---------------------------------------------------------------


def pydensecrf_inference(unary, image, n_iters, params):
    dcrf = pytest.importorskip("pydensecrf.densecrf", reason="pydensecrf2 is not installed (it may not build here)")
    batch, n_labels, height, width = unary.shape
    out = []
    for b in range(batch):
        crf = dcrf.DenseCRF2D(width, height, n_labels)
        crf.setUnaryEnergy(np.ascontiguousarray(unary[b].numpy().reshape(n_labels, -1)))
        crf.addPairwiseGaussian(sxy=params["gaussian_sxy"], compat=params["gaussian_weight"])
        rgb = np.ascontiguousarray(image[b].permute(1, 2, 0).numpy())
        crf.addPairwiseBilateral(
            sxy=params["bilateral_sxy"], srgb=params["bilateral_srgb"], rgbim=rgb, compat=params["bilateral_weight"]
        )
        out.append(torch.from_numpy(np.asarray(crf.inference(n_iters))).reshape(n_labels, height, width))
    return torch.stack(out)


def assert_agrees_with_pydensecrf(unary, image, params, n_iters=10):
    got = wsss_ext.dense_crf(unary, image, n_iters, **params)
    expected = pydensecrf_inference(unary, image, n_iters, params)
    agreement = (got.argmax(1) == expected.argmax(1)).double().mean().item()
    max_diff = (got - expected).abs().max().item()
    assert agreement >= 0.995, f"argmax agreement {agreement:.5f}"
    assert max_diff <= 1e-3, f"max |dQ| {max_diff:.2e}"


PARITY_CASES = [  # (height, width, params)
    (41, 41, SCALE_12),
    (64, 80, AFFINITYNET),
    (375, 500, AFFINITYNET),
]


@pytest.mark.parametrize("n_labels", [2, 21])
@pytest.mark.parametrize("height, width, params", PARITY_CASES)
def test_matches_pydensecrf_on_photographs(height, width, params, n_labels):
    image = photo(height, width, "chelsea" if n_labels == 21 else "astronaut")
    assert_agrees_with_pydensecrf(cam_unary(1, n_labels, height, width, seed=n_labels), image, params)


@pytest.mark.parametrize("n_labels", [2, 21])
@pytest.mark.parametrize("height, width, params", PARITY_CASES)
def test_matches_pydensecrf_on_piecewise_constant_images(height, width, params, n_labels):
    image, _, unary = piecewise_constant(height, width, n_labels, seed=height)
    assert_agrees_with_pydensecrf(unary, image, params)


@pytest.mark.parametrize("params", [IRNET, RECURSEED], ids=["irnet", "recurseed"])
@pytest.mark.parametrize("n_iters", [0, 1, 4])
def test_matches_pydensecrf_with_other_published_settings(params, n_iters):
    assert_agrees_with_pydensecrf(cam_unary(2, 21, 48, 56), torch.cat([photo(48, 56), photo(48, 56, "coffee")]), params, n_iters)


# --- the exact oracle -----------------------------------------------------------


def pairwise_message(crf, unary, image, params):
    """w * Kn(softmax(-U)), recovered from one iteration: log Q1 + U, centred per pixel."""
    q1 = crf(unary, image, 1, **params).double()
    message = q1.log() + unary.double()
    return message - message.mean(1, keepdim=True)


@pytest.mark.parametrize("height, width", [(16, 16), (32, 32), (40, 60), (64, 64)])
@pytest.mark.parametrize(
    "params, bound",
    [
        (dict(gaussian_weight=1.0, bilateral_weight=0.0), 0.04),
        (dict(gaussian_weight=1.0, bilateral_weight=0.0, gaussian_sxy=1.0), 0.04),
        (dict(gaussian_weight=0.0, bilateral_weight=1.0), 0.15),
        (dict(gaussian_weight=0.0, bilateral_weight=1.0, bilateral_sxy=50.0, bilateral_srgb=5.0), 0.15),
    ],
    ids=["gaussian", "gaussian-sxy1", "bilateral", "bilateral-irnet"],
)
def test_lattice_filter_is_close_to_exact_gaussian_filtering(height, width, params, bound):
    """The lattice approximates the Gaussian kernels: its normalised message
    stays within a few percent (relative L2) of the exact O(N^2) one. (The
    approximation is pydensecrf's: its error is the same to 4 digits, about
    2.5% for the smoothness kernel and 5-12% for the appearance kernel.)"""
    image = photo(height, width)
    unary = 0.3 * cam_unary(1, 5, height, width)
    got = pairwise_message(wsss_ext.dense_crf, unary, image, params)
    exact = pairwise_message(dense_crf_dense, unary, image, params)
    relative = ((got - exact).norm() / exact.norm()).item()
    assert relative <= bound


@pytest.mark.parametrize("params", [AFFINITYNET, SCALE_12], ids=["affinitynet", "scale12"])
def test_mean_field_is_close_to_exact_oracle(params):
    # pydensecrf lands exactly as far from the oracle (95.6% / 96.5% argmax
    # agreement here): the lattice's approximation, amplified by 10 iterations.
    image, unary = photo(48, 64), cam_unary(1, 21, 48, 64)
    got = wsss_ext.dense_crf(unary, image, 10, **params)
    exact = dense_crf_dense(unary, image, 10, **params)
    assert (got.argmax(1) == exact.argmax(1)).double().mean() >= 0.95
    assert (got - exact).abs().mean() <= 5e-3


def test_sec_loss_maps_match_pydensecrf_and_the_exact_oracle():
    """SEC/DSRG's 41 x 41 maps at scale 12 (the image-by-image path, the
    smoothness kernel as the identity): ours agrees with pydensecrf, and
    lands no farther from the exact O(N^2) mean field than pydensecrf does."""
    image = torch.cat([photo(41, 41), photo(41, 41, "astronaut"), photo(41, 41, "coffee")])
    unary = cam_unary(3, 21, 41, 41)
    got = wsss_ext.dense_crf(unary, image, 10, **SCALE_12)
    expected = pydensecrf_inference(unary, image, 10, SCALE_12)
    assert (got.argmax(1) == expected.argmax(1)).double().mean() >= 0.995
    assert (got - expected).abs().max() <= 1e-3
    exact = dense_crf_dense(unary, image, 10, **SCALE_12)
    ours_error, peer_error = (got - exact).abs().mean(), (expected - exact).abs().mean()
    assert ours_error <= peer_error + 1e-5, f"ours {ours_error:.3e} from the oracle, pydensecrf {peer_error:.3e}"
    assert (got.argmax(1) == exact.argmax(1)).double().mean() >= 0.95


def test_one_pixel_image_is_exact():
    # One pixel: K = [1], so Kn(Q) = Q exactly, whatever the lattice.
    unary = torch.tensor([[[[0.3]], [[1.2]], [[0.1]]]])
    image = torch.tensor([[[[10]], [[200]], [[30]]]], dtype=torch.uint8)
    got = wsss_ext.dense_crf(unary, image, 7)
    torch.testing.assert_close(got.double(), dense_crf_dense(unary, image, 7), rtol=1e-6, atol=1e-6)


# --- properties ---------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_zero_iterations_is_softmax_of_minus_unary(device):
    unary = cam_unary(2, 21, 17, 23).to(device)
    got = wsss_ext.dense_crf(unary, random_image(2, 17, 23).to(device), 0)
    torch.testing.assert_close(got, torch.softmax(-unary, 1), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_zero_weights_is_softmax_of_minus_unary(device):
    unary = cam_unary(1, 4, 20, 20).to(device)
    got = wsss_ext.dense_crf(unary, random_image(1, 20, 20).to(device), 5, gaussian_weight=0, bilateral_weight=0)
    torch.testing.assert_close(got, torch.softmax(-unary, 1), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_uniform_unary_stays_uniform(device):
    unary = torch.full((2, 21, 30, 40), 3.0, device=device)
    got = wsss_ext.dense_crf(unary, random_image(2, 30, 40).to(device), 10)
    torch.testing.assert_close(got, torch.full_like(got, 1 / 21), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_output_is_a_distribution(device):
    got = wsss_ext.dense_crf(cam_unary(3, 81, 25, 31).to(device), random_image(3, 25, 31).to(device), 5)
    assert got.shape == (3, 81, 25, 31) and got.dtype == torch.float32 and got.device.type == device
    assert (got >= 0).all()
    torch.testing.assert_close(got.sum(1), torch.ones(3, 25, 31, device=device), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_label_permutation_permutes_the_output(device):
    unary, image = cam_unary(1, 21, 33, 29).to(device), photo(33, 29).to(device)
    perm = torch.randperm(21, generator=torch.Generator().manual_seed(3)).to(device)
    torch.testing.assert_close(
        wsss_ext.dense_crf(unary[:, perm], image, 10), wsss_ext.dense_crf(unary, image, 10)[:, perm], rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("device", DEVICES)
def test_batch_equals_one_image_at_a_time(device):
    unary, image = cam_unary(4, 21, 37, 45).to(device), random_image(4, 37, 45).to(device)
    image[1] = photo(37, 45).to(device)[0]
    batched = wsss_ext.dense_crf(unary, image, 10)
    for b in range(4):
        single = wsss_ext.dense_crf(unary[b : b + 1], image[b : b + 1], 10)
        torch.testing.assert_close(batched[b : b + 1], single, rtol=0, atol=1e-6)


def test_cpu_batches_larger_than_a_chunk_are_split_consistently(monkeypatch):
    module = sys.modules["wsss_ext.ops.dense_crf"]
    monkeypatch.setattr(module, "_CPU_IMAGE_PIXELS", 0)  # the batched lattice, which splits batches
    unary, image = cam_unary(5, 3, 20, 30), random_image(5, 20, 30)
    whole = wsss_ext.dense_crf(unary, image, 5)
    monkeypatch.setattr(module, "_CPU_CHUNK_PIXELS", 2 * 20 * 30)  # chunks of 2, 2, 1 images
    torch.testing.assert_close(wsss_ext.dense_crf(unary, image, 5), whole, rtol=0, atol=0)


@pytest.mark.parametrize(
    "batch, height, width, params",
    [(3, 41, 41, SCALE_12), (3, 64, 80, AFFINITYNET), (3, 9, 130, IRNET), (1, 150, 140, AFFINITYNET)],
)
def test_cpu_image_by_image_path_equals_the_batched_path(monkeypatch, batch, height, width, params):
    # The CPU runs image by image, each thread taking whole images (or, for
    # fewer images than threads, all threads sharing each image); the
    # batched lattice gives the same sums in the same order (bit for bit but
    # for the identity term, which torch adds on the batched path).
    module = sys.modules["wsss_ext.ops.dense_crf"]
    unary = cam_unary(batch, 21, height, width)
    image = torch.cat([photo(height, width), random_image(2, height, width)])[:batch]
    assert height * width <= module._CPU_IMAGE_PIXELS
    by_image = wsss_ext.dense_crf(unary, image, 10, **params)
    monkeypatch.setattr(module, "_CPU_IMAGE_PIXELS", 0)
    tolerance = 1e-6 if module._lattice_is_identity(2, params["gaussian_sxy"]) else 0.0
    torch.testing.assert_close(wsss_ext.dense_crf(unary, image, 10, **params), by_image, rtol=0, atol=tolerance)


def test_cpu_workspace_cache_is_reused_never_stale_and_freed_when_asked():
    # Calls keep their workspace (wsss_ext/ops/_workspace.py); a reused one
    # holds the previous call's bytes, here garbage, and results must not
    # depend on them, nor on the shapes that ran before.
    import weakref

    from wsss_ext.ops._workspace import dense_crf_workspaces

    shapes = [(1, 21, 40, 50, AFFINITYNET), (3, 5, 41, 41, SCALE_12), (2, 21, 33, 27, IRNET), (1, 21, 40, 50, AFFINITYNET)]
    cases = [(cam_unary(b, n, h, w, seed=i), random_image(b, h, w, seed=i), params)
             for i, (b, n, h, w, params) in enumerate(shapes)]
    expected = []
    for unary, image, params in cases:
        wsss_ext.empty_cache()
        expected.append(wsss_ext.dense_crf(unary, image, 5, **params))
    assert dense_crf_workspaces.cached_bytes() > 0
    wsss_ext.empty_cache()
    assert dense_crf_workspaces.cached_bytes() == 0
    garbage = torch.randint(0, 256, (64 << 20,), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    garbage[: 8 << 20] = 255  # int32 -1 and NaN patterns too
    dense_crf_workspaces.give(garbage)
    for (unary, image, params), want in zip(cases, expected):
        torch.testing.assert_close(wsss_ext.dense_crf(unary, image, 5, **params), want, rtol=0, atol=0)
    assert dense_crf_workspaces.cached_bytes() == garbage.numel()  # large enough: reused, not replaced
    kept = weakref.ref(garbage)
    del garbage
    assert kept() is not None
    wsss_ext.empty_cache()
    assert kept() is None  # the buffer itself is gone, not only forgotten


def test_cpu_workspace_cache_serves_concurrent_calls_separately():
    from concurrent.futures import ThreadPoolExecutor

    unary, image = cam_unary(2, 21, 40, 50), torch.cat([photo(40, 50), random_image(1, 40, 50)])
    expected = wsss_ext.dense_crf(unary, image, 5)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: wsss_ext.dense_crf(unary, image, 5), range(16)))
    for result in results:
        torch.testing.assert_close(result, expected, rtol=0, atol=0)


def test_cpu_workspace_above_the_cap_takes_the_batched_lattice(monkeypatch):
    # The image-by-image workspace is sized for the worst case; past
    # _CPU_WORKSPACE_BYTES the batched lattice (buffers sized by the vertex
    # count) runs instead, with the same result.
    module = sys.modules["wsss_ext.ops.dense_crf"]
    unary, image = cam_unary(2, 21, 40, 50), torch.cat([photo(40, 50), random_image(1, 40, 50)])
    by_image = wsss_ext.dense_crf(unary, image, 5)
    calls = []
    monkeypatch.setattr(module, "_CPU_WORKSPACE_BYTES", 0)
    monkeypatch.setattr(module, "_mean_field_by_image", lambda *args: calls.append(args))
    torch.testing.assert_close(wsss_ext.dense_crf(unary, image, 5), by_image, rtol=0, atol=0)
    assert not calls


@pytest.mark.parametrize(
    "params",
    [
        dict(gaussian_sxy=0.3, gaussian_weight=3.0, bilateral_weight=0.0),
        dict(gaussian_sxy=0.25, gaussian_weight=3.0, bilateral_sxy=0.2, bilateral_srgb=13.0, bilateral_weight=5.0),
        dict(SCALE_12, gaussian_sxy=0.32),
    ],
    ids=["gaussian", "both", "scale12-edge"],
)
def test_kernels_narrower_than_the_lattice_are_the_identity(params):
    """Below a third of a pixel (d = 2; 0.24 for d = 5) no two pixels share or
    neighbour a lattice vertex: Kn q = q, which dense_crf then applies without
    a lattice. pydensecrf, which builds it, agrees."""
    module = sys.modules["wsss_ext.ops.dense_crf"]
    assert module._lattice_is_identity(2, 0.32) and not module._lattice_is_identity(2, 0.34)
    assert module._lattice_is_identity(5, 0.2) and not module._lattice_is_identity(5, 0.25)
    unary, image = cam_unary(2, 21, 41, 41), torch.cat([photo(41, 41), photo(41, 41, "coffee")])
    full = dict(AFFINITYNET, **params)
    assert_agrees_with_pydensecrf(unary, image, full)
    if full["bilateral_weight"] == 0 or full["bilateral_sxy"] < 0.24:
        weight = full["gaussian_weight"] + (full["bilateral_weight"] if full["bilateral_sxy"] < 0.24 else 0.0)
        q = torch.softmax(-unary, 1)
        for _ in range(10):
            q = torch.softmax(-unary + weight * q, 1)
        torch.testing.assert_close(wsss_ext.dense_crf(unary, image, 10, **full), q, rtol=0, atol=1e-5)


def test_result_does_not_depend_on_the_thread_count(tmp_path):
    # Both ways the CPU shares out images: whole images per thread (5 and 2
    # images), and one image shared by the threads (150 x 140).
    script = (
        "import torch, wsss_ext\n"
        "g = torch.Generator().manual_seed(0)\n"
        "out = []\n"
        "for b, h, w, sxy in ((5, 41, 41, 12.0), (2, 64, 48, 1.0), (1, 150, 140, 1.0)):\n"
        "    u = torch.rand(b, 21, h, w, generator=g) * 4\n"
        "    im = torch.randint(0, 256, (b, 3, h, w), generator=g, dtype=torch.uint8)\n"
        "    out.append(wsss_ext.dense_crf(u, im, 10, gaussian_sxy=3 / sxy, bilateral_sxy=80 / sxy))\n"
        "torch.save(out, 'q.pt')\n"
    )
    results = []
    for threads in ("1", "2"):
        env = dict(os.environ, OMP_NUM_THREADS=threads)
        subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, check=True)
        results.append(torch.load(tmp_path / "q.pt"))
    for one, two in zip(*results):
        assert torch.equal(one, two)


def test_cpu_kernels_follow_torch_threads():
    """Ops pass torch.get_num_threads() to the kernels (1 in DataLoader
    workers), busy machine or not."""
    from wsss_ext import _C

    previous = torch.get_num_threads()
    unary, image = cam_unary(2, 3, 9, 7), random_image(2, 9, 7)
    try:
        torch.set_num_threads(1)
        wsss_ext.dense_crf(unary, image, 2)
        assert _C.cpu_threads() == 1
        torch.set_num_threads(2)
        wsss_ext.dense_crf(unary, image, 2)
        assert _C.cpu_threads() == 2
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("device", DEVICES)
def test_one_label_gives_probability_one(device):
    got = wsss_ext.dense_crf(torch.rand(2, 1, 9, 7, device=device), random_image(2, 9, 7).to(device), 10)
    torch.testing.assert_close(got, torch.ones_like(got))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("height, width", [(1, 1), (1, 17), (23, 1), (2, 2)])
def test_tiny_images(device, height, width):
    unary, image = cam_unary(2, 3, height, width).to(device), random_image(2, height, width).to(device)
    got = wsss_ext.dense_crf(unary, image, 5, **SCALE_12)
    exact = dense_crf_dense(unary.cpu(), image.cpu(), 5, **SCALE_12)
    assert (got.cpu().argmax(1) == exact.argmax(1)).all()
    torch.testing.assert_close(got.sum(1), torch.ones_like(got[:, 0]))


def test_smoothing_removes_label_noise_on_flat_regions():
    image, labels, unary = piecewise_constant(60, 80, 4, seed=5)
    before = (torch.softmax(-unary, 1).argmax(1)[0] == labels).double().mean()
    after = (wsss_ext.dense_crf(unary, image, 10).argmax(1)[0] == labels).double().mean()
    assert after > before and after >= 0.97


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_unary_dtypes_compute_in_float32(dtype):
    unary, image = cam_unary(1, 21, 20, 24).to(dtype), random_image(1, 20, 24)
    got = wsss_ext.dense_crf(unary, image, 5)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, wsss_ext.dense_crf(unary.float(), image, 5), rtol=1e-5, atol=1e-6)


def test_unbatched_and_non_contiguous_inputs():
    unary, image = cam_unary(1, 5, 19, 21), random_image(1, 19, 21)
    expected = wsss_ext.dense_crf(unary, image, 5)
    torch.testing.assert_close(wsss_ext.dense_crf(unary[0], image[0], 5), expected[0])
    strided_unary = unary.contiguous(memory_format=torch.channels_last)
    strided_image = image.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    torch.testing.assert_close(wsss_ext.dense_crf(strided_unary, strided_image, 5), expected)


def test_empty_batch_gives_empty_output():
    got = wsss_ext.dense_crf(torch.zeros(0, 21, 8, 8), torch.zeros(0, 3, 8, 8, dtype=torch.uint8))
    assert got.shape == (0, 21, 8, 8) and got.dtype == torch.float32


def test_no_gradient_flows_through():
    unary = cam_unary(1, 3, 8, 8).requires_grad_()
    got = wsss_ext.dense_crf(unary, random_image(1, 8, 8), 2)
    assert not got.requires_grad


def test_custom_op_passes_opcheck():
    op = torch.ops.wsss_ext.dense_crf.default
    torch.library.opcheck(op, (cam_unary(2, 3, 9, 11), random_image(2, 9, 11), 2, 3.0, 3.0, 80.0, 13.0, 10.0))


# --- unary helpers and the module -----------------------------------------------------


def test_unary_from_probs_matches_pydensecrf():
    utils = pytest.importorskip("pydensecrf.utils", reason="pydensecrf2 is not installed (it may not build here)")
    probs = torch.softmax(torch.randn(5, 6, 7) * 4, 0)
    probs[0, 0, 0] = 0.0
    got = wsss_ext.unary_from_probs(probs)
    expected = torch.from_numpy(utils.unary_from_softmax(probs.numpy())).reshape(5, 6, 7)
    torch.testing.assert_close(got, expected)
    assert torch.isfinite(got).all()


@pytest.mark.parametrize("zero_unsure", [True, False])
def test_unary_from_labels_matches_pydensecrf(zero_unsure):
    utils = pytest.importorskip("pydensecrf.utils", reason="pydensecrf2 is not installed (it may not build here)")
    n_labels = 5
    if zero_unsure:  # pydensecrf: 0 is unsure, 1..n are the classes
        labels = torch.randint(0, n_labels + 1, (6, 7))
        got = wsss_ext.unary_from_labels(labels - 1, n_labels, 0.7, ignore_index=-1)
    else:
        labels = torch.randint(0, n_labels, (6, 7))
        got = wsss_ext.unary_from_labels(labels, n_labels, 0.7)
    expected = utils.unary_from_labels(labels.numpy(), n_labels, 0.7, zero_unsure=zero_unsure)
    torch.testing.assert_close(got, torch.from_numpy(expected).reshape(n_labels, 6, 7))


def test_unary_from_labels_batched_and_errors():
    labels = torch.tensor([[[0, 1], [2, 255]]])
    energies = wsss_ext.unary_from_labels(labels, 3, 0.9, ignore_index=255)
    assert energies.shape == (1, 3, 2, 2)
    torch.testing.assert_close(torch.softmax(-energies, 1)[0, :, 0, 0], torch.tensor([0.9, 0.05, 0.05]))
    torch.testing.assert_close(torch.softmax(-energies, 1)[0, :, 1, 1], torch.full((3,), 1 / 3))
    with pytest.raises(ValueError, match="labels must be in"):
        wsss_ext.unary_from_labels(labels, 3)
    with pytest.raises(ValueError, match="gt_prob"):
        wsss_ext.unary_from_labels(labels, 3, 1.0, ignore_index=255)
    with pytest.raises(TypeError, match="labels"):
        wsss_ext.unary_from_labels(labels.float(), 3)


def test_unary_from_probs_errors():
    with pytest.raises(ValueError, match="clip"):
        wsss_ext.unary_from_probs(torch.rand(2, 3, 3), clip=0)
    with pytest.raises(ValueError, match="NaN"):
        wsss_ext.unary_from_probs(torch.tensor([[[float("nan")]]]))
    with pytest.raises(TypeError, match="probs"):
        wsss_ext.unary_from_probs(torch.ones(2, 3, 3, dtype=torch.long))


def test_module_presets_match_the_function():
    crf = DenseCRF.preset("irnet", scale=2)
    assert "bilateral_sxy=25" in repr(crf) and crf.gaussian_sxy == 1.5
    unary, image = cam_unary(2, 4, 16, 16), random_image(2, 16, 16)
    expected = wsss_ext.dense_crf(unary, image, 10, **dict(IRNET, gaussian_sxy=1.5, bilateral_sxy=25.0))
    torch.testing.assert_close(crf(unary, image), expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="unknown preset"):
        DenseCRF.preset("sec")


# --- bad input ----------------------------------------------------------------------------


def _inputs(batch=1, n_labels=3, height=8, width=8):
    return cam_unary(batch, n_labels, height, width), random_image(batch, height, width)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda u, im: (u[0, 0], im), ValueError, "unary must be 4-D"),
        (lambda u, im: (u, im[0]), ValueError, "image must be 4-D"),
        (lambda u, im: (u.long(), im), TypeError, "unary must have dtype"),
        (lambda u, im: (u, im.float()), TypeError, "image must have dtype uint8"),
        (lambda u, im: (u.numpy(), im), TypeError, "unary must be a torch.Tensor"),
        (lambda u, im: (u, im.repeat(1, 2, 1, 1)[:, :4]), ValueError, "3 \\(RGB\\) channels"),
        (lambda u, im: (u, im[..., :7]), ValueError, "does not match"),
        (lambda u, im: (u.repeat(2, 1, 1, 1), im), ValueError, "does not match"),
        (lambda u, im: (u[:, :0], im), ValueError, "at least one label"),
        (lambda u, im: (u, im.to("meta")), ValueError, "image is on meta"),
        (lambda u, im: (u.index_put((torch.tensor([0]),), torch.tensor(float("nan"))), im), ValueError, "NaN"),
        (lambda u, im: (u.index_put((torch.tensor([0]),), torch.tensor(float("inf"))), im), ValueError, "infinite"),
    ],
)
def test_bad_tensors(make, error, match):
    unary, image = make(*_inputs())
    with pytest.raises(error, match=match):
        wsss_ext.dense_crf(unary, image)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(n_iters=-1), ValueError, "n_iters must be >= 0"),
        (dict(n_iters=2.5), TypeError, "n_iters must be an int"),
        (dict(gaussian_sxy=0.0), ValueError, "gaussian_sxy must be > 0"),
        (dict(bilateral_sxy=-3.0), ValueError, "bilateral_sxy must be > 0"),
        (dict(bilateral_srgb=0), ValueError, "bilateral_srgb must be > 0"),
        (dict(bilateral_srgb=float("nan")), ValueError, "bilateral_srgb must be finite"),
        (dict(gaussian_weight=-1.0), ValueError, "gaussian_weight must be >= 0"),
        (dict(bilateral_weight=float("inf")), ValueError, "bilateral_weight must be finite"),
        (dict(bilateral_weight="10"), TypeError, "bilateral_weight must be a real number"),
        (dict(gaussian_sxy=1e-8), ValueError, "gaussian_sxy=1e-08 is too small"),
        (dict(bilateral_srgb=1e-6), ValueError, "bilateral_srgb=1e-06 is too small"),
    ],
)
def test_bad_parameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        wsss_ext.dense_crf(*_inputs(), **kwargs)


def test_absurd_image_size_is_refused_before_allocating():
    # Expanded views: no memory behind them, so the check must come first.
    unary = torch.zeros(1, 1, 1, 1).expand(1, 2, 20000, 20000)
    image = torch.zeros(1, 1, 1, 1, dtype=torch.uint8).expand(1, 3, 20000, 20000)
    with pytest.raises(ValueError, match="too large"):
        wsss_ext.dense_crf(unary, image)


def test_compiled_checks_catch_bad_buffers():
    """The C++ safety net, reached through the raw bindings."""
    from wsss_ext import _C

    unary, image = _inputs()
    q = torch.empty(64, 8)
    with pytest.raises(ValueError, match="q must be"):
        _C.dense_crf_softmax(unary, None, torch.empty(63, 8), None)
    with pytest.raises(ValueError, match="q_out"):
        _C.dense_crf_softmax(unary, None, q, torch.empty(1, 3, 8, 7))
    lattice = {"dims": 5, "images": 1, "height": 8, "width": 8}
    with pytest.raises(ValueError, match="simplex"):
        _C.dense_crf_build_vertices(lattice, image, 80.0, 13.0)
    with pytest.raises(ValueError, match="image must have 3 channels"):
        _C.dense_crf_build_vertices(lattice, image[:, :2].contiguous(), 80.0, 13.0)
    out = torch.empty(unary.shape)
    row_bytes = _C.dense_crf_workspace_bytes(64, 3, [5])
    with pytest.raises(ValueError, match="workspace must be"):
        _C.dense_crf_mean_field(unary, image, out, torch.empty(1, row_bytes - 1, dtype=torch.uint8), 5,
                                [(5, 80.0, 13.0, 10.0)], 0.0)
    with pytest.raises(ValueError, match="kernel dims"):
        _C.dense_crf_mean_field(unary, image, out, torch.empty(1, row_bytes, dtype=torch.uint8), 5,
                                [(3, 80.0, 13.0, 10.0)], 0.0)


# --- CUDA ---------------------------------------------------------------------------------


@requires_cuda
@pytest.mark.parametrize("n_labels", [1, 2, 21, 81, 256])
def test_cuda_matches_cpu(n_labels):
    unary, image = cam_unary(3, n_labels, 45, 61), torch.cat([photo(45, 61), random_image(2, 45, 61)])
    cpu = wsss_ext.dense_crf(unary, image, 10)
    cuda = wsss_ext.dense_crf(unary.cuda(), image.cuda(), 10)
    assert (cuda.cpu().argmax(1) == cpu.argmax(1)).double().mean() >= 0.999
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=1e-4, atol=1e-4)


@requires_cuda
def test_cuda_repeats_exactly_and_uses_the_current_stream():
    unary, image = cam_unary(2, 21, 64, 64).cuda(), random_image(2, 64, 64).cuda()
    first = wsss_ext.dense_crf(unary, image, 10)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        second = wsss_ext.dense_crf(unary, image, 10)
    stream.synchronize()
    assert torch.equal(first, second)


@requires_cuda
def test_cuda_device_mismatch():
    unary, image = _inputs()
    with pytest.raises(ValueError, match="image is on cpu but unary is on cuda"):
        wsss_ext.dense_crf(unary.cuda(), image)
