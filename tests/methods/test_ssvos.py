"""SS-VOS (arXiv 2006.12480) as this library defines it: MAST's reconstruction
loss (against the unfold oracle), the rolling long-term memory, online
adaptation on a copy (the model itself unchanged), tracking and bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from method_support import one_thread, seeded_batch, traced_ops  # noqa: F401  (one_thread: autouse)
from video_oracles import use_position_features, window_oracle

import python_models
from python_models.augment.colour import normalize_lab, rgb_to_lab
from python_models.methods.ssvos import SSVOS, ssvos_memory


def _tiny(**overrides) -> SSVOS:
    torch.manual_seed(0)
    return SSVOS(backbone="tiny", **overrides)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_defaults_and_registration():
    d = SSVOS.DEFAULTS
    assert d["train_radius"] == 6 and d["test_radius"] == 12 and d["loss_scale"] == 20.0
    assert d["train_references"] == (0, 2) and d["train_target"] == 4
    assert d["adapt_steps"] == 10 and d["long_term_interval"] == 5 and d["long_term_size"] == 4
    assert SSVOS.BORDER == "zero" and SSVOS.KERNELS == ("propagate_labels",)
    assert python_models.METHODS["ssvos"] is SSVOS


def test_reconstruction_loss_equals_the_unfold_oracle():
    model = _tiny().eval()
    frames = seeded_batch(model)["frames"]
    loss = model.losses({"frames": frames, "dropped_channels": (1,)})["loss"]
    lab = normalize_lab(rgb_to_lab(frames))
    seen = lab.clone()
    seen[:, :, 1] = 0
    with torch.no_grad():
        features = model.encoder((seen * 1.5).flatten(0, 1)).unflatten(0, (2, 3))
    out = window_oracle(features[:, 2], [features[:, 0], features[:, 1]],
                        [lab[:, 0, 1:2, ::4, ::4], lab[:, 1, 1:2, ::4, ::4]], 6)
    expected = F.smooth_l1_loss(20 * F.interpolate(out, size=(32, 32), mode="bilinear"), 20 * lab[:, 2, 1:2])
    torch.testing.assert_close(loss, expected, atol=1e-4, rtol=1e-4)


def test_long_term_memory_keeps_sampling_the_video():
    assert ssvos_memory(1) == [(0, 0)]
    assert ssvos_memory(7) == [(0, 0), (2, 0), (4, 0), (5, 0), (6, 0)]
    refs = ssvos_memory(40)
    # frame 0 (40 back: dilation 3), the four latest multiples of 5 before 40, and 39, 37, 35
    assert refs == [(0, 3), (20, 2), (25, 0), (30, 0), (35, 0), (37, 0), (39, 0)]
    assert [r for r, _ in ssvos_memory(40, size=0)] == [0, 35, 37, 39]


def test_online_adaptation_changes_a_copy_only():
    model = _tiny(adapt_steps=3, adapt_lr=1e-2)
    video = seeded_batch(model)["frames"][0]
    video = torch.cat([video, video.flip(0)])  # six frames
    before = _state(model)
    adapted = model.adapted(video)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    changed = [k for k, v in adapted.state_dict().items() if not torch.equal(before[k], v)]
    assert any(k.endswith("weight") for k in changed)
    assert adapted.config.adapt_steps == 0 and not adapted.training
    assert model.adapted(video[:2]).state_dict().keys() == before.keys()  # too short: a plain copy


def test_track_is_pure_and_reads_long_term_references_through_the_correlation():
    model = _tiny(adapt_steps=1)
    frames = seeded_batch(model)["frames"][0, :1].expand(18, -1, -1, -1).contiguous()
    first = torch.zeros(32, 32, dtype=torch.long)
    first[8:24, 8:24] = 1
    before = _state(model)
    ran, out = traced_ops(model.track, frames, first)
    assert {"wsss_ext::correlation", "wsss_ext::propagate_labels"} <= ran
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert out.shape == (18, 32, 32) and torch.equal(out[0], first) and set(out.unique().tolist()) <= {0, 1}


def test_a_still_video_with_sharp_features_keeps_its_mask_through_the_long_term_memory():
    model = use_position_features(_tiny(adapt_steps=0))
    frames = seeded_batch(model)["frames"][0, :1].expand(20, -1, -1, -1).contiguous()
    first = torch.zeros(32, 32, dtype=torch.long)
    first[8:24] = 1  # a band on the stride-4 grid: the labels' trip through the feature grid is exact
    out = model.track(frames, first)
    assert all(torch.equal(frame, first) for frame in out)


def test_bad_input_is_refused_by_name():
    model = _tiny()
    batch = seeded_batch(model)
    with pytest.raises(ValueError, match="dropped_channels"):
        model.losses({**batch, "dropped_channels": (1, 1)})
    with pytest.raises(ValueError, match="frames"):
        model.losses({"frames": batch["frames"][:, :2]})
    with pytest.raises(ValueError, match="first_labels"):
        model.track(batch["frames"][0], torch.zeros(8, 8, dtype=torch.long))
    with pytest.raises(TypeError, match="first_labels"):
        model.track(batch["frames"][0], torch.zeros(32, 32, dtype=torch.bool))
