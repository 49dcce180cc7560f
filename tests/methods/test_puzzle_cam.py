"""Puzzle-CAM (python_models.methods.PuzzleCAM and python_models.losses.puzzle):
published defaults, the alpha schedule, the re-loss against hand-computed
values and a loop oracle, gradcheck, the puzzle wiring against a loop over
tiles, the dense CRF pseudo-label step against the repository's per-image
procedure with wsss_ext's own ops, and a training smoke."""

from __future__ import annotations

import math

import pytest
import torch

import wsss_ext
from method_support import seeded_batch, traced_ops, train_losses
from python_models import METHODS, create
from python_models.losses import puzzle_cam_loss, puzzle_make_cam, puzzle_re_loss
from python_models.methods.puzzle_cam import PuzzleCAM


def _model(**overrides):
    torch.manual_seed(0)
    return create("puzzle_cam", backbone="tiny", num_classes=3, **overrides)


def test_defaults_are_the_published_values():
    # PuzzleCAM README (train_classification_with_puzzle.py --re_loss_option masking --re_loss L1_Loss
    # --alpha_schedule 0.50 --alpha 4.00; make_pseudo_labels.py --threshold 0.35 --crf_iteration 1),
    # inference_classification.py --scales 0.5,1.0,1.5,2.0, demo_utils.crf_inference_label (gt_prob 0.7,
    # gaussian 3/3, bilateral 50/5/10), core/networks.py (ResNet strides 2, 2, 2, 1: output stride 16).
    assert PuzzleCAM.DEFAULTS == dict(
        num_classes=20, backbone="resnet50", output_stride=16, num_pieces=4, alpha=4.0, alpha_schedule=0.5,
        re_loss="l1", re_loss_option="masking", level="feature", cam_scales=(0.5, 1.0, 1.5, 2.0), cam_flip=True,
        threshold=0.35, gt_prob=0.7,
        crf=dict(n_iters=1, gaussian_sxy=3.0, gaussian_weight=3.0, bilateral_sxy=50.0, bilateral_srgb=5.0,
                 bilateral_weight=10.0))
    assert METHODS["puzzle_cam"] is PuzzleCAM and PuzzleCAM.KERNELS == ("dense_crf",)
    with pytest.raises(ValueError, match="num_pieces"):
        _model(num_pieces=3)


def test_alpha_ramps_linearly_over_the_first_half_in_after_step_only():
    model, max_steps = _model(), 100
    assert float(model.alpha) == 0.0  # step 0's weight
    batch = seeded_batch(model)
    model.losses(batch)
    assert float(model.alpha) == 0.0  # losses() moves no schedule
    seen = {}
    for step in range(max_steps):
        seen[step] = float(model.alpha)  # the weight step `step` trains with
        model.after_step(step, max_steps)
    seen[max_steps] = float(model.alpha)
    # alpha(i) = 4 * min(1, i / (0.5 * max_steps)) (train_classification_with_puzzle.py).
    assert seen[0] == 0.0
    assert seen[max_steps // 4] == pytest.approx(2.0)
    assert seen[max_steps // 2] == pytest.approx(4.0)
    assert seen[max_steps] == pytest.approx(4.0)
    assert seen[10] == pytest.approx(0.8) and seen[75] == pytest.approx(4.0)
    # The script's default alpha 1 and a constant weight with alpha_schedule 0.
    other = _model(alpha=1.0)
    other.after_step(24, 100)
    assert float(other.alpha) == pytest.approx(0.5)
    constant = _model(alpha_schedule=0.0)
    assert float(constant.alpha) == 4.0
    constant.after_step(0, 10)
    assert float(constant.alpha) == 4.0


def test_losses_total_uses_the_alpha_buffer():
    model = _model().eval()
    batch = seeded_batch(model)
    model.after_step(24, 100)  # alpha = 2
    terms = model.losses(batch)
    assert set(terms) == {"classification", "puzzle_classification", "reconstruction", "loss"}
    expected = terms["classification"] + terms["puzzle_classification"] + 2.0 * terms["reconstruction"]
    torch.testing.assert_close(terms["loss"], expected)
    assert float(terms["reconstruction"].detach()) > 0


def test_re_loss_on_a_hand_computed_case():
    cams = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])  # 1 x 2 x 1 x 2
    merged = torch.tensor([[[[0.0, 4.0]], [[3.0, 0.0]]]])
    labels = torch.tensor([[1.0, 0.0]])
    # masking: (|1 - 0| + |2 - 4| + 0 + 0) / 4 entries
    assert float(puzzle_re_loss(cams, merged, labels)) == pytest.approx(0.75)
    assert float(puzzle_re_loss(cams, merged, labels, distance="l2")) == pytest.approx((1 + 4) / 4)
    assert float(puzzle_re_loss(cams, merged, labels, mode="selection")) == pytest.approx(1.5)
    assert float(puzzle_re_loss(cams, merged, labels, mode="none")) == pytest.approx(7 / 4)
    # level "cam": make_cam maps class 0 to [0.5, 1] and [0, 1] (up to eps): |0.5| / 4
    assert float(puzzle_re_loss(cams, merged, labels, level="cam")) == pytest.approx(0.125, abs=1e-4)
    made = puzzle_make_cam(torch.tensor([[[[-1.0, 2.0, 4.0]]]]))
    torch.testing.assert_close(made, torch.tensor([[[[0.0, (2 - 1e-5) / (4 + 1e-5), (4 - 1e-5) / (4 + 1e-5)]]]]))


