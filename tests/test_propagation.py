"""wsss_ext.propagate_labels against the unfold + softmax method MAST and CRW
use (wsss_ext.reference.propagate_labels_unfold) and a per-pixel oracle, on
properties, gradients and bad input; wsss_ext.track_video end to end."""

import sys

import pytest
import torch
import torch.nn.functional as F

import wsss_ext
from conftest import requires_cuda, with_nan
from wsss_ext.reference import propagate_labels_unfold


def frames(batch, refs, channels, labels, height, width, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    query = torch.randn(batch, channels, height, width, generator=generator, dtype=dtype)
    keys = torch.randn(batch, refs, channels, height, width, generator=generator, dtype=dtype)
    values = torch.softmax(torch.randn(batch, refs, labels, height, width, generator=generator, dtype=dtype), 2)
    return query, keys, values


def per_pixel_oracle(query, keys, values, radius, temperature, topk, border="zero"):
    """Candidates listed pixel by pixel, softmax (or top-k softmax) over them;
    out-of-frame taps score 0 with value 0 ("zero") or are not listed ("exclude")."""
    batch, _, height, width = query.shape
    refs, labels = keys.shape[1], values.shape[2]
    out = torch.zeros(batch, labels, height, width, dtype=query.dtype)
    for b in range(batch):
        for y in range(height):
            for x in range(width):
                scores, vals = [], []
                for r in range(refs):
                    for dy in range(-radius, radius + 1):
                        for dx in range(-radius, radius + 1):
                            sy, sx = y + dy, x + dx
                            if 0 <= sy < height and 0 <= sx < width:
                                scores.append(float(query[b, :, y, x] @ keys[b, r, :, sy, sx]) / temperature)
                                vals.append(values[b, r, :, sy, sx])
                            elif border == "zero":
                                scores.append(0.0)
                                vals.append(torch.zeros(labels, dtype=query.dtype))
                scores = torch.tensor(scores, dtype=query.dtype)
                vals = torch.stack(vals)
                if topk is not None:
                    top, index = scores.topk(min(topk, len(scores)))
                    out[b, :, y, x] = torch.softmax(top, 0) @ vals[index]
                else:
                    out[b, :, y, x] = torch.softmax(scores, 0) @ vals
    return out


BORDERS = ("zero", "exclude")


@pytest.mark.parametrize("border", BORDERS)
@pytest.mark.parametrize("radius, temperature, topk", [(1, 1.0, None), (2, 0.5, None), (2, 0.07, 5), (0, 1.0, 1),
                                                       (2, 0.3, 12)])
def test_matches_the_per_pixel_oracle(radius, temperature, topk, border):
    # (2, 0.3, 12): with "exclude", a corner pixel has 9 in-frame candidates in
    # each of the 2 frames, and 12 of them are kept.
    query, keys, values = frames(1, 2, 4, 3, 5, 6)
    ours = wsss_ext.propagate_labels(query, keys, values, radius, temperature, topk, border=border)
    expected = per_pixel_oracle(query, keys, values, radius, temperature, topk, border)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)


def test_short_top_k_lists_at_an_excluded_border():
    # One frame, radius 2: a corner pixel has only 9 in-frame candidates, yet topk = 20.
    query, keys, values = frames(1, 1, 4, 3, 6, 7)
    ours = wsss_ext.propagate_labels(query, keys, values, 2, 0.5, topk=20, border="exclude")
    torch.testing.assert_close(ours, per_pixel_oracle(query, keys, values, 2, 0.5, 20, "exclude"),
                               rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ours.sum(1), torch.ones(1, 6, 7, dtype=torch.float64))


@pytest.mark.parametrize("border", BORDERS)
@pytest.mark.parametrize(
    "radius, temperature, topk, normalize", [(3, 1.0, None, False), (6, 0.07, 10, True), (4, 0.3, 64, False)]
)
def test_matches_the_unfold_method(radius, temperature, topk, normalize, border):
    query, keys, values = frames(2, 3, 16, 5, 13, 11)
    ours = wsss_ext.propagate_labels(query, keys, values, radius, temperature, topk, normalize, border)
    expected = propagate_labels_unfold(query, keys, values, radius, temperature, topk, normalize, border)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)


