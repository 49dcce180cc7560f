"""FickleNet's expanded dropout, fused masked conv and stochastic Grad-CAM:
against an independent oracle (masks rebuilt in Python from the Philox
generator the foundation tests against Random123's known answers, windows
expanded by a per-window loop), against the expand-then-conv path, on
properties, gradients and bad input."""

import math

import pytest
import torch
import torch.nn.functional as F

import wsss_ext
from conftest import DEVICES, requires_cuda, with_nan
from wsss_ext import _C
from wsss_ext.reference import expand_windows


def features(batch, channels, height, width, seed=0, dtype=torch.float64):
    return torch.randn(batch, channels, height, width, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def oracle_keep(seed, row, channel, position, tap, kernel_size, p):
    """The documented decision: word tap % 4 of Philox4x32-10 at counter
    (row, channel, position, tap // 4), key (seed low, seed high)."""
    if tap == kernel_size * kernel_size // 2:
        return True
    words = _C.philox4x32_10((row, channel, position, tap // 4), (seed & 0xFFFFFFFF, seed >> 32))
    return (words[tap % 4] >> 8) >= math.ceil(p * 2**24)


def oracle_expanded_dropout(x, kernel_size, p, seed, rescale=False):
    """Per-window loop: block (i, j) of the expansion is the window at (i, j),
    each unit kept by oracle_keep."""
    batch, channels, height, width = x.shape
    half = kernel_size // 2
    out = torch.zeros(batch, channels, height * kernel_size, width * kernel_size, dtype=x.dtype)
    for b in range(batch):
        for c in range(channels):
            for i in range(height):
                for j in range(width):
                    for u in range(kernel_size):
                        for v in range(kernel_size):
                            y, z = i + u - half, j + v - half
                            if not (0 <= y < height and 0 <= z < width):
                                continue
                            tap = u * kernel_size + v
                            if oracle_keep(seed, b, c, i * width + j, tap, kernel_size, p):
                                scale = 1 / (1 - p) if rescale and tap != kernel_size**2 // 2 else 1.0
                                out[b, c, i * kernel_size + u, j * kernel_size + v] = scale * x[b, c, y, z]
    return out


# --- the faithful op ------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel_size, p, rescale", [(3, 0.5, False), (3, 0.9, True), (5, 0.3, False), (1, 0.5, False)])
def test_expanded_dropout_matches_the_oracle(kernel_size, p, rescale):
    x = features(2, 3, 4, 5)
    ours = wsss_ext.expanded_dropout(x, kernel_size, p, seed=2**40 + 17, rescale=rescale)
    expected = oracle_expanded_dropout(x, kernel_size, p, 2**40 + 17, rescale)
    torch.testing.assert_close(ours, expected, rtol=1e-15, atol=0)


def test_expanded_dropout_without_dropping_is_the_plain_expansion():
    x = features(2, 3, 6, 7)
    torch.testing.assert_close(wsss_ext.expanded_dropout(x, 3, p=0.0, seed=1), expand_windows(x, 3), rtol=0, atol=0)
    torch.testing.assert_close(wsss_ext.expanded_dropout(x, 3, p=0.9, training=False), expand_windows(x, 3), rtol=0,
                               atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_centres_are_always_kept_and_the_keep_rate_is_one_minus_p(device):
    x = torch.ones(4, 32, 24, 24, device=device)
    for p in (0.5, 0.9, 0.99):
        expanded = wsss_ext.expanded_dropout(x, 3, p, seed=11)
        assert bool((expanded[..., 1::3, 1::3] == 1).all())
        # Off-centre units of interior windows: a binomial count, 5 sigma bound.
        blocks = expanded[..., 3:-3, 3:-3].reshape(4, 32, 22, 3, 22, 3).permute(0, 1, 2, 4, 3, 5).reshape(-1, 9)
        off_centre = torch.cat([blocks[:, :4], blocks[:, 5:]], 1)
        n = off_centre.numel()
        kept = float((off_centre != 0).sum())
        assert abs(kept - n * (1 - p)) <= 5 * math.sqrt(n * p * (1 - p))


def test_masks_are_per_channel_and_depend_on_the_seed():
    x = torch.ones(1, 2, 10, 10)
    first = wsss_ext.expanded_dropout(x, 3, 0.5, seed=5)
    assert not torch.equal(first[0, 0], first[0, 1])
    assert torch.equal(first, wsss_ext.expanded_dropout(x, 3, 0.5, seed=5))
    assert not torch.equal(first, wsss_ext.expanded_dropout(x, 3, 0.5, seed=6))
    torch.manual_seed(3)
    drawn = wsss_ext.expanded_dropout(x, 3, 0.5)
    torch.manual_seed(3)
    assert torch.equal(drawn, wsss_ext.expanded_dropout(x, 3, 0.5))


# --- the fused conv ------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel_size", [1, 3, 5])
@pytest.mark.parametrize("device", DEVICES)
def test_without_dropping_it_is_an_ordinary_conv(kernel_size, device):
    x, weight = features(2, 6, 9, 11).to(device), features(4, 6, kernel_size, kernel_size, seed=1).to(device)
    bias = features(1, 1, 1, 4, seed=2).flatten().to(device)
    expected = F.conv2d(x, weight, bias, padding=kernel_size // 2)
    torch.testing.assert_close(wsss_ext.fickle_conv2d(x, weight, bias, p=0.0, seed=0), expected, rtol=1e-12, atol=1e-12)
    expanded = wsss_ext.expanded_dropout(x, kernel_size, p=0.0, seed=0)
    torch.testing.assert_close(F.conv2d(expanded, weight, bias, stride=kernel_size), expected, rtol=1e-12, atol=1e-12)
    inference = wsss_ext.fickle_conv2d(x, weight, bias, p=0.9, n_samples=2, training=False)
    torch.testing.assert_close(inference, expected.repeat(2, 1, 1, 1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kernel_size, n_samples, with_bias, rescale",
                         [(3, 1, True, False), (3, 4, False, False), (5, 2, True, True), (1, 3, True, False)])
def test_fused_equals_expand_then_conv_for_a_seed(kernel_size, n_samples, with_bias, rescale):
    x, weight = features(2, 5, 8, 7), features(3, 5, kernel_size, kernel_size, seed=1)
    bias = features(1, 1, 1, 3, seed=2).flatten() if with_bias else None
    fused = wsss_ext.fickle_conv2d(x, weight, bias, p=0.7, seed=99, n_samples=n_samples, rescale=rescale)
    expanded = wsss_ext.expanded_dropout(x.repeat(n_samples, 1, 1, 1), kernel_size, 0.7, seed=99, rescale=rescale)
    torch.testing.assert_close(fused, F.conv2d(expanded, weight, bias, stride=kernel_size), rtol=1e-12, atol=1e-12)


def test_samples_are_different_selections_of_one_input():
    x, weight = features(1, 8, 6, 6), features(2, 8, 3, 3, seed=1)
    out = wsss_ext.fickle_conv2d(x, weight, p=0.9, seed=4, n_samples=3)
    assert not torch.equal(out[0], out[1]) and not torch.equal(out[1], out[2])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_compute_in_float32(dtype):
    x, weight = features(2, 16, 9, 9, dtype=torch.float32), features(4, 16, 3, 3, seed=1, dtype=torch.float32)
    out = wsss_ext.fickle_conv2d(x.to(dtype), weight.to(dtype), p=0.5, seed=3)
    assert out.dtype == dtype and bool(torch.isfinite(out).all())
    expected = wsss_ext.fickle_conv2d(x.to(dtype).float(), weight.to(dtype).float(), p=0.5, seed=3)
    torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=2e-2 if dtype == torch.float16 else 1e-1)


def test_empty_batch():
    out = wsss_ext.fickle_conv2d(torch.zeros(0, 4, 5, 5), torch.zeros(2, 4, 3, 3), seed=0, n_samples=3)
    assert out.shape == (0, 2, 5, 5)


# --- gradients ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel_size, n_samples", [(3, 1), (3, 2), (1, 2), (5, 1)])
def test_gradcheck_x_weight_bias(kernel_size, n_samples):
    x = features(2, 3, 4, 5).requires_grad_()
    weight = features(2, 3, kernel_size, kernel_size, seed=1).requires_grad_()
    bias = features(1, 1, 1, 2, seed=2).flatten().requires_grad_()
    fn = lambda x, w, b: wsss_ext.fickle_conv2d(x, w, b, p=0.5, seed=8, n_samples=n_samples)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, weight, bias))


def test_gradient_equals_autograd_through_the_expansion():
    x, weight = features(2, 4, 6, 7).requires_grad_(), features(3, 4, 3, 3, seed=1).requires_grad_()
    bias = features(1, 1, 1, 3, seed=2).flatten().requires_grad_()
    upstream = features(6, 3, 6, 7, seed=3)
    fused = wsss_ext.fickle_conv2d(x, weight, bias, p=0.6, seed=21, n_samples=3)
    ours = torch.autograd.grad((fused * upstream).sum(), (x, weight, bias))
    expanded = wsss_ext.expanded_dropout(x.repeat(3, 1, 1, 1), 3, 0.6, seed=21)
    theirs = torch.autograd.grad((F.conv2d(expanded, weight, bias, stride=3) * upstream).sum(), (x, weight, bias))
    for mine, reference in zip(ours, theirs):
        torch.testing.assert_close(mine, reference, rtol=1e-12, atol=1e-12)


def test_gradcheck_expanded_dropout():
    x = features(1, 2, 3, 4).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: wsss_ext.expanded_dropout(x, 3, 0.5, seed=1), (x,))


def test_custom_ops_pass_opcheck():
    from wsss_ext.ops.fickle import _mask_bits

    x, weight, bias = features(2, 3, 5, 4), features(2, 3, 3, 3, seed=1), features(1, 1, 1, 2, seed=2).flatten()
    bits = _mask_bits(x, 7, 3, 2**23, 4, 0)
    torch.library.opcheck(torch.ops.wsss_ext.fickle_mask_bits.default, (x, 7, 3, 2**23, 4, 0))
    torch.library.opcheck(torch.ops.wsss_ext.fickle_masked_tap.default, (x.requires_grad_(), bits, 3, 1.0, 2, 1))
    torch.library.opcheck(torch.ops.wsss_ext.fickle_masked_tap.default, (x, bits, 3, 1.0, 0, 9))
    torch.library.opcheck(torch.ops.wsss_ext.fickle_conv2d.default,
                          (x, weight.requires_grad_(), bias.requires_grad_(), bits, 2.0))


# --- stochastic Grad-CAM ---------------------------------------------------------------------------


def autograd_gradcam(x, weight, bias, p, n_samples, seed):
    """Grad-CAM of every sample and class by autograd: alpha = spatial mean of
    d(GAP logit)/d(features), map = relu(sum_c alpha_c x_c), divided by its max."""
    batch, _, height, width = x.shape
    classes = weight.shape[0]
    xg = x.clone().requires_grad_()
    logits = wsss_ext.fickle_conv2d(xg, weight, bias, p=p, seed=seed, n_samples=n_samples).mean((2, 3))
    maps = torch.zeros(n_samples * batch, classes, height, width, dtype=x.dtype)
    for r in range(n_samples * batch):
        for o in range(classes):
            (grad,) = torch.autograd.grad(logits[r, o], xg, retain_graph=True)
            alpha = grad[r % batch].mean((1, 2))
            maps[r, o] = torch.relu((alpha[:, None, None] * x[r % batch]).sum(0))
    maps = maps / maps.flatten(2).amax(2).clamp(min=1e-5)[..., None, None]
    return maps.view(n_samples, batch, classes, height, width)


def test_closed_form_gradcam_equals_autograd_gradcam():
    x, weight = features(2, 6, 7, 8).abs(), features(4, 6, 3, 3, seed=1)
    bias = features(1, 1, 1, 4, seed=2).flatten()
    labels = torch.tensor([[1, 0, 1, 1], [0, 1, 1, 0]])
    maps, pseudo = wsss_ext.fickle_gradcam(x, weight, bias, labels, p=0.5, n_samples=5, seed=3, chunk_samples=2)
    reference = autograd_gradcam(x, weight, bias, 0.5, 5, 3)
    present = labels.bool()[:, :, None, None]
    torch.testing.assert_close(maps, reference.mean(0) * present, rtol=1e-12, atol=1e-12)
    # The aggregation rule, from the autograd maps.
    hits = (reference > 0.35).any(0) & present
    scores = torch.where(hits, reference.mean(0), torch.tensor(-1.0, dtype=torch.float64))
    expected = torch.where(hits.any(1), scores.argmax(1), torch.tensor(255))
    assert torch.equal(pseudo, expected)
    assert set(pseudo[0].unique().tolist()) <= {0, 2, 3, 255} and set(pseudo[1].unique().tolist()) <= {1, 2, 255}


def test_gradcam_does_not_depend_on_chunking_and_matches_the_conv_masks():
    x, weight = features(1, 4, 6, 6).abs(), features(3, 4, 3, 3, seed=1)
    labels = torch.ones(1, 3)
    whole = wsss_ext.fickle_gradcam(x, weight, None, labels, n_samples=7, seed=5, chunk_samples=7)
    chunked = wsss_ext.fickle_gradcam(x, weight, None, labels, n_samples=7, seed=5, chunk_samples=3)
    torch.testing.assert_close(whole[0], chunked[0], rtol=1e-12, atol=1e-12)
    assert torch.equal(whole[1], chunked[1])


def test_gradcam_localises_a_class_driven_by_its_features():
    # Channel 0 is on in the left half, channel 1 in the right; class 0 reads
    # channel 0, class 1 channel 1. Each class's pixels must be its half.
    x = torch.zeros(1, 2, 12, 12)
    x[0, 0, :, :6] = 1.0
    x[0, 1, :, 6:] = 1.0
    weight = torch.zeros(2, 2, 3, 3)
    weight[0, 0] = 1.0
    weight[1, 1] = 1.0
    _, pseudo = wsss_ext.fickle_gradcam(x, weight, None, torch.ones(1, 2), n_samples=20, seed=0)
    assert bool((pseudo[0, :, :6] == 0).all()) and bool((pseudo[0, :, 6:] == 1).all())


# --- bad input ----------------------------------------------------------------------------------------


def _conv_inputs():
    return features(2, 4, 6, 6, dtype=torch.float32), features(3, 4, 3, 3, seed=1, dtype=torch.float32)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda x, w: dict(x=x, weight=w, p=1.0), ValueError, "p must be in \\[0, 1\\)"),
        (lambda x, w: dict(x=x, weight=w, p=-0.1), ValueError, "p must be in \\[0, 1\\)"),
        (lambda x, w: dict(x=x, weight=w, p=float("nan")), ValueError, "p must be finite"),
        (lambda x, w: dict(x=x, weight=w[..., :2, :2]), ValueError, "kernel_size must be odd"),
        (lambda x, w: dict(x=x, weight=w[..., :2]), ValueError, "square kernel"),
        (lambda x, w: dict(x=x, weight=w[:, :3]), ValueError, "C = 4"),
        (lambda x, w: dict(x=x, weight=torch.zeros(3, 4, 7, 7)), ValueError, "at most 5"),
        (lambda x, w: dict(x=x, weight=w, bias=torch.zeros(2)), ValueError, "bias must have 3 values"),
        (lambda x, w: dict(x=x, weight=w, n_samples=0), ValueError, "n_samples must be >= 1"),
        (lambda x, w: dict(x=x, weight=w, seed=-1), ValueError, "seed must be >= 0"),
        (lambda x, w: dict(x=x, weight=w, seed=2**64), ValueError, "seed must be < 2\\*\\*63"),
        (lambda x, w: dict(x=x, weight=w, seed=1.5), TypeError, "seed must be an int"),
        (lambda x, w: dict(x=x[0], weight=w), ValueError, "x must be 4-D"),
        (lambda x, w: dict(x=x.long(), weight=w), TypeError, "x must have dtype"),
        (lambda x, w: dict(x=with_nan(x), weight=w), ValueError, "x contains NaN"),
        (lambda x, w: dict(x=x, weight=w.to("meta")), ValueError, "weight is on meta"),
    ],
)
def test_bad_conv_input(make, error, match):
    with pytest.raises(error, match=match):
        wsss_ext.fickle_conv2d(**make(*_conv_inputs()))


