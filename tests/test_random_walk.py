"""wsss_ext.random_walk and its affinities against the references' dense
method (wsss_ext.reference.random_walk_dense: build A, T = A^beta column-
normalised, T^n by squaring), on properties, gradients and bad input."""

import math
import sys

import pytest
import torch
import torch.nn.functional as F

import wsss_ext
from conftest import DEVICES, requires_cuda, with_nan
from wsss_ext.reference import dense_affinity_matrix, random_walk_dense


def random_features(batch, height, width, channels=8, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(batch, channels, max(2, height // 5), max(2, width // 5), generator=generator)
    smooth = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    return (smooth + 0.3 * torch.randn(batch, channels, height, width, generator=generator)).to(dtype)


def random_boundary(batch, height, width, seed=1, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 1, height, width, generator=generator).pow(3).to(dtype)


def random_scores(batch, channels, height, width, seed=2, dtype=torch.float64):
    return torch.rand(batch, channels, height, width, generator=torch.Generator().manual_seed(seed)).to(dtype)


def relative_error(ours, reference):
    return float((ours - reference).norm() / reference.norm())


# --- taps and affinities -----------------------------------------------------------------------


@pytest.mark.parametrize("radius, count", [(1, 1), (2, 9), (3, 25), (5, 69), (8, 193)])
def test_neighbour_offsets(radius, count):
    taps = wsss_ext.neighbour_offsets(radius)
    assert taps.dtype == torch.int64 and taps.shape == (count, 2)
    assert bool(((taps**2).sum(1) < radius**2).all())
    span = range(-radius, radius + 1)
    brute = {(dy, dx) for dy in span for dx in span if dy * dy + dx * dx < radius**2}
    assert {tuple(t) for t in taps.tolist()} == brute
    assert taps[count // 2].tolist() == [0, 0]
    assert taps.tolist() == sorted(taps.tolist())  # row-major: dy, then dx


def test_feature_affinity_by_brute_force():
    features = random_features(2, 7, 9, channels=5)
    affinity = wsss_ext.feature_affinity(features, radius=3)
    taps = wsss_ext.neighbour_offsets(3).tolist()
    for b in range(2):
        for t, (dy, dx) in enumerate(taps):
            for y in range(7):
                for x in range(9):
                    qy, qx = y + dy, x + dx
                    expected = 0.0
                    if 0 <= qy < 7 and 0 <= qx < 9:
                        expected = math.exp(-float((features[b, :, y, x] - features[b, :, qy, qx]).abs().mean()))
                    assert abs(float(affinity[b, t, y, x]) - expected) < 1e-12


def _segment_cells_brute(dy, dx):
    """Cells whose centre lies within distance 1 of the segment from (0, 0) to
    (dy, dx), restricted to its bounding box (IRNet's path), by geometry."""
    cells = []
    for cy in range(min(0, dy), max(0, dy) + 1):
        for cx in range(min(0, dx), max(0, dx) + 1):
            length = math.hypot(dy, dx)
            distance = abs(dy * cx - dx * cy) / length if length else math.hypot(cy, cx)
            if distance < 1:
                cells.append((cy, cx))
    return cells


def test_boundary_affinity_by_brute_force():
    boundary = random_boundary(1, 8, 10)
    affinity = wsss_ext.boundary_affinity(boundary, radius=5)
    for t, (dy, dx) in enumerate(wsss_ext.neighbour_offsets(5).tolist()):
        for y in range(8):
            for x in range(10):
                qy, qx = y + dy, x + dx
                if not (0 <= qy < 8 and 0 <= qx < 10):
                    expected = 0.0
                elif dy == dx == 0:
                    expected = 1.0  # IRNet's transition matrix has a 1 on its diagonal
                else:
                    expected = 1 - max(float(boundary[0, 0, y + cy, x + cx]) for cy, cx in _segment_cells_brute(dy, dx))
                assert abs(float(affinity[0, t, y, x]) - expected) < 1e-12


@pytest.mark.parametrize("make", ["feature", "boundary"])
def test_affinities_are_symmetric(make):
    if make == "feature":
        affinity = wsss_ext.feature_affinity(random_features(2, 11, 13))
    else:
        affinity = wsss_ext.boundary_affinity(random_boundary(2, 11, 13))
    matrix = dense_affinity_matrix(affinity)
    torch.testing.assert_close(matrix, matrix.transpose(1, 2), rtol=0, atol=0)


# --- against the dense method ------------------------------------------------------------------


@pytest.mark.parametrize("make, beta", [("feature", 8.0), ("boundary", 10.0)])
def test_matches_the_dense_method_in_float64(make, beta):
    batch, channels, height, width = 2, 21, 20, 30
    x = random_scores(batch, channels, height, width)
    if make == "feature":
        affinity = wsss_ext.feature_affinity(random_features(batch, height, width))
    else:
        affinity = wsss_ext.boundary_affinity(random_boundary(batch, height, width))
    ours = wsss_ext.random_walk(x, affinity, beta=beta, n_steps=256)
    reference = random_walk_dense(x, affinity, beta, 256)
    assert relative_error(ours, reference) <= 1e-4
    # Argmax identical apart from near-ties.
    top2 = reference.topk(2, dim=1).values
    decided = (top2[:, 0] - top2[:, 1]) > 1e-6 * top2[:, 0].abs()
    assert bool((ours.argmax(1) == reference.argmax(1))[decided].all())


def test_float32_walk_agrees_with_float64():
    x = random_scores(1, 21, 20, 30)
    affinity = wsss_ext.feature_affinity(random_features(1, 20, 30))
    ours = wsss_ext.random_walk(x.float(), affinity.float(), beta=8.0, n_steps=256)
    assert ours.dtype == torch.float32
    assert relative_error(ours.double(), random_walk_dense(x, affinity, 8.0, 256)) <= 1e-4


@pytest.mark.parametrize("n_steps", [1, 3, 7])
def test_few_steps_match_the_dense_method(n_steps):
    x = random_scores(2, 4, 9, 13)
    affinity = wsss_ext.feature_affinity(random_features(2, 9, 13), radius=3)
    ours = wsss_ext.random_walk(x, affinity, beta=2.5, n_steps=n_steps)
    assert (ours - random_walk_dense(x, affinity, 2.5, n_steps)).abs().max() <= 1e-6


def test_non_symmetric_affinities_follow_the_gather_definition():
    x = random_scores(1, 3, 6, 7)
    affinity = torch.rand(1, 25, 6, 7, dtype=torch.float64)
    ours = wsss_ext.random_walk(x, affinity, beta=1.0, n_steps=1)
    taps = wsss_ext.neighbour_offsets(3).tolist()
    expected = torch.zeros_like(x)
    for y in range(6):
        for col in range(7):
            inside = [(t, y + dy, col + dx) for t, (dy, dx) in enumerate(taps) if 0 <= y + dy < 6 and 0 <= col + dx < 7]
            total = sum(float(affinity[0, t, y, col]) for t, _, _ in inside)
            for t, qy, qx in inside:
                expected[0, :, y, col] += affinity[0, t, y, col] / total * x[0, :, qy, qx]
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours, random_walk_dense(x, affinity, 1.0, 1), rtol=1e-12, atol=1e-12)


# The CPU steps work on 64-byte strips (16 float32 or 8 float64 columns, the last one ragged),
# for blocks of up to 12 channels of a thread's channel group, over zero-padded maps.
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("height, width", [(4, 15), (5, 16), (3, 17), (7, 33), (20, 3)])
@pytest.mark.parametrize("channels", [1, 12, 13, 25])
def test_strip_and_channel_block_edges_match_the_dense_method(dtype, height, width, channels):
    x = random_scores(2, channels, height, width)
    affinity = wsss_ext.feature_affinity(random_features(2, height, width))
    ours = wsss_ext.random_walk(x.to(dtype), affinity.to(dtype), beta=4.0, n_steps=6)
    reference = random_walk_dense(x, affinity, 4.0, 6)
    assert (ours.double() - reference).abs().max() <= (1e-5 if dtype == torch.float32 else 1e-12)


@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_all_steps_in_one_call_equal_one_call_per_step(transpose, dtype):
    from wsss_ext import _C

    generator = torch.Generator().manual_seed(3)
    weights = torch.rand(2, 69, 11, 37, generator=generator).to(dtype)  # not normalised: any weights
    offsets = wsss_ext.neighbour_offsets(5).to(torch.int32)
    x = random_scores(2, 14, 11, 37).to(dtype)
    stepped = x
    for _ in range(5):
        out = torch.empty_like(x)
        _C.random_walk_step(weights, offsets, stepped, out, transpose, 4, 0, 1)
        stepped = out
    at_once = torch.empty_like(x)
    _C.random_walk_step(weights, offsets, x, at_once, transpose, 4, 0, 5)
    torch.testing.assert_close(at_once, stepped, rtol=1e-6 if dtype == torch.float32 else 1e-14, atol=0)
    with pytest.raises(ValueError, match="steps"):
        _C.random_walk_step(weights, offsets, x, at_once, transpose, 4, 0, 0)


def test_transpose_step_is_the_adjoint():
    from wsss_ext import _C

    generator = torch.Generator().manual_seed(4)
    weights = torch.rand(1, 69, 9, 21, generator=generator, dtype=torch.float64)
    offsets = wsss_ext.neighbour_offsets(5).to(torch.int32)
    x, g = random_scores(1, 3, 9, 21, seed=5), random_scores(1, 3, 9, 21, seed=6)
    px, ptg = torch.empty_like(x), torch.empty_like(g)
    _C.random_walk_step(weights, offsets, x, px, False, 4, 0, 3)
    _C.random_walk_step(weights, offsets, g, ptg, True, 4, 0, 3)
    torch.testing.assert_close((px * g).sum(), (x * ptg).sum(), rtol=1e-12, atol=0)


# --- properties -----------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_zero_boundary_is_uniform_neighbourhood_averaging(device):
    x = random_scores(1, 2, 12, 14).to(device)
    affinity = wsss_ext.boundary_affinity(torch.zeros(1, 1, 12, 14, dtype=torch.float64, device=device))
    ours = wsss_ext.random_walk(x, affinity, beta=10.0, n_steps=1).cpu()
    valid = dense_affinity_matrix(torch.ones(1, 69, 12, 14, dtype=torch.float64)) > 0  # [1, N, N]
    averaging = valid.double() / valid.sum(1, keepdim=True)
    expected = (x.cpu().reshape(1, 2, -1) @ averaging).reshape(x.shape)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_a_wall_of_boundary_stops_propagation(device):
    height, width, wall = 16, 24, 11
    boundary = torch.zeros(1, 1, height, width, dtype=torch.float64, device=device)
    boundary[..., wall] = 1.0
    x = torch.zeros(1, 1, height, width, dtype=torch.float64, device=device)
    x[..., 2:6, 2:6] = 1.0  # left of the wall
    walked = wsss_ext.random_walk(x, wsss_ext.boundary_affinity(boundary), beta=10.0, n_steps=256)
    assert float(walked[..., wall + 1 :].abs().max()) == 0.0
    assert float(walked[..., :wall].sum()) > 0.9 * float(x.sum())
    without_wall = wsss_ext.random_walk(x, wsss_ext.boundary_affinity(torch.zeros_like(boundary)), 10.0, 256)
    assert float(without_wall[..., wall + 1 :].sum()) > 0.1


@pytest.mark.parametrize("device", DEVICES)
def test_beta_zero_ignores_affinity_values(device):
    x = random_scores(1, 3, 10, 11).to(device)
    sharp = wsss_ext.random_walk(x, torch.rand(1, 69, 10, 11, dtype=torch.float64, device=device), beta=0.0, n_steps=4)
    flat = wsss_ext.random_walk(x, torch.ones(1, 69, 10, 11, dtype=torch.float64, device=device), beta=8.0, n_steps=4)
    torch.testing.assert_close(sharp, flat, rtol=1e-12, atol=1e-12)


def test_rows_of_the_normalised_transition_sum_to_one():
    from wsss_ext.ops.random_walk import _transition_weights

    affinity = wsss_ext.feature_affinity(random_features(2, 9, 12))
    weights = _transition_weights(affinity, 5, 8.0)
    torch.testing.assert_close(weights.sum(1), torch.ones(2, 9, 12, dtype=torch.float64))
    # ... and the walk of a constant is that constant.
    ones = torch.ones(2, 3, 9, 12, dtype=torch.float64)
    torch.testing.assert_close(wsss_ext.random_walk(ones, affinity, 8.0, 50), ones)


def test_isolated_pixels_keep_their_value():
    affinity = torch.zeros(1, 69, 6, 6, dtype=torch.float64)
    x = random_scores(1, 2, 6, 6)
    torch.testing.assert_close(wsss_ext.random_walk(x, affinity, 8.0, 10), x, rtol=0, atol=0)
    torch.testing.assert_close(random_walk_dense(x, affinity, 8.0, 10), x, rtol=0, atol=0)


# --- the one-pass C++ transition weights of plain eager CPU calls -------------------------------


def _fused_weights(affinity, radius, beta):
    from wsss_ext.ops.random_walk import _device_offsets, _fused_transition_weights

    return _fused_transition_weights(affinity.contiguous(), _device_offsets(radius, affinity.device, torch.int32), beta)


@pytest.mark.parametrize("beta", [0.0, 1.0, 2.5, 8.0, 10.0, 64.0, 65.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("radius, height, width", [(5, 9, 12), (5, 1, 3), (2, 7, 40), (3, 30, 2)])
def test_fused_weights_equal_the_torch_weights(beta, dtype, radius, height, width):
    """The C++ pass (integer betas by repeated squaring) against the differentiable
    torch formula, with isolated pixels (every in-map affinity 0) and values of
    taps outside the map that must be ignored."""
    from wsss_ext.ops.random_walk import _offsets, _transition_weights

    generator = torch.Generator().manual_seed(3)
    taps = len(_offsets(radius))
    affinity = torch.rand(2, taps, height, width, generator=generator, dtype=dtype) * 1.2
    affinity[0, :, 0, 0] = 0  # isolated
    affinity[1, :, -1, -1] = 0
    ours = _fused_weights(affinity, radius, beta)
    expected = _transition_weights(affinity, radius, beta)
    # Repeated squaring rounds once per product: a few ulps at beta 64 (log2 64 = 6 squarings).
    torch.testing.assert_close(ours, expected, rtol=1e-5 if dtype == torch.float32 else 1e-13, atol=1e-30)


def test_plain_eager_cpu_walks_take_the_fused_weights_and_agree_with_the_torch_path(monkeypatch):
    module = sys.modules["wsss_ext.ops.random_walk"]  # wsss_ext.ops.random_walk is the function
    x, affinity = random_scores(2, 3, 10, 11, dtype=torch.float32), wsss_ext.feature_affinity(random_features(2, 10, 11))
    affinity = affinity.float()
    assert module._fused_weights_apply(affinity)
    assert not module._fused_weights_apply(affinity.clone().requires_grad_())
    calls = []
    original = module._C.random_walk_weights
    monkeypatch.setattr(module._C, "random_walk_weights", lambda *args: calls.append(1) or original(*args), raising=False)
    fused = wsss_ext.random_walk(x, affinity, 8.0, 20)
    assert calls, "a plain eager CPU call computes its weights in C++"
    through_torch = wsss_ext.random_walk(x, affinity.clone().requires_grad_(), 8.0, 20)
    assert len(calls) == 1, "an affinity that needs a gradient takes the torch weights"
    torch.testing.assert_close(fused, through_torch.detach(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("spoil, match", [
    (lambda a: a.index_put_((torch.tensor(0), torch.tensor(0), torch.tensor(0), torch.tensor(0)),
                            torch.tensor(float("nan"))), "affinity contains NaN or inf"),   # tap 0 of pixel (0, 0): outside the map
    (lambda a: a.index_put_((torch.tensor(0), torch.tensor(3), torch.tensor(4), torch.tensor(5)),
                            torch.tensor(float("inf"))), "affinity contains NaN or inf"),
    (lambda a: a.index_put_((torch.tensor(0), torch.tensor(0), torch.tensor(0), torch.tensor(0)),
                            torch.tensor(-0.5)), "non-negative"),
    (lambda a: a.index_put_((torch.tensor(0), torch.tensor(1), torch.tensor(1), torch.tensor(1)),
                            torch.tensor(-0.5)).index_put_((torch.tensor(0), torch.tensor(2), torch.tensor(2),
                                                            torch.tensor(2)), torch.tensor(float("nan"))), "NaN"),
])
@pytest.mark.parametrize("needs_grad", [False, True])
def test_fused_and_torch_paths_refuse_the_same_affinities(spoil, match, needs_grad):
    x, affinity = _inputs()
    affinity = spoil(affinity)
    with pytest.raises(ValueError, match=match):
        wsss_ext.random_walk(x, affinity.requires_grad_(needs_grad))
    with wsss_ext.check_finite("off"):  # no check: the walk runs (NaN or not)
        assert wsss_ext.random_walk(x, affinity.detach(), 8.0, 2).shape == x.shape


def test_fused_weights_kernel_refuses_bad_buffers():
    from wsss_ext import _C

    offsets = wsss_ext.neighbour_offsets(2).int()
    affinity = torch.rand(1, 9, 4, 5)
    with pytest.raises(ValueError, match="weights"):
        _C.random_walk_weights(affinity, offsets, torch.empty(1, 9, 4, 4), 8.0)
    with pytest.raises(ValueError, match="offsets"):
        _C.random_walk_weights(affinity, offsets[:8], torch.empty_like(affinity), 8.0)
    with pytest.raises(ValueError, match="weights"):
        _C.random_walk_weights(affinity, offsets, affinity, 8.0)  # aliasing
    with pytest.raises(ValueError, match="beta"):
        _C.random_walk_weights(affinity, offsets, torch.empty_like(affinity), -1.0)
    with pytest.raises(ValueError, match="centre tap"):
        _C.random_walk_weights(affinity, offsets + 5, torch.empty_like(affinity), 8.0)
    with pytest.raises(ValueError, match="affinity must have dtype float32, float64"):
        _C.random_walk_weights(affinity.half(), offsets, torch.empty_like(affinity), 8.0)


@pytest.mark.parametrize("device", DEVICES)
def test_batch_equals_one_image_at_a_time(device):
    x = random_scores(3, 5, 13, 17, dtype=torch.float32).to(device)
    affinity = wsss_ext.feature_affinity(random_features(3, 13, 17, dtype=torch.float32).to(device))
    batched = wsss_ext.random_walk(x, affinity, n_steps=64)
    for b in range(3):
        one = wsss_ext.random_walk(x[b : b + 1], affinity[b : b + 1], n_steps=64)
        torch.testing.assert_close(batched[b : b + 1], one, rtol=0, atol=0)


@pytest.mark.parametrize("height, width", [(1, 1), (1, 12), (9, 1), (3, 3)])
def test_maps_smaller_than_the_neighbourhood(height, width):
    x = random_scores(1, 2, height, width)
    affinity = wsss_ext.feature_affinity(random_features(1, height, width))
    ours = wsss_ext.random_walk(x, affinity, beta=8.0, n_steps=32)
    torch.testing.assert_close(ours, random_walk_dense(x, affinity, 8.0, 32), rtol=1e-10, atol=1e-12)


def test_zero_steps_and_empty_inputs():
    x = random_scores(1, 2, 5, 5)
    affinity = wsss_ext.feature_affinity(random_features(1, 5, 5))
    same = wsss_ext.random_walk(x, affinity, n_steps=0)
    assert torch.equal(same, x) and same.data_ptr() != x.data_ptr()
    assert wsss_ext.random_walk(x[:, :0], affinity).shape == (1, 0, 5, 5)
    assert wsss_ext.random_walk(x[:0], affinity[:0]).shape == (0, 2, 5, 5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_compute_in_float32(dtype):
    x = random_scores(1, 4, 15, 16, dtype=torch.float32)
    affinity = wsss_ext.feature_affinity(random_features(1, 15, 16, dtype=torch.float32))
    out = wsss_ext.random_walk(x.to(dtype), affinity.to(dtype), n_steps=128)
    assert out.dtype == dtype and bool(torch.isfinite(out).all())
    expected = wsss_ext.random_walk(x.to(dtype).float(), affinity.to(dtype).float(), n_steps=128)
    torch.testing.assert_close(out.float(), expected, rtol=1e-2, atol=1e-2)


# --- gradients ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_steps", [1, 5, 17])
def test_gradcheck_x_and_affinity(n_steps):
    x = random_scores(2, 2, 5, 6).requires_grad_()
    affinity = (torch.rand(2, 25, 5, 6, dtype=torch.float64) + 0.1).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, a: wsss_ext.random_walk(x, a, 2.0, n_steps), (x, affinity))


def test_gradgradcheck_x():
    x = random_scores(1, 2, 4, 5).requires_grad_()
    affinity = torch.rand(1, 9, 4, 5, dtype=torch.float64) + 0.1
    assert torch.autograd.gradgradcheck(lambda x: wsss_ext.random_walk(x, affinity, 3.0, 4), (x,))


def test_gradients_through_the_affinity_helpers():
    x = random_scores(1, 2, 5, 6).requires_grad_()
    features = random_features(1, 5, 6, channels=3).requires_grad_()
    boundary = (random_boundary(1, 5, 6) * 0.8 + 0.1).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, f: wsss_ext.random_walk(x, wsss_ext.feature_affinity(f, radius=3), 2.0, 3), (x, features)
    )
    assert torch.autograd.gradcheck(
        lambda b: wsss_ext.random_walk(x.detach(), wsss_ext.boundary_affinity(b, radius=3), 2.0, 3), (boundary,)
    )


def test_gradient_equals_the_dense_autograd_gradient():
    x = random_scores(1, 3, 8, 9).requires_grad_()
    affinity = wsss_ext.feature_affinity(random_features(1, 8, 9)).requires_grad_()
    weight = torch.randn(1, 3, 8, 9, dtype=torch.float64)
    ours = torch.autograd.grad((wsss_ext.random_walk(x, affinity, 8.0, 64) * weight).sum(), (x, affinity))
    dense = torch.autograd.grad((random_walk_dense(x, affinity, 8.0, 64) * weight).sum(), (x, affinity))
    for mine, theirs in zip(ours, dense):
        torch.testing.assert_close(mine, theirs, rtol=1e-8, atol=1e-10)


def test_custom_op_passes_opcheck():
    from wsss_ext.ops.random_walk import _transition_weights

    affinity = torch.rand(2, 9, 5, 6, dtype=torch.float64)
    weights = _transition_weights(affinity, 2, 3.0).requires_grad_()
    x = random_scores(2, 3, 5, 6).requires_grad_()
    offsets = wsss_ext.neighbour_offsets(2).to(torch.int32)
    for transpose in (False, True):
        torch.library.opcheck(torch.ops.wsss_ext.random_walk.default, (weights, x, offsets, 4, 1, transpose))


# --- the pipelines ---------------------------------------------------------------------------------


def test_cam_background_and_labels():
    cams = torch.tensor([[[[0.9, 0.2]], [[0.1, 0.3]]]])  # B=1, C=2, 1 x 2
    with_bg = wsss_ext.cam_background(cams, alpha=2.0)
    torch.testing.assert_close(with_bg[:, 0], torch.tensor([[[0.1**2, 0.7**2]]]))
    assert wsss_ext.walk_to_labels(with_bg, (1, 2)).tolist() == [[[1, 0]]]
    # IRNet: scores over the image's max, a background channel at the threshold.
    scores = torch.tensor([[[[1.0, 0.2]], [[0.1, 0.24]]]])
    assert wsss_ext.walk_to_labels(scores, (1, 2), bg_threshold=0.25).tolist() == [[[1, 0]]]


def test_pipelines_equal_their_parts():
    cams = random_scores(1, 3, 12, 16, dtype=torch.float32)
    features = random_features(1, 12, 16, dtype=torch.float32)
    boundary = random_boundary(1, 12, 16, dtype=torch.float32)
    psa = wsss_ext.affinitynet_random_walk(cams, features)
    expected = wsss_ext.random_walk(wsss_ext.cam_background(cams), wsss_ext.feature_affinity(features), 8.0, 256)
    torch.testing.assert_close(psa, expected, rtol=0, atol=0)
    irnet = wsss_ext.irnet_random_walk(cams, boundary[:, 0])
    expected = wsss_ext.random_walk(cams * (1 - boundary), wsss_ext.boundary_affinity(boundary), 10.0, 256)
    torch.testing.assert_close(irnet, expected, rtol=0, atol=0)
    assert wsss_ext.walk_to_labels(irnet, (48, 64), bg_threshold=0.25).shape == (1, 48, 64)


def test_walk_spreads_a_seed_over_its_region():
    # Two regions of different features; a CAM seed in each region's corner
    # spreads over its own region only.
    features = torch.zeros(1, 4, 20, 20)
    features[:, :, :, 10:] = 3.0
    cams = torch.zeros(1, 2, 20, 20)
    cams[0, 0, 2:4, 2:4] = 1.0
    cams[0, 1, 16:18, 16:18] = 1.0
    walked = wsss_ext.random_walk(cams, wsss_ext.feature_affinity(features), beta=8.0, n_steps=256)
    labels = walked.argmax(1)[0]
    assert bool((labels[:, :10] == 0).all()) and bool((labels[:, 10:] == 1).all())


# --- bad input -----------------------------------------------------------------------------------------


def _inputs():
    return random_scores(1, 3, 8, 9, dtype=torch.float32), torch.rand(1, 69, 8, 9)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda x, a: (x, a[..., :8]), ValueError, "same batch size and H x W"),
        (lambda x, a: (x.repeat(2, 1, 1, 1), a), ValueError, "same batch size and H x W"),
        (lambda x, a: (x, a[:, :68]), ValueError, "68 taps"),
        (lambda x, a: (x, -a), ValueError, "non-negative"),
        (lambda x, a: (x[0], a), ValueError, "x must be 4-D"),
        (lambda x, a: (x, a.long()), TypeError, "affinity must have dtype"),
        (lambda x, a: (x.numpy(), a), TypeError, "x must be a torch.Tensor"),
        (lambda x, a: (with_nan(x), a), ValueError, "x contains NaN"),
        (lambda x, a: (x, with_nan(a)), ValueError, "affinity contains NaN"),
        (lambda x, a: (x, a.to("meta")), ValueError, "affinity is on meta"),
    ],
)
def test_bad_tensors(make, error, match):
    x, affinity = make(*_inputs())
    with pytest.raises(error, match=match):
        wsss_ext.random_walk(x, affinity)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(n_steps=-1), ValueError, "n_steps must be >= 0"),
        (dict(n_steps=2.0), TypeError, "n_steps must be an int"),
        (dict(beta=-1.0), ValueError, "beta must be >= 0"),
        (dict(beta=float("inf")), ValueError, "beta must be finite"),
    ],
)
def test_bad_parameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        wsss_ext.random_walk(*_inputs(), **kwargs)


