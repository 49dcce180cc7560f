"""wsss_ext.pamr against the published method (wsss_ext.reference.pamr_unfold,
which stacks every tap as 1-stage-wseg does), on properties, gradients and
bad input."""

import sys

import pytest
import torch
import torch.nn.functional as F

import wsss_ext
from conftest import DEVICES, requires_cuda, with_nan
from wsss_ext.nn import PAMR
from wsss_ext.reference import pamr_affinity_unfold, pamr_unfold

PAPER_DILATIONS = (1, 2, 4, 8, 12, 24)


def smooth_image(batch, height, width, channels=3, seed=0):
    """Images with structure at several scales (coarse blobs, an edge, pixel
    noise), so that affinities vary across the map."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, channels, max(2, height // 6), max(2, width // 6), generator=generator)
    image = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    image[..., : width // 3] += 0.5
    return image + 0.05 * torch.rand(batch, channels, height, width, generator=generator)


def soft_masks(batch, channels, height, width, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.softmax(3 * torch.randn(batch, channels, height, width, generator=generator), dim=1)


def neighbour_mean(mask, dilations):
    """The mean over every tap, by explicit clamped indexing (an oracle for a
    constant image, whose weights are uniform)."""
    height, width = mask.shape[-2:]
    rows, cols = torch.arange(height), torch.arange(width)
    total, count = torch.zeros_like(mask), 0
    for d in dilations:
        for dy in (-d, 0, d):
            for dx in (-d, 0, d):
                if dy == dx == 0:
                    continue
                sy, sx = (rows + dy).clamp(0, height - 1), (cols + dx).clamp(0, width - 1)
                total += mask[..., sy[:, None], sx[None, :]]
                count += 1
    return total / count


# --- against the published method ------------------------------------------------------------


def test_matches_reference_at_the_issue_size():
    image, mask = smooth_image(2, 33, 47), soft_masks(2, 21, 33, 47)
    ours = wsss_ext.pamr(image, mask, PAPER_DILATIONS, n_iters=10)
    assert ours.dtype == torch.float32
    assert (ours - pamr_unfold(image, mask, PAPER_DILATIONS, 10)).abs().max() <= 1e-5
    exact = pamr_unfold(image.double(), mask.double(), PAPER_DILATIONS, 10)
    assert (ours.double() - exact).abs().max() <= 1e-5


def test_affinity_weights_match_reference():
    image = smooth_image(2, 20, 26, channels=5)
    ours = wsss_ext.pamr_affinity(image, PAPER_DILATIONS, sigma=0.1)
    reference = pamr_affinity_unfold(image.double(), PAPER_DILATIONS, 0.1)
    assert ours.shape == (2, 48, 20, 26)
    assert (ours.double() - reference).abs().max() <= 1e-6
    torch.testing.assert_close(ours.sum(1), torch.ones(2, 20, 26))


@pytest.mark.parametrize("dilations", [(1,), (3,), (2, 2, 5), (1, 2, 4, 8, 12, 24)])
@pytest.mark.parametrize("n_iters", [1, 3])
@pytest.mark.parametrize("sigma", [0.1, 0.7])
def test_matches_reference_across_settings(dilations, n_iters, sigma):
    image, mask = smooth_image(1, 17, 13, channels=2), soft_masks(1, 4, 17, 13)
    ours = wsss_ext.pamr(image.double(), mask.double(), dilations, n_iters, sigma)
    reference = pamr_unfold(image.double(), mask.double(), dilations, n_iters, sigma)
    assert (ours - reference).abs().max() <= 1e-12


@pytest.mark.parametrize("height, width", [(1, 1), (1, 9), (7, 1), (2, 2), (5, 7)])
def test_maps_smaller_than_the_largest_dilation(height, width):
    image, mask = smooth_image(2, height, width), soft_masks(2, 3, height, width)
    ours = wsss_ext.pamr(image.double(), mask.double(), PAPER_DILATIONS, 10)
    reference = pamr_unfold(image.double(), mask.double(), PAPER_DILATIONS, 10)
    assert (ours - reference).abs().max() <= 1e-12


# The CPU forward steps work on 64-byte strips (16 float32 or 8 float64 columns, the last one
# ragged) for blocks of up to 12 channels (21 -> 10 + 11, 25 -> 8 + 8 + 9), with replicated margins
# as wide as the largest dilation or the row, whichever is smaller.
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("height, width", [(3, 15), (5, 16), (4, 17), (2, 33), (9, 40), (30, 3)])
@pytest.mark.parametrize("channels", [1, 9, 13, 21, 25])
def test_strip_and_channel_block_edges_match_reference(dtype, height, width, channels):
    image, mask = smooth_image(2, height, width), soft_masks(2, channels, height, width)
    ours = wsss_ext.pamr(image.to(dtype), mask.to(dtype), (1, 3, 24), n_iters=4)
    reference = pamr_unfold(image.double(), mask.double(), (1, 3, 24), 4)
    assert (ours.double() - reference).abs().max() <= (1e-5 if dtype == torch.float32 else 1e-12)


@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_all_steps_in_one_call_equal_one_call_per_step(transpose, dtype):
    from wsss_ext import _C

    image, mask = smooth_image(2, 11, 37), soft_masks(2, 5, 11, 37).to(dtype)
    weights = wsss_ext.pamr_affinity(image.to(dtype), PAPER_DILATIONS)
    stepped = mask
    for _ in range(5):
        out = torch.empty_like(mask)
        _C.pamr_propagate(weights, stepped, out, list(PAPER_DILATIONS), transpose, 0, 1)
        stepped = out
    at_once = torch.empty_like(mask)
    _C.pamr_propagate(weights, mask, at_once, list(PAPER_DILATIONS), transpose, 0, 5)
    torch.testing.assert_close(at_once, stepped, rtol=0, atol=1e-6 if dtype == torch.float32 else 1e-14)
    with pytest.raises(ValueError, match="steps"):
        _C.pamr_propagate(weights, mask, at_once, list(PAPER_DILATIONS), transpose, 0, 0)


# --- properties ---------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_masks_summing_to_one_keep_summing_to_one(device):
    image, mask = smooth_image(3, 40, 30).to(device), soft_masks(3, 21, 40, 30).to(device)
    refined = wsss_ext.pamr(image, mask)
    torch.testing.assert_close(refined.sum(1), torch.ones(3, 40, 30, device=device), rtol=0, atol=1e-5)
    assert refined.min() >= 0


@pytest.mark.parametrize("device", DEVICES)
def test_constant_image_gives_the_neighbour_mean(device):
    image = torch.full((2, 3, 19, 23), 0.3, device=device)
    mask = soft_masks(2, 5, 19, 23).to(device)
    weights = wsss_ext.pamr_affinity(image)
    torch.testing.assert_close(weights, torch.full_like(weights, 1 / 48))
    refined = wsss_ext.pamr(image, mask.double(), n_iters=1)
    torch.testing.assert_close(refined.cpu(), neighbour_mean(mask.double().cpu(), PAPER_DILATIONS))


def test_per_channel_affine_change_of_the_image_changes_nothing():
    # Only the 1e-8 next to sigma * std breaks the invariance, far below the bounds.
    image, mask = smooth_image(2, 31, 29), soft_masks(2, 6, 31, 29)
    scale = torch.tensor([255.0, -3.0, 0.5]).view(1, 3, 1, 1)
    shift = torch.tensor([-10.0, 4.0, 1.0]).view(1, 3, 1, 1)
    base = wsss_ext.pamr(image, mask)
    torch.testing.assert_close(wsss_ext.pamr(image * scale + shift, mask), base, rtol=0, atol=2e-5)
    image, mask = image.double(), mask.double()
    torch.testing.assert_close(wsss_ext.pamr(image * scale + shift, mask), wsss_ext.pamr(image, mask), rtol=0,
                               atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_zero_iterations_is_the_identity(device):
    image, mask = smooth_image(2, 9, 8).to(device), soft_masks(2, 4, 9, 8).to(device)
    refined = wsss_ext.pamr(image, mask, n_iters=0)
    assert torch.equal(refined, mask) and refined.data_ptr() != mask.data_ptr()


@pytest.mark.parametrize("device", DEVICES)
def test_batch_equals_one_sample_at_a_time(device):
    image, mask = smooth_image(4, 21, 25).to(device), soft_masks(4, 7, 21, 25).to(device)
    batched = wsss_ext.pamr(image, mask)
    for b in range(4):
        torch.testing.assert_close(batched[b], wsss_ext.pamr(image[b], mask[b]), rtol=0, atol=0)


def test_any_number_of_image_channels():
    image, mask = smooth_image(1, 15, 16, channels=7), soft_masks(1, 3, 15, 16)
    torch.testing.assert_close(wsss_ext.pamr(image, mask), pamr_unfold(image, mask), rtol=0, atol=1e-5)
    gray = image[:, :1]
    torch.testing.assert_close(wsss_ext.pamr(gray, mask), pamr_unfold(gray, mask), rtol=0, atol=1e-5)


def test_refinement_moves_a_blurry_boundary_onto_the_image_edge():
    # Two flat regions split at column 20; the mask's boundary is a soft ramp
    # centred 6 columns off. PAMR must pull the argmax boundary towards the edge.
    height, width, edge = 32, 40, 20
    image = torch.zeros(1, 3, height, width)
    image[..., edge:] = 1.0
    image += 0.01 * torch.rand(image.shape, generator=torch.Generator().manual_seed(0))
    columns = torch.arange(width, dtype=torch.float32)
    foreground = torch.sigmoid((columns - (edge - 6)) / 3).expand(height, width)
    mask = torch.stack([1 - foreground, foreground])[None]
    truth = (columns >= edge).expand(height, width)
    before = (mask.argmax(1)[0] == truth).float().mean()
    after = (wsss_ext.pamr(image, mask).argmax(1)[0] == truth).float().mean()
    assert before <= 0.9 and after >= 0.99


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_compute_in_float32(dtype):
    image, mask = smooth_image(2, 24, 26), soft_masks(2, 5, 24, 26)
    image[..., :8, :8] = 0.25  # a flat patch: std 0, where fp16 arithmetic would divide 0 by 0
    refined = wsss_ext.pamr(image.to(dtype), mask.to(dtype))
    assert refined.dtype == dtype and bool(torch.isfinite(refined).all())
    expected = wsss_ext.pamr(image.to(dtype).float(), mask.to(dtype).float())
    tolerance = 1e-3 if dtype == torch.float16 else 8e-3
    torch.testing.assert_close(refined.float(), expected, rtol=0, atol=tolerance)


def test_unbatched_and_non_contiguous_inputs():
    image, mask = smooth_image(2, 12, 14), soft_masks(2, 3, 12, 14)
    torch.testing.assert_close(wsss_ext.pamr(image[0], mask[0]), wsss_ext.pamr(image, mask)[0], rtol=0, atol=0)
    transposed = wsss_ext.pamr(image.transpose(2, 3), mask.transpose(2, 3))
    expected = wsss_ext.pamr(image.transpose(2, 3).contiguous(), mask.transpose(2, 3).contiguous())
    torch.testing.assert_close(transposed, expected, rtol=0, atol=0)


@pytest.mark.parametrize(
    "batch, channels, height, width", [(0, 3, 8, 8), (2, 0, 8, 8), (2, 3, 0, 8), (2, 3, 8, 0)]
)
def test_empty_inputs_give_empty_outputs(batch, channels, height, width):
    image, mask = torch.rand(batch, 3, height, width), torch.rand(batch, channels, height, width)
    assert wsss_ext.pamr(image, mask).shape == mask.shape


# --- gradients --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "height, width, dilations", [(6, 7, (1, 2)), (1, 1, (1,)), (4, 3, (1, 5)), (2, 9, (1, 4, 24)), (3, 19, (2, 9))]
)
def test_gradcheck_on_the_mask(height, width, dilations):
    image = smooth_image(2, height, width).double()
    mask = torch.rand(2, 3, height, width, dtype=torch.float64, requires_grad=True)
    fn = lambda m: wsss_ext.pamr(image, m, dilations, n_iters=3)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (mask,))
    assert torch.autograd.gradgradcheck(fn, (mask,))


def test_gradient_equals_the_reference_autograd_gradient():
    image = smooth_image(2, 13, 17).double()
    mask = soft_masks(2, 4, 13, 17).double().requires_grad_()
    weight = torch.randn(2, 4, 13, 17, dtype=torch.float64)
    (ours,) = torch.autograd.grad((wsss_ext.pamr(image, mask) * weight).sum(), mask)
    (reference,) = torch.autograd.grad((pamr_unfold(image, mask) * weight).sum(), mask)
    torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-12)


def test_float32_gradient_flows_to_a_half_mask():
    image, mask = smooth_image(1, 10, 10), soft_masks(1, 3, 10, 10).half().requires_grad_()
    wsss_ext.pamr(image, mask).float().sum().backward()
    assert mask.grad.dtype == torch.float16 and bool(torch.isfinite(mask.grad).all())
    # d sum(P^n m) / dm = (P^T)^n 1, the column sums of a row-stochastic
    # matrix power, whose mean over the pixels is exactly 1.
    torch.testing.assert_close(mask.grad.float().mean(), torch.tensor(1.0), rtol=1e-3, atol=0)


def test_no_gradient_flows_to_the_image():
    image = smooth_image(1, 8, 8).requires_grad_()
    assert not wsss_ext.pamr(image, soft_masks(1, 2, 8, 8)).requires_grad


def test_custom_ops_pass_opcheck():
    image, mask = smooth_image(2, 9, 11), soft_masks(2, 3, 9, 11)
    torch.library.opcheck(torch.ops.wsss_ext.pamr_affinity.default, (image, [1, 2], 0.1))
    weights = wsss_ext.pamr_affinity(image, (1, 2))
    for transpose in (False, True):
        args = (weights.double(), mask.double().requires_grad_(), [1, 2], 3, transpose)
        torch.library.opcheck(torch.ops.wsss_ext.pamr_propagate.default, args)


# --- the module and the resize helper ---------------------------------------------------------


def test_resize_helper_is_bilinear_with_aligned_corners():
    image = torch.rand(2, 3, 321, 321)
    resized = wsss_ext.resize_image_to_mask(image, torch.empty(2, 21, 81, 81))
    torch.testing.assert_close(resized, F.interpolate(image, size=(81, 81), mode="bilinear", align_corners=True))
    assert wsss_ext.resize_image_to_mask(image[0].to(torch.uint8), (40, 50)).shape == (3, 40, 50)


def test_module_resizes_the_image_and_equals_the_function():
    images, masks = smooth_image(2, 161, 161), soft_masks(2, 21, 41, 41)
    module = PAMR(n_iters=5, dilations=(1, 2, 4), sigma=0.2)
    expected = wsss_ext.pamr(wsss_ext.resize_image_to_mask(images, masks), masks, (1, 2, 4), 5, 0.2)
    torch.testing.assert_close(module(images, masks), expected, rtol=0, atol=0)
    assert "dilations=(1, 2, 4)" in repr(module)


# --- bad input --------------------------------------------------------------------------------


def _inputs():
    return smooth_image(2, 8, 9), soft_masks(2, 3, 8, 9)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda im, m: (im, m[..., :8]), ValueError, "same batch size and H x W"),
        (lambda im, m: (im[:1], m), ValueError, "same batch size and H x W"),
        (lambda im, m: (im, m[0]), ValueError, "both be 4-D"),
        (lambda im, m: (im[0, 0], m[0, 0]), ValueError, "both be 4-D"),
        (lambda im, m: (im[:, :0], m), ValueError, "at least one channel"),
        (lambda im, m: (im.long(), m), TypeError, "image must have dtype"),
        (lambda im, m: (im, m.long()), TypeError, "mask must have dtype"),
        (lambda im, m: (im.numpy(), m), TypeError, "image must be a torch.Tensor"),
        (lambda im, m: (im, m.to("meta")), ValueError, "mask is on meta"),
        (lambda im, m: (with_nan(im), m), ValueError, "image contains NaN"),
        (lambda im, m: (im, with_nan(m)), ValueError, "mask contains NaN"),
        (lambda im, m: (im.index_fill(3, torch.tensor([0]), float("inf")), m), ValueError, "image contains NaN or inf"),
    ],
)
def test_bad_tensors(make, error, match):
    image, mask = make(*_inputs())
    with pytest.raises(error, match=match):
        wsss_ext.pamr(image, mask)


@pytest.mark.parametrize("host_maxima", [True, False])
def test_both_image_checks_refuse_the_same_images(host_maxima, monkeypatch):
    """Eager CPU images are checked by one C++ pass (max |image|, inf on NaN);
    CUDA and traced calls by torch ops: the same refusals."""
    if not host_maxima:
        monkeypatch.setattr(sys.modules["wsss_ext.ops.pamr"], "host_max_abs", lambda tensor: None)
    image, mask = _inputs()
    for spoiled, match in ((with_nan(image), "image contains NaN or inf"),
                           (image.index_fill(2, torch.tensor([1]), -float("inf")), "image contains NaN or inf"),
                           (image / image.abs().max() * 3e38, "image values must be within"),
                           (image.double() / image.abs().max() * 1e308, "image values must be within")):
        with pytest.raises(ValueError, match=match):
            wsss_ext.pamr(spoiled, mask)
    assert wsss_ext.pamr(image * 1e30, mask).isfinite().all()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(dilations=()), ValueError, "dilations must not be empty"),
        (dict(dilations=(1, 0)), ValueError, "dilations must be positive"),
        (dict(dilations=(-2,)), ValueError, "dilations must be positive"),
        (dict(dilations=(2**31,)), ValueError, "at most 2\\*\\*30"),
        (dict(dilations=tuple(range(1, 66))), ValueError, "at most 64 dilations"),
        (dict(dilations=4), TypeError, "dilations must be a sequence"),
        (dict(dilations=(1.5,)), TypeError, "must be an int"),
        (dict(n_iters=-1), ValueError, "n_iters must be >= 0"),
        (dict(n_iters=2.0), TypeError, "n_iters must be an int"),
        (dict(sigma=0.0), ValueError, "sigma must be > 0"),
        (dict(sigma=-0.1), ValueError, "sigma must be > 0"),
        (dict(sigma=float("nan")), ValueError, "sigma must be finite"),
    ],
)
def test_bad_parameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        wsss_ext.pamr(*_inputs(), **kwargs)


def test_compiled_checks_catch_bad_buffers():
    """The C++ safety net, reached through the raw bindings."""
    from wsss_ext import _C

    image, mask = _inputs()
    weights = torch.empty(2, 16, 8, 9)
    with pytest.raises(ValueError, match="weights must have shape"):
        _C.pamr_affinity(image, torch.empty(2, 8, 8, 9), [1, 2], 0.1)
    with pytest.raises(ValueError, match="dilations must be in"):
        _C.pamr_affinity(image, weights, [1, 0], 0.1)
    with pytest.raises(ValueError, match="sigma must be finite"):
        _C.pamr_affinity(image, weights, [1, 2], float("inf"))
    _C.pamr_affinity(image, weights, [1, 2], 0.1)
    with pytest.raises(ValueError, match="24 tap planes"):
        _C.pamr_propagate(weights, mask, torch.empty_like(mask), [1, 2, 3])
    with pytest.raises(ValueError, match="mask must have dtype float32"):
        _C.pamr_propagate(weights, mask.double(), torch.empty_like(mask), [1, 2])
    with pytest.raises(ValueError, match="out shares memory with mask"):
        _C.pamr_propagate(weights, mask, mask, [1, 2])
    with pytest.raises(ValueError, match="out must have shape"):
        _C.pamr_propagate(weights, mask, torch.empty(2, 3, 8, 8), [1, 2])


# --- CUDA ---------------------------------------------------------------------------------------


@requires_cuda
@pytest.mark.parametrize("channels", [1, 3, 4, 21, 81])
@pytest.mark.parametrize("height, width", [(81, 81), (33, 47), (5, 3)])
def test_cuda_matches_cpu(channels, height, width):
    image, mask = smooth_image(2, height, width), soft_masks(2, channels, height, width)
    cpu = wsss_ext.pamr(image, mask)
    cuda = wsss_ext.pamr(image.cuda(), mask.cuda())
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=0, atol=1e-6)
    torch.testing.assert_close(wsss_ext.pamr_affinity(image.cuda()).cpu(), wsss_ext.pamr_affinity(image), rtol=0,
                               atol=1e-6)


@requires_cuda
def test_cuda_gradient_matches_cpu():
    image = smooth_image(2, 30, 20).double()
    mask = soft_masks(2, 5, 30, 20).double()
    weight = torch.randn(2, 5, 30, 20, dtype=torch.float64)
    grads = []
    for device in ("cpu", "cuda"):
        m = mask.to(device).requires_grad_()
        (wsss_ext.pamr(image.to(device), m) * weight.to(device)).sum().backward()
        grads.append(m.grad.cpu())
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-12, atol=1e-12)
    m = mask[:, :, :6, :5].cuda().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: wsss_ext.pamr(image[:, :, :6, :5].cuda(), x, (1, 4), 2), (m,))


@requires_cuda
def test_cuda_half_precision_and_current_stream():
    image, mask = smooth_image(2, 40, 40).cuda(), soft_masks(2, 21, 40, 40).cuda()
    first = wsss_ext.pamr(image, mask)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        second = wsss_ext.pamr(image, mask)
    stream.synchronize()
    assert torch.equal(first, second)
    half = wsss_ext.pamr(image.half(), mask.half())
    assert half.dtype == torch.float16 and bool(torch.isfinite(half).all())


@requires_cuda
def test_cuda_device_mismatch():
    image, mask = _inputs()
    with pytest.raises(ValueError, match="image is on cpu but mask is on cuda"):
        wsss_ext.pamr(image, mask.cuda())
