"""SEC: its losses on hand-computed cases and against numpy oracles, its CRF
step against a direct wsss_ext.dense_crf call and pydensecrf, gradients, bad
input, the kernel in the trace, and a short training run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

import wsss_ext
from method_support import random_probs, traced_ops, train_losses
from python_models import create
from python_models.losses.sec import (SEC_CRF, constrain_loss, crf_target, expand_loss, floored_softmax, map_image,
                                      seed_loss)
from python_models.methods.sec import SEC, largefov_map_size


def _tiny(**overrides) -> SEC:
    torch.manual_seed(0)
    return create("sec", backbone="tiny", num_classes=3, **overrides)


def test_defaults_are_the_published_values():
    # kolesman/SEC: pylayers.py (q_fg, q_bg, min_prob), CRF.py with scale_factor 12 (CRFLayer) and 1 (demo.py),
    # train.prototxt (VGG-16 LargeFOV, 321 crops, batch 15, fc8 lr_mult 10), solver.prototxt.
    assert SEC.DEFAULTS == dict(
        num_classes=20, backbone="vgg16_largefov", fg_decay=0.996, bg_decay=0.999, min_prob=1e-4,
        crf=dict(n_iters=10, gaussian_sxy=0.25, gaussian_weight=3.0, bilateral_sxy=80 / 12, bilateral_srgb=13.0,
                 bilateral_weight=10.0),
        crf_mask_absent=False, test_sizes=(321,), test_min_prob=1e-5,
        test_crf=dict(n_iters=10, gaussian_sxy=3.0, gaussian_weight=3.0, bilateral_sxy=80.0, bilateral_srgb=13.0,
                      bilateral_weight=10.0),
        crop_size=321, batch_size=15, base_lr=1e-3, lr_gamma=0.1, lr_step=2000, max_steps=8000, momentum=0.9,
        weight_decay=5e-4, fc8_lr_mult=10.0)
    preset = wsss_ext.nn.DenseCRF.preset("affinitynet", scale=12)
    assert SEC_CRF["gaussian_sxy"] == preset.gaussian_sxy and SEC_CRF["bilateral_sxy"] == preset.bilateral_sxy
    assert largefov_map_size(321) == 41 and largefov_map_size(32) == 5
    assert SEC.KERNELS == ("dense_crf",) and SEC.TINY_BACKBONE == "vgg_tiny"


def test_network_shape_and_seeds_at_the_output_size():
    model = _tiny().eval()
    batch = model.example_batch()
    logits = model(batch["images"])
    assert logits.shape == (2, 4, 5, 5)
    assert batch["seeds"].shape == (2, 5, 5)
    seeds = batch["seeds"]
    assert ((seeds == 255) | (seeds <= 3)).all() and (seeds != 255).any()
    for b in range(2):  # the cues hold only tagged classes
        tags = {c + 1 for c in batch["labels"][b].nonzero().flatten().tolist()}
        assert set(seeds[b][seeds[b] != 255].tolist()) <= {0} | tags
    # pool5a: a 3 x 3 average (Caffe's AVE counts the padding) after the backbone's convolutions.
    x = model.normalize(batch["images"])
    expected = F.avg_pool2d(model.backbone.features(x), 3, 1, 1, count_include_pad=True)
    torch.testing.assert_close(model.backbone.pool5(x), expected)


def test_floored_softmax_is_seds_softmax_layer():
    logits = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    expected = (torch.softmax(logits, 1) + 1e-4) / (1 + 4e-4)
    torch.testing.assert_close(floored_softmax(logits), expected)


def test_seed_loss_by_hand():
    probs = torch.tensor([[[[0.5, 0.2, 0.3]], [[0.5, 0.8, 0.7]]],
                          [[[0.9, 0.1, 0.6]], [[0.1, 0.9, 0.4]]]])
    seeds = torch.tensor([[[0, 1, 255]], [[255, 255, 0]]])
    # image 0: -(log .5 + log .8) / 2; image 1: -log .6; averaged over the batch.
    expected = (-(math.log(0.5) + math.log(0.8)) / 2 - math.log(0.6)) / 2
    assert seed_loss(probs, seeds).item() == pytest.approx(expected, rel=1e-6)
    # An image without cues adds 0 (and still counts in the batch mean).
    no_cues = torch.tensor([[[0, 1, 255]], [[255, 255, 255]]])
    assert seed_loss(probs, no_cues).item() == pytest.approx(-(math.log(0.5) + math.log(0.8)) / 4, rel=1e-6)


def test_expand_loss_by_hand():
    # 2 images, background + 2 classes, 1 x 2 pixels.
    one = torch.tensor([[[0.5, 0.2]], [[0.4, 0.7]], [[0.1, 0.1]]])
    probs = torch.stack([one, one])
    labels = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    g1 = (0.7 + 0.5 * 0.4) / 1.5          # GWRP of class 1 at d = 0.5: weights 1, 0.5 on the sorted scores
    g2 = 0.1
    bg = (0.5 + 0.2) / 2                   # d = 1: the mean
    present = (-math.log(g1) + -(math.log(g1) + math.log(g2)) / 2) / 2
    absent = (-math.log(1 - 0.1) + 0.0) / 2  # image 1 has no absent class: its term is 0
    expected = present + absent - math.log(bg)
    assert expand_loss(probs, labels, 0.5, 1.0).item() == pytest.approx(expected, rel=1e-6)
    # Published decays: -log of the weighted rank means, against numpy on random maps.
    probs = random_probs((2, 4, 5, 6), seed=1, dtype=torch.float64)
    labels = torch.tensor([[1.0, 0, 1], [0, 1, 0]])

    def gwrp(x, d):
        s = np.sort(x.ravel())[::-1]
        w = d ** np.arange(s.size)
        return (s * w).sum() / w.sum()

    p = probs.numpy()
    total = 0.0
    for b in range(2):
        tags = labels[b].numpy()
        total += -sum(np.log(gwrp(p[b, c + 1], 0.996)) for c in range(3) if tags[c]) / tags.sum()
        total += -sum(np.log(1 - p[b, c + 1].max()) for c in range(3) if not tags[c]) / (3 - tags.sum())
        total += -np.log(gwrp(p[b, 0], 0.999))
    assert expand_loss(probs, labels).item() == pytest.approx(total / 2, rel=1e-10)


def _constrain_oracle(f, q, floor=1e-4, clip=None):
    f, q = np.maximum(f.numpy(), floor), q.numpy()
    ratio = q / f if clip is None else np.clip(q / f, *clip)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(q > 0, q * np.log(ratio), 0.0)
    return terms.sum(1).mean()


def test_constrain_loss_oracle_nonnegative_and_zero_at_a_fixed_point():
    f = random_probs((2, 4, 5, 6), seed=2, scale=3, dtype=torch.float64)
    q = random_probs((2, 4, 5, 6), seed=3, scale=3, dtype=torch.float64)
    value = constrain_loss(f, q)
    assert value.item() == pytest.approx(_constrain_oracle(f, q), rel=1e-10)
    assert value.item() > 0.1
    for seed in range(5):
        assert constrain_loss(random_probs((1, 3, 4, 4), seed), random_probs((1, 3, 4, 4), seed + 10)).item() >= 0
    assert constrain_loss(_floored(q), _floored(q)).item() == pytest.approx(0.0, abs=1e-8)
    # A CRF fixed point: one label everywhere at the floor's saturation on a flat image; the CRF only
    # sharpens it and the 1e-4 floor brings it back, so Q = f and the loss is 0.
    f = torch.full((1, 4, 5, 5), 1e-4 / (1 + 4e-4))
    f[:, 2] = 1 - f[:, 0] * 3
    image = torch.full((1, 3, 40, 40), 0.5)
    target = crf_target(f, image)
    torch.testing.assert_close(target, f, atol=1e-7, rtol=1e-6)
    assert constrain_loss(f, target).item() == pytest.approx(0.0, abs=1e-5)
    # No gradient reaches the target.
    f = random_probs((1, 3, 4, 4), seed=20, dtype=torch.float64).requires_grad_()
    q = random_probs((1, 3, 4, 4), seed=21, dtype=torch.float64).requires_grad_()
    constrain_loss(f, q).backward()
    assert q.grad is None and f.grad.abs().sum() > 0


def test_crf_target_equals_a_direct_dense_crf_call():
    probs = random_probs((2, 4, 6, 5), seed=4, scale=2)
    g = torch.Generator().manual_seed(5)
    images = torch.rand(2, 3, 41, 33, generator=g)
    image = (F.interpolate(images, size=(6, 5), mode="bilinear", align_corners=True) * 255).round().to(torch.uint8)
    q = wsss_ext.dense_crf(-torch.log(probs), image, 10, gaussian_sxy=3 / 12, gaussian_weight=3,
                           bilateral_sxy=80 / 12, bilateral_srgb=13, bilateral_weight=10)
    q = q.clamp_min(1e-4)
    q = q / q.sum(1, keepdim=True)
    target = crf_target(probs, images)
    torch.testing.assert_close(target, q)
    # -log p differs from -logit by a per-pixel constant: the same target as SEC's energy.
    logits = torch.randn(2, 4, 6, 5, generator=g)
    torch.testing.assert_close(crf_target(torch.softmax(logits, 1), images),
                               _floored(wsss_ext.dense_crf(-logits, image, **SEC_CRF)), atol=1e-5, rtol=1e-4)
    # Absent classes barred: they end at the floor.
    labels = torch.tensor([[1.0, 0, 1], [0, 0, 0]])
    masked = crf_target(probs, images, labels, mask_absent=True)
    assert (masked[0, 2] <= 1e-4).all() and (masked[1, 1:] <= 1e-4).all()
    assert (masked[1, 0] > 0.999).all() and (target[0, 2] > 1e-3).any()


def _floored(q):
    q = q.clamp_min(1e-4)
    return q / q.sum(1, keepdim=True)


def test_map_image_is_sec_zoom():
    g = torch.Generator().manual_seed(6)
    image = torch.rand(1, 3, 33, 25, generator=g)
    # CRFLayer: zoom(im, (1, 1, h / H, w / W), order=1), then np.round.
    zoomed = ndimage.zoom(image.double().numpy() * 255, (1, 1, 5 / 33, 4 / 25), order=1)
    ours = map_image(image, (5, 4)).numpy().astype(float)
    assert zoomed.shape == ours.shape
    assert np.abs(np.round(zoomed) - ours).max() <= 1


def test_crf_target_matches_pydensecrf():
    dcrf = pytest.importorskip("pydensecrf.densecrf")
    probs = random_probs((1, 3, 7, 9), seed=8, scale=2)
    g = torch.Generator().manual_seed(9)
    image = torch.randint(0, 256, (1, 3, 7, 9), dtype=torch.uint8, generator=g)
    crf = dcrf.DenseCRF2D(9, 7, 3)
    crf.setUnaryEnergy(np.ascontiguousarray((-torch.log(probs[0])).reshape(3, -1).numpy()))
    crf.addPairwiseGaussian(sxy=3 / 12, compat=3)
    crf.addPairwiseBilateral(sxy=80 / 12, srgb=13, rgbim=np.ascontiguousarray(image[0].permute(1, 2, 0).numpy()),
                             compat=10)
    expected = _floored(torch.from_numpy(np.array(crf.inference(10))).view(1, 3, 7, 9))
    torch.testing.assert_close(crf_target(probs, image), expected, atol=1e-5, rtol=1e-4)


def test_gradcheck_float64():
    probs = (random_probs((2, 3, 3, 4), seed=11, dtype=torch.float64) * 0.9 + 0.03).requires_grad_()
    seeds = torch.tensor([[[0, 1, 255, 2]] * 3, [[255, 2, 2, 0]] * 3])
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    target = random_probs((2, 3, 3, 4), seed=12, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda p: seed_loss(p, seeds), (probs,))
    assert torch.autograd.gradcheck(lambda p: expand_loss(p, labels, 0.9, 0.95), (probs,))
    assert torch.autograd.gradcheck(lambda p: constrain_loss(p, target), (probs,))
    logits = torch.randn(1, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: floored_softmax(x).sum((2, 3)), (logits,))


def test_bad_inputs_name_the_argument():
    probs = random_probs((2, 3, 4, 4))
    seeds = torch.zeros(2, 4, 4, dtype=torch.long)
    with pytest.raises(TypeError, match="seeds"):
        seed_loss(probs, seeds.float())
    with pytest.raises(ValueError, match="seeds"):
        seed_loss(probs, seeds[:1])
    with pytest.raises(ValueError, match="seeds"):
        seed_loss(probs, seeds + 5)
    with pytest.raises(ValueError, match="probs"):
        seed_loss(probs[0], seeds)
    bad = probs.clone()
    bad[0, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="probs"):
        expand_loss(bad, torch.ones(2, 2))
    with pytest.raises(ValueError, match="labels"):
        expand_loss(probs, torch.ones(2, 3))
    with pytest.raises(ValueError, match="labels"):
        expand_loss(probs, torch.ones(1, 2))
    with pytest.raises(ValueError, match="target"):
        constrain_loss(probs, probs[:, :2])
    with pytest.raises(ValueError, match="images"):
        crf_target(probs, torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="labels"):
        crf_target(probs, torch.rand(2, 3, 8, 8), mask_absent=True)
    model = _tiny()
    batch = model.example_batch()
    with pytest.raises(ValueError, match="seeds"):
        model.losses({**batch, "seeds": batch["seeds"][:, :4]})
    with pytest.raises(TypeError, match="seeds"):
        model.losses({**batch, "seeds": batch["seeds"].float()})


def test_losses_run_dense_crf_and_compose_the_functions():
    model = _tiny().eval()
    batch = model.example_batch()
    ran, terms = traced_ops(model.losses, batch)
    assert "wsss_ext::dense_crf" in ran
    logits = model(batch["images"])
    probs = floored_softmax(logits)
    target = crf_target(torch.softmax(logits, 1), batch["images"])
    torch.testing.assert_close(terms["seed"], seed_loss(probs, batch["seeds"]))
    torch.testing.assert_close(terms["expand"], expand_loss(probs, batch["labels"], 0.996, 0.999))
    torch.testing.assert_close(terms["constrain"], constrain_loss(probs, target))
    torch.testing.assert_close(terms["loss"], terms["seed"] + terms["expand"] + terms["constrain"])


def test_cams_are_probabilities_and_pseudo_labels_their_tag_argmax():
    model = _tiny(test_sizes=None, test_crf=None).eval()
    batch = model.example_batch()
    images, labels = batch["images"], batch["labels"]
    probs = model.test_probs(images)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 32, 32))
    cams = model.cams(images, labels)
    torch.testing.assert_close(cams, probs[:, 1:] * labels[..., None, None])
    present = torch.cat([torch.ones(2, 1), labels], 1).bool()
    expected = probs.masked_fill(~present[..., None, None], -1).argmax(1)
    assert torch.equal(model.pseudo_labels(images, labels), expected)


def test_loss_falls_over_20_steps():
    model = _tiny().train()
    batch = model.example_batch()
    values = train_losses(model, batch)
    assert values[-1] < 0.8 * values[0]


# --- localisation cues from a CAM network (wsss-ext train --method sec --cam-run) -----------------------


def _cues_oracle(cams, labels, fg_fraction, bg_threshold, ignore_index=255):
    """Pixel by pixel, from the rule as written: the best tagged class at >= fg_fraction of its max, else
    background where every tagged CAM is below bg_threshold of its max, else no cue."""
    batch, classes, height, width = cams.shape
    out = torch.full((batch, height, width), ignore_index, dtype=torch.int64)
    for b in range(batch):
        tagged = [c for c in range(classes) if labels[b, c]]
        peak = {c: float(cams[b, c].max()) for c in tagged}
        for y in range(height):
            for x in range(width):
                shares = {c: float(cams[b, c, y, x]) / peak[c] if peak[c] > 0 else 0.0 for c in tagged}
                best = max(shares, key=shares.get) if shares else None
                if best is not None and shares[best] >= fg_fraction:
                    out[b, y, x] = best + 1
                elif all(v < bg_threshold for v in shares.values()):
                    out[b, y, x] = 0
    return out


@pytest.mark.parametrize("fg_fraction, bg_threshold", [(0.2, 0.05), (0.5, 0.3), (1.0, 0.0)])
def test_localisation_cues_match_the_rule_pixel_by_pixel(fg_fraction, bg_threshold):
    from python_models.pseudo import localisation_cues, normalize_cams

    g = torch.Generator().manual_seed(3)
    labels = torch.tensor([[1, 0, 1], [0, 1, 0], [0, 0, 0]])
    cams = normalize_cams(torch.rand(3, 3, 6, 7, generator=g) ** 3, labels)
    cues = localisation_cues(cams, labels, fg_fraction, bg_threshold)
    torch.testing.assert_close(cues, _cues_oracle(cams, labels, fg_fraction, bg_threshold), rtol=0, atol=0)
    present = torch.cat([torch.ones(3, 1, dtype=torch.bool), labels.bool()], 1)  # background always allowed
    for b in range(3):  # never a class outside the tags; an untagged image is all background
        assert all(v == 255 or present[b, v] for v in cues[b].unique().tolist())
    assert cues[2].eq(0).all()


def test_localisation_cues_refuse_bad_thresholds_and_shapes():
    from python_models.pseudo import localisation_cues

    cams, labels = torch.rand(1, 2, 4, 4), torch.ones(1, 2)
    with pytest.raises(ValueError, match="bg_threshold < fg_fraction"):
        localisation_cues(cams, labels, fg_fraction=0.2, bg_threshold=0.2)
    with pytest.raises(ValueError, match="fg_fraction"):
        localisation_cues(cams, labels, fg_fraction=1.5)
    with pytest.raises(ValueError, match="labels B x C"):
        localisation_cues(cams, torch.ones(1, 3))