def test_bad_expanded_dropout_and_gradcam_input():
    x, weight = _conv_inputs()
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        wsss_ext.expanded_dropout(x, 2)
    with pytest.raises(ValueError, match="kernel_size must be >= 1"):
        wsss_ext.expanded_dropout(x, 0)
    with pytest.raises(ValueError, match="labels must be B x O"):
        wsss_ext.fickle_gradcam(x, weight, None, torch.ones(2, 4))
    with pytest.raises(ValueError, match="n_samples must be >= 1"):
        wsss_ext.fickle_gradcam(x, weight, None, torch.ones(2, 3), n_samples=0)


@pytest.mark.parametrize("first, count", [(0, 9), (2, 4), (8, 1)])
@pytest.mark.parametrize("samples", [1, 3])
def test_several_taps_in_one_call_equal_one_call_per_tap(first, count, samples):
    """The multi-tap kernel (channel c n + k = tap first + k) against one-tap
    calls, forward and transpose (the transpose sums tap by tap in order)."""
    x = features(2, 3, 6, 5, dtype=torch.float32)
    bits = torch.empty(2 * samples, 3, 6, 5, dtype=torch.int32)
    _C.fickle_mask_bits(bits, 11, 3, 2**23, 0)
    together = torch.empty(2 * samples, 3 * count, 6, 5)
    _C.fickle_masked_tap(x, together, bits, 3, 2.0, first, False, 0, count)
    grad = torch.randn_like(together)
    grad_x = torch.full_like(x, 0.5)
    _C.fickle_masked_tap(grad, grad_x, bits, 3, 2.0, first, True, 0, count)
    expected_grad_x = torch.full_like(x, 0.5)
    for k in range(count):
        one = torch.empty(2 * samples, 3, 6, 5)
        _C.fickle_masked_tap(x, one, bits, 3, 2.0, first + k, False, 0)
        torch.testing.assert_close(together[:, k::count], one, rtol=0, atol=0)
        _C.fickle_masked_tap(grad[:, k::count].contiguous(), expected_grad_x, bits, 3, 2.0, first + k, True, 0)
    torch.testing.assert_close(grad_x, expected_grad_x, rtol=0, atol=0)


