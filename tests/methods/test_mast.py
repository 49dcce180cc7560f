"""MAST (Lai et al., CVPR 2020): the reconstruction loss against an unfold +
softmax oracle written from the paper, the zero border rule, the memory
schedule and coarse search, tracking, and bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from method_support import one_thread, seeded_batch, traced_ops, train_losses  # noqa: F401  (one_thread: autouse)
from video_oracles import use_position_features, window_oracle

import python_models
from python_models.augment.colour import channel_dropout, normalize_lab, rgb_to_lab
from python_models.heads.correspondence import align, coarse_offsets, read_memory, reconstruct_dropped
from python_models.methods.mast import MAST, mast_memory


def _tiny(**overrides) -> MAST:
    torch.manual_seed(0)
    return MAST(backbone="tiny", **overrides)


def test_defaults_are_the_published_values():
    assert MAST.DEFAULTS["train_radius"] == 6 and MAST.DEFAULTS["test_radius"] == 12
    assert MAST.DEFAULTS["loss_scale"] == 20.0 and MAST.DEFAULTS["dim"] == 64
    assert MAST.DEFAULTS["train_references"] == (0, 2) and MAST.DEFAULTS["train_target"] == 4
    assert MAST.DEFAULTS["long_term"] == (0, 5) and MAST.DEFAULTS["long_term_gap"] == 15
    assert MAST.KERNELS == ("propagate_labels",) and MAST.BORDER == "zero"
    assert python_models.METHODS["mast"] is MAST and issubclass(MAST, python_models.VideoMethod)


def test_reconstruction_loss_equals_the_unfold_oracle():
    model = _tiny().eval()
    frames = seeded_batch(model)["frames"]
    lab = normalize_lab(rgb_to_lab(frames))
    dropped = (2,)
    out, target = reconstruct_dropped(model.encoder, lab, dropped, radius=6)  # what losses() reads out
    torch.testing.assert_close(target, lab[:, 2, 2:3])
    seen = lab.clone()
    seen[:, :, 2] = 0
    seen = seen * 1.5
    with torch.no_grad():
        features = model.encoder(seen.flatten(0, 1)).unflatten(0, frames.shape[:2])
    keys = [features[:, 0], features[:, 1]]
    values = [lab[:, 0, 2:3, ::4, ::4], lab[:, 1, 2:3, ::4, ::4]]
    expected = window_oracle(features[:, 2], keys, values, 6)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)
    loss = model.losses({"frames": frames, "dropped_channels": dropped})["loss"]
    by_hand = F.smooth_l1_loss(20 * F.interpolate(expected, size=(32, 32), mode="bilinear"), 20 * lab[:, 2, 2:3])
    torch.testing.assert_close(loss, by_hand, atol=1e-4, rtol=1e-4)


def test_zero_border_leaves_mass_below_one_only_near_the_border():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 8, 10, 10, generator=g), torch.randn(1, 8, 10, 10, generator=g)
    ones = torch.ones(1, 1, 10, 10)
    mass = read_memory(q, [k, k], [ones, ones], radius=2)[0, 0]
    torch.testing.assert_close(mass[2:-2, 2:-2], torch.ones(6, 6))
    assert bool((mass[0] < 1 - 1e-4).all()) and bool((mass[:, -1] < 1 - 1e-4).all())


def test_lab_dropout_zeroes_one_colour_channel_and_rescales_by_three_halves():
    lab = torch.rand(2, 3, 3, 4, 4)
    for seed in range(6):
        out, dropped = channel_dropout(lab, channels=(1, 2), counts=(1,), generator=torch.Generator().manual_seed(seed))
        assert len(dropped) == 1 and dropped[0] in (1, 2)
        assert torch.all(out[:, :, dropped[0]] == 0)
        kept = [c for c in range(3) if c != dropped[0]]
        torch.testing.assert_close(out[:, :, kept], lab[:, :, kept] * 1.5)


def test_memory_schedule_follows_benchmark_py():
    assert mast_memory(1) == [(0, 0)]
    assert mast_memory(4) == [(0, 0), (1, 0), (3, 0)]
    assert mast_memory(8) == [(0, 0), (3, 0), (5, 0), (7, 0)]
    # frame 0 is 20 back: dilation min(4, 20 // 15 + 1) = 2; frame 5 is 15 back: read in place
    assert mast_memory(20) == [(0, 2), (5, 0), (15, 0), (17, 0), (19, 0)]
    assert mast_memory(100)[0] == (0, 4)


def test_coarse_search_finds_a_global_shift_and_align_undoes_it():
    g = torch.Generator().manual_seed(0)
    key = F.normalize(torch.randn(1, 16, 24, 24, generator=g), dim=1) * 10  # the self-match scores highest
    query = torch.roll(key, shifts=(-2, -4), dims=(2, 3))  # query[p] = key[p + (2, 4)]
    offsets = coarse_offsets(query, key, dilation=2, radius=3)
    centre = offsets[0, 6:-10, 6:-10]
    torch.testing.assert_close(centre, torch.tensor([4.0, 2.0]).expand_as(centre), atol=1e-3, rtol=0)
    aligned = align(key, offsets)
    torch.testing.assert_close(aligned[..., 6:-10, 6:-10], query[..., 6:-10, 6:-10], atol=1e-3, rtol=0)


def test_losses_run_the_kernel_and_fall():
    model = _tiny()
    batch = seeded_batch(model)
    ran, _ = traced_ops(model.losses, batch)
    assert "wsss_ext::propagate_labels" in ran
    losses = train_losses(model, {**batch, "dropped_channels": (1,)}, steps=12, lr=3e-3)
    assert losses[-1] < losses[0]


def test_track_keeps_frame_zero_and_follows_identical_frames():
    model = use_position_features(_tiny())
    frames = seeded_batch(model)["frames"][0]
    first = torch.zeros(32, 32, dtype=torch.long)
    first[8:24] = 1  # a band on the stride-4 grid: the labels' trip through the feature grid is exact
    still = frames[:1].expand(6, -1, -1, -1).contiguous()
    out = model.track(still, first)
    assert out.shape == (6, 32, 32) and out.dtype == torch.int64
    assert all(torch.equal(frame, first) for frame in out)  # identical frames, sharp matches: the identity


def test_track_reads_long_term_references_through_the_correlation():
    model = _tiny().eval()
    frames = seeded_batch(model)["frames"][0, :1].expand(18, -1, -1, -1).contiguous()
    ran, out = traced_ops(model.track, frames, torch.zeros(32, 32, dtype=torch.long), 2)
    assert {"wsss_ext::correlation", "wsss_ext::propagate_labels"} <= ran
    assert torch.all(out == 0)


def test_bad_input_is_refused_by_name():
    model = _tiny()
    batch = seeded_batch(model)
    with pytest.raises(ValueError, match="frames"):
        model.losses({"frames": batch["frames"][:, :2]})
    with pytest.raises(ValueError, match="frames"):
        model.losses({"frames": batch["frames"][..., :30, :30]})
    with pytest.raises(TypeError, match="frames"):
        model.losses({"frames": (batch["frames"] * 255).to(torch.uint8)})
    bad = batch["frames"].clone()
    bad[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="frames"):
        model.losses({"frames": bad})
    with pytest.raises(ValueError, match="dropped_channels"):
        model.losses({**batch, "dropped_channels": (3,)})
    with pytest.raises(ValueError, match="batch lacks"):
        model.losses({"images": batch["images"]})
    video = batch["frames"][0]
    with pytest.raises(ValueError, match="first_labels"):
        model.track(video, torch.zeros(16, 16, dtype=torch.long))
    with pytest.raises(TypeError, match="first_labels"):
        model.track(video, torch.zeros(32, 32))
    with pytest.raises(ValueError, match="n_labels"):
        model.track(video, torch.full((32, 32), 3), n_labels=2)
    with pytest.raises(ValueError, match="frames"):
        model.track(video[0], torch.zeros(32, 32, dtype=torch.long))