def test_bad_affinity_helper_input():
    with pytest.raises(ValueError, match="radius must be >= 1"):
        wsss_ext.neighbour_offsets(0)
    with pytest.raises(ValueError, match="radius must be <= 64"):
        wsss_ext.feature_affinity(torch.rand(1, 2, 4, 4), radius=1000)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        wsss_ext.boundary_affinity(torch.rand(1, 1, 4, 4) + 1)
    with pytest.raises(ValueError, match="one channel"):
        wsss_ext.boundary_affinity(torch.rand(1, 2, 4, 4))
    with pytest.raises(ValueError, match="features contains NaN"):
        wsss_ext.feature_affinity(torch.full((1, 2, 4, 4), float("nan")))


def test_compiled_checks_catch_bad_buffers():
    """The C++ safety net, reached through the raw bindings."""
    from wsss_ext import _C

    x = torch.rand(1, 3, 8, 9)
    weights = torch.rand(1, 69, 8, 9)
    offsets = wsss_ext.neighbour_offsets().to(torch.int32)
    with pytest.raises(ValueError, match="offsets must have shape"):
        _C.random_walk_step(weights, offsets[:68], x, torch.empty_like(x))
    with pytest.raises(ValueError, match="offsets must have dtype int32"):
        _C.random_walk_step(weights, offsets.long(), x, torch.empty_like(x))
    with pytest.raises(ValueError, match="y shares memory with x"):
        _C.random_walk_step(weights, offsets, x, x)
    with pytest.raises(ValueError, match="x must have dtype float32"):
        _C.random_walk_step(weights, offsets, x.double(), torch.empty_like(x))
    with pytest.raises(ValueError, match="grad_y must have shape"):
        _C.random_walk_weight_grad(x[:, :2], x, offsets, torch.zeros_like(weights))
    # Offsets far outside the map read nothing (no out-of-bounds access).
    far = torch.full((69, 2), 2**30, dtype=torch.int32)
    y = torch.empty_like(x)
    _C.random_walk_step(weights, far, x, y)
    assert float(y.abs().max()) == 0.0