def _re_loss_oracle(a, b, labels, mode):
    """Loops over the repository's masking / selection rules (L1)."""
    batch, classes, h, w = a.shape
    if mode == "masking":
        total = 0.0
        for n in range(batch):
            for c in range(classes):
                for y in range(h):
                    for x in range(w):
                        total += labels[n, c] * abs(a[n, c, y, x] - b[n, c, y, x])
        return total / (batch * classes * h * w)
    total = 0.0
    for n in range(batch):
        present = [c for c in range(classes) if labels[n, c] > 0]
        values = [abs(a[n, c, y, x] - b[n, c, y, x]) for c in present for y in range(h) for x in range(w)]
        total += sum(values) / len(values) if values else 0.0
    return total / batch


@pytest.mark.parametrize("mode", ["masking", "selection"])
def test_re_loss_matches_a_loop_oracle_and_is_zero_on_equal_maps(mode):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 4, 2, 3, generator=g, dtype=torch.float64)
    b = torch.randn(3, 4, 2, 3, generator=g, dtype=torch.float64)
    labels = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.float64)
    expected = _re_loss_oracle(a.numpy(), b.numpy(), labels.numpy(), mode)
    assert float(puzzle_re_loss(a, b, labels, mode=mode)) == pytest.approx(expected, rel=1e-12)
    assert float(puzzle_re_loss(a, a.clone(), labels, mode=mode)) == 0.0
    terms = puzzle_cam_loss(a, a.clone(), labels, 4.0)
    assert float(terms["reconstruction"]) == 0.0
    torch.testing.assert_close(terms["classification"], terms["puzzle_classification"])
    torch.testing.assert_close(terms["loss"], 2 * terms["classification"])


def test_classification_terms_are_the_soft_margin_loss_of_the_gap_logits():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(2, 3, 2, 2, generator=g, dtype=torch.float64)
    b = torch.randn(2, 3, 2, 2, generator=g, dtype=torch.float64)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    tags = labels.tolist()

    def soft_margin(logits):
        total = 0.0
        for n in range(2):
            for c in range(3):
                s = 1 / (1 + math.exp(-logits[n][c]))
                total -= tags[n][c] * math.log(s) + (1 - tags[n][c]) * math.log(1 - s)
        return total / 6

    terms = puzzle_cam_loss(a, b, labels, 0.5)
    assert float(terms["classification"]) == pytest.approx(soft_margin(a.mean((2, 3)).tolist()), rel=1e-10)
    assert float(terms["puzzle_classification"]) == pytest.approx(soft_margin(b.mean((2, 3)).tolist()), rel=1e-10)
    expected = terms["classification"] + terms["puzzle_classification"] + 0.5 * terms["reconstruction"]
    torch.testing.assert_close(terms["loss"], expected)


@pytest.mark.parametrize("mode, distance, level", [("masking", "l1", "feature"), ("selection", "l1", "feature"),
                                                   ("masking", "l2", "feature"), ("masking", "l1", "cam")])
def test_re_loss_gradcheck(mode, distance, level):
    g = torch.Generator().manual_seed(2)
    a = torch.randn(2, 3, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 3, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]], dtype=torch.float64)
    if level == "cam":  # keep away from relu's kink and ties of the max
        a = (a.detach().abs() + 0.1 + torch.arange(4, dtype=torch.float64).view(1, 1, 2, 2)).requires_grad_()
        b = (b.detach().abs() + 0.1 + torch.arange(4, dtype=torch.float64).flip(0).view(1, 1, 2, 2)).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, y: puzzle_re_loss(x, y, labels, mode=mode, distance=distance,
                                                                level=level), (a, b))
    assert torch.autograd.gradcheck(lambda x, y: puzzle_cam_loss(x, y, labels, 2.0)["loss"], (a, b))