def test_the_rules_differ_only_near_the_border():
    query, keys, values = frames(1, 2, 8, 3, 14, 15)
    zero = wsss_ext.propagate_labels(query, keys, values, radius=3)
    exclude = wsss_ext.propagate_labels(query, keys, values, radius=3, border="exclude")
    torch.testing.assert_close(zero[..., 3:-3, 3:-3], exclude[..., 3:-3, 3:-3], rtol=1e-12, atol=1e-14)
    assert float((zero - exclude).abs()[..., 0, :].min()) > 0  # every border pixel has out-of-frame taps


def test_float32_matches_the_unfold_method_at_mast_settings():
    query, keys, values = frames(1, 2, 64, 7, 20, 30, dtype=torch.float32)
    ours = wsss_ext.propagate_labels(query / 4, keys / 4, values, radius=12)
    expected = propagate_labels_unfold(query.double() / 4, keys.double() / 4, values.double(), radius=12)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("topk", [None, 6])
def test_label_mass_per_pixel_under_each_border_rule(topk):
    query, keys, _ = frames(1, 2, 8, 3, 16, 16)
    query, keys = query / 4, keys / 4  # scores ~ N(0, 1/2): the out-of-frame taps weigh
    labels = F.one_hot(torch.randint(0, 3, (1, 2, 16, 16)), 3).permute(0, 1, 4, 2, 3).double()
    zero = wsss_ext.propagate_labels(query, keys, labels, radius=3, topk=topk).sum(1)[0]
    # "zero": inside the map every candidate carries a one-hot value, so the
    # mass is 1; at the border the out-of-frame taps carry weight and no label.
    # The mass of pixel p is 1 - the softmax weight of its out-of-frame taps.
    torch.testing.assert_close(zero[3:-3, 3:-3], torch.ones(10, 10, dtype=torch.float64))
    scores = torch.einsum("chw,rcthw->rthw", query[0], _window(keys[0], 3)).reshape(-1, 16, 16)
    outside = _window(torch.ones(2, 1, 16, 16, dtype=torch.float64), 3)[:, 0].reshape(-1, 16, 16) == 0
    scores = scores.masked_fill(outside, 0.0)
    weights = torch.softmax(scores, 0) if topk is None else torch.zeros_like(scores).scatter(
        0, scores.topk(topk, 0).indices, torch.softmax(scores.topk(topk, 0).values, 0))
    torch.testing.assert_close(zero, 1 - (weights * outside).sum(0), rtol=1e-12, atol=1e-12)
    if topk is None:
        assert float(zero[0, 0]) < 0.8  # a corner has 33 of 49 taps per frame outside
    # "exclude": mass exactly 1 everywhere, the border included.
    exclude = wsss_ext.propagate_labels(query, keys, labels, radius=3, topk=topk, border="exclude").sum(1)
    torch.testing.assert_close(exclude, torch.ones(1, 16, 16, dtype=torch.float64), rtol=0, atol=1e-13)


def _window(x, radius):
    """[R, C, H, W] -> [R, C, taps, H, W], zero padding."""
    side = 2 * radius + 1
    return F.unfold(x, side, padding=radius).view(x.shape[0], x.shape[1], side * side, *x.shape[2:])


def test_identical_frames_with_a_sharp_softmax_copy_the_labels():
    features = F.normalize(torch.randn(1, 32, 12, 14, dtype=torch.float64), dim=1)
    labels = F.one_hot(torch.randint(0, 4, (1, 12, 14)), 4).permute(0, 3, 1, 2).double()
    out = wsss_ext.propagate_labels(features, features[:, None], labels[:, None], radius=3, temperature=0.01)
    assert torch.equal(out.argmax(1), labels.argmax(1))
    torch.testing.assert_close(out, labels, rtol=0, atol=1e-6)
    crw = wsss_ext.propagate_labels(features, features[:, None], labels[:, None], 3, 0.07, topk=1, normalize=True)
    torch.testing.assert_close(crw, labels, rtol=0, atol=0)