def test_tap_groups_under_a_small_budget_give_the_same_conv_and_gradients(monkeypatch):
    """Large inputs take the taps a group at a time (the units of all k^2 taps
    would not fit the budget): the same output and gradients as all at once."""
    from wsss_ext.ops import fickle as fickle_module

    x, weight, bias = features(2, 4, 7, 6), features(5, 4, 3, 3, seed=1), features(1, 1, 1, 5, seed=2).flatten()
    inputs = [t.clone().requires_grad_() for t in (x, weight, bias)]
    whole = wsss_ext.fickle_conv2d(*inputs, p=0.5, seed=3, n_samples=2)
    whole_grads = torch.autograd.grad(whole.square().sum(), inputs)
    one_tap = 2 * 2 * 4 * 7 * 6 * 8  # bytes of one tap's float64 units
    for budget, groups in ((one_tap, 9), (4 * one_tap, 3)):
        monkeypatch.setattr(fickle_module, "_UNITS_BUDGET_BYTES", budget)
        bits = torch.zeros(4, 4, 7, 6, dtype=torch.int32)
        assert len(fickle_module._tap_groups(3, bits, x)) == groups
        grouped = wsss_ext.fickle_conv2d(*inputs, p=0.5, seed=3, n_samples=2)
        torch.testing.assert_close(grouped, whole, rtol=1e-12, atol=1e-12)
        for ours, expected in zip(torch.autograd.grad(grouped.square().sum(), inputs), whole_grads):
            torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)


