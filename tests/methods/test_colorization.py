"""Tracking by colorization (Vondrick et al., ECCV 2018): the pointer is the
global softmax over every reference pixel (checked against a dense
attention oracle), the cross-entropy against a hand-written one, the
temporal convolutions, tracking and bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from method_support import one_thread, seeded_batch, traced_ops, train_losses  # noqa: F401  (one_thread: autouse)
from video_oracles import global_oracle

import python_models
from python_models.augment.colour import lab_to_rgb, rgb_to_lab
from python_models.methods.colorization import Colorization, TemporalConv


def _tiny(**overrides) -> Colorization:
    torch.manual_seed(0)
    return Colorization(backbone="tiny", temporal_layers=2, **overrides)


def test_defaults():
    d = Colorization.DEFAULTS
    assert d["colour_clusters"] == 16 and d["output_stride"] == 8 and d["dim"] == 64
    assert d["radius"] is None and d["test_radius"] is None  # global attention
    assert Colorization.CLIP_LENGTH == 4 and Colorization.BORDER == "exclude"
    assert Colorization.KERNELS == ("propagate_labels",) and python_models.METHODS["colorization"] is Colorization


def test_pointer_is_global_attention_and_the_loss_its_cross_entropy():
    model = _tiny().eval()
    frames = seeded_batch(model)["frames"]
    with torch.no_grad():
        features = model.encode_clip(frames)                  # B x 4 x D x 4 x 4 at stride 8
        colours = model.quantizer(frames)
        one_hot = F.one_hot(colours[:, :3], 16).movedim(-1, 2).float()
        probs = model.colorize(features, one_hot)
    values = F.interpolate(one_hot.flatten(0, 1), size=(4, 4), mode="bilinear").unflatten(0, (2, 3))
    expected = global_oracle(features[:, 3], features[:, :3], values)
    torch.testing.assert_close(probs, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 4, 4), atol=1e-5, rtol=0)
    loss = model.losses({"frames": frames})["loss"]
    up = F.interpolate(expected, size=(32, 32), mode="bilinear")
    by_hand = -torch.log(up.gather(1, colours[:, 3:4]) + 1e-8).mean()
    torch.testing.assert_close(loss, by_hand, atol=1e-4, rtol=1e-4)


def test_the_network_sees_lightness_only():
    model = _tiny().eval()
    g = torch.Generator().manual_seed(0)
    lab = torch.cat([40 + 20 * torch.rand(1, 4, 1, 32, 32, generator=g, dtype=torch.float64),
                     torch.rand(1, 4, 2, 32, 32, generator=g, dtype=torch.float64) * 10 - 5], 2)
    tinted = lab.clone()
    tinted[:, :, 1:] += torch.tensor([6.0, -4.0], dtype=torch.float64).view(2, 1, 1)  # same L, other colours
    a, b = lab_to_rgb(lab), lab_to_rgb(tinted)
    assert not torch.allclose(a, b)
    torch.testing.assert_close(rgb_to_lab(a)[:, :, 0], rgb_to_lab(b)[:, :, 0])  # both in the sRGB gamut
    with torch.no_grad():
        torch.testing.assert_close(model.encode_clip(a.float()), model.encode_clip(b.float()), atol=1e-4, rtol=1e-4)
        assert model.encode_clip(a.float()).shape == (1, 4, 64, 4, 4)


def test_temporal_convolutions_mix_neighbouring_frames_only():
    torch.manual_seed(0)
    block = TemporalConv(4, 1).eval()
    x = torch.randn(1, 5, 4, 3, 3)
    y = x.clone()
    y[:, 4] += 1.0  # frame 4 changes: frames 0-2 are outside the 3-frame kernel
    torch.testing.assert_close(block(x)[:, :3], block(y)[:, :3])
    assert not torch.allclose(block(x)[:, 3], block(y)[:, 3])


def test_losses_run_the_kernel_and_fall():
    model = _tiny()
    batch = seeded_batch(model)
    ran, _ = traced_ops(model.losses, batch)
    assert "wsss_ext::propagate_labels" in ran
    losses = train_losses(model, batch, steps=10, lr=3e-3)
    assert losses[-1] < losses[0]


def test_track_uses_frame_zero_and_the_recent_frames():
    model = _tiny()
    assert model.memory(6) == [(0, 0), (3, 0), (4, 0), (5, 0)]
    batch = seeded_batch(model)
    out = model.track(batch["frames"][0], batch["masks"][0, 0])
    assert out.shape == (4, 32, 32) and torch.equal(out[0], batch["masks"][0, 0])
    assert set(out.unique().tolist()) <= {0, 1}


def test_bad_input_is_refused_by_name():
    model = _tiny()
    batch = seeded_batch(model)
    with pytest.raises(ValueError, match="frames"):
        model.losses({"frames": batch["frames"][:, :3]})
    with pytest.raises(ValueError, match="stride 8"):
        model.losses({"frames": batch["frames"][..., :28, :28]})
    with pytest.raises(ValueError, match="frames"):
        model.track(batch["frames"], batch["masks"][0, 0])
    with pytest.raises(ValueError, match="radius"):
        Colorization.window_radius(-1, (4, 4))