def test_batch_equals_one_video_at_a_time():
    query, keys, values = frames(3, 2, 8, 4, 9, 10, dtype=torch.float32)
    batched = wsss_ext.propagate_labels(query, keys, values, radius=2, topk=7)
    for b in range(3):
        one = wsss_ext.propagate_labels(query[b : b + 1], keys[b : b + 1], values[b : b + 1], radius=2, topk=7)
        torch.testing.assert_close(batched[b : b + 1], one, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_compute_in_float32(dtype):
    query, keys, values = frames(1, 2, 64, 3, 10, 12, dtype=torch.float32)
    out = wsss_ext.propagate_labels(query.to(dtype), keys.to(dtype), values.to(dtype), radius=4)
    assert out.dtype == torch.float32 and bool(torch.isfinite(out).all())
    expected = wsss_ext.propagate_labels(query.to(dtype).float(), keys.to(dtype).float(), values.to(dtype).float(), 4)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


# --- gradients --------------------------------------------------------------------------------------


@pytest.mark.parametrize("border", BORDERS)
@pytest.mark.parametrize("radius, temperature, topk, normalize", [(1, 0.5, None, False), (2, 0.3, 6, True),
                                                                  (1, 0.4, 8, False)])
def test_gradcheck(radius, temperature, topk, normalize, border):
    # (1, 0.4, 8): one frame has 4 to 9 in-frame candidates, so "exclude" keeps short top-k lists.
    refs = 1 if topk == 8 else 2
    query, keys, values = (t.requires_grad_() for t in frames(1, refs, 3, 2, 4, 5))
    fn = lambda q, k, v: wsss_ext.propagate_labels(q, k, v, radius, temperature, topk, normalize, border)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (query, keys, values))


@pytest.mark.parametrize("border", BORDERS)
def test_gradient_equals_the_unfold_autograd_gradient(border):
    query, keys, values = (t.requires_grad_() for t in frames(2, 3, 6, 4, 9, 8))
    upstream = torch.randn(2, 4, 9, 8, dtype=torch.float64)
    for topk in (None, 9):
        ours = torch.autograd.grad(wsss_ext.propagate_labels(query, keys, values, 2, 0.4, topk, border=border),
                                   (query, keys, values), upstream)
        theirs = torch.autograd.grad(propagate_labels_unfold(query, keys, values, 2, 0.4, topk, border=border),
                                     (query, keys, values), upstream)
        for mine, reference in zip(ours, theirs):
            torch.testing.assert_close(mine, reference, rtol=1e-9, atol=1e-11)


def test_custom_op_passes_opcheck():
    query, keys, values = (t.requires_grad_() for t in frames(1, 2, 3, 2, 4, 5))
    for topk, border in ((0, "zero"), (4, "zero"), (0, "exclude"), (12, "exclude")):
        torch.library.opcheck(torch.ops.wsss_ext.propagate_labels.default, (query, keys, values, 1, 2.0, topk, border))


# --- the tracker ----------------------------------------------------------------------------------------


def test_track_video_follows_a_moving_square():
    # Features: a static random texture, and a fixed code carried by a square
    # that moves 3 pixels a frame; the first-frame mask must follow the square.
    height, width, steps, channels = 24, 32, 5, 16
    background = torch.randn(channels, height, width, generator=torch.Generator().manual_seed(0))
    code = torch.zeros(channels, 1, 1)
    code[0] = 5.0
    features, masks = [], []
    for t in range(steps):
        frame, mask = background.clone(), torch.zeros(height, width, dtype=torch.long)
        top, left = 6, 4 + 3 * t
        frame[:, top : top + 8, left : left + 8] = code
        mask[top : top + 8, left : left + 8] = 1
        features.append(frame)
        masks.append(mask)
    tracked = wsss_ext.track_video(torch.stack(features), masks[0], radius=4, temperature=0.05, normalize=True,
                                   n_recent=2)
    assert tracked.shape == (steps, height, width)
    for t in range(steps):
        intersection = ((tracked[t] == 1) & (masks[t] == 1)).sum()
        union = ((tracked[t] == 1) | (masks[t] == 1)).sum()
        assert float(intersection) / float(union) > 0.9


def test_track_video_upsamples_to_the_mask_size():
    feats = torch.randn(3, 8, 10, 12)
    first = torch.zeros(40, 48, dtype=torch.long)
    first[10:20, 12:30] = 2
    out = wsss_ext.track_video(feats, first, radius=2, size=(40, 48))
    assert out.shape == (3, 40, 48) and torch.equal(out[0], first)
    assert set(out.unique().tolist()) <= {0, 1, 2}


# --- bad input -------------------------------------------------------------------------------------------


