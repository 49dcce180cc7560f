"""The shared correspondence blocks of the video methods: the pointer
(``wsss_ext.propagate_labels``) under both border rules as the methods call
it, against unfold + softmax oracles (per-pixel label mass,
identity on identical frames, dependence on the window only, gradcheck),
one softmax over several references, the aligned long-term read, the
tracking loop and the synthetic clips."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from method_support import one_thread  # noqa: F401  (autouse)
from video_oracles import global_oracle, window_oracle

import wsss_ext
from python_models.heads.correspondence import align, long_term_dilation, read_memory
from python_models.methods.base import (
    VideoMethod,
    propagate_video,
    synthetic_video_batch,
)


def _inputs(seed=0, refs=2, channels=6, labels=3, size=(7, 9), dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, channels, *size, generator=g, dtype=dtype)
    k = torch.randn(1, refs, channels, *size, generator=g, dtype=dtype)
    v = torch.softmax(torch.randn(1, refs, labels, *size, generator=g, dtype=dtype), 2)
    return q, k, v


def propagate(query, keys, values, radius, temperature=1.0, border="zero"):
    return wsss_ext.propagate_labels(query, keys, values, radius, temperature, border=border)


@pytest.mark.parametrize("border", ["zero", "exclude"])
def test_propagate_equals_the_unfold_oracle_of_its_border_rule(border):
    q, k, v = _inputs()
    out = propagate(q, k, v, radius=2, temperature=0.5, border=border)
    expected = window_oracle(q, list(k.unbind(1)), list(v.unbind(1)), 2, 0.5, border)
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-8)


def test_label_mass_is_one_inside_and_below_one_at_the_border_only_under_zero():
    q, k, v = _inputs(1)
    one = propagate(q, k, v, 2, border="exclude").sum(1)[0]
    torch.testing.assert_close(one, torch.ones_like(one), atol=1e-12, rtol=0)  # CorrFlow: exactly 1 everywhere
    zero = propagate(q, k, v, 2, border="zero").sum(1)[0]
    torch.testing.assert_close(zero[2:-2, 2:-2], torch.ones(3, 5, dtype=torch.float64), atol=1e-12, rtol=0)
    assert bool((zero[[0, -1]] < 1 - 1e-6).all()) and bool((zero[:, [0, -1]] < 1 - 1e-6).all())


@pytest.mark.parametrize("border", ["zero", "exclude"])
def test_identical_frames_with_a_sharp_softmax_propagate_the_identity(border):
    g = torch.Generator().manual_seed(2)
    features = F.normalize(torch.randn(1, 16, 6, 6, generator=g, dtype=torch.float64), dim=1)
    labels = torch.randint(0, 4, (6, 6), generator=g)
    one_hot = F.one_hot(labels, 4).permute(2, 0, 1)[None, None].double()
    out = propagate(features, features[:, None], one_hot, 3, temperature=0.01, border=border)
    assert torch.equal(out[0].argmax(0), labels)
    inside = out[0, :, 3:-3, 3:-3] if border == "zero" else out[0]
    reference = one_hot[0, 0, :, 3:-3, 3:-3] if border == "zero" else one_hot[0, 0]
    torch.testing.assert_close(inside, reference, atol=1e-6, rtol=0)


@pytest.mark.parametrize("border", ["zero", "exclude"])
def test_the_result_depends_only_on_the_window(border):
    q, k, v = _inputs(3, size=(9, 9))
    base = propagate(q, k, v, 1, border=border)
    far_k, far_v = k.clone(), v.clone()
    far_k[..., :, 6:] = 50.0  # columns 6.. are outside every window of pixels in columns <= 4
    far_v[..., :, 6:] = 7.0
    changed = propagate(q, far_k, far_v, 1, border=border)
    torch.testing.assert_close(changed[..., :5], base[..., :5], atol=0, rtol=0)
    assert not torch.allclose(changed[..., 5:], base[..., 5:])


def test_a_whole_grid_window_with_excluded_padding_is_global_attention():
    q, k, v = _inputs(4, size=(5, 4))
    out = propagate(q, k, v, radius=4, border="exclude")
    torch.testing.assert_close(out, global_oracle(q, k, v), atol=1e-10, rtol=1e-8)
    assert VideoMethod.window_radius(None, (5, 4)) == 4 and VideoMethod.window_radius(None, (200, 90)) == 64


def test_propagate_gradcheck_under_both_rules():
    q, k, v = _inputs(5, refs=1, channels=3, labels=2, size=(4, 4))
    for border in ("zero", "exclude"):
        args = tuple(x.clone().requires_grad_() for x in (q, k, v))
        assert torch.autograd.gradcheck(lambda a, b, c, rule=border: propagate(a, b, c, 1, 0.7, border=rule), args)


def test_read_memory_is_one_softmax_over_all_references():
    q, k, v = _inputs(6, refs=3)
    out = read_memory(q, list(k.unbind(1)), list(v.unbind(1)), 2)
    torch.testing.assert_close(out, window_oracle(q, list(k.unbind(1)), list(v.unbind(1)), 2), atol=1e-10, rtol=0)
    # not the mean of three separate softmaxes
    separate = torch.stack([window_oracle(q, [k[:, r]], [v[:, r]], 2) for r in range(3)]).mean(0)
    assert not torch.allclose(out, separate, atol=1e-4)


def test_align_with_a_constant_offset_is_a_shift_with_zero_fill():
    x = torch.arange(2 * 5 * 6, dtype=torch.float64).view(1, 2, 5, 6)
    offsets = torch.zeros(1, 5, 6, 2, dtype=torch.float64)
    offsets[..., 0], offsets[..., 1] = 2.0, -1.0  # read x at (y - 1, x + 2)
    out = align(x, offsets)
    torch.testing.assert_close(out[..., 1:, :4], x[..., :-1, 2:])
    assert torch.all(out[..., 0, :] == 0) and torch.all(out[..., :, 4:] == 0)
    assert [long_term_dilation(g) for g in (1, 15, 16, 29, 30, 45, 60, 500)] == [0, 0, 2, 2, 3, 4, 4, 4]


def test_bad_references_are_refused():
    q, k, v = _inputs()
    with pytest.raises(ValueError, match="border"):
        read_memory(q, [k[:, 0]], [v[:, 0]], 1, border="replicate")
    with pytest.raises(ValueError, match="keys"):
        read_memory(q, [k[:, 0]], [], 1)
    with pytest.raises(ValueError, match="dilations"):
        read_memory(q, [k[:, 0]], [v[:, 0]], 1, dilations=[0, 2])


def test_propagate_video_feeds_hard_labels_back_and_keeps_frame_zero():
    features = torch.randn(4, 8, 4, 4, generator=torch.Generator().manual_seed(0))
    first = torch.zeros(16, 16, dtype=torch.long)
    first[:8] = 1
    calls = []

    def memory(t):
        calls.append(t)
        return [(t - 1, 0)]

    def read(query, keys, values, radius, dilations, temperature, border):
        assert len(keys) == 1 and radius == 2 and border == "exclude" and dilations == [0]
        assert torch.all((values[0] == 0) | (values[0] == 1) | ((values[0] > 0) & (values[0] < 1)))
        return values[0]  # copy the reference's labels

    out = propagate_video(features, first, 2, memory, read, radius=2, border="exclude")
    assert calls == [1, 2, 3] and out.shape == (4, 16, 16)
    assert all(torch.equal(frame, first) for frame in out)


def test_synthetic_clips_translate_exactly_and_are_reproducible():
    batch = synthetic_video_batch(2, 32, 3, torch.Generator().manual_seed(0))
    again = synthetic_video_batch(2, 32, 3, torch.Generator().manual_seed(0))
    assert all(torch.equal(batch[key], again[key]) for key in batch)
    frames, masks = batch["frames"], batch["masks"]
    assert frames.shape == (2, 3, 3, 32, 32) and masks.shape == (2, 3, 32, 32)
    assert float(frames.min()) >= 0 and float(frames.max()) <= 1
    background = (masks[:, 0, 1:, 1:] == 0) & (masks[:, 1, :-1, :-1] == 0)
    moved = frames[:, 1, :, :-1, :-1].permute(1, 0, 2, 3)[:, background]
    before = frames[:, 0, :, 1:, 1:].permute(1, 0, 2, 3)[:, background]
    torch.testing.assert_close(moved, before)  # the texture moves by one pixel up-left per frame
    assert masks[0].sum((1, 2)).tolist() == [64, 64, 64]
    with pytest.raises(ValueError, match="image_size"):
        synthetic_video_batch(1, 4)
