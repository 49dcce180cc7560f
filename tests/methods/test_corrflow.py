"""CorrFlow (Lai & Xie, BMVC 2019): the pointer under the exclude border
rule, L_sim with scheduled sampling and the forward-backward L_long against
an oracle written from the paper's recursion, the schedule's state moving in
after_step only, frame-to-frame tracking and bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from method_support import one_thread, seeded_batch, traced_ops, train_losses  # noqa: F401  (one_thread: autouse)
from video_oracles import use_position_features, window_oracle

import python_models
from python_models.losses.video import scheduled_sampling_threshold
from python_models.methods.corrflow import CorrFlow


def _tiny(**overrides) -> CorrFlow:
    torch.manual_seed(0)
    return CorrFlow(backbone="tiny", **overrides)


def _oracle_pointer(reference, colours, target, radius=6):
    """CorrFlow colorizer.py from scratch: colours resized to the grid, -1e10 padding, replicate labels, upsampled."""
    values = F.interpolate(colours, size=reference.shape[-2:], mode="bilinear", align_corners=False)
    out = window_oracle(target, [reference], [values], radius, border="exclude")
    return F.interpolate(out, size=colours.shape[-2:], mode="bilinear", align_corners=False)


def _nll(probs, target):
    return F.nll_loss(torch.log(probs + 1e-8), target)


def test_defaults_are_the_published_values():
    assert CorrFlow.DEFAULTS["radius"] == 6 and CorrFlow.DEFAULTS["colour_clusters"] == 16
    assert (CorrFlow.DEFAULTS["sampling_start"], CorrFlow.DEFAULTS["sampling_end"]) == (0.9, 0.6)
    assert CorrFlow.DEFAULTS["long_weight"] == 0.1 and CorrFlow.DEFAULTS["dim"] == 64
    assert CorrFlow.KERNELS == ("propagate_labels",) and CorrFlow.BORDER == "exclude"
    assert python_models.METHODS["corrflow"] is CorrFlow


def test_pointer_matches_the_oracle_and_keeps_the_mass_exactly_one():
    model = _tiny().eval()
    frames = seeded_batch(model)["frames"]
    with torch.no_grad():
        f0, f1 = model.encoder(frames[:, 0]), model.encoder(frames[:, 1])
        colours = F.one_hot(model.quantizer(frames[:, 0]), 16).permute(0, 3, 1, 2).float()
        out = model.pointer(f0, colours, f1)
    torch.testing.assert_close(out, _oracle_pointer(f0, colours, f1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.sum(1), torch.ones(2, 32, 32), atol=1e-5, rtol=0)


@pytest.mark.parametrize("use_truth", [(True,), (False,)])
def test_similarity_and_cycle_losses_equal_the_recursive_oracle(use_truth):
    model = _tiny().eval()
    frames = seeded_batch(model, seed=1)["frames"]
    terms = model.losses({"frames": frames, "dropped_channels": (), "use_truth": use_truth})
    with torch.no_grad():
        f = [model.encoder(frames[:, i]) for i in range(3)]
        q = model.quantizer(frames)
        c = [F.one_hot(q[:, i], 16).permute(0, 3, 1, 2).float() for i in range(3)]
    first = _oracle_pointer(f[0], c[0], f[1])
    second = _oracle_pointer(f[1], c[1] if use_truth[0] else first, f[2])
    similarity = _nll(first, q[:, 1]) + _nll(second, q[:, 2])
    back1 = _oracle_pointer(f[1], first, f[0])                                        # 0 -> 1 -> 0
    forward2 = _oracle_pointer(f[1], first, f[2])             # the cycle always feeds its own predictions
    back2 = _oracle_pointer(f[1], _oracle_pointer(f[2], forward2, f[1]), f[0])        # 0 -> 1 -> 2 -> 1 -> 0
    cycle = _nll(back1, q[:, 0]) + _nll(back2, q[:, 0])
    torch.testing.assert_close(terms["similarity"], similarity, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(terms["long"], cycle, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(terms["loss"], similarity + 0.1 * cycle, atol=1e-4, rtol=1e-4)


def test_scheduled_sampling_moves_only_in_after_step():
    assert scheduled_sampling_threshold(0, 100) == 0.9
    assert scheduled_sampling_threshold(50, 100) == pytest.approx(0.75)
    assert scheduled_sampling_threshold(100, 100) == pytest.approx(0.6)
    assert scheduled_sampling_threshold(10, 0) == 0.9  # schedule length not yet known
    model = _tiny()
    batch = seeded_batch(model)
    assert model.truth_probability == 0.9
    model.losses(batch)
    assert int(model.iteration) == 0 and model.truth_probability == 0.9
    model.after_step(49, 100)
    assert int(model.iteration) == 50 and model.truth_probability == pytest.approx(0.75)
    model.after_step(99, 100)
    assert model.truth_probability == pytest.approx(0.6)


def test_losses_run_the_kernel_and_fall():
    model = _tiny()
    batch = seeded_batch(model)
    ran, _ = traced_ops(model.losses, batch)
    assert "wsss_ext::propagate_labels" in ran
    losses = train_losses(model, {**batch, "dropped_channels": (0,), "use_truth": (True,)}, steps=10, lr=3e-3)
    assert losses[-1] < losses[0]


def test_track_reads_the_previous_frame_only_and_keeps_a_still_video():
    model = use_position_features(_tiny())
    assert model.memory(7) == [(6, 0)]
    batch = seeded_batch(model)
    still = batch["frames"][0, :1].expand(5, -1, -1, -1).contiguous()
    first = torch.zeros(32, 32, dtype=torch.long)
    first[:, 4:16] = 2  # a band on the stride-4 grid: the labels' trip through the feature grid is exact
    out = model.track(still, first, n_labels=3)
    assert all(torch.equal(frame, first) for frame in out)


def test_bad_input_is_refused_by_name():
    model = _tiny()
    batch = seeded_batch(model)
    with pytest.raises(ValueError, match="use_truth"):
        model.losses({**batch, "use_truth": (True, False)})
    with pytest.raises(ValueError, match="frames"):
        model.losses({"frames": batch["frames"][:, :2]})
    with pytest.raises(ValueError, match="frames"):
        model.losses({"frames": batch["frames"][..., :30]})
    with pytest.raises(TypeError, match="frames"):
        model.losses({"frames": batch["frames"].double().numpy()})
    with pytest.raises(ValueError, match="first_labels"):
        model.track(batch["frames"][0], torch.full((32, 32), -1))