def test_compiled_checks_catch_bad_buffers():
    """The C++ safety net, reached through the raw bindings."""
    x = torch.rand(2, 3, 5, 5)
    bits = torch.zeros(4, 3, 5, 5, dtype=torch.int32)
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        _C.fickle_mask_bits(bits, 0, 4, 0)
    with pytest.raises(ValueError, match="drop_threshold"):
        _C.fickle_mask_bits(bits, 0, 3, 2**24 + 1)
    with pytest.raises(ValueError, match="bits must have dtype int32"):
        _C.fickle_masked_tap(x, torch.empty(4, 3, 5, 5), bits.long(), 3, 1.0, 0)
    with pytest.raises(ValueError, match="out must have a multiple of 2 rows"):
        _C.fickle_masked_tap(x, torch.empty(3, 3, 5, 5), bits[:3], 3, 1.0, 0)
    with pytest.raises(ValueError, match="tap must be in"):
        _C.fickle_masked_tap(x, torch.empty(4, 3, 5, 5), bits, 3, 1.0, 9)
    with pytest.raises(ValueError, match="tap_count must be in"):
        _C.fickle_masked_tap(x, torch.empty(4, 3 * 3, 5, 5), bits, 3, 1.0, 7, False, 0, 3)  # taps 7, 8, 9
    with pytest.raises(ValueError, match="tap_count must be in"):
        _C.fickle_masked_tap(x, torch.empty(4, 3, 5, 5), bits, 3, 1.0, 0, False, 0, 0)
    with pytest.raises(ValueError, match="out must have shape"):
        _C.fickle_masked_tap(x, torch.empty(4, 3, 5, 5), bits, 3, 1.0, 0, False, 0, 2)
    with pytest.raises(ValueError, match="counts must have shape"):
        _C.fickle_mask_counts(bits, torch.empty(4, 3, 8), 3, 1.0)


