"""SSSS (1-stage-wseg): the stochastic gate, nGWP + focal penalty, the PAMR
pseudo-ground truth and its class-balanced CE, the warm-up switch, the
kernel wiring, each against hand-computed cases or independent oracles."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from method_support import one_thread  # noqa: F401  (autouse fixture)
from method_support import seeded_batch, traced_ops, train_losses

import wsss_ext
from python_models import create
from python_models.heads import derive_seed
from python_models.heads.gate import StochasticGate, gate_mask, stochastic_gate
from python_models.heads.ssss import GCI
from python_models.losses.ssss import (
    add_background_logit,
    balanced_mask_loss,
    focal_penalty,
    ngwp,
    ssss_class_scores,
)
from python_models.methods.ssss import SSSS
from python_models.pseudo.pamr_gt import gtmask_to_labels, pseudo_gtmask, ssss_refine
from wsss_ext.reference import pamr_unfold

SMALL = dict(backbone="tiny", num_classes=3, decoder_channels=32)


def _model(**overrides):
    torch.manual_seed(0)
    return create("ssss", **{**SMALL, **overrides})


def _ground_truth_refine(model, batch, monkeypatch):
    """Replace the model's refinement by soft ground-truth masks, so the
    pseudo-ground truth is complete and the mask term non-zero."""
    onehot = F.one_hot(batch["masks"], model.num_classes + 1).permute(0, 3, 1, 2).float()
    soft = 0.9 * onehot + 0.1 / (model.num_classes + 1)
    monkeypatch.setattr(model, "refine", lambda images, masks, labels: soft.clone())
    return soft


# ---------------------------------------------------------------------------
# Independent oracles (plain loops / numpy, from 1-stage-wseg's formulas)
# ---------------------------------------------------------------------------


def ngwp_oracle(logits, masks):
    s, m = logits.numpy().astype(np.float64), masks.numpy().astype(np.float64)
    out = np.zeros(s.shape[:2])
    for b in range(s.shape[0]):
        for k in range(s.shape[1]):
            num = den = 0.0
            for y in range(s.shape[2]):
                for x in range(s.shape[3]):
                    num += m[b, k, y, x] * s[b, k, y, x]
                    den += m[b, k, y, x]
            out[b, k] = num / (1.0 + den)
    return out


def pseudo_gt_oracle(masks, fg=0.6, bg=0.7, low=0.2):
    m = masks.numpy().astype(np.float64)
    B, K, H, W = m.shape
    out = np.zeros_like(m)
    for b in range(B):
        for k in range(K):
            threshold = max(m[b, k].max() * (bg if k == 0 else fg), low)
            out[b, k] = m[b, k] > threshold
        for y in range(H):
            for x in range(W):
                if out[b, :, y, x].sum() > 1:
                    out[b, :, y, x] = 0
    return out


def balanced_ce_oracle(logits, target, tags, ignore=255):
    s, t, g = logits.numpy().astype(np.float64), target.numpy(), tags.numpy()
    B, K, H, W = s.shape
    out = np.zeros(B)
    for b in range(B):
        counts = np.array([(t[b] == k).sum() for k in range(K)], dtype=np.float64)
        total = counts.sum()
        if g[b].sum() + 1 != (counts > 0).sum():
            continue
        acc = 0.0
        for y in range(H):
            for x in range(W):
                k = t[b, y, x]
                if k == ignore:
                    continue
                z = s[b, :, y, x]
                ce = math.log(np.exp(z - z.max()).sum()) + z.max() - z[k]
                acc += (total - counts[k]) / (1.0 + total) * ce
        out[b] = acc / (H * W)
    return out


# ---------------------------------------------------------------------------
# Defaults
# ---------------------------------------------------------------------------


def test_defaults_are_the_published_values():
    # visinf/1-stage-wseg: configs/voc_resnet38.yaml, core/config.py, models/stage_net.py,
    # models/mods/aspp.py (output stride 8), models/mods/pamr.py, base_net.py, train.py
    # (5 pretrain epochs x floor(10582 / 16) = 661 steps, drop_last).
    assert SSSS.DEFAULTS == dict(
        num_classes=20, backbone="resnet38d", output_stride=8, aspp_rates=(12, 24, 36), decoder_channels=256,
        psi=0.3, bg_logit=1.0, focal_p=3.0, focal_lambda=0.01, pamr_iters=10,
        pamr_dilations=(1, 2, 4, 8, 12, 24), pamr_sigma=0.1, cutoff_bg=0.7, cutoff_fg=0.6, cutoff_low=0.2,
        mask_loss_weight=1.0, mask_loss_start_step=5 * 661, lr=0.001, momentum=0.9, weight_decay=5e-4,
        new_lr_mult=10.0, batch_size=16, max_epochs=24, crop_size=321, scale_range=(0.9, 1.0),
        cam_scales=(1.0, 0.5, 1.5, 2.0), cam_flip=True, pseudo_rule="argmax", seed=0,
    )
    assert SSSS.KERNELS == ("pamr",) and SSSS.TINY_BACKBONE == "resnet38d_tiny"


def test_shallow_features_are_the_stride_4_stage():
    model = _model()
    assert model.shallow_stage == 0 and model.decoder.shallow_channels == model.backbone.stage_channels[0]
    x = torch.zeros(1, 3, 32, 32)
    assert model.backbone.stages(x)[model.shallow_stage].shape[-1] == 8


# ---------------------------------------------------------------------------
# Stochastic gate
# ---------------------------------------------------------------------------


def test_gate_eval_value_is_exact():
    x1, x2 = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    gate = StochasticGate(0.3).eval()
    torch.testing.assert_close(gate(x1, x2), 0.7 * x1 + 0.3 * x2, rtol=0, atol=1e-6)
    assert torch.equal(StochasticGate(0.0).eval()(x1, x2), x1)


def test_gate_training_expectation_is_the_deep_features_not_the_eval_value():
    # E[m (x1 - psi x2) / (1 - psi) + (1 - m) x2] with P(m = 1) = 1 - psi is x1.
    psi, shape = 0.3, (1, 1, 300, 300)
    x1, x2 = torch.full(shape, 2.0), torch.full(shape, 5.0)
    out = StochasticGate(psi).train()(x1, x2, seed=7)
    deep_value = (2.0 - psi * 5.0) / (1 - psi)
    is_shallow = torch.isclose(out, torch.tensor(5.0))
    assert torch.all(is_shallow | torch.isclose(out, torch.tensor(deep_value)))
    assert abs(float(is_shallow.float().mean()) - psi) < 0.01  # 90000 draws: std 0.0015
    assert abs(float(out.mean()) - 2.0) < 0.04  # std of the mean 0.0065
    assert abs(float(out.mean()) - (0.7 * 2.0 + 0.3 * 5.0)) > 0.5  # not the eval mix
    # Over many seeds each element's mean tends to x1 as well.
    a, b = torch.randn(1, 2, 2, 2), torch.randn(1, 2, 2, 2)
    mean = torch.stack([stochastic_gate(a, b, psi, gate_mask(a, psi, s)) for s in range(4000)]).mean(0)
    torch.testing.assert_close(mean, a, atol=0.15, rtol=0)


def test_gate_draws_from_its_seed_only():
    x1, x2 = torch.randn(2, 4, 6, 6), torch.randn(2, 4, 6, 6)
    gate = StochasticGate(0.3).train()
    state = torch.get_rng_state()
    first, again, other = gate(x1, x2, seed=3), gate(x1, x2, seed=3), gate(x1, x2, seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first, again) and not torch.equal(first, other)
    with pytest.raises(ValueError, match="seed"):
        gate(x1, x2)
    with pytest.raises(ValueError, match="psi"):
        StochasticGate(1.0)
    with pytest.raises(ValueError, match="x1 and x2"):
        gate(x1, x2[:, :2], seed=0)


def test_method_gate_seed_follows_the_step():
    model = _model()
    assert model.step_seed(5) == derive_seed(0, 5) != model.step_seed(6)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            module.p = 0.0  # leave the gate as the only randomness
    images = seeded_batch(model)["images"]
    with torch.no_grad():
        a, b, c = model(images, step=5), model(images, step=5), model(images, step=6)
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_gci_is_adaptive_instance_modulation_of_the_shallow_features():
    torch.manual_seed(0)
    gci = GCI(4, 6, 3).eval()
    shallow, deep = torch.randn(2, 4, 5, 5), torch.randn(2, 6, 3, 3)
    attributes = gci.fc_deep(deep).amax((2, 3))
    gamma, beta = attributes[:, :3, None, None], attributes[:, 3:, None, None]
    expected = gci.fc_cls(F.relu(gci.fc_skip(shallow) * (1 + gamma) + beta))
    torch.testing.assert_close(gci(shallow, deep), expected)
    with pytest.raises(ValueError, match="shallow"):
        gci(torch.randn(2, 5, 5, 5), deep)


# ---------------------------------------------------------------------------
# nGWP and the focal penalty
# ---------------------------------------------------------------------------


def test_ngwp_hand_case_and_oracle():
    logits = torch.tensor([[[[1.0, 3.0], [0.0, -2.0]]]])
    masks = torch.tensor([[[[0.5, 1.0], [0.0, 0.5]]]])
    # (0.5 + 3 + 0 - 1) / (1 + 2) = 2.5 / 3
    assert ngwp(logits, masks).item() == pytest.approx(2.5 / 3)
    torch.manual_seed(1)
    s = torch.randn(2, 4, 3, 5)
    m = torch.softmax(torch.randn(2, 4, 3, 5), 1)
    np.testing.assert_allclose(ngwp(s, m).numpy(), ngwp_oracle(s, m), rtol=1e-5, atol=1e-6)


def test_ngwp_is_at_most_the_largest_score_and_tends_to_the_weighted_mean():
    torch.manual_seed(2)
    s = torch.randn(3, 5, 6, 6) * 3
    m = torch.softmax(torch.randn(3, 5, 6, 6), 1)
    y = ngwp(s, m)
    assert torch.all(y <= s.flatten(2).amax(-1).clamp_min(0) + 1e-6)
    assert torch.all(y.abs() < s.flatten(2).abs().amax(-1))
    big = m * 1e6
    weighted_mean = (s * big).flatten(2).sum(-1) / big.flatten(2).sum(-1)
    torch.testing.assert_close(ngwp(s, big), weighted_mean, rtol=1e-4, atol=1e-4)


def test_focal_penalty_hand_cases():
    def mean_mask(value):
        return torch.full((1, 1, 2, 2), value)

    assert focal_penalty(mean_mask(0.5)).item() == pytest.approx(0.5**3 * math.log(0.51), rel=1e-6)
    assert focal_penalty(mean_mask(0.0)).item() == pytest.approx(math.log(0.01), rel=1e-6)
    assert focal_penalty(mean_mask(1.0)).item() == 0.0
    mixed = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])  # mean 0.25
    assert focal_penalty(mixed, p=2, lam=0.1).item() == pytest.approx(0.75**2 * math.log(0.35), rel=1e-6)


def test_class_scores_add_ngwp_and_focal_without_the_background():
    torch.manual_seed(3)
    logits = add_background_logit(torch.randn(2, 3, 4, 4), 1.0)
    assert torch.all(logits[:, 0] == 1.0)
    masks = torch.softmax(logits, 1)
    scores = ssss_class_scores(logits, masks)
    mean = masks.flatten(2).mean(-1).numpy()
    expected = ngwp_oracle(logits, masks) + (1 - mean) ** 3 * np.log(0.01 + mean)
    np.testing.assert_allclose(scores.numpy(), expected[:, 1:], rtol=1e-5, atol=1e-6)


def test_gradcheck_ngwp_focal_and_balanced_loss_float64():
    torch.manual_seed(4)
    fg = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)

    def scores(x):
        logits = add_background_logit(x)
        return ssss_class_scores(logits, torch.softmax(logits, 1))

    assert torch.autograd.gradcheck(scores, (fg,))
    s = torch.randn(1, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    m = torch.rand(1, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ngwp, (s, m))
    assert torch.autograd.gradcheck(focal_penalty, (m,))
    target = torch.tensor([[[0, 1, 255], [2, 0, 1]]])
    tags = torch.tensor([[1.0, 1.0]])
    assert torch.autograd.gradcheck(lambda x: balanced_mask_loss(x, target, tags), (s,))


# ---------------------------------------------------------------------------
# Pseudo-ground truth and the class-balanced CE
# ---------------------------------------------------------------------------


def test_pseudo_gtmask_threshold_hand_cases():
    # bg max 1.0 -> 0.7; class 1 max 0.9 -> 0.54; class 2 max 0.3 -> 0.18, floored to 0.2.
    masks = torch.tensor([[0.71, 0.70, 0.00, 0.00, 1.0, 0.75],
                          [0.00, 0.00, 0.55, 0.54, 0.9, 0.60],
                          [0.00, 0.00, 0.21, 0.30, 0.0, 0.00]]).view(1, 3, 1, 6)
    out = pseudo_gtmask(masks)[0, :, 0]
    # pixel 0: bg 0.71 > 0.7 -> bg; pixel 1: 0.70 is not > 0.7 -> none;
    # pixel 2: class 1 (0.55 > 0.54) and class 2 (0.21 > 0.2): ambiguous -> none;
    # pixel 3: class 1 0.54 is not > 0.54, class 2 0.3 > 0.2 -> class 2;
    # pixel 4: bg and class 1 -> none; pixel 5: bg 0.75 and class 1 0.6 -> none.
    assert out.tolist() == [[1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0], [0, 0, 0, 1, 0, 0]]
    assert gtmask_to_labels(pseudo_gtmask(masks)).tolist() == [[[0, 255, 255, 2, 255, 255]]]
    # Floor: a class whose max is below 0.2 is never on.
    assert pseudo_gtmask(torch.full((1, 2, 2, 2), 0.19)).sum() == 0


def test_pseudo_gtmask_matches_the_oracle_with_one_label_at_most():
    torch.manual_seed(5)
    masks = torch.softmax(3 * torch.randn(2, 4, 7, 9), 1)
    masks[1, 2] = 0  # an absent class
    out = pseudo_gtmask(masks)
    np.testing.assert_array_equal(out.numpy(), pseudo_gt_oracle(masks))
    assert out.sum(1).max() <= 1 and out[1, 2].sum() == 0 and out.sum() > 0


def test_balanced_mask_loss_hand_case_and_oracle():
    # One image, labels [0, 1, 1, 255]: n = (1, 2), N = 3, weights bg 2/4, class 1 1/4.
    logits = torch.tensor([[[[0.0, 0.0], [1.0, 5.0]], [[1.0, 2.0], [0.0, 0.0]]]])
    target = torch.tensor([[[0, 1], [1, 255]]])
    tags = torch.tensor([[1.0]])
    ce = [math.log(1 + math.e), math.log(1 + math.exp(-2)), math.log(1 + math.e)]
    expected = (0.5 * ce[0] + 0.25 * ce[1] + 0.25 * ce[2]) / 4
    assert balanced_mask_loss(logits, target, tags).item() == pytest.approx(expected, rel=1e-6)
    # An image missing a tag (or the background) in its pseudo-ground truth gets 0.
    assert balanced_mask_loss(logits, torch.tensor([[[1, 1], [1, 255]]]), tags).item() == 0.0
    torch.manual_seed(6)
    logits = torch.randn(3, 4, 5, 6)
    target = torch.randint(0, 4, (3, 5, 6))
    target[0, 0, :3] = 255
    target[2][target[2] == 3] = 1  # class 3 tagged but missing -> 0
    tags = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    np.testing.assert_allclose(balanced_mask_loss(logits, target, tags).numpy(),
                               balanced_ce_oracle(logits, target, tags), rtol=1e-5, atol=1e-7)
    assert balanced_mask_loss(logits, target, tags)[2] == 0
    # Logits at a lower resolution are resized (bilinear, align_corners=True) first.
    small = torch.randn(3, 4, 3, 3)
    up = F.interpolate(small, size=(5, 6), mode="bilinear", align_corners=True)
    torch.testing.assert_close(balanced_mask_loss(small, target, tags), balanced_mask_loss(up, target, tags))


def test_refine_is_pamr_of_the_detached_masks_then_cleaned():
    torch.manual_seed(7)
    images = torch.rand(2, 3, 16, 16)
    masks = torch.softmax(torch.randn(2, 3, 4, 4), 1).requires_grad_()
    tags = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    refined = ssss_refine(images, masks, tags, (1, 2), 3, 0.1)
    assert not refined.requires_grad and refined.shape == (2, 3, 16, 16)
    small = F.interpolate(images, size=(4, 4), mode="bilinear", align_corners=True)
    expected = pamr_unfold(small, masks.detach(), (1, 2), 3, 0.1)
    expected = F.interpolate(expected, size=(16, 16), mode="bilinear", align_corners=True)
    expected[1, 1] = 0
    torch.testing.assert_close(refined, expected, atol=1e-5, rtol=1e-5)
    # Tags all present: the refined masks keep summing to 1 per pixel.
    full = ssss_refine(images, masks, torch.ones(2, 2))
    torch.testing.assert_close(full.sum(1), torch.ones(2, 16, 16), atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------
# The method: PAMR in losses, warm-up, kernels, outputs
# ---------------------------------------------------------------------------


def test_pamr_inside_losses_equals_the_reference_on_the_model_masks(monkeypatch):
    model = _model(mask_loss_start_step=0).eval()
    batch = seeded_batch(model)
    calls = []
    real = wsss_ext.pamr

    def spy(image, mask, *args):
        out = real(image, mask, *args)
        calls.append((image, mask, args, out))
        return out

    monkeypatch.setattr(wsss_ext, "pamr", spy)
    terms = model.losses(batch, step=0)
    (image, mask, args, out), = calls
    logits, masks = model.masks(batch["images"])
    assert not mask.requires_grad and args == ((1, 2, 4, 8, 12, 24), 10, 0.1)
    torch.testing.assert_close(mask, masks.detach())
    torch.testing.assert_close(image, wsss_ext.resize_image_to_mask(batch["images"], masks))
    torch.testing.assert_close(out, pamr_unfold(image, mask, *args), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.sum(1), torch.ones_like(out[:, 0]), atol=1e-5, rtol=0)
    # The mask term is the balanced CE against the confident cut of those refined masks.
    target = model.pseudo_gt(model.refine(batch["images"], masks, batch["labels"]))
    expected = balanced_mask_loss(logits, target, batch["labels"]).mean()
    torch.testing.assert_close(terms["mask"], expected)
    torch.testing.assert_close(terms["loss"], terms["classification"] + terms["mask"])


def test_mask_loss_warm_up_switches_only_in_after_step(monkeypatch):
    model = _model(mask_loss_start_step=3).eval()
    batch = seeded_batch(model, seed=2)
    _ground_truth_refine(model, batch, monkeypatch)
    assert model.mask_loss_on.item() == 0.0
    terms = model.losses(batch, step=5)
    assert model.mask_loss_on.item() == 0.0  # losses() changes nothing, whatever the step
    assert terms["mask"].item() > 0 and torch.equal(terms["loss"], terms["classification"])
    model.after_step(0, 10)
    model.after_step(1, 10)
    assert model.mask_loss_on.item() == 0.0
    model.after_step(2, 10)  # the next step is 3
    assert model.mask_loss_on.item() == 1.0
    terms = model.losses(batch, step=3)
    torch.testing.assert_close(terms["loss"], terms["classification"] + terms["mask"])
    assert _model(mask_loss_start_step=0).mask_loss_on.item() == 1.0
    with pytest.raises(ValueError, match="max_steps"):
        model.after_step(0, 0)


def test_kernel_runs_in_losses_at_step_zero_and_in_pseudo_labels():
    model = _model()
    batch = seeded_batch(model)
    ran, terms = traced_ops(model.losses, batch, 0)
    assert "wsss_ext::pamr_propagate" in ran and "wsss_ext::pamr_affinity" in ran
    assert model.mask_loss_on.item() == 0.0 and torch.isfinite(terms["mask"])
    model.eval()
    ran, _ = traced_ops(model.pseudo_labels, batch["images"], batch["labels"])
    assert "wsss_ext::pamr_propagate" in ran


def test_pseudo_labels_rules(monkeypatch):
    model = _model().eval()
    batch = seeded_batch(model, seed=1)
    images, labels = batch["images"], batch["labels"]
    refined = model.refine(images, model.masks(images)[1], labels)
    argmax = model.pseudo_labels(images, labels)
    assert torch.equal(argmax, refined.argmax(1)) and argmax.dtype == torch.int64
    confident = model.pseudo_labels(images, labels, rule="pseudo_gt")
    assert torch.equal(confident, gtmask_to_labels(pseudo_gtmask(refined)))
    for out in (argmax, confident):
        for mask, tags in zip(out, labels):
            assert set(mask.unique().tolist()) <= {0, 255} | {c + 1 for c in tags.nonzero().flatten().tolist()}
    assert 255 not in argmax.unique().tolist()
    # On confident masks the pseudo-ground truth rule gives back their labels.
    _ground_truth_refine(model, batch, monkeypatch)
    assert torch.equal(model.pseudo_labels(images, labels, rule="pseudo_gt"), batch["masks"])
    with pytest.raises(ValueError, match="rule"):
        model.pseudo_labels(images, labels, rule="crf")


def test_bad_input_is_named():
    model = _model()
    batch = seeded_batch(model)
    images, labels = batch["images"], batch["labels"]
    with pytest.raises(ValueError, match="labels"):
        model.losses({**batch, "labels": labels[:, :2]})
    bad = images.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="images"):
        model.losses({**batch, "images": bad})
    with pytest.raises(TypeError, match="pseudo_gt"):
        balanced_mask_loss(torch.randn(1, 2, 2, 2), torch.zeros(1, 2, 2), torch.ones(1, 1))
    with pytest.raises(ValueError, match="pseudo_gt"):
        balanced_mask_loss(torch.randn(1, 2, 2, 2), torch.full((1, 2, 2), 5), torch.ones(1, 1))
    with pytest.raises(ValueError, match="labels"):
        balanced_mask_loss(torch.randn(1, 2, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), torch.ones(1, 3))
    with pytest.raises(ValueError, match="masks"):
        ssss_refine(images, torch.rand(1, 4, 8, 8), labels)
    with pytest.raises(ValueError, match="masks"):
        pseudo_gtmask(torch.rand(2, 3, 4))
    with pytest.raises(ValueError, match="logits and masks"):
        ngwp(torch.rand(1, 2, 3, 3), torch.rand(1, 2, 3, 4))
    with pytest.raises(ValueError, match="pseudo_rule"):
        _model(pseudo_rule="crf")
    with pytest.raises(TypeError, match="mask_loss_start_step"):
        _model(mask_loss_start_step=1.5)


def test_loss_falls_over_20_steps():
    model = _model(mask_loss_start_step=0)
    batch = seeded_batch(model)
    torch.manual_seed(0)
    history = train_losses(model, batch, lr=1e-2)
    assert np.mean(history[-3:]) < 0.7 * np.mean(history[:3])
