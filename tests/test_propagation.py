"""wsss_ext.propagate_labels against the unfold + softmax method MAST and CRW
use (wsss_ext.reference.propagate_labels_unfold) and a per-pixel oracle, on
properties, gradients and bad input; wsss_ext.track_video end to end."""

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


def per_pixel_oracle(query, keys, values, radius, temperature, topk):
    """Candidates listed pixel by pixel, softmax (or top-k softmax) over them."""
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
                            else:
                                scores.append(0.0)
                                vals.append(torch.zeros(labels, dtype=query.dtype))
                scores = torch.tensor(scores, dtype=query.dtype)
                vals = torch.stack(vals)
                if topk is not None:
                    top, index = scores.topk(topk)
                    out[b, :, y, x] = torch.softmax(top, 0) @ vals[index]
                else:
                    out[b, :, y, x] = torch.softmax(scores, 0) @ vals
    return out


@pytest.mark.parametrize("radius, temperature, topk", [(1, 1.0, None), (2, 0.5, None), (2, 0.07, 5), (0, 1.0, 1)])
def test_matches_the_per_pixel_oracle(radius, temperature, topk):
    query, keys, values = frames(1, 2, 4, 3, 5, 6)
    ours = wsss_ext.propagate_labels(query, keys, values, radius, temperature, topk)
    expected = per_pixel_oracle(query, keys, values, radius, temperature, topk)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "radius, temperature, topk, normalize", [(3, 1.0, None, False), (6, 0.07, 10, True), (4, 0.3, 64, False)]
)
def test_matches_the_unfold_method(radius, temperature, topk, normalize):
    query, keys, values = frames(2, 3, 16, 5, 13, 11)
    ours = wsss_ext.propagate_labels(query, keys, values, radius, temperature, topk, normalize)
    expected = propagate_labels_unfold(query, keys, values, radius, temperature, topk, normalize)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)


def test_float32_matches_the_unfold_method_at_mast_settings():
    query, keys, values = frames(1, 2, 64, 7, 20, 30, dtype=torch.float32)
    ours = wsss_ext.propagate_labels(query / 4, keys / 4, values, radius=12)
    expected = propagate_labels_unfold(query.double() / 4, keys.double() / 4, values.double(), radius=12)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours.double(), expected, rtol=1e-5, atol=1e-5)


def test_one_hot_labels_stay_normalised_away_from_the_border():
    query, keys, _ = frames(1, 2, 8, 3, 16, 16)
    labels = F.one_hot(torch.randint(0, 3, (1, 2, 16, 16)), 3).permute(0, 1, 4, 2, 3).double()
    out = wsss_ext.propagate_labels(query, keys, labels, radius=3)
    # Inside the map every candidate carries a one-hot value: the mass is 1.
    torch.testing.assert_close(out.sum(1)[:, 3:-3, 3:-3], torch.ones(1, 10, 10, dtype=torch.float64))
    assert float(out.min()) >= 0 and float(out.sum(1).max()) <= 1 + 1e-12


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


@pytest.mark.parametrize("radius, temperature, topk, normalize", [(1, 0.5, None, False), (2, 0.3, 6, True)])
def test_gradcheck(radius, temperature, topk, normalize):
    query, keys, values = (t.requires_grad_() for t in frames(1, 2, 3, 2, 4, 5))
    fn = lambda q, k, v: wsss_ext.propagate_labels(q, k, v, radius, temperature, topk, normalize)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (query, keys, values))


def test_gradient_equals_the_unfold_autograd_gradient():
    query, keys, values = (t.requires_grad_() for t in frames(2, 3, 6, 4, 9, 8))
    upstream = torch.randn(2, 4, 9, 8, dtype=torch.float64)
    for topk in (None, 9):
        ours = torch.autograd.grad(wsss_ext.propagate_labels(query, keys, values, 2, 0.4, topk), (query, keys, values),
                                   upstream)
        theirs = torch.autograd.grad(propagate_labels_unfold(query, keys, values, 2, 0.4, topk),
                                     (query, keys, values), upstream)
        for mine, reference in zip(ours, theirs):
            torch.testing.assert_close(mine, reference, rtol=1e-9, atol=1e-11)


def test_custom_op_passes_opcheck():
    query, keys, values = (t.requires_grad_() for t in frames(1, 2, 3, 2, 4, 5))
    for topk in (0, 4):
        torch.library.opcheck(torch.ops.wsss_ext.propagate_labels.default, (query, keys, values, 1, 2.0, topk))


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
    ],
)
def test_bad_input(make, error, match):
    query, keys, values, kwargs = make(*_inputs())
    with pytest.raises(error, match=match):
        wsss_ext.propagate_labels(query, keys, values, **kwargs)


def test_bad_tracker_input():
    with pytest.raises(ValueError, match="non-negative integer labels"):
        wsss_ext.track_video(torch.randn(2, 4, 5, 5), torch.rand(5, 5))
    with pytest.raises(ValueError, match="features\\[1\\] has shape"):
        wsss_ext.track_video([torch.randn(4, 5, 5), torch.randn(4, 5, 6)], torch.zeros(5, 5, dtype=torch.long))


def test_compiled_checks_catch_bad_buffers():
    from wsss_ext import _C

    q, k, v = torch.randn(1, 6, 7, 4), torch.randn(1, 2, 6, 7, 4), torch.rand(1, 2, 6, 7, 3)
    out, lse = torch.empty(1, 6, 7, 3), torch.empty(1, 6, 7)
    with pytest.raises(ValueError, match="topk must be in"):
        _C.propagation_forward(q, k, v, out, lse, torch.empty(1, 6, 7, 100, dtype=torch.int32), 1, 1.0, 100)
    with pytest.raises(ValueError, match="values must have shape"):
        _C.propagation_forward(q, k, v[..., :2, :], out, lse, None, 1, 1.0, 0)
    with pytest.raises(ValueError, match="lse must have shape"):
        _C.propagation_forward(q, k, v, out, lse[:, :5], None, 1, 1.0, 0)


# --- CUDA --------------------------------------------------------------------------------------------------


@requires_cuda
@pytest.mark.parametrize("labels, topk", [(1, None), (3, None), (21, 10), (8, 64)])
def test_cuda_matches_cpu(labels, topk):
    query, keys, values = frames(2, 3, 64, labels, 17, 23)
    cpu = wsss_ext.propagate_labels(query, keys, values, 5, 0.2, topk)
    tensors = [t.cuda().requires_grad_() for t in (query, keys, values)]
    cuda = wsss_ext.propagate_labels(*tensors, 5, 0.2, topk)
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=1e-10, atol=1e-12)
    upstream = torch.randn_like(cpu)
    grads_cuda = torch.autograd.grad(cuda, tensors, upstream.cuda())
    cpu_tensors = [t.clone().requires_grad_() for t in (query, keys, values)]
    grads_cpu = torch.autograd.grad(wsss_ext.propagate_labels(*cpu_tensors, 5, 0.2, topk), cpu_tensors, upstream)
    for c, g in zip(grads_cuda, grads_cpu):
        torch.testing.assert_close(c.cpu(), g, rtol=1e-9, atol=1e-11)