def _inputs():
    return frames(1, 2, 4, 3, 6, 7, dtype=torch.float32)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda q, k, v: (q, k[..., :5], v, {}), ValueError, "keys .* must be B x R x C x H x W"),
        (lambda q, k, v: (q, k, v[:, :1], {}), ValueError, "values .* must be B x R x L x H x W"),
        (lambda q, k, v: (q[0], k, v, {}), ValueError, "query must be 4-D"),
        (lambda q, k, v: (q, k[:, :, :3], v, {}), ValueError, "keys .* must be"),
        (lambda q, k, v: (q, k, v, dict(radius=-1)), ValueError, "radius must be >= 0"),
        (lambda q, k, v: (q, k, v, dict(temperature=0.0)), ValueError, "temperature must be > 0"),
        (lambda q, k, v: (q, k, v, dict(radius=1, topk=19)), ValueError, "topk must be at most the 18 candidates"),
        (lambda q, k, v: (q, k, v, dict(topk=0)), ValueError, "topk must be >= 1"),
        (lambda q, k, v: (with_nan(q), k, v, {}), ValueError, "query contains NaN"),
        (lambda q, k, v: (q, k, v.long(), {}), TypeError, "values must have dtype"),
        (lambda q, k, v: (q, k.to("meta"), v, {}), ValueError, "keys is on meta"),
        (lambda q, k, v: (q, k, v, dict(border="reflect")), ValueError, "border must be 'zero' or 'exclude'"),
        (lambda q, k, v: (q, k, v, dict(border=0)), TypeError, "border must be a str"),
    ],
)
def test_bad_input(make, error, match):
    query, keys, values, kwargs = make(*_inputs())
    with pytest.raises(error, match=match):
        wsss_ext.propagate_labels(query, keys, values, **kwargs)