# --- CUDA -----------------------------------------------------------------------------------------------


@requires_cuda
@pytest.mark.parametrize("kernel_size", [1, 3, 5])
def test_cuda_masks_are_identical_and_outputs_match(kernel_size):
    x, weight = features(3, 16, 17, 19, dtype=torch.float32), features(5, 16, kernel_size, kernel_size, seed=1,
                                                                       dtype=torch.float32)
    cpu = wsss_ext.expanded_dropout(x, kernel_size, 0.9, seed=2**33 + 5)
    cuda = wsss_ext.expanded_dropout(x.cuda(), kernel_size, 0.9, seed=2**33 + 5).cpu()
    assert torch.equal(cpu != 0, cuda != 0)
    out_cpu = wsss_ext.fickle_conv2d(x, weight, p=0.9, seed=7, n_samples=4)
    out_cuda = wsss_ext.fickle_conv2d(x.cuda(), weight.cuda(), p=0.9, seed=7, n_samples=4).cpu()
    torch.testing.assert_close(out_cuda, out_cpu, rtol=1e-4, atol=1e-4)


@requires_cuda
def test_cuda_gradients_and_gradcam_match_cpu():
    x, weight = features(2, 8, 9, 10), features(4, 8, 3, 3, seed=1)
    bias = features(1, 1, 1, 4, seed=2).flatten()
    upstream = features(6, 4, 9, 10, seed=3)
    grads = []
    for device in ("cpu", "cuda"):
        xd, wd, bd = (t.to(device).requires_grad_() for t in (x, weight, bias))
        out = wsss_ext.fickle_conv2d(xd, wd, bd, p=0.9, seed=5, n_samples=3)
        grads.append([g.cpu() for g in torch.autograd.grad((out * upstream.to(device)).sum(), (xd, wd, bd))])
    for cpu, cuda in zip(*grads):
        torch.testing.assert_close(cuda, cpu, rtol=1e-10, atol=1e-10)
    labels = torch.ones(2, 4)
    cpu = wsss_ext.fickle_gradcam(x.abs(), weight, bias, labels, n_samples=30, seed=1)
    cuda = wsss_ext.fickle_gradcam(x.abs().cuda(), weight.cuda(), bias.cuda(), labels.cuda(), n_samples=30, seed=1)
    torch.testing.assert_close(cuda[0].cpu(), cpu[0], rtol=1e-10, atol=1e-10)
    assert torch.equal(cuda[1].cpu(), cpu[1])
