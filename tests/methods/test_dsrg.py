"""DSRG: the balanced seed loss by hand, its CRF step (energy -p) against a direct
wsss_ext.dense_crf call, the boundary loss's ratio clip against numpy, the
losses composed from the functions with the seeds grown on the CRF output,
the ASPP head, bad input, and a short training run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import wsss_ext
from method_support import random_probs, traced_ops, train_losses
from python_models import create
from python_models.losses.dsrg import DSRG_RATIO_CLIP, balanced_seed_loss, dsrg_crf_target
from python_models.losses.sec import constrain_loss, floored_softmax
from python_models.methods.dsrg import DSRG
from python_models.pseudo import dsrg_grow


def _tiny(**overrides) -> DSRG:
    torch.manual_seed(0)
    return create("dsrg", backbone="tiny", num_classes=3, test_sizes=None, **overrides)


def test_defaults_are_the_published_values():
    # speedinghzl/DSRG: train-s.prototxt (ASPP 6/12/18/24, th1 0.99, th2 0.85, batch 20, 321 crops),
    # pylayers.py (min_prob, clip 0.05/20, CRF scale 12), solver-s.prototxt, tools/test-ms.py.
    assert DSRG.DEFAULTS == dict(
        num_classes=20, backbone="vgg16_largefov", aspp_dilations=(6, 12, 18, 24), fg_threshold=0.85,
        bg_threshold=0.99, min_prob=1e-4, ratio_clip=(0.05, 20.0),
        crf=dict(n_iters=10, gaussian_sxy=0.25, gaussian_weight=3.0, bilateral_sxy=80 / 12, bilateral_srgb=13.0,
                 bilateral_weight=10.0),
        crf_mask_absent=False, test_sizes=(241, 321, 401), test_min_prob=1e-5,
        test_crf=dict(n_iters=10, gaussian_sxy=3.0, gaussian_weight=3.0, bilateral_sxy=80.0, bilateral_srgb=13.0,
                      bilateral_weight=10.0),
        crop_size=321, batch_size=20, base_lr=5e-4, lr_gamma=0.33, lr_step=1000, max_steps=8000, momentum=0.9,
        weight_decay=5e-4, fc8_lr_mult=10.0)
    assert DSRG.KERNELS == ("dense_crf",) and DSRG.KEY == "dsrg"


def test_balanced_seed_loss_by_hand():
    probs = torch.tensor([[[[0.5, 0.4, 0.2, 0.3]], [[0.25, 0.6, 0.8, 0.3]], [[0.25, 0.0, 0.0, 0.4]]],
                          [[[0.9, 0.1, 0.6, 0.2]], [[0.05, 0.8, 0.2, 0.7]], [[0.05, 0.1, 0.2, 0.1]]]])
    seeds = torch.tensor([[[0, 1, 1, 2]], [[0, 255, 0, 255]]])
    # image 0: bg -log .5; fg -(log .6 + log .8 + log .4) / 3. image 1: bg -(log .9 + log .6) / 2; no fg: 0.
    bg = (-math.log(0.5) - (math.log(0.9) + math.log(0.6)) / 2) / 2
    fg = (-(math.log(0.6) + math.log(0.8) + math.log(0.4)) / 3 + 0.0) / 2
    assert balanced_seed_loss(probs, seeds).item() == pytest.approx(bg + fg, rel=1e-6)
    # Unlike SEC's seed loss, one background pixel weighs as much as all foreground pixels together.
    assert balanced_seed_loss(probs, seeds).item() != pytest.approx(
        -(math.log(0.5) + math.log(0.6) + math.log(0.8) + math.log(0.4)) / 8 - (math.log(0.9) + math.log(0.6)) / 4)


def test_dsrg_crf_target_uses_minus_p_as_the_energy():
    probs = random_probs((2, 4, 6, 5), seed=4, scale=3)
    g = torch.Generator().manual_seed(5)
    images = torch.rand(2, 3, 41, 33, generator=g)
    image = (F.interpolate(images, size=(6, 5), mode="bilinear", align_corners=True) * 255).round().to(torch.uint8)
    q = wsss_ext.dense_crf(-probs.clamp_min(1e-4), image, 10, gaussian_sxy=3 / 12, gaussian_weight=3,
                           bilateral_sxy=80 / 12, bilateral_srgb=13, bilateral_weight=10)
    q = q.clamp_min(1e-4)
    q = q / q.sum(1, keepdim=True)
    target = dsrg_crf_target(probs, images)
    torch.testing.assert_close(target, q)
    # Not SEC's -log p energy: the two targets differ.
    log_energy = wsss_ext.dense_crf(-torch.log(probs), image, 10, gaussian_sxy=0.25, gaussian_weight=3,
                                    bilateral_sxy=80 / 12, bilateral_srgb=13, bilateral_weight=10)
    assert (target - log_energy).abs().max() > 1e-2


def test_boundary_loss_ratio_clip_matches_numpy():
    f = random_probs((2, 4, 5, 6), seed=2, scale=4, dtype=torch.float64)
    q = random_probs((2, 4, 5, 6), seed=3, scale=4, dtype=torch.float64)
    fn, qn = np.maximum(f.numpy(), 1e-4), q.numpy()
    expected = (qn * np.log(np.clip(qn / fn, 0.05, 20))).sum(1).mean()
    value = constrain_loss(f, q, ratio_clip=DSRG_RATIO_CLIP)
    assert value.item() == pytest.approx(expected, rel=1e-10)
    assert abs(value.item() - constrain_loss(f, q).item()) > 1e-3  # the clip matters on these maps
    # The clip stops the gradient where Q / f leaves [0.05, 20].
    f = f.clone().requires_grad_()
    constrain_loss(f, q, ratio_clip=DSRG_RATIO_CLIP).backward()
    ratio = q / f.detach()
    outside = (ratio < 0.05) | (ratio > 20)
    inside = ~outside & (f.detach() > 1e-4)  # below the floor f is clamped: no gradient either
    assert outside.any() and (f.grad[outside] == 0).all() and (f.grad[inside] != 0).all()


def test_gradcheck_balanced_seed_loss():
    probs = (random_probs((2, 3, 3, 4), seed=11, dtype=torch.float64) * 0.9 + 0.03).requires_grad_()
    seeds = torch.tensor([[[0, 1, 255, 2]] * 3, [[255, 2, 2, 0]] * 3])
    assert torch.autograd.gradcheck(lambda p: balanced_seed_loss(p, seeds), (probs,))
    target = random_probs((2, 3, 3, 4), seed=12, scale=3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda p: constrain_loss(p, target, ratio_clip=(0.2, 5.0)), (probs,))


def test_losses_grow_on_the_crf_output_and_compose_the_functions():
    model = _tiny().eval()
    batch = model.example_batch()
    ran, terms = traced_ops(model.losses, batch)
    assert "wsss_ext::dense_crf" in ran
    probs = floored_softmax(model(batch["images"]))
    target = dsrg_crf_target(probs, batch["images"])
    grown = dsrg_grow(batch["seeds"], target, batch["labels"], 0.85, 0.99)
    torch.testing.assert_close(terms["seed"], balanced_seed_loss(probs, grown))
    torch.testing.assert_close(terms["boundary"], constrain_loss(probs, target, ratio_clip=(0.05, 20)))
    torch.testing.assert_close(terms["loss"], terms["seed"] + terms["boundary"])
    # The CRF sharpens the near-uniform map, so the seeds do grow here.
    assert (grown != batch["seeds"]).any()
    assert set(terms) == {"seed", "boundary", "loss"}


def test_aspp_head_sums_four_branches_and_shares_the_backbones_fc6():
    model = _tiny().eval()
    assert model.branch_dilations == (6, 12, 18, 24)
    assert sorted(model.fc6) == ["18", "24", "6"] and model.backbone.fc6.dilation == (12, 12)
    assert [model.fc6[k].dilation[0] for k in ("6", "18", "24")] == [6, 18, 24]
    x = model.normalize(model.example_batch()["images"])
    pool5 = model.backbone.pool5(x)
    expected = 0
    for d in (6, 12, 18, 24):
        fc6 = model.backbone.fc6 if d == 12 else model.fc6[str(d)]
        fc7 = model.backbone.fc7 if d == 12 else model.fc7[str(d)]
        expected = expected + model.fc8[str(d)](F.relu(fc7(F.relu(fc6(pool5)))))
    torch.testing.assert_close(model.scores(x), expected)
    largefov = _tiny(aspp_dilations=None)
    assert not hasattr(largefov, "fc8") and largefov.scores(x).shape == expected.shape
    with pytest.raises(ValueError, match="aspp_dilations"):
        _tiny(aspp_dilations=(6, 6))


def test_bad_inputs_name_the_argument():
    probs = random_probs((2, 3, 4, 4))
    seeds = torch.zeros(2, 4, 4, dtype=torch.long)
    with pytest.raises(TypeError, match="seeds"):
        balanced_seed_loss(probs, seeds.float())
    with pytest.raises(ValueError, match="seeds"):
        balanced_seed_loss(probs, seeds[:, :3])
    bad = probs.clone()
    bad[0, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="probs"):
        balanced_seed_loss(bad, seeds)
    with pytest.raises(ValueError, match="images"):
        dsrg_crf_target(probs, torch.rand(3, 3, 8, 8))
    with pytest.raises(ValueError, match="probs"):
        dsrg_crf_target(probs * 3, torch.rand(2, 3, 8, 8))
    model = _tiny()
    batch = model.example_batch()
    with pytest.raises(ValueError, match="seeds"):
        model.losses({**batch, "seeds": batch["seeds"][:1]})


def test_pseudo_labels_keep_to_the_tags():
    model = _tiny(test_crf=None).eval()
    batch = model.example_batch(generator=torch.Generator().manual_seed(4))
    probs = model.test_probs(batch["images"])
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 32, 32))
    present = torch.cat([torch.ones(2, 1), batch["labels"]], 1).bool()
    expected = probs.masked_fill(~present[..., None, None], -1).argmax(1)
    assert torch.equal(model.pseudo_labels(batch["images"], batch["labels"]), expected)


def test_loss_falls_over_20_steps():
    model = _tiny().train()
    batch = model.example_batch()
    values = train_losses(model, batch)
    assert values[-1] < 0.8 * values[0]