@pytest.mark.parametrize("border", BORDERS)
def test_track_video_border_rules_follow_propagate_labels(border):
    feats = torch.randn(3, 8, 10, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    first = torch.randint(0, 3, (10, 12), generator=torch.Generator().manual_seed(2))
    tracked = wsss_ext.track_video(feats, first, 3, radius=2, n_recent=0, border=border)
    one_hot = F.one_hot(first, 3).permute(2, 0, 1)[None, None].double()
    soft = propagate_labels_unfold(feats[1][None], feats[0][None, None], one_hot, 2, border=border)
    assert torch.equal(tracked[1], soft[0].argmax(0))


# --- extreme magnitudes: computed right or refused, never a finite wrong answer ------------------------------


@pytest.mark.parametrize("temperature", [1e-38, 3e-39, 1e-20, 1e30])
def test_extreme_temperatures_match_float64(temperature):
    # Scores q.k / 1e-38 overflow float32; the kernel scales differences to the
    # running maximum, which can only underflow.
    query, keys, values = frames(1, 2, 4, 3, 6, 7, dtype=torch.float32)
    for border in BORDERS:
        ours = wsss_ext.propagate_labels(query, keys, values, 2, temperature, border=border)
        expected = propagate_labels_unfold(query.double(), keys.double(), values.double(), 2, temperature,
                                           border=border)
        torch.testing.assert_close(ours.double(), expected, rtol=1e-5, atol=1e-6)


def test_large_magnitudes_within_range_match_float64():
    query, keys, values = frames(1, 2, 4, 3, 6, 7, dtype=torch.float32)
    ours = wsss_ext.propagate_labels(query * 1e18, keys * 1e18, values * 1e30, 2, topk=5)
    expected = propagate_labels_unfold(query.double() * 1e18, keys.double() * 1e18, values.double() * 1e30, 2, topk=5)
    torch.testing.assert_close(ours.double() / 1e30, expected / 1e30, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("host_maxima", [True, False])
def test_magnitudes_past_the_dtype_are_refused(host_maxima, monkeypatch):
    """Both ways of checking: max |.| read by one C++ pass (eager CPU), and the
    torch ops that CUDA and traced calls use (async assertions there)."""
    if not host_maxima:
        monkeypatch.setattr(sys.modules["wsss_ext.ops.propagation"], "host_max_abs", lambda tensor: None)
    query, keys, values = frames(1, 2, 4, 3, 6, 7, dtype=torch.float32)
    for spoiled in (with_nan(query), query.index_fill(3, torch.tensor([2]), float("inf"))):
        with pytest.raises(ValueError, match="query contains NaN or inf"):
            wsss_ext.propagate_labels(spoiled, keys, values, 2)
    with pytest.raises(ValueError, match="values contains NaN or inf"):
        wsss_ext.propagate_labels(query, keys, with_nan(values), 2, normalize=True)
    with pytest.raises(ValueError, match="query and keys are too large"):  # float64 bounds
        wsss_ext.propagate_labels(query, keys.double() * 1e307, values, 2)
    assert wsss_ext.propagate_labels(query * 1e30, keys * 1e10, values, 2, normalize=True).isfinite().all()
    with pytest.raises(ValueError, match="query and keys are too large"):
        wsss_ext.propagate_labels(query * 1e30, keys * 1e10, values, 2)
    with pytest.raises(ValueError, match="values are too large"):
        wsss_ext.propagate_labels(query, keys, values * 3e37, 2)
    with pytest.raises(ValueError, match="temperature must be >= 2.9"):
        wsss_ext.propagate_labels(query, keys, values, 2, temperature=1e-39)
    # float64 holds them
    out = wsss_ext.propagate_labels(query.double() * 1e30, keys.double() * 1e10, values.double() * 3e37, 2, 1e-39)
    assert bool(torch.isfinite(out).all())


def test_gradient_at_a_tiny_temperature_is_finite():
    query, keys, values = (t.requires_grad_() for t in frames(1, 2, 3, 2, 4, 5))
    wsss_ext.propagate_labels(query, keys, values, 1, 1e-300, border="exclude").sum().backward()
    assert all(bool(torch.isfinite(t.grad).all()) for t in (query, keys, values))


def test_bad_tracker_input():
    with pytest.raises(ValueError, match="non-negative integer labels"):
        wsss_ext.track_video(torch.randn(2, 4, 5, 5), torch.rand(5, 5))
    with pytest.raises(ValueError, match="features\\[1\\] has shape"):
        wsss_ext.track_video([torch.randn(4, 5, 5), torch.randn(4, 5, 6)], torch.zeros(5, 5, dtype=torch.long))


def test_compiled_checks_catch_bad_buffers():
    from wsss_ext import _C

    q, k, v = torch.randn(1, 6, 7, 4), torch.randn(1, 2, 6, 7, 4), torch.rand(1, 2, 6, 7, 3)
    out, stats = torch.empty(1, 6, 7, 3), torch.empty(1, 6, 7, 2)
    with pytest.raises(ValueError, match="topk must be in"):
        _C.propagation_forward(q, k, v, out, stats, torch.empty(1, 6, 7, 100, dtype=torch.int32), 1, 1.0, 100)
    with pytest.raises(ValueError, match="values must have shape"):
        _C.propagation_forward(q, k, v[..., :2, :], out, stats, None, 1, 1.0, 0)
    with pytest.raises(ValueError, match="stats must have shape"):
        _C.propagation_forward(q, k, v, out, stats[:, :5], None, 1, 1.0, 0)
    with pytest.raises(ValueError, match="border must be 'zero' or 'exclude'"):
        _C.propagation_forward(q, k, v, out, stats, None, 1, 1.0, 0, "wrap")


# --- CUDA --------------------------------------------------------------------------------------------------


@requires_cuda
@pytest.mark.parametrize("border", BORDERS)
@pytest.mark.parametrize("labels, topk", [(1, None), (3, None), (21, 10), (8, 64)])
def test_cuda_matches_cpu(labels, topk, border):
    query, keys, values = frames(2, 3, 64, labels, 17, 23)
    cpu = wsss_ext.propagate_labels(query, keys, values, 5, 0.2, topk, border=border)
    tensors = [t.cuda().requires_grad_() for t in (query, keys, values)]
    cuda = wsss_ext.propagate_labels(*tensors, 5, 0.2, topk, border=border)
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=1e-10, atol=1e-12)
    upstream = torch.randn_like(cpu)
    grads_cuda = torch.autograd.grad(cuda, tensors, upstream.cuda())
    cpu_tensors = [t.clone().requires_grad_() for t in (query, keys, values)]
    grads_cpu = torch.autograd.grad(wsss_ext.propagate_labels(*cpu_tensors, 5, 0.2, topk, border=border), cpu_tensors,
                                    upstream)
    for c, g in zip(grads_cuda, grads_cpu):
        torch.testing.assert_close(c.cpu(), g, rtol=1e-9, atol=1e-11)