# --- CUDA ------------------------------------------------------------------------------------------------


@requires_cuda
@pytest.mark.parametrize("channels", [1, 4, 21, 81])
@pytest.mark.parametrize("height, width", [(94, 125), (20, 30), (3, 70)])
def test_cuda_matches_cpu(channels, height, width):
    x = random_scores(2, channels, height, width, dtype=torch.float32)
    affinity = wsss_ext.boundary_affinity(random_boundary(2, height, width, dtype=torch.float32))
    cpu = wsss_ext.random_walk(x, affinity, 10.0, 256)
    cuda = wsss_ext.random_walk(x.cuda(), affinity.cuda(), 10.0, 256)
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=1e-4, atol=1e-5)


@requires_cuda
@pytest.mark.parametrize("radius", [3, 5, 12, 30])
def test_cuda_matches_cpu_for_other_radii_and_gradients(radius):
    # radius 30 is past the shared-memory tile: the global-memory path.
    x = random_scores(1, 3, 40, 50).requires_grad_()
    affinity = wsss_ext.feature_affinity(random_features(1, 40, 50), radius=radius).requires_grad_()
    weight = torch.randn(1, 3, 40, 50, dtype=torch.float64)
    results = []
    for device in ("cpu", "cuda"):
        xd, ad = x.detach().to(device).requires_grad_(), affinity.detach().to(device).requires_grad_()
        out = wsss_ext.random_walk(xd, ad, 8.0, 20)
        gx, ga = torch.autograd.grad((out * weight.to(device)).sum(), (xd, ad))
        results.append([out.cpu(), gx.cpu(), ga.cpu()])
    for cpu, cuda in zip(*results):
        torch.testing.assert_close(cuda, cpu, rtol=1e-10, atol=1e-12)


@requires_cuda
def test_cuda_device_mismatch():
    x, affinity = _inputs()
    with pytest.raises(ValueError, match="x is on cpu but affinity is on cuda"):
        wsss_ext.random_walk(x, affinity.cuda())