def test_losses_refuse_bad_input_by_name():
    a, labels = torch.randn(2, 3, 2, 2), torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    with pytest.raises(ValueError, match="labels"):
        puzzle_re_loss(a, a, labels[:, :2])
    with pytest.raises(ValueError, match="labels"):
        puzzle_re_loss(a, a, labels * 2)
    with pytest.raises(ValueError, match="merged_cams"):
        puzzle_re_loss(a, a[:, :, :1], labels)
    with pytest.raises(ValueError, match="merged_cams"):
        puzzle_re_loss(a, a[0], labels)
    bad = a.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="cams"):
        puzzle_re_loss(bad, a, labels)
    with pytest.raises(TypeError, match="cams"):
        puzzle_re_loss(a.long(), a, labels)
    with pytest.raises(ValueError, match="distance"):
        puzzle_re_loss(a, a, labels, distance="l3")
    with pytest.raises(ValueError, match="mode"):
        puzzle_re_loss(a, a, labels, mode="all")
    with pytest.raises(ValueError, match="alpha"):
        puzzle_cam_loss(a, a, labels, -1.0)
    with pytest.raises(TypeError, match="alpha"):
        puzzle_cam_loss(a, a, labels, "4")
    model = _model()
    batch = seeded_batch(model)
    with pytest.raises(ValueError, match="labels"):
        model.losses({**batch, "labels": batch["labels"][:1]})
    with pytest.raises(ValueError, match="divisible"):
        model.losses(seeded_batch(model, size=33))


def test_puzzle_cams_equal_a_loop_over_tiles_at_stride_16():
    model = _model().eval()
    images = seeded_batch(model)["images"]
    with torch.no_grad():
        full, merged = model.puzzle_cams(images)
        # 32-px images at output stride 16: 2 x 2 maps; each 16-px tile gives a 1 x 1 map.
        assert full.shape == merged.shape == (2, 3, 2, 2)
        for r in range(2):
            for c in range(2):
                tile = images[:, :, 16 * r:16 * (r + 1), 16 * c:16 * (c + 1)]
                piece = model.raw_cams(model.normalize(tile))
                assert piece.shape[-2:] == (1, 1)
                torch.testing.assert_close(merged[:, :, r:r + 1, c:c + 1], piece)
        torch.testing.assert_close(model(images), full.mean((2, 3)))
    # Sides that are not multiples of 32: the merged map is resized to the full one's size.
    with torch.no_grad():
        full, merged = model.puzzle_cams(seeded_batch(model, size=48)["images"])
    assert full.shape == merged.shape == (2, 3, 3, 3)


def test_pseudo_labels_run_dense_crf_and_equal_the_per_image_procedure():
    model = _model(cam_scales=(1.0,)).eval()  # one scale keeps it fast; the CRF settings are the defaults
    batch = seeded_batch(model, seed=3)
    images, labels = batch["images"], batch["labels"]
    ran, result = traced_ops(model.pseudo_labels, images, labels)
    assert "wsss_ext::dense_crf" in ran
    assert result.dtype == torch.int64 and result.shape == (2, 32, 32)
    # make_pseudo_labels.py per image: keys = [0] + tag columns + 1; argmax of [threshold, CAMs of the keys];
    # crf_inference_label over len(keys) labels (unary_from_labels, gt_prob 0.7, no unsure label).
    cams = model.cams(images, labels)
    image_u8 = (images * 255).round().clamp(0, 255).to(torch.uint8)
    for n in range(2):
        tags = labels[n].nonzero().flatten()
        keys = torch.cat([torch.zeros(1, dtype=torch.long), tags + 1])
        scores = torch.cat([torch.full((1, 32, 32), 0.35), cams[n, tags]])
        seeds = scores.argmax(0)
        unary = wsss_ext.unary_from_labels(seeds, len(keys), 0.7)
        q = wsss_ext.dense_crf(unary, image_u8[n], 1, gaussian_sxy=3, gaussian_weight=3, bilateral_sxy=50,
                               bilateral_srgb=5, bilateral_weight=10)
        assert torch.equal(result[n], keys[q.argmax(0)])
        assert set(result[n].unique().tolist()) <= set(keys.tolist())
    # A background score above every CAM: all background.
    assert int(_model(threshold=1.5, cam_scales=(1.0,)).eval().pseudo_labels(images, labels).max()) == 0


def test_loss_falls_over_20_steps():
    model = _model(alpha_schedule=0.0).train()  # constant alpha, so the totals compare
    batch = seeded_batch(model)
    totals = train_losses(model, batch, lr=3e-3)
    assert all(math.isfinite(t) for t in totals)
    assert totals[-1] < 0.7 * totals[0], totals
